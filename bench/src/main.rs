//! `rxen-bench`: measures rxen on this machine and prints a Markdown table.
//!
//! Boot: the time from starting `rxl create -c FILE` to the guest's first
//! console line (the test guest's banner), over several runs. Memory: the
//! VMM's resident memory beside the guest's configured size, for an idle
//! guest after boot. Scheduler: two domains pinned to one host CPU, both
//! burning, with credit weights 2:1, and the CPU split they really got.
//! Run it as root on a host with /dev/kvm:
//! `cargo run --release -p rxen-bench` (`RXEN_BENCH=sched` for the
//! scheduler figures only).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

struct Host {
    dir: tempfile::TempDir,
    rxend: std::process::Child,
}

impl Host {
    fn start() -> Host {
        let dir = tempfile::Builder::new()
            .prefix("rxen-bench-")
            .tempdir()
            .expect("tempdir");
        let rxend = Command::new(bin_dir().join("rxend"))
            .arg("--socket")
            .arg(dir.path().join("rxend.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--cgroup")
            .arg(cgroup_name(&dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rxend (build with `cargo build --release --workspace --bins`)");
        let h = Host { dir, rxend };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(h.socket()).is_err() {
            assert!(Instant::now() < deadline, "rxend did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    fn vmm_pid(&self, name: &str) -> i32 {
        let id = self.rxl(&["domid", name]);
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                self.dir
                    .path()
                    .join("state/domains")
                    .join(format!("{}.json", id.trim())),
            )
            .unwrap_or_default(),
        )
        .unwrap_or_default();
        rec["state"]["pid"].as_i64().unwrap_or(0) as i32
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("rxend.sock")
    }

    fn rxl(&self, args: &[&str]) -> String {
        let out = Command::new(bin_dir().join("rxl"))
            .args(args)
            .env("RXEN_SOCKET", self.socket())
            .output()
            .expect("run rxl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn config(&self, name: &str, memory: u32, vcpus: u32) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.cfg"));
        std::fs::write(
            &p,
            format!("name = \"{name}\"\nkernel = \"builtin:testguest\"\nmemory = {memory}\nvcpus = {vcpus}\n"),
        )
        .expect("write config");
        p
    }

    /// Seconds from `rxl create -c` to the first console line.
    fn boot_once(&self, name: &str, memory: u32, vcpus: u32) -> f64 {
        let cfg = self.config(name, memory, vcpus);
        let start = Instant::now();
        let mut child = Command::new(bin_dir().join("rxl"))
            .args(["create", "-q", "-c"])
            .arg(&cfg)
            .env("RXEN_SOCKET", self.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("rxl create -c");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("console line");
        let t = start.elapsed().as_secs_f64();
        assert!(
            line.contains("rxen testguest"),
            "unexpected first line {line:?}"
        );
        let _ = child.kill();
        let _ = child.wait();
        t
    }

    fn vmm_rss_kib(&self, name: &str) -> u64 {
        let id = self.rxl(&["domid", name]);
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                self.dir
                    .path()
                    .join("state/domains")
                    .join(format!("{}.json", id.trim())),
            )
            .expect("record"),
        )
        .expect("record json");
        let pid = rec["state"]["pid"].as_i64().unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for l in self.rxl(&["list"]).lines().skip(2) {
            if let Some(name) = l.split_whitespace().next() {
                self.rxl(&["destroy", name]);
            }
        }
        let _ = self.rxend.kill();
        let _ = self.rxend.wait();
        remove_cgroup(&cgroup_name(&self.dir));
    }
}

fn cgroup_name(dir: &tempfile::TempDir) -> String {
    dir.path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rxen-bench".into())
}

/// Removes the bench rxend's CPU cgroups (cgroup v1 `cpu` or v2).
fn remove_cgroup(name: &str) {
    for mount in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup"] {
        let base = Path::new(mount).join(name);
        for _ in 0..100 {
            if let Ok(children) = std::fs::read_dir(&base) {
                for c in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            if std::fs::remove_dir(&base).is_ok() || !base.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// CPU seconds used so far by a VMM's vCPU threads.
fn vcpu_seconds(pid: i32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    dir.flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("vcpu"))
        })
        .map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
            let f: Vec<f64> = after
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0.0))
                .collect();
            (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / ticks
        })
        .sum()
}

