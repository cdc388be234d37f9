//! Save, restore, checkpoint and live migration on real guests under
//! /dev/kvm; migrations go between two rxend "hosts" in two network
//! namespaces joined by a veth pair.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rxen_e2e::{blk_pattern, migrated, wait_until, Console, Host, NetPair};

const BOOT: Duration = Duration::from_secs(30);

/// A key file both hosts share.
fn key_file(dir: &Path, name: &str, key: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{key}\n")).expect("key");
    p.display().to_string()
}

/// rxend's config with the relocation server on `addr`.
fn relocation_config(addr: &str, allow: &str, key: &str) -> String {
    format!(
        "[relocation]\nserver = true\naddress = \"{addr}\"\nport = 8002\nhosts-allow = [{allow}]\nkey-file = \"{key}\"\n"
    )
}

/// rxend's answer to a `transfer_progress` request for `domain` (JSON
/// null when no transfer runs or the domain is gone).
fn transfer_progress(socket: &Path, domain: &str) -> serde_json::Value {
    use std::io::{BufRead, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return serde_json::Value::Null;
    };
    let req = serde_json::json!({ "op": "transfer_progress", "domain": domain });
    if writeln!(s, "{req}").is_err() {
        return serde_json::Value::Null;
    }
    let mut line = String::new();
    let _ = std::io::BufReader::new(&s).read_line(&mut line);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    v.get("progress").cloned().unwrap_or_default()
}

/// Heartbeats seen on `con` until it exceeds `at_least` (the guest runs), returning the last.
fn heartbeat_beyond(con: &mut Console, at_least: u64) -> u64 {
    let mut last = 0;
    wait_until(BOOT, "the heartbeat grows", || {
        last = con.heartbeat();
        last > at_least
    });
    last
}

/// Asserts that the heartbeat went on from `before` (taken at `since`): it
/// did not reset, and grew no more than the 100 ms ticks of wall time since.
fn assert_continues(before: u64, after: u64, since: std::time::Instant) {
    let ticks = since.elapsed().as_millis() as u64 / 100 + 20;
    assert!(
        after >= before && after <= before + ticks,
        "heartbeat {before} before, {after} after (reset, or jumped beyond {ticks} ticks)"
    );
}

/// Two hosts: A (source) and B (target, relocation server allowing A).
struct Pair {
    // Fields drop in order: hosts (and their VMMs) before the network.
    a: Host,
    b: Host,
    net: NetPair,
    key: String,
    _keys: tempfile::TempDir,
}

impl Pair {
    /// `rxl migrate --key KEY NAME B` on A; asserts it succeeded (with both
    /// hosts' logs otherwise) and returns what it printed.
    fn migrate_a_to_b(&self, name: &str) -> String {
        let out = self
            .a
            .rxl(&["migrate", "--key", &self.key, name, self.net.addr_b]);
        migrated(&out, &self.a, &self.b)
    }
}

fn pair() -> Pair {
    let net = NetPair::new();
    let keys = tempfile::tempdir().expect("tmp");
    let key = key_file(
        keys.path(),
        "relocation.key",
        "a shared secret of enough length",
    );
    let allow = format!("\"^{}$\"", net.addr_a.replace('.', "\\\\."));
    let a = Host::start_in(&net.a, &relocation_config(net.addr_a, &allow, &key));
    let b = Host::start_in(&net.b, &relocation_config(net.addr_b, &allow, &key));
    wait_until(BOOT, "B's relocation server listens", || {
        b.rxend_log().contains("relocation server listening")
    });
    Pair {
        a,
        b,
        net,
        key,
        _keys: keys,
    }
}

