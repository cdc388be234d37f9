//! Every rxen-vmm runs confined: no capabilities, `no_new_privs`, seccomp filters on every
//! thread; a VMM whose filter stops a call dies by SIGSYS, rxend says which call, and the
//! domain's `on_crash` applies; `--no-sandbox` turns it all off, loudly.

use std::fs;
use std::time::Duration;

use rxen_e2e::{wait_until, Host};

/// The `Name:\tvalue` fields of `/proc/PID/status` (or of one of its threads).
fn status(path: &str) -> Vec<(String, String)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.trim().to_string()))
        })
        .collect()
}

fn field(st: &[(String, String)], name: &str) -> String {
    st.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {name} in status"))
}

#[test]
fn every_thread_of_a_vmm_is_confined() {
    let h = Host::start();
    let mut con = h.create_guest("jailed", 2, 64, "");
    assert!(con.heartbeat() < u64::MAX);
    let id: u32 = h
        .rxl_ok(&["domid", "jailed"])
        .trim()
        .parse()
        .expect("domid");
    let pid = h.vmm_pid(id);
    assert_threads_confined(pid, 2);
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit");
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    // The guest still does everything through the filters.
    let before = con.heartbeat();
    wait_until(Duration::from_secs(10), "the heartbeat moves", || {
        con.heartbeat() > before
    });
    let info = h.rxl_ok(&["info"]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("rxen_sandbox") && l.ends_with(": on")),
        "{info}"
    );
    drop(con);
    // A restored domain's vCPU threads start before its state is read (and wait for their
    // vCPUs): they are confined all the same, and the guest runs through their filters.
    let file = h.dir.path().join("jailed.save");
    let file = file.to_str().expect("utf-8");
    h.rxl_ok(&["save", "jailed", file]);
    h.rxl_ok(&["restore", file]);
    let id: u32 = h
        .rxl_ok(&["domid", "jailed"])
        .trim()
        .parse()
        .expect("domid");
    assert_threads_confined(h.vmm_pid(id), 2);
    let mut con = h.console("jailed");
    let before = con.heartbeat();
    wait_until(
        Duration::from_secs(10),
        "the restored heartbeat moves",
        || con.heartbeat() > before,
    );
}

/// Every thread of VMM `pid` holds no capability, has `no_new_privs` and a seccomp filter;
/// `vcpus` of them are vCPU threads.
fn assert_threads_confined(pid: i32, vcpus: usize) {
    let mut threads = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let tid = t.file_name().to_string_lossy().into_owned();
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        threads.push((tid, comm.trim().to_string()));
    }
    assert_eq!(
        threads
            .iter()
            .filter(|(_, c)| c.starts_with("vcpu"))
            .count(),
        vcpus,
        "vCPU threads among {threads:?}"
    );
    for (tid, comm) in &threads {
        let st = status(&format!("/proc/{pid}/task/{tid}/status"));
        assert_eq!(field(&st, "CapEff"), "0000000000000000", "{comm}: CapEff");
        assert_eq!(field(&st, "CapPrm"), "0000000000000000", "{comm}: CapPrm");
        assert_eq!(field(&st, "CapBnd"), "0000000000000000", "{comm}: CapBnd");
        assert_eq!(field(&st, "NoNewPrivs"), "1", "{comm}: NoNewPrivs");
        assert_eq!(field(&st, "Seccomp"), "2", "{comm}: Seccomp (filter mode)");
    }
}

#[test]
fn a_forbidden_call_kills_the_vmm_and_rxend_says_which() {
    let mut h = Host::start();
    h.kill_rxend();
    h.rxend_env = vec![("RXEN_VMM_TEST_FORBIDDEN_CALL".into(), "1".into())];
    h.start_rxend();
    let cfg = h.config(
        "bad.cfg",
        "name = \"bad\"\nkernel = \"builtin:testguest\"\nmemory = 64\non_crash = \"preserve\"\n",
    );
    h.rxl_ok(&["create", cfg.to_str().expect("utf-8")]);
    wait_until(Duration::from_secs(15), "the domain crashed", || {
        h.list_row("bad").is_some_and(|r| r[4] == "---sc-")
    });
    let log = h.rxend_log();
    let mkdir = libc::SYS_mkdir;
    assert!(
        log.contains(&format!(
            "rxen-vmm of bad killed by its seccomp filter (syscall {mkdir})"
        )),
        "{log}"
    );
    assert!(!h.dir.path().join("rxen-forbidden").exists());
}

