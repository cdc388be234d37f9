//! xl's scheduler and vCPU output formats: `xl sched-credit` and `xl vcpu-list`; and how
//! `xl vcpu-pin` reads its vCPU argument.

use rxen_proto::api::{SchedEntry, VcpuInfo};

/// The pool line of `xl sched-credit`. Linux's CFS has no credit time slice,
/// rate limit or migration delay to report, so rxen prints xl's own line for
/// parameters it cannot read.
pub const SCHED_POOL_LINE: &str = "Cpupool Pool-0: [sched params unavailable]";

/// The header of `xl sched-credit`: `"%-33s %4s %6s %4s"`.
pub fn sched_header() -> String {
    format!("{:<33} {:>4} {:>6} {:>4}", "Name", "ID", "Weight", "Cap")
}

/// One row of `xl sched-credit`: `"%-33s %4d %6d %4d"`.
pub fn sched_row(e: &SchedEntry) -> String {
    format!("{:<33} {:>4} {:>6} {:>4}", e.name, e.domid, e.weight, e.cap)
}

/// The output of `xl sched-credit`: the pool line when no domain was named,
/// then the header and the rows.
pub fn sched_table(entries: &[SchedEntry], with_pool: bool) -> String {
    let mut out = String::new();
    if with_pool {
        out.push_str(SCHED_POOL_LINE);
        out.push('\n');
    }
    out.push_str(&sched_header());
    out.push('\n');
    for e in entries {
        out.push_str(&sched_row(e));
        out.push('\n');
    }
    out
}

/// xl's memory size for `mem-set`/`mem-max` in MiB: a number with an
/// optional suffix `b`, `k`, `m`, `g`, `t` (no suffix = MiB, as xl's code
/// has it); `None` for anything else or for less than one MiB.
pub fn parse_mem_size_mib(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit_kib): (&str, u64) = match s.chars().last()?.to_ascii_lowercase() {
        'b' => (&s[..s.len() - 1], 0),
        'k' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 1 << 10),
        'g' => (&s[..s.len() - 1], 1 << 20),
        't' => (&s[..s.len() - 1], 1 << 30),
        c if c.is_ascii_digit() => (s, 1 << 10),
        _ => return None,
    };
    let n: u64 = num.parse().ok()?;
    let kib = if unit_kib == 0 {
        n / 1024
    } else {
        n.checked_mul(unit_kib)?
    };
    let mib = kib / 1024;
    (mib > 0).then_some(mib)
}

/// `rxl vcpu-pin`'s vCPU argument refused, in xl's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// Neither a number nor `all`.
    #[error("Error: Invalid argument {0} as VCPU.")]
    InvalidVcpu(String),
    /// `-f` with `all`.
    #[error("Error: --force and 'all' as VCPU not allowed.")]
    ForceAll,
}

/// The vCPU `xl vcpu-pin` acts on, read as xl reads it (`strtol`: the leading digits; `all`
/// when there are none and the word is `all`), as rxend's request spells it.
pub fn pin_target(vcpu: &str, force: bool) -> Result<String, PinError> {
    let t = vcpu.trim_start();
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    let number = digits[..end].parse::<u64>().unwrap_or(u64::MAX);
    if end == 0 || (negative && number != 0) {
        if vcpu != "all" {
            return Err(PinError::InvalidVcpu(vcpu.to_string()));
        }
        if force {
            return Err(PinError::ForceAll);
        }
        return Ok("all".into());
    }
    Ok(number.to_string())
}

/// The header of `xl vcpu-list`: `"%-32s %5s %5s %5s %5s %9s %s"`.
pub fn vcpu_header() -> String {
    format!(
        "{:<32} {:>5} {:>5} {:>5} {:>5} {:>9} {}",
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity (Hard / Soft)"
    )
}

