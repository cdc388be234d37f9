//! Helpers for rxen's end-to-end tests: an isolated rxend per test (its own
//! socket and state directory), `rxl` runs against it, and console sessions
//! that send commands to real guests and wait for their answers.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod etcd;

/// The directory holding the built binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    for b in ["rxl", "rxend", "rxen-vmm"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the binaries first (scripts/test.sh does, or `cargo build --workspace --bins`)",
            dir.join(b).display()
        );
    }
    dir
}

/// Path of one built binary.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A `[sandbox]` section with a uid range of its own, so that the VMMs of hosts that tests run
/// side by side never share a uid (one rxend keeps its own domains apart, not another's).
pub fn sandbox_uids() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 20;
    let first = 100_000_000 + (std::process::id() % 20_000) * 2_000 + n * 100;
    format!("[sandbox]\nfirst-uid = {first}\nuid-count = 100\n")
}

/// One rxen "host": an rxend with its own socket and state directory.
pub struct Host {
    /// Temporary directory holding everything of this host.
    pub dir: tempfile::TempDir,
    /// rxend's process, while we run it.
    pub rxend: Option<Child>,
    /// Extra arguments rxend is started with (e.g. `--socket-group`).
    pub rxend_args: Vec<String>,
    /// The network namespace rxend (and so its VMMs) runs in, if any.
    pub netns: Option<String>,
    /// Extra environment rxend is started with (e.g. `RXEN_FAILPOINTS`).
    pub rxend_env: Vec<(String, String)>,
}

impl Host {
    /// Starts a fresh rxend.
    pub fn start() -> Host {
        Host::start_configured("")
    }

    /// Starts a fresh rxend with `config` in its config file (TOML; a `[sandbox]` uid range of
    /// its own is added).
    pub fn start_configured(config: &str) -> Host {
        assert!(
            Path::new("/dev/kvm").exists(),
            "/dev/kvm is missing: these tests boot real guests"
        );
        let dir = tempfile::Builder::new()
            .prefix("rxen-e2e-")
            .tempdir()
            .expect("tempdir");
        fs::write(
            dir.path().join("rxend.toml"),
            format!("{config}\n{}", sandbox_uids()),
        )
        .expect("rxend config");
        let mut h = Host {
            dir,
            rxend: None,
            rxend_args: Vec::new(),
            netns: None,
            rxend_env: Vec::new(),
        };
        h.start_rxend();
        h
    }

    /// Starts a fresh rxend with extra arguments, its directory open to
    /// other users (mode 0755) so that customers can reach the socket.
    pub fn start_with(args: &[&str]) -> Host {
        use std::os::unix::fs::PermissionsExt;
        let mut h = Host::start();
        h.kill_rxend();
        fs::set_permissions(h.dir.path(), fs::Permissions::from_mode(0o755))
            .expect("open the host directory");
        h.rxend_args = args.iter().map(|a| a.to_string()).collect();
        h.start_rxend();
        h
    }

    /// Starts an rxend inside network namespace `netns`, with `config` as its config file (TOML).
    pub fn start_in(netns: &str, config: &str) -> Host {
        assert!(
            Path::new("/dev/kvm").exists(),
            "/dev/kvm is missing: these tests boot real guests"
        );
        let dir = tempfile::Builder::new()
            .prefix("rxen-e2e-")
            .tempdir()
            .expect("tempdir");
        fs::write(
            dir.path().join("rxend.toml"),
            format!("{config}\n{}", sandbox_uids()),
        )
        .expect("rxend config");
        let mut h = Host {
            dir,
            rxend: None,
            netns: Some(netns.to_string()),
            rxend_args: Vec::new(),
            rxend_env: Vec::new(),
        };
        h.start_rxend();
        h
    }

