//! Counters for `stats`: per-vCPU thread CPU time and state from the kernel, and process RSS.

use rxen_proto::vmctl::VcpuState;

/// Errors while reading counters.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// A /proc file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A /proc file had an unexpected format.
    #[error("unexpected format of {0}")]
    Format(String),
}

/// What /proc says about one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadSample {
    /// The thread's state letter (R, S, D, ...).
    pub state: char,
    /// The CPU it last ran on.
    pub processor: Option<u32>,
}

/// Parses a `/proc/.../stat` line: state letter and last processor.
pub fn parse_task_stat(text: &str) -> Option<ThreadSample> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 39 (processor) is the 37th after the name.
    let processor = fields.get(36).and_then(|f| f.parse().ok());
    Some(ThreadSample { state, processor })
}

/// Reads /proc/self/task/`tid`/stat.
pub fn sample_thread(tid: i32) -> Result<ThreadSample, StatsError> {
    let path = format!("/proc/self/task/{tid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|source| StatsError::Read {
        path: path.clone(),
        source,
    })?;
    parse_task_stat(&text).ok_or(StatsError::Format(path))
}

/// Maps a thread's state letter to a vCPU state (R = running, anything else = blocked).
pub fn vcpu_state_from(sample: &ThreadSample) -> VcpuState {
    if sample.state == 'R' {
        VcpuState::Running
    } else {
        VcpuState::Blocked
    }
}

/// CPU time consumed by `thread`, in nanoseconds.
pub fn thread_cpu_ns(thread: libc::pthread_t) -> Option<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `thread` is a live, unjoined pthread of this process and `clock` is a valid out pointer.
    if unsafe { libc::pthread_getcpuclockid(thread, &mut clock) } != 0 {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock` came from pthread_getcpuclockid and `ts` is a valid out pointer.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Parses `VmRSS:` from /proc/self/status text, in KiB.
pub fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Resident memory of this process in KiB.
pub fn rss_kib() -> Result<u64, StatsError> {
    let path = "/proc/self/status";
    let text = std::fs::read_to_string(path).map_err(|source| StatsError::Read {
        path: path.into(),
        source,
    })?;
    parse_rss_kib(&text).ok_or(StatsError::Format(path.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        // Fields 4..=38 are 4..=38 here, then processor (field 39) = 3.
        let mid: Vec<String> = (4..=38).map(|n| n.to_string()).collect();
        let line = format!("1234 (vcpu 0) (x)) S {} 3 0 0 0", mid.join(" "));
        let line = line.as_str();
        let s = parse_task_stat(line).expect("parse");
        assert_eq!(s.state, 'S');
        assert_eq!(s.processor, Some(3));
        assert_eq!(vcpu_state_from(&s), VcpuState::Blocked);
        assert_eq!(parse_task_stat("garbage"), None);
    }

    #[test]
    fn own_thread_is_sampled() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let s = sample_thread(tid).expect("sample");
        assert_eq!(vcpu_state_from(&s), VcpuState::Running);
        assert!(s.processor.is_some());
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let t0 = thread_cpu_ns(me).expect("cpu");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_ns(me).expect("cpu") > t0);
        assert!(rss_kib().expect("rss") > 0);
        assert_eq!(parse_rss_kib("Name: x\nVmRSS:\t  1234 kB\n"), Some(1234));
    }
}