#[test]
fn save_restore_twice_keeps_the_heartbeat_and_a_flipped_byte_is_refused() {
    let host = Host::start();
    let mut con = host.create_guest("saved1", 2, 12, "");
    con.memfill(42);
    let sum = con.memsum();
    let before = heartbeat_beyond(&mut con, 3);
    let since = std::time::Instant::now();
    let file = host.dir.path().join("saved1.save");
    let f = file.to_str().expect("utf-8");
    let out = host.rxl(&["save", "saved1", f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Saved domain saved1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        host.list_row("saved1").is_none(),
        "the saved domain still runs"
    );
    let size = std::fs::metadata(&file).expect("save file").len();
    assert!(size < 12 << 20, "a 12 MiB guest saved into {size} bytes");
    drop(con);

    for round in 0..2 {
        host.rxl_ok(&["restore", f]);
        let mut con = host.console("saved1");
        let after = con.heartbeat();
        assert_continues(before, after, since);
        assert_eq!(con.memsum(), sum, "restore {round}: memory differs");
        heartbeat_beyond(&mut con, after);
        host.rxl_ok(&["destroy", "saved1"]);
        wait_until(BOOT, "saved1 is gone", || host.list_row("saved1").is_none());
    }

    let mut bytes = std::fs::read(&file).expect("read");
    let at = bytes.len() / 3;
    bytes[at] ^= 0x04;
    let bad = host.dir.path().join("bad.save");
    std::fs::write(&bad, &bytes).expect("write");
    let out = host.rxl(&["restore", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "a corrupted save file was restored");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt"), "unclear error: {err}");
    assert!(
        host.list_row("saved1").is_none(),
        "a domain runs from a corrupt file"
    );

    // A file of another stream format version (its header's checksum right):
    // refused, saying which version it is and which this rxen reads.
    let mut bytes = std::fs::read(&file).expect("read");
    let other = rxen_proto::stream::Header {
        version: rxen_proto::stream::VERSION + 1,
        ..rxen_proto::stream::Header::new(false)
    };
    let header = other.encode();
    bytes[..header.len()].copy_from_slice(&header);
    std::fs::write(&bad, &bytes).expect("write");
    let out = host.rxl(&["restore", bad.to_str().expect("utf-8")]);
    assert!(
        !out.status.success(),
        "a save file of another version was restored"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "stream version {} is not supported (this rxen reads version {})",
        rxen_proto::stream::VERSION + 1,
        rxen_proto::stream::VERSION
    );
    assert!(err.contains(&want), "unclear error: {err}");
    assert!(
        host.list_row("saved1").is_none(),
        "a domain runs from a file of another version"
    );

    let mut bytes = std::fs::read(&file).expect("read");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&bad, &bytes).expect("write");
    let out = host.rxl(&["restore", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "a truncated save file was restored");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn checkpoint_keeps_the_domain_running_and_restores_later() {
    let host = Host::start();
    let mut con = host.create_guest("ckpt1", 1, 12, "");
    con.memfill(9);
    let sum = con.memsum();
    let before = heartbeat_beyond(&mut con, 2);
    let file = host.dir.path().join("ckpt1.save");
    let f = file.to_str().expect("utf-8");
    host.rxl_ok(&["save", "-c", "ckpt1", f]);
    let row = host.list_row("ckpt1").expect("still listed");
    assert_ne!(row[4], "--p---", "a checkpoint left the domain paused");
    let running = heartbeat_beyond(&mut con, before);
    let since = std::time::Instant::now();
    // -p: saved and left paused.
    host.rxl_ok(&["save", "-p", "ckpt1", f]);
    assert_eq!(host.list_row("ckpt1").expect("listed")[4], "--p---");
    host.rxl_ok(&["destroy", "ckpt1"]);
    wait_until(BOOT, "ckpt1 is gone", || host.list_row("ckpt1").is_none());
    drop(con);
    host.rxl_ok(&["restore", f]);
    let mut con = host.console("ckpt1");
    let after = con.heartbeat();
    assert_continues(running, after, since);
    assert_eq!(con.memsum(), sum, "the checkpoint's memory differs");
    heartbeat_beyond(&mut con, after);
}

#[test]
fn live_migration_of_a_dirtying_guest_continues_on_the_target() {
    let p = pair();
    let mut con = p.a.create_guest("mig1", 2, 128, "");
    let before = heartbeat_beyond(&mut con, 3);
    let since = std::time::Instant::now();
    con.send("dirty 64");
    con.wait_for("dirtying 64 MiB/s", BOOT);
    // Meanwhile rxend reports the VMM's progress (what rxl's bar shows).
    let socket = p.a.socket();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let v = transfer_progress(&socket, "mig1");
                if !v.is_null() {
                    seen.push(v);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        })
    };
    let stdout = p.migrate_a_to_b("mig1");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = watcher.join().expect("watcher");
    assert!(
        !seen.is_empty(),
        "no progress reported during the migration"
    );
    assert!(
        seen.iter()
            .all(|v| v["ram_pages"] == 128 * 256 && v["round"].as_u64() >= Some(1)),
        "{seen:?}"
    );
    assert!(
        stdout.contains("rounds ") && stdout.contains("downtime"),
        "{stdout}"
    );
    // Without -v the summary is one line, as before the breakdown.
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(p.a.list_row("mig1").is_none(), "the source still has mig1");
    assert!(p.b.list_row("mig1").is_some(), "the target has no mig1");
    assert!(
        p.a.rxend_log().contains("migrated to 10.77.0.2:8002"),
        "{}",
        p.a.rxend_log()
    );
    let mut con = p.b.console("mig1");
    let after = con.heartbeat();
    assert_continues(before, after, since);
    heartbeat_beyond(&mut con, after);
    con.send("dirty 0");
    con.wait_for("dirty stopped", BOOT);
}

#[test]
fn memory_rewritten_during_a_live_migration_arrives_intact() {
    let p = pair();
    let mut con = p.a.create_guest("mig6", 2, 12, "");
    con.memfill(42);
    let expected = con.memsum();
    con.memfill(7);
    assert_ne!(con.memsum(), expected);
    // Rewrite all free memory with seed 42 while the migration copies it:
    // every page the guest writes after it was sent must be sent again.
    con.sync();
    con.send("memfill 42");
    // The echo shows the guest took the command (input still queued in the
    // VMM, not yet in the UART, does not move with the domain).
    con.wait_for("memfill 42", BOOT);
    // Typed while the guest is busy: more than the UART's 64-byte FIFO, so
    // the rest waits in the VMM's input queue, which must move too.
    let word = format!("typed-during-migration-{}", "q".repeat(80));
    con.send(&word);
    let stdout = p.migrate_a_to_b("mig6");
    let rounds: u32 = stdout
        .split("rounds ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no rounds in {stdout}"));
    assert!(rounds >= 2, "{stdout}");
    eprintln!("migration: {stdout}");
    let mut con = p.b.console("mig6");
    // The memfill finishes here (its line shows in the target's console replay).
    con.wait_for("memfill done", Duration::from_secs(300));
    con.wait_for(&format!("unknown command: {word}"), BOOT);
    assert_eq!(con.memsum(), expected, "memory arrived damaged ({stdout})");
    heartbeat_beyond(&mut con, 1);
}

