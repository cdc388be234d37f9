//! qcow2 disks on real guests under /dev/kvm with the default sandbox: version 3 and version 2
//! images and a backing chain made by `qemu-img`, read and written by the guest; the results
//! checked with `qemu-img check`, `qemu-io` and `qemu-img convert`; backing files shared
//! read-only and never written; chains that loop refused; hot-plug (an overlay with its
//! chain), save/restore and live migration with qcow2 disks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rxen_e2e::{blk_pattern, migrated, wait_until, Console, Host, NetPair};

const CMD: Duration = Duration::from_secs(30);

/// Runs `cmd args` in `dir` ([`rxen_e2e::run_tool`]).
fn run_in(dir: &Path, cmd: &str, args: &[&str]) -> String {
    rxen_e2e::run_tool(Some(dir), cmd, args)
}

/// `qemu-img create -f qcow2 [OPTIONS] NAME SIZE` in `dir`.
fn qcow2(dir: &Path, name: &str, size: &str, options: &[&str]) -> PathBuf {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(options);
    args.extend_from_slice(&[name, size]);
    run_in(dir, "qemu-img", &args);
    dir.join(name)
}

/// `qemu-io -c COMMAND IMAGE` (the image opened as qcow2); its output.
fn qemu_io(image: &Path, command: &str) -> String {
    let img = image.to_str().expect("utf-8");
    let out = run_in(
        image.parent().expect("dir"),
        "qemu-io",
        &["-f", "qcow2", "-c", command, img],
    );
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("error"),
        "qemu-io -c '{command}' {img}: {out}"
    );
    out
}

/// `qemu-img check`: no errors, no leaks.
fn check(image: &Path) {
    let out = run_in(
        image.parent().expect("dir"),
        "qemu-img",
        &["check", image.to_str().expect("utf-8")],
    );
    assert!(out.contains("No errors were found"), "{out}");
    assert!(!out.contains("leaked"), "{out}");
}

/// The virtual disk's bytes at `offset`, as QEMU reads them (`qemu-img convert -O raw`).
fn qemu_reads(image: &Path, offset: usize, len: usize) -> Vec<u8> {
    let dir = image.parent().expect("dir");
    let raw = dir.join("converted.raw");
    run_in(
        dir,
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().expect("utf-8"),
            raw.to_str().expect("utf-8"),
        ],
    );
    let data = std::fs::read(&raw).expect("read converted image");
    std::fs::remove_file(&raw).expect("remove converted image");
    data[offset..offset + len].to_vec()
}

/// QEMU reads `blk_pattern(seed)` in sectors `sector..sector + count` of `image`.
fn assert_qemu_reads(image: &Path, sector: usize, count: usize, seed: u32) {
    let got = qemu_reads(image, sector * 512, count * 512);
    assert!(
        got == blk_pattern(seed, count * 512),
        "{}: sectors {sector}+{count} are not pattern {seed}",
        image.display()
    );
}

fn crc_line(data: &[u8]) -> String {
    format!("crc32={:08x}", crc32fast::hash(data))
}

/// Waits for a line with `needle` and returns it.
fn answer(con: &Console, needle: &str) -> String {
    con.wait_for(needle, CMD)
}

/// Shuts the guest down and waits until its domain is gone (its VMM closed the images).
fn shut_down(host: &Host, con: &mut Console, name: &str) {
    con.send("shutdown");
    wait_until(CMD, "the domain ends", || host.list_row(name).is_none());
}

fn checksum(path: &Path) -> u32 {
    crc32fast::hash(&std::fs::read(path).expect("read"))
}

