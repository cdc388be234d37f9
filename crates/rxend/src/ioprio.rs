//! Disk I/O priorities that follow the credit weight: the mapping from a
//! domain's weight to an I/O priority (class and level), and setting it with
//! `ioprio_set` on each of the VMM's disk I/O threads (`blk-<vdev>`) from
//! outside (the confined VMM cannot change its own).
//!
//! The mapping: weight 256 (Xen's default) is best-effort level 4, the
//! level a thread of nice 0 has anyway, which is where Domain-0's own work
//! runs; every doubling of the weight is one level better, every halving one
//! level worse (512: 3, 1024: 2, 2048: 1, 4096 and above: 0; 128: 5, 64: 6,
//! 32..63: 7). A weight below 32, one level below the bottom of the scale
//! (1/32 of Domain-0's default weight), is the idle class: its disk I/O runs
//! only when the disk has nothing else to do. Guests never get the real-time
//! class.

use crate::procfs::{self, ThreadInfo};

/// `IOPRIO_WHO_PROCESS`: `who` is a thread ID.
const WHO_PROCESS: libc::c_int = 1;
/// Bits of the priority value that hold the level.
const CLASS_SHIFT: u32 = 13;
/// The weight that maps to best-effort level 4 (Xen's default weight).
const DEFAULT_WEIGHT: u32 = 256;

/// Errors of I/O priority operations.
#[derive(Debug, thiserror::Error)]
pub enum IoprioError {
    /// The kernel refused.
    #[error("thread {tid}: {op}: {source}")]
    Sys {
        /// The thread.
        tid: i32,
        /// `ioprio_set` or `ioprio_get`.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The kernel answered a class rxen does not know.
    #[error("thread {tid}: ioprio_get gave the unknown value {value:#x}")]
    Unknown {
        /// The thread.
        tid: i32,
        /// The raw value.
        value: i32,
    },
}

/// An I/O priority class (`ioprio_set(2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoClass {
    /// No priority set: the kernel derives best-effort from the nice value.
    None,
    /// Real time (never given to guests; only read back).
    RealTime,
    /// Best effort, with a level 0 (best) to 7.
    BestEffort,
    /// Idle: served only when no one else uses the disk.
    Idle,
}

/// A class and level, as `ioprio_set` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoPrio {
    /// The class.
    pub class: IoClass,
    /// The level within the class (0-7; 0 for idle and none).
    pub level: u8,
}

impl IoPrio {
    /// The kernel's encoding: class in the top bits, level below.
    pub fn raw(self) -> i32 {
        let class = match self.class {
            IoClass::None => 0,
            IoClass::RealTime => 1,
            IoClass::BestEffort => 2,
            IoClass::Idle => 3,
        };
        (class << CLASS_SHIFT) | i32::from(self.level & 7)
    }

    /// Decodes the kernel's encoding.
    pub fn from_raw(value: i32) -> Option<IoPrio> {
        let class = match value >> CLASS_SHIFT {
            0 => IoClass::None,
            1 => IoClass::RealTime,
            2 => IoClass::BestEffort,
            3 => IoClass::Idle,
            _ => return None,
        };
        Some(IoPrio {
            class,
            level: (value & 7) as u8,
        })
    }
}

impl std::fmt::Display for IoPrio {
    /// `ionice`'s words: `best-effort: prio 3`, `idle`, `none`, `realtime: prio 0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.class {
            IoClass::None => write!(f, "none"),
            IoClass::Idle => write!(f, "idle"),
            IoClass::BestEffort => write!(f, "best-effort: prio {}", self.level),
            IoClass::RealTime => write!(f, "realtime: prio {}", self.level),
        }
    }
}

/// The I/O priority of a domain with credit weight `weight` (see the module's text).
pub fn for_weight(weight: u32) -> IoPrio {
    let log2 = i64::from(weight.max(1).ilog2());
    let level = i64::from(DEFAULT_WEIGHT.ilog2()) + 4 - log2;
    if level > 7 {
        return IoPrio {
            class: IoClass::Idle,
            level: 0,
        };
    }
    IoPrio {
        class: IoClass::BestEffort,
        level: level.clamp(0, 7) as u8,
    }
}

