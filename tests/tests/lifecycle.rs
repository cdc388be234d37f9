//! The xl lifecycle on real guests under /dev/kvm: create, list, console,
//! pause, shutdown, the on_poweroff, on_reboot and on_crash policies, and rxend or VMM
//! deaths.

use std::time::{Duration, Instant};

use rxen_e2e::{wait_until, Console, Host};

const BOOT: Duration = Duration::from_secs(30);

fn domid(host: &Host, name: &str) -> u32 {
    host.rxl_ok(&["domid", name])
        .trim()
        .parse()
        .expect("numeric domid")
}

#[test]
fn example_config_boots_with_console_attached() {
    let host = Host::start();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello.cfg");
    // `rxl create -c` with the console on pipes: the banner arrives, and the
    // console ends when the guest powers off (on_poweroff = destroy).
    let mut con = Console::spawn(host.rxl_command().args(["create", "-c", example]));
    con.wait_for("rxen testguest: booted on 2 vCPUs with 128 MiB", BOOT);
    con.send("shutdown");
    con.wait_for("powering off", BOOT);
    let status = con.wait_closed(BOOT);
    assert!(status.success(), "rxl create -c failed");
    wait_until(Duration::from_secs(10), "hello is gone", || {
        host.list_row("hello").is_none()
    });
}

#[test]
fn two_domains_run_side_by_side_and_use_cpu() {
    let host = Host::start();
    let mut a = host.create_guest("alpha", 2, 64, "");
    let mut b = host.create_guest("beta", 2, 64, "");
    let list = host.rxl_ok(&["list"]);
    let mut lines = list.lines();
    assert_eq!(
        lines.next(),
        Some("Name                                        ID   Mem VCPUs\tState\tTime(s)")
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with("Domain-0 ")),
        "{list}"
    );
    for name in ["alpha", "beta"] {
        let row = host.list_row(name).expect("listed");
        assert_eq!(row[2], "64", "{row:?}");
        assert_eq!(row[3], "2", "{row:?}");
        assert!(row[4] == "-b----" || row[4] == "r-----", "{row:?}");
    }
    let t0: f64 = host.list_row("alpha").expect("alpha")[5]
        .parse()
        .expect("time");
    a.send("burn 4 1");
    b.send("burn 4 1");
    a.wait_for("burning vcpu 1 for 4 s", BOOT);
    // A burning vCPU thread is running or runnable; sample a few times so a
    // loaded host's scheduling cannot hide it.
    wait_until(Duration::from_secs(4), "alpha shows as running", || {
        host.list_row("alpha").is_some_and(|r| r[4] == "r-----")
    });
    a.wait_for("burn done on vcpu 1", BOOT);
    b.wait_for("burn done on vcpu 1", BOOT);
    let t1: f64 = host.list_row("alpha").expect("alpha")[5]
        .parse()
        .expect("time");
    // A 4 s burn; on a loaded host it gets less than 4 s of CPU, but clearly some.
    assert!(t1 >= t0 + 0.3, "CPU time grew from {t0} to only {t1}");
    // Both still run: their heartbeats grow (past what they were after the burn; a count
    // above 0 was already there at boot).
    let (ha, hb) = (a.heartbeat(), b.heartbeat());
    wait_until(BOOT, "alpha's heartbeat grows", || a.heartbeat() > ha);
    wait_until(BOOT, "beta's heartbeat grows", || b.heartbeat() > hb);
}

