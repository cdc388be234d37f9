//! Save and restore: time and file size, for an idle guest of 256 MiB and 1 GiB.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use super::Ctx;
use crate::error::{BenchError, Result};
use crate::qemu::{Qemu, QemuSpec};
use crate::report::{Better, Cell, Row, SectionReport};

/// QEMU's migration bandwidth cap for save and migration: effectively none (its default is 32 MiB/s).
pub const QEMU_MAX_BANDWIDTH: u64 = 64 << 30;

/// One save-then-restore cycle's figures.
struct Cycle {
    save_ms: f64,
    size_mib: f64,
    restore_ms: f64,
}

/// Saves and restores an idle guest with each monitor.
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let sizes: &[u64] = if ctx.quick { &[256] } else { &[256, 1024] };
    let rxen_pending = match ctx.host() {
        Ok(h) if !(h.rxl_has("save") && h.rxl_has("restore")) => {
            Some("`rxl save`/`rxl restore` have not landed (issue 5)".to_string())
        }
        _ => None,
    };
    let qemu_blocked = ctx.qemu_unavailable.clone();
    let rxen_blocked = ctx.rxen_blocked(rxen_pending.as_deref());
    let mut rows = Vec::new();
    for &mib in sizes {
        let guest = format!("{mib} MiB, 1 vCPU, idle");
        let mut save = Row::new("save: time", &guest, "ms", 0, Better::Lower);
        let mut size = Row::new("save: file size", &guest, "MiB", 1, Better::Lower);
        let mut restore = Row::new("restore: time to running", &guest, "ms", 0, Better::Lower);
        for _ in 0..ctx.runs {
            if rxen_blocked.is_none() {
                push(
                    &mut save,
                    &mut size,
                    &mut restore,
                    true,
                    rxen_cycle(ctx, mib),
                );
            }
            if qemu_blocked.is_none() {
                push(
                    &mut save,
                    &mut size,
                    &mut restore,
                    false,
                    qemu_cycle(ctx, mib),
                );
            }
        }
        for r in [&mut save, &mut size, &mut restore] {
            if let Some(why) = &rxen_blocked {
                r.rxen = Cell::Pending(why.clone());
            }
            if let Some(why) = &qemu_blocked {
                r.qemu = Cell::Pending(why.clone());
            }
        }
        rows.extend([save, size, restore]);
    }
    SectionReport {
        title: "save/restore".into(),
        versus: None,
        rows,
        method: vec![
            "save: an idle guest just after its banner; rxen: wall time of `rxl save NAME FILE`; \
             QEMU: QMP `stop` then `migrate \"exec:cat > FILE\"` (max-bandwidth uncapped) until \
             `query-migrate` says completed. File size: the saved file's length."
                .into(),
            "restore: rxen: wall time of `rxl restore FILE`; QEMU: from spawning \
             `qemu-system-x86_64 ... -incoming defer` and `migrate-incoming \"exec:cat FILE\"` to \
             `query-status` running. Each restore is then checked by asking the guest for its \
             heartbeat (not timed)."
                .into(),
        ],
    }
}

fn push(save: &mut Row, size: &mut Row, restore: &mut Row, rxen: bool, c: Result<Cycle>) {
    fn pick(r: &mut Row, rxen: bool) -> &mut Cell {
        if rxen {
            &mut r.rxen
        } else {
            &mut r.qemu
        }
    }
    match c {
        Ok(c) => {
            pick(save, rxen).push::<String>(Ok(c.save_ms));
            pick(size, rxen).push::<String>(Ok(c.size_mib));
            pick(restore, rxen).push::<String>(Ok(c.restore_ms));
        }
        Err(e) => {
            let e = e.to_string();
            for r in [save, size, restore] {
                pick(r, rxen).push::<String>(Err(e.clone()));
            }
        }
    }
}

fn file_mib(p: &PathBuf) -> Result<f64> {
    let len = std::fs::metadata(p)
        .map_err(|e| BenchError::io(format!("stat {}", p.display()), e))?
        .len();
    Ok(len as f64 / (1u64 << 20) as f64)
}

fn rxen_cycle(ctx: &mut Ctx, mib: u64) -> Result<Cycle> {
    let name = ctx.name("sr");
    let file = ctx.path().join(format!("{name}.rxen-save"));
    let host = ctx.host()?;
    let r = (|| {
        drop(host.boot(&name, mib, 1, "")?);
        let t = Instant::now();
        host.rxl(&["save", &name, &file.to_string_lossy()])?;
        let save_ms = t.elapsed().as_secs_f64() * 1000.0;
        let size_mib = file_mib(&file)?;
        // xl semantics: the saved domain is gone; make sure before restoring it.
        host.destroy(&name);
        let t = Instant::now();
        host.rxl(&["restore", &file.to_string_lossy()])?;
        let restore_ms = t.elapsed().as_secs_f64() * 1000.0;
        let mut d = host.attach(&name)?;
        d.console.heartbeat(Duration::from_secs(10))?;
        Ok(Cycle {
            save_ms,
            size_mib,
            restore_ms,
        })
    })();
    host.destroy(&name);
    let _ = std::fs::remove_file(&file);
    r
}

fn qemu_cycle(ctx: &mut Ctx, mib: u64) -> Result<Cycle> {
    let tag = ctx.name("sr");
    let file = ctx.path().join(format!("{tag}.qemu-save"));
    let r = (|| {
        let spec = QemuSpec {
            memory_mib: mib,
            vcpus: 1,
            incoming: None,
        };
        let mut src = Qemu::boot(&ctx.qemu, &spec, ctx.path(), &tag)?;
        src.qmp(
            "migrate-set-parameters",
            json!({ "max-bandwidth": QEMU_MAX_BANDWIDTH }),
        )?;
        let t = Instant::now();
        src.qmp("stop", json!({}))?;
        src.qmp(
            "migrate",
            json!({ "uri": format!("exec:cat > {}", file.display()) }),
        )?;
        src.wait_migration(Duration::from_secs(60))?;
        let save_ms = t.elapsed().as_secs_f64() * 1000.0;
        drop(src);
        let size_mib = file_mib(&file)?;
        let spec = QemuSpec {
            incoming: Some("defer".into()),
            ..spec
        };
        let t = Instant::now();
        let mut dst = Qemu::spawn(&ctx.qemu, &spec, ctx.path(), &format!("{tag}r"))?;
        dst.qmp(
            "migrate-incoming",
            json!({ "uri": format!("exec:cat {}", file.display()) }),
        )?;
        let r = dst.wait_running(Duration::from_secs(60));
        dst.explain(r)?;
        let restore_ms = t.elapsed().as_secs_f64() * 1000.0;
        dst.console.heartbeat(Duration::from_secs(10))?;
        Ok(Cycle {
            save_ms,
            size_mib,
            restore_ms,
        })
    })();
    let _ = std::fs::remove_file(&file);
    r
}
