//! HA in a pool: three rxend hosts, each in a network namespace of its own linked to a fourth
//! that runs etcd. A host killed (rxend and VMMs, SIGKILL) has its `ha = 1` domain restarted
//! on another host by the pool's leader (a new boot) and its other domain reported lost; a host
//! cut off from etcd stops its `ha = 1` domain before the pool starts it elsewhere (never two
//! at once, by the VMM processes and the guests' heartbeats) and does not take it back when
//! the link returns; a host whose rxend alone dies has its `ha = 1` domain's VMM stop itself
//! (its fence deadline) before the domain runs elsewhere; a clean restart of the leader's
//! rxend hands leadership over without moving its domains, and etcd restarted loses nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rxen_e2e::etcd::TestEtcd;
use rxen_e2e::{ip, pids_with, unique, wait_until, Host};

/// The hosts' lease, seconds: fencing comes 2 s before it runs out (`fence.rs`).
const TTL: u64 = 6;

/// Boots, registrations: generous, never a sleep.
const SLOW: Duration = Duration::from_secs(40);

/// The tests of this file each run four namespaces, an etcd and three rxends: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// etcd's namespace with a bridge (10.78.0.1), and one namespace per host with a veth on it.
struct Net {
    etcd_ns: String,
    hosts: Vec<String>,
    /// Each host's end of its link (in the host's namespace).
    links: Vec<String>,
}

impl Net {
    fn new(n: usize) -> Net {
        let tag = unique();
        let etcd_ns = format!("rxe{tag}");
        let bridge = format!("br{tag}");
        ip(&["netns", "add", &etcd_ns]);
        ip(&["-n", &etcd_ns, "link", "set", "lo", "up"]);
        ip(&["-n", &etcd_ns, "link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "-n",
            &etcd_ns,
            "addr",
            "add",
            "10.78.0.1/24",
            "dev",
            &bridge,
        ]);
        ip(&["-n", &etcd_ns, "link", "set", &bridge, "up"]);
        let mut net = Net {
            etcd_ns,
            hosts: Vec::new(),
            links: Vec::new(),
        };
        for i in 0..n {
            let ns = format!("rxh{tag}{i}");
            let (outer, inner) = (format!("vo{tag}{i}"), format!("vi{tag}{i}"));
            ip(&["netns", "add", &ns]);
            net.hosts.push(ns.clone());
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip(&["link", "set", &outer, "netns", &net.etcd_ns]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["-n", &net.etcd_ns, "link", "set", &outer, "master", &bridge]);
            ip(&["-n", &net.etcd_ns, "link", "set", &outer, "up"]);
            let addr = format!("10.78.0.{}/24", 10 + i);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            net.links.push(inner);
        }
        net
    }

    /// Takes host `i`'s link down (`false`) or up again.
    fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.hosts[i], "link", "set", &self.links[i], state]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.etcd_ns]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A pool of three hosts (h1, h2, h3) on a fresh etcd, each with a relocation server on its
/// own address and one shared key (the leader creates restarted domains on the host placement
/// chooses, through that host's relocation server).
struct Pool {
    // Dropped in this order: the hosts, then etcd, then the namespaces.
    hosts: Vec<Host>,
    etcd: TestEtcd,
    net: Net,
    _keys: tempfile::TempDir,
}

const NAMES: [&str; 3] = ["h1", "h2", "h3"];

