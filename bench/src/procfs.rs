//! What /proc says about a monitor process: resident memory beside the guest's, CPU time.

use crate::error::{BenchError, Result};

/// A process's resident memory split into the guest-RAM mapping(s) and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// The whole process's resident KiB (sum of every mapping's Rss).
    pub total_kib: u64,
    /// Resident KiB of the mapping(s) that hold guest RAM.
    pub guest_kib: u64,
}

impl Resident {
    /// The monitor's own resident memory: everything but the guest's pages, in MiB.
    pub fn own_mib(&self) -> f64 {
        self.total_kib.saturating_sub(self.guest_kib) as f64 / 1024.0
    }
}

/// Reads `/proc/PID/smaps` and finds the guest RAM of `guest_mib` MiB in it.
pub fn resident(pid: u32, guest_mib: u64) -> Result<Resident> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| BenchError::io(format!("read /proc/{pid}/smaps"), e))?;
    split_smaps(&text, guest_mib * 1024).ok_or_else(|| {
        BenchError::Unexpected(format!(
            "no anonymous mapping of the guest's {guest_mib} MiB in /proc/{pid}/smaps"
        ))
    })
}

struct Mapping {
    anonymous: bool,
    size_kib: u64,
    rss_kib: u64,
}

/// Splits smaps text into total and guest-RAM residency. Guest RAM is the
/// anonymous (or memfd) mappings whose size is exactly the guest's; if there is
/// none, the mappings of size guest..guest+8 MiB (alignment slack); if the RAM
/// is split in several mappings (a hole below 4 GiB), the largest anonymous
/// mappings that add up to the guest's size.
fn split_smaps(text: &str, guest_kib: u64) -> Option<Resident> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let path = line.split_whitespace().nth(5).unwrap_or("");
            let anonymous = path.is_empty()
                || path.starts_with("/memfd:")
                || path.starts_with("[anon")
                || path == "/dev/zero";
            maps.push(Mapping {
                anonymous,
                size_kib: 0,
                rss_kib: 0,
            });
        } else if let Some(m) = maps.last_mut() {
            let v = f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            match first {
                "Size:" => m.size_kib = v,
                "Rss:" => m.rss_kib = v,
                _ => {}
            }
        }
    }
    let total_kib = maps.iter().map(|m| m.rss_kib).sum();
    let exact: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.anonymous && m.size_kib == guest_kib)
        .collect();
    let guest_kib_rss = if let Some(m) = exact.first() {
        m.rss_kib
    } else if let Some(m) = maps
        .iter()
        .find(|m| m.anonymous && m.size_kib > guest_kib && m.size_kib <= guest_kib + 8192)
    {
        m.rss_kib
    } else {
        let mut big: Vec<&Mapping> = maps
            .iter()
            .filter(|m| m.anonymous && m.size_kib >= 4096 && m.size_kib < guest_kib)
            .collect();
        big.sort_by_key(|m| std::cmp::Reverse(m.size_kib));
        let (mut size, mut rss) = (0u64, 0u64);
        for m in big {
            if size + m.size_kib <= guest_kib {
                size += m.size_kib;
                rss += m.rss_kib;
            }
            if size == guest_kib {
                break;
            }
        }
        if size != guest_kib {
            return None;
        }
        rss
    };
    Some(Resident {
        total_kib,
        guest_kib: guest_kib_rss,
    })
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| BenchError::io(format!("read /proc/{pid}/stat"), e))?;
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok((ut + st) / if tck > 0 { tck as f64 } else { 100.0 })
}

/// How many of a process's threads run under a seccomp filter, and how many
/// threads it has, from the `Seccomp:` line of each `/proc/PID/task/TID/status`
/// (2 is filter mode).
pub fn seccomp_threads(pid: u32) -> Result<(usize, usize)> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| BenchError::io(format!("read {dir}"), e))?;
    let (mut filtered, mut total) = (0, 0);
    for t in tasks.flatten() {
        // A thread may exit between the listing and the read: it is not counted.
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        total += 1;
        if seccomp_mode(&status) == Some(2) {
            filtered += 1;
        }
    }
    Ok((filtered, total))
}

/// The number on the `Seccomp:` line of a status file.
fn seccomp_mode(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::{seccomp_mode, split_smaps};

    #[test]
    fn seccomp_line() {
        let status = "Name:\trxen-vmm\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t2\n";
        assert_eq!(seccomp_mode(status), Some(2));
        assert_eq!(seccomp_mode("Seccomp:\t0\n"), Some(0));
        assert_eq!(seccomp_mode("Name:\tx\n"), None);
    }

    const SMAPS: &str = "\
55d0-55e0 r-xp 00000000 08:01 123 /usr/bin/qemu
Size:                 64 kB
Rss:                  60 kB
7f00-7f10 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:                8000 kB
7f20-7f30 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                1000 kB
";

    #[test]
    fn guest_mapping_is_set_apart() {
        let r = split_smaps(SMAPS, 131072).unwrap();
        assert_eq!((r.total_kib, r.guest_kib), (9060, 8000));
        assert!((r.own_mib() - 1060.0 / 1024.0).abs() < 1e-9);
        assert!(split_smaps(SMAPS, 262144).is_none());
    }
}
