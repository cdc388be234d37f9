//! vCPU threads and their hard affinity: finding a VMM's `vcpu<N>`
//! threads, pinning them (`cpus=`, `rxl vcpu-pin`) with
//! `sched_setaffinity`, and printing affinity as xl does.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use xlcfg::CpuAffinity;

use crate::procfs::{self, ThreadInfo};

/// Errors of affinity operations.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    /// The CPU list is empty.
    #[error("the CPU list is empty: a vCPU needs at least one CPU")]
    Empty,
    /// A CPU number is beyond what the affinity mask can hold.
    #[error("CPU {0} is out of range")]
    OutOfRange(u32),
    /// The kernel refused.
    #[error("thread {tid}: {source}")]
    Sys {
        /// The thread.
        tid: i32,
        /// The cause.
        source: nix::Error,
    },
}

/// One vCPU thread of a VMM.
#[derive(Debug, Clone)]
pub struct VcpuThread {
    /// vCPU index (from the thread name `vcpu<N>`).
    pub index: u32,
    /// The thread.
    pub thread: ThreadInfo,
}

/// The vCPU threads of VMM `pid`, by index.
pub fn vcpu_threads(pid: i32) -> Vec<VcpuThread> {
    let mut v: Vec<VcpuThread> = procfs::threads(pid, "vcpu")
        .into_iter()
        .filter_map(|t| {
            let index = t.name.strip_prefix("vcpu")?.parse().ok()?;
            Some(VcpuThread { index, thread: t })
        })
        .collect();
    v.sort_by_key(|t| t.index);
    v
}

/// Sets the hard affinity of one thread.
pub fn set_affinity(tid: i32, cpus: &[u32]) -> Result<(), SchedError> {
    if cpus.is_empty() {
        return Err(SchedError::Empty);
    }
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c as usize).map_err(|_| SchedError::OutOfRange(c))?;
    }
    sched_setaffinity(Pid::from_raw(tid), &set).map_err(|source| SchedError::Sys { tid, source })
}

/// The hard affinity of one thread, as sorted CPU numbers.
pub fn affinity(tid: i32) -> Result<Vec<u32>, SchedError> {
    let set =
        sched_getaffinity(Pid::from_raw(tid)).map_err(|source| SchedError::Sys { tid, source })?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .map(|c| c as u32)
        .collect())
}

/// The CPUs vCPU `index` gets from a config's `cpus=`; `None` = not pinned.
pub fn config_cpus(aff: &CpuAffinity, index: u32, host_cpus: u32) -> Option<Vec<u32>> {
    match aff {
        CpuAffinity::All => Some((0..host_cpus).collect()),
        CpuAffinity::Set(s) => Some(s.clone()),
        CpuAffinity::PerVcpu(list) => list.get(index as usize).cloned(),
    }
}

/// xl's bitmap text: `all` when every host CPU is set, `none` when empty, else ranges (`0-3,5`).
pub fn bitmap_text(cpus: &[u32], host_cpus: u32) -> String {
    if cpus.is_empty() {
        return "none".into();
    }
    let all: Vec<u32> = (0..host_cpus).collect();
    if cpus == all.as_slice() {
        return "all".into();
    }
    xlcfg::cpu_ranges(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_print_as_xl_does() {
        assert_eq!(bitmap_text(&[0, 1, 2, 3], 4), "all");
        assert_eq!(bitmap_text(&[0, 1, 2, 3, 5], 8), "0-3,5");
        assert_eq!(bitmap_text(&[], 8), "none");
        assert_eq!(bitmap_text(&[1], 2), "1");
    }

    #[test]
    fn config_forms_give_each_vcpu_its_cpus() {
        let per = CpuAffinity::PerVcpu(vec![vec![0], vec![1, 2]]);
        assert_eq!(config_cpus(&per, 0, 4), Some(vec![0]));
        assert_eq!(config_cpus(&per, 1, 4), Some(vec![1, 2]));
        assert_eq!(config_cpus(&per, 2, 4), None);
        assert_eq!(config_cpus(&CpuAffinity::Set(vec![3]), 5, 4), Some(vec![3]));
        assert_eq!(config_cpus(&CpuAffinity::All, 0, 2), Some(vec![0, 1]));
    }

    #[test]
    fn own_thread_affinity_round_trips() {
        let tid = nix::unistd::gettid().as_raw();
        let before = affinity(tid).expect("affinity");
        assert!(!before.is_empty());
        let first = before[0];
        set_affinity(tid, &[first]).expect("pin");
        assert_eq!(affinity(tid).expect("affinity"), vec![first]);
        set_affinity(tid, &before).expect("restore");
        assert!(matches!(set_affinity(tid, &[]), Err(SchedError::Empty)));
    }
}
