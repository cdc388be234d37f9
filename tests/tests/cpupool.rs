//! CPU pools on real guests with the host's real cgroup cpusets: a pool made from CPU 1
//! confines every thread of its domains' VMMs there (read back from
//! /proc/PID/task/*/status), `cpupool-migrate` moves a running domain's threads, a pool with
//! domains cannot be destroyed, `vcpu-pin` stays within the pool, pools and confinement
//! survive an rxend restart, a save/restore and a migration (a target without the pool
//! refuses it), and xl's `cpupool-list` layout.
//! Each test's rxend has pools of its own: tests running in parallel never see them.

use std::fs;
use std::time::Duration;

use rxen_e2e::{wait_until, Host};

/// Every thread's `Cpus_allowed_list` of process `pid`, one entry per thread.
fn allowed(pid: i32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter_map(|t| {
            let status = fs::read_to_string(t.path().join("status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .collect()
}

/// Waits until every thread of `pid` (at least two: the VMM has several) may run on `cpus` only.
fn wait_confined(pid: i32, cpus: &str) {
    wait_until(
        Duration::from_secs(10),
        &format!("every thread of VMM {pid} confined to CPUs {cpus}"),
        || {
            let a = allowed(pid);
            a.len() >= 2 && a.iter().all(|c| c == cpus)
        },
    );
}

fn domid(host: &Host, name: &str) -> u32 {
    host.rxl_ok(&["domid", name])
        .trim()
        .parse()
        .expect("numeric domid")
}

fn need_two_cpus() {
    let online = fs::read_to_string("/sys/devices/system/cpu/online").expect("online CPUs");
    assert!(
        online.trim() != "0",
        "these tests need two host CPUs (a pool with CPU 1, Pool-0 with CPU 0); the host has {online}"
    );
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_pool_confines_its_domains_threads_and_they_follow_migrate_and_restart() {
    need_two_cpus();
    let mut h = Host::start();
    assert_eq!(
        h.rxl_ok(&["cpupool-list"]),
        "Name               CPUs   Sched     Active   Domain count\n\
         Pool-0               2    credit       y          1\n"
    );
    let pool_file = h.config(
        "web.pool",
        "name = \"web\"\nsched = \"credit\"\ncpus = [\"1\"]\n",
    );
    let out = h.rxl_ok(&["cpupool-create", pool_file.to_str().expect("utf-8")]);
    assert!(
        out.contains("cpupool name:   web\nscheduler:      credit\nnumber of cpus: 1\n"),
        "{out}"
    );
    assert_eq!(
        h.rxl_ok(&["cpupool-list", "-c"]),
        "Name               CPU list\nPool-0             0\nweb                1\n"
    );

    let _con = h.create_guest("pooled", 2, 32, "pool = \"web\"");
    let id = domid(&h, "pooled");
    let pid = h.vmm_pid(id);
    wait_confined(pid, "1");
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert!(
        cg.lines()
            .any(|l| l.contains("cpuset") && l.ends_with(&format!("/dom{id}"))),
        "the VMM is in its domain's cpuset: {cg}"
    );
    assert_eq!(
        h.rxl_ok(&["cpupool-list", "web"]),
        "Name               CPUs   Sched     Active   Domain count\n\
         web                  1    credit       y          1\n"
    );

    // sched-credit lists each pool with its domains.
    let web = h.rxl_ok(&["sched-credit", "-p", "web"]);
    assert!(
        web.starts_with("Cpupool web: tslice=")
            && web.lines().count() == 3
            && web.contains("pooled"),
        "{web}"
    );
    let all = h.rxl_ok(&["sched-credit"]);
    let (pool0, rest) = all.split_once("Cpupool web:").expect("web's section");
    assert!(
        pool0.starts_with("Cpupool Pool-0:") && pool0.contains("Domain-0"),
        "{all}"
    );
    assert!(
        !pool0.contains("pooled") && rest.contains("pooled"),
        "{all}"
    );

    // A pool with domains stays.
    let out = h.rxl(&["cpupool-destroy", "web"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Can't destroy cpupool 'web'"),
        "{}",
        stderr(&out)
    );
    assert!(h
        .rxl_ok(&["cpupool-list", "-c"])
        .contains("web                1\n"));
    // Hard affinity stays within the pool.
    let out = h.rxl(&["vcpu-pin", "pooled", "0", "0"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("outside cpupool 'web'"),
        "{}",
        stderr(&out)
    );
    // `all` is the pool's CPUs.
    h.rxl_ok(&["vcpu-pin", "pooled", "all", "all"]);
    wait_confined(pid, "1");

    // Moving the running domain moves every thread.
    h.rxl_ok(&["cpupool-migrate", "pooled", "Pool-0"]);
    wait_confined(pid, "0");
    assert!(h
        .rxl_ok(&["cpupool-list"])
        .contains("Pool-0               1    credit       y          2\n"));
    h.rxl_ok(&["cpupool-migrate", "pooled", "web"]);
    wait_confined(pid, "1");

    // rxend restarts (killed, as a crash): pools, the domain's pool and its confinement stay.
    h.kill_rxend();
    h.start_rxend();
    assert_eq!(
        h.rxl_ok(&["cpupool-list"]),
        "Name               CPUs   Sched     Active   Domain count\n\
         Pool-0               1    credit       y          1\n\
         web                  1    credit       y          1\n"
    );
    wait_confined(pid, "1");
    h.rxl_ok(&["cpupool-migrate", "pooled", "0"]);
    wait_confined(pid, "0");

    // Emptied, the pool goes; its CPU is free until added back to Pool-0.
    h.rxl_ok(&["cpupool-destroy", "web"]);
    assert_eq!(
        h.rxl_ok(&["cpupool-list", "-c"]),
        "Name               CPU list\nPool-0             0\n"
    );
    h.rxl_ok(&["cpupool-cpu-add", "Pool-0", "1"]);
    wait_confined(pid, "0-1");

    // One pool per NUMA node; Pool-0 becomes its first node's pool, with its domains.
    h.rxl_ok(&["cpupool-numa-split"]);
    let list = h.rxl_ok(&["cpupool-list", "-c"]);
    let mut nodes: Vec<(u32, String)> = fs::read_dir("/sys/devices/system/node")
        .expect("sysfs nodes")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_prefix("node")?.parse().ok()?;
            let cpus = fs::read_to_string(e.path().join("cpulist")).ok()?;
            (!cpus.trim().is_empty()).then(|| (n, cpus.trim().to_string()))
        })
        .collect();
    nodes.sort();
    for (n, cpus) in &nodes {
        // sysfs writes ranges (`0-1,4`); the list prints every CPU.
        let cpus: Vec<String> = cpus
            .split(',')
            .flat_map(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                let (a, b): (u32, u32) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
                (a..=b).map(|c| c.to_string())
            })
            .collect();
        let line = format!("{:<19}{}\n", format!("Pool-node{n}"), cpus.join(","));
        assert!(list.contains(&line), "{line:?} in\n{list}");
    }
    assert!(!list.contains("Pool-0"), "{list}");
    assert!(h
        .rxl_ok(&["cpupool-list", &format!("Pool-node{}", nodes[0].0)])
        .ends_with("       y          2\n"));
    h.rxl_ok(&["destroy", "pooled"]);
    let cpuset = cpuset_mount()
        .expect("these machines have the cgroup v1 cpuset controller")
        .join(h.cgroup_name())
        .join(format!("dom{id}"));
    wait_until(Duration::from_secs(10), "the domain's cpuset goes", || {
        !cpuset.exists()
    });
}

/// The cgroup v1 `cpuset` hierarchy of this host, if it has one.
fn cpuset_mount() -> Option<std::path::PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup") && f.get(3)?.split(',').any(|o| o == "cpuset"))
            .then(|| std::path::PathBuf::from(f[1]))
    })
}

#[test]
fn a_domain_keeps_its_pool_through_save_and_restore_and_unknown_pools_are_refused() {
    need_two_cpus();
    let h = Host::start();
    let bad = h.config(
        "bad.cfg",
        "name = \"bad\"\nkernel = \"builtin:testguest\"\nmemory = 32\npool = \"nosuch\"\n",
    );
    let out = h.rxl(&["create", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown cpupool 'nosuch'"),
        "{}",
        stderr(&out)
    );
    assert!(h.list_row("bad").is_none());

    h.rxl_ok(&["cpupool-create", "name=\"batch\"", "cpus=\"1\""]);
    let _con = h.create_guest("saver", 1, 32, "pool = \"batch\"");
    wait_confined(h.vmm_pid(domid(&h, "saver")), "1");
    let save = h.dir.path().join("saver.save");
    let save = save.to_str().expect("utf-8");
    h.rxl_ok(&["save", "saver", save]);
    h.rxl_ok(&["restore", save]);
    let pid = h.vmm_pid(domid(&h, "saver"));
    wait_confined(pid, "1");
    assert!(h
        .rxl_ok(&["cpupool-list"])
        .contains("batch                1    credit       y          1\n"));

    // A save file whose pool this host lacks is refused, and kept.
    h.rxl_ok(&["save", "saver", save]);
    h.rxl_ok(&["cpupool-destroy", "batch"]);
    let out = h.rxl(&["restore", save]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown cpupool 'batch'"),
        "{}",
        stderr(&out)
    );
    assert!(std::path::Path::new(save).exists());
    assert!(h.list_row("saver").is_none());
    // With the pool back, the same file restores into it.
    h.rxl_ok(&["cpupool-create", "name=\"batch\"", "cpus=\"1\""]);
    h.rxl_ok(&["restore", save]);
    wait_confined(h.vmm_pid(domid(&h, "saver")), "1");
    h.rxl_ok(&["destroy", "saver"]);
}

/// `rxl migrate` from `a` to `b` over xl's ssh transport with `-s ''` (HOST is run as the
/// command: `rxl migrate-receive` against `b`'s rxend), both rxends on this machine.
fn migrate(a: &Host, b: &Host, name: &str) -> std::process::Output {
    let receiver = format!(
        "env RXEN_SOCKET={} {} migrate-receive",
        b.socket().display(),
        rxen_e2e::bin("rxl").display()
    );
    a.rxl(&["migrate", "-s", "", name, &receiver])
}

#[test]
fn a_migration_keeps_the_pool_and_a_target_without_it_refuses() {
    need_two_cpus();
    let a = Host::start();
    let b = Host::start();
    a.rxl_ok(&["cpupool-create", "name=\"web\"", "cpus=\"1\""]);
    let _con = a.create_guest("mover", 1, 16, "pool = \"web\"");
    let pid_a = a.vmm_pid(domid(&a, "mover"));
    wait_confined(pid_a, "1");

    let out = migrate(&a, &b, "mover");
    assert!(!out.status.success(), "B has no pool web");
    assert!(
        stderr(&out).contains("unknown cpupool 'web'"),
        "{}",
        stderr(&out)
    );
    assert!(b.list_row("mover").is_none());
    assert!(a.list_row("mover").is_some());
    assert_eq!(a.vmm_pid(domid(&a, "mover")), pid_a, "the guest stays on A");
    wait_confined(pid_a, "1");

    b.rxl_ok(&["cpupool-create", "name=\"web\"", "cpus=\"1\""]);
    let out = migrate(&a, &b, "mover");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(a.list_row("mover").is_none());
    wait_confined(b.vmm_pid(domid(&b, "mover")), "1");
    assert!(b
        .rxl_ok(&["cpupool-list"])
        .contains("web                  1    credit       y          1\n"));
    b.rxl_ok(&["destroy", "mover"]);
}
