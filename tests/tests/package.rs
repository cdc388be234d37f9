//! The Debian package: `scripts/package-deb.sh` builds it from the binaries already built,
//! `dpkg -i` installs it, an rxend started from /usr/bin with the packaged
//! /etc/rxen/rxend.toml (and a state directory of the test's own) boots a test guest that
//! `/usr/bin/rxl create` asks for, with /usr/bin/rxen-vmm; the manual pages and completion
//! are where man and bash look; `dpkg --purge` removes it all, also when the test fails.
//! The other tests use target/'s binaries, so the installed package does not touch them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rxen_e2e::{bin_dir, pids_with, remove_cgroups, wait_until};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a dpkg command, waiting (up to 2 minutes) while another dpkg or apt holds the lock.
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = run(Command::new("dpkg").args(args));
        let locked = String::from_utf8_lossy(&out.stderr).contains("lock");
        if out.status.success() || !locked || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Purges the package when dropped: after the test, whatever happened in it.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let out = dpkg(&["--purge", "rxen"]);
        if !out.status.success() {
            eprintln!("dpkg --purge rxen failed: {}", text(&out));
        }
    }
}

/// The installed rxend, its VMMs and cgroups, cleaned up when dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
    cgroup: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let marker = self.dir.to_string_lossy().into_owned();
        for pid in pids_with(&["rxen-vmm", &marker]) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_cgroups(&self.cgroup);
    }
}

#[test]
fn the_package_installs_runs_a_guest_from_usr_bin_and_purges() {
    let tmp = tempfile::Builder::new()
        .prefix("rxen-e2e-deb-")
        .tempdir()
        .expect("tempdir");
    let out = run(Command::new(repo_root().join("scripts/package-deb.sh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(tmp.path().join("out"))
        .arg("--fast"));
    assert!(out.status.success(), "package-deb.sh: {}", text(&out));
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let name = deb.file_name().and_then(|n| n.to_str()).expect("deb name");
    assert!(
        name.starts_with("rxen_") && name.ends_with("_amd64.deb"),
        "{name}"
    );
    let info = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"));
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("libc6 (>= 2."),
        "{}",
        text(&info)
    );

    let _installed = Installed;
    let out = dpkg(&["-i", deb.to_str().expect("utf-8")]);
    assert!(out.status.success(), "dpkg -i: {}", text(&out));
    for f in [
        "/usr/bin/rxl",
        "/usr/bin/rxend",
        "/usr/bin/rxen-vmm",
        "/usr/bin/rxen-shell",
        "/usr/share/bash-completion/completions/rxl",
        "/usr/share/zsh/vendor-completions/_rxl",
        "/lib/systemd/system/rxend.service",
        "/etc/rxen/rxend.toml",
    ] {
        assert!(Path::new(f).exists(), "{f} is installed");
    }
    let unit = fs::read_to_string("/lib/systemd/system/rxend.service").expect("unit");
    assert!(unit.contains("ExecStart=/usr/bin/rxend "), "{unit}");
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "rxen"]));
    assert!(
        String::from_utf8_lossy(&conffiles.stdout).contains("/etc/rxen/rxend.toml"),
        "{}",
        text(&conffiles)
    );
    for (page, section) in [
        ("rxl", "1"),
        ("rxl-cpupool-list", "1"),
        ("rxen-shell", "1"),
        ("rxl.cfg", "5"),
        ("rxend", "8"),
    ] {
        let out = run(Command::new("man").args(["-w", section, page]));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("/usr/share/man/man{section}/{page}.{section}.gz"),
            "man -w {page}: {}",
            text(&out)
        );
    }

    // rxend from /usr/bin, with the packaged config and a state directory of this test's own.
    let dir = tmp.path().join("host");
    fs::create_dir(&dir).expect("host dir");
    let socket = dir.join("rxend.sock");
    let cgroup = format!("rxen-e2e-deb-{}", std::process::id());
    let child = Command::new("/usr/bin/rxend")
        .args(["--config", "/etc/rxen/rxend.toml", "--cgroup", &cgroup])
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("rxend.stderr")).expect("stderr file"))
        .spawn()
        .expect("start /usr/bin/rxend");
    let _daemon = Daemon {
        child,
        dir: dir.clone(),
        cgroup,
    };
    wait_until(
        Duration::from_secs(10),
        "the installed rxend listens",
        || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
    );
    let rxl = |args: &[&str]| {
        run(Command::new("/usr/bin/rxl")
            .args(args)
            .env("RXEN_SOCKET", &socket)
            .env("RXEN_NO_AUTOSTART", "1"))
    };
    let cfg = dir.join("pkg.cfg");
    fs::write(
        &cfg,
        "name = \"pkgguest\"\nkernel = \"builtin:testguest\"\nmemory = 16\nvcpus = 1\n",
    )
    .expect("config");
    let out = rxl(&["create", cfg.to_str().expect("utf-8")]);
    assert!(out.status.success(), "/usr/bin/rxl create: {}", text(&out));
    let out = rxl(&["domid", "pkgguest"]);
    let id: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("domid: {}", text(&out)));
    let console = dir
        .join("state/dom")
        .join(id.to_string())
        .join("console.log");
    wait_until(Duration::from_secs(30), "the guest boots", || {
        fs::read_to_string(&console).is_ok_and(|t| t.contains("booted on 1 vCPUs with 16 MiB"))
    });
    let vmm = pids_with(&["rxen-vmm", &dir.to_string_lossy()]);
    assert_eq!(vmm.len(), 1, "one VMM: {vmm:?}");
    assert_eq!(
        fs::read_link(format!("/proc/{}/exe", vmm[0])).expect("exe"),
        PathBuf::from("/usr/bin/rxen-vmm")
    );
    let out = rxl(&["list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pkgguest"),
        "{}",
        text(&out)
    );
    let out = rxl(&["destroy", "pkgguest"]);
    assert!(out.status.success(), "destroy: {}", text(&out));
    drop(_daemon);

    drop(_installed);
    for f in [
        "/usr/bin/rxl",
        "/etc/rxen/rxend.toml",
        "/usr/share/man/man1/rxl.1.gz",
    ] {
        assert!(!Path::new(f).exists(), "{f} is gone after the purge");
    }
}
