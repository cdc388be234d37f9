//! What rxend keeps across its own restarts and shows in `rxl top`, on real guests under
//! /dev/kvm with real bridges and cgroups: a domain's network bytes from before and after
//! rxend is killed and restarted (and from while it is away, when the VMM ends), its CPU cgroup
//! put back with its weight and cap when rxend adopts it and removed when its VMM crashes, and
//! `rxl top -b -n` on a domain that computes and sends.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rxen_e2e::{unique, wait_until, Bridge, Console, Host};

const CMD: Duration = Duration::from_secs(30);

fn domid(host: &Host, name: &str) -> u32 {
    host.rxl_ok(&["domid", name])
        .trim()
        .parse()
        .expect("numeric domid")
}

/// A /24 of its own for each test: `10.A.B` (devices.rs uses 10.100-199; this file 10.200-249).
fn subnet() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("10.{}.{}", 200 + (std::process::id() % 50), 1 + n % 250)
}

/// A bridge with the host's address `.1` on `net`.
fn bridge(net: &str) -> Bridge {
    Bridge::new(Some(&format!("{net}.1/24")))
}

/// The config line of one NIC on `br`.
fn vif(br: &Bridge) -> String {
    format!("vif = [ 'bridge={},vifname=rxv{}' ]", br.name, unique())
}

/// Gives the guest's NIC `.2` on `net`, then has it send `mib` MiB of UDP to the host's `.1`
/// (a socket there takes them); returns the payload bytes the guest reports sent.
fn send_udp(con: &mut Console, net: &str, mib: u64) -> u64 {
    let sink = std::net::UdpSocket::bind(format!("{net}.1:0")).expect("bind a UDP sink");
    let port = sink.local_addr().expect("sink address").port();
    con.sync();
    con.send(&format!("ip {net}.2/24"));
    con.wait_for(&format!("ip {net}.2/24 on nic"), CMD);
    con.send(&format!("udpsend {net}.1 {port} {mib}"));
    let line = con.wait_for("udpsend done ", CMD);
    let sent: u64 = line
        .split("udpsend done ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line:?}"));
    assert_eq!(sent, mib << 20, "{line}");
    sent
}

/// Each of `name`'s rows in `rxl top -b` output, with the detail lines under it.
fn top_rows<'a>(out: &'a str, name: &str) -> Vec<Vec<&'a str>> {
    let lines: Vec<&str> = out.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.split_whitespace().next() == Some(name))
        .map(|(i, _)| {
            let mut block = vec![lines[i]];
            block.extend(
                lines[i + 1..]
                    .iter()
                    .take_while(|l| l.starts_with("Net") || l.starts_with("VCPUs")),
            );
            block
        })
        .collect()
}

/// The one `Net0` line under the only row of a one-refresh `rxl top -b -n` (`out`).
fn nic_line<'a>(blocks: &[Vec<&'a str>], out: &str) -> &'a str {
    match blocks {
        [block] if block.len() == 2 => block[1],
        _ => panic!("not one row with one Net line:\n{out}"),
    }
}

/// A field of a top row: xentop's columns, by title.
fn column(row: &str, title: &str) -> String {
    let at = titles()
        .iter()
        .position(|t| *t == title)
        .unwrap_or_else(|| panic!("no column {title}"));
    row.split_whitespace()
        .nth(at)
        .unwrap_or_else(|| panic!("no {title} in {row:?}"))
        .to_string()
}

/// xentop's column titles, in order (a guest's values have no spaces, so its row splits into
/// them; Domain-0's `no limit` would not).
fn titles() -> [&'static str; 19] {
    [
        "NAME",
        "STATE",
        "CPU(sec)",
        "CPU(%)",
        "MEM(k)",
        "MEM(%)",
        "MAXMEM(k)",
        "MAXMEM(%)",
        "VCPUS",
        "NETS",
        "NETTX(k)",
        "NETRX(k)",
        "VBDS",
        "VBD_OO",
        "VBD_RD",
        "VBD_WR",
        "VBD_RSECT",
        "VBD_WSECT",
        "SSID",
    ]
}

fn number(s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| panic!("{s:?} is not a number"))
}

/// The numbers of a `-n` line as xentop prints it:
/// `Net0 RX: %8llubytes %8llupkts %8lluerr %8lludrop  TX: %8llubytes %8llupkts %8lluerr %8lludrop`.
/// Fails unless the line has exactly that layout.
fn net_line(line: &str) -> [u64; 8] {
    let f: Vec<&str> = line.split_whitespace().collect();
    let grab = |i: usize, unit: &str| -> u64 {
        number(
            f.get(i)
                .and_then(|w| w.strip_suffix(unit))
                .unwrap_or_else(|| panic!("no {unit} at word {i} of {line:?}")),
        )
    };
    let mut n = [0u64; 8];
    for (k, unit) in ["bytes", "pkts", "err", "drop"].iter().enumerate() {
        n[k] = grab(2 + k, unit);
        n[4 + k] = grab(7 + k, unit);
    }
    let want = format!(
        "{} RX: {:8}bytes {:8}pkts {:8}err {:8}drop  TX: {:8}bytes {:8}pkts {:8}err {:8}drop",
        f[0], n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7]
    );
    assert_eq!(line, want, "not xentop's layout");
    n
}

