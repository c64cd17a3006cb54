//! Failpoints for crash tests (feature `fault-injection` only): `CONCORD_WORKER_FAILPOINT` =
//! `mid-batch` (inside the transaction, before COMMIT) or `after-commit` (after COMMIT, before
//! XACK) makes the process SIGKILL itself the first time it gets there; `stop-mid-batch` makes
//! it SIGSTOP itself inside its first transaction (a zombie holding row locks, until the test
//! sends SIGCONT). Without the feature this is a no-op and the variable is never read.

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

/// Kills (or stops) the process here if the failpoint is armed.
#[cfg(feature = "fault-injection")]
pub fn hit(point: Failpoint) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOPPED: AtomicBool = AtomicBool::new(false);
    let armed = std::env::var("CONCORD_WORKER_FAILPOINT").ok();
    let pid = std::process::id().to_string();
    if point == Failpoint::MidBatch
        && armed.as_deref() == Some("stop-mid-batch")
        && !STOPPED.swap(true, Ordering::SeqCst)
    {
        eprintln!("FAILPOINT stop-mid-batch");
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status();
        return;
    }
    if armed.as_deref() != Some(point.name()) {
        return;
    }
    eprintln!("FAILPOINT {}", point.name());
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    // SIGKILL is delivered before `kill` returns; never go on past this point.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(not(feature = "fault-injection"))]
pub fn hit(point: Failpoint) {
    let _ = point.name();
}
