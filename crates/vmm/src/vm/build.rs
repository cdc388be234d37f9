//! Building the VM from its launch spec: memory, the kernel or a save file
//! or migration stream, vCPUs, and every device.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
use kvm_ioctls::VcpuFd;
use rxen_proto::vmspec::VmSpec;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::error::VmmError;
use super::running::Vm;
use crate::boot::bootinfo::RxenBootInfo;
use crate::boot::{self, BOOT_INFO_ADDR, CMDLINE_ADDR, GDT_ADDR, KERNEL_MIN_ADDR};
use crate::console::{ConsoleHub, ConsoleWriter};
use crate::cpuid;
use crate::devices::acpi::{AcpiPorts, GedEvents, ACPI_PORT_LEN, GED_GSI};
use crate::devices::i8042::{COMMAND_PORT, DATA_PORT, I8042};
use crate::devices::power::{
    HostRequestReg, PowerPorts, HOST_REQUEST_PORT, POWER_PORT, PVPANIC_PORT,
};
use crate::devices::rtc::{Rtc, RTC_LEN, RTC_PORT};
use crate::devices::serial::{SerialDevice, COM1_GSI, COM1_LEN, COM1_PORT};
use crate::devices::vcpu_ports::{VcpuMasks, VcpuPorts, VCPU_WANTED_PORT};
use crate::devices::virtio_slots::{self, HotplugPorts, VirtioSlots, HOTPLUG_GEN_PORT};
use crate::devices::PioBus;
use crate::exit::ExitSignal;
use crate::kvm_vm::KvmVm;
use crate::loader::{self, KernelKind, LoadedKernel, LoaderError};
use crate::memory::{self, GuestMemory};
use crate::migration::channel;
use crate::migration::devices::{bad_device, SavedDevices};
use crate::migration::regcheck::CpuLimits;
use crate::migration::vcpu_state as snapshot;
use crate::migration::{self, Received};
use crate::sandbox::preopen::{HostFiles, KernelPlan, RunFiles};
use crate::vcpu::{self, RunControl};

/// Devices made before the VM is assembled: the balloon (if any) and the
/// online-vCPU masks behind ports 0x516/0x517.
type VmExtras = (Option<rxen_virtio::BalloonHandle>, Arc<VcpuMasks>);

/// Where a VM's state comes from.
enum Restore {
    /// A fresh boot of this kernel.
    Boot(LoadedKernel),
    /// A save file or migration stream, already read and checked, its devices, and the
    /// vCPUs made for it (their CPUID set) before it was read, lent to their threads while
    /// those apply their saved state.
    Saved(Box<Received>, Box<SavedDevices>, Vec<RestoringVcpu>),
}

/// A vCPU whose thread applies its saved state ([`vcpu::Standby::lend`]).
type RestoringVcpu = vcpu::Lent<Result<(), snapshot::SnapshotError>>;

fn vcpu_err(id: u32, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::VcpuIoctl { id, what, source }
}

