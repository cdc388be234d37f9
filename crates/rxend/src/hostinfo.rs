//! Facts about the host: Domain-0's row in `rxl list` and `rxl info`.

use std::fs;

/// Host memory from `/proc/meminfo`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// MemTotal.
    pub total_kib: u64,
    /// MemAvailable (MemFree on old kernels).
    pub free_kib: u64,
}

/// Parses `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> Memory {
    let mut m = Memory::default();
    let mut free = None;
    let mut avail = None;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(val) = val.parse::<u64>() else {
            continue;
        };
        match key {
            "MemTotal:" => m.total_kib = val,
            "MemFree:" => free = Some(val),
            "MemAvailable:" => avail = Some(val),
            _ => {}
        }
    }
    m.free_kib = avail.or(free).unwrap_or(0);
    m
}

/// The host's memory now.
pub fn memory() -> Memory {
    fs::read_to_string("/proc/meminfo")
        .map(|t| parse_meminfo(&t))
        .unwrap_or_default()
}

/// Online CPUs.
pub fn nr_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// CPU busy time of the whole host (all but idle and iowait), in seconds: Domain-0's `Time(s)`.
pub fn busy_seconds() -> f64 {
    let Ok(text) = fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, x)| *x)
        .sum();
    busy as f64 / crate::procfs::clock_ticks() as f64
}

/// Seconds since the host booted.
pub fn host_uptime() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn cpuinfo_field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The host CPU's clock in MHz (from `/proc/cpuinfo`), 0 when unknown.
pub fn cpu_mhz() -> f64 {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo_field(&cpuinfo, "cpu MHz")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Busy CPU time of each host CPU, in nanoseconds (`cpuN` lines of `/proc/stat`).
pub fn per_cpu_busy_ns() -> Vec<u64> {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks = crate::procfs::clock_ticks().max(1);
    text.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse::<u64>().ok())
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
                .map(|(_, x)| x)
                .sum::<u64>()
                * 1_000_000_000
                / ticks
        })
        .collect()
}

