//! Live migration over loopback: downtime, total time and bytes sent, idle and dirtying.

use std::time::Duration;

use serde_json::json;

use super::saverestore::QEMU_MAX_BANDWIDTH;
use super::Ctx;
use crate::error::{BenchError, Result};
use crate::qemu::{Qemu, QemuSpec};
use crate::report::{Better, Cell, Row, SectionReport};

/// One migration's figures, as the monitor reports them.
struct Figures {
    downtime_ms: f64,
    total_ms: f64,
    sent_mib: f64,
}

/// Migrates guests of 256 MiB and 1 GiB, idle and dirtying memory, with each monitor.
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let cases: Vec<(u64, u64)> = if ctx.quick {
        vec![(256, 0)]
    } else {
        [256u64, 1024]
            .iter()
            .flat_map(|&m| [0u64, 32, 128].map(move |r| (m, r)))
            .collect()
    };
    let rxen_pending = match ctx.host() {
        Ok(h) if !h.rxl_has("migrate") => {
            Some("`rxl migrate` has not landed (issue 5)".to_string())
        }
        Ok(_) => Some("`rxl migrate` exists but the benchmark does not drive it yet".to_string()),
        Err(_) => None,
    };
    let rxen_blocked = ctx.rxen_blocked(rxen_pending.as_deref());
    let qemu_blocked = ctx.qemu_unavailable.clone();
    let mut rows = Vec::new();
    for (mib, rate) in cases {
        let load = if rate == 0 {
            "idle".to_string()
        } else {
            format!("dirtying {rate} MiB/s")
        };
        let guest = format!("{mib} MiB, 1 vCPU, {load}");
        let mut down = Row::new("migration: downtime", &guest, "ms", 0, Better::Lower);
        let mut total = Row::new("migration: total time", &guest, "ms", 0, Better::Lower);
        let mut sent = Row::new("migration: data sent", &guest, "MiB", 1, Better::Lower);
        for _ in 0..ctx.runs {
            if qemu_blocked.is_none() {
                let f = qemu_migrate(ctx, mib, rate);
                match f {
                    Ok(f) => {
                        down.qemu.push::<String>(Ok(f.downtime_ms));
                        total.qemu.push::<String>(Ok(f.total_ms));
                        sent.qemu.push::<String>(Ok(f.sent_mib));
                    }
                    Err(e) => {
                        for r in [&mut down, &mut total, &mut sent] {
                            r.qemu.push::<String>(Err(e.to_string()));
                        }
                    }
                }
            }
        }
        for r in [&mut down, &mut total, &mut sent] {
            if let Some(why) = &rxen_blocked {
                r.rxen = Cell::Pending(why.clone());
            }
            if let Some(why) = &qemu_blocked {
                r.qemu = Cell::Pending(why.clone());
            }
        }
        rows.extend([down, total, sent]);
    }
    SectionReport {
        title: "migration".into(),
        rows,
        method: vec![
            "live migration to a second monitor on the same host over TCP on 127.0.0.1, after the \
             guest's banner (and, when dirtying, after `dirty R`: the guest rewrites its free memory \
             at R MiB/s). QEMU: `-incoming tcp:127.0.0.1:PORT` on the target, `migrate` with \
             max-bandwidth uncapped and the default 300 ms downtime limit; downtime, total time \
             and `ram.transferred` are QEMU's own figures from `query-migrate`. The target guest's \
             heartbeat is checked afterwards (not timed)."
                .into(),
        ],
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::io("find a free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::io("find a free port", e))
}

fn qemu_migrate(ctx: &mut Ctx, mib: u64, rate: u64) -> Result<Figures> {
    let tag = ctx.name("mig");
    let spec = QemuSpec {
        memory_mib: mib,
        vcpus: 1,
        incoming: None,
    };
    let mut src = Qemu::boot(&ctx.qemu, &spec, ctx.path(), &tag)?;
    if rate > 0 {
        src.console.send(&format!("dirty {rate}"))?;
        src.console
            .wait_contains("dirtying", Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(500));
    }
    let port = free_port()?;
    let dst_spec = QemuSpec {
        incoming: Some(format!("tcp:127.0.0.1:{port}")),
        ..spec
    };
    let mut dst = Qemu::spawn(&ctx.qemu, &dst_spec, ctx.path(), &format!("{tag}d"))?;
    let r = dst.qmp("query-status", json!({}));
    dst.explain(r)?;
    src.qmp(
        "migrate-set-parameters",
        json!({ "max-bandwidth": QEMU_MAX_BANDWIDTH }),
    )?;
    src.qmp("migrate", json!({ "uri": format!("tcp:127.0.0.1:{port}") }))?;
    let v = src.wait_migration(Duration::from_secs(60))?;
    let r = dst.wait_running(Duration::from_secs(30));
    dst.explain(r)?;
    dst.console.heartbeat(Duration::from_secs(10))?;
    let num = |k: &serde_json::Value, what: &str| {
        k.as_f64()
            .ok_or_else(|| BenchError::Unexpected(format!("query-migrate has no {what}: {v}")))
    };
    Ok(Figures {
        downtime_ms: num(&v["downtime"], "downtime")?,
        total_ms: num(&v["total-time"], "total-time")?,
        sent_mib: num(&v["ram"]["transferred"], "ram.transferred")? / (1u64 << 20) as f64,
    })
}