impl Pool {
    fn new() -> Pool {
        let net = Net::new(3);
        let etcd = TestEtcd::start_in(&net.etcd_ns, "10.78.0.1");
        let pool = format!("p{}", unique());
        let keys = tempfile::tempdir().expect("tmp");
        let key = keys.path().join("relocation.key");
        std::fs::write(&key, "a shared secret of enough length\n").expect("key");
        let hosts = NAMES
            .iter()
            .zip(&net.hosts)
            .enumerate()
            .map(|(i, (name, ns))| {
                let addr = format!("10.78.0.{}", 10 + i);
                Host::start_in(
                    ns,
                    &format!(
                        "[pool]\nendpoints = [\"{}\"]\nname = \"{pool}\"\nhost = \"{name}\"\n\
                         ttl = {TTL}\nrelocation-address = \"{addr}:8002\"\n\
                         [relocation]\nserver = true\naddress = \"{addr}\"\nport = 8002\n\
                         hosts-allow = [\"^10\\\\.78\\\\.0\\\\.\"]\nkey-file = \"{}\"\n",
                        etcd.endpoint(),
                        key.display()
                    ),
                )
            })
            .collect();
        let p = Pool {
            hosts,
            etcd,
            net,
            _keys: keys,
        };
        wait_until(SLOW, "three hosts up and a leader", || {
            let (hosts, leader) = host_list(&p.hosts[0]);
            hosts.len() == 3 && hosts.values().all(|s| s == "up") && leader.is_some()
        });
        p
    }

    fn index(name: &str) -> usize {
        NAMES
            .iter()
            .position(|n| *n == name)
            .expect("a host of the pool")
    }
}

