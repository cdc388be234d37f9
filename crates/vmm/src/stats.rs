//! Counters for `stats`: per-vCPU thread CPU time and state from the kernel, and process RSS.
//!
//! The /proc files are opened at start-up ([`ProcFile`]) and re-read from
//! offset 0 on each request: the VMM opens no path once the guest runs.

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

/// A /proc file opened once and read again from its start on each call.
#[derive(Debug)]
pub struct ProcFile {
    file: std::fs::File,
    path: String,
}

impl ProcFile {
    /// Opens `path` (at start-up).
    pub fn open(path: String) -> Result<Self, StatsError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| StatsError::Read {
                path: path.clone(),
                source,
            })?;
        Ok(Self { file, path })
    }

    /// /proc/self/task/`tid`/stat, for [`ProcFile::sample_thread`].
    pub fn thread_stat(tid: i32) -> Result<Self, StatsError> {
        Self::open(format!("/proc/self/task/{tid}/stat"))
    }

    /// /proc/self/status, for [`ProcFile::rss_kib`].
    pub fn status() -> Result<Self, StatsError> {
        Self::open("/proc/self/status".into())
    }

    /// The whole file as it is now (pread from offset 0).
    fn read(&self) -> Result<String, StatsError> {
        use std::os::unix::fs::FileExt;
        let err = |source| StatsError::Read {
            path: self.path.clone(),
            source,
        };
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        loop {
            if len == buf.len() {
                if buf.len() >= 1 << 20 {
                    break;
                }
                buf.resize(buf.len() * 2, 0);
            }
            let n = self
                .file
                .read_at(buf.get_mut(len..).unwrap_or_default(), len as u64)
                .map_err(err)?;
            if n == 0 {
                break;
            }
            len += n;
        }
        buf.truncate(len);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// The thread's state and processor, from a `thread_stat` file.
    pub fn sample_thread(&self) -> Result<ThreadSample, StatsError> {
        parse_task_stat(&self.read()?).ok_or_else(|| StatsError::Format(self.path.clone()))
    }

    /// Resident memory in KiB, from the `status` file.
    pub fn rss_kib(&self) -> Result<u64, StatsError> {
        parse_rss_kib(&self.read()?).ok_or_else(|| StatsError::Format(self.path.clone()))
    }
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
        let stat = ProcFile::thread_stat(tid).expect("open");
        let s = stat.sample_thread().expect("sample");
        // Read again through the same descriptor: still this thread, still running.
        assert_eq!(stat.sample_thread().expect("again").state, 'R');
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
        let status = ProcFile::status().expect("status");
        let before = status.rss_kib().expect("rss");
        assert!(before > 0);
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        assert!(
            status.rss_kib().expect("rss") > before,
            "re-read sees the change"
        );
        assert_eq!(parse_rss_kib("Name: x\nVmRSS:\t  1234 kB\n"), Some(1234));
    }
}
