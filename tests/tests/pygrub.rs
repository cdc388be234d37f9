//! `bootloader = "pygrub"`: the domain boots the kernel its own first disk's GRUB menu names
//! (an ext4 file system built with `mkfs.ext4 -d`, whole-disk or in an MBR partition, with
//! GRUB 2's grub.cfg or GRUB legacy's menu.lst), the menu's default or `--entry=N`; a disk
//! without a menu, or with a broken file system, is refused with what was wrong.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rxen_e2e::Host;

const BOOT: Duration = Duration::from_secs(30);

/// A directory tree for the image: the test guest as `/boot/testguest`, a file that is no
/// kernel as `/boot/not-a-kernel`, and the menu `menu` at `menu_path`.
fn tree(h: &Host, name: &str, menu_path: &str, menu: &str) -> PathBuf {
    let root = h.dir.path().join(format!("{name}-root"));
    fs::create_dir_all(root.join("boot")).expect("boot dir");
    fs::write(root.join("boot/testguest"), rxen_testguest::image()).expect("kernel");
    fs::write(root.join("boot/not-a-kernel"), b"just text\n").expect("junk");
    let menu_file = root.join(menu_path.trim_start_matches('/'));
    fs::create_dir_all(menu_file.parent().expect("parent")).expect("menu dir");
    fs::write(&menu_file, menu).expect("menu");
    root
}

