//! Live migration over loopback: downtime, total time and bytes sent, idle and dirtying.

use std::time::Duration;

use serde_json::json;

use super::saverestore::QEMU_MAX_BANDWIDTH;
use super::{Check, Ctx};
use crate::error::{BenchError, Result};
use crate::qemu::{Qemu, QemuSpec};
use crate::report::{Better, Cell, Row, SectionReport};
use crate::rxen::RxenHost;

/// One migration's figures, as the monitor reports them.
pub struct Figures {
    /// The time the guest did not run, in ms: from its pause on the source to its run on
    /// the target.
    pub downtime_ms: f64,
    /// The downtime as the source alone counts it, in ms: from the pause until the last of
    /// the stream is sent (QEMU's `query-migrate` figure, in whole ms; rxen's source-side
    /// phases added up).
    pub source_side_ms: Option<f64>,
    /// From the start of the migration to its end, in ms.
    pub total_ms: f64,
    /// Bytes sent, in MiB.
    pub sent_mib: f64,
    /// rxen: the stop-and-copy phases `rxl migrate -v` prints, as (label,
    /// microseconds), "not broken down" and "last round bytes" included.
    pub phases: Vec<(String, f64)>,
}

/// The rows of the stop-and-copy breakdown beside the downtime rows: the
/// phases of a live migration as `rxl migrate -v` names them, then what they
/// leave out, in microseconds.
const PHASES: &[&str] = &[
    "vCPU pause",
    "device freeze",
    "dirty-log sync",
    "state capture",
    "last round on the wire",
    "target restore",
    "target resume",
    "not broken down",
];