#[test]
fn network_bytes_add_up_across_rxend_restarts() {
    let mut host = Host::start();
    let net = subnet();
    let br = bridge(&net);
    let extra = format!("on_poweroff = \"preserve\"\n{}", vif(&br));
    let mut con = host.create_guest("chatty", 1, 64, &extra);
    let id = domid(&host, "chatty");
    let pid = host.vmm_pid(id);
    let first = send_udp(&mut con, &net, 1);
    let out = host.rxl_ok(&["top", "-b", "-i", "1", "-n"]);
    let before = net_line(nic_line(&top_rows(&out, "chatty"), &out))[4];
    assert!(
        before >= first,
        "{first} bytes sent, TX shows {before}:\n{out}"
    );

    // rxend dies and comes back: it adopts the running domain, which sends again.
    host.kill_rxend();
    host.start_rxend();
    assert_eq!(domid(&host, "chatty"), id);
    let second = send_udp(&mut con, &net, 1);
    // The supervisor samples the VMM's counters into rxend's record every few seconds (nothing
    // asks for them in between), so that they outlive the VMM even while rxend is away.
    let record = host.state_dir().join(format!("domains/{id}.json"));
    wait_until(
        Duration::from_secs(20),
        "the record holds both periods' bytes",
        || {
            fs::read(&record)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["vmm_net_tx_bytes"].as_u64())
                .is_some_and(|b| b >= before + second)
        },
    );
    let out = host.rxl_ok(&["top", "-b", "-i", "1", "-n"]);
    let blocks = top_rows(&out, "chatty");
    let both = net_line(nic_line(&blocks, &out))[4];
    assert!(
        both >= before + second,
        "TX {before} before the restart, {second} sent after it, {both} shown:\n{out}"
    );
    assert_eq!(
        number(&column(blocks[0][0], "NETTX(k)")),
        both / 1024,
        "{out}"
    );

    // rxend dies again; the guest sends once more while it is away, then powers off. The VMM
    // counts its bytes as it ends, and the restarted rxend adds them to the preserved domain.
    host.kill_rxend();
    let third = send_udp(&mut con, &net, 1);
    con.send("shutdown");
    con.wait_for("powering off", CMD);
    drop(con);
    wait_until(CMD, "the VMM is gone", || exited(pid));
    host.start_rxend();
    wait_until(CMD, "chatty is shut down", || {
        host.list_row("chatty")
            .is_some_and(|r| r.get(4).is_some_and(|s| s == "---s--"))
    });
    let out = host.rxl_ok(&["top", "-b", "-i", "1"]);
    let row = top_rows(&out, "chatty")
        .first()
        .unwrap_or_else(|| panic!("no row for chatty:\n{out}"))[0];
    assert_eq!(column(row, "STATE"), "-s----", "{out}");
    // A stopped domain keeps its vCPUs in top, as in `rxl list`.
    assert_eq!(column(row, "VCPUS"), "1", "{out}");
    let total = number(&column(row, "NETTX(k)"));
    assert!(
        total >= (both + third) / 1024,
        "{both} bytes sent before rxend died again, {third} after: NETTX(k) {total}\n{out}"
    );
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn exited(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// The cgroup v1 `cpu` hierarchy of this host.
fn cpu_mount() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup") && f.get(3)?.split(',').any(|o| o == "cpu"))
                .then(|| PathBuf::from(f[1]))
        })
        .expect("these tests read the cgroup v1 cpu controller (rxen's machines mount it)")
}

fn read_num(p: &Path) -> i64 {
    fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .expect("number")
}

