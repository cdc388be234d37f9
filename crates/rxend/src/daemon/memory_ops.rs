//! Memory of running domains: `rxl mem-set` moves the virtio-balloon's
//! target (the guest gives pages back, the VMM returns them to the host),
//! `rxl mem-max` changes the bound.

use rxen_proto::vmctl::VmRequest;

use super::{Daemon, DaemonError};
use crate::auth::Caller;
use crate::vmm;

impl Daemon {
    /// `rxl mem-set`: asks the guest to keep `mib` MiB (up to `maxmem`, the RAM it was built with).
    pub fn mem_set(&self, caller: &Caller, r: &str, mib: u64) -> Result<(), DaemonError> {
        if !caller.is_root() {
            return Err(DaemonError::Denied("only root may change memory".into()));
        }
        let (id, dir) = self.running_guest(caller, r, "ballooned")?;
        let (boot, maxmem) = {
            let t = self.table();
            let e = t
                .domains
                .get(&id)
                .ok_or_else(|| DaemonError::NoSuchDomain(r.to_string()))?;
            (e.rec.config.memory_mib, e.rec.max_mib())
        };
        if mib == 0 || mib > maxmem {
            return Err(DaemonError::Config(format!(
                "memory target {mib} MiB is outside 1-{maxmem} MiB (maxmem)"
            )));
        }
        vmm::command(&dir, &VmRequest::SetBalloon { target_mib: mib })?;
        let rec = {
            let mut t = self.table();
            let Some(e) = t.domains.get_mut(&id) else {
                return Err(DaemonError::NoSuchDomain(r.to_string()));
            };
            e.rec.mem_target_mib = (mib != boot).then_some(mib);
            e.rec.clone()
        };
        self.save(&rec)?;
        self.log.info(format!(
            "domain {id} ({}): memory target {mib} MiB, set by {}",
            rec.name,
            caller.describe()
        ));
        Ok(())
    }

    /// `rxl mem-max`: sets the bound for later `mem-set`s (not below the current target, not above the RAM).
    pub fn mem_max(&self, caller: &Caller, r: &str, mib: u64) -> Result<(), DaemonError> {
        if !caller.is_root() {
            return Err(DaemonError::Denied("only root may change memory".into()));
        }
        let (id, _) = self.guest(caller, r, "given a memory maximum")?;
        let rec = {
            let mut t = self.table();
            let Some(e) = t.domains.get_mut(&id) else {
                return Err(DaemonError::NoSuchDomain(r.to_string()));
            };
            let current = e.rec.current_mib();
            if mib < current {
                return Err(DaemonError::Config(format!(
                    "maximum {mib} MiB is below the current memory ({current} MiB): run mem-set first"
                )));
            }
            let ram = crate::record::ram_mib(&e.rec.config);
            if mib > ram {
                return Err(DaemonError::Config(format!(
                    "maximum {mib} MiB is above the {ram} MiB of RAM the domain was built with \
                     (set maxmem in its config to allow more from its next start)"
                )));
            }
            e.rec.mem_max_mib = Some(mib);
            e.rec.clone()
        };
        self.save(&rec)?;
        self.log.info(format!(
            "domain {id} ({}): maxmem {mib} MiB, set by {}",
            rec.name,
            caller.describe()
        ));
        Ok(())
    }
}
