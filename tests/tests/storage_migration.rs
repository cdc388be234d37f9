//! Storage migration (`rxl migrate --copy-storage`) between two rxend "hosts" in network
//! namespaces that share no storage: each has a directory of its own, the target's being its
//! `[relocation] storage-dir`. A raw disk and a qcow2 overlay (with a backing file) move
//! while the guest writes to both; the copies are checked with sha256 and `qemu-img`. A
//! target whose storage directory holds the file already refuses, and a target killed
//! mid-copy leaves the source running and nothing behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rxen_e2e::{blk_pattern, migrated, wait_until, Console, Host, NetPair};

const BOOT: Duration = Duration::from_secs(30);

/// Bursts the guest writes to each disk during the migration.
const BURSTS: u64 = 8;
/// Sectors per burst.
const BURST_SECTORS: u64 = 16;
/// The disks' size (both: the raw file and the qcow2 image's virtual size).
const DISK_MIB: u64 = 16;

/// The first sector of burst `i` (apart, in different 64 KiB blocks).
fn burst_sector(i: u64) -> u64 {
    4096 + i * 512
}

/// The data seed of burst `i` on disk `d`.
fn burst_seed(d: u64, i: u64) -> u32 {
    (100 + d * 50 + i) as u32
}

/// Runs `cmd args` ([`rxen_e2e::run_tool`]).
fn run(cmd: &str, args: &[&str]) -> String {
    rxen_e2e::run_tool(None, cmd, args)
}

