//! One rxend per state directory: an exclusive lock on `STATE_DIR/rxend.lock`, held for
//! the daemon's life, with the holder's PID inside so that a second rxend can say who has it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "rxend.lock";

/// The held lock; released when dropped (or when rxend dies).
pub struct StateLock {
    _lock: Flock<File>,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    /// Another rxend runs on this state directory.
    #[error("another rxend{} already uses the state directory {dir}", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// The holder's PID, when it wrote one.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or written.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl StateLock {
    /// Takes the lock of `state_dir` (which must exist) without waiting.
    pub fn take(state_dir: &Path) -> Result<StateLock, StateLockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |source| StateLockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(StateLockError::Held {
                    dir: state_dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err((_, e)) => return Err(io(e.into())),
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        writeln!(lock, "{}", std::process::id()).map_err(io)?;
        lock.sync_all().map_err(io)?;
        Ok(StateLock { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_told_who_holds_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let held = StateLock::take(dir.path()).expect("first");
        // flock locks belong to the open file: a second open in this process conflicts too.
        match StateLock::take(dir.path()) {
            Err(StateLockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("second lock: {:?}", other.err()),
        }
        drop(held);
        StateLock::take(dir.path()).expect("free again");
    }
}