/// How far a migration's phases may overlap, measured as they are on two
/// processes' monotonic clocks: the target's restore starts when it has read
/// the stream's last byte, which can be a moment before the source's last
/// write call returns (the end of the source's "last round on the wire");
/// 3 ms covers the source thread descheduled there on a loaded host. A save's
/// phases are measured on one thread and need no slack.
const CROSS_HOST_SLACK_US: u64 = 3_000;

/// The downtime in rxl's figures line (`downtime 12.3 ms`), in microseconds.
fn downtime_us(text: &str) -> u64 {
    let ms: f64 = text
        .split("downtime ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no downtime in {text}"));
    (ms * 1000.0) as u64
}

/// The `-v` breakdown in `text`: the phases (`  LABEL  N us`) in order, the
/// remainder rxl reports as not broken down, and its downtime row.
fn breakdown(text: &str) -> (Vec<(String, u64)>, u64, u64) {
    let mut lines = text
        .lines()
        .skip_while(|l| *l != "stop-and-copy, in microseconds:")
        .skip(1)
        .map_while(|l| l.strip_prefix("  "));
    let mut phases = Vec::new();
    let (mut rest, mut downtime) = (None, None);
    for l in lines.by_ref() {
        let (label, value) = l
            .split_once("  ")
            .unwrap_or_else(|| panic!("odd breakdown line {l:?} in {text}"));
        let us: u64 = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number in {l:?} in {text}"));
        match label {
            "not broken down" => rest = Some(us),
            "downtime" => downtime = Some(us),
            _ => phases.push((label.to_string(), us)),
        }
    }
    (
        phases,
        rest.unwrap_or_else(|| panic!("no remainder in {text}")),
        downtime.unwrap_or_else(|| panic!("no downtime row in {text}")),
    )
}

