//! `rxl backup` and `rxl backup-restore`: a running domain's state and disk, taken at one
//! instant, come back exactly as they were at that instant (memory and disk), while what the
//! guest wrote after the backup is gone; the domain runs on after a backup; a damaged backup is
//! refused before anything is touched.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rxen_e2e::{wait_until, Console, Host};

const CMD: Duration = Duration::from_secs(30);

/// The guest's CRC of sectors 0..8 of xvda.
fn crc(con: &mut Console) -> String {
    con.sync();
    con.send("blkread xvda 0 8");
    let line = con.wait_line("blkread crc32=", CMD);
    line.rsplit('=')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn write(con: &mut Console, seed: u32) {
    con.send(&format!("blkwrite xvda 0 8 {seed}"));
    con.wait_for("blkwrite ok", CMD);
    con.send("blkflush xvda");
    con.wait_for("blkflush ok", CMD);
}

/// The backup directory `rxl backup` printed.
fn backed_up_to(out: &str) -> PathBuf {
    let rest = out
        .strip_prefix("Backed up to ")
        .unwrap_or_else(|| panic!("rxl backup said {out:?}"));
    PathBuf::from(rest.split(": ").next().unwrap_or_default())
}

fn beats_on(con: &mut Console) {
    let before = con.heartbeat();
    wait_until(Duration::from_secs(10), "the heartbeat moves", || {
        con.heartbeat() > before
    });
}

#[test]
fn a_backup_brings_back_memory_and_disk_of_its_instant() {
    let h = Host::start();
    let img = h.dir.path().join("bk.img");
    fs::File::create(&img)
        .and_then(|f| f.set_len(4 << 20))
        .expect("image");
    let mut con = h.create_guest(
        "bk",
        1,
        32,
        &format!("disk = [ 'file:{},xvda,w' ]", img.display()),
    );
    con.memfill(3);
    let sum = con.memsum();
    write(&mut con, 11);
    let crc_a = crc(&mut con);
    let store = h.dir.path().join("backups");
    let out = h.rxl_ok(&["backup", "bk", store.to_str().expect("utf-8")]);
    let first = backed_up_to(out.trim());
    for f in ["state.save", "xvda.img", "manifest.json"] {
        assert!(
            first.join(f).exists(),
            "{f} missing from {}",
            first.display()
        );
    }
    let manifest = fs::read_to_string(first.join("manifest.json")).expect("manifest");
    assert!(manifest.contains("\"sha256\""), "{manifest}");
    let hidden: Vec<_> = fs::read_dir(&store)
        .expect("store")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "a partial backup is left: {hidden:?}");
    // The domain runs on, and what it writes now is not in the backup.
    beats_on(&mut con);
    write(&mut con, 22);
    assert_ne!(
        crc(&mut con),
        crc_a,
        "the second pattern reads as the first"
    );
    drop(con);
    let second = backed_up_to(
        h.rxl_ok(&["backup", "bk", store.to_str().expect("utf-8")])
            .trim(),
    );
    assert_ne!(first, second);
    h.rxl_ok(&["destroy", "bk"]);

    // A damaged backup is refused before the disk is touched.
    let now = fs::read(&img).expect("image");
    corrupt(&second.join("xvda.img"));
    let out = h.rxl(&["backup-restore", second.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "a damaged backup was restored");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match the manifest"), "{err}");
    assert_eq!(fs::read(&img).expect("image"), now, "the disk changed");
    assert!(h.list_row("bk").is_none());

    // The first backup: memory and disk as they were then.
    h.rxl_ok(&["backup-restore", first.to_str().expect("utf-8")]);
    let mut con = h.console("bk");
    beats_on(&mut con);
    assert_eq!(crc(&mut con), crc_a, "the disk is not the backup's");
    assert_eq!(con.memsum(), sum, "the memory is not the backup's");
    // Restoring over a running domain of that name is refused.
    let out = h.rxl(&["backup-restore", first.to_str().expect("utf-8")]);
    assert!(!out.status.success());
}

fn corrupt(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(b"X", 100).expect("write");
}
