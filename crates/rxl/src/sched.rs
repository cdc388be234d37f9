//! xl's scheduler and vCPU output formats: `xl sched-credit` and `xl vcpu-list`; and how
//! `xl vcpu-pin` reads its vCPU argument.

use rxen_proto::api::{CpupoolInfo, SchedEntry, SchedPoolParams, VcpuInfo};

/// rxen's one CPU pool, as xl names the first.
pub const POOL: &str = "Pool-0";

/// Which of xl's two credit commands: their tables are the same, their pool lines differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credit {
    /// `sched-credit`.
    One,
    /// `sched-credit2`.
    Two,
}

/// What `sched-credit`/`sched-credit2` were asked, refused in xl's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedArgsError {
    /// sched-credit: `-p` or `-s` with `-d`, `-w` or `-c`.
    #[error("Specifying a cpupool or schedparam is not allowed with domain options.")]
    PoolWithDomain,
    /// sched-credit2: `-p` with `-d`, `-w` or `-c`.
    #[error("Specifying a cpupool is not allowed with other options.")]
    PoolWithOthers,
    /// `-w` or `-c` without `-d`.
    #[error("Must specify a domain.")]
    NoDomain,
    /// sched-credit: `-t`, `-r` or `-m` without `-s`.
    #[error("Must specify schedparam to set schedule parameter values.")]
    NoSchedparam,
    /// `-p` naming a pool other than rxen's one.
    #[error("unknown cpupool '{0}'")]
    UnknownPool(String),
    /// `-s` with values to set.
    #[error("the scheduler's pool parameters are Linux's CFS settings under rxen and cannot be set with rxl (tslice is the CFS period of rxen's caps, ratelimit the kernel's sched_cfs_bandwidth_slice_us, migration-delay its migration cost)")]
    ReadOnlyParams,
}

/// What a `sched-credit`/`sched-credit2` command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedAction {
    /// The pool line only (`-s`).
    PoolParams,
    /// Every domain, under the pool line.
    All,
    /// One domain's row (`-d`).
    Show,
    /// Change one domain's weight or cap.
    Set,
}

/// The options of `sched-credit` (`-d -w -c -s -t -r -m -p`) or `sched-credit2` (no `-t`, `-m`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedArgs {
    /// `-d`.
    pub domain: Option<String>,
    /// `-w` or `-c` given.
    pub changing: bool,
    /// `-s`.
    pub schedparam: bool,
    /// `-t`, `-r` or `-m` given.
    pub setting_params: bool,
    /// `-p`.
    pub cpupool: Option<String>,
}

/// Checks the options as xl does, in xl's order, and says what to do.
pub fn sched_action(which: Credit, a: &SchedArgs) -> Result<SchedAction, SchedArgsError> {
    let domain_opts = a.domain.is_some() || a.changing;
    match which {
        Credit::One if (a.cpupool.is_some() || a.schedparam) && domain_opts => {
            return Err(SchedArgsError::PoolWithDomain)
        }
        Credit::Two if a.cpupool.is_some() && domain_opts => {
            return Err(SchedArgsError::PoolWithOthers)
        }
        _ => {}
    }
    if a.domain.is_none() && a.changing {
        return Err(SchedArgsError::NoDomain);
    }
    if which == Credit::One && !a.schedparam && a.setting_params {
        return Err(SchedArgsError::NoSchedparam);
    }
    if a.schedparam {
        if a.setting_params {
            return Err(SchedArgsError::ReadOnlyParams);
        }
        return Ok(SchedAction::PoolParams);
    }
    Ok(match (&a.domain, a.changing) {
        (None, _) => SchedAction::All,
        (Some(_), false) => SchedAction::Show,
        (Some(_), true) => SchedAction::Set,
    })
}

/// The pool line of pool `name`: `Cpupool %s: tslice=%dms ratelimit=%dus
/// migration-delay=%dus` for credit, `Cpupool %s: ratelimit=%dus` for credit2.
pub fn pool_line(which: Credit, p: &SchedPoolParams, name: &str) -> String {
    match which {
        Credit::One => format!(
            "Cpupool {name}: tslice={}ms ratelimit={}us migration-delay={}us",
            p.tslice_ms, p.ratelimit_us, p.migration_delay_us
        ),
        Credit::Two => format!("Cpupool {name}: ratelimit={}us", p.ratelimit_us),
    }
}

