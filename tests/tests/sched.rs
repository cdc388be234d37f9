//! CPU scheduling, vCPUs, accounting and monitoring on real guests under
//! /dev/kvm with the host's real cgroups and thread affinity: credit weights
//! and caps, `cpus=` and `vcpu-pin`, `vcpu-list` and `sched-credit` formats,
//! cgroup cleanup, `rxl top -b`, accounting across an rxend restart, and
//! the Prometheus listener.

use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rxen_e2e::{bin, wait_until, Host};

const BOOT: Duration = Duration::from_secs(30);

fn domid(host: &Host, name: &str) -> u32 {
    host.rxl_ok(&["domid", name])
        .trim()
        .parse()
        .expect("numeric domid")
}

/// The cgroup v1 `cpu` hierarchy of this host, if it has one.
fn cpu_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup") && f.get(3)?.split(',').any(|o| o == "cpu"))
            .then(|| PathBuf::from(f[1]))
    })
}

fn domain_cgroup(host: &Host, id: u32) -> PathBuf {
    cpu_mount()
        .expect("these machines have the cgroup v1 cpu controller")
        .join(host.cgroup_name())
        .join(format!("dom{id}"))
}

fn read_num(p: PathBuf) -> i64 {
    fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .expect("number")
}

/// (tid, name) of every vCPU thread of a VMM.
fn vcpu_tids(pid: i32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter_map(|e| {
            let tid: i32 = e.file_name().to_str()?.parse().ok()?;
            let name = fs::read_to_string(e.path().join("comm")).ok()?;
            let name = name.trim().to_string();
            name.starts_with("vcpu").then_some((tid, name))
        })
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

/// CPU seconds used so far by a VMM's vCPU threads, from /proc.
fn vcpu_seconds(pid: i32) -> f64 {
    let ticks = clk_tck();
    vcpu_tids(pid)
        .iter()
        .map(|(tid, _)| {
            let stat =
                fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            // utime and stime are fields 14 and 15; f[0] is field 3.
            let ut: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0);
            let st: f64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
            (ut + st) / ticks
        })
        .sum()
}

fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// CPU time a VMM's vCPU threads have had so far, from the scheduler's own count
/// (`/proc/PID/task/TID/schedstat`, nanoseconds on a CPU): exact, not sampled at ticks.
fn vcpu_cpu(pid: i32) -> Duration {
    vcpu_tids(pid)
        .iter()
        .map(|(tid, _)| {
            let path = format!("/proc/{pid}/task/{tid}/schedstat");
            let stat = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let ns: u64 = stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{path}: {stat:?}"));
            Duration::from_nanos(ns)
        })
        .sum()
}

/// How often the kernel has throttled a cgroup for its CFS quota (`nr_throttled` in its
/// cgroup v1 `cpu.stat`).
fn times_throttled(cg: &std::path::Path) -> u64 {
    let path = cg.join("cpu.stat");
    let stat = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    stat.lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no nr_throttled in {}: {stat:?}", path.display()))
}

/// The `Cpus_allowed_list` of a thread (its real hard affinity).
fn allowed(pid: i32, tid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string()
}

fn nr_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The CPU both contending domains are pinned to: the last one.
fn shared_cpu() -> usize {
    nr_cpus() - 1
}