/// The breakdown `rxl migrate -v` prints after its figures line: each
/// `  LABEL  N us` line as (label, N), and the last round's bytes.
fn phases(out: &str) -> Vec<(String, f64)> {
    let mut v = Vec::new();
    let lines = out
        .lines()
        .skip_while(|l| *l != "stop-and-copy, in microseconds:")
        .skip(1)
        .map_while(|l| l.strip_prefix("  "));
    for l in lines {
        let Some((label, rest)) = l.split_once("  ") else {
            continue;
        };
        if let Some(us) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
            v.push((label.to_string(), us));
        }
        if label == "last round on the wire" {
            if let Some(b) = field(rest, "(") {
                v.push(("last round bytes".to_string(), b));
            }
        }
    }
    v
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
        Ok(h) if !h.rxl_has("migrate") => Some(
            "`rxl migrate` has not landed here (issue 5: on the snap branch, not merged yet)"
                .to_string(),
        ),
        _ => None,
    };
    let mut rxen_blocked = ctx.rxen_blocked(rxen_pending.as_deref());
    // The target: a second rxend whose relocation server listens on 127.0.0.2.
    let key = ctx.path().join("relocation.key");
    let target = target_unless(&mut rxen_blocked, &key);
    let qemu_blocked = ctx.qemu_unavailable.clone();
    let mut rows = Vec::new();
    for (mib, rate) in cases {
        let load = if rate == 0 {
            "idle".to_string()
        } else {
            format!("dirtying {rate} MiB/s")
        };
        let guest = format!("{mib} MiB, 1 vCPU, {load}");
        let mut down = Row::new("migration: downtime", &guest, "ms", 2, Better::Lower);
        let mut source_side = Row::new(
            "migration: downtime as the source counts it",
            &guest,
            "ms",
            2,
            Better::Lower,
        );
        let mut total = Row::new("migration: total time", &guest, "ms", 0, Better::Lower);
        let mut sent = Row::new("migration: data sent", &guest, "MiB", 1, Better::Lower);
        let mut breakdown: Vec<Row> = PHASES
            .iter()
            .map(|p| {
                let figure = format!("migration: downtime: {p}");
                Row::new(&figure, &guest, "µs", 0, Better::Lower)
            })
            .chain([Row::new(
                "migration: last round sent",
                &guest,
                "KiB",
                0,
                Better::Lower,
            )])
            .collect();
        for _ in 0..ctx.runs {
            if let Some((t, port)) = &target {
                let name = ctx.name("mig");
                let f = ctx.host().and_then(|src| {
                    rxen_migrate(src, t, &name, *port, &key, mib, rate, &|_, _| Ok(()))
                });
                push_phases(&mut breakdown, &f);
                push_source_side(&mut source_side.rxen, &f);
                push(&mut down.rxen, &mut total.rxen, &mut sent.rxen, f);
            }
            if qemu_blocked.is_none() {
                let f = qemu_migrate(ctx, mib, rate);
                push_source_side(&mut source_side.qemu, &f);
                push(&mut down.qemu, &mut total.qemu, &mut sent.qemu, f);
            }
        }
        for r in [&mut down, &mut source_side, &mut total, &mut sent] {
            if let Some(why) = &rxen_blocked {
                r.rxen = Cell::Pending(why.clone());
            }
            if let Some(why) = &qemu_blocked {
                r.qemu = Cell::Pending(why.clone());
            }
        }
        for r in &mut breakdown {
            r.qemu = Cell::NotApplicable("QEMU reports no such breakdown".into());
            if let Some(why) = &rxen_blocked {
                r.rxen = Cell::Pending(why.clone());
            }
        }
        rows.push(down);
        rows.push(source_side);
        rows.extend(breakdown);
        rows.extend([total, sent]);
    }
    rows.extend(storage_rows(
        ctx,
        target.as_ref(),
        &key,
        rxen_blocked.as_deref(),
    ));
    SectionReport {
        title: "migration".into(),
        versus: None,
        rows,
        method: vec![
            "live migration to a second monitor on the same host over loopback TCP, after the \
             guest's banner (and, when dirtying, after `dirty R`: the guest rewrites its free memory \
             at R MiB/s). QEMU: `-incoming tcp:127.0.0.1:PORT` on the target, `migrate` with \
             max-bandwidth uncapped and the default 300 ms downtime limit; total time and \
             `ram.transferred` are QEMU's own figures from `query-migrate`. The target guest's \
             heartbeat is checked afterwards (not timed)."
                .into(),
            "rxen: `rxl migrate --port P --key KEY NAME 127.0.0.2` from the benchmark's rxend to a \
             second rxend whose relocation server listens on 127.0.0.2:P (pre-copy with rxl's \
             defaults: at most 30 rounds, 20 ms downtime target); downtime, total time and bytes \
             sent are the figures `rxl migrate` prints."
                .into(),
            "downtime, both monitors: from the guest's stop on the source to its run on the \
             target. QEMU: its STOP event (source, sent once its vCPUs are paused) to its RESUME \
             event (target, sent just before its vCPUs run), by the events' own timestamps (one \
             host, one clock). rxen: from the pause request to the target's last vCPU entering \
             the guest, which the target reports; the source keeps the report between its own \
             \"go\" and its reading of \"resumed\". \"Downtime as the source counts it\": \
             QEMU's `query-migrate` downtime (source only: the stop to the last byte written, \
             whole ms), and for rxen its source-side phases added up (vCPU pause, device \
             freeze, dirty-log sync, state capture, last round on the wire)."
                .into(),
            "rxen: the \"downtime: PHASE\" rows are the stop-and-copy phases `rxl migrate -v` \
             prints, each measured by the VMM where it runs (target restore and resume by the \
             target's VMM) with a monotonic clock, in microseconds; \"not broken down\" is the \
             downtime less their sum (the handshake's round trips, the target reading the \
             stream's tail); \"last round sent\" is the stop-and-copy round's stream bytes \
             (pages and state records). The medians of the phases need not add up to the \
             median downtime."
                .into(),
            "rxen: \"migration --copy-storage\" rows: a 256 MiB idle guest with a 64 MiB raw \
             disk whose every byte holds data, migrated with `rxl migrate -v --copy-storage` to \
             the second rxend, whose `storage-dir` is in the benchmark's directory (same host, \
             different files); data sent counts the disk. QEMU's equivalent \
             (blockdev-mirror with `migrate`) is not set up by this benchmark."
                .into(),
        ],
    }
}

