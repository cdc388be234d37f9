//! Disks and NICs of running domains: `block-attach`/`-detach`, `network-attach`/`-detach` and
//! the device lists.

use std::os::fd::OwnedFd;
use std::path::Path;

use rxen_proto::vmctl::{DiskStats, NicStats, VmRequest, VmResponse};

use super::{Daemon, DaemonError};
use crate::auth::Caller;
use crate::network::{self, PluggedVif};
use crate::storage;
use crate::vmm;

fn config_err(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Config(e.to_string())
}

impl Daemon {
    pub(super) fn device_guest(
        &self,
        caller: &Caller,
        r: &str,
    ) -> Result<(u32, std::path::PathBuf), DaemonError> {
        if !caller.is_root() {
            return Err(DaemonError::Denied(
                "only root may change a domain's devices".into(),
            ));
        }
        self.running_guest(caller, r, "given devices")
    }

    /// Changes the domain's stored config, as libxl does on hotplug: the
    /// device then comes back on reboot and travels with saves and migrations.
    pub(super) fn update_config(
        &self,
        id: u32,
        change: impl FnOnce(&mut xlcfg::DomainConfig),
    ) -> Result<(), DaemonError> {
        let rec = {
            let mut t = self.table();
            let Some(e) = t.domains.get_mut(&id) else {
                return Ok(());
            };
            change(&mut e.rec.config);
            e.rec.clone()
        };
        self.save(&rec)
    }

    /// The disks and NICs of a running domain with their counters.
    pub fn devices(
        &self,
        caller: &Caller,
        r: &str,
    ) -> Result<(u32, Vec<DiskStats>, Vec<NicStats>), DaemonError> {
        let (id, dir) = self.running_guest(caller, r, "listed")?;
        match vmm::request(&dir, &VmRequest::Stats)? {
            VmResponse::Stats(s) => Ok((id, s.disks, s.nics)),
            VmResponse::Error { message } => Err(DaemonError::Vmm(vmm::VmmError::Control(message))),
            VmResponse::Ok | VmResponse::Transferred(_) | VmResponse::Dirty { .. } => {
                Ok((id, Vec::new(), Vec::new()))
            }
        }
    }

    /// Hot-plugs the disk described by an xl disk spec.
    pub fn block_attach(&self, caller: &Caller, r: &str, spec: &str) -> Result<(), DaemonError> {
        let (id, dir) = self.device_guest(caller, r)?;
        let parsed = xlcfg::parse_disk_spec(spec).map_err(config_err)?;
        let mut disk = storage::prepare_disk(&parsed).map_err(config_err)?;
        // Opened here and passed (the VMM opens no path once its guest runs), with a qcow2
        // image's backing files (read-only); the VMM takes the sharing locks on them, so a disk
        // another domain holds, or a backing file another domain writes, is refused as before.
        let file = storage::open_for_vmm(&disk).map_err(|e| {
            DaemonError::Vmm(vmm::VmmError::Control(format!(
                "cannot open disk {}: {e}",
                disk.path.display()
            )))
        })?;
        let backing = storage::open_backing_for_vmm(&disk).map_err(config_err)?;
        disk.discard = Some(storage::takes_discards(&file));
        let file = OwnedFd::from(file);
        let (backing_paths, backing_files): (Vec<_>, Vec<_>) = backing.into_iter().unzip();
        let backing_fds: Vec<OwnedFd> = backing_files.into_iter().map(OwnedFd::from).collect();
        let fds: Vec<&OwnedFd> = std::iter::once(&file).chain(&backing_fds).collect();
        vmm::command_with_fds(
            &dir,
            &VmRequest::AttachDisk {
                disk: disk.clone(),
                backing: backing_paths,
            },
            &fds,
        )?;
        self.update_config(id, |c| {
            c.disks.retain(|d| d.vdev != parsed.vdev);
            c.disks.push(parsed.clone());
        })?;
        // The new disk's I/O thread gets the domain's I/O priority. The VMM answers once the
        // thread is started, but a thread takes its name only when it first runs: wait (briefly)
        // until `blk-VDEV` shows, or it would be missed.
        self.wait_disk_thread(id, &disk.vdev);
        self.reapply_io(id);
        self.log.info(format!(
            "domain {id}: disk {} ({}) attached by {}",
            disk.vdev,
            disk.path.display(),
            caller.describe()
        ));
        Ok(())
    }