#[test]
fn pause_stops_the_heartbeat_and_unpause_resumes_it() {
    let host = Host::start();
    let mut con = host.create_guest("sleeper", 1, 64, "");
    let started = Instant::now();
    let h1 = con.heartbeat();
    host.rxl_ok(&["pause", "sleeper"]);
    let paused = Instant::now();
    assert_eq!(host.list_row("sleeper").expect("listed")[4], "--p---");
    std::thread::sleep(Duration::from_secs(3));
    let resumed = Instant::now();
    host.rxl_ok(&["unpause", "sleeper"]);
    let first = con.heartbeat();
    assert!(
        first >= h1,
        "heartbeat went backwards: {h1} -> {first}; console:\n{}",
        con.output()
    );
    // Until 1.5 s of running time after the pause (at once if the guest made up the 3 s
    // it was paused for, which it would do a tick at a time, after answering).
    let mut h2 = first;
    wait_until(BOOT, "the heartbeat resumes after unpause", || {
        h2 = con.heartbeat();
        h2 >= h1 + 15
    });
    // The guest ran only outside the pause: however long that took on a busy host, the
    // heartbeat may count that time (one per 100 ms, and 2 for where the reads fall) and
    // no more.
    let running = (paused - started) + resumed.elapsed();
    let most = running.as_millis() as u64 / 100 + 2;
    assert!(
        h2 - h1 <= most,
        "heartbeat ran during the pause: {h1} -> {h2} in {running:?} of running time"
    );
}

