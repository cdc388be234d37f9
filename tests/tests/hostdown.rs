//! When the host goes down, its domains come back (Xen's xendomains): `rxl host-shutdown`
//! saves every running domain (a busy one too) and `rxl host-start`, after rxend restarted,
//! restores them with their memory intact and creates the auto-start domains; a domain whose
//! save fails is shut down cleanly and reported, never lost silently.

use std::fs;
use std::process::Command;
use std::time::Duration;

use rxen_e2e::Host;

/// Points `[domains]` of this host's rxend.toml at `save_dir` and `auto_dir`, and restarts
/// rxend.
fn with_domains_config(h: &mut Host, save_dir: &std::path::Path, auto_dir: &std::path::Path) {
    let toml = h.dir.path().join("rxend.toml");
    let mut text = fs::read_to_string(&toml).unwrap_or_default();
    text.push_str(&format!(
        "\n[domains]\nsave-dir = \"{}\"\nauto-dir = \"{}\"\nparallel = 2\nshutdown-timeout-seconds = 20\n",
        save_dir.display(),
        auto_dir.display()
    ));
    fs::write(&toml, text).expect("rxend.toml");
    h.kill_rxend();
    h.start_rxend();
}

#[test]
fn host_shutdown_saves_every_domain_and_host_start_brings_them_back() {
    let mut h = Host::start();
    let save = h.dir.path().join("save");
    let auto = h.dir.path().join("auto");
    fs::create_dir(&auto).expect("auto dir");
    with_domains_config(&mut h, &save, &auto);
    let mut a = h.create_guest("hd-a", 1, 64, "");
    let mut b = h.create_guest("hd-b", 2, 64, "");
    let mut c = h.create_guest("hd-c", 2, 32, "");
    c.memfill(11);
    let sum = c.memsum();
    // Busy: vCPU 1 burns while the host goes down.
    c.send("burn 60 1");
    c.wait_for("burning vcpu 1", Duration::from_secs(10));
    let beats: Vec<u64> = [&mut a, &mut b, &mut c]
        .iter_mut()
        .map(|con| con.heartbeat())
        .collect();
    drop((a, b, c));
    // A fourth domain starts with the host: its config is linked from the auto directory.
    let cfg = h.config(
        "hd-auto.cfg",
        "name = \"hd-auto\"\nkernel = \"builtin:testguest\"\nmemory = 64\n",
    );
    std::os::unix::fs::symlink(&cfg, auto.join("hd-auto")).expect("link");

    let out = h.rxl_ok(&["host-shutdown"]);
    for name in ["hd-a", "hd-b", "hd-c"] {
        assert!(out.contains(&format!("{name}: saved")), "{out}");
        assert!(
            save.join(format!("{name}.save")).exists(),
            "{name}'s save file"
        );
        assert!(h.list_row(name).is_none(), "{name} still runs");
    }
    // The host comes back: a new rxend, then host-start.
    h.kill_rxend();
    h.start_rxend();
    let out = h.rxl_ok(&["host-start"]);
    for name in ["hd-a", "hd-b", "hd-c"] {
        assert!(out.contains(&format!("{name}: restored")), "{out}");
        assert!(
            !save.join(format!("{name}.save")).exists(),
            "{name}'s file stays"
        );
    }
    assert!(out.contains("hd-auto: created"), "{out}");
    for (name, before) in ["hd-a", "hd-b", "hd-c"].iter().zip(beats) {
        let mut con = h.console(name);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while con.heartbeat() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}'s heartbeat stands still"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if *name == "hd-c" {
            assert_eq!(con.memsum(), sum, "hd-c's memory changed");
        }
    }
    let _auto = h.console("hd-auto");
    // Again: what runs is left alone.
    let out = h.rxl_ok(&["host-start"]);
    assert!(out.contains("hd-auto: already running"), "{out}");
}

#[test]
fn a_domain_whose_save_fails_is_shut_down_and_reported() {
    let mut h = Host::start();
    let save = h.dir.path().join("small");
    fs::create_dir(&save).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&save)
        .status()
        .expect("mount");
    assert!(mounted.success(), "cannot mount a small tmpfs");
    let umount = || {
        let _ = Command::new("umount").arg(&save).status();
    };
    let no_auto = h.dir.path().join("no-auto");
    with_domains_config(&mut h, &save, &no_auto);
    // Even an idle guest's save (its page list and the pages it touched: about 256 KiB) does
    // not fit in 64 KiB.
    let con = h.create_guest("hd-full", 1, 64, "");
    drop(con);
    let out = h.rxl(&["host-shutdown"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let names: Vec<_> = fs::read_dir(&save)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    umount();
    assert!(
        !out.status.success(),
        "a failed save was not reported: {stdout}"
    );
    assert!(
        stdout.contains("hd-full: shut down (not saved)"),
        "{stdout}"
    );
    assert!(names.is_empty(), "a partial save file is left: {names:?}");
    assert!(h.list_row("hd-full").is_none(), "the domain still runs");
    let log = h.rxend_log();
    assert!(log.contains("cannot save domain hd-full"), "{log}");
}
