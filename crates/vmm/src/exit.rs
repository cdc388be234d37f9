//! How a VMM ends: the first exit request wins, and the exit record is
//! written to `RUN_DIR/exit.json` through a descriptor opened at start-up.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rxen_proto::vmspec::{files, ExitReason, ExitRecord};
use vmm_sys_util::eventfd::EventFd;

use crate::lock;

/// Errors while writing the exit record.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// Creating the event fd failed.
    #[error("cannot create the exit event: {0}")]
    EventFd(#[source] std::io::Error),
    /// Writing the record failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Encoding the record failed.
    #[error("cannot encode the exit record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The pending exit of the VM: set once by a vCPU, a device or the control loop.
pub struct ExitSignal {
    requested: AtomicBool,
    record: Mutex<Option<ExitRecord>>,
    evt: EventFd,
}

impl ExitSignal {
    /// Creates an exit signal with nothing pending.
    pub fn new() -> Result<Self, ExitError> {
        Ok(Self {
            requested: AtomicBool::new(false),
            record: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(ExitError::EventFd)?,
        })
    }

    /// Asks the VMM to end for `reason`; only the first request counts.
    pub fn request(&self, reason: ExitReason, detail: impl Into<String>) {
        let mut rec = lock(&self.record);
        if rec.is_none() {
            let detail = detail.into();
            tracing::info!(?reason, %detail, "exit requested");
            *rec = Some(ExitRecord {
                reason,
                detail,
                net_tx_bytes: 0,
                net_rx_bytes: 0,
            });
            self.requested.store(true, Ordering::SeqCst);
            if let Err(e) = self.evt.write(1) {
                tracing::error!("cannot signal the exit event: {e}");
            }
        }
    }

    /// True once an exit was requested.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The pending exit record, if any.
    pub fn record(&self) -> Option<ExitRecord> {
        lock(&self.record).clone()
    }

    /// The event fd that becomes readable when an exit is requested.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// `RUN_DIR/exit.json`, opened at start-up (a stale record of an earlier run
/// removed) so that the record can be written at exit without opening a path.
/// It stays empty until then: rxend takes an empty or cut-short file for a
/// VMM that died without saying why.
pub struct ExitRecordFile {
    file: std::fs::File,
    path: String,
}

impl ExitRecordFile {
    /// Removes a record left by an earlier run in `run_dir` (first thing at start-up).
    pub fn remove_stale(run_dir: &Path) -> Result<(), ExitError> {
        let path = run_dir.join(files::EXIT_RECORD);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!("removed a stale {}", files::EXIT_RECORD);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ExitError::Write {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Removes a stale record in `run_dir` and creates an empty one (last thing
    /// before `ready`: a VMM that fails to start leaves none).
    pub fn create(run_dir: &Path) -> Result<Self, ExitError> {
        use std::os::unix::fs::OpenOptionsExt;
        Self::remove_stale(run_dir)?;
        let path = run_dir.join(files::EXIT_RECORD);
        let werr = |source| ExitError::Write {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(werr)?;
        Ok(Self {
            file,
            path: path.display().to_string(),
        })
    }

    /// Writes `record` through the descriptor: the whole JSON at offset 0,
    /// the file cut to its length, then fsync.
    pub fn write(&self, record: &ExitRecord) -> Result<(), ExitError> {
        use std::os::unix::fs::FileExt;
        let werr = |source| ExitError::Write {
            path: self.path.clone(),
            source,
        };
        let mut data = serde_json::to_vec(record)?;
        data.push(b'\n');
        self.file.write_all_at(&data, 0).map_err(werr)?;
        self.file.set_len(data.len() as u64).map_err(werr)?;
        self.file.sync_all().map_err(werr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins() {
        let s = ExitSignal::new().expect("signal");
        assert!(!s.is_requested());
        s.request(ExitReason::Poweroff, "a");
        s.request(ExitReason::Crash, "b");
        assert!(s.is_requested());
        assert_eq!(s.eventfd().read().expect("evt"), 1);
        let r = s.record().expect("record");
        assert_eq!((r.reason, r.detail.as_str()), (ExitReason::Poweroff, "a"));
    }

    #[test]
    fn record_written_through_the_descriptor() {
        let dir = tempfile::tempdir().expect("tmp");
        let rec = ExitRecord {
            reason: ExitReason::Reboot,
            detail: "triple fault".into(),
            net_tx_bytes: 1 << 40,
            net_rx_bytes: 12345,
        };
        let path = dir.path().join("exit.json");
        std::fs::write(&path, vec![b'x'; 4096]).expect("stale");
        let f = ExitRecordFile::create(dir.path()).expect("create");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"",
            "stale record removed"
        );
        // Made somewhere else before the write: the descriptor is what counts.
        std::fs::rename(&path, dir.path().join("moved")).expect("rename");
        f.write(&rec).expect("write");
        let text = std::fs::read_to_string(dir.path().join("moved")).expect("read");
        let back: ExitRecord = serde_json::from_str(&text).expect("json");
        assert_eq!(back, rec);
        // A link planted at the name is never followed.
        std::os::unix::fs::symlink(dir.path().join("target"), &path).expect("symlink");
        assert!(ExitRecordFile::create(dir.path()).is_ok());
        assert!(!dir.path().join("target").exists());
    }
}