/// `mkfs.ext4 -d ROOT` into a new image of `mib` MiB, the file system starting at `offset`.
fn mkfs(h: &Host, name: &str, root: &Path, mib: u64, offset: u64) -> PathBuf {
    let img = h.dir.path().join(format!("{name}.img"));
    fs::File::create(&img)
        .and_then(|f| f.set_len((mib << 20) + offset))
        .expect("image");
    let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mkfs.ext4");
    let out = Command::new(mkfs)
        .args(["-q", "-F", "-E"])
        .arg(format!("offset={offset}"))
        .arg("-d")
        .arg(root)
        .arg(&img)
        .arg(format!("{mib}M"))
        .output()
        .expect("run mkfs.ext4 (e2fsprogs)");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// Writes an MBR with one bootable Linux partition of `mib` MiB from sector 2048.
fn mbr(img: &Path, mib: u64) {
    use std::os::unix::fs::FileExt;
    let mut sector = [0u8; 512];
    let e = &mut sector[446..462];
    e[0] = 0x80;
    e[4] = 0x83;
    e[8..12].copy_from_slice(&2048u32.to_le_bytes());
    e[12..16].copy_from_slice(
        &u32::try_from((mib << 20) / 512)
            .expect("size")
            .to_le_bytes(),
    );
    sector[510] = 0x55;
    sector[511] = 0xAA;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(img)
        .expect("open image");
    f.write_all_at(&sector, 0).expect("write the MBR");
}

const GRUB_CFG: &str = r#"
set default="1"
set timeout=5
menuentry 'broken' --class debian {
	insmod ext2
	linux	/boot/not-a-kernel root=/dev/xvda ro
}
menuentry 'rxen test guest' --class debian {
	insmod ext2
	echo	'Loading the test guest ...'
	linux	/boot/testguest console=hvc0
}
"#;

fn domain(h: &Host, name: &str, img: &Path, extra: &str) -> String {
    let cfg = h.config(
        &format!("{name}.cfg"),
        &format!(
            "name = \"{name}\"\nbootloader = \"pygrub\"\nmemory = 64\nvcpus = 1\n\
             disk = [ 'file:{},xvda,r' ]\n{extra}\n",
            img.display()
        ),
    );
    cfg.to_string_lossy().into_owned()
}

/// The VMM log of domain `name`'s run directory (which holds pygrub's choice).
fn vmm_log(h: &Host, name: &str) -> String {
    let id = h.rxl_ok(&["domid", name]).trim().to_string();
    fs::read_to_string(h.state_dir().join("dom").join(id).join("vmm.log")).unwrap_or_default()
}

#[test]
fn a_domain_boots_the_default_entry_of_its_disks_grub_cfg_or_the_one_asked_for() {
    let h = Host::start();
    let root = tree(&h, "g2", "/boot/grub/grub.cfg", GRUB_CFG);
    let img = mkfs(&h, "g2", &root, 16, 0);
    // The default (entry 1) is the test guest: it boots, jailed, from the guest's own disk.
    let cfg = domain(&h, "pyg", &img, "");
    h.rxl_ok(&["create", &cfg]);
    let con = h.console("pyg");
    con.wait_for("booted on 1 vCPUs", BOOT);
    let log = vmm_log(&h, "pyg");
    assert!(
        log.contains("pygrub: booting")
            && log.contains("entry=1")
            && log.contains("/boot/testguest"),
        "{log}"
    );
    drop(con);
    h.rxl_ok(&["destroy", "pyg"]);
    // --entry=0 picks the broken entry: refused, naming the disk and the file.
    let cfg = domain(&h, "pyg0", &img, "bootloader_args = [ '--entry=0' ]");
    let out = h.rxl(&["create", &cfg]);
    assert!(
        !out.status.success(),
        "entry 0 is no kernel, yet it started"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("xvda")
            && err.contains("/boot/not-a-kernel")
            && err.contains("neither an ELF"),
        "{err}"
    );
    assert!(h.list_row("pyg0").is_none());
    // An entry the menu lacks.
    let cfg = domain(&h, "pyg9", &img, "bootloader_args = [ '--entry=9' ]");
    let err = String::from_utf8_lossy(&h.rxl(&["create", &cfg]).stderr).into_owned();
    assert!(err.contains("no entry 9") && err.contains("has 2"), "{err}");
}

#[test]
fn a_qcow2_disk_and_an_overlay_on_it_boot_through_pygrub() {
    let h = Host::start();
    let root = tree(&h, "q", "/boot/grub/grub.cfg", GRUB_CFG);
    let raw = mkfs(&h, "q", &root, 16, 1 << 20);
    mbr(&raw, 16);
    // The disk as qcow2 (Debian's qemu-utils), and an overlay that reads it as its backing file.
    let dir = h.dir.path();
    for args in [
        &["convert", "-O", "qcow2", "q.img", "base.qcow2"][..],
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ][..],
    ] {
        rxen_e2e::run_tool(Some(dir), "qemu-img", args);
    }
    fs::remove_file(&raw).expect("remove the raw image");
    for (name, image) in [("pyq", "base.qcow2"), ("pyqt", "top.qcow2")] {
        let cfg = h.config(
            &format!("{name}.cfg"),
            &format!(
                "name = \"{name}\"\nbootloader = \"pygrub\"\nmemory = 64\nvcpus = 1\n\
                 disk = [ 'qcow2:{},xvda,w' ]\n",
                dir.join(image).display()
            ),
        );
        // The dry run reads the chain as the VMM does.
        let c = dry_run_choice(&h, cfg.to_str().expect("utf-8"));
        assert_eq!(
            (&c["partition"], &c["kernel"]),
            (&1.into(), &"/boot/testguest".into())
        );
        h.rxl_ok(&["create", cfg.to_str().expect("utf-8")]);
        let mut con = h.console(name);
        con.wait_for("booted on 1 vCPUs", BOOT);
        let log = vmm_log(&h, name);
        assert!(
            log.contains("partition=1") && log.contains("/boot/testguest"),
            "{log}"
        );
        con.send("shutdown");
        rxen_e2e::wait_until(BOOT, "the domain ends", || h.list_row(name).is_none());
    }
}

#[test]
fn an_mbr_partition_and_a_legacy_menu_lst_boot_too() {
    let h = Host::start();
    let menu = "default 0\ntimeout 3\ntitle rxen test guest\n  root (hd0,0)\n  kernel /boot/testguest ro\n";
    let root = tree(&h, "legacy", "/boot/grub/menu.lst", menu);
    let img = mkfs(&h, "legacy", &root, 16, 1 << 20);
    mbr(&img, 16);
    let cfg = domain(&h, "pyleg", &img, "");
    h.rxl_ok(&["create", &cfg]);
    let con = h.console("pyleg");
    con.wait_for("booted on 1 vCPUs", BOOT);
    let log = vmm_log(&h, "pyleg");
    assert!(
        log.contains("partition=1") && log.contains("menu.lst"),
        "{log}"
    );
}

