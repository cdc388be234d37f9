//! `rxl dump-core` and `rxl sysrq`: a running domain's ELF core file, written by its jailed VMM
//! into a file rxend creates (mode 0600, never replacing an existing one, named only once
//! complete), a magic SysRq key on its serial console, and an NMI to one of its vCPUs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rxen_proto::vmctl::{VmRequest, VmResponse};

use super::{Daemon, DaemonError};
use crate::auth::Caller;
use crate::migration::savefile::SaveFile;
use crate::vmm::{self, VmmError};

/// How long a VMM may take to write a core file.
const DUMP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

fn dump_err(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Vmm(VmmError::Control(e.to_string()))
}

impl Daemon {
    /// Writes domain `r`'s memory and vCPU registers to a new ELF core file at `path`
    /// (absolute). The domain is paused while its VMM writes and runs on after, unless it
    /// was paused before. Root only.
    pub fn dump_core(&self, caller: &Caller, r: &str, path: &str) -> Result<(), DaemonError> {
        self.only_root(caller, "dump domains' memory")?;
        let (id, dir) = self.running_guest(caller, r, "dumped")?;
        let target = SaveFile::create_new(Path::new(path)).map_err(dump_err)?;
        let fd = target.descriptor().map_err(dump_err)?;
        let req = VmRequest::DumpCore {
            path: PathBuf::from(path),
        };
        let resp = vmm::request_long(&dir, &req, Some(&fd), DUMP_TIMEOUT);
        drop(fd);
        match resp? {
            VmResponse::Ok => {}
            VmResponse::Error { message } => {
                self.log.error(format!(
                    "domain {id}: core dump to {path} failed: {message}"
                ));
                return Err(dump_err(message));
            }
            other => return Err(dump_err(format!("unexpected answer {other:?}"))),
        }
        target.commit_new().map_err(dump_err)?;
        self.log.info(format!(
            "domain {id}: core dumped to {path} by {}",
            caller.describe()
        ));
        Ok(())
    }

    /// Sends a magic SysRq `key` to domain `r`'s serial console: a BREAK, then the key.
    /// Root only: SysRq reaches below the guest's own login.
    pub fn sysrq(&self, caller: &Caller, r: &str, key: u8) -> Result<(), DaemonError> {
        self.only_root(caller, "send SysRq keys")?;
        let (id, dir) = self.running_guest(caller, r, "sent a SysRq key")?;
        vmm::command(&dir, &VmRequest::Sysrq { key })?;
        self.log.info(format!(
            "domain {id}: SysRq {:?} sent by {}",
            char::from(key),
            caller.describe()
        ));
        Ok(())
    }

    /// Injects an NMI into vCPU `vcpu` of domain `r` (`rxl trigger DOMAIN nmi [VCPU]`); the
    /// VMM refuses a vCPU the domain does not have. A paused domain takes it when unpaused.
    pub fn nmi(&self, caller: &Caller, r: &str, vcpu: u32) -> Result<(), DaemonError> {
        let (id, dir) = self.running_guest(caller, r, "sent an NMI")?;
        vmm::command(&dir, &VmRequest::Nmi { vcpu })?;
        self.log.info(format!(
            "domain {id}: NMI to vCPU {vcpu} sent by {}",
            caller.describe()
        ));
        Ok(())
    }
}
