//! Disk priorities that follow the credit weight, on the daemon's side: at
//! start (and so after restore and incoming migration), at adoption, on a
//! disk's hotplug and on `rxl sched-credit -w`, rxend gives the VMM's disk
//! I/O threads the I/O priority of the domain's weight (`crate::ioprio`) and
//! writes its cgroup I/O weight where the kernel offers one
//! (`crate::iocgroup`); `rxl sched-credit -v` reads both back.

use std::time::Duration;

use rxen_proto::api::SchedIo;

use super::sched_ops::SchedOptions;
use super::Daemon;
use crate::cgroup::Cgroups;
use crate::iocgroup::{self, IoWeights};
use crate::ioprio;
use crate::log::Log;
use crate::record::DomainState;

/// Finds the cgroup I/O weight files; `None`, said once in the log, when there are none.
pub(super) fn open_io_weights(
    opts: &SchedOptions,
    cpu: Option<&Cgroups>,
    log: &Log,
) -> Option<IoWeights> {
    let name = opts.cgroup.as_ref()?;
    match iocgroup::detect(name, cpu) {
        Ok(w) => {
            log.info(format!("cgroup I/O weights: {w:?}"));
            Some(w)
        }
        Err(why) => {
            log.info(format!(
                "cgroup I/O weights are skipped: {why}; disk I/O threads get I/O priorities only"
            ));
            None
        }
    }
}

impl Daemon {
    /// Gives domain `domid`'s disk I/O threads (VMM `pid`) the I/O priority and cgroup I/O
    /// weight of credit weight `weight`. Returns warnings for the user.
    pub(super) fn apply_io(&self, domid: u32, pid: i32, weight: u32) -> Vec<String> {
        let mut warnings = Vec::new();
        let threads = match ioprio::apply(pid, weight) {
            Ok(t) => t,
            Err(e) => {
                warnings.push(format!("disk I/O priority is not applied: {e}"));
                ioprio::disk_threads(pid)
            }
        };
        if let Some(w) = &self.io_weights {
            let tids: Vec<i32> = threads.iter().map(|t| t.tid).collect();
            if let Err(e) = w.apply(domid, &tids, weight) {
                warnings.push(format!("cgroup I/O weight is not applied: {e}"));
            }
        }
        warnings
    }

    /// Waits up to 2 s for running domain `domid`'s VMM to show the I/O thread of disk `vdev`
    /// by its name (`blk-VDEV`, cut to the kernel's 15 bytes).
    pub(super) fn wait_disk_thread(&self, domid: u32, vdev: &str) {
        let pid = self
            .table()
            .domains
            .get(&domid)
            .and_then(|e| match e.rec.state {
                DomainState::Running { pid, .. } => Some(pid),
                _ => None,
            });
        let Some(pid) = pid else { return };
        let full = format!("blk-{vdev}");
        let name: String = full.chars().take(15).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !crate::ioprio::disk_threads(pid)
            .iter()
            .any(|t| t.name == name)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Re-applies the I/O priority of a running domain's weight (after a disk's hotplug).
    pub(super) fn reapply_io(&self, domid: u32) {
        let running = self
            .table()
            .domains
            .get(&domid)
            .and_then(|e| match e.rec.state {
                DomainState::Running { pid, .. } => Some((pid, e.rec.config.cpu_weight)),
                _ => None,
            });
        if let Some((pid, weight)) = running {
            for w in self.apply_io(domid, pid, weight) {
                self.log.warn(format!("domain {domid}: {w}"));
            }
        }
    }

    /// Removes a domain's I/O group once its VMM is gone.
    pub(super) fn remove_io(&self, domid: u32) {
        if let Some(w) = &self.io_weights {
            if let Err(e) = w.remove(domid, Duration::from_secs(2)) {
                self.log
                    .warn(format!("domain {domid}: cannot remove its I/O cgroup: {e}"));
            }
        }
    }

    /// What the kernel holds for a running domain's disk I/O, for `rxl sched-credit -v`.
    pub(super) fn io_info(&self, domid: u32, pid: i32) -> SchedIo {
        let threads = ioprio::disk_threads(pid);
        let prios: Vec<String> = threads
            .iter()
            .map(|t| ioprio::get(t.tid).map_or_else(|e| format!("({e})"), |p| p.to_string()))
            .collect();
        let prio = match prios.split_first() {
            None => None,
            Some((first, rest)) if rest.iter().all(|p| p == first) => Some(first.clone()),
            Some(_) => Some("mixed".into()),
        };
        SchedIo {
            threads: threads.len() as u32,
            prio,
            cgroup_weight: self.io_weights.as_ref().and_then(|w| w.read_back(domid)),
        }
    }
}
