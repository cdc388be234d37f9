//! Boots the real built-in test guest under KVM and drives it through the
//! console and control sockets, as rxend and `rxl console` would.

mod common;

use std::time::{Duration, Instant};

use common::{spec, Console, Domain};
use rxen_proto::vmctl::{VcpuState, VmRequest, VmResponse, VmStats};
use rxen_proto::vmspec::{ExitReason, KernelSource};

const BANNER: &str = "rxen testguest: booted on 2 vCPUs with 128 MiB";
const T: Duration = Duration::from_secs(20);

fn boot(paused: bool) -> Domain {
    Domain::start(|dir| {
        let mut s = spec(dir, KernelSource::Builtin("testguest".into()), 2, 128);
        s.start_paused = paused;
        s
    })
}

fn booted() -> (Domain, Console) {
    let d = boot(false);
    let mut con = d.console();
    con.wait_text(0, BANNER, T);
    (d, con)
}

/// Sends `heartbeat` and returns the counter the guest answers with.
fn heartbeat(con: &mut Console) -> u64 {
    let from = con.seen.len();
    con.send("heartbeat\n");
    let tail = con.wait_for(from, T, |t| parse_heartbeat(t).is_some());
    parse_heartbeat(&tail).expect("heartbeat")
}

fn parse_heartbeat(text: &str) -> Option<u64> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .find_map(|l| l.trim().strip_prefix("heartbeat ")?.trim().parse().ok())
}

fn stats(d: &Domain) -> VmStats {
    match d.control().request(&VmRequest::Stats) {
        VmResponse::Stats(s) => s,
        other => panic!("stats: {other:?}"),
    }
}

#[test]
fn boots_with_banner_and_heartbeat_grows() {
    let (d, mut con) = booted();
    assert!(d.console_log().contains(BANNER));
    let a = heartbeat(&mut con);
    std::thread::sleep(Duration::from_millis(600));
    let b = heartbeat(&mut con);
    assert!(b > a, "heartbeat did not grow: {a} -> {b}");
    // A second client gets the recent output replayed.
    let mut late = d.console();
    late.wait_text(0, BANNER, T);
    late.wait_text(0, &format!("heartbeat {b}"), T);
}