    /// rxend's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("rxend.sock")
    }

    /// rxend's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Name of this host's top CPU cgroup (unique per host, so that
    /// parallel tests never share `dom<ID>` groups).
    pub fn cgroup_name(&self) -> String {
        self.dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "rxen-e2e".into())
    }

    /// (Re)starts rxend on this host's socket and state directory.
    pub fn start_rxend(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("rxend.stderr"))
            .expect("rxend stderr file");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("rxend"));
                c
            }
            None => Command::new(bin("rxend")),
        };
        if !self.rxend_args.iter().any(|a| a == "--config") {
            cmd.arg("--config").arg(self.dir.path().join("rxend.toml"));
        }
        let child = cmd
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(&self.rxend_args)
            .envs(self.rxend_env.iter().map(|(k, v)| (k, v)))
            .arg("--cgroup")
            .arg(self.cgroup_name())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn rxend");
        self.rxend = Some(child);
        wait_until(Duration::from_secs(10), "rxend listens", || {
            std::os::unix::net::UnixStream::connect(self.socket()).is_ok()
        });
    }

    /// Kills rxend with SIGKILL, as a crash would.
    pub fn kill_rxend(&mut self) {
        if let Some(mut c) = self.rxend.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// An `rxl` command aimed at this host's socket. It never starts an rxend of its own:
    /// one started while a test has killed this host's rxend would hold the socket, with
    /// another state directory, and the test would go on against the wrong daemon.
    pub fn rxl_command(&self) -> Command {
        let mut c = Command::new(bin("rxl"));
        c.env("RXEN_SOCKET", self.socket())
            .env("RXEN_NO_AUTOSTART", "1");
        c
    }

    /// Runs `rxl ARGS` against this host.
    pub fn rxl(&self, args: &[&str]) -> Output {
        self.rxl_command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run rxl")
    }

    /// Runs `rxl ARGS`, asserts success, and returns stdout.
    pub fn rxl_ok(&self, args: &[&str]) -> String {
        let out = self.rxl(args);
        assert!(
            out.status.success(),
            "rxl {args:?} failed: {}\nstdout: {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a config file into the host's directory and returns its path.
    pub fn config(&self, file: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(file);
        fs::write(&p, text).expect("write config");
        p
    }

    /// Creates a test-guest domain with the given extra config lines and waits for its banner.
    pub fn create_guest(&self, name: &str, vcpus: u32, memory: u32, extra: &str) -> Console {
        let cfg = self.config(
            &format!("{name}.cfg"),
            &format!(
                "name = \"{name}\"\nkernel = \"builtin:testguest\"\nmemory = {memory}\nvcpus = {vcpus}\n{extra}\n"
            ),
        );
        self.rxl_ok(&["create", cfg.to_str().expect("utf-8 path")]);
        let con = self.console(name);
        // The guest reports its RAM: `maxmem` when that is larger (the balloon
        // then holds the difference).
        let ram = extra
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("maxmem")?
                    .trim()
                    .strip_prefix('=')?
                    .trim()
                    .parse()
                    .ok()
            })
            .map_or(memory, |m: u32| m.max(memory));
        con.wait_for(
            &format!("booted on {vcpus} vCPUs with {ram} MiB"),
            Duration::from_secs(30),
        );
        con
    }

    /// Attaches `rxl console NAME` with pipes.
    pub fn console(&self, name: &str) -> Console {
        Console::attach(self, name)
    }

    /// The `rxl list` row of a domain, split into fields (name, id, mem, vcpus, state, time).
    pub fn list_row(&self, name: &str) -> Option<Vec<String>> {
        let out = self.rxl(&["list"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|f| f.first().map(String::as_str) == Some(name))
    }

    /// PID of a domain's VMM, from rxend's record.
    pub fn vmm_pid(&self, domid: u32) -> i32 {
        let rec: serde_json::Value = serde_json::from_slice(
            &fs::read(
                self.state_dir()
                    .join("domains")
                    .join(format!("{domid}.json")),
            )
            .expect("record"),
        )
        .expect("record json");
        rec["state"]["pid"].as_i64().expect("pid") as i32
    }

    /// rxend's log file.
    pub fn rxend_log(&self) -> String {
        fs::read_to_string(self.state_dir().join("rxend.log")).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Kill every VMM started for this host, then rxend.
        let marker = self.dir.path().to_string_lossy().into_owned();
        if let Ok(procs) = fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                if cmdline.contains("rxen-vmm") && cmdline.contains(&marker) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        self.kill_rxend();
        // rxend is gone without cleaning up: remove the TAPs it created (listed per domain).
        if let Ok(doms) = fs::read_dir(self.state_dir().join("dom")) {
            for d in doms.flatten() {
                let Ok(text) = fs::read(d.path().join("vifs.json")) else {
                    continue;
                };
                let vifs: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
                for v in vifs.as_array().into_iter().flatten() {
                    if let Some(tap) = v["nic"]["tap"].as_str() {
                        let _ = Command::new("ip").args(["link", "del", tap]).output();
                    }
                }
            }
        }
        remove_cgroups(&self.cgroup_name());
    }
}

/// Removes the CPU cgroups an rxend made under `name` (in every hierarchy
/// that has them), waiting for killed tasks to leave them.
pub fn remove_cgroups(name: &str) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(kind)) = (f.get(1), f.get(2)) else {
            continue;
        };
        if *kind != "cgroup" && *kind != "cgroup2" {
            continue;
        }
        let base = Path::new(dir).join(name);
        if !base.is_dir() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(children) = fs::read_dir(&base) {
                for c in children.flatten() {
                    if c.path().is_dir() {
                        let _ = fs::remove_dir(c.path());
                    }
                }
            }
            if fs::remove_dir(&base).is_ok() || !base.exists() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The bytes the guest's `blkwrite ... SEED` writes: byte k is `(SEED + 31 * k) mod 256`.