#[test]
fn opening_a_path_after_start_is_refused_and_the_vmm_goes_on() {
    let mut h = Host::start();
    h.kill_rxend();
    h.rxend_env = vec![("RXEN_VMM_TEST_FORBIDDEN_CALL".into(), "open".into())];
    h.start_rxend();
    let mut con = h.create_guest("nosy", 1, 64, "");
    let id: u32 = h.rxl_ok(&["domid", "nosy"]).trim().parse().expect("domid");
    let log = h
        .state_dir()
        .join("dom")
        .join(id.to_string())
        .join("vmm.log");
    wait_until(
        Duration::from_secs(10),
        "the refused open is logged",
        || {
            fs::read_to_string(&log).is_ok_and(|t| {
                t.contains("rxen-vmm: seccomp: refused (EACCES) system call 257 (thread")
                    && t.contains("path /etc/hostname)")
                    && t.contains("refused=true")
            })
        },
    );
    let before = con.heartbeat();
    wait_until(Duration::from_secs(10), "the guest runs on", || {
        con.heartbeat() > before
    });
    assert!(h.list_row("nosy").is_some_and(|r| !r[4].contains('c')));
}

#[test]
fn no_sandbox_runs_vmms_unconfined_and_says_so() {
    let mut h = Host::start();
    h.kill_rxend();
    h.rxend_args = vec!["--no-sandbox".into()];
    h.start_rxend();
    h.create_guest("free", 1, 64, "");
    let id: u32 = h.rxl_ok(&["domid", "free"]).trim().parse().expect("domid");
    let st = status(&format!("/proc/{}/status", h.vmm_pid(id)));
    assert_eq!(field(&st, "Seccomp"), "0");
    assert!(h.rxend_log().contains("--no-sandbox: VMMs run UNCONFINED"));
    let info = h.rxl_ok(&["info"]);
    assert!(
        info.contains("rxen_sandbox") && info.contains("OFF"),
        "{info}"
    );
}

/// The uid, root directory and namespaces of domain `name`'s VMM.
struct Jail {
    uid: u32,
    gid: u32,
    root_entries: usize,
    passwd_visible: bool,
    nspid: String,
    namespaces: Vec<(String, String, String)>,
}