/// The pool `-p` names: by name, or by ID written as a number (as xl).
pub fn find_pool<'a>(pools: &'a [CpupoolInfo], q: &str) -> Result<&'a CpupoolInfo, SchedArgsError> {
    pools
        .iter()
        .find(|p| p.name == q)
        .or_else(|| {
            let id: u32 = q.parse().ok()?;
            pools.iter().find(|p| p.id == id)
        })
        .ok_or_else(|| SchedArgsError::UnknownPool(q.to_string()))
}

/// `xl sched-credit` without `-d`: each pool (or only `only`) with its line, the header and
/// its domains.
pub fn pools_table(
    which: Credit,
    params: &SchedPoolParams,
    pools: &[CpupoolInfo],
    entries: &[SchedEntry],
    only: Option<u32>,
) -> String {
    let mut out = String::new();
    for p in pools.iter().filter(|p| only.is_none_or(|o| o == p.id)) {
        let mine: Vec<SchedEntry> = entries.iter().filter(|e| e.pool == p.id).cloned().collect();
        out.push_str(&sched_table(
            &mine,
            Some(&pool_line(which, params, &p.name)),
        ));
    }
    out
}

/// The header of `xl sched-credit`: `"%-33s %4s %6s %4s"`.
pub fn sched_header() -> String {
    format!("{:<33} {:>4} {:>6} {:>4}", "Name", "ID", "Weight", "Cap")
}

/// One row of `xl sched-credit`: `"%-33s %4d %6d %4d"`.
pub fn sched_row(e: &SchedEntry) -> String {
    format!("{:<33} {:>4} {:>6} {:>4}", e.name, e.domid, e.weight, e.cap)
}

/// rxen's `sched-credit -v` table, printed after xl's: each domain's disk I/O threads, their
/// I/O priority and its cgroup I/O weight, as the kernel holds them (`-` for none).
pub fn io_table(entries: &[SchedEntry]) -> String {
    let mut out = format!(
        "{:<33} {:>4} {:>6} {:>7}  {:<20}  {}\n",
        "Name", "ID", "Weight", "Disks", "I/O priority", "Cgroup I/O weight"
    );
    for e in entries {
        let (threads, prio, cg) = match &e.io {
            Some(io) => (
                io.threads.to_string(),
                io.prio.clone().unwrap_or_else(|| "-".into()),
                io.cgroup_weight
                    .as_ref()
                    .map_or_else(|| "-".into(), |(f, v)| format!("{f}={v}")),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:<33} {:>4} {:>6} {:>7}  {:<20}  {}\n",
            e.name, e.domid, e.weight, threads, prio, cg
        ));
    }
    out
}