/// Reads and parses the spec file.
pub fn read_spec(path: &Path) -> Result<VmSpec, VmmError> {
    let text = std::fs::read(path).map_err(|source| VmmError::SpecRead {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| VmmError::SpecParse {
        path: path.to_path_buf(),
        source,
    })
}

/// Sets up the registers, CPUID, MSRs and LAPIC of vCPU `id`.
fn setup_vcpu(
    kvm: &KvmVm,
    vcpu: &VcpuFd,
    id: u32,
    count: u32,
    kernel: &LoadedKernel,
) -> Result<(), VmmError> {
    let cpuid = cpuid::for_vcpu(&kvm.supported_cpuid, id, count, kvm.tsc_deadline);
    vcpu.set_cpuid2(&cpuid).map_err(vcpu_err(id, "set CPUID"))?;
    boot::regs::setup_msrs(vcpu)?;
    boot::regs::setup_sregs(vcpu)?;
    boot::regs::setup_fpu(vcpu)?;
    let regs = match kernel.kind {
        KernelKind::TestGuest => {
            boot::regs::entry_regs(kernel.entry, u64::from(id), BOOT_INFO_ADDR)
        }
        KernelKind::Linux => {
            boot::regs::entry_regs(kernel.entry, 0, kernel.boot_params.unwrap_or(0))
        }
    };
    boot::regs::setup_regs(vcpu, &regs)?;
    if id == 0 {
        boot::lapic::setup_lapic(vcpu)?;
    }
    let runnable = kernel.kind == KernelKind::TestGuest || id == 0;
    let mp_state = kvm_mp_state {
        mp_state: if runnable {
            KVM_MP_STATE_RUNNABLE
        } else {
            KVM_MP_STATE_UNINITIALIZED
        },
    };
    vcpu.set_mp_state(mp_state)
        .map_err(vcpu_err(id, "set the MP state"))?;
    Ok(())
}

impl Vm {
    /// Builds the VM described by `spec`: memory, kernel, boot state, devices, vCPUs (not started).
    pub fn create(spec: VmSpec) -> Result<Self, VmmError> {
        Self::create_with(spec, None)
    }

    /// Builds the VM of `spec`, booting its kernel, or restoring it from
    /// `spec.restore_from` or from `incoming` (a migration stream). A restored
    /// VM is checked in full before this returns; nothing has run yet.
    pub fn create_with(
        spec: VmSpec,
        incoming: Option<&mut channel::Incoming<'_>>,
    ) -> Result<Self, VmmError> {
        let host = HostFiles::open(&spec)?;
        Self::build(spec, incoming, host)
    }

    /// Builds the VM of `spec` from the files opened for it (see [`HostFiles`]): what a VMM
    /// does once it has confined itself. An incoming migration is read through the caller's
    /// buffer, which the caller drops once the guest runs: freeing it unmaps it, which takes
    /// longer than anything else between the stream's end and the target's answer.
    pub fn build(
        spec: VmSpec,
        incoming: Option<&mut channel::Incoming<'_>>,
        host: HostFiles,
    ) -> Result<Self, VmmError> {
        let HostFiles {
            kvm,
            kernel,
            initrd,
            disks,
            taps,
            restore,
            run,
        } = host;
        let mut spec = spec;
        let (image, initrd) = match kernel {
            KernelPlan::Read(image) => (
                image,
                initrd.map(|(p, f)| rxen_linuxboot::Initrd::File(p, f)),
            ),
            KernelPlan::FirstDisk { entry } => {
                let (Some(d), Some(image)) = (spec.disks.first(), disks.first()) else {
                    return Err(LoaderError::NoBootDisk.into());
                };
                let boot = loader::from_disk(loader::boot_disk(image, &d.vdev)?, &d.vdev, entry)?;
                // The entry's command line, then the domain's own (`root`, `extra`), as xl
                // passes them to pygrub.
                spec.cmdline = format!("{} {}", boot.args, spec.cmdline).trim().to_string();
                (boot.image, boot.initrd)
            }
        };
        // The test guest gets `maxvcpus` vCPUs with the first `vcpus` online (ports
        // 0x516/0x517); other kernels get `vcpus`.
        let online = spec.vcpus;
        if image.kind == KernelKind::TestGuest {
            spec.vcpus = spec.vcpus.max(spec.max_vcpus);
            if spec.vcpus > rxen_testguest::MAX_VCPUS {
                return Err(VmmError::TooManyVcpus {
                    vcpus: spec.vcpus,
                    max: rxen_testguest::MAX_VCPUS,
                    who: "the built-in test guest",
                });
            }
        }
        let vcpu_masks = VcpuMasks::new(online);
        kvm.check_vcpus(spec.vcpus)?;
        let mem = memory::create_guest_memory(spec.memory_mib)?;
        kvm.register_memory(&mem)?;

        // Devices first: a disk or TAP that cannot be opened fails the start cleanly.
        let slots = Arc::new(VirtioSlots::new(Arc::new(mem.clone())));
        for (d, file) in spec.disks.iter().zip(disks) {
            let shared = d.shared_writable;
            // An incoming migration's source still holds the disk's lock:
            // it is taken once the stream is in.
            let slot = slots.add_disk(&kvm.fd, d, shared, incoming.is_some(), Some(file))?;
            tracing::info!(slot, vdev = %d.vdev, path = %d.path.display(), ro = d.read_only, "disk attached");
        }
        for (n, tap) in spec.nics.iter().zip(taps) {
            let slot = slots.add_nic(&kvm.fd, n, Some(tap))?;
            tracing::info!(slot, mac = %n.mac, tap = %n.tap, "nic attached");
        }
        let mut cmdline = format!(
            "{}{}",
            spec.cmdline,
            virtio_slots::linux_cmdline_entries(slots.occupied())
        );
        let balloon = if spec.balloon {
            let start_pages = spec
                .balloon_target_mib
                .map_or(0, |t| balloon_pages(spec.memory_mib, t));
            let handle = slots.add_balloon(&kvm.fd, start_pages)?;
            tracing::info!(slot = virtio_slots::BALLOON_SLOT, "balloon attached");
            cmdline.push_str(&VirtioSlots::linux_cmdline_entry(
                virtio_slots::BALLOON_SLOT,
            ));
            Some(handle)
        } else {
            None
        };
        // What the vCPUs built below can hold: a stream's registers must keep to it.
        let cpu = CpuLimits::from_cpuid(
            cpuid::for_vcpu(&kvm.supported_cpuid, 0, spec.vcpus, kvm.tsc_deadline).as_slice(),
        );
        let mut received_at = None;
        // A restore's vCPUs are made (KVM_CREATE_VCPU, CPUID) before its stream is read: for a
        // migration that is before the source pauses the guest, not inside the downtime.
        // Their threads start now too, and confine themselves while the stream comes in.
        let (made, standby) = if spec.restore_from.is_some() || incoming.is_some() {
            let threads = (0..spec.vcpus)
                .map(vcpu::spawn_standby)
                .collect::<Result<Vec<_>, _>>()?;
            (Self::make_vcpus(&kvm, spec.vcpus)?, threads)
        } else {
            (Vec::new(), Vec::new())
        };
        let restored = if let (Some(path), Some(f)) = (&spec.restore_from, restore) {
            let r = migration::receive(
                BufReader::with_capacity(1 << 20, f),
                &mem,
                spec.memory_mib,
                spec.vcpus,
                &cpu,
                migration::StreamSource::File,
                None,
            )?;
            tracing::info!(bytes = r.bytes, file = %path.display(), "save file read");
            Some(r)
        } else if let Some(input) = incoming {
            let sock: &File = input.get_ref();
            // The source pauses the guest only once this VM is built, its vCPU threads
            // included: on a small host a thread not yet confined by then confines itself
            // inside the downtime (it goes on without one that cannot: see `Standby::run`).
            for thread in &standby {
                thread.wait_confined(Duration::from_secs(1));
            }
            channel::say(sock, channel::READY)
                .map_err(|e| VmmError::Incoming(format!("cannot answer the source: {e}")))?;
            let r = migration::receive(
                input,
                &mem,
                spec.memory_mib,
                spec.vcpus,
                &cpu,
                migration::StreamSource::Connection(Some(sock)),
                Some(&*slots),
            )?;
            received_at = Some(Instant::now());
            Some(r)
        } else {
            None
        };
        if let Some(mut r) = restored {
            // Each vCPU's thread applies its state while this one restores the rest.
            let lent = standby
                .iter()
                .zip(made)
                .zip(std::mem::take(&mut r.vcpus))
                .map(|((thread, vcpu), st)| {
                    thread.lend(vcpu, move |vcpu| snapshot::restore_vcpu(vcpu, &st))
                })
                .collect();
            if received_at.is_some() {
                tracing::info!(bytes = r.bytes, "migration stream received");
                slots.take_disk_locks(Duration::from_secs(5))?;
            }
            let devices = SavedDevices::decode(std::mem::take(&mut r.devices), spec.vcpus)?;
            let mut vm = Self::assemble(
                spec,
                kvm,
                mem,
                slots,
                Restore::Saved(Box::new(r), Box::new(devices), lent),
                (balloon, vcpu_masks),
                run,
            )?;
            vm.received_at = received_at;
            vm.standby = standby;
            return Ok(vm);
        }

        let kernel = loader::load(&mem, &image, initrd, cmdline.trim_start(), spec.vcpus)?;
        tracing::info!(kind = ?kernel.kind, entry = format_args!("{:#x}", kernel.entry), "kernel loaded");
        boot::gdt::write(&mem, GuestAddress(GDT_ADDR))?;
        let tables_limit = match kernel.kind {
            KernelKind::TestGuest => KERNEL_MIN_ADDR,
            KernelKind::Linux => CMDLINE_ADDR,
        };
        let gib = boot::paging::mapped_gib(memory::ram_end(&mem), tables_limit);
        if gib * memory::GIB < memory::ram_end(&mem) {
            tracing::warn!(gib, "boot page tables map only the first {gib} GiB");
        }
        boot::paging::write(&mem, gib)?;

        Self::assemble(
            spec,
            kvm,
            mem,
            slots,
            Restore::Boot(kernel),
            (balloon, vcpu_masks),
            run,
        )
    }

    /// Creates the vCPUs and devices, set up for boot or from saved state.
    fn assemble(
        spec: VmSpec,
        kvm: KvmVm,
        mem: GuestMemory,
        slots: Arc<VirtioSlots>,
        from: Restore,
        extras: VmExtras,
        run: RunFiles,
    ) -> Result<Self, VmmError> {
        let mut pending = Vec::new();
        // A restore's vCPUs are with their threads, which apply their state meanwhile; they
        // are taken back below.
        let (kind, saved, lent) = match from {
            Restore::Boot(kernel) => {
                for id in 0..spec.vcpus {
                    let vcpu = kvm.create_vcpu(id)?;
                    setup_vcpu(&kvm, &vcpu, id, spec.vcpus, &kernel)?;
                    pending.push(vcpu);
                }
                Self::write_boot_info(&spec, &mem, &kernel, &pending)?;
                (kernel.kind, SavedDevices::default(), Vec::new())
            }
            Restore::Saved(r, devices, lent) => {
                snapshot::restore_vm(&kvm.fd, &r.vm)?;
                if let Some(m) = devices.vcpu_masks {
                    extras.1.restore(m.wanted, m.reported);
                }
                let kind = if r.info.kernel == "linux" {
                    KernelKind::Linux
                } else {
                    KernelKind::TestGuest
                };
                (kind, *devices, lent)
            }
        };
        // Streams from before devices were saved carry none: the devices then
        // start fresh, as they did.
        if !saved.slots.is_empty() {
            slots.restore_states(&kvm.fd, &saved.slots)?;
        }
        let mut vm = Self::finish(spec, kvm, mem, slots, kind, pending, (saved, extras, run))?;
        for (id, restoring) in (0u32..).zip(lent) {
            let (vcpu, restored) = restoring
                .take_back()
                .ok_or(vcpu::VcpuError::NotHandedBack(id))?;
            restored?;
            vm.pending.push(vcpu);
        }
        Ok(vm)
    }

    /// The `count` vCPUs of a domain to restore, each with its CPUID set: what does not
    /// depend on the saved state.
    fn make_vcpus(kvm: &KvmVm, count: u32) -> Result<Vec<VcpuFd>, VmmError> {
        (0..count)
            .map(|id| {
                let vcpu = kvm.create_vcpu(id)?;
                let cpuid = cpuid::for_vcpu(&kvm.supported_cpuid, id, count, kvm.tsc_deadline);
                vcpu.set_cpuid2(&cpuid).map_err(vcpu_err(id, "set CPUID"))?;
                Ok(vcpu)
            })
            .collect()
    }

    fn write_boot_info(
        spec: &VmSpec,
        mem: &GuestMemory,
        kernel: &LoadedKernel,
        pending: &[VcpuFd],
    ) -> Result<(), VmmError> {
        if kernel.kind == KernelKind::TestGuest {
            let tsc_khz = pending
                .first()
                .map(|v| v.get_tsc_khz())
                .transpose()
                .map_err(vcpu_err(0, "read the TSC frequency"))?
                .unwrap_or(0);
            RxenBootInfo::new(
                spec.vcpus,
                memory::ram_bytes(mem),
                u64::from(tsc_khz),
                kernel.kernel_end,
            )
            .write(mem, GuestAddress(BOOT_INFO_ADDR))?;
            tracing::info!(tsc_khz, "boot info written");
        }
        Ok(())
    }

    fn finish(
        spec: VmSpec,
        kvm: KvmVm,
        mem: GuestMemory,
        slots: Arc<VirtioSlots>,
        kind: KernelKind,
        pending: Vec<VcpuFd>,
        (saved, (balloon, vcpu_masks), run): (SavedDevices, VmExtras, RunFiles),
    ) -> Result<Self, VmmError> {
        let serial_state = saved.serial;
        let exit = Arc::new(ExitSignal::new()?);
        let host_request = Arc::new(HostRequestReg::default());
        host_request.set_raw(saved.power.host_request);
        let console = Arc::new(ConsoleHub::with_log(Some(run.console_log)));
        let evt =
            || EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VmmError::EventFd);
        let irq = evt()?;
        kvm.register_irqfd(&irq, COM1_GSI)?;
        let input_drained = evt()?;
        let drained_for_uart = input_drained.try_clone().map_err(VmmError::EventFd)?;
        let serial = match &serial_state {
            Some(st) => SerialDevice::from_snapshot(
                irq,
                drained_for_uart,
                ConsoleWriter(console.clone()),
                st,
            )
            .map_err(|e| VmmError::Restore(bad_device("serial", e)))?,
            None => SerialDevice::new(irq, drained_for_uart, ConsoleWriter(console.clone())),
        };
        let serial = Arc::new(Mutex::new(serial));
        let mut pio = PioBus::new();
        pio.insert(COM1_PORT, COM1_LEN, serial.clone())?;
        let power = Arc::new(Mutex::new(PowerPorts::new(
            exit.clone(),
            host_request.clone(),
        )));
        for port in [PVPANIC_PORT, POWER_PORT, HOST_REQUEST_PORT] {
            pio.insert(port, 1, power.clone())?;
        }
        let kbd_irq = evt()?;
        kvm.register_irqfd(&kbd_irq, crate::devices::i8042::KEYBOARD_GSI)?;
        let i8042 = match &saved.i8042 {
            Some(st) => I8042::from_snapshot(exit.clone(), kbd_irq, st),
            None => I8042::new(exit.clone(), kbd_irq),
        };
        let i8042 = Arc::new(Mutex::new(i8042));
        for port in [DATA_PORT, COMMAND_PORT] {
            pio.insert(port, 1, i8042.clone())?;
        }

        let rtc = match &saved.rtc {
            Some(st) => Rtc::from_snapshot(st),
            None => Rtc::new(),
        };
        let rtc = Arc::new(Mutex::new(rtc));
        pio.insert(RTC_PORT, RTC_LEN, rtc.clone())?;

        // ACPI: power off, reset and the GED (named by a Linux guest's DSDT).
        let ged_irq = evt()?;
        kvm.register_irqfd(&ged_irq, GED_GSI)?;
        let ged = Arc::new(GedEvents::new(ged_irq));
        if let Some(st) = &saved.acpi {
            ged.restore(st);
        }
        let present_slots = slots.clone();
        pio.insert(
            crate::devices::acpi::PORT_BASE,
            ACPI_PORT_LEN,
            Arc::new(Mutex::new(AcpiPorts::new(
                exit.clone(),
                ged.clone(),
                Box::new(move || present_slots.present_mask()),
            ))),
        )?;
        if saved.acpi.is_none() {
            ged.set_seen(slots.present_mask());
        }
        if kind == KernelKind::Linux {
            let hook_ged = ged.clone();
            let hook_slots = Arc::downgrade(&slots);
            slots.set_avoid(ged.stale(slots.present_mask()));
            slots.set_change_hook(Box::new(move || {
                if let Some(slots) = hook_slots.upgrade() {
                    let present = slots.present_mask();
                    hook_ged.slots_now(present);
                    slots.set_avoid(hook_ged.stale(present));
                }
            }));
        }

        pio.insert(
            HOTPLUG_GEN_PORT,
            2,
            Arc::new(Mutex::new(HotplugPorts(slots.clone()))),
        )?;
        pio.insert(
            VCPU_WANTED_PORT,
            2,
            Arc::new(Mutex::new(VcpuPorts(vcpu_masks.clone()))),
        )?;

        let control = Arc::new(RunControl::new(spec.vcpus as usize, spec.start_paused));
        let progress = run.progress;
        let input = serial_state
            .as_ref()
            .and_then(|st| crate::console::InputQueue::restore(&st.queued_input, &st.queued_breaks))
            .unwrap_or_default();
        Ok(Self {
            input,
            spec,
            kvm,
            mem,
            kind,
            control,
            exit,
            host_request,
            serial,
            console,
            input_drained,
            pio: Arc::new(pio),
            slots,
            balloon,
            vcpu_masks,
            ged,
            i8042,
            rtc,
            vcpus: Vec::new(),
            infos: Vec::new(),
            pending,
            pagemap: run.pagemap.map(Arc::new),
            proc_status: run.proc_status,
            vcpu_stat: Vec::new(),
            progress: Some(progress),
            held_save: None,
            received_at: None,
            standby: Vec::new(),
        })
    }
}

/// Balloon pages that leave a guest of `ram_mib` MiB with `target_mib` MiB.
pub(super) fn balloon_pages(ram_mib: u64, target_mib: u64) -> u32 {
    let pages = ram_mib.saturating_sub(target_mib) * (1 << 20) / rxen_virtio::BALLOON_PAGE;
    u32::try_from(pages).unwrap_or(u32::MAX)
}