/// The storage migration rows: downtime, total time and data sent of a 256 MiB guest with
/// a 64 MiB raw disk (all data) moved with `--copy-storage`; rxen only.
fn storage_rows(
    ctx: &mut Ctx,
    target: Option<&(RxenHost, u16)>,
    key: &std::path::Path,
    blocked: Option<&str>,
) -> Vec<Row> {
    let guest = "256 MiB, 1 vCPU, idle, 64 MiB raw disk";
    let mut down = Row::new(
        "migration --copy-storage: downtime",
        guest,
        "ms",
        0,
        Better::Lower,
    );
    let mut total = Row::new(
        "migration --copy-storage: total time",
        guest,
        "ms",
        0,
        Better::Lower,
    );
    let mut sent = Row::new(
        "migration --copy-storage: data sent",
        guest,
        "MiB",
        1,
        Better::Lower,
    );
    let dir = ctx.path().to_path_buf();
    for _ in 0..ctx.runs {
        if let Some((t, port)) = target {
            let name = ctx.name("smig");
            let f = ctx
                .host()
                .and_then(|src| rxen_migrate_storage(src, t, &name, *port, key, &dir));
            push(&mut down.rxen, &mut total.rxen, &mut sent.rxen, f);
        }
    }
    for r in [&mut down, &mut total, &mut sent] {
        if let Some(why) = blocked {
            r.rxen = Cell::Pending(why.to_string());
        }
        r.qemu = Cell::Pending(
            "not set up by this benchmark: QEMU's equivalent is blockdev-mirror with migrate"
                .into(),
        );
    }
    vec![down, total, sent]
}

/// Boots NAME (256 MiB) on `src` with a 64 MiB raw disk in `dir` whose every byte holds
/// data, migrates it with `--copy-storage` to `target`'s relocation server and returns the
/// figures `rxl migrate` prints; removes both disks after.
fn rxen_migrate_storage(
    src: &RxenHost,
    target: &RxenHost,
    name: &str,
    port: u16,
    key: &std::path::Path,
    dir: &std::path::Path,
) -> Result<Figures> {
    use std::io::Write;
    let img = dir.join(format!("{name}.raw"));
    let r = (|| {
        let mib: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8 + 1).collect();
        let mut f =
            std::fs::File::create(&img).map_err(|e| BenchError::io("create the disk image", e))?;
        for _ in 0..64 {
            f.write_all(&mib)
                .map_err(|e| BenchError::io("write the disk image", e))?;
        }
        drop(f);
        let extra = format!("disk = [ 'file:{},xvda,w' ]", img.display());
        drop(src.boot(name, 256, 1, &extra)?);
        let out = src.migrate_to_target(&["-v", "--copy-storage"], port, key, name)?;
        alive_on(target, name)?;
        figures_of(&out)
    })();
    src.destroy(name);
    target.destroy(name);
    // Removed whatever happened; a file already gone is fine.
    let _ = std::fs::remove_file(&img);
    let _ = std::fs::remove_file(RxenHost::storage_dir_of(key).join(format!("{name}-xvda.raw")));
    r
}

/// The migration target ([`start_target`], sandboxed) unless rxen is `blocked`; when it does
/// not start, `blocked` says why.
pub fn target_unless(
    blocked: &mut Option<String>,
    key: &std::path::Path,
) -> Option<(RxenHost, u16)> {
    if blocked.is_some() {
        return None;
    }
    match start_target(key, true) {
        Ok(t) => Some(t),
        Err(e) => {
            *blocked = Some(format!("the target rxend did not start: {e}"));
            None
        }
    }
}

/// Writes a relocation key to `key` and starts a target rxend whose relocation
/// server listens on 127.0.0.2 at a free port, its VMMs confined (`sandbox`)
/// or not (`--no-sandbox`); returns it and the port.
pub fn start_target(key: &std::path::Path, sandbox: bool) -> Result<(RxenHost, u16)> {
    std::fs::write(key, "rxen benchmark relocation key, loopback only\n")
        .map_err(|e| BenchError::io("write the relocation key", e))?;
    let port = free_port()?;
    Ok((
        RxenHost::start_relocation_sandbox("127.0.0.2", port, key, sandbox)?,
        port,
    ))
}

