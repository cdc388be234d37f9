//! Stock Debian Linux as an rxen guest, on every test run.
//!
//! `/dev/kvm` on rxen's test machines cannot run a stock Linux kernel, so
//! `scripts/linux-l1/run.sh` nests: QEMU (TCG) emulates an AMD CPU with SVM,
//! an L1 Debian kernel in it loads the stock kvm_amd, and rxl/rxend/rxen-vmm
//! from this build run stock Debian kernels as L2 guests through real rxl
//! commands. L1 prints `CHECK <name> PASS|FAIL <detail>` per check. The
//! harness runs once (it takes minutes) and each test below asserts one check,
//! printing that scenario group's part of L1's log when it fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Everything the test needs from one harness run.
struct Run {
    /// What the harness found missing on this host (exit 77: a tool it could not install).
    missing: Option<String>,
    /// The harness's exit status.
    status: Option<i32>,
    /// The CHECK lines: (name, passed, detail).
    checks: Vec<(String, bool, String)>,
    /// L1's serial log of the run that counts (the last try), `\r` removed.
    serial: String,
    /// Its path.
    serial_path: PathBuf,
    /// The harness's own output (its log and summary).
    harness: String,
    /// Where the run's files are.
    out: PathBuf,
}

/// The harness's wall-clock bound: two L1 tries of at most 15 minutes each, plus downloads.
const HARNESS_LIMIT: Duration = Duration::from_secs(40 * 60);

fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(run_harness)
}

fn run_harness() -> Run {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/linux-l1/run.sh");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux-l1");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).expect("create the harness output directory");
    // The binaries this build made (the test binary's own profile), unless told otherwise.
    let bins = std::env::var_os("RXEN_LINUX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(rxen_e2e::bin_dir);
    let log = fs::File::create(out.join("harness.out")).expect("harness output file");
    let mut child = Command::new("bash")
        .arg(&script)
        .env("RXEN_LINUX_BIN", &bins)
        .env("RXEN_LINUX_OUT", &out)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup the log"))
        .stderr(log)
        .spawn()
        .expect("run scripts/linux-l1/run.sh");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the harness") {
            break s.code();
        }
        if start.elapsed() > HARNESS_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let harness = fs::read_to_string(out.join("harness.out")).unwrap_or_default();
    eprintln!(
        "linux-l1 harness: exit {status:?} after {:.0} s; files in {}",
        start.elapsed().as_secs_f64(),
        out.display()
    );
    if status == Some(77) {
        let why = harness
            .lines()
            .find(|l| l.contains("MISSING: "))
            .unwrap_or("a host tool (QEMU, cpio, objcopy) is missing and cannot be installed")
            .to_string();
        return Run {
            missing: Some(why),
            status,
            checks: Vec::new(),
            serial: String::new(),
            serial_path: PathBuf::new(),
            harness,
            out,
        };
    }
    // The last try is the run that counts (an earlier one stalled or never finished).
    let serial_path = (1..=9)
        .rev()
        .map(|n| out.join(format!("l1-try{n}.serial")))
        .find(|p| p.exists())
        .unwrap_or_else(|| out.join("l1-try1.serial"));
    let serial = fs::read(&serial_path)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default();
    let checks = fs::read_to_string(out.join("checks.txt"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("CHECK ")?;
            let mut parts = rest.splitn(3, ' ');
            let name = parts.next()?.to_string();
            let passed = parts.next()? == "PASS";
            Some((name, passed, parts.next().unwrap_or("").to_string()))
        })
        .collect();
    if let Ok(summary) = fs::read_to_string(out.join("summary.txt")) {
        eprintln!("{summary}");
    }
    Run {
        missing: None,
        status,
        checks,
        serial,
        serial_path,
        harness,
        out,
    }
}

/// The lines of L1's log between `=== GROUP <group> BEGIN` and its END (or the log's end),
/// at most the last `max` of them.
fn group_section(serial: &str, group: &str, max: usize) -> String {
    let begin = format!("=== GROUP {group} BEGIN");
    let end = format!("=== GROUP {group} END");
    let lines: Vec<&str> = serial
        .lines()
        .skip_while(|l| !l.contains(&begin))
        .take_while(|l| !l.contains(&end))
        .collect();
    let skip = lines.len().saturating_sub(max);
    lines[skip..].join("\n")
}

fn tail(text: &str, max: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max)..].join("\n")
}

/// Fails the test when the harness could not run for want of a host tool (it says which).
fn require_tools(run: &Run) {
    if let Some(why) = &run.missing {
        panic!(
            "the stock-Linux harness cannot run here: {why}\n(scripts/test.sh installs \
             qemu-system-x86, cpio and binutils; then run the tests again)"
        );
    }
}

