//! Pool placement and evacuation: three rxend hosts on one test etcd, each with a relocation
//! server on loopback (its own port, the same key, hosts-allow 127.0.0.1). `rxl create --pool`
//! chooses by free memory, honours `pool_host` (and refuses it when impossible) and spreads an
//! anti-affinity group; `rxl host-evacuate` moves every domain of a host to the others with
//! their heartbeats going on, leaves the host empty and disabled, and reports a domain that
//! cannot move, which runs on.

use std::collections::BTreeMap;
use std::time::Duration;

use rxen_e2e::etcd::TestEtcd;
use rxen_e2e::{unique, wait_until, Console, Host};

/// The hosts' lease, seconds.
const TTL: u64 = 3;

/// Boots, migrations, the pool catching up: generous, never a sleep.
const SLOW: Duration = Duration::from_secs(60);

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Three hosts `h1`..`h3` in pool `pool`, each with a relocation server on 127.0.0.1.
struct Pool {
    _etcd: TestEtcd,
    keys: tempfile::TempDir,
    hosts: Vec<Host>,
}

impl Pool {
    fn start() -> Pool {
        Pool::start_with(None)
    }

    /// With `unreachable`'s relocation address in the pool a port nobody listens on (its
    /// server listens elsewhere): the pool shows it up, but nothing reaches it.
    fn start_with(unreachable: Option<&str>) -> Pool {
        let etcd = TestEtcd::start();
        let keys = tempfile::tempdir().expect("tmp");
        let key = keys.path().join("relocation.key");
        std::fs::write(&key, "a shared secret of enough length\n").expect("key");
        let pool = format!("p{}", unique());
        let hosts: Vec<Host> = ["h1", "h2", "h3"]
            .iter()
            .map(|name| {
                let port = free_port();
                let published = if unreachable == Some(*name) {
                    free_port()
                } else {
                    port
                };
                Host::start_configured(&format!(
                    "[pool]\nendpoints = [\"{}\"]\nname = \"{pool}\"\nhost = \"{name}\"\nttl = {TTL}\n\
                     relocation-address = \"127.0.0.1:{published}\"\n\
                     [relocation]\nserver = true\naddress = \"127.0.0.1\"\nport = {port}\n\
                     hosts-allow = [\"^127\\\\.0\\\\.0\\\\.1$\"]\nkey-file = \"{}\"\n",
                    etcd.endpoint(),
                    key.display()
                ))
            })
            .collect();
        for h in &hosts {
            wait_until(SLOW, "the relocation server listens", || {
                h.rxend_log().contains("relocation server listening")
            });
        }
        let p = Pool {
            _etcd: etcd,
            keys,
            hosts,
        };
        wait_until(SLOW, "three hosts up", || {
            let l = p.host_list(0);
            l.len() == 3 && l.values().all(|(s, _)| s == "up")
        });
        p
    }

    /// The relocation key file every host was started with.
    fn key(&self) -> std::path::PathBuf {
        self.keys.path().join("relocation.key")
    }

    fn h(&self, name: &str) -> &Host {
        let i = ["h1", "h2", "h3"]
            .iter()
            .position(|n| *n == name)
            .expect("h1..h3");
        &self.hosts[i]
    }

    /// `rxl host-list` on host `i`: name → (state, domains).
    fn host_list(&self, i: usize) -> BTreeMap<String, (String, u32)> {
        self.hosts[i]
            .rxl_ok(&["host-list"])
            .lines()
            .skip(1)
            // The last line names the pool's leader.
            .filter(|l| !l.starts_with("Leader:"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].to_string(),
                    (f[1].to_string(), f[6].parse().expect("Domains")),
                )
            })
            .collect()
    }

    /// The host each domain of the pool is on (`rxl list --pool`).
    fn where_is(&self) -> BTreeMap<String, String> {
        self.hosts[0]
            .rxl_ok(&["list", "--pool"])
            .lines()
            .skip(1)
            // The last line names the pool's leader.
            .filter(|l| !l.starts_with("Leader:"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].to_string(), f[6].to_string())
            })
            .collect()
    }
}

/// A test-guest config on `h`.
fn guest_cfg(h: &Host, name: &str, memory: u32, extra: &str) -> String {
    h.config(
        &format!("{name}.cfg"),
        &format!(
            "name = \"{name}\"\nkernel = \"builtin:testguest\"\nmemory = {memory}\nvcpus = 1\n{extra}\n"
        ),
    )
    .display()
    .to_string()
}

/// `rxl create --pool` on `h`; the host its stdout names, checked against that host's list.
fn create_pool(p: &Pool, h: &Host, name: &str, memory: u32, extra: &str) -> String {
    let cfg = guest_cfg(h, name, memory, extra);
    let out = h.rxl_ok(&["create", "--pool", &cfg]);
    let host = out
        .trim()
        .strip_prefix(&format!("Domain {name} created on host "))
        .unwrap_or_else(|| panic!("create --pool said {out:?}"))
        .to_string();
    assert!(
        p.h(&host).list_row(name).is_some(),
        "{name} is not in {host}'s rxl list"
    );
    host
}

