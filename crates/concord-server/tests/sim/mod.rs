//! What the seeded simulations (doc_sim.rs, core_faults.rs, shared_rooms.rs) share: the
//! `ensure!` check that fails a run with its message, the environment knobs, and the heavy
//! switch (`CONCORD_HEAVY=1`).

/// Fails the current run (`Err(message)`) unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

/// What a simulation step returns: `Err` names what went wrong.
pub type SimResult<T> = Result<T, String>;

/// A number from the environment, if set and readable.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `CONCORD_HEAVY=1`: the long volumes (README, Tests).
pub fn heavy() -> bool {
    env_u64("CONCORD_HEAVY") == Some(1)
}

/// The seeds to run: only `var`'s when it is set, else `0..count`.
pub fn seeds(var: &str, count: u64) -> Vec<u64> {
    match env_u64(var) {
        Some(s) => vec![s],
        None => (0..count).collect(),
    }
}

// Used by the room-core simulations (core_faults, shared_rooms), not by doc_sim.
#[allow(dead_code)]
/// Every waiter a simulation handed to the core: token → (the write it is for, its answer once
/// given: the acked seq, or the error code).
pub type Waiters = std::collections::HashMap<u64, (usize, Option<Result<u64, String>>)>;

#[allow(dead_code)]
/// Records the answer to waiter `token`; fails on an unknown waiter or a second answer.
/// Returns the write it was for.
pub fn answer(
    waiters: &mut Waiters,
    token: u64,
    answer: Result<u64, String>,
) -> Result<usize, String> {
    let (w, slot) = waiters
        .get_mut(&token)
        .ok_or_else(|| format!("an answer to unknown waiter {token}"))?;
    ensure!(slot.is_none(), "waiter {token} answered twice");
    *slot = Some(answer);
    Ok(*w)
}

/// A waiter of the room-core simulations: its token and op id.
#[allow(dead_code)]
pub struct Tok {
    pub n: u64,
    pub id: Option<concord_core::OpId>,
}

impl concord_server::room::core::Waiting for Tok {
    fn op_id(&self) -> Option<&concord_core::OpId> {
        self.id.as_ref()
    }
}

/// The simulations' clients are `c0`, `c1`, ….
#[allow(dead_code)]
pub fn client_id(c: usize) -> concord_core::ClientId {
    concord_core::ClientId::new(&format!("c{c}")).expect("a client id")
}
