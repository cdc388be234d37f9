//! `rxl backup` and `rxl backup-restore`: a running domain's state and disk, taken at one
//! instant, come back exactly as they were at that instant (memory and disk), while what the
//! guest wrote after the backup is gone; the domain runs on after a backup; a damaged backup is
//! refused before anything is touched. Incremental backups: a chain (0000-full, 0001-incr, ...)
//! whose increments hold only the blocks the guest wrote, each point restored exactly; a failed
//! increment gives the dirty map back, and one cut short by killing rxend leaves the chain
//! restorable and the next backup correct; a qcow2 overlay's increments hold the guest's
//! blocks and rebuild a sound image on the same backing file.

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

/// 64 MiB: the disk of the incremental tests.
const DISK_BYTES: u64 = 64 << 20;

/// Where the incremental tests' disk holds data from the start: its last 24 MiB.
const FILLED_FROM: u64 = 40 << 20;

/// A guest with one 64 MiB sparse file disk (xvda): zeros, then 24 MiB of data.
fn incr_guest(h: &Host, name: &str) -> (Console, PathBuf) {
    use std::os::unix::fs::FileExt;
    let img = h.dir.path().join(format!("{name}.img"));
    let f = fs::File::create(&img).expect("image");
    f.set_len(DISK_BYTES).expect("image size");
    f.write_all_at(
        &vec![0xab; (DISK_BYTES - FILLED_FROM) as usize],
        FILLED_FROM,
    )
    .expect("image data");
    drop(f);
    let con = h.create_guest(
        name,
        1,
        32,
        &format!("disk = [ 'file:{},xvda,w' ]", img.display()),
    );
    (con, img)
}

/// Asserts that the guest reads zeros at sectors `sector..+8` of xvda.
fn assert_zeros(con: &mut Console, sector: u64) {
    con.send(&format!("blkread xvda {sector} 8"));
    let line = con.wait_for("blkread crc32=", CMD);
    let want = crc32fast::hash(&[0u8; 4096]);
    assert!(
        line.ends_with(&format!("crc32={want:08x}")),
        "xvda {sector}+8 is not zeros: {line}"
    );
}

/// `rxl backup --incremental NAME DIR`: the backup's directory and what rxl said.
fn incr_backup(h: &Host, name: &str, store: &Path) -> (PathBuf, String) {
    let out = h.rxl_ok(&[
        "backup",
        "--incremental",
        name,
        store.to_str().expect("utf-8"),
    ]);
    (backed_up_to(out.trim()), out)
}

/// Sectors of the incremental tests' patterns: 0, 4 MiB and 32 MiB.
const S0: u64 = 0;
const S1: u64 = 8192;
const S2: u64 = 65536;

