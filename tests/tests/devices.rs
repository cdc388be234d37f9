//! Virtual disks and networks on real guests under /dev/kvm: images written by the guest and
//! read by the host, read-only and exclusive disks, pings over real bridges and TAPs, the `ip=`
//! anti-spoofing filter, the `rate=` limit, and hotplug of disks and NICs.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rxen_e2e::{Console, Host};

const CMD: Duration = Duration::from_secs(30);

/// CRC-32/IEEE, as the guest computes it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The bytes `blkwrite ... SEED` writes: byte k is `(SEED + 31 * k) mod 256`.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| ((seed as usize + 31 * k) % 256) as u8)
        .collect()
}

/// A sparse raw image of `mib` MiB in the host's directory.
fn image(host: &Host, name: &str, mib: u64) -> PathBuf {
    let p = host.dir.path().join(name);
    let f = fs::File::create(&p).expect("image");
    f.set_len(mib << 20).expect("size image");
    p
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = fs::File::open(path).expect("open image");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).expect("read image");
    buf
}

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn run_ok(cmd: &str, args: &[&str]) {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A unique short suffix for interface names (tests run two at a time).
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{:x}{}",
        std::process::id() % 0xFFFF,
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A Linux bridge, with an optional host address, removed on drop.
struct Bridge {
    name: String,
}

impl Bridge {
    fn new(addr: Option<&str>) -> Bridge {
        let name = format!("rxb{}", unique());
        run_ok("ip", &["link", "add", &name, "type", "bridge"]);
        let b = Bridge { name };
        if let Some(a) = addr {
            run_ok("ip", &["addr", "add", a, "dev", &b.name]);
        }
        run_ok("ip", &["link", "set", &b.name, "up"]);
        b
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.name]);
    }
}