#[test]
fn a_guest_reads_through_a_backing_chain_and_writes_v3_and_v2_images() {
    let host = Host::start();
    let dir = host.dir.path();
    // base: 1 MiB of 0x5a at the start; overlay on top (a relative backing name, resolved in
    // the overlay's directory as QEMU does).
    let base = qcow2(dir, "base.qcow2", "8M", &[]);
    qemu_io(&base, "write -q -P 0x5a 0 1M");
    let overlay = qcow2(
        dir,
        "overlay.qcow2",
        "8M",
        &["-b", "base.qcow2", "-F", "qcow2"],
    );
    let v2 = qcow2(dir, "v2.qcow2", "4M", &["-o", "compat=0.10"]);
    let v3 = qcow2(dir, "v3.qcow2", "4M", &[]);
    let base_sum = checksum(&base);

    let mut con = host.create_guest(
        "q",
        1,
        64,
        &format!(
            "disk = [ 'tap:qcow2:{},xvda,w', 'format=qcow2,vdev=xvdb,access=w,target={}', 'qcow2:{},xvdc,w' ]",
            overlay.display(),
            v2.display(),
            v3.display()
        ),
    );
    con.sync();
    con.send("disks");
    assert_eq!(answer(&con, "disk 0 "), "disk 0 xvda 16384 rw");
    assert_eq!(answer(&con, "disk 1 "), "disk 1 xvdb 8192 rw");
    assert_eq!(answer(&con, "disk 2 "), "disk 2 xvdc 8192 rw");

    // The backing file's pattern, through the overlay; zeros beyond it.
    con.send("blkread xvda 0 16");
    assert!(answer(&con, "blkread crc32=").ends_with(&crc_line(&[0x5a; 8192])));
    con.send("blkread xvda 4096 8");
    assert!(answer(&con, "blkread crc32=").ends_with(&crc_line(&[0; 4096])));

    // Writes inside a cluster the base holds (copy-on-write), and on the v2 and v3 images.
    con.blkwrite_flushed("xvda", 100, 16, 7);
    con.assert_blkread("xvda", 100, 16, 7);
    con.blkwrite_flushed("xvdb", 2000, 40, 8);
    con.assert_blkread("xvdb", 2000, 40, 8);
    con.blkwrite_flushed("xvdc", 8100, 91, 9);
    con.assert_blkread("xvdc", 8100, 91, 9);
    // The last sector, and one past the end.
    con.blkwrite_flushed("xvdc", 8191, 1, 10);
    con.send("blkread xvdc 8191 2");
    con.wait_for("blkread error: ioerr", CMD);
    // Written and never flushed by the guest: the VMM writes the image's tables back as it ends.
    con.send("blkwrite xvdc 4000 64 11");
    con.wait_for("blkwrite ok", CMD);
    shut_down(&host, &mut con, "q");

    // The base is untouched; QEMU finds the images sound and reads what the guest wrote.
    assert_eq!(checksum(&base), base_sum, "the backing file was written");
    for image in [&overlay, &v2, &v3, &base] {
        check(image);
    }
    assert_qemu_reads(&overlay, 100, 16, 7);
    // The rest of the copied cluster still holds the base's bytes, through QEMU's reader.
    qemu_io(&overlay, "read -q -P 0x5a 0 51200");
    qemu_io(&overlay, "read -q -P 0x5a 59392 989184");
    qemu_io(&overlay, "read -q -P 0 1M 7M");
    assert_qemu_reads(&v2, 2000, 40, 8);
    assert_qemu_reads(&v3, 8100, 91, 9);
    qemu_io(&v3, "read -q -P 0 0 2048000");
    assert_qemu_reads(&v3, 8191, 1, 10);
    assert_qemu_reads(&v3, 4000, 64, 11);
    let v3_version = run_in(dir, "qemu-img", &["info", "v2.qcow2"]);
    assert!(v3_version.contains("compat: 0.10"), "{v3_version}");

    // Data QEMU writes, the guest reads.
    qemu_io(&v2, "write -q -P 0xc3 1M 64k");
    let mut con = host.create_guest(
        "q2",
        1,
        64,
        &format!("disk = [ 'qcow2:{},xvdb,r' ]", v2.display()),
    );
    con.sync();
    con.send("blkread xvdb 2048 128");
    assert!(answer(&con, "blkread crc32=").ends_with(&crc_line(&[0xc3; 65536])));
    con.assert_blkread("xvdb", 2000, 40, 8);
    // Read-only: a write fails, and the image is not touched.
    let sum = checksum(&v2);
    con.send("blkwrite xvdb 0 1 1");
    con.wait_for("blkwrite error", CMD);
    shut_down(&host, &mut con, "q2");
    assert_eq!(checksum(&v2), sum);
}

