//! Disk: the guest's sequential throughput through virtio-blk against the
//! host's own on the same image file.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::console::Console;
use crate::error::{BenchError, Result};
use crate::report::{Better, Cell, Row, SectionReport};

/// The request size of both the guest's `blkbench` and the host's loop.
const CHUNK: usize = 64 * 1024;

/// Why QEMU gets no disk figure.
const QEMU_NA: &str = "the test guest probes rxen's virtio-mmio slots at 0xD000_0000; QEMU microvm puts its devices at 0xFEB0_0000";

/// Runs `blkbench` in an rxen guest and the same transfers on the host, alternately.
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let mib: u64 = if ctx.quick { 32 } else { 128 };
    let guest = format!("128 MiB, 1 vCPU; {mib} MiB in 64 KiB requests, 256 MiB raw file");
    let mut write = Row::new("disk: sequential write", &guest, "MiB/s", 1, Better::Higher);
    let mut read = Row::new("disk: sequential read", &guest, "MiB/s", 1, Better::Higher);
    let mut random = Row::new("disk: random read", &guest, "MiB/s", 1, Better::Higher);
    random.rxen = Cell::Pending("the test guest's `blkbench` is sequential only".into());
    random.qemu = Cell::NotApplicable(QEMU_NA.into());
    let rxen_pending = match ctx.host() {
        Ok(h) if !h.rxl_has("block-attach") => {
            Some("rxen disks (issue 4) have not landed".to_string())
        }
        _ => None,
    };
    match ctx.rxen_blocked(rxen_pending.as_deref()) {
        Some(why) => {
            write.rxen = Cell::Pending(why.clone());
            read.rxen = Cell::Pending(why);
        }
        None => {
            let (mut hw, mut hr) = (Cell::empty(), Cell::empty());
            if let Err(e) = measure(ctx, mib, &mut write.rxen, &mut read.rxen, &mut hw, &mut hr) {
                write.rxen.push::<String>(Err(e.to_string()));
                read.rxen.push::<String>(Err(e.to_string()));
            }
            write.host = Some(hw);
            read.host = Some(hr);
        }
    }
    write.qemu = Cell::NotApplicable(QEMU_NA.into());
    read.qemu = Cell::NotApplicable(QEMU_NA.into());
    SectionReport {
        title: "disk".into(),
        rows: vec![write, read, random],
        method: vec![format!(
            "one rxen guest with `disk = ['file:IMG,xvda,w']` (a 256 MiB raw file on the host's \
             disk) runs `blkbench xvda write {mib}` then `blkbench xvda read {mib}` (sequential \
             64 KiB virtio-blk requests, timed by the guest); alternately, the host writes and \
             reads the same {mib} MiB of the same file with 64 KiB `pwrite`/`pread` (buffered, no \
             fdatasync: the VMM's own I/O is buffered and the guest does not flush). Reads come \
             from the page cache on both sides."
        )],
    }
}

fn measure(
    ctx: &mut Ctx,
    mib: u64,
    gw: &mut Cell,
    gr: &mut Cell,
    hw: &mut Cell,
    hr: &mut Cell,
) -> Result<()> {
    let name = ctx.name("disk");
    let img = ctx.path().join(format!("{name}.img"));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(256 << 20))
        .map_err(|e| BenchError::io("create the disk image", e))?;
    let host = ctx.host()?;
    let r = (|| {
        let mut d = host.boot(
            &name,
            128,
            1,
            &format!("disk = [ 'file:{},xvda,w' ]", img.display()),
        )?;
        for _ in 0..ctx.runs {
            gw.push(blkbench(&mut d.console, "write", mib));
            hw.push(host_io(&img, mib, true));
            gr.push(blkbench(&mut d.console, "read", mib));
            hr.push(host_io(&img, mib, false));
        }
        Ok(())
    })();
    host.destroy(&name);
    let _ = std::fs::remove_file(&img);
    r
}

/// MiB/s from the guest's `blkbench OP MIB MiB in MS ms`.
fn blkbench(con: &mut Console, op: &str, mib: u64) -> Result<f64> {
    con.send(&format!("blkbench xvda {op} {mib}"))?;
    let line = con.wait_for("blkbench's answer", Duration::from_secs(300), |l| {
        l.starts_with(&format!("blkbench {op} ")) || l.starts_with("blkbench error")
    })?;
    let ms: f64 = line
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| BenchError::Unexpected(format!("guest answered {line:?}")))?;
    Ok(mib as f64 / (ms.max(1.0) / 1000.0))
}

/// MiB/s of the host writing or reading `mib` MiB of the file in 64 KiB requests.
fn host_io(path: &Path, mib: u64, write: bool) -> Result<f64> {
    let f = OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| BenchError::io("open the disk image", e))?;
    let mut buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut off = 0u64;
    while off < mib << 20 {
        if write {
            f.write_all_at(&buf, off)
        } else {
            f.read_exact_at(&mut buf, off)
        }
        .map_err(|e| BenchError::io("host I/O on the image", e))?;
        off += CHUNK as u64;
    }
    Ok(mib as f64 / start.elapsed().as_secs_f64().max(1e-9))
}