#[test]
fn weights_split_a_shared_cpu_in_their_ratio() {
    let host = Host::start();
    let cpu = shared_cpu();
    let mut heavy = host.create_guest(
        "heavy",
        1,
        32,
        &format!("cpus = \"{cpu}\"\ncpu_weight = 512"),
    );
    let mut light = host.create_guest(
        "light",
        1,
        32,
        &format!("cpus = \"{cpu}\"\ncpu_weight = 256"),
    );
    let (hid, lid) = (domid(&host, "heavy"), domid(&host, "light"));
    // The weights the kernel holds.
    assert_eq!(read_num(domain_cgroup(&host, hid).join("cpu.shares")), 2048);
    assert_eq!(read_num(domain_cgroup(&host, lid).join("cpu.shares")), 1024);
    let (hp, lp) = (host.vmm_pid(hid), host.vmm_pid(lid));
    // Both burn for longer than the test takes (the domains go with the host).
    heavy.send("burn 600");
    light.send("burn 600");
    heavy.wait_for("burning vcpu 0 for 600 s", BOOT);
    light.wait_for("burning vcpu 0 for 600 s", BOOT);
    // Both now want all of the one CPU they are pinned to. Measure until the light one has
    // had 1.5 s of it, however long a busy host takes to give that: whatever else runs
    // there, the two split what their parent group gets 2:1.
    let (h0, l0, t0) = (vcpu_cpu(hp), vcpu_cpu(lp), Instant::now());
    wait_until(
        Duration::from_secs(180),
        "the light domain has had 1.5 s of CPU",
        || vcpu_cpu(lp) - l0 >= Duration::from_millis(1500),
    );
    let (h1, l1, wall) = (vcpu_cpu(hp), vcpu_cpu(lp), t0.elapsed());
    let (h, l) = ((h1 - h0).as_secs_f64(), (l1 - l0).as_secs_f64());
    let ratio = h / l;
    eprintln!(
        "weights 512:256 on CPU {cpu}: heavy {h:.3} s, light {l:.3} s in {:.3} s: ratio {ratio:.2}",
        wall.as_secs_f64()
    );
    // Both share one CPU, so together they cannot have more than it.
    assert!(
        h + l <= wall.as_secs_f64() + 0.05,
        "{h} + {l} s of CPU in {wall:?} on one CPU"
    );
    // 2:1; equal weights would give 1.
    assert!(
        (1.5..=2.7).contains(&ratio),
        "ratio {ratio:.2}, expected about 2"
    );
}

#[test]
fn cap_holds_a_domain_to_a_quarter_of_a_cpu() {
    let host = Host::start();
    let mut con = host.create_guest("capped", 1, 32, "cap = 25");
    let id = domid(&host, "capped");
    let cg = domain_cgroup(&host, id);
    // The quota the kernel holds.
    assert_eq!(read_num(cg.join("cpu.cfs_quota_us")), 25_000);
    assert_eq!(read_num(cg.join("cpu.cfs_period_us")), 100_000);
    let pid = host.vmm_pid(id);
    let throttled = times_throttled(&cg);
    con.send("burn 600");
    con.wait_for("burning vcpu 0 for 600 s", BOOT);
    // A burning vCPU wants a whole CPU: the kernel stops it in each period once it has used
    // the quota (it needs to get a quarter of a CPU for that, which even a busy host gives).
    wait_until(
        Duration::from_secs(60),
        "the kernel throttles the capped domain",
        || times_throttled(&cg) >= throttled + 5,
    );
    // Over a stretch of periods it uses no more than the quota in each (a busy host can only
    // give it less; the local runtime slices may run over by a few ms in all).
    let (c0, t0) = (vcpu_cpu(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (used, wall) = (vcpu_cpu(pid) - c0, t0.elapsed());
    let share = used.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "cap 25: the burning domain used {:.1}% of a CPU",
        share * 100.0
    );
    assert!(share <= 0.3, "a cap of 25 let it use {share:.2} of a CPU");
    // Lifting the cap at run time: the kernel holds no quota and throttles it no more.
    host.rxl_ok(&["sched-credit", "-d", "capped", "-c", "0"]);
    assert_eq!(read_num(cg.join("cpu.cfs_quota_us")), -1);
    let throttled = times_throttled(&cg);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        times_throttled(&cg),
        throttled,
        "throttled after the cap was lifted"
    );
}

