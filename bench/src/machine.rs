//! A description of the machine the benchmark ran on, for the report's header.

use std::process::Command;

/// The header lines: date, CPU, memory, kernel, KVM flavour, QEMU, load.
pub fn describe(qemu: &str) -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|x| x.1.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let qemu_version = Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("{qemu} not found"));
    vec![
        format!("- date: {}", now_utc()),
        format!("- CPU: {model}, {cores} cores visible"),
        format!("- memory: {mem_gib:.1} GiB"),
        format!("- kernel: Linux {}", kernel.trim()),
        format!("- KVM: {}", kvm_flavour()),
        format!("- QEMU: {qemu_version}"),
        format!("- load average at start: {}", load()),
    ]
}

/// The 1-, 5- and 15-minute load averages.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Which KVM implementation backs /dev/kvm.
pub fn kvm_flavour() -> String {
    let m = |n: &str| std::path::Path::new("/sys/module").join(n).exists();
    if m("kvm_pvm") {
        "PVM (`kvm_pvm`: software pagetable virtual machine, no VT-x/AMD-V)".into()
    } else if m("kvm_intel") {
        "kvm_intel (VT-x)".into()
    } else if m("kvm_amd") {
        "kvm_amd (AMD-V)".into()
    } else {
        "unknown".into()
    }
}

/// The current UTC time, as `date -u` prints it.
pub fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