/// Adds one run's breakdown to the rows built from [`PHASES`] (and the last
/// round's bytes, in KiB, last).
fn push_phases(rows: &mut [Row], f: &Result<Figures>) {
    let labels = PHASES.iter().copied().chain(["last round bytes"]);
    for (row, label) in rows.iter_mut().zip(labels) {
        let v = match f {
            Ok(f) => f
                .phases
                .iter()
                .find(|(l, _)| l == label)
                .map(|(_, v)| {
                    if label == "last round bytes" {
                        v / 1024.0
                    } else {
                        *v
                    }
                })
                .ok_or_else(|| format!("rxl migrate -v printed no `{label}`")),
            Err(e) => Err(e.to_string()),
        };
        row.rxen.push(v);
    }
}

/// The phases of rxen's breakdown that happen on the source before the stream's end is sent.
const SOURCE_PHASES: &[&str] = &[
    "vCPU pause",
    "device freeze",
    "dirty-log sync",
    "state capture",
    "last round on the wire",
];

fn push_source_side(cell: &mut Cell, f: &Result<Figures>) {
    cell.push(match f {
        Ok(f) => f
            .source_side_ms
            .ok_or_else(|| "no source-side figure".to_string()),
        Err(e) => Err(e.to_string()),
    });
}

fn push(down: &mut Cell, total: &mut Cell, sent: &mut Cell, f: Result<Figures>) {
    match f {
        Ok(f) => {
            down.push::<String>(Ok(f.downtime_ms));
            total.push::<String>(Ok(f.total_ms));
            sent.push::<String>(Ok(f.sent_mib));
        }
        Err(e) => {
            for c in [down, total, sent] {
                c.push::<String>(Err(e.to_string()));
            }
        }
    }
}

/// The number after `key` in rxl's figures line, e.g. `downtime 12.3 ms`.
fn field(text: &str, key: &str) -> Option<f64> {
    text.split(key)
        .nth(1)?
        .trim_start()
        .split([',', ' ', '('])
        .next()?
        .parse()
        .ok()
}

/// Boots `name` on `src`, makes it dirty `rate` MiB/s if `rate` is not 0, and
/// migrates it live to `target` (relocation server on 127.0.0.2:`port`);
/// returns the figures `rxl migrate` prints. `check` looks at the domain on
/// the source before the migration and on the target after it (not timed).
#[allow(clippy::too_many_arguments)]
pub fn rxen_migrate(
    src: &RxenHost,
    target: &RxenHost,
    name: &str,
    port: u16,
    key: &std::path::Path,
    mib: u64,
    rate: u64,
    check: &Check,
) -> Result<Figures> {
    let r = (|| {
        let mut d = src.boot(name, mib, 1, "")?;
        check(src, name)?;
        if rate > 0 {
            d.console.send(&format!("dirty {rate}"))?;
            d.console
                .wait_contains("dirtying", Duration::from_secs(10))?;
            std::thread::sleep(Duration::from_millis(500));
        }
        drop(d);
        let out = src.migrate_to_target(&["-v"], port, key, name)?;
        alive_on(target, name)?;
        check(target, name)?;
        figures_of(&out)
    })();
    src.destroy(name);
    target.destroy(name);
    r
}

/// The figures of `rxl migrate -v`'s output `out`.
fn figures_of(out: &str) -> Result<Figures> {
    let get = |k: &str| {
        field(out, k).ok_or_else(|| {
            BenchError::Unexpected(format!("no `{k}` figure in rxl migrate's output {out:?}"))
        })
    };
    let phases = phases(out);
    // The breakdown's `downtime N us` line, in microseconds, over the figures line's 0.1 ms.
    let exact = phases
        .iter()
        .find(|(l, _)| l == "downtime")
        .map(|(_, us)| us / 1000.0);
    let source_side_us: f64 = phases
        .iter()
        .filter(|(l, _)| SOURCE_PHASES.contains(&l.as_str()))
        .map(|(_, us)| us)
        .sum();
    Ok(Figures {
        downtime_ms: match exact {
            Some(ms) => ms,
            None => get("downtime ")?,
        },
        source_side_ms: phases
            .iter()
            .any(|(l, _)| l == "vCPU pause")
            .then_some(source_side_us / 1000.0),
        total_ms: get("total ")?,
        sent_mib: get("bytes sent (")?,
        phases,
    })
}

