//! `rxen-migbench`: live migration and save/restore figures on this machine.
//!
//! Two rxend "hosts" in two network namespaces joined by a veth pair; test
//! guests of 256 MiB and 1 GiB, idle and dirtying memory at several rates
//! (the guest's `dirty R` command), migrated back and forth with
//! `rxl migrate` over the relocation servers. Prints rounds, bytes sent,
//! total time and downtime as rxl reports them, then save and restore time
//! against the size of the save file. Run as root on a host with /dev/kvm:
//! `cargo build --release --workspace --bins && target/release/rxen-migbench`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn bin(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip {args:?} failed");
}

struct Net {
    a: String,
    b: String,
}

impl Net {
    fn new() -> Net {
        let tag = std::process::id();
        let n = Net {
            a: format!("rxbench-a{tag}"),
            b: format!("rxbench-b{tag}"),
        };
        ip(&["netns", "add", &n.a]);
        ip(&["netns", "add", &n.b]);
        let (va, vb) = (format!("vba{tag}"), format!("vbb{tag}"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &n.a]);
        ip(&["link", "set", &vb, "netns", &n.b]);
        for (ns, dev, addr) in [(&n.a, &va, "10.78.0.1"), (&n.b, &vb, "10.78.0.2")] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        n
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct Host {
    dir: tempfile::TempDir,
    rxend: Child,
    addr: &'static str,
}

impl Host {
    fn start(ns: &str, addr: &'static str, key: &Path) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("rxen-migbench-")
            .tempdir()
            .expect("tempdir");
        let cfg = dir.path().join("rxend.toml");
        std::fs::write(
            &cfg,
            format!(
                "[relocation]\nserver = true\naddress = \"{addr}\"\nkey-file = \"{}\"\n",
                key.display()
            ),
        )
        .expect("config");
        let rxend = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin("rxend"))
            .arg("--config")
            .arg(&cfg)
            .arg("--socket")
            .arg(dir.path().join("rxend.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rxend (build with `cargo build --release --workspace --bins`)");
        let h = Host { dir, rxend, addr };
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

    fn rxl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin("rxl"))
            .args(args)
            .env("RXEN_SOCKET", self.socket())
            .stdin(Stdio::null())
            .output()
            .expect("run rxl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn console(&self, name: &str) -> Console {
        let mut child = Command::new(bin("rxl"))
            .args(["console", name])
            .env("RXEN_SOCKET", self.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("rxl console");
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let stdin = child.stdin.take().expect("stdin");
        Console { child, stdin, out }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let marker = self.dir.path().to_string_lossy().into_owned();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                if cmd.contains("rxen-vmm") && cmd.contains(&marker) {
                    if let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() {
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    }
                }
            }
        }
        let _ = self.rxend.kill();
        let _ = self.rxend.wait();
    }
}

struct Console {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<String>>,
}

impl Console {
    fn send(&mut self, line: &str) {
        let _ = writeln!(self.stdin, "{line}");
        let _ = self.stdin.flush();
    }

    fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.out.lock().map(|s| s.contains(needle)).unwrap_or(false) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `key ` in rxl's figures line, up to the next comma or space.
fn field(line: &str, key: &str) -> String {
    line.split(key)
        .nth(1)
        .map(|r| {
            r.trim_start()
                .split([',', ' '])
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// Saves `name` to a file and restores it; returns the figures.
fn save_restore(
    host: &Host,
    name: &str,
    mib: u32,
    phase: &'static str,
) -> (u32, &'static str, u64, f64, f64) {
    let file = host.dir.path().join(format!("{name}.save"));
    let f = file.to_str().unwrap_or_default().to_string();
    let t = Instant::now();
    let (ok, _, err) = host.rxl(&["save", name, &f]);
    let save_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(ok, "save: {err}");
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let t = Instant::now();
    let (ok, _, err) = host.rxl(&["restore", &f]);
    let restore_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(ok, "restore: {err}");
    let _ = std::fs::remove_file(&file);
    (mib, phase, size, save_ms, restore_ms)
}

fn main() {
    assert!(Path::new("/dev/kvm").exists(), "needs /dev/kvm");
    let net = Net::new();
    let keys = tempfile::tempdir().expect("tmp");
    let key = keys.path().join("key");
    std::fs::write(&key, "rxen benchmark relocation key\n").expect("key");
    let hosts = [
        Host::start(&net.a, "10.78.0.1", &key),
        Host::start(&net.b, "10.78.0.2", &key),
    ];
    let rates = [0u32, 32, 128];
    println!(
        "## Live migration (test guest, 1 vCPU, over a veth pair, rxl migrate --relocation)\n"
    );
    println!("| guest | dirtying | rounds | sent | total | downtime |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut saves = Vec::new();
    for mib in [256u32, 1024] {
        let name = format!("bench{mib}");
        let cfg = hosts[0].dir.path().join(format!("{name}.cfg"));
        std::fs::write(
            &cfg,
            format!(
                "name = \"{name}\"\nkernel = \"builtin:testguest\"\nmemory = {mib}\nvcpus = 1\n"
            ),
        )
        .expect("cfg");
        let (ok, _, err) = hosts[0].rxl(&["create", cfg.to_str().unwrap_or_default()]);
        assert!(ok, "create: {err}");
        let con = hosts[0].console(&name);
        assert!(con.wait_for("booted", Duration::from_secs(60)), "no banner");
        drop(con);
        saves.push(save_restore(&hosts[0], &name, mib, "just booted"));
        let mut at = 0usize;
        for &rate in &rates {
            let mut con = hosts[at].console(&name);
            con.send(&format!("dirty {rate}"));
            std::thread::sleep(Duration::from_secs(2));
            drop(con);
            let to = 1 - at;
            let (ok, out, err) = hosts[at].rxl(&[
                "migrate",
                "--key",
                key.to_str().unwrap_or_default(),
                &name,
                hosts[to].addr,
            ]);
            let label = if rate == 0 {
                "idle".to_string()
            } else {
                format!("{rate} MiB/s")
            };
            if !ok {
                println!("| {mib} MiB | {label} | failed: {} | | | |", err.trim());
                continue;
            }
            println!(
                "| {mib} MiB | {label} | {} | {} MiB | {} ms | {} ms |",
                field(&out, "rounds "),
                field(&out, "bytes sent (").trim_end_matches(" MiB;"),
                field(&out, "total "),
                field(&out, "downtime ")
            );
            at = to;
        }
        // Save and restore once most of the memory has been written.
        let mut con = hosts[at].console(&name);
        con.send("dirty 512");
        std::thread::sleep(Duration::from_secs(4));
        con.send("dirty 0");
        std::thread::sleep(Duration::from_millis(300));
        drop(con);
        saves.push(save_restore(&hosts[at], &name, mib, "after dirtying"));
        let _ = hosts[at].rxl(&["destroy", &name]);
    }
    println!("\n## Save and restore (rxl save / rxl restore, wall time of the command)\n");
    println!("| guest | memory in use | file | save | restore |");
    println!("|---|---|---:|---:|---:|");
    for (mib, phase, size, save_ms, restore_ms) in saves {
        println!(
            "| {mib} MiB | {phase} | {:.1} MiB | {save_ms:.0} ms | {restore_ms:.0} ms |",
            size as f64 / (1 << 20) as f64
        );
    }
}