/// The disk I/O threads (`blk-<vdev>`) of VMM `pid`.
pub fn disk_threads(pid: i32) -> Vec<ThreadInfo> {
    procfs::threads(pid, "blk-")
}

/// Sets one thread's I/O priority.
pub fn set(tid: i32, prio: IoPrio) -> Result<(), IoprioError> {
    // SAFETY: ioprio_set takes three integers and touches no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            WHO_PROCESS,
            libc::c_int::from(tid),
            prio.raw(),
        )
    };
    if rc < 0 {
        return Err(IoprioError::Sys {
            tid,
            op: "ioprio_set",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// One thread's I/O priority, as the kernel holds it.
pub fn get(tid: i32) -> Result<IoPrio, IoprioError> {
    // SAFETY: ioprio_get takes two integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_get, WHO_PROCESS, libc::c_int::from(tid)) };
    if rc < 0 {
        return Err(IoprioError::Sys {
            tid,
            op: "ioprio_get",
            source: std::io::Error::last_os_error(),
        });
    }
    let value = rc as i32;
    IoPrio::from_raw(value).ok_or(IoprioError::Unknown { tid, value })
}

/// Gives every disk I/O thread of VMM `pid` the priority of `weight` and returns them. A
/// thread that ended meanwhile (a disk detached) is skipped; any other refusal does not stop
/// the others and is returned once all were tried.
pub fn apply(pid: i32, weight: u32) -> Result<Vec<ThreadInfo>, IoprioError> {
    let prio = for_weight(weight);
    let threads = disk_threads(pid);
    let mut first_err = None;
    for t in &threads {
        match set(t.tid, prio) {
            Ok(()) => {}
            Err(IoprioError::Sys { ref source, .. })
                if source.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(threads),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_map_to_levels_by_doubling() {
        let be = |level| IoPrio {
            class: IoClass::BestEffort,
            level,
        };
        assert_eq!(for_weight(256), be(4));
        assert_eq!(for_weight(511), be(4));
        assert_eq!(for_weight(512), be(3));
        assert_eq!(for_weight(1024), be(2));
        assert_eq!(for_weight(2048), be(1));
        assert_eq!(for_weight(4096), be(0));
        assert_eq!(for_weight(65535), be(0));
        assert_eq!(for_weight(128), be(5));
        assert_eq!(for_weight(64), be(6));
        assert_eq!(for_weight(32), be(7));
        assert_eq!(for_weight(31).class, IoClass::Idle);
        assert_eq!(for_weight(1).class, IoClass::Idle);
        assert_eq!(for_weight(0).class, IoClass::Idle);
        for w in 1..=65535 {
            assert_ne!(for_weight(w).class, IoClass::RealTime);
        }
    }

    #[test]
    fn encoding_round_trips_and_prints_as_ionice() {
        for w in [1, 32, 256, 512, 65535] {
            let p = for_weight(w);
            assert_eq!(IoPrio::from_raw(p.raw()), Some(p));
        }
        assert_eq!(for_weight(512).raw(), (2 << 13) | 3);
        assert_eq!(for_weight(512).to_string(), "best-effort: prio 3");
        assert_eq!(for_weight(8).to_string(), "idle");
        assert_eq!(IoPrio::from_raw(7 << 13), None);
    }

    #[test]
    fn own_thread_priority_round_trips() {
        // A thread of our own: setting a worse priority needs no privilege.
        let got = std::thread::spawn(|| {
            let tid = nix::unistd::gettid().as_raw();
            set(tid, for_weight(64)).expect("ioprio_set");
            get(tid).expect("ioprio_get")
        })
        .join()
        .expect("thread");
        assert_eq!(got, for_weight(64));
    }
}
