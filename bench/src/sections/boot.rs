//! Boot: from the command that starts a guest to its first console line.

use std::time::{Duration, Instant};

use super::{Check, Ctx};
use crate::error::Result;
use crate::qemu::{Qemu, QemuSpec};
use crate::report::{Better, Row, SectionReport};
use crate::rxen::RxenHost;

/// Measures boot time for rxen (`rxl create -c`) and QEMU (`qemu-system-x86_64 -M microvm`).
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let guests: &[(u64, u32)] = if ctx.quick {
        &[(128, 1)]
    } else {
        &[(128, 1), (1024, 2)]
    };
    let mut rows = Vec::new();
    for &(mib, vcpus) in guests {
        let mut row = Row::new(
            "boot to first console line",
            &format!("{mib} MiB, {vcpus} vCPU"),
            "ms",
            1,
            Better::Lower,
        );
        ctx.alternate(
            &mut row,
            None,
            |c| {
                let name = c.name("boot");
                rxen_boot_ms(c.host()?, &name, mib, vcpus, &|_, _| Ok(()))
            },
            |c| {
                let tag = c.name("boot");
                let spec = QemuSpec {
                    memory_mib: mib,
                    vcpus,
                    incoming: None,
                };
                let start = Instant::now();
                let mut q = Qemu::spawn(&c.qemu, &spec, c.path(), &tag)?;
                let r = q
                    .console
                    .wait_for("a first line", Duration::from_secs(30), |l| {
                        !l.trim().is_empty()
                    });
                let t = start.elapsed().as_secs_f64() * 1000.0;
                q.explain(check_banner(r))?;
                Ok(t)
            },
        );
        rows.push(row);
    }
    SectionReport {
        title: "boot".into(),
        versus: None,
        rows,
        method: vec![
            "wall time from spawning the command (`rxl create -c CFG` with rxend already running; \
             `qemu-system-x86_64 -M microvm -enable-kvm -kernel testguest.elf -serial stdio`) \
             to the guest's first console line, its banner `rxen testguest: booted on N vCPUs`, \
             printed once every vCPU has checked in."
                .into(),
        ],
    }
}

/// Times one rxen boot: from spawning `rxl create -c` to the first console
/// line, in ms. `check` then looks at the running domain (not timed) before
/// it is destroyed.
pub fn rxen_boot_ms(
    host: &RxenHost,
    name: &str,
    mib: u64,
    vcpus: u32,
    check: &Check,
) -> Result<f64> {
    let start = Instant::now();
    let mut d = host.create(name, mib, vcpus, "")?;
    let r = d
        .console
        .wait_for("a first line", Duration::from_secs(30), |l| {
            !l.trim().is_empty()
        });
    let t = start.elapsed().as_secs_f64() * 1000.0;
    let r = check_banner(r).and_then(|()| check(host, name));
    host.destroy(name);
    r.map(|()| t)
}

fn check_banner(r: Result<String>) -> Result<()> {
    let line = r?;
    if line.contains("rxen testguest") {
        Ok(())
    } else {
        Err(crate::error::BenchError::Unexpected(format!(
            "first console line was {line:?}"
        )))
    }
}
