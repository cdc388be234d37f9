//! Pools on etcd: three rxend hosts (own sockets and state directories) joined to one pool on a
//! test etcd of their own; `rxl host-list` and `rxl list --pool` from any host, names unique
//! across the pool, a host whose rxend dies shown down once its lease expires (its domain
//! reported lost, and running again when it comes back), and etcd
//! stopped and started again (also with its data lost) without losing anything.

use std::collections::BTreeMap;
use std::time::Duration;

use rxen_e2e::etcd::{TestEtcd, TlsFiles};
use rxen_e2e::{migrated, unique, wait_until, Console, Host, NetPair};

/// The hosts' lease, seconds: short, so that a dead host shows as down quickly.
const TTL: u64 = 3;

/// Boots, rxend restarts, etcd coming back: generous, never a sleep.
const SLOW: Duration = Duration::from_secs(30);

fn pool_config(etcd: &TestEtcd, pool: &str, host: &str) -> String {
    format!(
        "[pool]\nendpoints = [\"{}\"]\nname = \"{pool}\"\nhost = \"{host}\"\nttl = {TTL}\n",
        etcd.endpoint()
    )
}

/// `rxl host-list` on `h`, as host name → (state, domains), with the header and the leader
/// line checked.
fn host_list(h: &Host) -> BTreeMap<String, (String, u32)> {
    let out = h.rxl_ok(&["host-list"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        ["Name", "State", "MemFree", "MemTotal", "CPUs", "Load", "Domains"],
        "{out}"
    );
    // The last line names the leader.
    let leader = out.lines().last().unwrap_or("");
    assert!(leader.starts_with("Leader: "), "{out}");
    lines
        .filter(|l| !l.starts_with("Leader: "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 7, "{l}");
            let free: u64 = f[2].parse().expect("MemFree");
            let total: u64 = f[3].parse().expect("MemTotal");
            assert!(free <= total && total > 0, "{l}");
            (
                f[0].to_string(),
                (f[1].to_string(), f[6].parse().expect("Domains")),
            )
        })
        .collect()
}

/// `rxl list --pool` on `h`: each row's fields (name, id, mem, vcpus, state, time, host).
fn pool_list(h: &Host) -> Vec<Vec<String>> {
    let out = h.rxl_ok(&["list", "--pool"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)", "Host"],
        "{out}"
    );
    lines
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .inspect(|f| assert_eq!(f.len(), 7, "{f:?}"))
        .collect()
}

/// `rxl list` on `h` without Domain-0: (name, id, mem, vcpus).
fn own_list(h: &Host) -> Vec<[String; 4]> {
    h.rxl_ok(&["list"])
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|f| f[0] != "Domain-0")
        .map(|f| [f[0].clone(), f[1].clone(), f[2].clone(), f[3].clone()])
        .collect()
}

/// Every host's `rxl list` agrees with the pool's rows for that host (name, ID, memory, vCPUs).
fn assert_pool_agrees(hosts: &[(&str, &Host)], viewer: &Host) {
    let rows = pool_list(viewer);
    let mut total = 0;
    for (name, h) in hosts {
        let mut own = own_list(h);
        own.sort();
        let mut pooled: Vec<[String; 4]> = rows
            .iter()
            .filter(|r| r[6] == *name)
            .map(|r| [r[0].clone(), r[1].clone(), r[2].clone(), r[3].clone()])
            .collect();
        pooled.sort();
        assert_eq!(
            own, pooled,
            "host {name}: rxl list vs rxl list --pool {rows:?}"
        );
        total += own.len();
    }
    assert_eq!(rows.len(), total, "{rows:?}");
}

/// Whether every host shows the states and domain counts of `want`.
fn hosts_show(hosts: &[(&str, &Host)], want: &[(&str, &str, u32)]) -> bool {
    hosts.iter().all(|(_, h)| {
        let got = host_list(h);
        got.len() == want.len()
            && want
                .iter()
                .all(|(name, state, n)| got.get(*name).is_some_and(|(s, d)| s == state && d == n))
    })
}

/// Lines of `h`'s log that say etcd cannot be reached.
fn unreachable_lines(h: &Host) -> usize {
    h.rxend_log()
        .lines()
        .filter(|l| l.contains("domains keep running") || l.contains("still unreachable after"))
        .count()
}