pub fn blk_pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| ((seed as usize + 31 * k) % 256) as u8)
        .collect()
}

/// Two network namespaces joined by a veth pair, as two hosts on one link;
/// removed (with the link) on drop.
pub struct NetPair {
    /// The first namespace ("host A").
    pub a: String,
    /// The second namespace ("host B").
    pub b: String,
    /// A's address on the link.
    pub addr_a: &'static str,
    /// B's address on the link.
    pub addr_b: &'static str,
}

/// The stdout of an `rxl migrate` from `a` to `b`, which must have succeeded: otherwise
/// panics with what it printed and both rxends' logs.
pub fn migrated(out: &Output, a: &Host, b: &Host) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "migrate failed: {}\n{stdout}\nA: {}\nB: {}",
        String::from_utf8_lossy(&out.stderr),
        a.rxend_log(),
        b.rxend_log()
    );
    stdout
}

/// Runs `ip ARGS` (iproute2); panics with its stderr unless it succeeds.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetPair {
    /// Creates the namespaces (unique names) and the link, with 10.77.0.1/24 and 10.77.0.2/24.
    pub fn new() -> NetPair {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = format!("{}x{n}", std::process::id());
        let pair = NetPair {
            a: format!("rxa{tag}"),
            b: format!("rxb{tag}"),
            addr_a: "10.77.0.1",
            addr_b: "10.77.0.2",
        };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &pair.a]);
        ip(&["link", "set", &vb, "netns", &pair.b]);
        for (ns, dev, addr) in [(&pair.a, &va, pair.addr_a), (&pair.b, &vb, pair.addr_b)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }
}

impl Default for NetPair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A unique short suffix for interface names (tests run two at a time, in several processes).
pub fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{:x}{}",
        std::process::id() % 0xFFFF,
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A Linux bridge of its own (`rxb<unique>`), up, with an optional host address
/// (`10.1.2.1/24`), removed on drop.
pub struct Bridge {
    /// Its interface name.
    pub name: String,
}