/// Checks a breakdown: exactly the `expected` phases in order, those in
/// `timed` above zero (each takes system calls or thread hand-offs, so a real
/// measure is never 0 us), their sum within the downtime plus `slack_us`, and
/// rxl's own rows consistent with the figures line.
fn check_breakdown(text: &str, expected: &[&str], timed: &[&str], slack_us: u64) {
    let (phases, rest, downtime) = breakdown(text);
    let labels: Vec<&str> = phases.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, expected, "{text}");
    for (label, us) in &phases {
        if timed.contains(&label.as_str()) {
            assert!(*us > 0, "{label} took 0 us: not measured? {text}");
        }
    }
    // The figures line rounds the downtime to 0.1 ms.
    assert!(downtime.abs_diff(downtime_us(text)) <= 51, "{text}");
    let sum: u64 = phases.iter().map(|(_, us)| us).sum();
    assert!(
        sum <= downtime + slack_us,
        "the phases add up to {sum} us, more than the downtime {downtime} us (+{slack_us}): {text}"
    );
    assert_eq!(rest, downtime.saturating_sub(sum), "{text}");
    let bytes: u64 = text
        .split("last round on the wire")
        .nth(1)
        .and_then(|r| r.split(" (").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no last-round bytes in {text}"));
    let total: u64 = text
        .split(" bytes sent")
        .next()
        .and_then(|r| r.rsplit(' ').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no bytes sent in {text}"));
    // The state records alone are more than a few bytes.
    assert!(bytes > 64 && bytes <= total, "{bytes} of {total}: {text}");
}

#[test]
fn migrate_and_save_with_v_break_the_downtime_down() {
    let p = pair();
    let mut con = p.a.create_guest("mig7", 2, 64, "");
    let before = heartbeat_beyond(&mut con, 2);
    con.send("dirty 16");
    con.wait_for("dirtying 16 MiB/s", BOOT);
    let out =
        p.a.rxl(&["migrate", "-v", "--key", &p.key, "mig7", p.net.addr_b]);
    let stdout = migrated(&out, &p.a, &p.b);
    eprintln!("migration: {stdout}");
    check_breakdown(
        &stdout,
        &[
            "vCPU pause",
            "device freeze",
            "dirty-log sync",
            "state capture",
            "last round on the wire",
            "target restore",
            "target resume",
        ],
        &[
            "vCPU pause",
            "dirty-log sync",
            "state capture",
            "last round on the wire",
            "target restore",
            "target resume",
        ],
        CROSS_HOST_SLACK_US,
    );
    let log = p.a.rxend_log();
    let line = log
        .lines()
        .find(|l| l.contains("(mig7) migrated to"))
        .unwrap_or_else(|| panic!("no migration line in {log}"));
    assert!(
        line.contains("vCPU pause ")
            && line.contains("target resume ")
            && line.contains("not broken down"),
        "{line}"
    );
    let mut con = p.b.console("mig7");
    heartbeat_beyond(&mut con, before);
    con.send("dirty 0");
    con.wait_for("dirty stopped", BOOT);
    drop(con);

    // A save (on B): its own phases, within its downtime exactly (one clock).
    let file = p.b.dir.path().join("mig7.save");
    let out =
        p.b.rxl(&["save", "-v", "mig7", file.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    eprintln!("save: {stderr}");
    check_breakdown(
        &stderr,
        &[
            "vCPU pause",
            "device freeze",
            "page list",
            "state capture",
            "last round on the wire",
            "file sync",
        ],
        // The file sync may take under a microsecond on tmpfs.
        &["vCPU pause", "state capture", "last round on the wire"],
        0,
    );
    assert!(
        p.b.rxend_log()
            .lines()
            .any(|l| l.contains("(mig7) saved to") && l.contains("file sync ")),
        "{}",
        p.b.rxend_log()
    );
}

#[test]
fn non_live_and_ssh_transport_migrations() {
    let p = pair();
    let mut con = p.a.create_guest("mig2", 1, 12, "");
    con.memfill(5);
    let sum = con.memsum();
    let before = heartbeat_beyond(&mut con, 2);
    let since = std::time::Instant::now();
    p.a.rxl_ok(&[
        "migrate",
        "--non-live",
        "--key",
        &p.key,
        "mig2",
        p.net.addr_b,
    ]);
    let mut con = p.b.console("mig2");
    let mid = con.heartbeat();
    assert_continues(before, mid, since);
    let since = std::time::Instant::now();
    // Back over the ssh transport, as xl does it; `-s ''` runs HOST as the
    // command, here `rxl migrate-receive` against host A's rxend.
    let receiver = format!(
        "ip netns exec {} env RXEN_SOCKET={} {} migrate-receive",
        p.net.a,
        p.a.socket().display(),
        rxen_e2e::bin("rxl").display()
    );
    p.b.rxl_ok(&["migrate", "-s", "", "mig2", &receiver]);
    assert!(p.b.list_row("mig2").is_none());
    let mut con = p.a.console("mig2");
    let after = con.heartbeat();
    assert_continues(mid, after, since);
    assert_eq!(con.memsum(), sum);
    heartbeat_beyond(&mut con, after);
}

#[test]
fn killing_the_target_mid_migration_leaves_the_source_running() {
    let p = pair();
    let mut con = p.a.create_guest("mig3", 2, 256, "");
    let before = heartbeat_beyond(&mut con, 2);
    con.send("dirty 256");
    con.wait_for("dirtying 256 MiB/s", BOOT);
    // Kill the receiving VMM as soon as it exists.
    let killer = rxen_e2e::kill_first_vmm_of(&p.b);
    let out = p.a.rxl(&[
        "migrate",
        "--key",
        &p.key,
        "--downtime-ms",
        "1",
        "mig3",
        p.net.addr_b,
    ]);
    assert!(killer.join().expect("killer"), "no receiving VMM appeared");
    assert!(
        !out.status.success(),
        "the migration succeeded though the target was killed"
    );
    let row = p.a.list_row("mig3").expect("the source lost its domain");
    assert!(row[4] == "-b----" || row[4] == "r-----", "{row:?}");
    heartbeat_beyond(&mut con, before);
    con.send("dirty 0");
    assert!(p.b.list_row("mig3").is_none());
}

#[test]
fn a_wrong_key_or_a_host_outside_hosts_allow_is_refused() {
    let p = pair();
    let mut con = p.a.create_guest("mig4", 1, 64, "");
    let before = heartbeat_beyond(&mut con, 1);
    let wrong = key_file(p.a.dir.path(), "wrong.key", "not the shared secret at all");
    let out = p.a.rxl(&["migrate", "--key", &wrong, "mig4", p.net.addr_b]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    // rxend logs the refusal after answering, so the line may come a moment later.
    wait_until(BOOT, "B logs that it refused A", || {
        p.b.rxend_log().contains("refused 10.77.0.1")
    });

    // B only allows A; A's server allows only A too, so B is refused by A.
    let mut other = p.b.create_guest("mig5", 1, 64, "");
    heartbeat_beyond(&mut other, 1);
    let out = p.b.rxl(&["migrate", "--key", &p.key, "mig5", p.net.addr_a]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not allowed"), "{err}");
    wait_until(BOOT, "A logs that B is not in hosts-allow", || {
        p.a.rxend_log().contains("not allowed by hosts-allow")
    });

    // Both domains still run where they were.
    heartbeat_beyond(&mut con, before);
    assert!(p.b.list_row("mig4").is_none() && p.a.list_row("mig5").is_none());
}

fn in_ns(ns: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("run in netns")
}

/// Bursts of disk writes and datagrams the guest runs during the disk+NIC migration.
const BURSTS: u64 = 8;
/// Sectors of each burst's block.
const BURST_SECTORS: u64 = 16;
/// The UDP port of burst 0's datagrams (burst i: this + i).
const DGRAM_PORT: u16 = 41000;
/// Datagrams in one burst: `udpsend ADDR PORT 1` sends 1 MiB in 1400-byte payloads.
const DATAGRAMS_PER_BURST: u16 = 749;

/// Where burst `i` writes its block on xvda.
fn burst_sector(i: u64) -> u64 {
    2048 + i * BURST_SECTORS
}

/// The pattern seed of burst `i`'s block.
fn burst_seed(i: u64) -> u32 {
    100 + i as u32
}

/// What a [`HostTap`] saw: the datagrams as (port, IPv4 identification), and the RARP frames.
type Seen = (Vec<(u16, u16)>, usize);

/// What a host (a network namespace) received from the guest while it watched: every
/// datagram from 10.78.0.2 to the bursts' ports as (port, IPv4 identification), seen by a
/// raw IP socket (one copy per datagram the host's stack takes in), and the RARP frames
/// from the guest's MAC (the target's announcement).
struct HostTap {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Datagrams and RARP frames recorded so far.
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Seen>>,
}

impl HostTap {
    /// Starts watching in namespace `ns` for frames from `mac`; returns once both sockets are open.
    fn start(ns: &str, mac: [u8; 6]) -> HostTap {
        use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
        use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
        let path = format!("/run/netns/{ns}");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let halt = std::sync::Arc::clone(&stop);
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&count);
        let (ready, opened) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("the namespace file");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let udp = socket::socket(
                AddressFamily::Inet,
                SockType::Raw,
                SockFlag::empty(),
                SockProtocol::Udp,
            )
            .expect("raw UDP socket");
            const ETH_P_RARP: u16 = 0x8035;
            // SAFETY: socket(2) with constant arguments; its descriptor is owned just below.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    i32::from(ETH_P_RARP.to_be()),
                )
            };
            assert!(
                raw >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `raw` is a fresh descriptor that nothing else owns.
            let rarp = unsafe { OwnedFd::from_raw_fd(raw) };
            let _ = socket::setsockopt(&udp, socket::sockopt::RcvBufForce, &(8 << 20));
            ready.send(()).expect("ready");
            let (mut datagrams, mut rarps) = (Vec::new(), 0);
            let mut buf = [0u8; 2048];
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                let mut fds = [
                    nix::poll::PollFd::new(udp.as_fd(), nix::poll::PollFlags::POLLIN),
                    nix::poll::PollFd::new(rarp.as_fd(), nix::poll::PollFlags::POLLIN),
                ];
                if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16)).unwrap_or(0) <= 0
                {
                    continue;
                }
                let ready: Vec<bool> = fds
                    .iter()
                    .map(|f| {
                        f.revents()
                            .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLIN))
                    })
                    .collect();
                if ready[0] {
                    if let Ok(n) = socket::recv(udp.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                        let ip = &buf[..n];
                        let ihl = usize::from(ip.first().copied().unwrap_or(0) & 0xf) * 4;
                        if ip.len() >= ihl + 4 && ihl >= 20 && ip[12..16] == [10, 78, 0, 2] {
                            let id = u16::from_be_bytes([ip[4], ip[5]]);
                            let port = u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]);
                            if (DGRAM_PORT..DGRAM_PORT + BURSTS as u16).contains(&port) {
                                datagrams.push((port, id));
                                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                }
                if ready[1] {
                    if let Ok(n) = socket::recv(rarp.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
                    {
                        if n >= 14 && buf[6..12] == mac {
                            rarps += 1;
                            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }
            (datagrams, rarps)
        });
        opened
            .recv_timeout(Duration::from_secs(10))
            .expect("the tap did not open its sockets");
        HostTap {
            stop,
            count,
            thread: Some(thread),
        }
    }

    /// Stops watching once nothing more has come for half a second (at most 10 s);
    /// returns the datagrams and the count of RARP frames seen.
    fn finish(mut self) -> Seen {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut last = usize::MAX;
        while std::time::Instant::now() < deadline {
            let now = self.count.load(std::sync::atomic::Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
            std::thread::sleep(Duration::from_millis(500));
        }
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("tap thread"))
            .unwrap_or_default()
    }
}

impl Drop for HostTap {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A bridge `xbr` with 10.78.0.1/24 in namespace `ns`, as each host's xenbr0. Every such
/// bridge has the same MAC, so that 10.78.0.1 is one gateway as the guest sees it, reached
/// from either host: the guest's ARP entry for it stays right when the guest moves.
fn bridge_in(ns: &str) {
    for args in [
        &["ip", "link", "add", "xbr", "type", "bridge"][..],
        &["ip", "link", "set", "xbr", "address", "02:00:0a:4e:00:01"],
        &["ip", "addr", "add", "10.78.0.1/24", "dev", "xbr"],
        &["ip", "link", "set", "xbr", "up"],
    ] {
        let out = in_ns(ns, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
}

/// Whether the guest gets answers to `ping 10.78.0.1` (its host's bridge).
fn guest_pings_its_host(con: &mut Console) -> bool {
    con.sync();
    con.send("ping 10.78.0.1 3");
    let line = con.wait_for("ping 10.78.0.1: ", BOOT);
    !line.contains(": 0/")
}

#[test]
fn a_domain_with_a_disk_and_a_nic_migrates_and_keeps_using_both() {
    let p = pair();
    bridge_in(&p.net.a);
    bridge_in(&p.net.b);
    // Both "hosts" see the same image, as with shared storage.
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .expect("image");
    let mac = "00:16:3e:4d:49:47";
    let mut con = p.a.create_guest(
        "migdev",
        1,
        16,
        &format!(
            "disk = [ 'file:{},xvda,w' ]\nvif = [ 'bridge=xbr,mac={mac}' ]",
            img.display()
        ),
    );
    con.sync();
    con.send("ip 10.78.0.2/24");
    con.wait_for("ip 10.78.0.2/24 on nic", BOOT);
    con.send("blkwrite xvda 100 16 7");
    con.wait_for("blkwrite ok", BOOT);
    assert!(guest_pings_its_host(&mut con), "no network on A");
    // A disk hot-plugged on A takes slot 2 (after the NIC); B, built from
    // the stored config, puts it back there.
    let img2 = dir.path().join("hot.img");
    std::fs::File::create(&img2)
        .and_then(|f| f.set_len(2 << 20))
        .expect("image");
    p.a.rxl_ok(&[
        "block-attach",
        "migdev",
        &format!("file:{},xvdb,w", img2.display()),
    ]);
    con.wait_for("xvdb attached", BOOT);
    con.send("blkwrite xvdb 8 4 42");
    con.wait_for("blkwrite ok", BOOT);
    // The balloon holds 4 MiB when the domain moves.
    p.a.rxl_ok(&["mem-set", "migdev", "12"]);
    wait_until(BOOT, "the guest inflates its balloon", || {
        con.ballooned_pages() == 4 * 256
    });
    let before = heartbeat_beyond(&mut con, 2);
    let since = std::time::Instant::now();

    // During the migration the guest writes numbered blocks to xvda and sends numbered
    // datagrams to its host (burst i to UDP port DGRAM_PORT + i, each datagram's IPv4
    // identification its number in the burst): commands typed at once, which the guest
    // runs one after the other, on A and then on B. Both hosts' bridges are watched.
    let mac_bytes = [0x00, 0x16, 0x3e, 0x4d, 0x49, 0x47];
    let taps = [
        HostTap::start(&p.net.a, mac_bytes),
        HostTap::start(&p.net.b, mac_bytes),
    ];
    let acked_before = con.output().matches("blkwrite ok").count();
    let done = format!("burstsdone{}", std::process::id());
    let mut typed = String::new();
    for i in 0..BURSTS {
        typed.push_str(&format!(
            "blkwrite xvda {} {BURST_SECTORS} {}\nudpsend 10.78.0.1 {} 1\n",
            burst_sector(i),
            burst_seed(i),
            DGRAM_PORT + i as u16
        ));
    }
    typed.push_str(&format!("{done}\n"));
    con.type_text(&typed);
    // The migration starts once the first block is acknowledged: the rest is in flight.
    con.wait_for("blkwrite ok", BOOT);
    p.migrate_a_to_b("migdev");
    assert!(p.a.list_row("migdev").is_none(), "still on A");
    // B's bridge knows the guest's MAC on its port (announced by the target; see the RARP
    // count below).
    let fdb =
        String::from_utf8_lossy(&in_ns(&p.net.b, &["bridge", "fdb", "show", "br", "xbr"]).stdout)
            .into_owned();
    assert!(fdb.contains(mac), "B's bridge did not learn {mac}: {fdb}");
    let on_a = con.output();
    let acked_on_a = on_a.matches("blkwrite ok").count() - acked_before;
    let mut con = p.b.console("migdev");
    // Answered once every burst is done (the queued input moved with the domain).
    con.wait_for(
        &format!("unknown command: {done}"),
        Duration::from_secs(300),
    );
    let on_b = con.output();
    for out in [&on_a, &on_b] {
        assert!(
            !out.contains("blkwrite error") && !out.contains("udpsend error"),
            "a burst failed:\nA:\n{on_a}\nB:\n{on_b}"
        );
    }
    let sent_on_a = on_a.matches("udpsend done").count();
    // Every block acknowledged (on A before the pause, or on B) is on the target's disk,
    // as the guest reads it there and in the shared image.
    let image = std::fs::read(&img).expect("read image");
    for i in 0..BURSTS {
        con.assert_blkread("xvda", burst_sector(i), BURST_SECTORS, burst_seed(i));
        let at = burst_sector(i) as usize * 512;
        let len = BURST_SECTORS as usize * 512;
        assert!(
            image.get(at..at + len) == Some(&blk_pattern(burst_seed(i), len)[..]),
            "block {i} is not in the image"
        );
    }
    let after = con.heartbeat();
    assert_continues(before, after, since);
    // Nothing reached the hosts twice: no (port, number) seen twice on A, on B or across them.
    let [tap_a, tap_b] = taps;
    let ((got_a, _), (got_b, rarps_b)) = (tap_a.finish(), tap_b.finish());
    // The target announced the guest's MAC into B's network (a RARP from that MAC).
    assert!(rarps_b >= 1, "no RARP announcement from {mac} on B");
    let mut seen = std::collections::BTreeMap::new();
    for d in got_a.iter().chain(&got_b) {
        *seen.entry(*d).or_insert(0u32) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "datagrams sent twice ((port, number), times): {twice:?}"
    );
    assert!(
        seen.keys()
            .all(|(port, id)| *port < DGRAM_PORT + BURSTS as u16 && *id < DATAGRAMS_PER_BURST),
        "datagrams the guest never sent: {seen:?}"
    );
    eprintln!(
        "disk+nic migration: {acked_on_a} of {BURSTS} blocks acknowledged on A before the pause, \
         {sent_on_a} of {BURSTS} bursts done on A; datagrams received: {} on A, {} on B, \
         {} of {} distinct, none twice",
        got_a.len(),
        got_b.len(),
        seen.len(),
        BURSTS as u16 * DATAGRAMS_PER_BURST
    );
    assert!(acked_on_a >= 1, "no block was acknowledged on A");
    // The NIC works on B: every burst that started there reached B's host.
    for i in sent_on_a as u64 + 1..BURSTS {
        let port = DGRAM_PORT + i as u16;
        assert!(
            got_b.iter().any(|(p, _)| *p == port),
            "nothing of burst {i} (port {port}) reached B"
        );
    }

    // The disk: what was written on A reads back on B, and B's writes land.
    con.assert_blkread("xvda", 100, 16, 7);
    con.assert_blkread("xvdb", 8, 4, 42);
    con.blkwrite_flushed("xvda", 200, 8, 9);
    let data = std::fs::read(&img).expect("read image");
    assert_eq!(&data[200 * 512..208 * 512], &blk_pattern(9, 8 * 512)[..]);
    // The NIC: its queues went on where they were, on B's bridge.
    assert!(guest_pings_its_host(&mut con), "no network on B");
    // The balloon came along: B knows the target, and the guest gives the
    // pages back when asked there.
    assert_eq!(p.b.list_row("migdev").expect("listed on B")[2], "12");
    assert_eq!(con.ballooned_pages(), 4 * 256);
    p.b.rxl_ok(&["mem-set", "migdev", "16"]);
    wait_until(BOOT, "the guest deflates its balloon on B", || {
        con.ballooned_pages() == 0
    });
}

#[test]
fn a_domain_with_a_disk_saves_and_restores_with_its_queues() {
    let host = Host::start();
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .expect("image");
    let mut con = host.create_guest(
        "savedev",
        1,
        16,
        &format!("disk = [ 'file:{},xvda,w' ]", img.display()),
    );
    con.sync();
    con.send("blkwrite xvda 40 8 3");
    con.wait_for("blkwrite ok", BOOT);
    let file = dir.path().join("savedev.save");
    let f = file.to_str().expect("utf-8");
    host.rxl_ok(&["save", "savedev", f]);
    assert!(host.list_row("savedev").is_none());
    host.rxl_ok(&["restore", f]);
    let mut con = host.console("savedev");
    heartbeat_beyond(&mut con, 1);
    // The request ring goes on from where it was: reads and writes work.
    con.assert_blkread("xvda", 40, 8, 3);
    con.blkwrite_flushed("xvda", 60, 8, 4);
    let data = std::fs::read(&img).expect("read image");
    assert_eq!(&data[60 * 512..68 * 512], &blk_pattern(4, 8 * 512)[..]);
}

#[test]
fn a_failed_save_keeps_the_domain_running_and_every_file_untouched() {
    let host = Host::start();
    let mut con = host.create_guest("keep1", 1, 32, "");
    con.memfill(7);
    let sum = con.memsum();

    // A device as the target: refused, the device stays, the domain runs on.
    let out = host.rxl(&["save", "keep1", "/dev/full"]);
    assert!(!out.status.success(), "a save to /dev/full succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a regular file"), "unclear error: {err}");
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata("/dev/full").expect("/dev/full is still there");
    assert!(meta.file_type().is_char_device(), "/dev/full was replaced");
    assert!(host.list_row("keep1").is_some(), "the domain is gone");
    let beat = con.heartbeat();
    heartbeat_beyond(&mut con, beat);

    // A full filesystem: the checkpoint fails and the older, good save file stays as it was.
    let small = host.dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&small)
        .status()
        .expect("mount");
    assert!(mounted.success(), "cannot mount a small tmpfs");
    let old = small.join("keep1.save");
    std::fs::write(&old, b"an older, good save file").expect("write");
    let out = host.rxl(&["save", "-c", "keep1", old.to_str().expect("utf-8")]);
    let umount = || {
        let _ = Command::new("umount").arg(&small).status();
    };
    if out.status.success() {
        umount();
        panic!("a 32 MiB checkpoint fitted in 256 KiB");
    }
    let kept = std::fs::read(&old);
    let names: Vec<_> = std::fs::read_dir(&small)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    umount();
    assert_eq!(
        kept.expect("the old save file is gone"),
        b"an older, good save file"
    );
    assert_eq!(names.len(), 1, "files left behind: {names:?}");
    assert!(host.list_row("keep1").is_some(), "the domain is gone");
    assert_eq!(con.memsum(), sum, "the guest's memory changed");
    host.rxl_ok(&["destroy", "keep1"]);
}

#[test]
fn a_flood_of_relocation_connections_is_capped_and_rxend_lives() {
    let mut host = Host::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let key = host.dir.path().join("reloc.key");
    std::fs::write(&key, "k3y-for-the-flood-test-0123456789abcdef").expect("key");
    let cfg = host.dir.path().join("flood.toml");
    std::fs::write(
        &cfg,
        format!(
            "[relocation]\nserver = true\naddress = \"127.0.0.1\"\nport = {port}\nhosts-allow = [\"^127\\\\.0\\\\.0\\\\.1$\"]\nkey-file = \"{}\"\n",
            key.display()
        ),
    )
    .expect("config");
    host.kill_rxend();
    host.rxend_args = vec!["--config".into(), cfg.display().to_string()];
    host.start_rxend();
    wait_until(BOOT, "the relocation server listens", || {
        host.rxend_log().contains("relocation server listening")
    });
    let pid = host.rxend.as_ref().map(|c| c.id()).expect("rxend");
    let threads = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:"))
                    .and_then(|n| n.trim().parse::<u32>().ok())
            })
            .unwrap_or(0)
    };
    let before = threads();
    let conns: Vec<_> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(conns.len() >= 50, "only {} connections opened", conns.len());
    wait_until(BOOT, "rxend logs the refusals", || {
        host.rxend_log()
            .contains("relocation: refused a connection from 127.0.0.1")
    });
    let during = threads();
    assert!(
        during <= before + 4 + 1,
        "{during} threads for 100 connections from one peer (before: {before})"
    );
    assert!(
        host.rxl(&["list"]).status.success(),
        "rxend stopped answering"
    );
    let refusals = host
        .rxend_log()
        .matches("refused a connection from")
        .count();
    assert!(refusals <= 2, "{refusals} refusal lines for one flood");
    drop(conns);
    assert!(host.rxl(&["list"]).status.success(), "rxend died");
}
