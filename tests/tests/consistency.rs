//! rxend never loses, hides or duplicates a domain: killed (SIGKILL) in the middle of creating
//! or restoring one, at each of its failpoints and after a range of delays, it starts again to
//! find the domain either listed and working or completely gone (no VMM, TAP, cgroup, run
//! directory, record or disk lock left); a dead VMM's domain is never shown as running; a
//! stopped rxend leaves no cgroup of its own behind.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rxen_e2e::{pids_with, Bridge, Host};

use rxend::failpoint::{
    START_PLUGGED as PLUGGED, START_READY as READY, START_RECORDED as RECORDED,
    START_SPAWNED as SPAWNED,
};

/// One domain's config: the test guest with a writable disk (its lock is exclusive) and a vif.
struct Domain {
    name: String,
    tap: String,
    cfg: String,
}

impl Domain {
    fn new(h: &Host, br: &Bridge, name: &str, tap: &str) -> Domain {
        let img = h.dir.path().join(format!("{name}.img"));
        fs::write(&img, vec![0u8; 1 << 20]).expect("disk image");
        let cfg = h.config(
            &format!("{name}.cfg"),
            &format!(
                "name = \"{name}\"\nkernel = \"builtin:testguest\"\nmemory = 64\nvcpus = 1\n\
                 disk = [ 'file:{},xvda,w' ]\nvif = [ 'bridge={},vifname={tap}' ]\n",
                img.display(),
                br.name
            ),
        );
        Domain {
            name: name.to_string(),
            tap: tap.to_string(),
            cfg: cfg.to_string_lossy().into_owned(),
        }
    }
}