/// Waits for an answer starting with `needle` and returns its whole line (the console may
/// deliver a line in pieces).
fn answer(con: &Console, needle: &str) -> String {
    con.wait_for(needle, CMD);
    let deadline = Instant::now() + CMD;
    loop {
        let out = con.output();
        if let Some(at) = out.rfind(needle) {
            if let Some(end) = out[at..].find('\n') {
                return out[at..at + end].trim_end_matches('\r').to_string();
            }
        }
        assert!(Instant::now() < deadline, "no complete line for {needle:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn block_list(host: &Host, domain: &str) -> Vec<String> {
    host.rxl_ok(&["block-list", domain])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn guest_writes_a_pattern_the_host_reads_from_the_image() {
    let host = Host::start();
    let img = image(&host, "data.img", 8);
    let mut con = host.create_guest(
        "diskw",
        1,
        64,
        &format!("disk = [ 'file:{},xvda,w' ]", img.display()),
    );
    con.sync();
    con.send("disks");
    assert_eq!(answer(&con, "disk 0 "), "disk 0 xvda 16384 rw");

    con.send("blkwrite xvda 100 16 7");
    con.wait_for("blkwrite ok", CMD);
    con.send("blkflush xvda");
    con.wait_for("blkflush ok", CMD);
    let want = pattern(7, 16 * 512);
    assert_eq!(read_at(&img, 100 * 512, 16 * 512), want);

    // The guest reads back what it wrote, and what the host wrote.
    con.send("blkread xvda 100 16");
    let line = answer(&con, "blkread crc32=");
    assert!(
        line.ends_with(&format!("crc32={:08x}", crc32(&want))),
        "{line}"
    );
    let host_data = pattern(99, 4 * 512);
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().write(true).open(&img).expect("open");
        f.seek(SeekFrom::Start(2000 * 512)).expect("seek");
        f.write_all(&host_data).expect("write");
    }
    con.send("blkread xvda 2000 4");
    let line = answer(&con, "blkread crc32=");
    assert!(
        line.ends_with(&format!("crc32={:08x}", crc32(&host_data))),
        "{line}"
    );

    // block-list in xl's format, and the counters behind rxl top.
    let rows = block_list(&host, "diskw");
    assert_eq!(
        rows.first().map(String::as_str),
        Some("Vdev  BE  handle state evt-ch ring-ref BE-path                       ")
    );
    assert!(
        rows.get(1).is_some_and(|r| r.starts_with("51712 0   ")),
        "{rows:?}"
    );
    // Beyond the end of the disk: an error status, and the guest goes on.
    con.send("blkread xvda 16380 8");
    con.wait_for("blkread error: ioerr", CMD);
    con.send("blkread xvda 0 1");
    con.wait_for("blkread crc32=", CMD);
}

#[test]
fn a_read_only_disk_refuses_writes() {
    let host = Host::start();
    let img = image(&host, "ro.img", 4);
    fs::write(&img, pattern(3, 4 << 20)).expect("fill");
    let mut con = host.create_guest(
        "diskro",
        1,
        64,
        &format!(
            "disk = [ 'file:{},xvda,r', 'file:{},hdc,devtype=cdrom' ]",
            img.display(),
            img.display()
        ),
    );
    con.sync();
    con.send("disks");
    assert_eq!(answer(&con, "disk 0 "), "disk 0 xvda 8192 ro");
    assert_eq!(answer(&con, "disk 1 "), "disk 1 hdc 8192 ro");
    con.send("blkwrite xvda 0 8 1");
    con.wait_for("blkwrite error: ", CMD);
    con.send("blkwrite hdc 0 8 1");
    con.wait_for("blkwrite error: ", CMD);
    assert_eq!(
        read_at(&img, 0, 8 * 512),
        pattern(3, 4 << 20)[..8 * 512].to_vec()
    );
    con.send("blkread xvda 0 8");
    let line = answer(&con, "blkread crc32=");
    assert!(
        line.ends_with(&format!("crc32={:08x}", crc32(&pattern(3, 8 * 512)))),
        "{line}"
    );
}

#[test]
fn a_writable_disk_is_refused_to_a_second_domain_unless_shared() {
    let host = Host::start();
    let img = image(&host, "shared.img", 4);
    let spec = format!("disk = [ 'file:{},xvda,w' ]", img.display());
    let _first = host.create_guest("owner", 1, 64, &spec);
    let cfg = host.config(
        "second.cfg",
        &format!("name = \"second\"\nkernel = \"builtin:testguest\"\nmemory = 64\n{spec}\n"),
    );
    let out = host.rxl(&["create", cfg.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use by another domain"), "{err}");
    assert!(host.list_row("second").is_none());
    // Read-only use of a disk another domain writes is refused too.
    let ro = host.config(
        "reader.cfg",
        &format!(
            "name = \"reader\"\nkernel = \"builtin:testguest\"\nmemory = 64\ndisk = [ 'file:{},xvda,r' ]\n",
            img.display()
        ),
    );
    assert!(!host
        .rxl(&["create", ro.to_str().expect("path")])
        .status
        .success());
    // w! shares it.
    let _shared = host.create_guest(
        "sharer",
        1,
        64,
        &format!("disk = [ 'file:{},xvda,w!' ]", img.display()),
    );
    // Once the owner is gone, a plain writable use works again.
    host.rxl_ok(&["destroy", "owner"]);
    let _again = host.create_guest("second", 1, 64, &spec);
}

#[test]
fn formats_other_than_raw_and_missing_images_are_refused_clearly() {
    let host = Host::start();
    let img = image(&host, "q.img", 1);
    let cfg = host.config(
        "q.cfg",
        &format!(
            "name = \"q\"\nkernel = \"builtin:testguest\"\nmemory = 64\ndisk = [ '{},qcow2,xvda,w' ]\n",
            img.display()
        ),
    );
    let out = host.rxl(&["create", cfg.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("format qcow2 is not supported"), "{err}");
    let cfg = host.config(
        "m.cfg",
        "name = \"m\"\nkernel = \"builtin:testguest\"\nmemory = 64\ndisk = [ 'phy:rxen-no-such-volume,xvda,w' ]\n",
    );
    let out = host.rxl(&["create", cfg.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/rxen-no-such-volume"), "{err}");
    assert!(host.list_row("q").is_none() && host.list_row("m").is_none());
}

#[test]
fn bad_descriptors_get_an_error_status_and_the_vmm_lives_on() {
    let host = Host::start();
    let img = image(&host, "bad.img", 4);
    let mut con = host.create_guest(
        "blkbad",
        1,
        64,
        &format!("disk = [ 'file:{},xvda,w' ]", img.display()),
    );
    con.sync();
    con.send("blkbad xvda");
    // One wait only: `wait_for` consumes the line, so `answer` must be the one to find it.
    let line = answer(&con, "blkbad: ");
    assert!(line.ends_with("device ok"), "{line}");
    let counts: Vec<&str> = line.split_whitespace().collect();
    // "blkbad: N sent, N failed cleanly, device ok"
    assert_eq!(counts.get(1), counts.get(3), "{line}");
    con.send("blkwrite xvda 0 8 5");
    con.wait_for("blkwrite ok", CMD);
    assert_eq!(read_at(&img, 0, 8 * 512), pattern(5, 8 * 512));
    assert!(host.list_row("blkbad").is_some());
}

#[test]
#[ignore = "needs the test guest's hotplug polling (guest2)"]
fn a_disk_hot_plugged_into_a_running_guest_works_and_detaches_cleanly() {
    let host = Host::start();
    let img = image(&host, "hot.img", 2);
    let mut con = host.create_guest("hotdisk", 1, 64, "");
    con.sync();
    assert_eq!(block_list(&host, "hotdisk").len(), 1);
    host.rxl_ok(&[
        "block-attach",
        "hotdisk",
        &format!("file:{},xvdb,w", img.display()),
    ]);
    let line = answer(&con, "hotplug: disk ");
    assert!(line.ends_with("xvdb attached"), "{line}");
    con.send("blkwrite xvdb 8 4 42");
    con.wait_for("blkwrite ok", CMD);
    con.send("blkflush xvdb");
    con.wait_for("blkflush ok", CMD);
    assert_eq!(read_at(&img, 8 * 512, 4 * 512), pattern(42, 4 * 512));
    let rows = block_list(&host, "hotdisk");
    assert!(rows.iter().any(|r| r.starts_with("51728 ")), "{rows:?}");
    let started = Instant::now();
    host.rxl_ok(&["block-detach", "hotdisk", "xvdb"]);
    let line = answer(&con, "hotplug: disk ");
    assert!(line.ends_with("xvdb detached"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(block_list(&host, "hotdisk").len(), 1);
    con.send("blkread xvdb 0 1");
    con.wait_for("blkread error: nodev", CMD);
    // Detached means released: another domain may now take it writable.
    let _next = host.create_guest(
        "taker",
        1,
        64,
        &format!("disk = [ 'file:{},xvda,w' ]", img.display()),
    );
}

fn iface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn master_of(name: &str) -> Option<String> {
    fs::read_link(Path::new("/sys/class/net").join(name).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

#[test]
fn vifs_get_taps_on_their_bridge_and_lose_them_however_the_domain_ends() {
    let mut host = Host::start();
    let br = Bridge::new(None);
    let tap = format!("rxt{}", unique());
    let _con = host.create_guest(
        "plugged",
        1,
        64,
        &format!(
            "vif = [ 'bridge={},mac=00:16:3e:12:34:56', 'bridge={},vifname={tap}' ]",
            br.name, br.name
        ),
    );
    let domid: u32 = host
        .rxl_ok(&["domid", "plugged"])
        .trim()
        .parse()
        .expect("domid");
    let first = format!("vif{domid}.0");
    assert_eq!(master_of(&first).as_deref(), Some(br.name.as_str()));
    assert_eq!(master_of(&tap).as_deref(), Some(br.name.as_str()));
    let list = host.rxl_ok(&["network-list", "plugged"]);
    let rows: Vec<&str> = list.lines().collect();
    assert_eq!(rows.len(), 3, "{list}");
    assert!(
        rows[1].starts_with("0   0  00:16:3e:12:34:56     0     4"),
        "{list}"
    );
    assert!(rows[2].starts_with("1   0  00:16:3e:"), "{list}");
    // Destroyed: both TAPs go.
    host.rxl_ok(&["destroy", "plugged"]);
    assert!(!iface_exists(&first) && !iface_exists(&tap));

    // A VMM killed while rxend is down: the TAP goes when rxend comes back.
    let _con = host.create_guest("killed", 1, 64, &format!("vif = [ 'bridge={}' ]", br.name));
    let domid: u32 = host
        .rxl_ok(&["domid", "killed"])
        .trim()
        .parse()
        .expect("domid");
    let vif = format!("vif{domid}.0");
    assert!(iface_exists(&vif));
    let pid = host.vmm_pid(domid);
    host.kill_rxend();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the VMM");
    host.start_rxend();
    rxen_e2e::wait_until(
        Duration::from_secs(20),
        "the dead domain's TAP is removed",
        || !iface_exists(&vif),
    );
}

#[test]
fn a_missing_bridge_is_a_clear_error() {
    let host = Host::start();
    let cfg = host.config(
        "nobr.cfg",
        "name = \"nobr\"\nkernel = \"builtin:testguest\"\nmemory = 64\nvif = [ 'bridge=rxnosuchbr0' ]\n",
    );
    let out = host.rxl(&["create", cfg.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bridge rxnosuchbr0 does not exist"), "{err}");
    assert!(host.list_row("nobr").is_none());
}
