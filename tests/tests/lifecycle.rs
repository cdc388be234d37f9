//! The xl lifecycle on real guests under /dev/kvm: create, list, console,
//! pause, shutdown, the on_crash policies, and rxend or VMM deaths.

use std::time::Duration;

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
    let mut con = Console::spawn(
        std::process::Command::new(rxen_e2e::bin("rxl"))
            .args(["create", "-c", example])
            .env("RXEN_SOCKET", host.socket()),
    );
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
    assert!(lines.next().is_some_and(|l| l.starts_with("Domain-0 ")), "{list}");
    for name in ["alpha", "beta"] {
        let row = host.list_row(name).expect("listed");
        assert_eq!(row[2], "64", "{row:?}");
        assert_eq!(row[3], "2", "{row:?}");
        assert!(row[4] == "-b----" || row[4] == "r-----", "{row:?}");
    }
    let t0: f64 = host.list_row("alpha").expect("alpha")[5].parse().expect("time");
    a.send("burn 2 1");
    b.send("burn 2 1");
    a.wait_for("burning vcpu 1 for 2 s", BOOT);
    let row = host.list_row("alpha").expect("alpha");
    assert_eq!(row[4], "r-----", "a burning domain is running: {row:?}");
    a.wait_for("burn done on vcpu 1", BOOT);
    b.wait_for("burn done on vcpu 1", BOOT);
    let t1: f64 = host.list_row("alpha").expect("alpha")[5].parse().expect("time");
    assert!(t1 >= t0 + 1.0, "CPU time grew from {t0} to only {t1}");
    // Both still answer.
    assert!(a.heartbeat() > 0);
    assert!(b.heartbeat() > 0);
}

#[test]
fn pause_stops_the_heartbeat_and_unpause_resumes_it() {
    let host = Host::start();
    let mut con = host.create_guest("sleeper", 1, 64, "");
    std::thread::sleep(Duration::from_millis(500));
    let h1 = con.heartbeat();
    host.rxl_ok(&["pause", "sleeper"]);
    assert_eq!(host.list_row("sleeper").expect("listed")[4], "--p---");
    std::thread::sleep(Duration::from_secs(3));
    host.rxl_ok(&["unpause", "sleeper"]);
    let h2 = con.heartbeat();
    // 100 ms ticks: 3 s of pause would add 30 if the counter kept going.
    assert!(h2 >= h1, "heartbeat went backwards: {h1} -> {h2}");
    assert!(h2 - h1 < 20, "heartbeat ran during the pause: {h1} -> {h2}");
    std::thread::sleep(Duration::from_secs(1));
    let h3 = con.heartbeat();
    assert!(h3 >= h2 + 5, "heartbeat did not resume: {h2} -> {h3}");
}

#[test]
fn shutdown_wait_returns_once_the_guest_powered_off() {
    let host = Host::start();
    let con = host.create_guest("polite", 2, 64, "");
    let out = host.rxl(&["shutdown", "-w", "polite"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(host.list_row("polite").is_none(), "still listed after shutdown -w");
    con.wait_for("shutdown requested by host", Duration::from_secs(5));
    assert!(host.rxend_log().contains("powered off"));
}

#[test]
fn on_crash_preserve_keeps_the_domain_and_its_console_log() {
    let host = Host::start();
    let mut con = host.create_guest("keeper", 1, 64, "on_crash = \"preserve\"");
    con.send("crash");
    wait_until(BOOT, "keeper is crashed", || {
        host.list_row("keeper").is_some_and(|r| r[4] == "---sc-")
    });
    let log = host.rxl_ok(&["console", "keeper"]);
    assert!(log.contains("booted on 1 vCPUs with 64 MiB"), "{log}");
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
    assert!(host.rxend_log().contains("crashed"));
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

#[test]
fn guests_survive_rxend_and_are_adopted_with_their_ids() {
    let mut host = Host::start();
    let mut a = host.create_guest("steady", 1, 64, "");
    let _b = host.create_guest("ready", 2, 64, "");
    let ida = domid(&host, "steady");
    let idb = domid(&host, "ready");
    let h1 = a.heartbeat();
    host.kill_rxend();
    std::thread::sleep(Duration::from_secs(1));
    // The console connection is the VMM's own, so it works without rxend.
    let h2 = a.heartbeat();
    assert!(h2 > h1, "guest stopped when rxend died");
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
    assert!(bystander.heartbeat() > 0);
}

#[test]
fn bad_configs_start_nothing_and_say_where() {
    let host = Host::start();
    let cfg = host.config("broken.cfg", "name = \"broken\"\nmemory = \"lots\"\nkernel = \"builtin:testguest\"\n");
    let out = host.rxl(&["create", cfg.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.cfg:2:"), "error does not name file and line: {err}");
    assert!(host.list_row("broken").is_none());
    // A key rxen cannot honour is refused unless explicitly ignored.
    let cfg = host.config(
        "pygrub.cfg",
        "name = \"grubby\"\nkernel = \"builtin:testguest\"\nmemory = 64\nbootloader = \"pygrub\"\n",
    );
    let out = host.rxl(&["create", cfg.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pygrub.cfg:4:"), "{err}");
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
    assert!(!out.status.success(), "a second domain named first was created");
    let id = domid(&host, "first");
    assert_eq!(host.rxl_ok(&["domname", &id.to_string()]).trim(), "first");
    host.rxl_ok(&["rename", "first", "second"]);
    assert_eq!(domid(&host, "second"), id);
    assert!(host.list_row("first").is_none());
    let up = host.rxl_ok(&["uptime"]);
    assert!(up.starts_with("Name                                ID Uptime\n"), "{up}");
    assert!(up.lines().any(|l| l.starts_with("second ")), "{up}");
    let info = host.rxl_ok(&["info"]);
    assert!(info.lines().next().is_some_and(|l| l.starts_with("host                   : ")), "{info}");
    let cpus: u32 = host.rxl_ok(&["info", "nr_cpus"]).trim().parse().expect("nr_cpus");
    assert!(cpus >= 1);
    let dmesg = host.rxl_ok(&["dmesg"]);
    assert!(dmesg.contains("renamed from first to second"), "{dmesg}");
    let long = host.rxl_ok(&["list", "-l", "second"]);
    let v: serde_json::Value = serde_json::from_str(&long).expect("list -l is JSON");
    assert_eq!(v[0]["domid"], id);
    assert_eq!(v[0]["config"]["name"], "second");
}
