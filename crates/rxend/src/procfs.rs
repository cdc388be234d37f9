//! Reading `/proc` for process liveness, thread states, CPU time, and the
//! identity of the VMMs a state directory's domains run in.

use std::fs;
use std::path::Path;

/// The fields of `/proc/<pid>/stat` (or a task's stat) that rxend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Scheduler state letter (`R`, `S`, `D`, `Z`, ...).
    pub state: char,
    /// User-mode CPU time in clock ticks.
    pub utime: u64,
    /// Kernel-mode CPU time in clock ticks.
    pub stime: u64,
    /// Start time after boot in clock ticks; with the PID it names a process uniquely.
    pub start_ticks: u64,
    /// CPU the task last ran on.
    pub processor: u32,
}

/// Parses the text of a stat file.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name is in parentheses and may contain anything, so split at the last ')'.
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `fields[0]` is field 3 (state) of proc(5).
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcStat {
        state: field(3)?.chars().next()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        start_ticks: field(22)?.parse().ok()?,
        processor: field(39)?.parse().ok()?,
    })
}

/// The stat of process `pid`, if it exists.
pub fn process(pid: i32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// True if `pid` is the same process that started at `start_ticks` and any of its threads still
/// lives. A leader that has exited shows as a zombie while its other threads are still on their
/// way out, holding the process's descriptors (a disk's lock among them): that is still alive.
pub fn alive(pid: i32, start_ticks: u64) -> bool {
    match process(pid) {
        Some(s) if s.start_ticks == start_ticks => {
            (s.state != 'Z' && s.state != 'X') || other_threads(pid) > 0
        }
        _ => false,
    }
}

/// How many threads of `pid` besides its leader `/proc` still lists.
fn other_threads(pid: i32) -> usize {
    let leader = pid.to_string();
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name() != leader.as_str())
                .count()
        })
        .unwrap_or(0)
}

/// A VMM process found by its identity: the launch spec it runs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmProcess {
    /// The domain ID its spec's run directory is named after.
    pub domid: u32,
    /// Its PID.
    pub pid: i32,
    /// Its start time, against PID reuse.
    pub start_ticks: u64,
}

/// The domain ID whose spec `cmdline` (NUL-separated, as `/proc/PID/cmdline`) runs from, when
/// the process is `rxen-vmm --spec DOM_DIR/<id>/spec.json` for this `dom_dir`.
pub fn vmm_domid(cmdline: &[u8], dom_dir: &Path) -> Option<u32> {
    let mut args = cmdline.split(|&b| b == 0);
    args.next()?;
    if args.next()? != b"--spec" {
        return None;
    }
    let spec = Path::new(std::str::from_utf8(args.next()?).ok()?);
    if spec.file_name()? != rxen_proto::vmspec::files::SPEC {
        return None;
    }
    let run_dir = spec.parent()?;
    if run_dir.parent()? != dom_dir {
        return None;
    }
    let id = run_dir.file_name()?.to_str()?;
    // Only the canonical spelling, so that `007` or `+7` cannot stand for domain 7.
    let domid: u32 = id.parse().ok()?;
    (domid.to_string() == id).then_some(domid)
}

/// Every living VMM process that runs a domain of the state directory whose run directories are
/// in `dom_dir` (an absolute path, as rxend passes it to the VMMs it starts).
pub fn vmm_processes(dom_dir: &Path) -> Vec<VmmProcess> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let Some(domid) = vmm_domid(&cmdline, dom_dir) else {
            continue;
        };
        if let Some(st) = process(pid).filter(|s| s.state != 'Z' && s.state != 'X') {
            out.push(VmmProcess {
                domid,
                pid,
                start_ticks: st.start_ticks,
            });
        }
    }
    out.sort_by_key(|p| (p.domid, p.pid));
    out
}

/// Clock ticks per second, for converting stat times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// One thread of a process.
#[derive(Debug, Clone)]
pub struct ThreadInfo {
    /// Thread ID.
    pub tid: i32,
    /// Thread name (`comm`).
    pub name: String,
    /// Its stat.
    pub stat: ProcStat,
}

/// The threads of `pid` whose name starts with `prefix` (rxen-vmm names vCPU threads `vcpu<N>`).
pub fn threads(pid: i32, prefix: &str) -> Vec<ThreadInfo> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let base = entry.path();
        let Ok(name) = fs::read_to_string(base.join("comm")) else {
            continue;
        };
        let name = name.trim_end().to_string();
        if !name.starts_with(prefix) {
            continue;
        }
        if let Some(stat) = fs::read_to_string(base.join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            out.push(ThreadInfo { tid, name, stat });
        }
    }
    out.sort_by_key(|t| t.tid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let text = "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 3 0 555 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(text).expect("parse");
        assert_eq!(s.state, 'S');
        assert_eq!(s.utime, 7);
        assert_eq!(s.stime, 3);
        assert_eq!(s.start_ticks, 555);
        assert_eq!(s.processor, 1);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn vmms_are_known_by_the_spec_they_run() {
        let dom = Path::new("/var/lib/rxen/dom");
        let cmd = |s: &str| s.replace(' ', "\0").into_bytes();
        assert_eq!(
            vmm_domid(
                &cmd("/usr/bin/rxen-vmm --spec /var/lib/rxen/dom/7/spec.json"),
                dom
            ),
            Some(7)
        );
        for other in [
            "/usr/bin/rxen-vmm --spec /var/lib/other/dom/7/spec.json",
            "/usr/bin/rxen-vmm --spec /var/lib/rxen/dom/007/spec.json",
            "/usr/bin/rxen-vmm --spec /var/lib/rxen/dom/x/spec.json",
            "/usr/bin/rxen-vmm --spec /var/lib/rxen/dom/7/other.json",
            "/usr/bin/rxen-vmm --spec /var/lib/rxen/dom/7/../8/spec.json",
            "/usr/bin/sleep --spec",
            "/bin/sh -c /var/lib/rxen/dom/7/spec.json",
            "",
        ] {
            assert_eq!(vmm_domid(&cmd(other), dom), None, "{other}");
        }
    }

    #[test]
    fn our_own_process_is_alive() {
        let me = std::process::id() as i32;
        let s = process(me).expect("own stat");
        assert!(alive(me, s.start_ticks));
        assert!(!alive(me, s.start_ticks + 1));
    }
}