    /// Hot-unplugs a disk by vdev name or device ID.
    pub fn block_detach(&self, caller: &Caller, r: &str, vdev: &str) -> Result<(), DaemonError> {
        let (id, dir) = self.device_guest(caller, r)?;
        // xl's words for a vdev the domain does not have.
        let not_connected = || config_err(format!("Error: Device {vdev} not connected."));
        let devid = storage::vdev_devid(vdev).ok_or_else(not_connected)?;
        let attached = self.table().domains.get(&id).is_some_and(|e| {
            e.rec
                .config
                .disks
                .iter()
                .any(|d| storage::vdev_devid(&d.vdev) == Some(devid))
        });
        if !attached {
            return Err(not_connected());
        }
        vmm::command(&dir, &VmRequest::DetachDisk { devid })?;
        self.update_config(id, |c| {
            c.disks
                .retain(|d| storage::vdev_devid(&d.vdev) != Some(devid))
        })?;
        self.log.info(format!(
            "domain {id}: disk {vdev} detached by {}",
            caller.describe()
        ));
        Ok(())
    }

    /// Hot-plugs a NIC described by an xl vif spec: creates and wires its TAP, then the device.
    pub fn network_attach(&self, caller: &Caller, r: &str, spec: &str) -> Result<(), DaemonError> {
        let (id, dir) = self.device_guest(caller, r)?;
        let parsed = xlcfg::parse_vif_spec(spec).map_err(config_err)?;
        let uuid = self
            .table()
            .domains
            .get(&id)
            .map(|e| e.rec.uuid.clone())
            .unwrap_or_default();
        let mut vifs = network::load_vifs(&dir);
        let next = vifs.iter().map(|v| v.nic.devid + 1).max().unwrap_or(0);
        let v = network::describe_vif(&parsed, id, next, &uuid).map_err(config_err)?;
        if vifs.iter().any(|o| o.nic.devid == v.nic.devid) {
            return Err(config_err(network::NetworkError::Duplicate(v.nic.devid)));
        }
        vifs.push(v.clone());
        save(&dir, &vifs)?;
        let plugged = network::plug(&v).map_err(config_err).and_then(|()| {
            // The TAP queue is opened here and passed: the VMM opens no path once its guest runs.
            let tap = network::open_tap(&v.nic.tap)
                .map_err(|e| DaemonError::Vmm(vmm::VmmError::Control(e.to_string())))?;
            vmm::command_with_fds(&dir, &VmRequest::AttachNic { nic: v.nic.clone() }, &[&tap])
                .map_err(DaemonError::from)
        });
        if let Err(e) = plugged {
            network::unplug(&v);
            vifs.pop();
            save(&dir, &vifs)?;
            return Err(e);
        }
        // Stored with its device ID and MAC, so that it comes back the same.
        let mut stored = parsed.clone();
        stored.devid = Some(v.nic.devid);
        stored.mac = v.nic.mac.parse().ok().or(stored.mac);
        self.update_config(id, |c| c.vifs.push(stored))?;
        self.log.info(format!(
            "domain {id}: vif {} ({}, MAC {}) attached by {}",
            v.nic.devid,
            v.nic.tap,
            v.nic.mac,
            caller.describe()
        ));
        Ok(())
    }

    /// Hot-unplugs a NIC by device ID or MAC, then removes its TAP.
    pub fn network_detach(
        &self,
        caller: &Caller,
        r: &str,
        device: &str,
    ) -> Result<(), DaemonError> {
        let (id, dir) = self.device_guest(caller, r)?;
        let mut vifs = network::load_vifs(&dir);
        let wanted = |v: &PluggedVif| {
            device.parse::<u32>().ok() == Some(v.nic.devid)
                || v.nic.mac.eq_ignore_ascii_case(device)
        };
        let Some(pos) = vifs.iter().position(wanted) else {
            // xl's words for a device ID or MAC the domain does not have.
            return Err(config_err(format!("Unknown device {device}.")));
        };
        let v = vifs.remove(pos);
        vmm::command(&dir, &VmRequest::DetachNic { devid: v.nic.devid })?;
        for problem in network::unplug(&v) {
            self.log.warn(format!(
                "domain {id}: unplugging vif {}: {problem}",
                v.nic.tap
            ));
        }
        save(&dir, &vifs)?;
        let mac = v.nic.mac.parse::<xlcfg::MacAddr>().ok();
        let index_devid = |i: usize, w: &xlcfg::VifSpec| w.devid.unwrap_or(i as u32);
        self.update_config(id, |c| {
            let keep: Vec<bool> = c
                .vifs
                .iter()
                .enumerate()
                .map(|(i, w)| index_devid(i, w) != v.nic.devid && (mac.is_none() || w.mac != mac))
                .collect();
            let mut k = keep.iter();
            c.vifs.retain(|_| k.next().copied().unwrap_or(true));
        })?;
        self.log.info(format!(
            "domain {id}: vif {} detached by {}",
            v.nic.devid,
            caller.describe()
        ));
        Ok(())
    }
}

fn save(dir: &Path, vifs: &[PluggedVif]) -> Result<(), DaemonError> {
    network::save_vifs(dir, vifs).map_err(|source| DaemonError::Persist {
        path: dir.join(network::VIFS_FILE),
        source,
    })
}
