//! Process facts from the OS: the open-file limit of this process (raised soft → hard), and a
//! server process's RSS and open-file limit read from /proc.

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; returns (soft, hard) after
/// (`u64::MAX` for unlimited).
#[cfg(unix)]
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        )?;
    }
    let max = lim.maximum.unwrap_or(u64::MAX);
    Ok((max, max))
}

#[cfg(not(unix))]
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    Err(std::io::Error::other(
        "open-file limits are only handled on unix",
    ))
}

/// `VmRSS` (or another `Vm*` line) of /proc/PID/status, in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// The soft "Max open files" of /proc/PID/limits (`None` if unreadable; `u64::MAX` if unlimited).
pub fn nofile_soft_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(proc_status_bytes(me, "VmRSS").unwrap() > 0);
        let (soft, hard) = raise_nofile_limit().unwrap();
        assert_eq!(soft, hard);
        let unlimited = soft == u64::MAX;
        assert_eq!(
            nofile_soft_limit(me),
            Some(if unlimited { u64::MAX } else { soft })
        );
    }
}
