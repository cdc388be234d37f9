//! The control socket's requests as the running VM carries them out
//! ([`ControlTarget`]; `crate::control` frames and decodes them).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Instant;

use rxen_proto::stream::ConfigRecord;
use rxen_proto::vmctl::{AfterSave, TransferStats, VmStats};
use rxen_proto::vmspec::{DiskDevice, ExitReason, NicDevice};

use super::build::balloon_pages;
use super::running::Vm;
use crate::control::{ControlError, ControlTarget};
use crate::devices::power::HostRequest;
use crate::devices::virtio_slots::{self};
use crate::loader::KernelKind;
use crate::migration::SendOptions;

impl ControlTarget for Vm {
    fn pause(&mut self) -> Result<(), ControlError> {
        let vcpus = &self.vcpus;
        self.control
            .pause(&self.infos, |i| {
                if let Some(v) = vcpus.get(i) {
                    v.kick();
                }
            })
            .map_err(|e| ControlError::Failed(e.to_string()))
    }

    fn unpause(&mut self) -> Result<(), ControlError> {
        self.control.unpause();
        Ok(())
    }

    fn shutdown(&mut self) -> Result<(), ControlError> {
        self.host_request(HostRequest::Shutdown)
    }

    fn reboot(&mut self) -> Result<(), ControlError> {
        self.host_request(HostRequest::Reboot)
    }

    fn destroy(&mut self) -> Result<(), ControlError> {
        self.exit
            .request(ExitReason::Destroyed, "destroyed by request");
        Ok(())
    }

    fn stats(&mut self) -> Result<VmStats, ControlError> {
        Ok(self.vm_stats())
    }

    fn take_dirty(&mut self) -> Result<Vec<rxen_proto::vmctl::DirtyDisk>, ControlError> {
        // Taken at one instant: no vCPU may submit a write between two disks' takes.
        if !self.control.is_paused() {
            return Err(ControlError::Failed(
                "the dirty maps are taken only while the domain is paused".into(),
            ));
        }
        Ok(self.slots.take_dirty())
    }

    fn merge_dirty(&mut self, disk: &rxen_proto::vmctl::DirtyDisk) -> Result<(), ControlError> {
        self.slots.merge_dirty(disk).map_err(ControlError::Failed)
    }

    fn set_vcpus(&mut self, online: u32) -> Result<(), ControlError> {
        if self.kind == KernelKind::Linux && online != self.spec.vcpus {
            // A Linux guest has every vCPU of its config online from boot; taking them on and
            // off line would need ACPI CPU hotplug, which rxen does not describe.
            return Err(ControlError::Failed(format!(
                "vcpu-set is not supported for Linux guests (no ACPI CPU hotplug): this domain \
                 keeps its {} vCPUs; change vcpus in its config and reboot it, or use \
                 /sys/devices/system/cpu/cpuN/online inside the guest",
                self.spec.vcpus
            )));
        }
        if online == 0 || online > self.spec.vcpus {
            return Err(ControlError::Failed(format!(
                "{online} vCPUs: this domain has 1 to {} (maxvcpus)",
                self.spec.vcpus
            )));
        }
        self.vcpu_masks.set_online(online);
        Ok(())
    }

    fn set_balloon(&mut self, target_mib: u64) -> Result<(), ControlError> {
        let Some(b) = &self.balloon else {
            return Err(ControlError::Failed("this domain has no balloon".into()));
        };
        if target_mib == 0 || target_mib > self.spec.memory_mib {
            return Err(ControlError::Failed(format!(
                "memory target {target_mib} MiB is outside 1..={} MiB",
                self.spec.memory_mib
            )));
        }
        b.set_target_pages(balloon_pages(self.spec.memory_mib, target_mib));
        Ok(())
    }

    fn save(
        &mut self,
        file: Option<OwnedFd>,
        path: &Path,
        config: &ConfigRecord,
        then: AfterSave,
    ) -> Result<TransferStats, ControlError> {
        let file = file.ok_or_else(|| {
            ControlError::Failed("save needs the save file passed with it".into())
        })?;
        if self.held_save.is_some() {
            return Err(ControlError::Failed(
                "an earlier save is waiting to finish".into(),
            ));
        }
        self.save_to(File::from(file), path, config, then)
            .map_err(|e| ControlError::Failed(e.to_string()))
    }

    fn save_finish(&mut self, path: &Path, committed: bool) -> Result<(), ControlError> {
        let Some(was_paused) = self.held_save.take() else {
            return Err(ControlError::Failed("no save is waiting to finish".into()));
        };
        if committed {
            self.exit
                .request(ExitReason::Saved, format!("saved to {}", path.display()));
        } else {
            self.resume_after_transfer(was_paused);
            tracing::warn!("the save file could not be put in place; domain resumed as it was");
        }
        Ok(())
    }

    fn migrate(
        &mut self,
        sock: Option<OwnedFd>,
        config: &ConfigRecord,
        live: bool,
        max_rounds: u32,
        downtime_ms: u64,
        copy_storage: bool,
    ) -> Result<TransferStats, ControlError> {
        let sock = sock.ok_or_else(|| {
            ControlError::Failed("migrate_send needs a connected socket passed with it".into())
        })?;
        let opts = SendOptions {
            config,
            live,
            max_rounds: max_rounds.max(1),
            downtime_ms,
            wait_ready: None,
            copy_storage,
        };
        self.migrate_to(sock, &opts)
            .map_err(|e| ControlError::Failed(e.to_string()))
    }