/// The thread IDs listed in a cgroup v1 `tasks` file, sorted.
fn tasks(dir: &Path) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_to_string(dir.join("tasks"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    v.sort();
    v
}

/// The thread IDs of a VMM's vCPU threads, sorted.
fn vcpu_tids(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter_map(|e| {
            let tid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            comm.starts_with("vcpu").then_some(tid)
        })
        .collect();
    v.sort();
    v
}

/// Asserts that `dir` is the group of exactly `tids`, with shares and quota for weight and cap.
fn assert_group(dir: &Path, tids: &[i32], shares: i64, quota: i64) {
    assert!(dir.is_dir(), "{} is missing", dir.display());
    assert_eq!(
        read_num(&dir.join("cpu.shares")),
        shares,
        "{}",
        dir.display()
    );
    assert_eq!(read_num(&dir.join("cpu.cfs_quota_us")), quota);
    assert_eq!(read_num(&dir.join("cpu.cfs_period_us")), 100_000);
    assert_eq!(tasks(dir), tids, "the vCPU threads, and only they");
}

#[test]
fn an_adopted_domain_gets_its_cgroup_back_and_a_crash_removes_it() {
    let mut host = Host::start();
    let _con = host.create_guest(
        "grouped",
        2,
        32,
        "cpu_weight = 512\ncap = 30\non_crash = \"preserve\"",
    );
    let id = domid(&host, "grouped");
    let pid = host.vmm_pid(id);
    let tids = vcpu_tids(pid);
    assert_eq!(tids.len(), 2, "{tids:?}");
    let mount = cpu_mount();
    let dir = mount.join(host.cgroup_name()).join(format!("dom{id}"));
    assert_group(&dir, &tids, 2048, 30_000);
    // Changed at run time: rxend's record keeps the new values.
    host.rxl_ok(&["sched-credit", "-d", "grouped", "-w", "768", "-c", "40"]);
    assert_group(&dir, &tids, 3072, 40_000);

    // rxend dies, and the group goes while it is away (as when the host's cgroups are set up
    // afresh): the vCPU threads are back in the root group and the directory is gone.
    host.kill_rxend();
    for tid in &tids {
        fs::write(mount.join("tasks"), tid.to_string()).expect("move a vCPU thread out");
    }
    fs::remove_dir(&dir).expect("remove the domain's group");
    host.start_rxend();
    assert_group(&dir, &tids, 3072, 40_000);

    // The VMM dies: the crashed domain stays (on_crash = "preserve"), its group goes.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the VMM");
    wait_until(CMD, "the domain is crashed", || {
        host.list_row("grouped").is_some_and(|r| r[4] == "---sc-")
    });
    wait_until(Duration::from_secs(5), "its cgroup is removed", || {
        !dir.exists()
    });
    host.rxl_ok(&["destroy", "grouped"]);
    assert!(!dir.exists());
}

#[test]
fn top_batch_shows_cpu_memory_and_each_nics_bytes_of_a_busy_domain() {
    let host = Host::start();
    let net = subnet();
    let br = bridge(&net);
    let mut con = host.create_guest("busy", 2, 48, &vif(&br));
    let sent = send_udp(&mut con, &net, 1);
    con.send("burn 5 1");
    con.wait_for("burning vcpu 1 for 5 s", CMD);
    let out = host.rxl_ok(&["top", "-b", "-i", "2", "-d", "1", "-n"]);
    let blocks = top_rows(&out, "busy");
    assert_eq!(blocks.len(), 2, "one row per refresh:\n{out}");
    for block in &blocks {
        assert_eq!(block.len(), 2, "one Net line under the row:\n{out}");
        let row = block[0];
        assert_eq!(column(row, "MEM(k)"), "49152", "{out}");
        assert_eq!(column(row, "MAXMEM(k)"), "49152", "{out}");
        assert_eq!(column(row, "VCPUS"), "2", "{out}");
        assert_eq!(column(row, "NETS"), "1", "{out}");
        assert_eq!(column(row, "VBDS"), "0", "{out}");
        let [rx, rx_pkts, _, _, tx, tx_pkts, _, _] = net_line(block[1]);
        assert!(block[1].starts_with("Net0 RX: "), "{out}");
        // 1 MiB in 1400-byte datagrams, each with its Ethernet, IPv4 and UDP headers.
        let datagrams = sent.div_ceil(1400);
        assert!(tx_pkts >= datagrams, "{datagrams} datagrams sent:\n{out}");
        assert!(tx >= sent + 42 * datagrams, "{sent} bytes sent:\n{out}");
        assert!(tx < 2 * sent, "{sent} bytes sent:\n{out}");
        // The host's ARP answer at least.
        assert!(rx >= 42 && rx_pkts >= 1, "{out}");
        assert_eq!(number(&column(row, "NETTX(k)")), tx / 1024, "{out}");
        assert_eq!(number(&column(row, "NETRX(k)")), rx / 1024, "{out}");
    }
    // CPU(%) is measured between refreshes: 0 in the first, a burning vCPU's in the second.
    assert_eq!(column(blocks[0][0], "CPU(%)"), "0.0", "{out}");
    let pct: f64 = column(blocks[1][0], "CPU(%)").parse().expect("CPU(%)");
    assert!((10.0..=200.0).contains(&pct), "{pct}% burning:\n{out}");
    assert_eq!(column(blocks[1][0], "STATE"), "-----r", "{out}");
    let header = out.lines().next().expect("a header");
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        titles(),
        "{out}"
    );
}