#[test]
fn incremental_backups_hold_only_what_changed_and_restore_each_instant() {
    let h = Host::start();
    let (mut con, _img) = incr_guest(&h, "inc");
    let store = h.dir.path().join("chain");
    con.blkwrite_flushed("xvda", S0, 8, 1);
    let (p0, out) = incr_backup(&h, "inc", &store);
    assert_eq!(p0, store.join("0000-full"), "{out}");
    con.blkwrite_flushed("xvda", S1, 8, 2);
    let (p1, out) = incr_backup(&h, "inc", &store);
    assert_eq!(p1, store.join("0001-incr"), "{out}");
    assert!(out.contains("(increment)"), "{out}");
    // Only the 64 KiB block written since the full backup.
    let incr = fs::metadata(p1.join("xvda.incr")).expect("increment").len();
    assert_eq!(incr, 64 << 10, "{out}");
    assert!(incr * 100 < DISK_BYTES);
    con.blkwrite_flushed("xvda", S0, 8, 3);
    con.blkwrite_flushed("xvda", S2, 8, 4);
    let (p2, out) = incr_backup(&h, "inc", &store);
    assert_eq!(p2, store.join("0002-incr"), "{out}");
    let incr2 = fs::metadata(p2.join("xvda.incr")).expect("increment").len();
    assert_eq!(incr2, 128 << 10, "{out}");
    let full = stored_bytes(&p0.join("xvda.img"));
    eprintln!(
        "disk {DISK_BYTES} bytes; full backup stores {full} bytes; increments {incr} and {incr2}"
    );
    assert!(full >= DISK_BYTES - FILLED_FROM, "{full}");
    assert!(incr2 * 100 < full, "{incr2} against {full}");
    // Written after the last backup: in no backup.
    con.blkwrite_flushed("xvda", S1, 8, 5);
    drop(con);
    h.rxl_ok(&["destroy", "inc"]);

    let store_s = store.to_str().expect("utf-8");
    let restore_and_check = |args: &[&str], check: &dyn Fn(&mut Console)| {
        h.rxl_ok(args);
        let mut con = h.console("inc");
        beats_on(&mut con);
        check(&mut con);
        drop(con);
        h.rxl_ok(&["destroy", "inc"]);
    };
    restore_and_check(&["backup-restore", store_s, "0000-full"], &|con| {
        con.assert_blkread("xvda", S0, 8, 1);
        assert_zeros(con, S1);
        assert_zeros(con, S2);
    });
    // A backup of the chain named by its own directory.
    restore_and_check(&["backup-restore", p1.to_str().expect("utf-8")], &|con| {
        con.assert_blkread("xvda", S0, 8, 1);
        con.assert_blkread("xvda", S1, 8, 2);
        assert_zeros(con, S2);
    });
    // The chain's directory alone: its latest. The restored VMM's dirty map is new (it cannot
    // know what the disk went through since the save), so the next backup copies the disk whole.
    restore_and_check(&["backup-restore", store_s], &|con| {
        con.assert_blkread("xvda", S0, 8, 3);
        con.assert_blkread("xvda", S1, 8, 2);
        con.assert_blkread("xvda", S2, 8, 4);
        let (p3, out) = incr_backup(&h, "inc", &store);
        assert_eq!(p3, store.join("0003-incr"), "{out}");
        assert!(!out.contains("(increment)"), "{out}");
        assert!(p3.join("xvda.img").exists(), "{out}");
    });
    restore_and_check(&["backup-restore", store_s], &|con| {
        con.assert_blkread("xvda", S0, 8, 3);
        con.assert_blkread("xvda", S1, 8, 2);
        con.assert_blkread("xvda", S2, 8, 4);
    });
    // A damaged increment is refused before the disk is touched.
    corrupt(&p1.join("xvda.incr"));
    let out = h.rxl(&["backup-restore", store_s, "0002-incr"]);
    assert!(!out.status.success(), "a damaged chain was restored");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match the manifest"), "{err}");
}

/// Bytes a file takes on disk (its allocated blocks).
fn stored_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

#[test]
fn a_failed_or_interrupted_increment_leaves_the_chain_restorable_and_the_next_correct() {
    let mut h = Host::start();
    let (mut con, _img) = incr_guest(&h, "cut");
    let store = h.dir.path().join("chain");
    con.blkwrite_flushed("xvda", S0, 8, 1);
    incr_backup(&h, "cut", &store);
    con.blkwrite_flushed("xvda", S1, 8, 2);

    // An increment that fails after taking the dirty map (its place is taken): the map is
    // given back, so the next increment still holds the block written before the failure.
    let blocker = store.join("0001-incr");
    fs::create_dir_all(blocker.join("stray")).expect("blocker");
    let out = h.rxl(&[
        "backup",
        "--incremental",
        "cut",
        store.to_str().expect("utf-8"),
    ]);
    assert!(
        !out.status.success(),
        "the backup into a taken place succeeded"
    );
    fs::remove_dir_all(&blocker).expect("remove blocker");
    con.blkwrite_flushed("xvda", S2, 8, 3);
    let (p1, out) = incr_backup(&h, "cut", &store);
    assert!(out.contains("(increment)"), "{out}");
    assert_eq!(
        fs::metadata(p1.join("xvda.incr")).expect("increment").len(),
        128 << 10,
        "the increment lacks the block written before the failed one: {out}"
    );

    // Backups cut short by killing rxend: once while the state is being saved (before the
    // maps are read), once after the maps were read (the increment's file exists), with 4 MiB
    // written so that the copy takes a while. Wherever a kill lands (a backup may even have
    // finished), the chain before it stays whole and the next backup holds every write.
    con.blkwrite_flushed("xvda", S0, 8, 4);
    let mut next = 2;
    let started = |p: &Path| p.exists();
    let copying = |p: &Path| p.join("xvda.incr").exists() || p.join("xvda.img").exists();
    for (stage, trigger) in [
        ("saving", &started as &dyn Fn(&Path) -> bool),
        ("copying", &copying),
    ] {
        if stage == "copying" {
            con.blkwrite_flushed("xvda", BIG, BIG_SECTORS, 5);
        }
        let finished = kill_mid_backup(&mut h, "cut", &store, next, trigger);
        wait_until(Duration::from_secs(30), "the domain runs again", || {
            // It may have been left paused by the save it was taking (which the VMM finishes).
            let _ = h.rxl(&["unpause", "cut"]);
            h.list_row("cut")
                .and_then(|r| r.get(4).cloned())
                .is_some_and(|state| !state.contains('p'))
        });
        beats_on(&mut con);
        if finished {
            next += 1;
        }
        let (p, out) = incr_backup(&h, "cut", &store);
        assert_eq!(p, store.join(format!("{next:04}-incr")), "{out}");
        eprintln!("rxend killed while {stage}, the backup finished: {finished}; the next: {out}");
        if stage == "copying" && !finished {
            // The maps were read and rxend died with them: the disk is copied whole.
            assert!(p.join("xvda.img").exists(), "{out}");
        }
        next += 1;
    }
    drop(con);
    h.rxl_ok(&["destroy", "cut"]);
    let store_s = store.to_str().expect("utf-8");
    h.rxl_ok(&["backup-restore", store_s, "0001-incr"]);
    let mut con = h.console("cut");
    beats_on(&mut con);
    con.assert_blkread("xvda", S0, 8, 1);
    con.assert_blkread("xvda", S1, 8, 2);
    con.assert_blkread("xvda", S2, 8, 3);
    drop(con);
    h.rxl_ok(&["destroy", "cut"]);
    h.rxl_ok(&["backup-restore", store_s]);
    let mut con = h.console("cut");
    beats_on(&mut con);
    con.assert_blkread("xvda", S0, 8, 4);
    con.assert_blkread("xvda", S1, 8, 2);
    con.assert_blkread("xvda", S2, 8, 3);
    // The large write, read back at its start, middle and end (its pattern repeats every
    // sector, so each 4 KiB of it reads as the pattern's start).
    for at in [BIG, BIG + BIG_SECTORS / 2, BIG + BIG_SECTORS - 8] {
        con.assert_blkread("xvda", at, 8, 5);
    }
}

