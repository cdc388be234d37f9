//! `rxen-bench`: measures rxen on this machine and prints a Markdown table.
//!
//! Boot: the time from starting `rxl create -c FILE` to the guest's first
//! console line (the test guest's banner), over several runs. Memory: the
//! VMM's resident memory beside the guest's configured size, for an idle
//! guest after boot. Run it as root on a host with /dev/kvm:
//! `cargo run --release -p rxen-bench`.

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
    }
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
    println!("Boot is measured from spawning `rxl create -c` (rxend already running) to the");
    println!("first line the guest prints on its serial console. Resident memory is the VMM");
    println!("process's VmRSS: its own memory plus the guest pages the guest has touched.");
}