/// CPU time `h`'s rxend has used, seconds (user and system, from /proc).
fn rxend_cpu_seconds(h: &Host) -> f64 {
    let pid = h.rxend.as_ref().expect("rxend runs").id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("rxend's stat");
    // The fields after the command (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').expect("stat").1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// Asserts that a guest's heartbeat still grows (its domain runs on).
fn assert_runs(con: &mut Console) {
    let first = con.heartbeat();
    wait_until(SLOW, "the heartbeat grows", || con.heartbeat() > first);
}

#[test]
fn three_hosts_share_one_view_and_ride_out_etcd_and_host_failures() {
    let mut etcd = TestEtcd::start();
    let pool = format!("p{}", unique());
    let names = ["h1", "h2", "h3"];
    let mut hs: Vec<Host> = names
        .iter()
        .map(|n| Host::start_configured(&pool_config(&etcd, &pool, n)))
        .collect();
    let tag = unique();
    let guests: Vec<String> = names.iter().map(|n| format!("g{n}-{tag}")).collect();
    let mut cons: Vec<Console> = hs
        .iter()
        .zip(&guests)
        .map(|(h, g)| h.create_guest(g, 1, 16, ""))
        .collect();
    {
        let hosts: Vec<(&str, &Host)> = names.iter().copied().zip(hs.iter()).collect();
        let all_up = [("h1", "up", 1), ("h2", "up", 1), ("h3", "up", 1)];
        wait_until(
            SLOW,
            "every host lists three hosts up, one domain each",
            || hosts_show(&hosts, &all_up),
        );
        for (_, viewer) in &hosts {
            assert_pool_agrees(&hosts, viewer);
        }

        // A name another host holds is refused, with that host named; nothing changes.
        let cfg = hs[1].config(
            "taken.cfg",
            &format!(
                "name = \"{}\"\nkernel = \"builtin:testguest\"\nmemory = 16\nvcpus = 1\n",
                guests[0]
            ),
        );
        let out = hs[1].rxl(&["create", cfg.to_str().expect("utf-8")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "created a name h1 holds: {err}");
        assert!(
            err.contains(&format!(
                "\"{}\" is already in use in pool {pool}, on host h1",
                guests[0]
            )),
            "{err}"
        );
        assert_pool_agrees(&hosts, &hs[2]);
        // So is renaming a domain to it; renamed to a free name, the pool follows.
        let out = hs[1].rxl(&["rename", &guests[1], &guests[0]]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("on host h1"), "{err}");
        let renamed = format!("renamed-{tag}");
        hs[1].rxl_ok(&["rename", &guests[1], &renamed]);
        wait_until(SLOW, "the pool shows the new name", || {
            let rows = pool_list(&hs[0]);
            rows.iter().any(|r| r[0] == renamed && r[6] == "h2")
                && rows.iter().all(|r| r[0] != guests[1])
        });
        assert_pool_agrees(&hosts, &hs[0]);

        // A domain that ends leaves the pool; its name is free again.
        hs[2].rxl_ok(&["destroy", &guests[2]]);
        wait_until(SLOW, "h3's domain leaves the pool", || {
            pool_list(&hs[0]).iter().all(|r| r[0] != guests[2])
        });
        assert!(hosts_show(
            &hosts,
            &[("h1", "up", 1), ("h2", "up", 1), ("h3", "up", 0)]
        ));
        cons[2] = hs[2].create_guest(&guests[2], 1, 16, "");
        wait_until(SLOW, "h3's new domain is in the pool", || {
            hosts_show(&hosts, &all_up)
        });
        assert_pool_agrees(&hosts, &hs[0]);

        // Disabled from another host, and enabled again.
        hs[0].rxl_ok(&["host-disable", "h2"]);
        assert_eq!(host_list(&hs[2])["h2"].0, "disabled");
        let out = hs[0].rxl(&["host-disable", "nosuchhost"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("has no host named nosuchhost"));
        hs[2].rxl_ok(&["host-enable", "h2"]);
        assert_eq!(host_list(&hs[0])["h2"].0, "up");

        // etcd goes away: the domains run on, rxl list still answers, creating is refused
        // (the name cannot be checked), and each host says so once, not at every retry.
        let before: Vec<usize> = hs.iter().map(unreachable_lines).collect();
        let cpu_before: Vec<f64> = hs.iter().map(rxend_cpu_seconds).collect();
        let cpu_since = std::time::Instant::now();
        etcd.stop();
        for h in &hs {
            wait_until(SLOW, "rxend notices etcd is gone", || {
                h.rxend_log().contains("domains keep running")
            });
        }
        let fresh = hs[0].config(
            "fresh.cfg",
            &format!(
                "name = \"fresh-{tag}\"\nkernel = \"builtin:testguest\"\nmemory = 16\nvcpus = 1\n"
            ),
        );
        let out = hs[0].rxl(&["create", fresh.to_str().expect("utf-8")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("cannot check that domain name"),
            "{err}"
        );
        assert_eq!(own_list(&hs[0]).len(), 1);
        let out = hs[0].rxl(&["host-list"]);
        assert!(!out.status.success());
        // Several renewal intervals (a third of the TTL each) with etcd down.
        let outage = std::time::Instant::now();
        for con in cons.iter_mut() {
            assert_runs(con);
        }
        while outage.elapsed() < Duration::from_secs(TTL * 2) {
            std::thread::sleep(Duration::from_millis(200));
        }
        // Retrying is not a busy loop: rxend stays far below a quarter of a CPU (a thread that
        // retried at once would take all the CPU it is given).
        let wall = cpu_since.elapsed().as_secs_f64();
        for (h, b) in hs.iter().zip(&cpu_before) {
            let used = rxend_cpu_seconds(h) - b;
            assert!(
                used < wall / 4.0,
                "rxend used {used:.2} s of CPU in {wall:.1} s of outage"
            );
        }
        // One line when etcd went, and one a minute after that, whatever the retries.
        let allowed = 1 + outage.elapsed().as_secs() as usize / 60;
        for (h, b) in hs.iter().zip(&before) {
            assert_eq!(own_list(h).len(), 1);
            let lines = unreachable_lines(h) - b;
            assert!(
                (1..=allowed).contains(&lines),
                "{lines} lines: {}",
                h.rxend_log()
            );
        }
        etcd.restart();
        wait_until(SLOW, "the hosts are back in etcd", || {
            hosts_show(&hosts, &all_up)
        });
        assert_pool_agrees(&hosts, &hs[1]);

        // etcd comes back empty (its data lost): the hosts register anew and write their
        // domains again.
        etcd.stop();
        etcd.wipe();
        etcd.restart();
        wait_until(SLOW, "the hosts registered again in an empty etcd", || {
            hosts_show(&hosts, &all_up)
        });
        for (_, viewer) in &hosts {
            assert_pool_agrees(&hosts, viewer);
        }
        for h in &hs {
            assert!(h.rxend_log().contains("registered"), "{}", h.rxend_log());
        }
    }

    // h3's rxend dies (SIGKILL): its lease expires, and the others show it down, with its
    // domain still recorded there (its VMM runs on without rxend).
    hs[2].kill_rxend();
    let killed = std::time::Instant::now();
    {
        let others: Vec<(&str, &Host)> = names[..2].iter().copied().zip(hs.iter()).collect();
        wait_until(
            Duration::from_secs(TTL + 5),
            "h3 is shown down once its lease expired",
            || {
                hosts_show(
                    &others,
                    &[
                        ("h1", "up", 1),
                        ("h2", "up", 1),
                        ("h3", "down-lease-expired", 1),
                    ],
                )
            },
        );
        // Not before the lease could have run out.
        assert!(killed.elapsed() >= Duration::from_secs(TTL - 1));
        assert!(pool_list(&hs[0])
            .iter()
            .any(|r| r[0] == guests[2] && r[6] == "h3"));
        // Not `ha = 1`: the pool's leader reports it lost, on its host.
        wait_until(SLOW, "h3's domain is reported lost", || {
            pool_list(&hs[1])
                .iter()
                .any(|r| r[0] == guests[2] && r[4] == "lost" && r[6] == "h3")
        });
    }
    assert_runs(&mut cons[2]);
    // Back up: it registers again and adopts its domain, running again in the pool's eyes.
    hs[2].start_rxend();
    let hosts: Vec<(&str, &Host)> = names.iter().copied().zip(hs.iter()).collect();
    wait_until(SLOW, "h3 is up again", || {
        hosts_show(&hosts, &[("h1", "up", 1), ("h2", "up", 1), ("h3", "up", 1)])
    });
    wait_until(SLOW, "h3's domain is running again in the pool", || {
        pool_list(&hs[0])
            .iter()
            .any(|r| r[0] == guests[2] && r[4] == "r-----" && r[6] == "h3")
    });
    assert_pool_agrees(&hosts, &hs[2]);
    for con in cons.iter_mut() {
        assert_runs(con);
    }
}

#[test]
fn a_migrated_domain_moves_to_its_new_host_in_the_pool() {
    // Two hosts in network namespaces joined by a link; etcd runs in A's, on A's address.
    let net = NetPair::new();
    let etcd = TestEtcd::start_in(&net.a, net.addr_a);
    let keys = tempfile::tempdir().expect("tmp");
    let key = keys.path().join("relocation.key");
    std::fs::write(&key, "a shared secret of enough length\n").expect("key");
    let key = key.display().to_string();
    let allow = format!("\"^{}$\"", net.addr_a.replace('.', "\\\\."));
    let pool = format!("p{}", unique());
    let config = |addr: &str, host: &str| {
        format!(
            "{}relocation-address = \"{addr}:8002\"\n[relocation]\nserver = true\naddress = \"{addr}\"\n\
             port = 8002\nhosts-allow = [{allow}]\nkey-file = \"{key}\"\n",
            pool_config(&etcd, &pool, host)
        )
    };
    let a = Host::start_in(&net.a, &config(net.addr_a, "a"));
    let b = Host::start_in(&net.b, &config(net.addr_b, "b"));
    wait_until(SLOW, "B's relocation server listens", || {
        b.rxend_log().contains("relocation server listening")
    });
    let hosts = [("a", &a), ("b", &b)];
    let name = format!("pm-{}", unique());
    let mut con = a.create_guest(&name, 1, 16, "");
    wait_until(SLOW, "the domain is in the pool on A", || {
        hosts_show(&hosts, &[("a", "up", 1), ("b", "up", 0)])
    });
    assert_pool_agrees(&hosts, &b);
    let before = con.heartbeat();
    drop(con);

    let out = a.rxl(&["migrate", "--key", &key, &name, net.addr_b]);
    migrated(&out, &a, &b);
    // The key passes to B; A, whose domain ended by leaving, does not take it back or
    // delete it.
    wait_until(SLOW, "the pool shows the domain on B", || {
        hosts_show(&hosts, &[("a", "up", 0), ("b", "up", 1)])
    });
    let settled = std::time::Instant::now();
    while settled.elapsed() < Duration::from_secs(TTL * 2) {
        assert_pool_agrees(&hosts, &a);
        assert!(hosts_show(&hosts, &[("a", "up", 0), ("b", "up", 1)]));
        std::thread::sleep(Duration::from_millis(300));
    }
    let row = pool_list(&a);
    assert_eq!(row.len(), 1);
    assert_eq!(
        (row[0][0].as_str(), row[0][6].as_str()),
        (name.as_str(), "b")
    );
    let mut con = b.console(&name);
    wait_until(SLOW, "the heartbeat goes on on B", || {
        con.heartbeat() > before
    });
    drop(con);
}

#[test]
fn hosts_log_in_to_an_etcd_with_authentication() {
    let etcd = TestEtcd::start();
    etcd.enable_auth("the root password");
    let pool = format!("p{}", unique());
    let dir = tempfile::tempdir().expect("tmp");
    let with_password = |host: &str, password: &str| {
        let file = dir.path().join(format!("{host}.password"));
        std::fs::write(&file, format!("{password}\n")).expect("password file");
        format!(
            "{}user = \"root\"\npassword-file = \"{}\"\n",
            pool_config(&etcd, &pool, host),
            file.display()
        )
    };
    let good = Host::start_configured(&with_password("good", "the root password"));
    let bad = Host::start_configured(&with_password("bad", "not the password"));
    let anonymous = Host::start_configured(&pool_config(&etcd, &pool, "anonymous"));
    wait_until(SLOW, "the host with the password registers", || {
        hosts_show(&[("good", &good)], &[("good", "up", 0)])
    });
    for (h, why) in [
        (&bad, "authentication failed"),
        (&anonymous, "user name is empty"),
    ] {
        wait_until(SLOW, "the refusal is in the log", || {
            h.rxend_log().contains(why)
        });
        let out = h.rxl(&["host-list"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{err}");
    }
    // Only the host that logged in is in the pool.
    assert_eq!(host_list(&good).len(), 1);
}

#[test]
fn hosts_reach_etcd_over_tls_with_client_certificates() {
    let dir = tempfile::tempdir().expect("tmp");
    let tls = TlsFiles::make(dir.path());
    let etcd = TestEtcd::start_tls(&tls);
    let pool = format!("p{}", unique());
    let base = |host: &str| pool_config(&etcd, &pool, host);
    let good = Host::start_configured(&format!(
        "{}ca-file = \"{}\"\ncert-file = \"{}\"\nkey-file = \"{}\"\n",
        base("good"),
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    ));
    // Trusts etcd but has no client certificate; and one that does not trust etcd's CA.
    let no_cert = Host::start_configured(&format!(
        "{}ca-file = \"{}\"\n",
        base("nocert"),
        tls.ca.display()
    ));
    let no_ca = Host::start_configured(&base("noca"));
    wait_until(SLOW, "the host with a client certificate registers", || {
        hosts_show(&[("good", &good)], &[("good", "up", 0)])
    });
    for h in [&no_cert, &no_ca] {
        wait_until(SLOW, "the refusal is in the log", || {
            h.rxend_log().contains("domains keep running")
        });
        let out = h.rxl(&["host-list"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("etcd unreachable"),
            "{err}"
        );
    }
    assert!(
        no_ca.rxend_log().to_lowercase().contains("certificate"),
        "{}",
        no_ca.rxend_log()
    );
    assert_eq!(host_list(&good).len(), 1);
}

#[test]
fn an_endpoint_that_is_down_is_passed_over() {
    // As with a three-member etcd one of whose members is down: the first endpoint refuses
    // connections, the second answers.
    let etcd = TestEtcd::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let pool = format!("p{}", unique());
    let config = pool_config(&etcd, &pool, "h").replace(
        "endpoints = [",
        &format!("endpoints = [\"http://127.0.0.1:{dead_port}\", "),
    );
    assert!(
        config.contains(&format!("127.0.0.1:{dead_port}\", \"http")),
        "{config}"
    );
    let h = Host::start_configured(&config);
    wait_until(
        SLOW,
        "the host registers through the second endpoint",
        || hosts_show(&[("h", &h)], &[("h", "up", 0)]),
    );
    assert!(
        !h.rxend_log().contains("domains keep running"),
        "{}",
        h.rxend_log()
    );
}

#[test]
fn a_host_in_no_pool_says_so() {
    let h = Host::start();
    for args in [
        &["host-list"][..],
        &["list", "--pool"],
        &["host-disable", "x"],
    ] {
        let out = h.rxl(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("this host is in no pool"), "{args:?}: {err}");
    }
    // Plain list stays xl's.
    assert!(h.rxl_ok(&["list"]).starts_with(
        "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
    ));
}

#[test]
fn a_pool_that_cannot_be_read_is_refused_at_start() {
    // A bad [pool] section stops rxend with the reason, before it serves anyone.
    let h = Host::start();
    let out = std::process::Command::new(rxen_e2e::bin("rxend"))
        .arg("--config")
        .arg(h.config(
            "bad.toml",
            "[pool]\nendpoints = [\"127.0.0.1:2379\"]\nname = \"p\"\n",
        ))
        .arg("--socket")
        .arg(h.dir.path().join("other.sock"))
        .arg("--state-dir")
        .arg(h.dir.path().join("other-state"))
        .arg("--no-cgroups")
        .output()
        .expect("run rxend");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not an http:// or https:// URL"), "{err}");
}