#[test]
fn backing_files_are_shared_read_only_and_nobody_writes_one() {
    let host = Host::start();
    let dir = host.dir.path();
    let base = qcow2(dir, "base.qcow2", "4M", &[]);
    qemu_io(&base, "write -q -P 0x11 0 64k");
    let o1 = qcow2(dir, "o1.qcow2", "4M", &["-b", "base.qcow2", "-F", "qcow2"]);
    let o2 = qcow2(dir, "o2.qcow2", "4M", &["-b", "base.qcow2", "-F", "qcow2"]);
    // Two domains on one base at once.
    let mut c1 = host.create_guest(
        "s1",
        1,
        32,
        &format!("disk = [ 'qcow2:{},xvda,w' ]", o1.display()),
    );
    let mut c2 = host.create_guest(
        "s2",
        1,
        32,
        &format!("disk = [ 'qcow2:{},xvda,w' ]", o2.display()),
    );
    for c in [&mut c1, &mut c2] {
        c.sync();
        c.send("blkread xvda 0 128");
        assert!(answer(c, "blkread crc32=").ends_with(&crc_line(&[0x11; 65536])));
    }
    // A third domain that would write the base is refused while they run.
    let cfg = host.config(
        "w.cfg",
        &format!(
            "name = \"w\"\nkernel = \"builtin:testguest\"\nmemory = 32\ndisk = [ 'qcow2:{},xvda,w' ]\n",
            base.display()
        ),
    );
    let out = host.rxl(&["create", cfg.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use by another domain"), "{err}");
    shut_down(&host, &mut c1, "s1");
    shut_down(&host, &mut c2, "s2");

    // The other way round: while a domain writes the base, an overlay on it is refused.
    let mut cw = host.create_guest(
        "w2",
        1,
        32,
        &format!("disk = [ 'qcow2:{},xvda,w' ]", base.display()),
    );
    cw.sync();
    let cfg = host.config(
        "r.cfg",
        &format!(
            "name = \"r\"\nkernel = \"builtin:testguest\"\nmemory = 32\ndisk = [ 'qcow2:{},xvda,w' ]\n",
            o1.display()
        ),
    );
    let out = host.rxl(&["create", cfg.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("backing file") && err.contains("base.qcow2") && err.contains("read-only"),
        "{err}"
    );
    shut_down(&host, &mut cw, "w2");

    // One domain with an overlay and its own base writable.
    let cfg = host.config(
        "both.cfg",
        &format!(
            "name = \"both\"\nkernel = \"builtin:testguest\"\nmemory = 32\ndisk = [ 'qcow2:{},xvda,w', 'qcow2:{},xvdb,w' ]\n",
            o1.display(),
            base.display()
        ),
    );
    let out = host.rxl(&["create", cfg.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("disk xvdb would write") && err.contains("backing files are read-only"),
        "{err}"
    );
    for image in [&base, &o1, &o2] {
        check(image);
    }
}

#[test]
fn broken_chains_are_refused_and_hot_plugged_overlays_read_their_chain() {
    let host = Host::start();
    let dir = host.dir.path();
    // a -> b -> a (qemu-img -u writes the names without opening them).
    qcow2(
        dir,
        "a.qcow2",
        "1M",
        &["-u", "-b", "b.qcow2", "-F", "qcow2"],
    );
    qcow2(
        dir,
        "b.qcow2",
        "1M",
        &["-u", "-b", "a.qcow2", "-F", "qcow2"],
    );
    qcow2(
        dir,
        "m.qcow2",
        "1M",
        &["-u", "-b", "missing.qcow2", "-F", "qcow2"],
    );
    let raw = dir.join("plain.img");
    std::fs::write(&raw, vec![0u8; 1 << 20]).expect("raw");
    for (disk, want) in [
        ("a.qcow2", "backing chain loops"),
        ("m.qcow2", "missing.qcow2: No such file or directory"),
        ("plain.img", "not a usable qcow2 image"),
    ] {
        let cfg = host.config(
            "bad.cfg",
            &format!(
                "name = \"bad\"\nkernel = \"builtin:testguest\"\nmemory = 32\ndisk = [ 'qcow2:{},xvda,w' ]\n",
                dir.join(disk).display()
            ),
        );
        let out = host.rxl(&["create", cfg.to_str().expect("utf-8")]);
        assert!(!out.status.success(), "{disk} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{disk}: {err}");
        assert!(host.list_row("bad").is_none());
    }

    // Hot-plug: an image alone, and an overlay whose backing file rxend opens and passes too.
    let hot = qcow2(dir, "hot.qcow2", "2M", &[]);
    qemu_io(&hot, "write -q -P 0x3c 0 64k");
    let chained = qcow2(
        dir,
        "chained.qcow2",
        "2M",
        &["-b", "hot.qcow2", "-F", "qcow2"],
    );
    let mut con = host.create_guest("h", 1, 32, "");
    con.sync();
    host.rxl_ok(&[
        "block-attach",
        "h",
        &format!("qcow2:{},xvdb,w", chained.display()),
    ]);
    con.wait_for("xvdb attached", CMD);
    con.send("blkread xvdb 0 128");
    assert!(answer(&con, "blkread crc32=").ends_with(&crc_line(&[0x3c; 65536])));
    con.blkwrite_flushed("xvdb", 4000, 95, 12);
    con.assert_blkread("xvdb", 4000, 95, 12);
    // Its backing file is now read-only for everyone: attaching it writable is refused.
    let out = host.rxl(&[
        "block-attach",
        "h",
        &format!("qcow2:{},xvdc,w", hot.display()),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use"), "{err}");
    host.rxl_ok(&["block-detach", "h", "xvdb"]);
    wait_until(CMD, "the disk is detached", || {
        host.rxl_ok(&["block-list", "h"]).lines().count() == 1
    });
    check(&chained);
    assert_qemu_reads(&chained, 4000, 95, 12);
    // Once the overlay is gone, the former backing file may be written.
    host.rxl_ok(&[
        "block-attach",
        "h",
        &format!("qcow2:{},xvdc,w", hot.display()),
    ]);
    con.wait_for("xvdc attached", CMD);
    con.blkwrite_flushed("xvdc", 8, 4, 13);
    shut_down(&host, &mut con, "h");
}

#[test]
fn a_domain_with_a_qcow2_chain_saves_restores_and_migrates() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = qcow2(dir.path(), "base.qcow2", "8M", &[]);
    qemu_io(&base, "write -q -P 0x77 0 256k");
    let overlay = qcow2(
        dir.path(),
        "top.qcow2",
        "8M",
        &["-b", "base.qcow2", "-F", "qcow2"],
    );
    let spec = format!("disk = [ 'qcow2:{},xvda,w' ]", overlay.display());

    // Save and restore on one host.
    {
        let host = Host::start();
        let mut con = host.create_guest("qs", 1, 16, &spec);
        con.sync();
        con.blkwrite_flushed("xvda", 40, 8, 3);
        // Written but not flushed by the guest: the save flushes it.
        con.send("blkwrite xvda 3000 64 4");
        con.wait_for("blkwrite ok", CMD);
        let file = dir.path().join("qs.save");
        let f = file.to_str().expect("utf-8");
        host.rxl_ok(&["save", "qs", f]);
        assert!(host.list_row("qs").is_none());
        check(&overlay);
        assert_qemu_reads(&overlay, 3000, 64, 4);
        host.rxl_ok(&["restore", f]);
        let mut con = host.console("qs");
        con.assert_blkread("xvda", 40, 8, 3);
        con.assert_blkread("xvda", 3000, 64, 4);
        con.blkwrite_flushed("xvda", 6000, 200, 5);
        shut_down(&host, &mut con, "qs");
        check(&overlay);
    }

    // Live migration between two hosts that share the storage (one directory).
    let net = NetPair::new();
    let keys = tempfile::tempdir().expect("tmp");
    let key = keys.path().join("relocation.key");
    std::fs::write(&key, "a shared secret of enough length\n").expect("key");
    let allow = format!("\"^{}$\"", net.addr_a.replace('.', "\\\\."));
    let config = |addr: &str| {
        format!(
            "[relocation]\nserver = true\naddress = \"{addr}\"\nport = 8002\nhosts-allow = [{allow}]\nkey-file = \"{}\"\n",
            key.display()
        )
    };
    let a = Host::start_in(&net.a, &config(net.addr_a));
    let b = Host::start_in(&net.b, &config(net.addr_b));
    wait_until(CMD, "B's relocation server listens", || {
        b.rxend_log().contains("relocation server listening")
    });
    let mut con = a.create_guest("qm", 1, 16, &spec);
    con.sync();
    // New clusters allocated on A while B has the image open already are seen on B.
    con.blkwrite_flushed("xvda", 9000, 300, 6);
    let out = a.rxl(&[
        "migrate",
        "--key",
        key.to_str().expect("utf-8"),
        "qm",
        net.addr_b,
    ]);
    migrated(&out, &a, &b);
    assert!(a.list_row("qm").is_none(), "still on A");
    let mut con = b.console("qm");
    con.assert_blkread("xvda", 9000, 300, 6);
    con.assert_blkread("xvda", 6000, 200, 5);
    con.send("blkread xvda 100 64");
    assert!(answer(&con, "blkread crc32=").ends_with(&crc_line(&[0x77; 32768])));
    con.blkwrite_flushed("xvda", 12000, 100, 7);
    shut_down(&b, &mut con, "qm");
    check(&overlay);
    check(&base);
    assert_qemu_reads(&overlay, 12000, 100, 7);
    assert_qemu_reads(&overlay, 9000, 300, 6);
}