/// Two domains pinned to the last host CPU, both burning, weights `wa`:`wb`:
/// the CPU seconds each got over `window`.
fn weight_split(host: &Host, wa: u32, wb: u32, window: Duration) -> (f64, f64) {
    let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let burn = window.as_secs() + 6;
    let mut consoles = Vec::new();
    for (name, w) in [("wa", wa), ("wb", wb)] {
        let p = host.dir.path().join(format!("{name}.cfg"));
        std::fs::write(
            &p,
            format!("name = \"{name}\"\nkernel = \"builtin:testguest\"\nmemory = 32\nvcpus = 1\ncpus = \"{cpu}\"\ncpu_weight = {w}\n"),
        )
        .expect("write config");
        let mut child = Command::new(bin_dir().join("rxl"))
            .args(["create", "-q", "-c"])
            .arg(&p)
            .env("RXEN_SOCKET", host.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("rxl create -c");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        while !line.contains("booted on") {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
        }
        consoles.push((child, out));
    }
    for (child, _) in &mut consoles {
        use std::io::Write;
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = writeln!(stdin, "burn {burn}");
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let (pa, pb) = (host.vmm_pid("wa"), host.vmm_pid("wb"));
    let (a0, b0) = (vcpu_seconds(pa), vcpu_seconds(pb));
    std::thread::sleep(window);
    let (a1, b1) = (vcpu_seconds(pa), vcpu_seconds(pb));
    for (mut child, _) in consoles {
        let _ = child.kill();
        let _ = child.wait();
    }
    host.rxl(&["destroy", "wa"]);
    host.rxl(&["destroy", "wb"]);
    (a1 - a0, b1 - b0)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = if v.is_empty() { 0.0 } else { v[v.len() / 2] };
    (med, *v.first().unwrap_or(&0.0), *v.last().unwrap_or(&0.0))
}

fn main() {
    let runs: usize = std::env::var("RXEN_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let host = Host::start();
    if std::env::var("RXEN_BENCH").as_deref() == Ok("sched") {
        sched_table(&host);
        return;
    }
    println!("| figure | guest | runs | median | min | max |");
    println!("|---|---|---|---|---|---|");
    for (memory, vcpus) in [(128u32, 1u32), (1024, 2)] {
        let mut times = Vec::new();
        for i in 0..runs {
            let name = format!("boot{memory}x{vcpus}n{i}");
            times.push(host.boot_once(&name, memory, vcpus) * 1000.0);
            host.rxl(&["destroy", &name]);
        }
        let (med, min, max) = stats(times);
        println!(
            "| boot: `rxl create` to first console line | {memory} MiB, {vcpus} vCPU | {runs} | {med:.1} ms | {min:.1} ms | {max:.1} ms |"
        );
    }
    for memory in [128u32, 1024] {
        let name = format!("mem{memory}");
        host.boot_once(&name, memory, 1);
        std::thread::sleep(Duration::from_millis(500));
        let rss = host.vmm_rss_kib(&name);
        println!(
            "| VMM resident memory, idle guest after boot | {memory} MiB, 1 vCPU | 1 | {:.1} MiB | - | - |",
            rss as f64 / 1024.0
        );
        host.rxl(&["destroy", &name]);
    }
    println!();
    sched_table(&host);
    println!();
    println!("Boot is measured from spawning `rxl create -c` (rxend already running) to the");
    println!("first line the guest prints on its serial console. Resident memory is the VMM");
    println!("process's VmRSS: its own memory plus the guest pages the guest has touched.");
}

/// The scheduler table: measured CPU splits against the weights' ideal.
fn sched_table(host: &Host) {
    let window = Duration::from_secs(
        std::env::var("RXEN_BENCH_SCHED_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    println!("| two burning domains pinned to one CPU | weights | window | CPU (s) | measured ratio | ideal |");
    println!("|---|---|---|---|---|---|");
    for (wa, wb) in [(512u32, 256u32), (256, 256), (768, 256)] {
        let (a, b) = weight_split(host, wa, wb, window);
        println!(
            "| credit weights on cgroup `cpu.shares` | {wa}:{wb} | {} s | {a:.2} + {b:.2} | {:.3} | {:.3} |",
            window.as_secs(),
            a / b.max(1e-6),
            f64::from(wa) / f64::from(wb)
        );
    }
}