#[test]
fn sched_credit_prints_xls_table_and_changes_a_running_domain() {
    let host = Host::start();
    let _con = host.create_guest("sc", 1, 32, "cpu_weight = 300\ncap = 20");
    let id = domid(&host, "sc");
    let out = host.rxl_ok(&["sched-credit"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("Cpupool Pool-0: tslice=100ms ratelimit="),
        "{out}"
    );
    assert_eq!(
        lines[1],
        "Name                                ID Weight  Cap"
    );
    assert_eq!(
        lines[2], "Domain-0                             0   1024    0",
        "{out}"
    );
    assert_eq!(
        lines[3],
        format!("{:<33} {:>4} {:>6} {:>4}", "sc", id, 300, 20)
    );
    host.rxl_ok(&["sched-credit", "-d", "sc", "-w", "512", "-c", "25"]);
    let out = host.rxl_ok(&["sched-credit", "-d", "sc"]);
    assert_eq!(
        out,
        format!(
            "Name                                ID Weight  Cap\n{:<33} {:>4} {:>6} {:>4}\n",
            "sc", id, 512, 25
        )
    );
    let cg = domain_cgroup(&host, id);
    assert_eq!(read_num(cg.join("cpu.shares")), 2048);
    assert_eq!(read_num(cg.join("cpu.cfs_quota_us")), 25_000);
    // Domain-0's weight is its own.
    host.rxl_ok(&["sched-credit", "-d", "0", "-w", "2048"]);
    let dom0 = cg.parent().expect("base").join("dom0");
    assert_eq!(read_num(dom0.join("cpu.shares")), 8192);
    // xl's errors.
    let bad = host.rxl(&["sched-credit", "-w", "300"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Must specify a domain."));
    assert!(!host
        .rxl(&["sched-credit", "-d", "sc", "-w", "0"])
        .status
        .success());
    assert!(!host
        .rxl(&["sched-credit", "-d", "sc", "-w", "70000"])
        .status
        .success());
    // The record keeps the new values.
    let rec: serde_json::Value = serde_json::from_slice(
        &fs::read(host.state_dir().join(format!("domains/{id}.json"))).expect("record"),
    )
    .expect("json");
    assert_eq!(rec["config"]["cpu_weight"], 512);
    assert_eq!(rec["config"]["cap"], 25);
}

#[test]
fn cpus_pin_at_create_and_vcpu_pin_moves_a_thread() {
    let host = Host::start();
    let last = nr_cpus() - 1;
    // The list form: vCPU i gets entry i.
    let _con = host.create_guest(
        "pinned",
        2,
        32,
        &format!("maxvcpus = 3\ncpus = [\"{last}\", \"0\"]"),
    );
    let id = domid(&host, "pinned");
    let pid = host.vmm_pid(id);
    let tids = vcpu_tids(pid);
    // maxvcpus threads exist; the third is offline (and not pinned: the list has two entries).
    assert_eq!(tids.len(), 3, "{tids:?}");
    assert_eq!(allowed(pid, tids[0].0), last.to_string());
    assert_eq!(allowed(pid, tids[1].0), "0");

    // vcpu-list: xl's header and columns, the real affinity, offline vCPUs up to maxvcpus.
    let out = host.rxl_ok(&["vcpu-list", "pinned"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)"
    );
    assert_eq!(lines.len(), 4, "{out}");
    let row0 = lines[1];
    assert!(
        row0.starts_with(&format!("{:<32} {:>5} {:>5}", "pinned", id, 0)),
        "{row0}"
    );
    assert!(row0.ends_with(&format!("  {last} / all")), "{row0}");
    assert!(lines[2].ends_with("  0 / all"), "{}", lines[2]);
    assert!(
        lines[3].contains("    -   --p       0.0  all / all"),
        "offline vCPU: {}",
        lines[3]
    );

    // vcpu-pin moves the real thread.
    host.rxl_ok(&["vcpu-pin", "pinned", "0", "0"]);
    assert_eq!(allowed(pid, tids[0].0), "0");
    host.rxl_ok(&["vcpu-pin", "pinned", "all", "all"]);
    let all = if last == 0 {
        "0".to_string()
    } else {
        format!("0-{last}")
    };
    assert_eq!(allowed(pid, tids[0].0), all);
    assert_eq!(allowed(pid, tids[1].0), all);
    host.rxl_ok(&["vcpu-pin", "pinned", "1", "all,^0"]);
    if last > 0 {
        assert_eq!(
            allowed(pid, tids[1].0),
            if last == 1 {
                "1".into()
            } else {
                format!("1-{last}")
            }
        );
    }
    // "-" leaves it alone; nonsense is refused.
    host.rxl_ok(&["vcpu-pin", "pinned", "1", "-"]);
    assert!(!host.rxl(&["vcpu-pin", "pinned", "7", "0"]).status.success());
    assert!(!host
        .rxl(&["vcpu-pin", "pinned", "0", "99"])
        .status
        .success());
    assert!(!host
        .rxl(&["vcpu-pin", "pinned", "0", "^0"])
        .status
        .success());

    // The string form pins every vCPU to the same set.
    let _c2 = host.create_guest("strpin", 2, 32, "cpus = \"0\"");
    let pid2 = host.vmm_pid(domid(&host, "strpin"));
    for (tid, _) in vcpu_tids(pid2) {
        assert_eq!(allowed(pid2, tid), "0");
    }
}

#[test]
fn vcpu_threads_live_in_the_domains_cgroup_until_it_is_destroyed() {
    let host = Host::start();
    let con = host.create_guest("cg", 2, 32, "");
    let id = domid(&host, "cg");
    let pid = host.vmm_pid(id);
    let dir = domain_cgroup(&host, id);
    let mut tasks: Vec<i32> = fs::read_to_string(dir.join("tasks"))
        .expect("tasks")
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    tasks.sort();
    let mut tids: Vec<i32> = vcpu_tids(pid).iter().map(|t| t.0).collect();
    tids.sort();
    assert_eq!(
        tasks, tids,
        "exactly the vCPU threads are in the domain's group"
    );
    // The VMM's main thread stays with Domain-0's work.
    let dom0_tasks =
        fs::read_to_string(dir.parent().expect("base").join("dom0/tasks")).expect("dom0 tasks");
    assert!(dom0_tasks.split_whitespace().any(|t| t == pid.to_string()));
    drop(con);
    host.rxl_ok(&["destroy", "cg"]);
    assert!(!dir.exists(), "{} is left after destroy", dir.display());

    // A guest that powers itself off loses its group too.
    let mut con = host.create_guest("cg2", 1, 32, "");
    let dir2 = domain_cgroup(&host, domid(&host, "cg2"));
    assert!(dir2.exists());
    con.send("shutdown");
    wait_until(Duration::from_secs(20), "cg2 is gone", || {
        host.list_row("cg2").is_none()
    });
    wait_until(Duration::from_secs(5), "its cgroup is gone", || {
        !dir2.exists()
    });
}

#[test]
fn top_batch_prints_the_header_and_changing_numbers() {
    let host = Host::start();
    let mut con = host.create_guest("busy", 2, 64, "");
    con.send("burn 20 1");
    con.wait_for("burning vcpu 1 for 20 s", BOOT);
    let out = host.rxl_ok(&["top", "-b", "-i", "2", "-d", "2"]);
    let header = "      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT SSID";
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.iter().filter(|l| **l == header).count(), 2, "{out}");
    assert_eq!(lines[0], header, "no summary lines in batch mode: {out}");
    let rows: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("busy "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    let (first, second) = (&rows[0], &rows[1]);
    assert_eq!(first[3], "0.0", "the first sample has no CPU(%) yet: {out}");
    let pct: f64 = second[3].parse().expect("CPU(%)");
    assert!(
        (10.0..=150.0).contains(&pct),
        "a burning vCPU shows {pct}% in {out}"
    );
    assert_eq!(second[1], "-----r", "{out}");
    assert_eq!(second[4], "65536", "{out}");
    assert_eq!(second[6], "65536", "{out}");
    assert_eq!(second[8], "2", "{out}");
    let (s0, s1): (u64, u64) = (
        first[2].parse().expect("sec"),
        second[2].parse().expect("sec"),
    );
    assert!(s1 >= s0, "{out}");
    assert!(lines
        .iter()
        .any(|l| l.trim_start().starts_with("Domain-0 ")));
}

#[test]
fn cpu_time_survives_an_rxend_restart() {
    let mut host = Host::start();
    let mut con = host.create_guest("billed", 1, 32, "on_poweroff = \"preserve\"");
    let id = domid(&host, "billed");
    let pid = host.vmm_pid(id);
    // Burn until the vCPU has had over half a second of CPU (however long a busy host
    // takes to give it).
    let deadline = Instant::now() + Duration::from_secs(120);
    while vcpu_seconds(pid) < 0.7 {
        assert!(Instant::now() < deadline, "the vCPU got no 0.7 s of CPU");
        con.send("burn 1");
        con.wait_for("burn done on vcpu 0", BOOT);
    }
    // The supervisor writes the figure to the record every few seconds.
    let record = host.state_dir().join(format!("domains/{id}.json"));
    wait_until(
        Duration::from_secs(15),
        "the record holds the CPU time",
        || {
            fs::read(&record)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["vmm_cpu_ns"].as_u64())
                .is_some_and(|ns| ns > 500_000_000)
        },
    );
    let before: f64 = host.list_row("billed").expect("listed")[5]
        .parse()
        .expect("time");
    // rxend dies; the guest powers off while it is away.
    host.kill_rxend();
    con.sync();
    con.send("shutdown");
    con.wait_for("powering off", BOOT);
    drop(con);
    std::thread::sleep(Duration::from_millis(500));
    host.start_rxend();
    wait_until(Duration::from_secs(10), "billed is shut down", || {
        host.list_row("billed")
            .is_some_and(|r| r.get(4).is_some_and(|s| s.contains('s')))
    });
    let after: f64 = host.list_row("billed").expect("listed")[5]
        .parse()
        .expect("time");
    eprintln!("CPU time before the restart {before} s, after {after} s");
    assert!(after >= 0.5, "CPU time lost across the restart: {after}");
    assert!(after + 0.2 >= before * 0.9, "{before} -> {after}");
}

#[test]
fn metrics_listener_serves_prometheus_text() {
    let mut host = Host::start();
    let _con = host.create_guest("metered", 1, 32, "cpu_weight = 384");
    let id = domid(&host, "metered");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    host.kill_rxend();
    let log = fs::File::create(host.dir.path().join("rxend-metrics.stderr")).expect("log");
    let child = Command::new(bin("rxend"))
        .arg("--socket")
        .arg(host.socket())
        .arg("--state-dir")
        .arg(host.state_dir())
        .arg("--cgroup")
        .arg(host.cgroup_name())
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("rxend");
    host.rxend = Some(child);
    let get = |path: &str| -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    };
    wait_until(Duration::from_secs(10), "metrics answer", || {
        get("/metrics").is_some()
    });
    let text = get("/metrics").expect("metrics");
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Type: text/plain; version=0.0.4"));
    let labels = format!("{{domid=\"{id}\",name=\"metered\"}}");
    assert!(text.contains("# TYPE rxen_domain_cpu_seconds_total counter"));
    assert!(
        text.contains(&format!("rxen_domain_cpu_seconds_total{labels} ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("rxen_domain_memory_bytes{labels} 33554432\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("rxen_domain_sched_weight{labels} 384\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("rxen_domain_vcpus{labels} 1\n")),
        "{text}"
    );
    assert!(text.contains(&format!("rxen_domain_net_transmit_bytes_total{labels} ")));
    assert!(text.contains("rxen_host_memory_total_bytes "));
    assert!(text.contains("rxen_domain_cpu_seconds_total{domid=\"0\",name=\"Domain-0\"}"));
    let missing = get("/nothing").expect("404");
    assert!(missing.starts_with("HTTP/1.0 404"), "{missing}");
}

#[test]
fn top_shows_the_disk_counters_of_the_device() {
    let host = Host::start();
    let img = host.dir.path().join("top-disk.img");
    fs::write(&img, vec![0u8; 4 << 20]).expect("image");
    let mut con = host.create_guest(
        "disky",
        1,
        64,
        &format!("disk = [ 'file:{},xvda,w' ]", img.display()),
    );
    con.send("blkwrite xvda 0 16 3");
    con.wait_for("blkwrite ok", BOOT);
    con.send("blkread xvda 0 8");
    con.wait_for("blkread crc32=", BOOT);
    let out = host.rxl_ok(&["top", "-b", "-i", "1"]);
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.trim_start().starts_with("disky "))
        .unwrap_or_else(|| panic!("no row in {out}"))
        .split_whitespace()
        .collect();
    // VBDS VBD_OO VBD_RD VBD_WR VBD_RSECT VBD_WSECT
    assert_eq!(row[12], "1", "{out}");
    let n = |i: usize| -> u64 { row[i].parse().expect("number") };
    assert!(n(14) >= 1 && n(15) >= 1, "{out}");
    assert!(n(16) >= 8 && n(17) >= 16, "{out}");
    // -x: one line per disk under the row, as xentop prints it; -v: the vCPUs.
    let out = host.rxl_ok(&["top", "-b", "-i", "1", "-x", "-v"]);
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("disky "))
        .unwrap_or_else(|| panic!("no row in {out}"));
    assert!(lines[at + 1].starts_with("VCPUs(sec):   0: "), "{out}");
    let vbd: Vec<&str> = lines[at + 2].split_whitespace().collect();
    assert_eq!(&vbd[..4], &["VBD", "BlkBack", "51712", "[ca:"], "{out}");
    let field = |name: &str| -> u64 {
        let i = vbd.iter().position(|w| *w == name).expect("field");
        vbd[i + 1].parse().expect("number")
    };
    assert!(field("RD:") >= 1 && field("WR:") >= 1, "{out}");
    assert!(field("RSECT:") >= 8 && field("WSECT:") >= 16, "{out}");
}

/// The VMM's own answer to a stats request, from its control socket.
fn vmm_stats(host: &Host, id: u32) -> serde_json::Value {
    let sock = host.state_dir().join(format!("dom/{id}/control.sock"));
    let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("control socket");
    s.write_all(b"{\"cmd\":\"stats\"}\n").expect("request");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).expect("answer");
    serde_json::from_str(&line).expect("json")
}

#[test]
fn mem_set_moves_the_balloon_target_within_maxmem() {
    let host = Host::start();
    let _con = host.create_guest("bal", 1, 64, "maxmem = 64");
    let id = domid(&host, "bal");
    // Every domain has a balloon in the last slot, empty at boot.
    let st = vmm_stats(&host, id);
    assert_eq!(st["balloon"]["target_pages"], 0, "{st}");
    host.rxl_ok(&["mem-set", "bal", "48"]);
    let st = vmm_stats(&host, id);
    assert_eq!(st["balloon"]["target_pages"], 16 * 256, "{st}");
    assert_eq!(host.list_row("bal").expect("listed")[2], "48");
    // xl's units: no suffix is MiB; k, m, g are accepted.
    host.rxl_ok(&["mem-set", "bal", "56m"]);
    assert_eq!(vmm_stats(&host, id)["balloon"]["target_pages"], 8 * 256);
    host.rxl_ok(&["mem-set", "bal", "65536k"]);
    assert_eq!(vmm_stats(&host, id)["balloon"]["target_pages"], 0);
    assert_eq!(host.list_row("bal").expect("listed")[2], "64");
    // Bounds: not above maxmem, not zero; mem-max not below the current size
    // nor above the RAM the domain was built with.
    assert!(!host.rxl(&["mem-set", "bal", "128"]).status.success());
    assert!(!host.rxl(&["mem-set", "bal", "0"]).status.success());
    host.rxl_ok(&["mem-set", "bal", "40"]);
    let low = host.rxl(&["mem-max", "bal", "32"]);
    assert!(!low.status.success());
    assert!(String::from_utf8_lossy(&low.stderr).contains("below the current memory"));
    let high = host.rxl(&["mem-max", "bal", "65"]);
    assert!(!high.status.success());
    assert!(String::from_utf8_lossy(&high.stderr).contains("of RAM the domain was built with"));
    host.rxl_ok(&["mem-max", "bal", "40"]);
    assert!(!host.rxl(&["mem-set", "bal", "48"]).status.success());
    let rec: serde_json::Value = serde_json::from_slice(
        &fs::read(host.state_dir().join(format!("domains/{id}.json"))).expect("record"),
    )
    .expect("json");
    assert_eq!(rec["mem_max_mib"], 40);
    assert_eq!(
        rec["config"]["maxmem_mib"], 64,
        "the config keeps its maxmem"
    );
    assert_eq!(rec["mem_target_mib"], 40);
}

#[test]
fn vcpu_set_brings_vcpus_online_and_offline_up_to_maxvcpus() {
    let host = Host::start();
    let mut con = host.create_guest("hot", 1, 32, "maxvcpus = 3");
    let id = domid(&host, "hot");
    con.send("vcpus");
    con.wait_for("vcpus online=1 mask=0x1", BOOT);
    assert_eq!(host.list_row("hot").expect("listed")[3], "1");

    // Three vCPUs on a two-CPU host is overcommitting: xl wants -i for that.
    assert!(!host.rxl(&["vcpu-set", "hot", "3"]).status.success() || nr_cpus() >= 3);
    host.rxl_ok(&["vcpu-set", "-i", "hot", "3"]);
    con.wait_for("vcpu 2 online", BOOT);
    con.sync();
    con.send("vcpus");
    con.wait_for("vcpus online=3 mask=0x7", BOOT);
    // The guest reported its mask to the VMM; xl list counts online vCPUs.
    wait_until(Duration::from_secs(5), "the guest reports 3 online", || {
        vmm_stats(&host, id)["online_mask"] == 7
    });
    assert_eq!(host.list_row("hot").expect("listed")[3], "3");
    let vl = host.rxl_ok(&["vcpu-list", "hot"]);
    assert_eq!(vl.lines().filter(|l| l.contains("--p")).count(), 0, "{vl}");
    // A newly online vCPU does work.
    con.send("burn 1 2");
    con.wait_for("burn done on vcpu 2", BOOT);

    host.rxl_ok(&["vcpu-set", "hot", "1"]);
    con.wait_for("vcpu 2 offline", BOOT);
    con.sync();
    con.send("vcpus");
    con.wait_for("vcpus online=1 mask=0x1", BOOT);
    assert_eq!(host.list_row("hot").expect("listed")[3], "1");
    let vl = host.rxl_ok(&["vcpu-list", "hot"]);
    assert_eq!(vl.lines().filter(|l| l.contains("--p")).count(), 2, "{vl}");
    // Bounds: 1..=maxvcpus.
    assert!(!host.rxl(&["vcpu-set", "hot", "0"]).status.success());
    assert!(!host.rxl(&["vcpu-set", "-i", "hot", "4"]).status.success());
}

fn vmm_rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn mem_set_down_returns_memory_to_the_host_and_up_gives_it_back() {
    let host = Host::start();
    let mut con = host.create_guest("squeeze", 1, 48, "maxmem = 48");
    let id = domid(&host, "squeeze");
    let pid = host.vmm_pid(id);
    // The guest's loops are slow under PVM: give memfill time.
    let fill = Duration::from_secs(240);
    let t0 = Instant::now();
    con.send("memfill 1");
    con.wait_for("memfill done", fill);
    eprintln!(
        "memfill of a 48 MiB guest took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let full = vmm_rss_kib(pid);
    // Down to 16 MiB: the guest inflates its balloon and the VMM drops the pages.
    host.rxl_ok(&["mem-set", "squeeze", "16"]);
    wait_until(
        Duration::from_secs(30),
        "the guest gives 32 MiB back",
        || {
            vmm_stats(&host, id)["balloon"]["inflated_pages"]
                .as_u64()
                .is_some_and(|p| p >= 30 * 256)
        },
    );
    let given = con.ballooned_pages();
    let squeezed = vmm_rss_kib(pid);
    eprintln!(
        "VMM RSS {} MiB with memory filled, {} MiB after mem-set 16 ({} pages ballooned)",
        full / 1024,
        squeezed / 1024,
        given
    );
    assert!(given >= 30 * 256, "{given} pages");
    assert!(
        squeezed + 20 * 1024 < full,
        "RSS fell only from {full} KiB to {squeezed} KiB"
    );
    assert_eq!(host.list_row("squeeze").expect("listed")[2], "16");
    // Back up: the guest deflates and can use (and the host backs) the memory again.
    host.rxl_ok(&["mem-set", "squeeze", "48"]);
    wait_until(Duration::from_secs(30), "the balloon is empty", || {
        vmm_stats(&host, id)["balloon"]["inflated_pages"].as_u64() == Some(0)
    });
    assert_eq!(con.ballooned_pages(), 0);
    con.send("memfill 2");
    con.wait_for("memfill done", fill);
    let refilled = vmm_rss_kib(pid);
    eprintln!(
        "VMM RSS {} MiB after mem-set 48 and memfill",
        refilled / 1024
    );
    assert!(
        refilled > squeezed + 20 * 1024,
        "the guest did not use its memory again: {squeezed} -> {refilled} KiB"
    );
}

#[test]
fn a_domain_with_maxmem_above_memory_starts_ballooned_and_grows_to_maxmem() {
    let host = Host::start();
    // As Xen: RAM for maxmem, of which the guest starts with `memory`.
    let mut con = host.create_guest("grow", 1, 16, "maxmem = 48");
    let id = domid(&host, "grow");
    let pid = host.vmm_pid(id);
    assert_eq!(
        vmm_stats(&host, id)["balloon"]["target_pages"],
        32 * 256,
        "the balloon starts holding maxmem - memory"
    );
    wait_until(
        Duration::from_secs(30),
        "the guest gives the 32 MiB above its memory to the balloon",
        || {
            vmm_stats(&host, id)["balloon"]["inflated_pages"]
                .as_u64()
                .is_some_and(|p| p >= 32 * 256)
        },
    );
    let row = host.list_row("grow").expect("listed");
    assert_eq!(row[2], "16", "{row:?}");
    let fill = Duration::from_secs(240);
    con.send("memfill 3");
    con.wait_for("memfill done", fill);
    let small = vmm_rss_kib(pid);
    // Grow to maxmem: the balloon empties and the guest fills memory it
    // never had before, which the host now backs.
    host.rxl_ok(&["mem-set", "grow", "48"]);
    wait_until(Duration::from_secs(30), "the balloon is empty", || {
        vmm_stats(&host, id)["balloon"]["inflated_pages"].as_u64() == Some(0)
    });
    assert_eq!(con.ballooned_pages(), 0);
    assert_eq!(host.list_row("grow").expect("listed")[2], "48");
    con.send("memfill 4");
    con.wait_for("memfill done", fill);
    let grown = vmm_rss_kib(pid);
    eprintln!(
        "VMM RSS {} MiB at memory 16, {} MiB after mem-set 48 and memfill",
        small / 1024,
        grown / 1024
    );
    assert!(
        grown > small + 24 * 1024,
        "the guest did not grow beyond its boot memory: {small} -> {grown} KiB"
    );
    // Not beyond maxmem.
    assert!(!host.rxl(&["mem-set", "grow", "49"]).status.success());
}
