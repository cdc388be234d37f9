//! The benchmark's sections: each is one module with one entry point,
//! `run(&mut Ctx) -> SectionReport`.

pub mod boot;
pub mod disk;
pub mod intact;
pub mod iosplit;
pub mod memory;
pub mod migration;
pub mod net;
pub mod pool;
pub mod poolha;
pub mod sandbox;
pub mod saverestore;
pub mod sched;

use std::path::Path;

use crate::error::Result;
use crate::qemu::QemuConfig;
use crate::report::Row;
use crate::rxen::RxenHost;

/// A look at a running domain (`host`, `name`) that a measurement makes
/// after its timing, before the domain is destroyed: an error fails the run.
pub type Check = dyn Fn(&RxenHost, &str) -> Result<()>;

/// Everything a section needs: options, the rxen host, QEMU's configuration.
pub struct Ctx {
    /// Repetitions per figure and monitor.
    pub runs: usize,
    /// Smoke-test mode: fewer guests and shorter waits.
    pub quick: bool,
    /// The rxen host, or why it could not start.
    pub rxen: std::result::Result<RxenHost, String>,
    /// How QEMU starts.
    pub qemu: QemuConfig,
    /// Why QEMU cannot run the guest here, if it cannot.
    pub qemu_unavailable: Option<String>,
    /// Scratch space for QEMU's sockets and files.
    pub dir: tempfile::TempDir,
    seq: usize,
}

impl Ctx {
    /// A context; `qemu_unavailable` says why QEMU rows are pending, if they are.
    pub fn new(
        runs: usize,
        quick: bool,
        rxen: std::result::Result<RxenHost, String>,
        qemu: QemuConfig,
        qemu_unavailable: Option<String>,
        dir: tempfile::TempDir,
    ) -> Ctx {
        Ctx {
            runs,
            quick,
            rxen,
            qemu,
            qemu_unavailable,
            dir,
            seq: 0,
        }
    }

    /// A fresh name for a domain or a QEMU instance.
    pub fn name(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}{}", self.seq)
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills `row` by alternating rxen and QEMU `runs` times. A monitor that
    /// cannot run (no rxend, no QEMU, or a pending reason given) gets a pending cell.
    pub fn alternate(
        &mut self,
        row: &mut Row,
        rxen_pending: Option<&str>,
        mut rxen: impl FnMut(&mut Ctx) -> Result<f64>,
        mut qemu: impl FnMut(&mut Ctx) -> Result<f64>,
    ) {
        let rxen_blocked = self.rxen_blocked(rxen_pending);
        let qemu_blocked = self.qemu_unavailable.clone();
        for _ in 0..self.runs {
            if rxen_blocked.is_none() {
                row.rxen.push(rxen(self));
            }
            if qemu_blocked.is_none() {
                row.qemu.push(qemu(self));
            }
        }
        if let Some(why) = rxen_blocked {
            row.rxen = crate::report::Cell::Pending(why);
        }
        if let Some(why) = qemu_blocked {
            row.qemu = crate::report::Cell::Pending(why);
        }
    }

    /// Why rxen cannot be measured, if it cannot.
    pub fn rxen_blocked(&self, pending: Option<&str>) -> Option<String> {
        match (&self.rxen, pending) {
            (Err(e), _) => Some(format!("rxend did not start: {e}")),
            (Ok(_), Some(p)) => Some(p.to_string()),
            _ => None,
        }
    }

    /// The rxen host (callers check `rxen_blocked` first).
    pub fn host(&self) -> Result<&RxenHost> {
        self.rxen
            .as_ref()
            .map_err(|e| crate::error::BenchError::Unexpected(format!("rxend did not start: {e}")))
    }
}
