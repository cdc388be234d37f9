//! Disk priorities follow the credit weight, on real guests under /dev/kvm:
//! the I/O priority every disk I/O thread (`blk-<vdev>`) of a VMM holds in
//! the kernel (read with `ioprio_get`) for weights 512 and 256, after
//! `rxl sched-credit -w`, for a hot-plugged disk, after save/restore and on
//! the target of a migration, the
//! cgroup I/O weight where the kernel offers one, and `rxl sched-credit -v`.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use rxen_e2e::{wait_until, Host};

/// (class, level) of `ioprio_get(2)`: 1 real time, 2 best effort, 3 idle.
fn ioprio(tid: i32) -> (i32, i32) {
    // SAFETY: ioprio_get(IOPRIO_WHO_PROCESS, tid) takes integers and touches no memory.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, tid) };
    assert!(
        rc >= 0,
        "ioprio_get({tid}): {}",
        std::io::Error::last_os_error()
    );
    let v = rc as i32;
    (v >> 13, v & 7)
}

/// (name, tid) of every disk I/O thread of a VMM, sorted by name.
fn blk_threads(pid: i32) -> Vec<(String, i32)> {
    let mut v: Vec<(String, i32)> = fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter_map(|e| {
            let tid: i32 = e.file_name().to_str()?.parse().ok()?;
            let name = fs::read_to_string(e.path().join("comm")).ok()?;
            let name = name.trim().to_string();
            name.starts_with("blk-").then_some((name, tid))
        })
        .collect();
    v.sort();
    v
}

/// The priorities of a domain's disk threads, by thread name.
fn prios(host: &Host, name: &str) -> Vec<(String, (i32, i32))> {
    let id: u32 = host.rxl_ok(&["domid", name]).trim().parse().expect("domid");
    blk_threads(host.vmm_pid(id))
        .into_iter()
        .map(|(n, tid)| (n, ioprio(tid)))
        .collect()
}

fn all_are(p: &[(String, (i32, i32))], want: (i32, i32)) -> bool {
    !p.is_empty() && p.iter().all(|(_, got)| *got == want)
}

const BE: i32 = 2;
const IDLE: i32 = 3;

/// A sparse raw image of `mib` MiB in the host's directory.
fn image(host: &Host, name: &str, mib: u64) -> PathBuf {
    let p = host.dir.path().join(name);
    fs::File::create(&p)
        .and_then(|f| f.set_len(mib << 20))
        .expect("image");
    p
}

/// The cgroup v1 blkio weight file this kernel offers, if any.
fn blkio_weight_file() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let mount = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup") && f.get(3)?.split(',').any(|o| o == "blkio"))
            .then(|| PathBuf::from(f[1]))
    })?;
    ["blkio.weight", "blkio.bfq.weight"]
        .iter()
        .map(|f| mount.join(f))
        .find(|p| p.exists())
}

