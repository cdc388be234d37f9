//! How a VMM ends: the first exit request wins, and the exit record is
//! written atomically to `RUN_DIR/exit.json`.

use std::io::Write;
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

/// Writes `record` to `run_dir/exit.json` atomically (temporary file, fsync, rename).
pub fn write_exit_record(run_dir: &Path, record: &ExitRecord) -> Result<(), ExitError> {
    let path = run_dir.join(files::EXIT_RECORD);
    let tmp = run_dir.join(format!(".{}.tmp", files::EXIT_RECORD));
    let werr = |p: &Path| {
        let p = p.display().to_string();
        move |source| ExitError::Write { path: p, source }
    };
    let mut data = serde_json::to_vec(record)?;
    data.push(b'\n');
    let mut f = std::fs::File::create(&tmp).map_err(werr(&tmp))?;
    f.write_all(&data).map_err(werr(&tmp))?;
    f.sync_all().map_err(werr(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(werr(&path))?;
    Ok(())
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
    fn record_written_atomically() {
        let dir = tempfile::tempdir().expect("tmp");
        let rec = ExitRecord {
            reason: ExitReason::Reboot,
            detail: "triple fault".into(),
            net_tx_bytes: 1 << 40,
            net_rx_bytes: 12345,
        };
        write_exit_record(dir.path(), &rec).expect("write");
        let text = std::fs::read_to_string(dir.path().join("exit.json")).expect("read");
        let back: ExitRecord = serde_json::from_str(&text).expect("json");
        assert_eq!(back, rec);
        assert!(!dir.path().join(".exit.json.tmp").exists());
    }
}