/// The `rxl info` fields, in xl's order and names.
pub fn info_fields(free_cpus: u32, sandbox: bool) -> Vec<(String, String)> {
    let uts = nix::sys::utsname::uname().ok();
    let u = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uts.as_ref()
            .map(|x| f(x).to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz: f64 = cpuinfo_field(&cpuinfo, "cpu MHz")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let cores: u32 = cpuinfo_field(&cpuinfo, "cpu cores")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let siblings: u32 = cpuinfo_field(&cpuinfo, "siblings")
        .and_then(|v| v.parse().ok())
        .unwrap_or(cores);
    let threads = (siblings / cores.max(1)).max(1);
    let mem = memory();
    let n = nr_cpus();
    let version = env!("CARGO_PKG_VERSION");
    let (major, minor) = version
        .split_once('.')
        .map(|(a, b)| (a, b.split('.').next().unwrap_or("0")))
        .unwrap_or(("0", "0"));
    let mhz_int = mhz as u64;
    let mhz_frac = ((mhz - mhz_int as f64) * 1000.0).round() as u64 % 1000;
    let virt_caps = virt_caps(
        std::path::Path::new("/dev/kvm").exists(),
        kvm_two_dimensional_paging(),
    );
    let patch = version.split('.').nth(2).unwrap_or("0");
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let f = |k: &str, v: String| (k.to_string(), v);
    vec![
        f("host", u(|x| x.nodename())),
        f("release", u(|x| x.release())),
        f("version", u(|x| x.version())),
        f("machine", u(|x| x.machine())),
        f("nr_cpus", n.to_string()),
        f("max_cpu_id", n.saturating_sub(1).to_string()),
        f("nr_nodes", "1".into()),
        f("cores_per_socket", cores.to_string()),
        f("threads_per_core", threads.to_string()),
        f("cpu_mhz", format!("{mhz_int}.{mhz_frac:03}")),
        f("hw_caps", format_hw_caps(&hw_caps())),
        f("virt_caps", virt_caps),
        f("total_memory", (mem.total_kib / 1024).to_string()),
        f("free_memory", (mem.free_kib / 1024).to_string()),
        f("sharing_freed_memory", "0".into()),
        f("sharing_used_memory", "0".into()),
        f("outstanding_claims", "0".into()),
        f("free_cpus", free_cpus.to_string()),
        f("xen_major", major.to_string()),
        f("xen_minor", minor.to_string()),
        f("xen_extra", format!(".{patch}-rxen")),
        // xl's "%d.%d%s": major, minor, extra.
        f("xen_version", format!("{major}.{minor}.{patch}-rxen")),
        f("xen_caps", "hvm-3.0-x86_64".into()),
        f("xen_scheduler", "credit".into()),
        f("xen_pagesize", "4096".into()),
        f("platform_params", "virt_start=0x0".into()),
        f("xen_changeset", "".into()),
        f("xen_commandline", cmdline.trim_end().to_string()),
        f("cc_compiler", "rustc".into()),
        f("cc_compile_by", "rxen".into()),
        f("cc_compile_domain", "".into()),
        f("cc_compile_date", "".into()),
        f("build_id", "".into()),
        f(
            "rxen_sandbox",
            if sandbox {
                "on".into()
            } else {
                "OFF (rxend --no-sandbox: every VMM runs unconfined)".into()
            },
        ),
        f("xend_config_format", "4".into()),
    ]
}

/// Xen's `virt_caps` for a KVM host (xl prints each with a space before it, so the line reads
/// `virt_caps              : hvm hap`): `hvm` when `/dev/kvm` is there (every rxen domain is a
/// fully virtualized one), then `hap` when KVM uses the CPU's two-dimensional paging (EPT or
/// NPT) or `shadow` when it shadows the guest's page tables itself (as PVM does).
pub fn virt_caps(kvm: bool, hap: bool) -> String {
    match (kvm, hap) {
        (false, _) => String::new(),
        (true, true) => "hvm hap".into(),
        (true, false) => "hvm shadow".into(),
    }
}

/// Whether KVM's MMU uses EPT (Intel) or NPT (AMD), from its module parameters.
fn kvm_two_dimensional_paging() -> bool {
    [
        "/sys/module/kvm_intel/parameters/ept",
        "/sys/module/kvm_amd/parameters/npt",
    ]
    .iter()
    .filter_map(|p| fs::read_to_string(p).ok())
    .any(|v| matches!(v.trim(), "Y" | "y" | "1"))
}

/// xl's `hw_caps`: eight feature words, `"%08x:%08x:...`.
pub fn format_hw_caps(words: &[u32; 8]) -> String {
    words
        .iter()
        .map(|w| format!("{w:08x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The host CPU's feature words in Xen's featureset order (its `hw_cap`): CPUID 1 EDX, 1 ECX,
/// 0x80000001 EDX, 0x80000001 ECX, 0xD:1 EAX, 7:0 EBX, 7:0 ECX, 0x80000007 EDX; zero for a
/// leaf the CPU does not have.
#[cfg(target_arch = "x86_64")]
pub fn hw_caps() -> [u32; 8] {
    use std::arch::x86_64::{__cpuid_count, CpuidResult};
    // SAFETY: every x86_64 CPU has CPUID; it only reads the CPU's identification registers.
    #[allow(unused_unsafe)]
    let leaf = |l: u32, sub: u32| -> CpuidResult { unsafe { __cpuid_count(l, sub) } };
    let max = leaf(0, 0).eax;
    let max_ext = leaf(0x8000_0000, 0).eax;
    let get = |l: u32, sub: u32| {
        let have = if l >= 0x8000_0000 {
            l <= max_ext
        } else {
            l <= max
        };
        have.then(|| leaf(l, sub))
    };
    let w = |r: Option<CpuidResult>, f: fn(&CpuidResult) -> u32| r.as_ref().map_or(0, f);
    [
        w(get(1, 0), |r| r.edx),
        w(get(1, 0), |r| r.ecx),
        w(get(0x8000_0001, 0), |r| r.edx),
        w(get(0x8000_0001, 0), |r| r.ecx),
        w(get(0xd, 1), |r| r.eax),
        w(get(7, 0), |r| r.ebx),
        w(get(7, 0), |r| r.ecx),
        w(get(0x8000_0007, 0), |r| r.edx),
    ]
}

/// No CPUID elsewhere: no feature words.
#[cfg(not(target_arch = "x86_64"))]
pub fn hw_caps() -> [u32; 8] {
    [0; 8]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_prefers_available() {
        let m = parse_meminfo("MemTotal:  1000 kB\nMemFree: 100 kB\nMemAvailable: 600 kB\n");
        assert_eq!(
            m,
            Memory {
                total_kib: 1000,
                free_kib: 600
            }
        );
        let m = parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\n");
        assert_eq!(m.free_kib, 100);
    }

    #[test]
    fn virt_and_hw_caps_in_xl_form() {
        assert_eq!(virt_caps(true, true), "hvm hap");
        assert_eq!(virt_caps(true, false), "hvm shadow");
        assert_eq!(virt_caps(false, true), "");
        assert_eq!(
            format_hw_caps(&[0x178bfbff, 0x7ed8320b, 0, 1, 2, 3, 4, 0xffffffff]),
            "178bfbff:7ed8320b:00000000:00000001:00000002:00000003:00000004:ffffffff"
        );
        // Every x86_64 CPU has FPU and TSC (CPUID 1 EDX bits 0 and 4).
        #[cfg(target_arch = "x86_64")]
        assert_eq!(hw_caps()[0] & 0x11, 0x11);
    }

    #[test]
    fn info_has_xl_fields_in_order() {
        let f = info_fields(0, true);
        let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            &names[..5],
            &["host", "release", "version", "machine", "nr_cpus"]
        );
        assert_eq!(names.last(), Some(&"xend_config_format"));
        let total: u64 = f
            .iter()
            .find(|(k, _)| k == "total_memory")
            .and_then(|(_, v)| v.parse().ok())
            .expect("total_memory");
        assert!(total > 0);
    }
}