/// Waits for rxend to die by its failpoint (it kills itself with SIGKILL).
fn wait_rxend_dead(h: &mut Host) {
    let child = h.rxend.as_mut().expect("rxend runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().expect("wait rxend") {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(st.signal(), Some(9), "rxend ended otherwise: {st:?}");
            h.rxend = None;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rxend did not reach its failpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn vmm_pids(h: &Host) -> Vec<i32> {
    let marker = h.state_dir().to_string_lossy().into_owned();
    pids_with(&["rxen-vmm", "--spec", &marker])
        .into_iter()
        .filter(|&p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        })
        .collect()
}

/// The guest's heartbeat (a counter its timer advances) moves: the guest runs and answers.
fn assert_beats(con: &mut rxen_e2e::Console, what: &str) {
    let first = con.heartbeat();
    let deadline = Instant::now() + Duration::from_secs(10);
    while con.heartbeat() <= first {
        assert!(
            Instant::now() < deadline,
            "{what}: the guest's heartbeat stands still"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tap_exists(tap: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", tap])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The `dom<N>` cgroups of this host other than Domain-0's, in any hierarchy.
fn domain_cgroups(h: &Host) -> Vec<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut out = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !matches!(f.get(2), Some(&"cgroup" | &"cgroup2")) {
            continue;
        }
        let base = Path::new(f[1]).join(h.cgroup_name());
        for e in fs::read_dir(&base).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("dom") && n != "dom0" && e.path().is_dir() {
                out.push(format!("{}/{n}", base.display()));
            }
        }
    }
    out
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// What rxend left of `d` after its restart: `true` when it is listed (and then it works),
/// `false` when it is gone (and then nothing of it is left). Fails the test otherwise.
fn check_listed_and_working_or_gone(h: &Host, d: &Domain, what: &str) -> bool {
    let log = || h.rxend_log();
    match h.list_row(&d.name) {
        Some(row) => {
            assert!(
                !row[4].contains('p') && !row[4].contains('d'),
                "{what}: {} is listed but not running: {row:?}\n{}",
                d.name,
                log()
            );
            let mut con = h.console(&d.name);
            assert_beats(&mut con, what);
            assert_eq!(
                vmm_pids(h).len(),
                1,
                "{what}: one VMM for one domain\n{}",
                log()
            );
            assert!(
                tap_exists(&d.tap),
                "{what}: the adopted domain lost its TAP"
            );
            drop(con);
            h.rxl_ok(&["destroy", &d.name]);
            assert_gone(h, d, &format!("{what}, then destroyed"));
            true
        }
        None => {
            assert_gone(h, d, what);
            false
        }
    }
}

/// Nothing of `d` is left, and it can be created again (its disk lock is free).
fn assert_gone(h: &Host, d: &Domain, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vmm_pids(h).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = h.rxend_log();
    assert_eq!(
        vmm_pids(h),
        Vec::<i32>::new(),
        "{what}: a VMM is left\n{log}"
    );
    assert!(!tap_exists(&d.tap), "{what}: TAP {} is left\n{log}", d.tap);
    assert_eq!(
        domain_cgroups(h),
        Vec::<String>::new(),
        "{what}: cgroups left\n{log}"
    );
    assert_eq!(
        entries(&h.state_dir().join("dom")),
        Vec::<String>::new(),
        "{what}: run directories left\n{log}"
    );
    assert_eq!(
        entries(&h.state_dir().join("domains")),
        Vec::<String>::new(),
        "{what}: records left\n{log}"
    );
    // The disk lock went with the VMM: the same domain starts again.
    h.rxl_ok(&["create", &d.cfg]);
    let mut con = h.console(&d.name);
    con.wait_for("booted on 1 vCPUs", Duration::from_secs(30));
    assert_beats(&mut con, &format!("{what}, created again"));
    drop(con);
    h.rxl_ok(&["destroy", &d.name]);
}

/// Restarts rxend with failpoint `fp` (or none).
fn restart_with(h: &mut Host, fp: Option<&str>) {
    h.kill_rxend();
    h.rxend_env = fp
        .map(|f| vec![("RXEN_FAILPOINTS".to_string(), f.to_string())])
        .unwrap_or_default();
    h.start_rxend();
}

/// Runs `rxl ARGS` against an rxend that dies at each failpoint of a domain's start, starts
/// rxend again, and checks that `d` is listed and working or completely gone (`before_check`
/// runs first, with whether it is listed). At `recorded` and `plugged` nothing of the domain
/// may survive; at `ready` the domain must be adopted; at `spawned` either may happen.
fn kill_at_each_failpoint(
    h: &mut Host,
    d: &Domain,
    args: &[&str],
    mut before_check: impl FnMut(&Host, &str, bool),
) {
    for (fp, expect_listed) in [
        (RECORDED, Some(false)),
        (PLUGGED, Some(false)),
        (SPAWNED, None),
        (READY, Some(true)),
    ] {
        restart_with(h, Some(fp));
        let out = h.rxl(args);
        assert!(!out.status.success(), "{fp}: rxl {args:?} succeeded");
        wait_rxend_dead(h);
        restart_with(h, None);
        let what = format!("rxl {} killed at {fp}", args[0]);
        before_check(h, &what, h.list_row(&d.name).is_some());
        let listed = check_listed_and_working_or_gone(h, d, &what);
        if let Some(want) = expect_listed {
            assert_eq!(listed, want, "{what}: listed {listed}\n{}", h.rxend_log());
        }
    }
}

#[test]
fn rxend_killed_at_each_step_of_create_leaves_the_domain_whole_or_gone() {
    let mut h = Host::start();
    let br = Bridge::new(None);
    let tap = format!("rxtc{:x}", std::process::id() % 0xFFFF);
    let d = Domain::new(&h, &br, "crashc", &tap);
    let cfg = d.cfg.clone();
    kill_at_each_failpoint(&mut h, &d, &["create", &cfg], |_, _, _| {});
}

#[test]
fn rxend_killed_at_each_step_of_restore_leaves_one_copy_or_none() {
    let mut h = Host::start();
    let br = Bridge::new(None);
    let tap = format!("rxtr{:x}", std::process::id() % 0xFFFF);
    let d = Domain::new(&h, &br, "crashr", &tap);
    h.rxl_ok(&["create", &d.cfg]);
    let con = h.console(&d.name);
    con.wait_for("booted on 1 vCPUs", Duration::from_secs(30));
    drop(con);
    let save = h.dir.path().join("crashr.sav");
    let save = save.to_str().expect("utf-8").to_string();
    h.rxl_ok(&["save", &d.name, &save]);
    let saved = fs::read(&save).expect("save file");
    kill_at_each_failpoint(&mut h, &d, &["restore", &save], |h, what, listed| {
        // An adopted restored domain must be the one copy: a retried restore is refused.
        if listed {
            let retry = h.rxl(&["restore", &save]);
            assert!(
                !retry.status.success(),
                "{what}: a second copy was restored"
            );
        }
        assert_eq!(
            fs::read(&save).expect("save file"),
            saved,
            "{what}: the save file changed"
        );
    });
}

#[test]
fn rxend_killed_after_a_range_of_delays_during_create_leaves_the_domain_whole_or_gone() {
    let mut h = Host::start();
    let br = Bridge::new(None);
    let d = Domain::new(
        &h,
        &br,
        "crashd",
        &format!("rxtd{:x}", std::process::id() % 0xFFFF),
    );
    let mut outcomes = Vec::new();
    for delay_ms in [0u64, 5, 15, 30, 60, 100, 150, 250] {
        let mut create = h
            .rxl_command()
            .args(["create", &d.cfg])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rxl create");
        std::thread::sleep(Duration::from_millis(delay_ms));
        h.kill_rxend();
        let _ = create.wait();
        h.start_rxend();
        let listed =
            check_listed_and_working_or_gone(&h, &d, &format!("killed after {delay_ms} ms"));
        outcomes.push((delay_ms, listed));
    }
    eprintln!("(delay ms, listed after restart): {outcomes:?}");
}

#[test]
fn rxend_adopts_running_domains_and_kills_vmms_no_record_names() {
    let mut h = Host::start();
    let mut con = h.create_guest("keep", 1, 64, "");
    let before = con.heartbeat();
    drop(con);
    // A VMM whose record is gone (as after a lost write): nobody could reach or destroy it.
    h.create_guest("orphan", 1, 64, "");
    let orphan_id: u32 = h
        .rxl_ok(&["domid", "orphan"])
        .trim()
        .parse()
        .expect("domid");
    let orphan_pid = h.vmm_pid(orphan_id);
    h.kill_rxend();
    fs::remove_file(
        h.state_dir()
            .join("domains")
            .join(format!("{orphan_id}.json")),
    )
    .expect("remove the record");
    h.start_rxend();
    let mut con = h.console("keep");
    assert!(
        con.heartbeat() >= before,
        "the adopted guest kept its state"
    );
    assert_beats(&mut con, "the adopted guest");
    assert!(h.list_row("orphan").is_none());
    rxen_e2e::wait_until(Duration::from_secs(10), "the orphan VMM is gone", || {
        !Path::new(&format!("/proc/{orphan_pid}")).exists()
            || fs::read_to_string(format!("/proc/{orphan_pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true)
    });
    assert!(
        !h.state_dir()
            .join("dom")
            .join(orphan_id.to_string())
            .exists(),
        "the orphan's run directory is removed"
    );
    let log = h.rxend_log();
    assert!(
        log.contains(&format!("killed rxen-vmm pid {orphan_pid}")),
        "rxend says what it killed:\n{log}"
    );
}

/// The `ps`-style state letter of a process (`Z` for a zombie), `None` once it is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

#[test]
fn a_domain_whose_vmm_died_is_never_listed_as_running_or_blocked() {
    let h = Host::start();
    for round in 0..5 {
        let name = format!("dying{round}");
        let con = h.create_guest(&name, 1, 64, "on_crash = \"preserve\"");
        drop(con);
        let id: u32 = h.rxl_ok(&["domid", &name]).trim().parse().expect("domid");
        let pid = h.vmm_pid(id);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the VMM");
        // Dead (a zombie until rxend reaps it, or gone, with none of its threads left): from
        // now on no list may call it alive.
        let deadline = Instant::now() + Duration::from_secs(5);
        let threads = |pid: i32| {
            fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        while !matches!(proc_state(pid), None | Some('Z')) || threads(pid) > 1 {
            assert!(Instant::now() < deadline, "the VMM did not die");
            std::thread::sleep(Duration::from_millis(1));
        }
        let row = h.list_row(&name).expect("a preserved domain stays listed");
        assert!(
            !row[4].contains('r') && !row[4].contains('b'),
            "round {round}: the dead domain is listed as {}",
            row[4]
        );
        rxen_e2e::wait_until(Duration::from_secs(10), "on_crash applied", || {
            h.list_row(&name).is_some_and(|r| r[4] == "---sc-")
        });
        h.rxl_ok(&["destroy", &name]);
    }
}

#[test]
fn sigterm_stops_rxend_tidily_and_removes_its_dom0_cgroup() {
    let mut h = Host::start();
    let dom0: Vec<std::path::PathBuf> = {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                matches!(f.get(2), Some(&"cgroup" | &"cgroup2"))
                    .then(|| Path::new(f[1]).join(h.cgroup_name()).join("dom0"))
            })
            .filter(|p| p.is_dir())
            .collect()
    };
    assert!(
        !dom0.is_empty(),
        "rxend made no dom0 cgroup:\n{}",
        h.rxend_log()
    );
    let mut child = h.rxend.take().expect("rxend");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait rxend") {
            break st;
        }
        assert!(Instant::now() < deadline, "rxend ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "rxend stopped with {status:?}");
    for d in &dom0 {
        assert!(!d.exists(), "{} is left behind", d.display());
    }
    assert!(h.rxend_log().contains("rxend stopping on SIGTERM"));
    // And the next rxend sets it up again.
    h.start_rxend();
    assert!(dom0.iter().all(|d| d.is_dir()));
}