    fn dump_core(&mut self, file: Option<OwnedFd>, path: &Path) -> Result<u64, ControlError> {
        let file = File::from(file.ok_or_else(|| {
            ControlError::Failed("dump_core needs the core file passed with it".into())
        })?);
        if self.held_save.is_some() {
            return Err(ControlError::Failed("a save is waiting to finish".into()));
        }
        let t = Instant::now();
        let size = self
            .dump_core_to(&file, path)
            .map_err(ControlError::Failed)?;
        tracing::info!(
            bytes = size,
            ms = t.elapsed().as_millis() as u64,
            "core dumped to {}",
            path.display()
        );
        Ok(size)
    }

    fn change_media(&mut self, devid: u32, file: Option<OwnedFd>) -> Result<u64, ControlError> {
        let file = File::from(file.ok_or_else(|| {
            ControlError::Failed("change_media needs the medium passed with it".into())
        })?);
        let sectors = self
            .slots
            .change_media(devid, file)
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        tracing::info!(devid, sectors, "cdrom medium changed");
        Ok(sectors)
    }

    fn sysrq(&mut self, key: u8) -> Result<(), ControlError> {
        if !self.input.push_break(key) {
            return Err(ControlError::Failed(
                "the console's input queue is full".into(),
            ));
        }
        self.feed_input();
        Ok(())
    }

    fn nmi(&mut self, vcpu: u32) -> Result<(), ControlError> {
        let count = self.vcpus.len();
        let Some(v) = self.vcpus.get(vcpu as usize) else {
            return Err(ControlError::Failed(format!(
                "no vCPU {vcpu}: this domain has {count} (0 to {})",
                count.saturating_sub(1)
            )));
        };
        if v.is_finished() {
            return Err(ControlError::Failed(format!("vCPU {vcpu} has stopped")));
        }
        v.info.request_nmi();
        v.kick();
        tracing::info!(vcpu, "NMI requested");
        Ok(())
    }

    fn attach_disk(
        &mut self,
        disk: &DiskDevice,
        file: Option<OwnedFd>,
        backing: Vec<(std::path::PathBuf, OwnedFd)>,
    ) -> Result<(), ControlError> {
        let file = file.ok_or_else(|| {
            ControlError::Failed("attach_disk needs the opened image passed with it".into())
        })?;
        // The VMM opens no path now: a qcow2 image's backing files come opened by rxend, in the
        // order the chain names them; a chain that names another file than rxend opened is
        // refused.
        let mut given = backing.into_iter();
        let image = virtio_slots::disk_image(disk, File::from(file), &mut |p| match given.next() {
            Some((path, fd)) if path == p => Ok(File::from(fd)),
            Some((path, _)) => Err(std::io::Error::other(format!(
                "rxend opened {} where the chain names {}",
                path.display(),
                p.display()
            ))),
            None => Err(std::io::Error::other(format!(
                "{}: not opened by rxend",
                p.display()
            ))),
        })
        .map_err(|e| ControlError::Failed(e.to_string()))?;
        let len = image.largest_write();
        crate::sandbox::jail::allow_file_size(len).map_err(|e| {
            ControlError::Failed(format!("cannot allow writes to a {len}-byte disk: {e}"))
        })?;
        let slot = self
            .slots
            .add_disk(&self.kvm.fd, disk, disk.shared_writable, false, Some(image))
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        tracing::info!(slot, vdev = %disk.vdev, "disk hot-plugged");
        self.slots.announce_attach();
        Ok(())
    }

    fn attach_nic(&mut self, nic: &NicDevice, tap: Option<OwnedFd>) -> Result<(), ControlError> {
        let tap = tap.ok_or_else(|| {
            ControlError::Failed("attach_nic needs the TAP queue passed with it".into())
        })?;
        let slot = self
            .slots
            .add_nic(&self.kvm.fd, nic, Some(File::from(tap)))
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        tracing::info!(slot, mac = %nic.mac, "nic hot-plugged");
        self.slots.announce_attach();
        Ok(())
    }

    fn detach(&mut self, disk: bool, devid: u32) -> Result<(), ControlError> {
        let slot = self
            .slots
            .slot_of(disk, devid)
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        let clean = self.slots.detach(&self.kvm.fd, slot);
        if !clean && self.kind == KernelKind::Linux {
            // Linux cannot be asked to drop an ACPI-enumerated platform device (see
            // devices::acpi::GedEvents::slots_now); its administrator unbinds it.
            tracing::warn!(
                slot,
                "the Linux guest kept the device; removed anyway (its driver now sees I/O \
                 errors). Unbind it in the guest first for a clean detach: echo \
                 LNRO0005:{slot:02x} > /sys/bus/platform/drivers/virtio-mmio/unbind"
            );
        } else if !clean {
            tracing::warn!(
                slot,
                "the guest did not let go of the device in time; removed anyway"
            );
        }
        Ok(())
    }
}
