//! Disk: the guest's sequential and random-read throughput through virtio-blk, under rxen
//! and under QEMU, against the host's own on the same raw image file; and the same on a qcow2
//! image.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::console::Console;
use crate::error::{BenchError, Result};
use crate::qemu::{disk_args, Qemu, QemuSpec};
use crate::report::{Better, Cell, Row, SectionReport};

/// The request size of both the guest's `blkbench` and the host's loop.
const CHUNK: usize = 64 * 1024;

/// The request size of the guest's `blkbench SERIAL randread` and the host's random reads.
const RAND_CHUNK: u64 = 4096;

/// Size of the raw image each monitor's guest gets.
const IMAGE_MIB: u64 = 256;

/// The figures of one monitor: the guest's, and the host's on the same file between them.
struct Figures<'a> {
    guest: [&'a mut Cell; 3],
    host: [Cell; 3],
}

/// The format of the image both monitors' guests get.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    /// A sparse raw file.
    Raw,
    /// An empty qcow2 (version 3, 64 KiB clusters) made by `qemu-img create`.
    Qcow2,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// Runs `blkbench` (sequential write and read, random read) in an rxen and a QEMU guest and
/// the same transfers on the host, alternately; then the guests' figures again on a qcow2
/// image (no host figure there: the host has no qcow2 reader of its own to compare).
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let mib: u64 = if ctx.quick { 32 } else { 128 };
    let rand_mib: u64 = if ctx.quick { 4 } else { 16 };
    let mut rows = rows(ctx, Format::Raw, mib, rand_mib);
    rows.extend(rows_for_qcow2(ctx, mib, rand_mib));
    SectionReport {
        title: "disk".into(),
        versus: None,
        rows,
        method: vec![
            format!(
                "one rxen guest with `disk = ['file:IMG,xvda,w']`, and one QEMU guest with \
                 `-global virtio-mmio.force-legacy=false -drive file=IMG,if=none,id=disk0,format=raw,\
                 cache=writeback -device virtio-blk-device,drive=disk0,serial=xvda` (each a fresh \
                 {IMAGE_MIB} MiB raw file on the host's disk; the test guest finds QEMU's device on \
                 microvm's virtio-mmio transports at 0xFEB0_0000 and polls it, as it polls rxen's), \
                 run `blkbench xvda write {mib}`, `blkbench xvda read {mib}` (sequential 64 KiB \
                 virtio-blk requests) and `blkbench xvda randread {rand_mib}` (4 KiB requests at \
                 4 KiB-aligned places drawn by a fixed xorshift sequence), timed by the guest; \
                 alternately, the host writes and reads the same {mib} MiB of the same file with \
                 64 KiB `pwrite`/`pread` (buffered, no fdatasync: both VMMs' I/O is buffered and the \
                 guest does not flush) and reads {rand_mib} MiB in 4 KiB `pread`s at the guest's \
                 places. Reads come from the page cache on both sides."
            ),
            format!(
                "qcow2 rows: the same guest commands on a fresh empty {IMAGE_MIB} MiB qcow2 image \
                 (`qemu-img create -f qcow2`, version 3, 64 KiB clusters) per monitor: rxen with \
                 `disk = ['qcow2:IMG,xvda,w']` (the imago crate), QEMU with `format=qcow2` in \
                 its `-drive`; the first write allocates every cluster it touches. No host column."
            ),
        ],
    }
}

/// The qcow2 rows, or rows saying why they are pending.
fn rows_for_qcow2(ctx: &mut Ctx, mib: u64, rand_mib: u64) -> Vec<Row> {
    let made = Command::new("qemu-img").arg("--version").output();
    if !made.is_ok_and(|o| o.status.success()) {
        let why = "qemu-img (Debian's qemu-utils) is missing".to_string();
        let mut rows = rows(ctx, Format::Qcow2, 0, 0);
        for r in &mut rows {
            r.rxen = Cell::Pending(why.clone());
            r.qemu = Cell::Pending(why.clone());
        }
        return rows;
    }
    rows(ctx, Format::Qcow2, mib, rand_mib)
}