/// Asserts that L1 reported check `name` (of scenario group `group`) as passed.
fn assert_check(name: &str, group: &str) {
    let run = run();
    require_tools(run);
    let Some((_, passed, detail)) = run.checks.iter().find(|(n, _, _)| n == name) else {
        panic!(
            "the harness reported no check {name} (exit {:?}); its output:\n{}\n\nL1's log ({}), last lines:\n{}",
            run.status,
            tail(&run.harness, 40),
            run.serial_path.display(),
            tail(&run.serial, 80)
        );
    };
    assert!(
        *passed,
        "stock Linux under rxen: check {name} failed: {detail}\n\nL1's log of group {group} ({}):\n{}\n\nall checks:\n{}\n(files in {})",
        run.serial_path.display(),
        group_section(&run.serial, group, 250),
        run.checks
            .iter()
            .map(|(n, p, _)| format!("  {n}: {}", if *p { "PASS" } else { "FAIL" }))
            .collect::<Vec<_>>()
            .join("\n"),
        run.out.display()
    );
}

/// Every check the harness plans, by group; the tests below cover each one.
const CHECKS: &[(&str, &str)] = &[
    ("boot-2vcpu", "devices"),
    ("disk-vda", "devices"),
    ("net", "devices"),
    ("balloon", "devices"),
    ("hotplug", "devices"),
    ("cdrom", "devices"),
    ("sysrq", "devices"),
    ("rxl-shutdown", "devices"),
    ("disk-write", "devices"),
    ("boot-1vcpu", "life"),
    ("save-restore", "life"),
    ("save-restore-disk", "life"),
    ("migrate", "life"),
    ("migrate-disk", "life"),
    ("rxl-reboot", "life"),
    ("guest-reboot", "life"),
    ("guest-poweroff", "life"),
];

#[test]
fn linux_harness_reports_every_check() {
    let run = run();
    require_tools(run);
    assert!(
        matches!(run.status, Some(0) | Some(1)),
        "the harness finished no L1 run (exit {:?}); its output:\n{}\n\nL1's log ({}), last lines:\n{}",
        run.status,
        tail(&run.harness, 40),
        run.serial_path.display(),
        tail(&run.serial, 80)
    );
    for (name, _) in CHECKS {
        assert!(
            run.checks.iter().any(|(n, _, _)| n == name),
            "no result for check {name}; checks reported: {:?}",
            run.checks.iter().map(|c| &c.0).collect::<Vec<_>>()
        );
    }
    for (n, _, _) in &run.checks {
        assert!(
            CHECKS.iter().any(|(c, _)| c == n),
            "the harness reported check {n}, which this test does not know"
        );
    }
}

#[test]
fn linux_boots_to_userspace_with_1_vcpu() {
    assert_check("boot-1vcpu", "life");
}

#[test]
fn linux_boots_to_userspace_with_2_vcpus() {
    assert_check("boot-2vcpu", "devices");
}

#[test]
fn linux_reads_its_virtio_disk_as_vda() {
    assert_check("disk-vda", "devices");
}

#[test]
fn linux_disk_writes_reach_the_image() {
    assert_check("disk-write", "devices");
}

#[test]
fn linux_nic_pings_the_host_across_the_bridge() {
    assert_check("net", "devices");
}

#[test]
fn linux_balloon_gives_memory_back() {
    assert_check("balloon", "devices");
}

#[test]
fn a_disk_hot_plugs_into_a_running_linux_guest() {
    assert_check("hotplug", "devices");
}

#[test]
fn a_cdrom_media_change_reaches_linux() {
    assert_check("cdrom", "devices");
}

#[test]
fn rxl_sysrq_reaches_linux_magic_sysrq() {
    assert_check("sysrq", "devices");
}

#[test]
fn rxl_shutdown_powers_linux_off() {
    assert_check("rxl-shutdown", "devices");
}

#[test]
fn linux_poweroff_ends_the_domain() {
    assert_check("guest-poweroff", "life");
}

#[test]
fn linux_reboot_restarts_the_domain() {
    assert_check("guest-reboot", "life");
}

#[test]
fn rxl_reboot_reboots_linux() {
    assert_check("rxl-reboot", "life");
}

#[test]
fn linux_survives_save_and_restore() {
    assert_check("save-restore", "life");
}

#[test]
fn linux_disk_survives_save_and_restore() {
    assert_check("save-restore-disk", "life");
}

#[test]
fn linux_survives_live_migration() {
    assert_check("migrate", "life");
}

#[test]
fn linux_disk_survives_live_migration() {
    assert_check("migrate-disk", "life");
}
