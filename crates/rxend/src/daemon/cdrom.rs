//! `rxl cd-insert` and `rxl cd-eject`: the medium of a running domain's cdrom drive
//! (`devtype=cdrom`). rxend opens the new medium (read-only), or makes an empty one, and passes
//! it to the VMM, which swaps it under the drive and raises a configuration-change interrupt
//! with the new capacity; the domain's stored config follows, as libxl's does, so that a
//! reboot, a save or a migration keeps the medium.

use std::os::fd::OwnedFd;

use rxen_proto::vmctl::VmRequest;

use super::{Daemon, DaemonError};
use crate::auth::Caller;
use crate::storage;
use crate::vmm;

impl Daemon {
    /// Puts `target` (a path; `None` ejects) in domain `r`'s cdrom drive `vdev`. Root only.
    pub fn change_cdrom(
        &self,
        caller: &Caller,
        r: &str,
        vdev: &str,
        target: Option<&str>,
    ) -> Result<(), DaemonError> {
        let (id, dir) = self.device_guest(caller, r)?;
        let spec = self
            .table()
            .domains
            .get(&id)
            .and_then(|e| e.rec.config.disks.iter().find(|d| d.vdev == vdev).cloned())
            .ok_or_else(|| DaemonError::Config(format!("Virtual device {vdev} not found")))?;
        if !spec.is_cdrom {
            return Err(DaemonError::Config(format!(
                "Virtual device {vdev} is a disk, not a cdrom drive (devtype=cdrom)"
            )));
        }
        let devid = storage::vdev_devid(vdev)
            .ok_or_else(|| DaemonError::Config(format!("invalid virtual device {vdev}")))?;
        let file = match target {
            Some(path) => {
                let meta = std::fs::metadata(path)
                    .map_err(|e| DaemonError::Config(format!("Cannot stat file: {path}: {e}")))?;
                if !(meta.is_file()
                    || std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()))
                {
                    return Err(DaemonError::Config(format!(
                        "{path} is not a regular file or a block device"
                    )));
                }
                std::fs::File::open(path)
                    .map_err(|e| DaemonError::Config(format!("cannot open {path}: {e}")))?
            }
            None => storage::empty_medium()
                .map_err(|e| DaemonError::Config(format!("cannot make an empty medium: {e}")))?,
        };
        vmm::command_with_fds(
            &dir,
            &VmRequest::ChangeMedia { devid },
            &[&OwnedFd::from(file)],
        )?;
        self.update_config(id, |c| {
            if let Some(d) = c.disks.iter_mut().find(|d| d.vdev == vdev) {
                match target {
                    Some(path) => {
                        d.target = Some(path.to_string());
                        d.format = xlcfg::DiskFormat::Raw;
                    }
                    None => {
                        d.target = Some(String::new());
                        d.format = xlcfg::DiskFormat::Empty;
                    }
                }
            }
        })?;
        self.log.info(format!(
            "domain {id}: {vdev} {} by {}",
            match target {
                Some(p) => format!("now holds {p}"),
                None => "ejected".to_string(),
            },
            caller.describe()
        ));
        Ok(())
    }
}
