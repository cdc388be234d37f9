//! Disk split: how two guests with credit weights 512 and 256 (and, as a control, 256 and
//! 256; and 512 against 16, which is in the idle I/O class) share one host disk when both
//! write to their image files on it at once; rxend gives their disk I/O threads the I/O
//! priority of their weights.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::console::Console;
use crate::error::{BenchError, Result};
use crate::report::{Better, Cell, Row, SectionReport};

/// The ideal share of the weight-512 domain, were the disk split in proportion to the weights.
const IDEAL: f64 = 200.0 / 3.0;

/// Runs the contests: 512:256 `runs` times, each followed by the 256:256 control and 512:16.
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let mib: u64 = if ctx.quick { 64 } else { 512 };
    let disk = disk_text(ctx.path());
    let guest =
        format!("2 × 64 MiB, 1 vCPU; each writes {mib} MiB in 64 KiB requests, then flushes");
    let row = |figure: &str, unit, better| Row::new(figure, &guest, unit, 1, better);
    let mut heavy = row("weight 512 guest: write + flush", "MiB/s", Better::Higher);
    let mut light = row("weight 256 guest: write + flush", "MiB/s", Better::Higher);
    let mut share = row(
        "weight 512 guest's share (proportional: 66.7 %)",
        "%",
        Better::Neither,
    );
    let mut control = row(
        "control, 256:256: first guest's share (even: 50 %)",
        "%",
        Better::Neither,
    );
    let mut idle = row(
        "512:16 (idle class): weight 512 guest's share",
        "%",
        Better::Neither,
    );
    let rxen_pending = match ctx.host() {
        Ok(h) if !h.rxl_has("block-attach") => Some("rxen disks have not landed".to_string()),
        _ => None,
    };
    let blocked = ctx.rxen_blocked(rxen_pending.as_deref());
    if blocked.is_none() {
        for _ in 0..ctx.runs {
            match contest(ctx, 512, 256, mib) {
                Ok((h, l)) => {
                    heavy.rxen.push::<String>(Ok(h));
                    light.rxen.push::<String>(Ok(l));
                    share.rxen.push::<String>(Ok(100.0 * h / (h + l)));
                }
                Err(e) => {
                    for c in [&mut heavy.rxen, &mut light.rxen, &mut share.rxen] {
                        c.push::<String>(Err(e.to_string()));
                    }
                }
            }
            control
                .rxen
                .push(contest(ctx, 256, 256, mib).map(|(a, b)| 100.0 * a / (a + b)));
            idle.rxen
                .push(contest(ctx, 512, 16, mib).map(|(a, b)| 100.0 * a / (a + b)));
        }
    }
    let na = "QEMU has no credit weights: this measures rxen's weight-to-I/O-priority mapping";
    for r in [&mut heavy, &mut light, &mut share, &mut control, &mut idle] {
        if let Some(why) = &blocked {
            r.rxen = Cell::Pending(why.clone());
        }
        r.qemu = Cell::NotApplicable(na.into());
    }
    SectionReport {
        title: "disk split".into(),
        versus: None,
        rows: vec![heavy, light, share, control, idle],
        method: vec![format!(
            "two rxen guests, `cpu_weight = 512` and `256` (the control: `256` and `256`; the \
             last row `512` and `16`, whose disk thread is in the idle class), each \
             with `disk = ['file:IMG,xvda,w']` on its own fresh sparse {} MiB file in the same \
             directory of the host's disk ({}); both at once run `blkbench xvda write {mib}` \
             then `blkflush xvda`, and each guest's figure is {mib} MiB over the time from its \
             command to its `blkflush ok`, taken by the host. The VMM's disk I/O is buffered \
             (no O_DIRECT): the writes land in the host's page cache and reach the disk in the \
             flush (fdatasync in the guest's `blk-xvda` thread) or by the kernel's writeback \
             threads, which do not carry the thread's I/O priority. rxend gives the weight-512 \
             guest's thread best-effort level 3 and the weight-256 guest's level 4 (`rxl \
             sched-credit -v`); a cgroup I/O weight only where the kernel offers one. Ideal for \
             a split in proportion to the weights: {IDEAL:.1} %. The guests' vCPU threads, which \
             issue the writes, also carry the CPU weights (2:1 in their CPU cgroups), so on a \
             busy host part of a split can be the CPU's.",
            mib * 2,
            disk,
        )],
    }
}