/// Asserts that a guest's heartbeat goes beyond `before`.
fn assert_beats_past(con: &mut Console, before: u64) {
    wait_until(SLOW, "the heartbeat goes on", || con.heartbeat() > before);
}

#[test]
fn create_pool_places_by_free_memory_pool_host_and_anti_affinity() {
    let p = Pool::start();
    let t = unique();
    let n = |s: &str| format!("{s}-{t}");
    // Every host may give domains the same memory; preloading h1 with 64 MiB and h2 with
    // 32 MiB makes the order h3, h2, h1.
    let h1 = p.h("h1");
    let _a = h1.create_guest(&n("a"), 1, 64, "");
    let _b = p.h("h2").create_guest(&n("b"), 1, 32, "");

    // By free memory (h3 T, h2 T-32, h1 T-64): 16 to h3 (T-16), 24 to h3 (T-40), then h2.
    assert_eq!(create_pool(&p, h1, &n("p1"), 16, ""), "h3");
    assert_eq!(create_pool(&p, h1, &n("p2"), 24, ""), "h3");
    assert_eq!(create_pool(&p, h1, &n("p3"), 16, ""), "h2");

    // pool_host: the host with the least free memory, because the config says so.
    assert_eq!(create_pool(&p, h1, &n("q"), 16, "pool_host = \"h1\""), "h1");
    // Refused when that host is absent or disabled; nothing is created.
    let cfg = guest_cfg(h1, &n("nowhere"), 16, "pool_host = \"h9\"");
    let out = h1.rxl(&["create", "--pool", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("pool_host = \"h9\"") && err.contains("the pool has no such host"),
        "{err}"
    );
    h1.rxl_ok(&["host-disable", "h2"]);
    let cfg = guest_cfg(h1, &n("off"), 16, "pool_host = \"h2\"");
    let out = h1.rxl(&["create", "--pool", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("that host is disabled"), "{err}");
    h1.rxl_ok(&["host-enable", "h2"]);
    let placed = p.where_is();
    assert!(
        !placed.contains_key(&n("nowhere")) && !placed.contains_key(&n("off")),
        "{placed:?}"
    );

    // Anti-affinity (h1 T-80, h2 T-48, h3 T-40): w1 to the most free (h3, T-56), w2 to h2
    // (T-64), the most free without the group, w3 to h1 (T-96) although it has the least
    // free, as the only host without the group; w4, with every host holding one, goes where
    // it fits best (best-effort, not refused): h3.
    let web = "pool_anti_affinity = \"web\"";
    assert_eq!(create_pool(&p, h1, &n("w1"), 16, web), "h3");
    assert_eq!(create_pool(&p, h1, &n("w2"), 16, web), "h2");
    assert_eq!(create_pool(&p, h1, &n("w3"), 16, web), "h1");
    assert_eq!(create_pool(&p, h1, &n("w4"), 16, web), "h3");
    let placed = p.where_is();
    for (d, host) in [
        ("p1", "h3"),
        ("p2", "h3"),
        ("p3", "h2"),
        ("q", "h1"),
        ("w1", "h3"),
        ("w2", "h2"),
        ("w3", "h1"),
        ("w4", "h3"),
    ] {
        assert_eq!(
            placed.get(&n(d)).map(String::as_str),
            Some(host),
            "{placed:?}"
        );
    }

    // restore --pool, asked of h1: p2 (24 MiB) saved on h3 (h1 T-96, h2 T-64, h3 T-48)
    // comes back on h3, the host with the most free memory (the save file is where every
    // host sees it). w3, saved on h1, would come back on h1: its group is on h2 and h3.
    let h3 = p.h("h3");
    let file = h3.dir.path().join("p2.save");
    let file = file.to_str().expect("utf-8");
    h3.rxl_ok(&["save", &n("p2"), file]);
    wait_until(SLOW, "p2 leaves the pool", || {
        !p.where_is().contains_key(&n("p2"))
    });
    let out = h1.rxl_ok(&["restore", "--pool", file]);
    assert_eq!(
        out.trim(),
        format!("Domain {} restored on host h3", n("p2"))
    );
    assert!(h3.list_row(&n("p2")).is_some());
    assert!(h1.list_row(&n("p2")).is_none());

    // The relocation key guards placement as it guards migrations: with h1 holding another
    // key than h2's relocation server (which read it at start), the create that placement
    // sends to h2 is refused there, and nothing is created.
    std::fs::write(p.key(), "another secret, not the pool's one\n").expect("key");
    let cfg = guest_cfg(h1, &n("k"), 16, "");
    let out = h1.rxl(&["create", "--pool", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("host h2") && err.contains("authentication failed"),
        "{err}"
    );
    assert!(!p.where_is().contains_key(&n("k")));
    wait_until(SLOW, "h2 logs the refusal", || {
        p.h("h2")
            .rxend_log()
            .contains("relocation: refused 127.0.0.1")
    });
}

#[test]
fn host_evacuate_moves_every_domain_and_leaves_the_host_empty_and_disabled() {
    let p = Pool::start();
    let t = unique();
    let names: Vec<String> = (1..=3).map(|i| format!("e{i}-{t}")).collect();
    let h1 = p.h("h1");
    let mut before = BTreeMap::new();
    for name in &names {
        let mut con = h1.create_guest(name, 1, 16, "");
        before.insert(name.clone(), con.heartbeat());
    }
    // A domain on h2 stays where it is.
    let stay = format!("s-{t}");
    let _s = p.h("h2").create_guest(&stay, 1, 16, "");
    wait_until(SLOW, "the pool shows h1's three domains", || {
        p.host_list(1).get("h1").map(|(_, d)| *d) == Some(3)
    });

    // Asked of h2: h2 passes each step on to h1's rxend, which drives the migrations.
    let out = p.h("h2").rxl(&["host-evacuate", "h1"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "host-evacuate: {stdout}{}\nh1: {}",
        String::from_utf8_lossy(&out.stderr),
        h1.rxend_log()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for name in &names {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} moved to ")))
            .unwrap_or_else(|| panic!("no line for {name}: {stdout}"));
        let to = line.rsplit(' ').next().expect("host");
        assert!(to == "h2" || to == "h3", "{line}");
        let target = p.h(to);
        assert!(target.list_row(name).is_some(), "{name} is not on {to}");
        assert!(h1.list_row(name).is_none(), "{name} is still on h1");
        let mut con = target.console(name);
        assert_beats_past(&mut con, before[name]);
    }
    // h1 runs nothing, and the pool shows it disabled and empty.
    let own: Vec<String> = h1
        .rxl_ok(&["list"])
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("Domain-0"))
        .map(String::from)
        .collect();
    assert!(own.is_empty(), "{own:?}");
    wait_until(SLOW, "host-list shows h1 disabled with no domain", || {
        p.host_list(2).get("h1") == Some(&("disabled".to_string(), 0))
    });
    assert_eq!(
        p.where_is().get(&stay).map(String::as_str),
        Some("h2"),
        "the domain of another host moved"
    );
    // h1 has the most free memory now, but placement never picks it while it is disabled.
    for i in 0..2 {
        let host = create_pool(&p, h1, &format!("after{i}-{t}"), 16, "");
        assert_ne!(host, "h1");
    }

    // A domain that cannot move: h1 and h3 disabled, h2 evacuated: reported, exit status 1,
    // and it runs on on h2.
    p.h("h3").rxl_ok(&["host-disable", "h3"]);
    let mut con = p.h("h2").console(&stay);
    let beat = con.heartbeat();
    let out = p.h("h3").rxl(&["host-evacuate", "--parallel", "1", "h2"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{stay} could not move: ")))
        .unwrap_or_else(|| panic!("no line for {stay}: {stdout}"));
    assert!(line.contains("no host of the pool can take"), "{line}");
    assert!(stderr.contains("could not move off host h2"), "{stderr}");
    assert!(p.h("h2").list_row(&stay).is_some());
    assert_beats_past(&mut con, beat);
}

#[test]
fn an_evacuation_step_whose_migration_fails_tries_the_next_host() {
    // h2 has the most free memory, but its published relocation address leads nowhere: each
    // domain's migration to h2 fails, it runs on on h1, and goes to h3 instead.
    let p = Pool::start_with(Some("h2"));
    let t = unique();
    let h1 = p.h("h1");
    let _h3 = p.h("h3").create_guest(&format!("h3load-{t}"), 1, 32, "");
    let names: Vec<String> = (1..=2).map(|i| format!("r{i}-{t}")).collect();
    let mut before = BTreeMap::new();
    for name in &names {
        let mut con = h1.create_guest(name, 1, 16, "");
        before.insert(name.clone(), con.heartbeat());
    }
    let out = h1.rxl(&["host-evacuate", "--parallel", "1", "h1"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}\nh1: {}",
        String::from_utf8_lossy(&out.stderr),
        h1.rxend_log()
    );
    for name in &names {
        assert!(
            stdout.lines().any(|l| l == format!("{name} moved to h3")),
            "{stdout}"
        );
        let mut con = p.h("h3").console(name);
        assert_beats_past(&mut con, before[name]);
    }
    let log = h1.rxend_log();
    assert_eq!(
        log.matches("to host h2 failed").count(),
        2,
        "each domain tried h2 first: {log}"
    );
}