#[test]
fn pause_stops_vcpus_and_heartbeat_does_not_jump() {
    let (d, mut con) = booted();
    let rss_before = vm_rss_kib(d.child.id());
    let s = stats(&d);
    let rss_after = vm_rss_kib(d.child.id());
    assert!(!s.paused);
    assert_eq!(s.memory_mib, 128);
    assert_eq!(s.vcpus.len(), 2);
    // The VMM's own resident size, as the kernel tells it (which moves little meanwhile).
    let (low, high) = (rss_before.min(rss_after), rss_before.max(rss_after));
    assert!(
        (low.saturating_sub(4096)..=high + 4096).contains(&s.rss_kib),
        "stats say {} KiB resident; /proc says {rss_before} then {rss_after} KiB",
        s.rss_kib
    );
    for (i, v) in s.vcpus.iter().enumerate() {
        assert_eq!(v.id as usize, i);
        assert!(v.tid > 0);
        let comm = std::fs::read_to_string(format!("/proc/{}/task/{}/comm", d.child.id(), v.tid))
            .expect("vCPU thread");
        assert_eq!(comm.trim(), format!("vcpu{i}"));
        assert!(
            matches!(v.state, VcpuState::Running | VcpuState::Blocked),
            "{v:?}"
        );
    }
    let started = Instant::now();
    let before = heartbeat(&mut con);
    let mut ctl = d.control();
    assert_eq!(ctl.request(&VmRequest::Pause), VmResponse::Ok);
    let s = stats(&d);
    assert!(s.paused);
    assert!(
        s.vcpus.iter().all(|v| v.state == VcpuState::Paused),
        "{s:?}"
    );
    let cpu_at_pause: Vec<u64> = s.vcpus.iter().map(|v| v.cpu_time_ns).collect();
    let paused_at = Instant::now();
    // Typed input waits while paused; the guest answers after unpause.
    let from = con.seen.len();
    con.send("heartbeat\n");
    std::thread::sleep(Duration::from_millis(1500));
    let s = stats(&d);
    let cpu_now: Vec<u64> = s.vcpus.iter().map(|v| v.cpu_time_ns).collect();
    for (a, b) in cpu_at_pause.iter().zip(&cpu_now) {
        // Parked threads burn (almost) nothing.
        assert!(b - a < 50_000_000, "vCPU ran while paused: {a} -> {b}");
    }
    assert!(
        parse_heartbeat(&con.text()[from..]).is_none(),
        "guest answered while paused"
    );
    let resumed = Instant::now();
    assert_eq!(ctl.request(&VmRequest::Unpause), VmResponse::Ok);
    let tail = con.wait_for(from, T, |t| parse_heartbeat(t).is_some());
    let after = parse_heartbeat(&tail).expect("heartbeat");
    assert!(after >= before, "{before} -> {after}");
    assert!(!stats(&d).paused);
    // It runs again: on to 1.5 s of running time after the pause (at once if the guest made
    // up the 1.5 s paused, which it would do a tick at a time, after answering).
    let deadline = Instant::now() + T;
    let later = loop {
        let count = heartbeat(&mut con);
        if count > after && count >= before + 15 {
            break count;
        }
        assert!(Instant::now() < deadline, "heartbeat stuck at {count}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The guest ran only outside the pause, so the heartbeat may count that time (one per
    // 100 ms, and 2 for where the reads fall), however long it was, and no more.
    let running = (paused_at - started) + resumed.elapsed();
    assert!(
        later - before <= running.as_millis() as u64 / 100 + 2,
        "heartbeat went from {before} to {later} in {running:?} of running time around a {:?} pause",
        resumed - paused_at
    );
}

/// The resident size of process `pid` in KiB (`VmRSS` in its status).
fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("process status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn host_shutdown_request_powers_off() {
    let (mut d, mut con) = booted();
    assert_eq!(d.control().request(&VmRequest::Shutdown), VmResponse::Ok);
    con.wait_text(0, "shutdown requested by host", T);
    assert_eq!(d.wait_exit(T), 0);
    let rec = d.exit_record();
    assert_eq!(rec.reason, ExitReason::Poweroff, "{rec:?}");
    assert!(d.console_log().contains("powering off"));
}

#[test]
fn host_reboot_request_reboots() {
    let (mut d, mut con) = booted();
    assert_eq!(d.control().request(&VmRequest::Reboot), VmResponse::Ok);
    con.wait_text(0, "reboot requested by host", T);
    assert_eq!(d.wait_exit(T), 0);
    assert_eq!(d.exit_record().reason, ExitReason::Reboot);
}

#[test]
fn guest_commands_end_the_vmm_with_their_reason() {
    for (cmd, says, reason) in [
        ("crash", "crashing", ExitReason::Crash),
        ("reboot", "rebooting", ExitReason::Reboot),
        ("shutdown", "powering off", ExitReason::Poweroff),
    ] {
        let (mut d, mut con) = booted();
        con.send(&format!("{cmd}\n"));
        assert_eq!(d.wait_exit(T), 0, "{cmd}");
        assert!(d.console_log().contains(says), "{cmd}: {}", d.console_log());
        assert_eq!(d.exit_record().reason, reason, "{cmd}");
    }
}

#[test]
fn garbage_on_control_gets_error_and_vmm_survives() {
    let (mut d, mut con) = booted();
    let mut ctl = d.control();
    for bad in [
        &b"garbage\n"[..],
        b"{\"cmd\":\"fly\"}\n",
        b"\xff\xfe\n",
        b"[]\n",
    ] {
        let resp = ctl.raw(bad);
        let v: VmResponse = serde_json::from_str(&resp).expect("json response");
        assert!(matches!(v, VmResponse::Error { .. }), "{resp}");
    }
    // The same connection and new ones still work, and so does the guest.
    assert!(matches!(
        ctl.request(&VmRequest::Stats),
        VmResponse::Stats(_)
    ));
    drop(ctl);
    let mut other = d.control();
    assert!(matches!(
        other.request(&VmRequest::Stats),
        VmResponse::Stats(_)
    ));
    heartbeat(&mut con);
    assert!(d.child.try_wait().expect("wait").is_none());
    assert_eq!(other.request(&VmRequest::Destroy), VmResponse::Ok);
    // The record exists by the time "ok" arrives.
    assert_eq!(d.exit_record().reason, ExitReason::Destroyed);
    assert_eq!(d.wait_exit(T), 0);
}

#[test]
fn start_paused_waits_for_unpause() {
    let d = boot(true);
    let s = stats(&d);
    assert!(s.paused);
    assert!(
        s.vcpus.iter().all(|v| v.state == VcpuState::Paused),
        "{s:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!d.console_log().contains(BANNER));
    assert_eq!(d.control().request(&VmRequest::Unpause), VmResponse::Ok);
    d.console().wait_text(0, BANNER, T);
}

#[test]
fn sigterm_is_destroy() {
    let (mut d, _con) = booted();
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    assert_eq!(d.wait_exit(T), 0);
    assert_eq!(d.exit_record().reason, ExitReason::Destroyed);
}

#[test]
fn stuck_console_client_does_not_block_the_guest() {
    let (d, mut con) = booted();
    // A client that connects and never reads.
    let _stuck = std::os::unix::net::UnixStream::connect(d.path("console.sock")).expect("connect");
    // A client that connects and goes away.
    drop(std::os::unix::net::UnixStream::connect(d.path("console.sock")).expect("connect"));
    // Make the guest print while those two hang around. (The guest's UART is
    // too slow here to overflow a socket buffer in a test; the console unit
    // tests push megabytes at a stuck client.)
    con.send(&"help\n".repeat(20));
    let from = con.seen.len();
    con.wait_for(from, T, |t| t.matches("commands:").count() >= 20);
    let a = heartbeat(&mut con);
    std::thread::sleep(Duration::from_millis(300));
    assert!(heartbeat(&mut con) > a);
}

#[test]
fn guest_above_3_gib_gets_the_split_layout() {
    let d = Domain::start(|dir| spec(dir, KernelSource::Builtin("testguest".into()), 1, 4096));
    d.console()
        .wait_text(0, "rxen testguest: booted on 1 vCPUs with 4096 MiB", T);
}

#[test]
fn stats_show_a_burning_vcpu_running_and_its_cpu_time() {
    let (d, mut con) = booted();
    let idle = stats(&d);
    con.send("burn 2 1\n");
    con.wait_text(0, "burning vcpu 1 for 2 s", T);
    std::thread::sleep(Duration::from_millis(300));
    let mut running = false;
    for _ in 0..20 {
        let s = stats(&d);
        if s.vcpus[1].state == VcpuState::Running {
            running = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(running, "vCPU 1 never showed as running while burning");
    // Measured over the whole 2 s burn, so that a loaded host, which gives
    // the thread only a share of a CPU, still shows a clear amount.
    con.wait_text(0, "burn done on vcpu 1", T);
    let busy = stats(&d);
    let spent = busy.vcpus[1].cpu_time_ns - idle.vcpus[1].cpu_time_ns;
    assert!(
        spent > 100_000_000,
        "vCPU 1 used only {spent} ns while burning"
    );
    assert!(busy.vcpus[1].host_cpu.is_some());
}
