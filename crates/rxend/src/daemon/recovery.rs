//! What rxend does at start with what an earlier rxend left: every VMM under the state
//! directory, found by the spec it runs from, is either a recorded domain's (adopted) or
//! killed; domains that were being started are adopted when their VMM runs the guest and
//! removed otherwise; run directories and cgroups that no record names are removed.

use std::fs;
use std::time::Duration;

use super::{kill_vmm, wait_gone, Busy, Daemon};
use crate::procfs::{self, VmmProcess};
use crate::record::DomainState;
use crate::vmm;

/// How long a VMM found for a domain that was being started may take to answer: one that
/// runs its guest answers at once; one still building or receiving it does not answer at all.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl Daemon {
    /// Brings the processes, run directories and cgroups rxend finds in line with its records.
    /// Runs once, before rxend serves anyone.
    pub(super) fn reconcile(&self) {
        let found = procfs::vmm_processes(&self.paths.state_dir.join("dom"));
        let mut owned: Vec<VmmProcess> = Vec::new();
        let mut lost = Vec::new();
        let recorded: Vec<(u32, DomainState)> = self
            .table()
            .domains
            .values()
            .map(|e| (e.rec.domid, e.rec.state.clone()))
            .collect();
        for (id, state) in recorded {
            let mine: Vec<VmmProcess> = found.iter().copied().filter(|p| p.domid == id).collect();
            match state {
                DomainState::Running {
                    pid, start_ticks, ..
                } => match mine
                    .iter()
                    .find(|p| p.pid == pid && p.start_ticks == start_ticks)
                {
                    Some(p) => {
                        owned.push(*p);
                        self.log.info(format!(
                            "adopted domain {id} ({}), VMM pid {pid}",
                            self.name_of(id)
                        ));
                    }
                    None => lost.push(id),
                },
                DomainState::Starting { paused } => {
                    if let Some(p) = self.finish_start(id, paused, &mine) {
                        owned.push(p);
                    }
                }
                DomainState::Shutdown { .. } => {}
            }
        }
        // Anything else that runs from this state directory belongs to no domain.
        let strays: Vec<VmmProcess> = found.into_iter().filter(|p| !owned.contains(p)).collect();
        for p in &strays {
            kill_vmm(p.pid, p.start_ticks);
        }
        for p in &strays {
            let gone = wait_gone(p.pid, p.start_ticks, Duration::from_secs(5));
            self.log.warn(format!(
                "killed rxen-vmm pid {} (run directory of domain {}): no domain record names it{}",
                p.pid,
                p.domid,
                if gone { "" } else { " (it has not exited yet)" }
            ));
        }
        self.remove_unrecorded_run_dirs();
        self.remove_unrecorded_cgroups();
        // Their VMMs ended while rxend was away (or the recorded PID is now another program's):
        // their on_* policies apply as for any VMM that ends.
        for id in lost {
            self.log.warn(format!(
                "domain {id} ({}) lost its VMM while rxend was away",
                self.name_of(id)
            ));
            if let Some(e) = self.table().domains.get_mut(&id) {
                e.busy = Some(Busy::Exiting);
            }
            self.handle_exit(id);
        }
    }

    pub(super) fn name_of(&self, id: u32) -> String {
        self.table()
            .domains
            .get(&id)
            .map(|e| e.rec.name.clone())
            .unwrap_or_default()
    }

    /// A domain rxend was starting when it stopped: adopted when its one VMM runs the guest
    /// (it answers on its control socket), else its VMMs are killed and the domain removed with
    /// everything plugged for it. Returns the adopted VMM.
    fn finish_start(&self, id: u32, paused: bool, vmms: &[VmmProcess]) -> Option<VmmProcess> {
        let name = self.name_of(id);
        let run_dir = self.paths.run_dir(id);
        if let [p] = vmms {
            if let Some(stats) = vmm::probe(&run_dir, PROBE_TIMEOUT) {
                if procfs::alive(p.pid, p.start_ticks) {
                    let rec = {
                        let mut t = self.table();
                        let e = t.domains.get_mut(&id)?;
                        e.rec.state = DomainState::Running {
                            pid: p.pid,
                            start_ticks: p.start_ticks,
                            paused: stats.paused || paused,
                        };
                        e.busy = None;
                        e.rec.clone()
                    };
                    if let Err(e) = self.save(&rec) {
                        self.log.error(e);
                    }
                    self.log.info(format!(
                        "adopted domain {id} ({name}), VMM pid {}: rxend stopped while starting it, and it runs",
                        p.pid
                    ));
                    return Some(*p);
                }
            }
        }
        for p in vmms {
            kill_vmm(p.pid, p.start_ticks);
        }
        for p in vmms {
            wait_gone(p.pid, p.start_ticks, Duration::from_secs(5));
        }
        self.forget(id);
        let killed: Vec<String> = vmms.iter().map(|p| p.pid.to_string()).collect();
        self.log.warn(format!(
            "domain {id} ({name}) was being started when rxend stopped and did not come up; \
             removed it{}",
            if killed.is_empty() {
                String::new()
            } else {
                format!(" (killed its VMM, pid {})", killed.join(", "))
            }
        ));
        None
    }

    /// Run directories of domains no record names: their TAPs are unplugged and they go.
    fn remove_unrecorded_run_dirs(&self) {
        let Ok(dir) = fs::read_dir(self.paths.state_dir.join("dom")) else {
            return;
        };
        for entry in dir.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if self.table().domains.contains_key(&id) {
                continue;
            }
            self.unplug_devices(id, &entry.path());
            self.remove_sched(id);
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => self.log.warn(format!(
                    "removed the run directory of domain {id}, which no record names"
                )),
                Err(e) => self.log.error(format!(
                    "cannot remove {}, which no record names: {e}",
                    entry.path().display()
                )),
            }
        }
    }

    /// Domain cgroups no record names (Domain-0's stays).
    fn remove_unrecorded_cgroups(&self) {
        let mut ids: Vec<u32> = self
            .cgroups
            .as_ref()
            .map(|cg| cg.domain_ids())
            .unwrap_or_default();
        ids.extend(
            self.cpusets
                .as_ref()
                .map(|cs| cs.domain_ids())
                .unwrap_or_default(),
        );
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            if id != 0 && !self.table().domains.contains_key(&id) {
                self.remove_sched(id);
            }
        }
    }
}
