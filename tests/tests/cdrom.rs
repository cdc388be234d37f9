//! `rxl cd-insert` and `rxl cd-eject`: a running domain's cdrom drive changes media, the guest
//! sees the configuration-change interrupt and the new capacity, reads the new medium, and the
//! stored config follows the drive across a reboot.

use std::process::Output;
use std::time::Duration;

use rxen_e2e::{blk_pattern, wait_until, Host};

const WAIT: Duration = Duration::from_secs(30);

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cd_insert_and_cd_eject_change_the_medium_the_guest_reads() {
    let host = Host::start();
    let first = host.dir.path().join("first.iso");
    let second = host.dir.path().join("second.iso");
    std::fs::write(&first, blk_pattern(7, 64 * 512)).expect("first medium");
    std::fs::write(&second, blk_pattern(9, 128 * 512)).expect("second medium");
    let disk = host.dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let mut con = host.create_guest(
        "cd",
        1,
        16,
        &format!(
            "disk = [ 'file:{},xvda,w', 'file:{},hdc,devtype=cdrom' ]\non_reboot = \"restart\"",
            disk.display(),
            first.display()
        ),
    );
    con.sync();
    con.assert_blkread("hdc", 0, 8, 7);

    host.rxl_ok(&["cd-insert", "cd", "hdc", second.to_str().expect("utf-8")]);
    con.wait_for("media: hdc 128", WAIT);
    con.assert_blkread("hdc", 0, 8, 9);
    con.send("blkread hdc 120 8");
    con.wait_for("blkread crc32=", WAIT);

    host.rxl_ok(&["cd-eject", "cd", "hdc"]);
    con.wait_for("media: hdc 0", WAIT);
    con.send("blkread hdc 0 8");
    con.wait_for("blkread error: ioerr", WAIT);

    // xl's checks and messages.
    let out = host.rxl(&["cd-insert", "cd", "hdc", "/nonexistent.iso"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("Cannot stat file: /nonexistent.iso\n", Some(1))
    );
    let out = host.rxl(&["cd-insert", "cd", "xvda", second.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a cdrom"), "{}", stderr(&out));
    let out = host.rxl(&["cd-eject", "cd", "hdd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("hdd not found"), "{}", stderr(&out));
    let out = host.rxl(&["cd-eject", "nosuch", "hdc"]);
    assert_eq!(
        stderr(&out),
        "nosuch is an invalid domain identifier (rc=-6)\n"
    );

    // A domain may also start with an empty drive.
    let mut empty = host.create_guest("cd0", 1, 12, "disk = [ ',raw,hdc,devtype=cdrom' ]");
    empty.sync();
    empty.send("disks");
    empty.wait_for("disk 0 hdc 0 ro", WAIT);
    host.rxl_ok(&["cd-insert", "cd0", "hdc", second.to_str().expect("utf-8")]);
    empty.wait_for("media: hdc 128", WAIT);
    host.rxl_ok(&["destroy", "cd0"]);

    // The drive stays empty across a reboot (the stored config follows it), then takes a
    // medium again.
    let old_id = host.rxl_ok(&["domid", "cd"]).trim().to_string();
    host.rxl_ok(&["reboot", "cd"]);
    wait_until(WAIT, "cd is back under a new ID", || {
        host.list_row("cd").is_some_and(|r| r[1] != old_id)
    });
    drop(con);
    let mut con = host.console("cd");
    con.wait_for("booted on 1 vCPUs", WAIT);
    con.sync();
    con.send("disks");
    con.wait_for("disk 1 hdc 0 ro", WAIT);
    host.rxl_ok(&["cd-insert", "cd", "hdc", first.to_str().expect("utf-8")]);
    con.wait_for("media: hdc 64", WAIT);
    con.assert_blkread("hdc", 0, 8, 7);

    // A save file carries the drive's medium of the moment: the restored guest reads it.
    host.rxl_ok(&["cd-insert", "cd", "hdc", second.to_str().expect("utf-8")]);
    con.wait_for("media: hdc 128", WAIT);
    let save = host.dir.path().join("cd.sav");
    host.rxl_ok(&["save", "cd", save.to_str().expect("utf-8")]);
    drop(con);
    host.rxl_ok(&["restore", save.to_str().expect("utf-8")]);
    let mut con = host.console("cd");
    con.sync();
    con.assert_blkread("hdc", 0, 8, 9);
}