impl Bridge {
    /// Makes the bridge; fails the test when `ip` does.
    pub fn new(addr: Option<&str>) -> Bridge {
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let b = Bridge {
            name: format!("rxb{}", unique()),
        };
        ip(&["link", "add", &b.name, "type", "bridge"]);
        if let Some(a) = addr {
            ip(&["addr", "add", a, "dev", &b.name]);
        }
        ip(&["link", "set", &b.name, "up"]);
        b
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// Runs `cmd args` (in `dir` when given); panics with its output unless it succeeds; returns
/// its stdout. For host tools the tests need (`qemu-img`, `qemu-io`, `sha256sum`; scripts/test.sh
/// installs them).
pub fn run_tool(dir: Option<&Path>, cmd: &str, args: &[&str]) -> String {
    let mut c = Command::new(cmd);
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (scripts/test.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills, with SIGKILL, the first `rxen-vmm` of `host` to appear within about 20 s (a
/// migration's receiving VMM, killed mid-transfer); whether one appeared.
pub fn kill_first_vmm_of(host: &Host) -> std::thread::JoinHandle<bool> {
    let marker = host.dir.path().to_string_lossy().into_owned();
    std::thread::spawn(move || {
        for _ in 0..20_000 {
            if let Some(pid) = pids_with(&["rxen-vmm", &marker]).first() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    })
}

/// PIDs of processes whose command line contains every one of `needles`.
pub fn pids_with(needles: &[&str]) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(procs) = fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if needles.iter().all(|n| cmdline.contains(n)) {
                out.push(pid);
            }
        }
    }
    out
}

/// Polls `cond` until it holds, failing the test after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An `rxl console` process with its output collected.
pub struct Console {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
    /// Output before this offset has been consumed by `wait_for`.
    seen: Mutex<usize>,
}

impl Console {
    /// Runs `rxl console NAME` against `host`.
    pub fn attach(host: &Host, name: &str) -> Console {
        Console::spawn(host.rxl_command().args(["console", name]))
    }

    /// Runs a command whose stdin and stdout are a guest console (`rxl console`, `rxl create -c`).
    pub fn spawn(cmd: &mut Command) -> Console {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rxl console");
        let mut stdout = child.stdout.take().expect("stdout");
        let out = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let stdin = child.stdin.take();
        Console {
            child,
            stdin,
            out,
            seen: Mutex::new(0),
        }
    }

    /// Everything received so far.
    pub fn output(&self) -> String {
        self.out.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Types a line on the guest's console.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("console stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to console");
        stdin.flush().expect("flush console");
    }

    /// Types `text` on the guest's console as it is, without a newline.
    pub fn type_text(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("console stdin");
        stdin.write_all(text.as_bytes()).expect("write to console");
        stdin.flush().expect("flush console");
    }

    /// Waits until `needle` appears in output not yet consumed, and returns
    /// the line that holds it; later calls look only after it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            let mut seen = self.seen.lock().expect("seen");
            let start = (*seen).min(out.len());
            if let Some(pos) = out.get(start..).and_then(|s| s.find(needle)) {
                // A needle may begin with "\n" to anchor it at a line start.
                let at = start + pos + (needle.len() - needle.trim_start_matches('\n').len());
                let line_start = out[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
                // Only a whole line counts: the rest of it may still be in flight.
                if let Some(end) = out[at..].find('\n') {
                    let line_end = at + end;
                    *seen = line_end;
                    return out[line_start..line_end].trim_end_matches('\r').to_string();
                }
            }
            drop(seen);
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} on the console; got:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Skips everything printed so far (including the replay of earlier
    /// output on attach): sends a unique word and waits for the guest to
    /// reject it.
    pub fn sync(&mut self) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let token = format!(
            "sync{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.send(&token);
        self.wait_for(
            &format!("unknown command: {token}"),
            Duration::from_secs(10),
        );
    }

    /// Like [`Console::wait_for`], but returns the line only once it is
    /// complete (a busy guest prints slowly).
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let line = self.wait_for(needle, timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if let Some(at) = out.rfind(&line) {
                if let Some(end) = out[at..].find('\n') {
                    let mut seen = self.seen.lock().expect("seen");
                    *seen = (*seen).max(at + end);
                    return out[at..at + end].trim_end_matches('\r').to_string();
                }
            }
            assert!(Instant::now() < deadline, "no end to the line {line:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pages the guest says it has given back (`balloon` on its console).
    pub fn ballooned_pages(&mut self) -> u64 {
        self.sync();
        self.send("balloon");
        let line = self.wait_for("pages (", Duration::from_secs(30));
        line.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no page count in {line:?}"))
    }

    /// `blkwrite DISK SECTOR COUNT SEED`, then `blkflush DISK`.
    pub fn blkwrite_flushed(&mut self, disk: &str, sector: u64, count: u64, seed: u32) {
        self.send(&format!("blkwrite {disk} {sector} {count} {seed}"));
        self.wait_for("blkwrite ok", Duration::from_secs(30));
        self.send(&format!("blkflush {disk}"));
        self.wait_for("blkflush ok", Duration::from_secs(30));
    }

    /// Asserts that the guest reads back `blk_pattern(seed)` with `blkread DISK SECTOR COUNT`.
    pub fn assert_blkread(&mut self, disk: &str, sector: u64, count: u64, seed: u32) {
        self.send(&format!("blkread {disk} {sector} {count}"));
        let line = self.wait_for("blkread crc32=", Duration::from_secs(30));
        let want = crc32fast::hash(&blk_pattern(seed, count as usize * 512));
        assert!(
            line.ends_with(&format!("crc32={want:08x}")),
            "{disk} {sector}+{count}: {line}"
        );
    }

    /// Sends `memsum` and returns the guest's checksum of its free memory.
    pub fn memsum(&mut self) -> String {
        // No sync first: the guest may still be busy with a memfill, and
        // answers once it is done; only the answer has "memsum 0x".
        self.send("memsum");
        let line = self.wait_line("memsum 0x", Duration::from_secs(300));
        line.rsplit(' ')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Fills the guest's free memory from `seed` and waits until it is done.
    pub fn memfill(&mut self, seed: u64) {
        self.sync();
        self.send(&format!("memfill {seed}"));
        self.wait_for("memfill done", Duration::from_secs(300));
    }

    /// Sends `heartbeat` and returns the guest's counter.
    pub fn heartbeat(&mut self) -> u64 {
        self.sync();
        self.send("heartbeat");
        // The answer is a line of its own, "heartbeat N" (the echo of the
        // command has no number).
        let line = self.wait_for("\nheartbeat ", Duration::from_secs(10));
        line.rsplit(' ')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no heartbeat count in {line:?}"))
    }

    /// Waits for the console to close (the domain went away) and returns rxl's exit status.
    pub fn wait_closed(mut self, timeout: Duration) -> std::process::ExitStatus {
        self.stdin.take();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "console did not close; got:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