/// The block device under `dir` and its disk scheduler, as the method line names them.
fn disk_text(dir: &Path) -> String {
    let Ok(meta) = std::fs::metadata(dir) else {
        return "device unknown".into();
    };
    let dev = meta.dev();
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    let sys = Path::new("/sys/dev/block").join(format!("{major}:{minor}"));
    let name = std::fs::canonicalize(&sys)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| format!("{major}:{minor}"));
    // A partition's scheduler is its disk's.
    let sched = ["queue/scheduler", "../queue/scheduler"]
        .iter()
        .find_map(|f| std::fs::read_to_string(sys.join(f)).ok())
        .map_or_else(|| "scheduler unknown".into(), |s| s.trim().to_string());
    format!("/dev/{name}, scheduler `{sched}`")
}

/// One contest: guests of weights `first` and `second` write and flush at once; their MiB/s.
fn contest(ctx: &mut Ctx, first: u32, second: u32, mib: u64) -> Result<(f64, f64)> {
    let (an, bn) = (ctx.name("iosplit"), ctx.name("iosplit"));
    let host = ctx.host()?;
    let dir = ctx.path();
    let image = |name: &str| {
        let p = dir.join(format!("{name}.img"));
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(mib << 21))
            .map(|_| p)
            .map_err(|e| BenchError::io("create the disk image", e))
    };
    let r = (|| {
        let (ai, bi) = (image(&an)?, image(&bn)?);
        let spec = |w: u32, img: &Path| {
            format!(
                "cpu_weight = {w}\ndisk = [ 'file:{},xvda,w' ]",
                img.display()
            )
        };
        let mut a = host.boot(&an, 64, 1, &spec(first, &ai))?;
        let mut b = host.boot(&bn, 64, 1, &spec(second, &bi))?;
        let io = host.rxl(&["sched-credit", "-v"])?;
        for l in io.lines().filter(|l| l.contains("iosplit")) {
            eprintln!("rxen-bench: iosplit: {l}");
        }
        let (ra, rb) = std::thread::scope(|s| {
            let ta = s.spawn(|| write_and_flush(&mut a.console, mib));
            let tb = s.spawn(|| write_and_flush(&mut b.console, mib));
            (join(ta), join(tb))
        });
        let (ra, rb) = (ra?, rb?);
        eprintln!("rxen-bench: iosplit: weights {first}:{second}: {ra:.1} and {rb:.1} MiB/s");
        Ok((ra, rb))
    })();
    host.destroy(&an);
    host.destroy(&bn);
    for n in [&an, &bn] {
        let _ = std::fs::remove_file(dir.join(format!("{n}.img")));
    }
    r
}

fn join(t: std::thread::ScopedJoinHandle<'_, Result<f64>>) -> Result<f64> {
    t.join()
        .unwrap_or_else(|_| Err(BenchError::Unexpected("a console thread panicked".into())))
}

/// MiB/s of one guest writing `mib` MiB and flushing, timed from the host.
fn write_and_flush(con: &mut Console, mib: u64) -> Result<f64> {
    let start = Instant::now();
    con.send(&format!("blkbench xvda write {mib}"))?;
    // The console echoes the command: wait for the guest's answer.
    let line = con.wait_for("blkbench's answer", Duration::from_secs(300), |l| {
        l.contains("blkbench write") && (l.contains(" ms") || l.contains("error"))
    })?;
    if !line.contains(" ms") {
        return Err(BenchError::Unexpected(format!("guest answered {line:?}")));
    }
    con.send("blkflush xvda")?;
    let line = con.wait_for("blkflush's answer", Duration::from_secs(300), |l| {
        l.contains("blkflush ok") || l.contains("blkflush error")
    })?;
    if !line.contains("blkflush ok") {
        return Err(BenchError::Unexpected(format!("guest answered {line:?}")));
    }
    Ok(mib as f64 / start.elapsed().as_secs_f64().max(1e-9))
}
