//! Failpoints for crash tests (feature `fault-injection` only): `CONCORD_WORKER_FAILPOINT` =
//! `mid-batch` (inside the transaction, before COMMIT) or `after-commit` (after COMMIT, before
//! XACK) makes the process SIGKILL itself the first time it gets there; `hold-mid-batch` blocks
//! the worker for 3 s inside its first transaction (the test SIGSTOPs it there: a zombie holding
//! row locks). Without the feature this is a no-op and the variable is never read.

/// Where a failpoint sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    MidBatch,
    AfterCommit,
}

impl Failpoint {
    fn name(self) -> &'static str {
        match self {
            Failpoint::MidBatch => "mid-batch",
            Failpoint::AfterCommit => "after-commit",
        }
    }
}

/// Kills (or stops) the process here if the failpoint is armed. The signal goes to this
/// process with kill(2), which delivers it before returning.
#[cfg(feature = "fault-injection")]
pub fn hit(point: Failpoint) {
    use rustix::process::{getpid, kill_process, Signal};
    use std::sync::atomic::{AtomicBool, Ordering};
    static HELD: AtomicBool = AtomicBool::new(false);
    let armed = std::env::var("CONCORD_WORKER_FAILPOINT").ok();
    if point == Failpoint::MidBatch
        && armed.as_deref() == Some("hold-mid-batch")
        && !HELD.swap(true, Ordering::SeqCst)
    {
        eprintln!("FAILPOINT hold-mid-batch");
        // Blocks this thread (and so the worker's loop: no lease renewal) with the
        // transaction open; the test stops the process meanwhile.
        std::thread::sleep(std::time::Duration::from_secs(3));
        return;
    }
    if armed.as_deref() != Some(point.name()) {
        return;
    }
    eprintln!("FAILPOINT {}", point.name());
    let _ = kill_process(getpid(), Signal::KILL);
    // SIGKILL is delivered before kill(2) returns; never go on past this point.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(not(feature = "fault-injection"))]
pub fn hit(point: Failpoint) {
    let _ = point.name();
}