#[test]
fn disk_threads_get_the_io_priority_of_the_credit_weight() {
    let host = Host::start();
    let (a, b, c, d) = (
        image(&host, "a.img", 2),
        image(&host, "b.img", 2),
        image(&host, "c.img", 2),
        image(&host, "d.img", 2),
    );
    let _heavy = host.create_guest(
        "heavy",
        1,
        64,
        &format!(
            "cpu_weight = 512\ndisk = [ 'file:{},xvda,w', 'file:{},xvdb,w' ]",
            a.display(),
            b.display()
        ),
    );
    let _light = host.create_guest(
        "light",
        1,
        64,
        &format!("cpu_weight = 256\ndisk = [ 'file:{},xvda,w' ]", c.display()),
    );
    // 512 is one doubling above the default: best effort, level 3, on both disks' threads.
    let p = prios(&host, "heavy");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(all_are(&p, (BE, 3)), "heavy: {p:?}");
    // 256, the default, is best effort level 4.
    let p = prios(&host, "light");
    assert!(all_are(&p, (BE, 4)), "light: {p:?}");

    // Changing the weight changes the priority at once: 1024 is level 2, 16 the idle class.
    host.rxl_ok(&["sched-credit", "-d", "light", "-w", "1024"]);
    let p = prios(&host, "light");
    assert!(all_are(&p, (BE, 2)), "light at 1024: {p:?}");
    host.rxl_ok(&["sched-credit", "-d", "light", "-w", "16"]);
    let p = prios(&host, "light");
    assert!(
        p.iter().all(|(_, (class, _))| *class == IDLE),
        "light at 16: {p:?}"
    );

    // A hot-plugged disk's thread gets the domain's priority too.
    host.rxl_ok(&[
        "block-attach",
        "heavy",
        &format!("file:{},xvdc,w", d.display()),
    ]);
    wait_until(Duration::from_secs(10), "blk-xvdc exists", || {
        prios(&host, "heavy").len() == 3
    });
    let p = prios(&host, "heavy");
    assert!(all_are(&p, (BE, 3)), "heavy after hotplug: {p:?}");

    // `sched-credit -v`: xl's table unchanged, then the I/O table as the kernel holds it.
    let out = host.rxl_ok(&["sched-credit", "-v"]);
    eprintln!("{out}");
    let (xl, io) = out.split_once("\n\n").expect("two tables");
    assert!(
        xl.lines()
            .any(|l| l.starts_with("Name ") && l.ends_with("Weight  Cap")),
        "{out}"
    );
    let row = |name: &str| {
        io.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row in\n{out}"))
            .to_string()
    };
    let heavy = row("heavy");
    assert!(heavy.contains("best-effort: prio 3"), "{heavy}");
    assert!(
        heavy.split_whitespace().nth(3) == Some("3"),
        "3 disks: {heavy}"
    );
    assert!(row("light").contains("idle"), "{out}");
    // The cgroup I/O weight, where this kernel offers one; `-` where it does not.
    let heavy_id: u32 = host.rxl_ok(&["domid", "heavy"]).trim().parse().expect("id");
    match blkio_weight_file() {
        Some(f) => {
            let file = f.file_name().expect("name").to_string_lossy().into_owned();
            let want = if file == "blkio.weight" { 1000 } else { 200 };
            let group = f
                .parent()
                .expect("mount")
                .join(host.cgroup_name())
                .join(format!("dom{heavy_id}"))
                .join(&file);
            let held: u64 = fs::read_to_string(&group)
                .expect("weight file")
                .trim()
                .parse()
                .expect("number");
            assert_eq!(held, want);
            assert!(heavy.ends_with(&format!("{file}={want}")), "{heavy}");
        }
        None => {
            assert!(heavy.ends_with(" -"), "no weight file here: {heavy}");
            assert!(
                host.rxend_log().contains("cgroup I/O weights are skipped"),
                "one log line says why"
            );
        }
    }

    // After save and restore the new VMM's threads get it again.
    let save = host.dir.path().join("heavy.save");
    let save = save.to_str().expect("utf-8");
    host.rxl_ok(&["save", "heavy", save]);
    host.rxl_ok(&["restore", save]);
    let p = prios(&host, "heavy");
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(all_are(&p, (BE, 3)), "heavy after restore: {p:?}");
}

#[test]
fn a_migrated_domain_gets_its_priority_on_the_target() {
    let a = Host::start();
    let b = Host::start();
    let img = image(&a, "m.img", 2);
    let _con = a.create_guest(
        "mover",
        1,
        32,
        &format!(
            "cpu_weight = 2048\ndisk = [ 'file:{},xvda,w' ]",
            img.display()
        ),
    );
    assert!(all_are(&prios(&a, "mover"), (BE, 1)));
    // xl's ssh transport with `-s ''`: HOST is run as the command, `rxl migrate-receive`
    // against b's rxend, both on this machine.
    let receiver = format!(
        "env RXEN_SOCKET={} {} migrate-receive",
        b.socket().display(),
        rxen_e2e::bin("rxl").display()
    );
    a.rxl_ok(&["migrate", "-s", "", "mover", &receiver]);
    let p = prios(&b, "mover");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(all_are(&p, (BE, 1)), "on the target: {p:?}");
}