/// The three rows of one image format (measured unless `mib` is 0).
fn rows(ctx: &mut Ctx, format: Format, mib: u64, rand_mib: u64) -> Vec<Row> {
    let fmt = format.name();
    let label = |what: &str| match format {
        Format::Raw => format!("disk: {what}"),
        Format::Qcow2 => format!("disk (qcow2): {what}"),
    };
    let guest = format!("128 MiB, 1 vCPU; {mib} MiB in 64 KiB requests, 256 MiB {fmt} file");
    let rand_guest = format!(
        "128 MiB, 1 vCPU; {rand_mib} MiB in 4 KiB requests at random places of a 256 MiB {fmt} file"
    );
    let mut write = Row::new(
        &label("sequential write"),
        &guest,
        "MiB/s",
        1,
        Better::Higher,
    );
    let mut read = Row::new(
        &label("sequential read"),
        &guest,
        "MiB/s",
        1,
        Better::Higher,
    );
    let mut random = Row::new(
        &label("random read"),
        &rand_guest,
        "MiB/s",
        1,
        Better::Higher,
    );
    if mib == 0 {
        return vec![write, read, random];
    }
    let rxen_pending = match ctx.host() {
        Ok(h) if !h.rxl_has("block-attach") => {
            Some("rxen disks (issue 4) have not landed".to_string())
        }
        _ => None,
    };
    let mut host = [Cell::empty(), Cell::empty(), Cell::empty()];
    match ctx.rxen_blocked(rxen_pending.as_deref()) {
        Some(why) => {
            write.rxen = Cell::Pending(why.clone());
            read.rxen = Cell::Pending(why.clone());
            random.rxen = Cell::Pending(why);
        }
        None => {
            let mut f = Figures {
                guest: [&mut write.rxen, &mut read.rxen, &mut random.rxen],
                host: [Cell::empty(), Cell::empty(), Cell::empty()],
            };
            if let Err(e) = measure(ctx, Monitor::Rxen, format, mib, rand_mib, &mut f) {
                for cell in f.guest {
                    cell.push::<String>(Err(e.to_string()));
                }
            }
            host = f.host;
        }
    }
    match ctx.qemu_unavailable.clone() {
        Some(why) => {
            write.qemu = Cell::Pending(why.clone());
            read.qemu = Cell::Pending(why.clone());
            random.qemu = Cell::Pending(why);
        }
        None => {
            let mut f = Figures {
                guest: [&mut write.qemu, &mut read.qemu, &mut random.qemu],
                host: [Cell::empty(), Cell::empty(), Cell::empty()],
            };
            if let Err(e) = measure(ctx, Monitor::Qemu, format, mib, rand_mib, &mut f) {
                for cell in f.guest {
                    cell.push::<String>(Err(e.to_string()));
                }
            }
            // The host's figures from between the QEMU runs join those from the rxen runs.
            for (all, more) in host.iter_mut().zip(f.host) {
                all.merge(more);
            }
        }
    }
    if format == Format::Raw {
        let [hw, hr, hrand] = host;
        write.host = Some(hw);
        read.host = Some(hr);
        random.host = Some(hrand);
    }
    vec![write, read, random]
}

/// Which monitor a disk measurement runs under.
#[derive(Clone, Copy)]
enum Monitor {
    Rxen,
    Qemu,
}

fn measure(
    ctx: &mut Ctx,
    monitor: Monitor,
    format: Format,
    mib: u64,
    rand_mib: u64,
    f: &mut Figures<'_>,
) -> Result<()> {
    let name = ctx.name("disk");
    let img = ctx.path().join(format!("{name}.{}", format.name()));
    match format {
        Format::Raw => std::fs::File::create(&img)
            .and_then(|f| f.set_len(IMAGE_MIB << 20))
            .map_err(|e| BenchError::io("create the disk image", e))?,
        Format::Qcow2 => {
            let out = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&img)
                .arg(format!("{IMAGE_MIB}M"))
                .output()
                .map_err(|e| BenchError::io("run qemu-img", e))?;
            if !out.status.success() {
                return Err(BenchError::Unexpected(format!(
                    "qemu-img create: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
    }
    let host_too = format == Format::Raw;
    let r = match monitor {
        Monitor::Rxen => {
            let host = ctx.host()?;
            let spec = match format {
                Format::Raw => format!("disk = [ 'file:{},xvda,w' ]", img.display()),
                Format::Qcow2 => format!("disk = [ 'qcow2:{},xvda,w' ]", img.display()),
            };
            let r = (|| {
                let mut d = host.boot(&name, 128, 1, &spec)?;
                runs(ctx.runs, &mut d.console, &img, mib, rand_mib, host_too, f);
                Ok(())
            })();
            host.destroy(&name);
            r
        }
        Monitor::Qemu => {
            let spec = QemuSpec {
                memory_mib: 128,
                vcpus: 1,
                incoming: None,
            };
            let args = disk_args(&img, format.name(), "xvda");
            Qemu::boot_with(&ctx.qemu, &spec, &args, ctx.path(), &name).map(|mut q| {
                runs(ctx.runs, &mut q.console, &img, mib, rand_mib, host_too, f);
            })
        }
    };
    let _ = std::fs::remove_file(&img);
    r
}

/// `runs` rounds of the guest's three measurements, each followed by the host's when `host`
/// (a raw image: the host's plain reads and writes of the file are the same transfers).
fn runs(
    runs: usize,
    con: &mut Console,
    img: &Path,
    mib: u64,
    rand_mib: u64,
    host: bool,
    f: &mut Figures<'_>,
) {
    for _ in 0..runs {
        f.guest[0].push(blkbench(con, "write", mib));
        if host {
            f.host[0].push(host_io(img, mib, true));
        }
        f.guest[1].push(blkbench(con, "read", mib));
        if host {
            f.host[1].push(host_io(img, mib, false));
        }
        f.guest[2].push(blkbench(con, "randread", rand_mib));
        if host {
            f.host[2].push(host_random_read(img, rand_mib));
        }
    }
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

/// MiB/s of the host reading `mib` MiB of the file in 4 KiB requests at the places the
/// guest's `blkbench SERIAL randread` draws (the same xorshift sequence over the same size).
fn host_random_read(path: &Path, mib: u64) -> Result<f64> {
    let f = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| BenchError::io("open the disk image", e))?;
    let places = f
        .metadata()
        .map_err(|e| BenchError::io("size of the disk image", e))?
        .len()
        / RAND_CHUNK;
    if places == 0 {
        return Err(BenchError::Unexpected("the disk image is empty".into()));
    }
    let mut buf = vec![0u8; RAND_CHUNK as usize];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let start = Instant::now();
    for _ in 0..(mib << 20) / RAND_CHUNK {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        f.read_exact_at(&mut buf, state % places * RAND_CHUNK)
            .map_err(|e| BenchError::io("host I/O on the image", e))?;
    }
    Ok(mib as f64 / start.elapsed().as_secs_f64().max(1e-9))
}
