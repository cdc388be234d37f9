//! Memory: each monitor's own resident memory beyond the guest's pages.

use std::time::Duration;

use super::{Check, Ctx};
use crate::error::Result;
use crate::procfs;
use crate::qemu::{Qemu, QemuSpec};
use crate::report::{Better, Row, SectionReport};
use crate::rxen::RxenHost;

/// Boots an idle guest and reads the monitor's smaps.
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let sizes: &[u64] = if ctx.quick { &[128] } else { &[128, 1024] };
    let settle = Duration::from_millis(if ctx.quick { 300 } else { 1000 });
    let mut rows = Vec::new();
    for &mib in sizes {
        let mut row = Row::new(
            "monitor RSS beyond guest RAM",
            &format!("{mib} MiB, 1 vCPU, idle"),
            "MiB",
            2,
            Better::Lower,
        );
        ctx.alternate(
            &mut row,
            None,
            |c| {
                let name = c.name("mem");
                rxen_own_mib(c.host()?, &name, mib, settle, &|_, _| Ok(()))
            },
            |c| {
                let tag = c.name("mem");
                let spec = QemuSpec {
                    memory_mib: mib,
                    vcpus: 1,
                    incoming: None,
                };
                let q = Qemu::boot(&c.qemu, &spec, c.path(), &tag)?;
                std::thread::sleep(settle);
                Ok(procfs::resident(q.pid(), mib)?.own_mib())
            },
        );
        rows.push(row);
    }
    SectionReport {
        title: "memory".into(),
        versus: None,
        rows,
        method: vec![format!(
            "{} after the banner, the sum of `Rss` over the monitor process's mappings in \
             `/proc/PID/smaps`, less the `Rss` of the anonymous mapping of exactly the guest's size \
             (its RAM): the same rule for the rxen VMM and for QEMU. rxend itself is not counted.",
            if ctx.quick { "0.3 s" } else { "1 s" }
        )],
    }
}

/// Boots an idle 1-vCPU rxen guest of `mib` MiB, waits `settle` after its
/// banner and returns its VMM's resident MiB beyond guest RAM. `check` then
/// looks at the running domain before it is destroyed.
pub fn rxen_own_mib(
    host: &RxenHost,
    name: &str,
    mib: u64,
    settle: Duration,
    check: &Check,
) -> Result<f64> {
    let r = (|| {
        let _d = host.boot(name, mib, 1, "")?;
        std::thread::sleep(settle);
        let pid = host.vmm_pid(name)?;
        let own = procfs::resident(pid, mib)?.own_mib();
        check(host, name)?;
        Ok(own)
    })();
    host.destroy(name);
    r
}