#[test]
fn a_disk_without_a_menu_or_with_a_broken_superblock_is_refused_clearly() {
    let h = Host::start();
    // No menu at all.
    let root = tree(&h, "nomenu", "/etc/motd", "hello\n");
    let img = mkfs(&h, "nomenu", &root, 16, 0);
    let cfg = domain(&h, "pynomenu", &img, "");
    let out = h.rxl(&["create", &cfg]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("xvda") && err.contains("no grub.cfg or menu.lst"),
        "{err}"
    );
    // A good file system whose superblock is then zeroed.
    let root = tree(&h, "broken", "/boot/grub/grub.cfg", GRUB_CFG);
    let img = mkfs(&h, "broken", &root, 16, 0);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&img).expect("open");
        f.write_all_at(&[0u8; 1024], 1024)
            .expect("zero the superblock");
    }
    let cfg = domain(&h, "pybroken", &img, "");
    let out = h.rxl(&["create", &cfg]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("xvda") && err.contains("no GRUB menu"),
        "{err}"
    );
    assert!(h.list_row("pybroken").is_none() && h.list_row("pynomenu").is_none());
    // Without any disk, pygrub has nothing to read.
    let cfg = h.config(
        "nodisk.cfg",
        "name = \"nodisk\"\nbootloader = \"pygrub\"\nmemory = 64\n",
    );
    let err = String::from_utf8_lossy(&h.rxl(&["create", cfg.to_str().expect("utf-8")]).stderr)
        .into_owned();
    assert!(err.contains("first disk"), "{err}");
}

/// `rxl create -n FILE`'s `rxen.pygrub`: what pygrub chose.
fn dry_run_choice(h: &Host, cfg: &str) -> serde_json::Value {
    let out = h.rxl(&["create", "-n", cfg]);
    assert!(out.status.success(), "create -n: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("create -n prints JSON");
    v["rxen"]["pygrub"].clone()
}

#[test]
fn create_n_shows_what_pygrub_chose_and_refuses_what_it_cannot_boot() {
    let h = Host::start();
    let root = tree(&h, "dry", "/boot/grub/grub.cfg", GRUB_CFG);
    let img = mkfs(&h, "dry", &root, 16, 1 << 20);
    mbr(&img, 16);
    // The menu's default, with the domain's own `extra` after the entry's line, as the VMM
    // joins them.
    let cfg = domain(&h, "dry", &img, "extra = \"quiet\"");
    let c = dry_run_choice(&h, &cfg);
    assert_eq!(c["disk"], "xvda", "{c}");
    assert_eq!(c["partition"], 1, "{c}");
    assert_eq!(c["menu"], "/boot/grub/grub.cfg", "{c}");
    assert_eq!(c["entry"], 1, "{c}");
    assert_eq!(c["title"], "rxen test guest", "{c}");
    assert_eq!(c["kernel"], "/boot/testguest", "{c}");
    assert_eq!(c["cmdline"], "console=hvc0 quiet", "{c}");
    // A changed default is followed.
    fs::write(
        root.join("boot/grub/grub.cfg"),
        GRUB_CFG.replace("set default=\"1\"", "set default=\"0\""),
    )
    .expect("menu");
    let img = mkfs(&h, "dry", &root, 16, 1 << 20);
    mbr(&img, 16);
    let c = dry_run_choice(&h, &cfg);
    assert_eq!(c["entry"], 0, "{c}");
    assert_eq!(c["title"], "broken", "{c}");
    // --entry=N is followed too, and the dry run started nothing.
    let cfg1 = domain(&h, "dry1", &img, "bootloader_args = [ '--entry=1' ]");
    assert_eq!(dry_run_choice(&h, &cfg1)["kernel"], "/boot/testguest");
    assert!(h.list_row("dry").is_none() && h.list_row("dry1").is_none());
    // A domain with a kernel has no pygrub choice.
    let plain = h.config(
        "plain.cfg",
        "name = \"plain\"\nkernel = \"builtin:testguest\"\nmemory = 64\n",
    );
    assert!(dry_run_choice(&h, plain.to_str().expect("utf-8")).is_null());
    // A broken superblock is the error the create would give, and nothing is printed.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&img).expect("open");
        f.write_all_at(&[0u8; 1024], (1 << 20) + 1024)
            .expect("zero the superblock");
    }
    let out = h.rxl(&["create", "-n", &cfg]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("xvda") && err.contains("no GRUB menu"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}