fn jail_of(h: &Host, name: &str) -> Jail {
    let id: u32 = h.rxl_ok(&["domid", name]).trim().parse().expect("domid");
    let pid = h.vmm_pid(id);
    let st = status(&format!("/proc/{pid}/status"));
    let first = |f: &str| -> u32 {
        field(&st, f)
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .expect("id")
    };
    let ns = |kind: &str, pid: &str| {
        fs::read_link(format!("/proc/{pid}/ns/{kind}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    Jail {
        uid: first("Uid"),
        gid: first("Gid"),
        root_entries: fs::read_dir(format!("/proc/{pid}/root"))
            .expect("the VMM's root")
            .count(),
        passwd_visible: std::path::Path::new(&format!("/proc/{pid}/root/etc/passwd")).exists(),
        nspid: field(&st, "NSpid"),
        namespaces: ["mnt", "net", "pid", "ipc", "uts", "cgroup"]
            .iter()
            .map(|k| (k.to_string(), ns(k, &pid.to_string()), ns(k, "self")))
            .collect(),
    }
}

#[test]
fn each_vmm_runs_jailed_under_a_uid_of_its_own() {
    let h = Host::start();
    let toml = fs::read_to_string(h.dir.path().join("rxend.toml")).expect("rxend.toml");
    let first_uid: u32 = toml
        .lines()
        .find_map(|l| l.strip_prefix("first-uid = "))
        .and_then(|v| v.trim().parse().ok())
        .expect("first-uid");
    let mut a = h.create_guest("jail-a", 1, 64, "");
    let mut b = h.create_guest("jail-b", 2, 64, "");
    let (ja, jb) = (jail_of(&h, "jail-a"), jail_of(&h, "jail-b"));
    for (name, j) in [("jail-a", &ja), ("jail-b", &jb)] {
        assert_ne!(j.uid, 0, "{name} runs as root");
        assert_eq!(j.gid, j.uid, "{name}: gid");
        assert!(
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(j.uid))
                .expect("getpwuid")
                .is_none(),
            "{name}: uid {} belongs to a host user",
            j.uid
        );
        assert_eq!(j.root_entries, 0, "{name}: its root is not empty");
        assert!(!j.passwd_visible, "{name}: sees the host's /etc/passwd");
        // The VMM is the first process of its own PID namespace.
        assert!(
            j.nspid.ends_with("\t1") || j.nspid.ends_with(" 1"),
            "{name}: NSpid {}",
            j.nspid
        );
        for (kind, vmm, ours) in &j.namespaces {
            assert!(!vmm.is_empty(), "{name}: no {kind} namespace read");
            assert_ne!(vmm, ours, "{name}: shares the host's {kind} namespace");
        }
    }
    assert_ne!(ja.uid, jb.uid, "two running domains share a uid");
    // Jailed, the guests run on: consoles, heartbeats.
    for con in [&mut a, &mut b] {
        let before = con.heartbeat();
        wait_until(Duration::from_secs(10), "the heartbeat moves", || {
            con.heartbeat() > before
        });
    }
    drop((a, b));
    // A uid comes from the configured range, and is free again once its domain is gone.
    for j in [&ja, &jb] {
        assert!(
            (first_uid..first_uid + 100).contains(&j.uid),
            "uid {} outside the range",
            j.uid
        );
    }
    h.rxl_ok(&["destroy", "jail-a"]);
    let _c = h.create_guest("jail-c", 1, 64, "");
    assert_eq!(
        jail_of(&h, "jail-c").uid,
        ja.uid,
        "the freed uid is not reused"
    );
}

#[test]
fn a_full_uid_range_refuses_the_next_domain_and_frees_on_destroy() {
    let mut h = Host::start();
    h.kill_rxend();
    fs::write(
        h.dir.path().join("rxend.toml"),
        "[sandbox]\nfirst-uid = 180000000\nuid-count = 1\n",
    )
    .expect("config");
    h.start_rxend();
    let _a = h.create_guest("only", 1, 64, "");
    assert_eq!(jail_of(&h, "only").uid, 180_000_000);
    let cfg = h.config(
        "second.cfg",
        "name = \"second\"\nkernel = \"builtin:testguest\"\nmemory = 64\n",
    );
    let out = h.rxl(&["create", cfg.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "a second domain got the one uid");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no free sandbox uid"), "{err}");
    assert!(h.list_row("second").is_none());
    h.rxl_ok(&["destroy", "only"]);
    h.rxl_ok(&["create", cfg.to_str().expect("utf-8")]);
    assert_eq!(jail_of(&h, "second").uid, 180_000_000);
    // rxend refuses a range with root in it, naming the file.
    h.kill_rxend();
    fs::write(
        h.dir.path().join("rxend.toml"),
        "[sandbox]\nfirst-uid = 0\nuid-count = 10\n",
    )
    .expect("config");
    let out = std::process::Command::new(rxen_e2e::bin("rxend"))
        .arg("--config")
        .arg(h.dir.path().join("rxend.toml"))
        .arg("--socket")
        .arg(h.dir.path().join("other.sock"))
        .arg("--state-dir")
        .arg(h.dir.path().join("other-state"))
        .output()
        .expect("rxend");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rxend.toml") && err.contains("first-uid"),
        "{err}"
    );
}
