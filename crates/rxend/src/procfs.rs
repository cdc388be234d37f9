//! Reading `/proc` for process liveness, thread states and CPU time.

use std::fs;

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

/// True if `pid` is the same living (not zombie) process that started at `start_ticks`.
pub fn alive(pid: i32, start_ticks: u64) -> bool {
    matches!(process(pid), Some(s) if s.start_ticks == start_ticks && s.state != 'Z' && s.state != 'X')
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
    fn our_own_process_is_alive() {
        let me = std::process::id() as i32;
        let s = process(me).expect("own stat");
        assert!(alive(me, s.start_ticks));
        assert!(!alive(me, s.start_ticks + 1));
    }
}