#[test]
fn shutdown_wait_returns_once_the_guest_powered_off() {
    let host = Host::start();
    let con = host.create_guest("polite", 2, 64, "");
    let out = host.rxl(&["shutdown", "-w", "polite"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        host.list_row("polite").is_none(),
        "still listed after shutdown -w"
    );
    con.wait_for("shutdown requested by host", Duration::from_secs(5));
    wait_until(Duration::from_secs(5), "rxend logs the power-off", || {
        host.rxend_log().contains("powered off")
    });
}

#[test]
fn on_crash_preserve_keeps_the_domain_and_its_console_log() {
    let host = Host::start();
    let mut con = host.create_guest("keeper", 2, 64, "on_crash = \"preserve\"");
    con.send("crash");
    wait_until(BOOT, "keeper is crashed", || {
        host.list_row("keeper").is_some_and(|r| r[4] == "---sc-")
    });
    let row = host.list_row("keeper").expect("keeper is listed");
    assert_eq!(
        row[3], "2",
        "a preserved domain keeps its vCPUs in the list: {row:?}"
    );
    let log = host.rxl_ok(&["console", "keeper"]);
    assert!(log.contains("booted on 2 vCPUs with 64 MiB"), "{log}");
    assert!(log.contains("crashing"), "{log}");
    host.rxl_ok(&["destroy", "keeper"]);
    assert!(host.list_row("keeper").is_none());
}

#[test]
fn on_crash_restart_boots_a_new_domain() {
    let host = Host::start();
    let mut con = host.create_guest("phoenix", 1, 64, "on_crash = \"restart\"");
    let old = domid(&host, "phoenix");
    con.send("crash");
    wait_until(BOOT, "phoenix is back with a new ID", || {
        host.rxl(&["domid", "phoenix"])
            .stdout
            .split(|b| *b == b'\n')
            .next()
            .and_then(|l| std::str::from_utf8(l).ok()?.parse::<u32>().ok())
            .is_some_and(|id| id != old)
    });
    let new = host.console("phoenix");
    new.wait_for("booted on 1 vCPUs with 64 MiB", BOOT);
}

#[test]
fn on_crash_destroy_removes_the_domain() {
    let host = Host::start();
    let mut con = host.create_guest("mayfly", 1, 64, "on_crash = \"destroy\"");
    con.send("crash");
    wait_until(BOOT, "mayfly is gone", || host.list_row("mayfly").is_none());
    wait_until(BOOT, "rxend logs the crash", || {
        host.rxend_log().contains("crashed")
    });
}

#[test]
fn guest_reboot_restarts_by_default() {
    let host = Host::start();
    let mut con = host.create_guest("bouncer", 1, 64, "");
    let old = domid(&host, "bouncer");
    con.send("reboot");
    wait_until(BOOT, "bouncer rebooted", || {
        host.list_row("bouncer")
            .is_some_and(|r| r[1].parse::<u32>().is_ok_and(|id| id != old))
    });
    host.console("bouncer")
        .wait_for("booted on 1 vCPUs with 64 MiB", BOOT);
}

/// The ID `rxl domid NAME` gives now, if the domain exists.
fn domid_now(host: &Host, name: &str) -> Option<u32> {
    String::from_utf8_lossy(&host.rxl(&["domid", name]).stdout)
        .trim()
        .parse()
        .ok()
}

/// Why domain `id` ended and what rxend did about it, from rxend's log line
/// `domain ID (NAME): REASON (DETAIL); action ACTION`.
fn exit_action(host: &Host, id: u32, name: &str) -> Option<(String, String)> {
    let prefix = format!("domain {id} ({name}): ");
    let log = host.rxend_log();
    log.lines().find_map(|l| {
        let line = &l[l.find(&prefix)? + prefix.len()..];
        let (reason, rest) = line.split_once(" (")?;
        let action = rest.rsplit_once("; action ")?.1;
        Some((reason.to_string(), action.trim().to_string()))
    })
}

#[test]
fn on_poweroff_restart_and_on_reboot_destroy_do_as_configured() {
    let host = Host::start();
    // The opposite of the defaults (power-off destroys, reboot restarts).
    let mut con = host.create_guest(
        "flipped",
        1,
        32,
        "on_poweroff = \"restart\"\non_reboot = \"destroy\"",
    );
    let first = domid(&host, "flipped");
    con.send("shutdown");
    con.wait_for("powering off", BOOT);
    wait_until(BOOT, "flipped is back with a new ID", || {
        domid_now(&host, "flipped").is_some_and(|id| id != first)
    });
    let second = domid(&host, "flipped");
    let mut con = host.console("flipped");
    con.wait_for("booted on 1 vCPUs with 32 MiB", BOOT);
    assert_eq!(
        exit_action(&host, first, "flipped"),
        Some(("powered off".into(), "restart".into()))
    );
    con.send("reboot");
    con.wait_for("rebooting", BOOT);
    wait_until(BOOT, "rxend carries out on_reboot", || {
        exit_action(&host, second, "flipped").is_some()
    });
    assert_eq!(
        exit_action(&host, second, "flipped"),
        Some(("rebooted".into(), "destroy".into()))
    );
    assert!(
        host.list_row("flipped").is_none(),
        "still listed after a reboot with on_reboot = destroy"
    );
    // Nothing comes back.
    std::thread::sleep(Duration::from_millis(500));
    assert!(host.list_row("flipped").is_none());
    assert!(!host
        .rxend_log()
        .contains(&format!("restarted as domain {}", second + 1)));
}

#[test]
fn on_poweroff_and_on_reboot_preserve_keep_the_stopped_domain() {
    let host = Host::start();
    let mut off = host.create_guest("keptoff", 1, 32, "on_poweroff = \"preserve\"");
    let mut rebooted = host.create_guest("keptreboot", 2, 32, "on_reboot = \"preserve\"");
    let (off_id, reboot_id) = (domid(&host, "keptoff"), domid(&host, "keptreboot"));
    off.send("shutdown");
    rebooted.send("reboot");
    // Kept under their IDs, shut down for their reasons (xl's `s`, and `r` for a reboot).
    wait_until(BOOT, "both are kept, shut down", || {
        host.list_row("keptoff").is_some_and(|r| r[4] == "---s--")
            && host
                .list_row("keptreboot")
                .is_some_and(|r| r[4] == "---sr-")
    });
    assert_eq!(
        host.list_row("keptoff").expect("kept")[1],
        off_id.to_string()
    );
    let row = host.list_row("keptreboot").expect("kept");
    assert_eq!(row[1], reboot_id.to_string());
    assert_eq!(
        row[3], "2",
        "a preserved domain keeps its vCPUs in the list: {row:?}"
    );
    // Their consoles' logs stay readable, up to the end.
    let log = host.rxl_ok(&["console", "keptoff"]);
    assert!(log.contains("powering off"), "{log}");
    let log = host.rxl_ok(&["console", "keptreboot"]);
    assert!(log.contains("rebooting"), "{log}");
    // Nothing restarted them; destroy clears them.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!host.rxend_log().contains("restarted as domain"));
    host.rxl_ok(&["destroy", "keptoff"]);
    host.rxl_ok(&["destroy", "keptreboot"]);
    assert!(host.list_row("keptoff").is_none() && host.list_row("keptreboot").is_none());
}

#[test]
fn guests_survive_rxend_and_are_adopted_with_their_ids() {
    let mut host = Host::start();
    let mut a = host.create_guest("steady", 1, 64, "");
    let _b = host.create_guest("ready", 2, 64, "");
    let ida = domid(&host, "steady");
    let idb = domid(&host, "ready");
    let h1 = a.heartbeat();
    host.kill_rxend();
    // The console connection is the VMM's own, so it works without rxend,
    // and the guest keeps running: its heartbeat grows.
    wait_until(BOOT, "the heartbeat grows without rxend", || {
        a.heartbeat() > h1
    });
    host.start_rxend();
    assert_eq!(domid(&host, "steady"), ida);
    assert_eq!(domid(&host, "ready"), idb);
    let row = host.list_row("ready").expect("ready listed");
    assert!(row[4] == "-b----" || row[4] == "r-----", "{row:?}");
    assert!(host.rxend_log().contains("adopted domain"));
    // And it still manages them.
    host.rxl_ok(&["destroy", "steady"]);
    assert!(host.list_row("steady").is_none());
}

#[test]
fn a_killed_vmm_crashes_only_its_domain() {
    let host = Host::start();
    let _victim = host.create_guest("victim", 1, 64, "on_crash = \"preserve\"");
    let mut bystander = host.create_guest("bystander", 1, 64, "");
    let pid = host.vmm_pid(domid(&host, "victim"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill VMM");
    wait_until(BOOT, "victim is crashed", || {
        host.list_row("victim").is_some_and(|r| r[4] == "---sc-")
    });
    let row = host.list_row("bystander").expect("bystander listed");
    assert!(row[4] == "-b----" || row[4] == "r-----", "{row:?}");
    // The bystander keeps running: its heartbeat grows past where it was after the crash.
    let before = bystander.heartbeat();
    wait_until(BOOT, "the bystander's heartbeat grows", || {
        bystander.heartbeat() > before
    });
}

#[test]
fn bad_configs_start_nothing_and_say_where() {
    let host = Host::start();
    let cfg = host.config(
        "broken.cfg",
        "name = \"broken\"\nmemory = \"lots\"\nkernel = \"builtin:testguest\"\n",
    );
    let out = host.rxl(&["create", cfg.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.cfg:2:"),
        "error does not name file and line: {err}"
    );
    assert!(host.list_row("broken").is_none());
    // A key rxen cannot honour is refused unless explicitly ignored.
    let cfg = host.config(
        "pvgrub.cfg",
        "name = \"grubby\"\nkernel = \"builtin:testguest\"\nmemory = 64\nbootloader = \"pvgrub\"\n",
    );
    let out = host.rxl(&["create", cfg.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pvgrub.cfg:4:"), "{err}");
    assert!(err.contains("--ignore-unsupported"), "{err}");
    assert!(host.list_row("grubby").is_none());
    // Unknown domains get xl's message.
    let out = host.rxl(&["pause", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch is an invalid domain identifier"));
}

#[test]
fn names_ids_rename_uptime_info_and_dmesg() {
    let host = Host::start();
    let _con = host.create_guest("first", 1, 64, "");
    let cfg = host.config(
        "dup.cfg",
        "name = \"first\"\nkernel = \"builtin:testguest\"\nmemory = 64\n",
    );
    let out = host.rxl(&["create", cfg.to_str().expect("path")]);
    assert!(
        !out.status.success(),
        "a second domain named first was created"
    );
    let id = domid(&host, "first");
    assert_eq!(host.rxl_ok(&["domname", &id.to_string()]).trim(), "first");
    host.rxl_ok(&["rename", "first", "second"]);
    assert_eq!(domid(&host, "second"), id);
    assert!(host.list_row("first").is_none());
    let up = host.rxl_ok(&["uptime"]);
    assert!(
        up.starts_with("Name                                ID Uptime\n"),
        "{up}"
    );
    assert!(up.lines().any(|l| l.starts_with("second ")), "{up}");
    let info = host.rxl_ok(&["info"]);
    assert!(
        info.lines()
            .next()
            .is_some_and(|l| l.starts_with("host                   : ")),
        "{info}"
    );
    let cpus: u32 = host
        .rxl_ok(&["info", "nr_cpus"])
        .trim()
        .parse()
        .expect("nr_cpus");
    // The host's CPUs as rxend sees them (it inherits this process's affinity).
    let host_cpus = std::thread::available_parallelism()
        .expect("CPU count")
        .get();
    assert_eq!(cpus as usize, host_cpus, "rxl info nr_cpus");
    let dmesg = host.rxl_ok(&["dmesg"]);
    assert!(dmesg.contains("renamed from first to second"), "{dmesg}");
    let long = host.rxl_ok(&["list", "-l", "second"]);
    let v: serde_json::Value = serde_json::from_str(&long).expect("list -l is JSON");
    assert_eq!(v[0]["domid"], id);
    assert_eq!(v[0]["config"]["c_info"]["name"], "second");
}

#[test]
fn create_paused_holds_the_guest_until_unpause() {
    let host = Host::start();
    let cfg = host.config(
        "frozen.cfg",
        "name = \"frozen\"\nkernel = \"builtin:testguest\"\nmemory = 64\n",
    );
    host.rxl_ok(&["create", "-p", cfg.to_str().expect("path")]);
    assert_eq!(host.list_row("frozen").expect("listed")[4], "--p---");
    let con = host.console("frozen");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !con.output().contains("booted"),
        "a paused guest printed: {}",
        con.output()
    );
    host.rxl_ok(&["unpause", "frozen"]);
    con.wait_for("booted on 1 vCPUs with 64 MiB", BOOT);
}

#[test]
fn rename_restart_keeps_the_crashed_domain_under_a_dated_name() {
    let host = Host::start();
    let mut con = host.create_guest("lazarus", 1, 64, "on_crash = \"rename-restart\"");
    let old = domid(&host, "lazarus");
    con.send("crash");
    wait_until(BOOT, "the old domain is renamed", || {
        host.rxl_ok(&["list"])
            .lines()
            .any(|l| l.starts_with("lazarus-"))
    });
    let list = host.rxl_ok(&["list"]);
    let kept = list
        .lines()
        .find(|l| l.starts_with("lazarus-"))
        .expect("renamed domain");
    let f: Vec<&str> = kept.split_whitespace().collect();
    // xl's suffix: -%Y%m%dT%H%MZ
    let suffix = f[0].trim_start_matches("lazarus-");
    assert_eq!(suffix.len(), 14, "{kept}");
    assert!(
        suffix.ends_with('Z') && suffix.as_bytes()[8] == b'T',
        "{kept}"
    );
    assert_eq!(f[1], old.to_string());
    assert_eq!(f[4], "---sc-");
    // The new domain takes the name a moment after the old one gives it up.
    wait_until(BOOT, "the restarted domain is listed", || {
        host.list_row("lazarus").is_some()
    });
    host.console("lazarus")
        .wait_for("booted on 1 vCPUs with 64 MiB", BOOT);
    assert_ne!(domid(&host, "lazarus"), old);
}

#[test]
fn rxl_starts_rxend_on_demand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("rxend.sock");
    let state = dir.path().join("state");
    // The daemon rxl starts takes its CPU cgroup name from the environment too.
    let cgroup = format!(
        "rxen-e2e-ondemand-{}",
        dir.path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let run = |args: &[&str]| {
        std::process::Command::new(rxen_e2e::bin("rxl"))
            .args(args)
            .env("RXEN_SOCKET", &socket)
            .env("RXEN_STATE_DIR", &state)
            .env("RXEN_CGROUP", &cgroup)
            .output()
            .expect("rxl")
    };
    let out = run(&["list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("Domain-0 ")),
        "{text}"
    );
    assert!(
        state.join("rxend.log").exists(),
        "rxend did not use the state directory"
    );
    // Stop the daemon it started.
    let mut c = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    std::io::Write::write_all(&mut c, b"{\"op\":\"quit\"}\n").expect("quit");
    let mut buf = String::new();
    let _ = std::io::Read::read_to_string(&mut c, &mut buf);
    assert!(buf.contains("ok"), "{buf}");
    rxen_e2e::remove_cgroups(&cgroup);
}

#[test]
fn dry_run_prints_the_resolved_config_and_refuses_bad_files() {
    let host = Host::start();
    let cfg = host.config(
        "web.cfg",
        "name = \"web\"\nkernel = \"builtin:testguest\"\nmemory = 256\nvcpus = 2\ncpus = \"0-1\"\n",
    );
    let out = host.rxl(&["create", "-n", cfg.to_str().expect("path"), "memory=512"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["c_info"]["name"], "web");
    assert_eq!(v["b_info"]["target_memkb"], 512 * 1024, "the override wins");
    assert_eq!(v["b_info"]["avail_vcpus"], serde_json::json!([0, 1]));
    assert_eq!(v["b_info"]["sched_params"]["weight"], 256);
    assert_eq!(v["on_crash"], "destroy");
    assert!(host.list_row("web").is_none(), "a dry run created a domain");
    let bad = host.config("bad.cfg", "name = \"bad\"\nvcpus = [ 1, 2\n");
    let out = host.rxl(&["create", "-n", bad.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.cfg:"), "{err}");
}

#[test]
fn console_on_a_terminal_detaches_with_ctrl_bracket() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let host = Host::start();
    let _con = host.create_guest("tty", 1, 64, "");
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let mut child = host
        .rxl_command()
        .args(["console", "tty"])
        .stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave)
        .spawn()
        .expect("rxl console on a pty");
    let mut master = std::fs::File::from(pty.master);
    // Reader thread: collect what rxl writes to the terminal.
    let mut reader = master.try_clone().expect("dup master");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    wait_until(BOOT, "the replayed banner shows", || {
        seen.lock().expect("lock").contains("booted on 1 vCPUs")
    });
    // A terminal sends CR for Enter; raw mode passes it to the guest unchanged.
    master.write_all(b"heartbeat\r").expect("type");
    wait_until(BOOT, "the heartbeat answer shows", || {
        seen.lock().expect("lock").contains("heartbeat ")
    });
    master.write_all(&[0x1d]).expect("Ctrl-]");
    wait_until(Duration::from_secs(5), "rxl console detached", || {
        child.try_wait().ok().flatten().is_some()
    });
    assert!(child.wait().expect("status").success());
    let _ = master.as_raw_fd();
    // Detaching leaves the domain running.
    let row = host.list_row("tty").expect("listed");
    assert!(row[4] == "-b----" || row[4] == "r-----", "{row:?}");
}

#[test]
fn a_fifo_or_a_device_as_the_config_file_is_refused_at_once() {
    let host = Host::start();
    let fifo = host.dir.path().join("cfg.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    for (file, why) in [
        (fifo.to_str().expect("utf-8"), "not a regular file"),
        ("/dev/zero", "not a regular file"),
    ] {
        let started = std::time::Instant::now();
        let out = host.rxl(&["create", file]);
        assert!(!out.status.success(), "{file} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{file}: unclear error: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{file}: rxl took {:?}",
            started.elapsed()
        );
    }
}

/// Every directory and file under `dir` whose mode lets group or others in.
fn open_to_others(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.permissions().mode() & 0o077 != 0 {
            out.push(format!(
                "{} {:o}",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        if meta.is_dir() {
            out.extend(open_to_others(&path));
        }
    }
    out
}

#[test]
fn state_and_run_directories_are_private_to_root() {
    use std::os::unix::fs::PermissionsExt;
    let mut host = Host::start();
    let _con = host.create_guest("private1", 1, 16, "");
    let state = host.state_dir();
    let mode = std::fs::metadata(&state)
        .expect("state")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "state directory mode {mode:o}");
    let open = open_to_others(&state);
    assert!(open.is_empty(), "readable by others: {open:?}");

    // An installation from before: opened up by hand, made private again at start.
    host.kill_rxend();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let records: Vec<_> = std::fs::read_dir(&state)
        .expect("ls")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    for r in &records {
        std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    host.start_rxend();
    wait_until(Duration::from_secs(20), "rxend answers", || {
        host.rxl(&["list"]).status.success()
    });
    let open = open_to_others(&state);
    assert!(open.is_empty(), "still readable by others: {open:?}");
    assert!(host.list_row("private1").is_some(), "the domain was lost");
    host.rxl_ok(&["destroy", "private1"]);
}

#[test]
fn a_second_rxend_on_the_same_state_directory_refuses_to_start() {
    let host = Host::start();
    let _con = host.create_guest("locked1", 1, 16, "");
    let log_before = host.rxend_log();
    let other_socket = host.dir.path().join("second.sock");
    let out = std::process::Command::new(rxen_e2e::bin("rxend"))
        .arg("--socket")
        .arg(&other_socket)
        .arg("--state-dir")
        .arg(host.state_dir())
        .arg("--no-cgroups")
        .output()
        .expect("run a second rxend");
    assert!(!out.status.success(), "a second rxend started");
    let err = String::from_utf8_lossy(&out.stderr);
    let first = host.rxend.as_ref().map(|c| c.id()).expect("first rxend");
    assert!(
        err.contains("another rxend") && err.contains(&format!("pid {first}")),
        "unclear error: {err}"
    );
    assert!(!other_socket.exists(), "the second rxend bound a socket");
    assert_eq!(
        host.rxend_log(),
        log_before,
        "the second rxend wrote to the log"
    );
    assert!(host.list_row("locked1").is_some(), "the domain was lost");
    host.rxl_ok(&["destroy", "locked1"]);
}

#[test]
fn running_out_of_descriptors_neither_spins_nor_floods_the_log() {
    let host = Host::start();
    let pid = host.rxend.as_ref().map(|c| c.id()).expect("rxend");
    let limited = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg("--nofile=48:48")
        .status()
        .expect("prlimit");
    assert!(limited.success(), "prlimit failed");
    let conns: Vec<_> = (0..120)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(host.socket()).ok())
        .collect();
    assert!(!conns.is_empty(), "no connection opened");
    std::thread::sleep(Duration::from_secs(3));
    let log = host.rxend_log();
    let lines = log.matches("accept:").count();
    assert!(lines >= 1, "the descriptor shortage went unlogged:\n{log}");
    assert!(lines <= 2, "{lines} accept errors logged in 3 s");
    drop(conns);
    wait_until(Duration::from_secs(20), "rxend answers again", || {
        host.rxl(&["list"]).status.success()
    });
}

#[test]
fn more_vcpus_than_the_guest_can_run_are_refused_with_the_limit() {
    let host = Host::start();
    let cfg = host.config(
        "wide.cfg",
        "name = \"wide\"\nkernel = \"builtin:testguest\"\nmemory = 64\nvcpus = 255\n",
    );
    let out = host.rxl(&["create", cfg.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "a test guest with 255 vCPUs started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vcpus = 255: the built-in test guest runs at most 64 vCPUs"),
        "{err}"
    );
    assert!(host.list_row("wide").is_none());
    // At the limit it runs, and sees every vCPU.
    let wide = host.config(
        "wide64.cfg",
        "name = \"wide\"\nkernel = \"builtin:testguest\"\nmemory = 64\nvcpus = 64\n",
    );
    host.rxl_ok(&["create", wide.to_str().expect("utf-8")]);
    host.console("wide")
        .wait_for("booted on 64 vCPUs", Duration::from_secs(30));
}

#[test]
fn a_domain_larger_than_the_host_is_refused_with_the_numbers() {
    let host = Host::start();
    let total_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .expect("MemTotal")
        / 1024;
    let cfg = host.config(
        "huge.cfg",
        &format!(
            "name = \"huge\"\nkernel = \"builtin:testguest\"\nmemory = {}\n",
            total_mib * 4
        ),
    );
    let out = host.rxl(&["create", cfg.to_str().expect("utf-8")]);
    assert!(
        !out.status.success(),
        "a domain 4 times the host's RAM started"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not enough memory") && err.contains(&format!("{} MiB", total_mib * 4)),
        "unclear error: {err}"
    );
    assert!(host.list_row("huge").is_none(), "the domain is listed");
}

#[test]
fn descriptors_rxend_inherited_do_not_reach_the_vmm() {
    use std::os::unix::process::CommandExt;
    let mut host = Host::start();
    host.kill_rxend();
    let (pipe_r, _pipe_w) = nix::unistd::pipe().expect("pipe");
    let inherited = {
        use std::os::fd::AsRawFd;
        pipe_r.as_raw_fd()
    };
    let mut cmd = std::process::Command::new(rxen_e2e::bin("rxend"));
    cmd.arg("--socket")
        .arg(host.socket())
        .arg("--state-dir")
        .arg(host.state_dir())
        .arg("--no-cgroups")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 is async-signal-safe; the child gets the pipe as descriptor 251, without
    // close-on-exec, as a careless parent would leave it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(inherited, 251) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    host.rxend = Some(cmd.spawn().expect("spawn rxend"));
    wait_until(Duration::from_secs(10), "rxend listens", || {
        std::os::unix::net::UnixStream::connect(host.socket()).is_ok()
    });
    let rxend_pid = host.rxend.as_ref().map(|c| c.id()).expect("rxend");
    assert!(
        std::fs::read_link(format!("/proc/{rxend_pid}/fd/251")).is_ok(),
        "the test did not give rxend descriptor 251"
    );
    let _con = host.create_guest("fds1", 1, 16, "");
    let vmm = host.vmm_pid(domid(&host, "fds1"));
    let leaked = std::fs::read_link(format!("/proc/{vmm}/fd/251"));
    assert!(
        leaked.is_err(),
        "the VMM inherited rxend's descriptor 251: {leaked:?}"
    );
    host.rxl_ok(&["destroy", "fds1"]);
}

#[test]
fn a_config_with_thousands_of_unknown_keys_gets_a_reply_that_fits() {
    let host = Host::start();
    let mut text = String::from("name = \"noisy1\"\nkernel = \"builtin:testguest\"\nmemory = 16\n");
    for i in 0..60_000 {
        text.push_str(&format!("k{i:05} = 1\n"));
    }
    let cfg = host.config("noisy1.cfg", &text);
    let out = host.rxl(&["create", cfg.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rxl create failed: {}", tail_of(&err));
    assert!(
        !err.contains("lost connection"),
        "the reply did not fit: {}",
        tail_of(&err)
    );
    assert!(
        err.contains("more"),
        "no summary of the left-out warnings: {}",
        tail_of(&err)
    );
    assert!(
        err.lines().count() < 200,
        "{} lines of warnings",
        err.lines().count()
    );
    assert!(host.list_row("noisy1").is_some(), "the domain does not run");
    host.rxl_ok(&["destroy", "noisy1"]);
}

fn tail_of(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

#[test]
fn rxl_says_why_the_rxend_it_started_gave_up() {
    // An rxend already holds this state directory, on another socket.
    let host = Host::start();
    let other = host.dir.path().join("other.sock");
    let out = std::process::Command::new(rxen_e2e::bin("rxl"))
        .arg("list")
        .env("RXEN_SOCKET", &other)
        .env("RXEN_STATE_DIR", host.state_dir())
        .env("RXEN_CGROUP", host.cgroup_name())
        .output()
        .expect("rxl");
    assert!(
        !out.status.success(),
        "rxl list worked through a second rxend"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("starting") && err.contains(&host.state_dir().display().to_string()),
        "rxl did not say what it started: {err}"
    );
    assert!(
        err.contains("another rxend"),
        "rxl did not pass on why rxend gave up: {err}"
    );
    assert!(!other.exists(), "a second rxend listens");
}

#[test]
fn rxl_starts_no_rxend_when_told_not_to() {
    // With RXEN_NO_AUTOSTART (a host whose rxend belongs to systemd), rxl reports a dead
    // socket instead of starting a daemon that would take the state directory meanwhile.
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("rxend.sock");
    let state = dir.path().join("state");
    let out = std::process::Command::new(rxen_e2e::bin("rxl"))
        .arg("list")
        .env("RXEN_SOCKET", &socket)
        .env("RXEN_STATE_DIR", &state)
        .env("RXEN_NO_AUTOSTART", "1")
        .output()
        .expect("rxl");
    assert!(!out.status.success(), "rxl list worked with no rxend");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RXEN_NO_AUTOSTART") && !err.contains("starting"),
        "rxl did not say why it started nothing: {err}"
    );
    assert!(!socket.exists(), "an rxend was started: its socket exists");
    assert!(
        !state.exists(),
        "an rxend was started: its state directory exists"
    );
}