/// 4 MiB from 8 MiB: the large write of the interrupted backups.
const BIG: u64 = 16384;
const BIG_SECTORS: u64 = 8192;

/// Starts `rxl backup --incremental` of `name` into `store` (backup `index` of the chain),
/// kills rxend as soon as `trigger` holds for the backup's partial directory, and restarts
/// it; returns whether the backup had finished anyway.
fn kill_mid_backup(
    h: &mut Host,
    name: &str,
    store: &Path,
    index: u32,
    trigger: &dyn Fn(&Path) -> bool,
) -> bool {
    let mut child = h
        .rxl_command()
        .args([
            "backup",
            "--incremental",
            name,
            store.to_str().expect("utf-8"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rxl backup");
    let partial = store.join(format!(".{index:04}-incr.partial"));
    let done = store.join(format!("{index:04}-incr"));
    // Polled tightly: such a backup is short.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(trigger(&partial) || done.exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup did not reach its point"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    h.kill_rxend();
    let finished = done.join("manifest.json").exists();
    let _ = child.wait();
    h.start_rxend();
    finished
}

/// `qemu-img check IMAGE` finds no error.
fn qemu_img_check(image: &Path) {
    rxen_e2e::run_tool(None, "qemu-img", &["check", image.to_str().expect("utf-8")]);
}

#[test]
fn incremental_backups_of_a_qcow2_overlay_hold_guest_blocks_and_restore_each_instant() {
    let h = Host::start();
    let dir = h.dir.path();
    // A base image with data, and the domain's overlay on it (relative backing name).
    let qemu_img = |args: &[&str]| rxen_e2e::run_tool(Some(dir), "qemu-img", args);
    qemu_img(&["create", "-q", "-f", "qcow2", "base.qcow2", "64M"]);
    rxen_e2e::run_tool(
        Some(dir),
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xab 40M 8M", "base.qcow2"],
    );
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
    ]);
    let top = dir.join("top.qcow2");
    let mut con = h.create_guest(
        "qinc",
        1,
        32,
        &format!("disk = [ 'qcow2:{},xvda,w' ]", top.display()),
    );
    let store = h.dir.path().join("qchain");
    con.blkwrite_flushed("xvda", S0, 8, 1);
    let (p0, out) = incr_backup(&h, "qinc", &store);
    assert_eq!(p0, store.join("0000-full"), "{out}");
    con.blkwrite_flushed("xvda", S1, 8, 2);
    let (p1, out) = incr_backup(&h, "qinc", &store);
    assert!(out.contains("(increment)"), "{out}");
    // One 64 KiB block of guest data, whatever the image's clusters.
    let incr = fs::metadata(p1.join("xvda.incr")).expect("increment").len();
    assert_eq!(incr, 64 << 10, "{out}");
    // A write over the backing file's data: the increment holds the guest's view.
    let over_base = (41u64 << 20) / 512;
    con.blkwrite_flushed("xvda", S0, 8, 3);
    con.blkwrite_flushed("xvda", over_base, 8, 4);
    let (p2, out) = incr_backup(&h, "qinc", &store);
    assert_eq!(p2, store.join("0002-incr"), "{out}");
    assert_eq!(
        fs::metadata(p2.join("xvda.incr")).expect("increment").len(),
        128 << 10,
        "{out}"
    );
    let manifest = fs::read_to_string(p2.join("manifest.json")).expect("manifest");
    assert!(manifest.contains("\"format\": \"qcow2\""), "{manifest}");
    // After the last backup: in none.
    con.blkwrite_flushed("xvda", S1, 8, 5);
    drop(con);
    h.rxl_ok(&["destroy", "qinc"]);

    let store_s = store.to_str().expect("utf-8");
    let base_crc = format!("crc32={:08x}", crc32fast::hash(&[0xabu8; 4096]));
    let restore_and_check = |which: &str, check: &dyn Fn(&mut Console)| {
        h.rxl_ok(&["backup-restore", store_s, which]);
        // The rebuilt overlay is a sound qcow2 image on the same backing file.
        qemu_img_check(&top);
        let mut con = h.console("qinc");
        beats_on(&mut con);
        check(&mut con);
        drop(con);
        h.rxl_ok(&["destroy", "qinc"]);
    };
    restore_and_check("0001-incr", &|con| {
        con.assert_blkread("xvda", S0, 8, 1);
        con.assert_blkread("xvda", S1, 8, 2);
        con.send(&format!("blkread xvda {over_base} 8"));
        let line = con.wait_for("blkread crc32=", CMD);
        assert!(line.ends_with(&base_crc), "the base's data is gone: {line}");
    });
    restore_and_check("0002-incr", &|con| {
        con.assert_blkread("xvda", S0, 8, 3);
        con.assert_blkread("xvda", S1, 8, 2);
        con.assert_blkread("xvda", over_base, 8, 4);
    });
    restore_and_check("0000-full", &|con| {
        con.assert_blkread("xvda", S0, 8, 1);
        assert_zeros(con, S1);
    });
}

#[test]
fn a_disk_hot_plugged_after_a_backup_is_copied_whole_then_by_increments() {
    let h = Host::start();
    let (mut con, _img) = incr_guest(&h, "hot");
    let store = h.dir.path().join("chain");
    con.blkwrite_flushed("xvda", S0, 8, 1);
    incr_backup(&h, "hot", &store);
    let img_b = h.dir.path().join("hotb.img");
    fs::File::create(&img_b)
        .and_then(|f| f.set_len(8 << 20))
        .expect("image");
    h.rxl_ok(&[
        "block-attach",
        "hot",
        &format!("file:{},xvdb,w", img_b.display()),
    ]);
    con.wait_for("xvdb attached", CMD);
    con.blkwrite_flushed("xvdb", 0, 8, 7);
    con.blkwrite_flushed("xvda", S1, 8, 2);
    let (p1, out) = incr_backup(&h, "hot", &store);
    assert!(out.contains("xvda 65536 bytes (increment)"), "{out}");
    assert!(
        p1.join("xvdb.img").exists(),
        "xvdb is not copied whole: {out}"
    );
    con.blkwrite_flushed("xvdb", 256, 8, 8);
    let (_p2, out) = incr_backup(&h, "hot", &store);
    assert!(out.contains("xvdb 65536 bytes (increment)"), "{out}");
    drop(con);
    h.rxl_ok(&["destroy", "hot"]);
    h.rxl_ok(&["backup-restore", store.to_str().expect("utf-8")]);
    let mut con = h.console("hot");
    beats_on(&mut con);
    con.assert_blkread("xvda", S0, 8, 1);
    con.assert_blkread("xvda", S1, 8, 2);
    con.assert_blkread("xvdb", 0, 8, 7);
    con.assert_blkread("xvdb", 256, 8, 8);
}
