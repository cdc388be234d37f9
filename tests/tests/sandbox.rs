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
    let mut threads = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let tid = t.file_name().to_string_lossy().into_owned();
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        threads.push((tid, comm.trim().to_string()));
    }
    assert!(
        threads.iter().any(|(_, c)| c.starts_with("vcpu")),
        "no vCPU thread among {threads:?}"
    );
    for (tid, comm) in &threads {
        let st = status(&format!("/proc/{pid}/task/{tid}/status"));
        assert_eq!(field(&st, "CapEff"), "0000000000000000", "{comm}: CapEff");
        assert_eq!(field(&st, "CapPrm"), "0000000000000000", "{comm}: CapPrm");
        assert_eq!(field(&st, "CapBnd"), "0000000000000000", "{comm}: CapBnd");
        assert_eq!(field(&st, "NoNewPrivs"), "1", "{comm}: NoNewPrivs");
        assert_eq!(field(&st, "Seccomp"), "2", "{comm}: Seccomp (filter mode)");
    }
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