fn sha256(path: &Path) -> String {
    let out = run("sha256sum", &[path.to_str().expect("utf-8")]);
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Two hosts with storage of their own: A (source) and B (target, relocation server
/// allowing A, its storage directory `storage_b`).
struct Pair {
    // Fields drop in order: hosts (and their VMMs) before the network and the directories.
    a: Host,
    b: Host,
    net: NetPair,
    key: String,
    storage_a: tempfile::TempDir,
    storage_b: tempfile::TempDir,
    _keys: tempfile::TempDir,
}

fn pair() -> Pair {
    let net = NetPair::new();
    let keys = tempfile::tempdir().expect("tmp");
    let key = keys.path().join("relocation.key");
    std::fs::write(&key, "a shared secret of enough length\n").expect("key");
    let key = key.display().to_string();
    let storage_a = tempfile::tempdir().expect("tmp");
    let storage_b = tempfile::tempdir().expect("tmp");
    let allow = format!("\"^{}$\"", net.addr_a.replace('.', "\\\\."));
    let config = |addr: &str, dir: &Path| {
        format!(
            "[relocation]\nserver = true\naddress = \"{addr}\"\nport = 8002\nhosts-allow = [{allow}]\nkey-file = \"{key}\"\nstorage-dir = \"{}\"\n",
            dir.display()
        )
    };
    let a = Host::start_in(&net.a, &config(net.addr_a, storage_a.path()));
    let b = Host::start_in(&net.b, &config(net.addr_b, storage_b.path()));
    wait_until(BOOT, "B's relocation server listens", || {
        b.rxend_log().contains("relocation server listening")
    });
    Pair {
        a,
        b,
        net,
        key,
        storage_a,
        storage_b,
        _keys: keys,
    }
}

impl Pair {
    /// `rxl migrate --copy-storage -v --key KEY NAME B` on A.
    fn migrate(&self, name: &str) -> std::process::Output {
        self.a.rxl(&[
            "migrate",
            "--copy-storage",
            "-v",
            "--key",
            &self.key,
            name,
            self.net.addr_b,
        ])
    }

    /// The files in B's storage directory.
    fn on_b(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.storage_b.path())
            .expect("storage dir")
            .map(|e| e.expect("entry").path())
            .collect();
        v.sort();
        v
    }

    /// A raw image of DISK_MIB MiB with data at its start and a hole after, and a qcow2
    /// overlay of the same size over a qcow2 base with data; returns (raw, overlay, base).
    fn disks(&self) -> (PathBuf, PathBuf, PathBuf) {
        let dir = self.storage_a.path();
        let raw = dir.join("data.raw");
        let f = std::fs::File::create(&raw).expect("raw");
        f.set_len(DISK_MIB << 20).expect("size");
        use std::os::unix::fs::FileExt;
        f.write_all_at(&blk_pattern(11, 256 << 10), 0)
            .expect("data");
        f.write_all_at(&blk_pattern(12, 64 << 10), 9 << 20)
            .expect("data");
        let base = dir.join("base.qcow2");
        let size = format!("{DISK_MIB}M");
        let b = base.to_str().expect("utf-8");
        run("qemu-img", &["create", "-q", "-f", "qcow2", b, &size]);
        run(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -q -P 0x77 0 512k", b],
        );
        let top = dir.join("top.qcow2");
        let t = top.to_str().expect("utf-8");
        run(
            "qemu-img",
            &[
                "create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", t, &size,
            ],
        );
        run(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -q -P 0x3c 4M 256k", t],
        );
        (raw, top, base)
    }

    fn guest(&self, name: &str, raw: &Path, top: &Path) -> Console {
        self.a.create_guest(
            name,
            1,
            16,
            &format!(
                "disk = [ 'file:{},xvda,w', 'qcow2:{},xvdb,w' ]",
                raw.display(),
                top.display()
            ),
        )
    }
}

#[test]
fn raw_and_qcow2_disks_move_while_the_guest_writes() {
    let p = pair();
    let (raw, top, _base) = p.disks();
    let mut con = p.guest("smig", &raw, &top);
    con.sync();
    con.blkwrite_flushed("xvda", 100, 16, 7);
    con.blkwrite_flushed("xvdb", 200, 16, 8);
    let before = {
        let mut last = 0;
        wait_until(BOOT, "the heartbeat grows", || {
            last = con.heartbeat();
            last > 2
        });
        last
    };
    let since = std::time::Instant::now();
    // Numbered blocks to both disks, typed at once: the guest runs them one after the
    // other, on A and then on B.
    let acked_before = con.output().matches("blkwrite ok").count();
    let done = format!("storagedone{}", std::process::id());
    let mut typed = String::new();
    for i in 0..BURSTS {
        for (d, disk) in ["xvda", "xvdb"].iter().enumerate() {
            typed.push_str(&format!(
                "blkwrite {disk} {} {BURST_SECTORS} {}\n",
                burst_sector(i),
                burst_seed(d as u64, i)
            ));
        }
    }
    typed.push_str(&format!("{done}\n"));
    con.type_text(&typed);
    con.wait_for("blkwrite ok", BOOT);
    let out = p.migrate("smig");
    let stdout = migrated(&out, &p.a, &p.b);
    eprintln!("{stdout}");
    assert!(stdout.contains("; disks "), "no disk figures: {stdout}");
    assert!(
        stdout.contains("last disk blocks"),
        "no disk phase in -v: {stdout}"
    );
    assert!(p.a.list_row("smig").is_none(), "still on A");
    let acked_on_a = con.output().matches("blkwrite ok").count() - acked_before;
    // B made the images in its storage directory and the domain uses them.
    let raw_b = p.storage_b.path().join("smig-xvda.raw");
    let qcow_b = p.storage_b.path().join("smig-xvdb.qcow2");
    assert_eq!(p.on_b(), vec![raw_b.clone(), qcow_b.clone()]);
    let long = p.b.rxl_ok(&["list", "-l", "smig"]);
    assert!(
        long.contains(raw_b.to_str().expect("utf-8"))
            && long.contains(qcow_b.to_str().expect("utf-8")),
        "B's record does not name the copies: {long}"
    );
    let mut con = p.b.console("smig");
    con.wait_for(
        &format!("unknown command: {done}"),
        Duration::from_secs(300),
    );
    assert!(!con.output().contains("blkwrite error"), "{}", con.output());
    let after = con.heartbeat();
    let ticks = since.elapsed().as_millis() as u64 / 100 + 20;
    assert!(
        after >= before && after <= before + ticks,
        "heartbeat {before} before, {after} after"
    );
    // Every block reads back on B: those acknowledged on A before the pause and the rest.
    con.assert_blkread("xvda", 100, 16, 7);
    con.assert_blkread("xvdb", 200, 16, 8);
    for i in 0..BURSTS {
        con.assert_blkread("xvda", burst_sector(i), BURST_SECTORS, burst_seed(0, i));
        con.assert_blkread("xvdb", burst_sector(i), BURST_SECTORS, burst_seed(1, i));
    }
    // What A had before the guest wrote reads back too (the raw file's data, the base's).
    con.send("blkread xvda 0 16");
    let line = con.wait_for("blkread crc32=", BOOT);
    let want = crc32fast::hash(&blk_pattern(11, 16 * 512));
    assert!(line.ends_with(&format!("crc32={want:08x}")), "{line}");
    // The guest is idle: shut it down so that B's images are final.
    con.send("shutdown");
    wait_until(BOOT, "the domain ends on B", || {
        p.b.list_row("smig").is_none()
    });
    // A's images are final since its VMM left. B's raw file is A's with every burst (those
    // written on B after the move) in place, byte for byte.
    let expected = p.storage_a.path().join("expected.raw");
    std::fs::copy(&raw, &expected).expect("copy");
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(&expected)
        .expect("open");
    use std::os::unix::fs::FileExt;
    for i in 0..BURSTS {
        let data = blk_pattern(burst_seed(0, i), (BURST_SECTORS * 512) as usize);
        e.write_all_at(&data, burst_sector(i) * 512).expect("write");
    }
    drop(e);
    assert_eq!(sha256(&raw_b), sha256(&expected), "raw copies differ");
    // Sparse: the source's holes were not sent, so they are holes on B too.
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&raw_b).expect("stat").blocks() * 512;
    assert!(
        allocated < (DISK_MIB << 20) / 2,
        "B's raw copy is not sparse: {allocated} bytes allocated"
    );
    // The qcow2 copy: a standalone, consistent image whose guest view is A's chain's with
    // the bursts in place.
    let qb = qcow_b.to_str().expect("utf-8");
    run("qemu-img", &["check", "-q", qb]);
    let info = run("qemu-img", &["info", qb]);
    assert!(!info.contains("backing file"), "{info}");
    let view = p.storage_a.path().join("view.raw");
    let v = view.to_str().expect("utf-8");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            top.to_str().expect("utf-8"),
            v,
        ],
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&view)
        .expect("open");
    for i in 0..BURSTS {
        let data = blk_pattern(burst_seed(1, i), (BURST_SECTORS * 512) as usize);
        f.write_all_at(&data, burst_sector(i) * 512).expect("write");
    }
    drop(f);
    run(
        "qemu-img",
        &["compare", "-q", "-f", "raw", "-F", "qcow2", v, qb],
    );
    eprintln!(
        "storage migration: {acked_on_a} of {} blocks acknowledged on A before the pause",
        2 * BURSTS
    );
    for f in [&expected, &view] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn a_target_that_has_the_file_refuses_and_one_killed_mid_copy_leaves_nothing() {
    let p = pair();
    let (raw, top, _base) = p.disks();
    let mut con = p.guest("smig2", &raw, &top);
    con.sync();
    let hb = con.heartbeat();
    // B's storage directory holds the raw disk's name already: refused before anything
    // is sent; that file is untouched and no other is made.
    let taken = p.storage_b.path().join("smig2-xvda.raw");
    std::fs::write(&taken, b"someone else's").expect("write");
    let out = p.migrate("smig2");
    assert!(!out.status.success(), "migrated over an existing file");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("smig2-xvda.raw"), "{err}");
    assert_eq!(p.on_b(), vec![taken.clone()]);
    assert_eq!(std::fs::read(&taken).expect("read"), b"someone else's");
    assert!(p.b.list_row("smig2").is_none());
    let row = p.a.list_row("smig2").expect("the source lost its domain");
    assert!(row[4] == "-b----" || row[4] == "r-----", "{row:?}");
    let hb = {
        let mut last = 0;
        wait_until(BOOT, "the heartbeat grows on A", || {
            last = con.heartbeat();
            last > hb
        });
        last
    };
    std::fs::remove_file(&taken).expect("rm");
    // An incremental backup chain starts here: the failed migration below must leave the
    // disks' dirty maps as they were (given back), so the next backup is an increment.
    let chain = p.storage_a.path().join("chain");
    let chain = chain.to_str().expect("utf-8");
    p.a.rxl_ok(&["backup", "--incremental", "smig2", chain]);

    // The receiving VMM killed as soon as it exists (while the disks are copied): the
    // migration fails, the source runs on, B removes the images it made.
    let killer = rxen_e2e::kill_first_vmm_of(&p.b);
    let out = p.migrate("smig2");
    assert!(killer.join().expect("killer"), "no receiving VMM appeared");
    assert!(
        !out.status.success(),
        "the migration succeeded though the target was killed"
    );
    let row = p.a.list_row("smig2").expect("the source lost its domain");
    assert!(row[4] == "-b----" || row[4] == "r-----", "{row:?}");
    wait_until(BOOT, "the heartbeat grows on A", || con.heartbeat() > hb);
    con.blkwrite_flushed("xvda", 300, 8, 21);
    con.assert_blkread("xvda", 300, 8, 21);
    let out = p.a.rxl_ok(&["backup", "--incremental", "smig2", chain]);
    assert!(
        out.contains("xvda 65536 bytes (increment)"),
        "the failed migration disturbed the dirty maps: {out}"
    );
    wait_until(BOOT, "B removes the images it made", || p.on_b().is_empty());
    assert!(p.b.list_row("smig2").is_none());
}