/// One row of `xl vcpu-list`. As in xl there is no space between the VCPU
/// and CPU numbers: `"%-32s %5u %5u"`, then `"%5u %3c%c- "` (online) or
/// `"%5c %3c%cp "` (offline), `"%9.1f  "`, hard affinity, `" / "`, soft.
pub fn vcpu_row(v: &VcpuInfo) -> String {
    let flag = |b: bool, c: char| if b { c } else { '-' };
    let cpu_state = if v.online {
        format!(
            "{:>5} {:>3}{}-",
            v.cpu.unwrap_or(0),
            flag(v.running, 'r'),
            flag(v.blocked, 'b')
        )
    } else {
        format!(
            "{:>5} {:>3}{}p",
            '-',
            flag(v.running, 'r'),
            flag(v.blocked, 'b')
        )
    };
    format!(
        "{:<32} {:>5} {:>5}{} {:>9.1}  {} / {}",
        v.name, v.domid, v.vcpu, cpu_state, v.time_s, v.hard, v.soft
    )
}

/// The whole `xl vcpu-list` table.
pub fn vcpu_table(vcpus: &[VcpuInfo]) -> String {
    let mut out = vcpu_header();
    out.push('\n');
    for v in vcpus {
        out.push_str(&vcpu_row(v));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu(
        name: &str,
        domid: u32,
        n: u32,
        cpu: Option<u32>,
        st: (bool, bool),
        t: f64,
        hard: &str,
    ) -> VcpuInfo {
        VcpuInfo {
            name: name.into(),
            domid,
            vcpu: n,
            cpu,
            online: cpu.is_some(),
            running: st.0,
            blocked: st.1,
            time_s: t,
            hard: hard.into(),
            soft: "all".into(),
        }
    }

    #[test]
    fn vcpu_list_matches_xl_byte_for_byte() {
        // The reference's example, produced by xl's printf formats.
        let t = vcpu_table(&[
            vcpu("Domain-0", 0, 0, Some(2), (true, false), 15.3, "all"),
            vcpu("guest1", 3, 1, None, (false, false), 0.0, "0-3"),
        ]);
        assert_eq!(
            t,
            "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)\n\
             Domain-0                             0     0    2   r--      15.3  all / all\n\
             guest1                               3     1    -   --p       0.0  0-3 / all\n"
        );
    }

    #[test]
    fn vcpu_pin_reads_its_vcpu_as_xl() {
        assert_eq!(pin_target("3", false), Ok("3".into()));
        assert_eq!(pin_target("3", true), Ok("3".into()));
        assert_eq!(pin_target(" 2x", false), Ok("2".into()));
        assert_eq!(pin_target("all", false), Ok("all".into()));
        assert_eq!(pin_target("all", true), Err(PinError::ForceAll));
        assert_eq!(
            pin_target("-1", false),
            Err(PinError::InvalidVcpu("-1".into()))
        );
        assert_eq!(
            pin_target("first", false).map_err(|e| e.to_string()),
            Err("Error: Invalid argument first as VCPU.".into())
        );
        assert_eq!(
            PinError::ForceAll.to_string(),
            "Error: --force and 'all' as VCPU not allowed."
        );
    }

    #[test]
    fn memory_sizes_as_xl_reads_them() {
        assert_eq!(parse_mem_size_mib("256"), Some(256));
        assert_eq!(parse_mem_size_mib("256m"), Some(256));
        assert_eq!(parse_mem_size_mib("1g"), Some(1024));
        assert_eq!(parse_mem_size_mib("1G"), Some(1024));
        assert_eq!(parse_mem_size_mib("65536k"), Some(64));
        assert_eq!(parse_mem_size_mib("1048576b"), Some(1));
        assert_eq!(parse_mem_size_mib("1k"), None);
        assert_eq!(parse_mem_size_mib("x"), None);
        assert_eq!(parse_mem_size_mib(""), None);
        assert_eq!(parse_mem_size_mib("99999999999999t"), None);
    }

    #[test]
    fn sched_credit_matches_xl() {
        let t = sched_table(
            &[SchedEntry {
                name: "Domain-0".into(),
                domid: 0,
                weight: 1024,
                cap: 0,
            }],
            true,
        );
        assert_eq!(
            t,
            "Cpupool Pool-0: [sched params unavailable]\n\
             Name                                ID Weight  Cap\n\
             Domain-0                             0   1024    0\n"
        );
    }
}
