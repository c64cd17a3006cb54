//! `DirLock`: one server per data directory — an exclusive `flock` on `concord.lock`, held for
//! the life of the store, with the holder's pid written in it for the error message.

use super::{StoreError, StoreResult};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The name of the lock file, next to the database.
pub const LOCK_FILE: &str = "concord.lock";

/// An exclusive lock on a data directory; released when dropped (or when the process dies: the
/// kernel drops `flock` locks with the last descriptor, so a kill -9 never leaves it stale).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir`, or refuses with [`StoreError::InUse`] naming the holder's pid.
    pub fn acquire(dir: &Path) -> StoreResult<DirLock> {
        let path = dir.join(LOCK_FILE);
        let backend = |what: &str, e: std::io::Error| {
            StoreError::Backend(format!("{what} {}: {e}", path.display()))
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| backend("opening", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(StoreError::InUse {
                    dir: dir.display().to_string(),
                    pid: if pid.is_empty() { "unknown" } else { pid }.to_string(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(backend("locking", e)),
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .and_then(|_| file.sync_all())
            .map_err(|e| backend("writing the pid to", e))?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_of_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::InUse { .. }), "{msg}");
        assert!(
            msg.contains("is in use by another concord process")
                && msg.contains(&format!("(pid {})", std::process::id())),
            "{msg}"
        );
        assert!(first.path().ends_with(LOCK_FILE));
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