/// `rxl host-list` on `h`: host → state, and the leader.
fn host_list(h: &Host) -> (BTreeMap<String, String>, Option<String>) {
    let out = h.rxl(&["host-list"]);
    if !out.status.success() {
        return (BTreeMap::new(), None);
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut hosts = BTreeMap::new();
    let mut leader = None;
    for l in text.lines().skip(1) {
        if let Some(who) = l.strip_prefix("Leader: ") {
            leader = (who != "none").then(|| who.to_string());
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 7, "{text}");
        hosts.insert(f[0].to_string(), f[1].to_string());
    }
    (hosts, leader)
}

/// `rxl list --pool` on `h`: name → (state, host).
fn pool_list(h: &Host) -> BTreeMap<String, (String, String)> {
    let out = h.rxl(&["list", "--pool"]);
    if !out.status.success() {
        return BTreeMap::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|f| f.len() == 7)
        .map(|f| (f[0].clone(), (f[4].clone(), f[6].clone())))
        .collect()
}

/// The VMM processes of host `h`.
fn vmms(h: &Host) -> Vec<i32> {
    pids_with(&["rxen-vmm", &h.dir.path().to_string_lossy()])
}

/// Whether `h`'s own `rxl list` has domain `name`.
fn runs_on(h: &Host, name: &str) -> bool {
    h.list_row(name).is_some()
}

/// A guest's heartbeats, asked for every 200 ms over `rxl console` for as long as it answers:
/// (when the answer came, the count: 100 ms ticks of the guest's running time).
struct Heartbeats {
    child: Child,
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Heartbeats {
    fn start(h: &Host, name: &str) -> Heartbeats {
        let mut child = h
            .rxl_command()
            .args(["console", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("rxl console");
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let out = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&samples);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let n = line
                    .trim()
                    .strip_prefix("heartbeat ")
                    .and_then(|n| n.trim().parse::<u64>().ok());
                if let Some(n) = n {
                    sink.lock().expect("samples").push((Instant::now(), n));
                }
            }
        });
        let mut stdin = child.stdin.take().expect("stdin");
        let halt = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                if stdin.write_all(b"heartbeat\n").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Heartbeats {
            child,
            samples,
            stop,
        }
    }

    fn samples(&self) -> Vec<(Instant, u64)> {
        self.samples.lock().expect("samples").clone()
    }

    /// Waits for a heartbeat newer than `after`; the count.
    fn next_after(&self, after: Instant) -> u64 {
        self.sample_after(after).1
    }

    /// Waits for a heartbeat newer than `after`: when it came, and the count.
    fn sample_after(&self, after: Instant) -> (Instant, u64) {
        let mut got = None;
        wait_until(SLOW, "a heartbeat", || {
            got = self.samples().into_iter().find(|(t, _)| *t > after);
            got.is_some()
        });
        got.unwrap_or((after, 0))
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates domain `name` on `h` (`ha = 1` when `ha`) and waits until it booted and the pool
/// shows it running there.
fn create(p: &Pool, i: usize, name: &str, ha: bool) {
    create_with(p, i, name, if ha { "ha = 1" } else { "" });
}

/// Creates domain `name` on host `i` with `extra` config lines; waits until the pool shows it.
fn create_with(p: &Pool, i: usize, name: &str, extra: &str) {
    let con = p.hosts[i].create_guest(name, 1, 16, extra);
    drop(con);
    wait_until(SLOW, "the pool shows the domain running", || {
        pool_list(&p.hosts[(i + 1) % 3]).get(name) == Some(&("r-----".into(), NAMES[i].into()))
    });
}

/// The number of VMMs of each host, checked: never more than one in all (each test's pool
/// runs one domain when this is used).
fn sample(p: &Pool) -> Vec<usize> {
    let s: Vec<usize> = p.hosts.iter().map(|h| vmms(h).len()).collect();
    assert!(s.iter().sum::<usize>() <= 1, "two copies at once: {s:?}");
    s
}

/// Samples every host's VMMs until the domain of host `from` runs on another host, never two
/// at once; that host, and when `from`'s VMM was first seen gone.
fn watch_move(p: &Pool, from: usize) -> (usize, Instant) {
    let start = Instant::now();
    let mut old_gone = None;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(TTL + 15),
            "the ha domain did not start elsewhere: {}",
            p.hosts[from].rxend_log()
        );
        let s = sample(p);
        if s[from] == 0 && old_gone.is_none() {
            old_gone = Some(Instant::now());
        }
        if let Some(i) = (0..s.len()).find(|i| *i != from && s[*i] == 1) {
            return (i, old_gone.expect("the old VMM went first"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// By the guests' own heartbeats: the old copy's last beat came before the new copy (on host
/// `new_host`) had run for as long as it says it has. The new copy's probe and first count.
fn beats_do_not_overlap(
    p: &Pool,
    new_host: usize,
    name: &str,
    old: Heartbeats,
    old_gone: Instant,
) -> (Heartbeats, u64) {
    let new = Heartbeats::start(&p.hosts[new_host], name);
    let (at, n) = new.sample_after(Instant::now());
    // It had run n ticks of 100 ms when it answered: it started no later than that.
    let new_started_by = at.checked_sub(Duration::from_millis(n * 100)).unwrap_or(at);
    let old_last = old.samples().last().map(|(t, _)| *t).expect("old beats");
    assert!(
        old_last <= new_started_by,
        "the old copy beat {:?} after the new one had started",
        old_last - new_started_by
    );
    assert!(old_last <= old_gone + Duration::from_millis(500));
    (new, n)
}

#[test]
fn a_dead_host_s_ha_domain_restarts_elsewhere_and_its_other_domain_is_lost() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut p = Pool::new();
    let tag = unique();
    let (ha, plain, other) = (
        format!("ha-{tag}"),
        format!("plain-{tag}"),
        format!("other-{tag}"),
    );
    create(&p, 2, &ha, true);
    create(&p, 2, &plain, false);
    create(&p, 0, &other, false);
    // An ha domain pinned (pool_host) to a survivor that does not lead: its restart is a
    // creation on another host than the leader, through that host's relocation server.
    let leader_before = host_list(&p.hosts[0]).1.expect("a leader");
    let pin = if leader_before == "h1" { "h2" } else { "h1" };
    let pinned = format!("pinned-{tag}");
    create_with(&p, 2, &pinned, &format!("ha = 1\npool_host = \"{pin}\""));

    // h3 dies: rxend and its VMMs, SIGKILL.
    let victim = Pool::index("h3");
    p.hosts[victim].kill_rxend();
    for pid in vmms(&p.hosts[victim]) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let killed = Instant::now();
    wait_until(SLOW, "h3's VMMs are gone", || {
        vmms(&p.hosts[victim]).is_empty()
    });

    // Within the TTL and a few seconds its ha domain runs on a surviving host.
    let mut new_host = None;
    wait_until(
        Duration::from_secs(TTL + 12),
        "the ha domain runs on another host",
        || {
            new_host = pool_list(&p.hosts[0])
                .get(&ha)
                .filter(|(state, host)| state == "r-----" && host != "h3")
                .map(|(_, host)| host.clone());
            new_host.is_some()
        },
    );
    let restarted_after = killed.elapsed();
    wait_until(
        Duration::from_secs(TTL + 12),
        "the pinned ha domain runs on its pool_host",
        || pool_list(&p.hosts[0]).get(&pinned) == Some(&("r-----".into(), pin.into())),
    );
    assert!(runs_on(&p.hosts[Pool::index(pin)], &pinned));
    let leader_now = host_list(&p.hosts[0]).1.expect("a leader");
    eprintln!("leader {leader_before} before h3 died, {leader_now} after; pinned domain restarted on {pin}");
    if leader_now != pin {
        let log = p.hosts[Pool::index(&leader_now)].rxend_log();
        assert!(
            log.contains(&format!("restarting ha domain {pinned} on host {pin}")),
            "{log}"
        );
    }
    let new_host = new_host.unwrap_or_default();
    let target = &p.hosts[Pool::index(&new_host)];
    assert!(runs_on(target, &ha), "{}", target.rxend_log());
    // A new boot from its configuration, not a continuation: its running time is younger
    // than the time since h3 died.
    let beats = Heartbeats::start(target, &ha);
    let asked = Instant::now();
    let n = beats.next_after(asked);
    assert!(
        n <= (killed.elapsed().as_millis() / 100) as u64,
        "heartbeat {n} {:?} after the kill: not a new boot",
        killed.elapsed()
    );
    let later = beats.next_after(Instant::now());
    assert!(later > n, "the restarted guest runs: {n} then {later}");
    drop(beats);
    // The others are reported lost, on their host; the surviving hosts' domains are not.
    let pool = pool_list(&p.hosts[1]);
    assert_eq!(
        pool.get(&plain),
        Some(&("lost".to_string(), "h3".to_string())),
        "{pool:?}"
    );
    assert_eq!(pool.get(&other).map(|(s, _)| s.as_str()), Some("r-----"));
    let leader = host_list(&p.hosts[0]).1.expect("a leader");
    let leader_log = p.hosts[Pool::index(&leader)].rxend_log();
    assert!(
        leader_log.contains(&format!("domain {plain} of host h3 is lost")),
        "{leader_log}"
    );
    eprintln!("ha domain running on {new_host} {restarted_after:?} after h3 was killed");
    // Restarted exactly once, however many leaders looked.
    let restarts: usize = p
        .hosts
        .iter()
        .map(|h| {
            h.rxend_log()
                .matches(&format!("ha domain {ha} restarted on host"))
                .count()
        })
        .sum();
    assert_eq!(restarts, 1);
}

#[test]
fn a_host_cut_off_from_etcd_stops_its_ha_domain_before_it_runs_elsewhere() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let p = Pool::new();
    let name = format!("ha-{}", unique());
    let cut = Pool::index("h3");
    create(&p, cut, &name, true);
    let old = Heartbeats::start(&p.hosts[cut], &name);
    old.next_after(Instant::now());

    // Every host's VMMs are sampled all along: never two at once.
    p.net.link(cut, false);
    let (new_host, old_gone) = watch_move(&p, cut);
    assert!(
        p.hosts[cut]
            .rxend_log()
            .contains(&format!("fencing: destroying ha domain {name}")),
        "{}",
        p.hosts[cut].rxend_log()
    );
    let (new, n) = beats_do_not_overlap(&p, new_host, &name, old, old_gone);

    // The link comes back: h3 registers again and leaves the domain where the pool put it.
    p.net.link(cut, true);
    wait_until(SLOW, "h3 is up again", || {
        let s = sample(&p);
        assert_eq!(s[new_host], 1);
        host_list(&p.hosts[cut]).0.get("h3").map(String::as_str) == Some("up")
    });
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_secs(TTL) {
        let s = sample(&p);
        assert_eq!(s[cut], 0, "h3 started it again");
        assert!(!runs_on(&p.hosts[cut], &name));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        pool_list(&p.hosts[cut]).get(&name).map(|(_, h)| h.clone()),
        Some(NAMES[new_host].to_string())
    );
    let later = new.next_after(Instant::now());
    assert!(later > n);
}

#[test]
fn a_clean_restart_of_the_leader_hands_leadership_over_and_etcd_restarts_lose_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut p = Pool::new();
    let leader = host_list(&p.hosts[0]).1.expect("a leader");
    let li = Pool::index(&leader);
    let name = format!("ha-{}", unique());
    create(&p, li, &name, true);
    let beats = Heartbeats::start(&p.hosts[li], &name);
    let before = beats.next_after(Instant::now());

    // SIGTERM: rxend stops tidily, gives leadership up; its domain runs on.
    let pid = p.hosts[li].rxend.as_ref().expect("rxend").id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    if let Some(mut c) = p.hosts[li].rxend.take() {
        let _ = c.wait();
    }
    assert!(p.hosts[li]
        .rxend_log()
        .contains("gave the pool's leadership up"));
    // Started again at once (its domain's VMM stops itself when no renewal comes for a few
    // seconds): it renews the same lease, so nothing moves.
    let stopped = Instant::now();
    p.hosts[li].start_rxend();
    let viewer = (li + 1) % 3;
    let mut next = None;
    // Another host leads well before the stopped host's lease could have run out.
    wait_until(Duration::from_secs(TTL), "another host leads", || {
        next = host_list(&p.hosts[viewer]).1.filter(|l| *l != leader);
        next.is_some()
    });
    assert!(stopped.elapsed() < Duration::from_secs(TTL));
    wait_until(SLOW, "the restarted host is up", || {
        host_list(&p.hosts[viewer])
            .0
            .get(&leader)
            .map(String::as_str)
            == Some("up")
    });
    // It kept its lease: its domain was never moved, and runs on (the same boot).
    let after = beats.next_after(Instant::now());
    assert!(after > before, "{before} then {after}");
    assert_eq!(
        pool_list(&p.hosts[viewer]).get(&name),
        Some(&("r-----".to_string(), leader.clone()))
    );
    for h in &p.hosts {
        assert!(!h
            .rxend_log()
            .contains(&format!("restarting ha domain {name}")));
    }
    assert_eq!(host_list(&p.hosts[li]).1, next);

    // etcd restarted: the hosts reconnect and nothing is lost.
    p.etcd.restart();
    // (An outage longer than the fencing margin would stop the domain, and its host would
    // start it again once etcd is back: never two, and never lost.)
    wait_until(SLOW, "the pool is whole again", || {
        let (hosts, leader) = host_list(&p.hosts[viewer]);
        hosts.len() == 3
            && hosts.values().all(|s| s == "up")
            && leader.is_some()
            && pool_list(&p.hosts[viewer])
                .get(&name)
                .is_some_and(|(s, _)| s == "r-----")
            && sample(&p).iter().sum::<usize>() == 1
    });
    let lost = pool_list(&p.hosts[viewer]);
    assert!(lost.values().all(|(s, _)| s != "lost"), "{lost:?}");
}

#[test]
fn an_ha_domain_whose_rxend_died_stops_itself_before_it_runs_elsewhere() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut p = Pool::new();
    let name = format!("ha-{}", unique());
    let dead = Pool::index("h2");
    create(&p, dead, &name, true);
    let old = Heartbeats::start(&p.hosts[dead], &name);
    old.next_after(Instant::now());
    // rxend alone dies: its VMM runs on, and no renewal reaches it any more. It destroys its
    // domain itself before the lease runs out and the leader restarts it elsewhere.
    p.hosts[dead].kill_rxend();
    let (new_host, old_gone) = watch_move(&p, dead);
    let (new, n) = beats_do_not_overlap(&p, new_host, &name, old, old_gone);
    assert!(new.next_after(Instant::now()) > n);
    // Started again, rxend finds its domain gone and leaves it where the pool put it.
    p.hosts[dead].start_rxend();
    wait_until(SLOW, "h2 is up again", || {
        sample(&p);
        host_list(&p.hosts[0]).0.get("h2").map(String::as_str) == Some("up")
    });
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_secs(TTL) {
        assert_eq!(sample(&p)[dead], 0, "h2 started it again");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        pool_list(&p.hosts[dead]).get(&name),
        Some(&("r-----".to_string(), NAMES[new_host].to_string()))
    );
}