/// The output of `xl sched-credit`: the pool line (when no domain was named),
/// then the header and the rows.
pub fn sched_table(entries: &[SchedEntry], pool: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(line) = pool {
        out.push_str(line);
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
    let crate::cnum::Leading { negative, digits } = crate::cnum::leading(vcpu);
    let number = digits.parse::<u64>().unwrap_or(u64::MAX);
    if digits.is_empty() || (negative && number != 0) {
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
    fn io_table_follows_xls_table_with_what_the_kernel_holds() {
        let e = |name: &str, domid, io| SchedEntry {
            name: name.into(),
            domid,
            weight: 512,
            cap: 0,
            pool: 0,
            io,
        };
        let t = io_table(&[
            e("Domain-0", 0, None),
            e(
                "web",
                3,
                Some(rxen_proto::api::SchedIo {
                    threads: 2,
                    prio: Some("best-effort: prio 3".into()),
                    cgroup_weight: Some(("io.weight".into(), 200)),
                }),
            ),
        ]);
        assert_eq!(
            t,
            "Name                                ID Weight   Disks  I/O priority          Cgroup I/O weight\n\
             Domain-0                             0    512       -  -                     -\n\
             web                                  3    512       2  best-effort: prio 3   io.weight=200\n"
        );
    }

    #[test]
    fn sched_credit_matches_xl() {
        let p = SchedPoolParams {
            tslice_ms: 100,
            ratelimit_us: 5000,
            migration_delay_us: 500,
        };
        let line = pool_line(Credit::One, &p, POOL);
        let t = sched_table(
            &[SchedEntry {
                name: "Domain-0".into(),
                domid: 0,
                weight: 1024,
                cap: 0,
                pool: 0,
                io: None,
            }],
            Some(&line),
        );
        assert_eq!(
            t,
            "Cpupool Pool-0: tslice=100ms ratelimit=5000us migration-delay=500us\n\
             Name                                ID Weight  Cap\n\
             Domain-0                             0   1024    0\n"
        );
        assert_eq!(
            pool_line(Credit::Two, &p, POOL),
            "Cpupool Pool-0: ratelimit=5000us"
        );
        // One section per pool, each with its domains.
        let pools = [
            CpupoolInfo {
                id: 0,
                name: POOL.into(),
                sched: "credit".into(),
                cpus: vec![0],
                domains: 1,
            },
            CpupoolInfo {
                id: 3,
                name: "web".into(),
                sched: "credit".into(),
                cpus: vec![1],
                domains: 1,
            },
        ];
        let entries = [
            SchedEntry {
                name: "Domain-0".into(),
                domid: 0,
                weight: 1024,
                cap: 0,
                pool: 0,
                io: None,
            },
            SchedEntry {
                name: "w1".into(),
                domid: 4,
                weight: 256,
                cap: 0,
                pool: 3,
                io: None,
            },
        ];
        assert_eq!(
            pools_table(Credit::Two, &p, &pools, &entries, Some(3)),
            "Cpupool web: ratelimit=5000us\n\
             Name                                ID Weight  Cap\n\
             w1                                   4    256    0\n"
        );
        assert_eq!(
            pools_table(Credit::Two, &p, &pools, &entries, None)
                .matches("Cpupool ")
                .count(),
            2
        );
        assert_eq!(find_pool(&pools, "3").map(|p| p.name.as_str()), Ok("web"));
        assert_eq!(
            find_pool(&pools, "Pool-1").map_err(|e| e.to_string()),
            Err("unknown cpupool 'Pool-1'".to_string())
        );
    }

    #[test]
    fn sched_options_are_checked_as_xl_checks_them() {
        let a = |domain: Option<&str>, changing, schedparam, setting_params, pool: Option<&str>| {
            SchedArgs {
                domain: domain.map(String::from),
                changing,
                schedparam,
                setting_params,
                cpupool: pool.map(String::from),
            }
        };
        use Credit::{One, Two};
        let ok = |w, args| sched_action(w, &args);
        assert_eq!(
            ok(One, a(None, false, false, false, None)),
            Ok(SchedAction::All)
        );
        assert_eq!(
            ok(One, a(Some("d"), false, false, false, None)),
            Ok(SchedAction::Show)
        );
        assert_eq!(
            ok(Two, a(Some("d"), true, false, false, None)),
            Ok(SchedAction::Set)
        );
        assert_eq!(
            ok(One, a(None, false, true, false, Some("Pool-0"))),
            Ok(SchedAction::PoolParams)
        );
        assert_eq!(
            ok(Two, a(None, false, false, false, Some("0"))),
            Ok(SchedAction::All)
        );
        assert_eq!(
            ok(One, a(Some("d"), false, true, false, None)),
            Err(SchedArgsError::PoolWithDomain)
        );
        // credit2 lets -s pass with -d, and then shows the pool.
        assert_eq!(
            ok(Two, a(Some("d"), false, true, false, None)),
            Ok(SchedAction::PoolParams)
        );
        assert_eq!(
            ok(Two, a(Some("d"), false, false, false, Some("Pool-0"))),
            Err(SchedArgsError::PoolWithOthers)
        );
        assert_eq!(
            ok(Two, a(None, true, false, false, None)),
            Err(SchedArgsError::NoDomain)
        );
        assert_eq!(
            ok(One, a(None, false, false, true, None)),
            Err(SchedArgsError::NoSchedparam)
        );
        assert_eq!(
            ok(One, a(None, false, true, true, None)),
            Err(SchedArgsError::ReadOnlyParams)
        );
    }
}