/// Attaches to the migrated domain on the target and asks for its heartbeat;
/// the target's console may take a moment to open after `rxl migrate` returns.
fn alive_on(target: &RxenHost, name: &str) -> Result<()> {
    let mut last = None;
    for _ in 0..25 {
        let r = target
            .attach(name)
            .and_then(|mut d| d.console.heartbeat(Duration::from_secs(5)).map(|_| ()));
        match r {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        let listed = target
            .rxl(&["list"])
            .map(|l| l.lines().any(|l| l.split_whitespace().next() == Some(name)))
            .unwrap_or(false);
        if !listed {
            let log = target.log_tail();
            eprintln!(
                "rxen-bench: migration: {name} is gone from the target; its rxend log: {log}"
            );
            let reason = log.rsplit(" / ").next().unwrap_or("").to_string();
            return Err(BenchError::Unexpected(format!(
                "rxl migrate succeeded but the domain is gone from the target: {reason}"
            )));
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    Err(last.unwrap_or_else(|| BenchError::Unexpected("no heartbeat on the target".into())))
}

/// A TCP port free on this host just now.
pub fn free_port() -> Result<u16> {
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
    // From the source's STOP to the target's RESUME, by QEMU's own event timestamps (the
    // same host's clock): the guest's downtime as rxen's figure counts it. QEMU's STOP comes
    // once its vCPUs are paused, RESUME just before they run.
    let stop = src.event_unix_us("STOP");
    let resume = dst.event_unix_us("RESUME");
    let downtime_ms = match (stop, resume) {
        (Some(a), Some(b)) if b >= a => (b - a) as f64 / 1000.0,
        _ => {
            return Err(BenchError::Unexpected(format!(
                "no STOP event on the source or RESUME on the target (STOP {stop:?}, RESUME {resume:?})"
            )))
        }
    };
    Ok(Figures {
        downtime_ms,
        source_side_ms: Some(num(&v["downtime"], "downtime")?),
        total_ms: num(&v["total-time"], "total-time")?,
        sent_mib: num(&v["ram"]["transferred"], "ram.transferred")? / (1u64 << 20) as f64,
        phases: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breakdown_is_read_from_rxl_migrate_v() {
        let out = "migrated g to 127.0.0.2: rounds 2, 5000 bytes sent (0.0 MiB; 1 pages, 2 zero pages), total 20 ms, downtime 6.1 ms\n\
                   stop-and-copy, in microseconds:\n\
                   \x20 vCPU pause                     120 us\n\
                   \x20 last round on the wire        3000 us (8192 bytes)\n\
                   \x20 not broken down                900 us (handshake, the target reading the stream's tail)\n\
                   \x20 downtime                      6100 us\n";
        let p = phases(out);
        assert_eq!(
            p,
            vec![
                ("vCPU pause".to_string(), 120.0),
                ("last round on the wire".to_string(), 3000.0),
                ("last round bytes".to_string(), 8192.0),
                ("not broken down".to_string(), 900.0),
                ("downtime".to_string(), 6100.0),
            ]
        );
        let mut rows: Vec<Row> = PHASES
            .iter()
            .chain(&["last round bytes"])
            .map(|l| Row::new(l, "g", "µs", 0, Better::Lower))
            .collect();
        assert_eq!(figures_of(out).expect("figures").source_side_ms, Some(3.12));
        let f = Ok(Figures {
            downtime_ms: 6.1,
            source_side_ms: None,
            total_ms: 20.0,
            sent_mib: 0.0,
            phases: p,
        });
        push_phases(&mut rows, &f);
        assert_eq!(rows[0].rxen.summary().map(|s| s.median), Some(120.0));
        assert_eq!(
            rows[PHASES.len()].rxen.summary().map(|s| s.median),
            Some(8.0)
        );
        // A phase rxl did not print is a failure of that row, not a zero.
        assert_eq!(rows[1].rxen.summary(), None);
    }
}
