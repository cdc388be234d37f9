//! The VM as a whole: builds it from a [`VmSpec`], starts it, and answers the control socket.

use crate::memory::GuestMemory;
use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
use kvm_ioctls::VcpuFd;
use rxen_proto::stream::ConfigRecord;
use rxen_proto::vmctl::{
    AfterSave, BalloonStats, TargetTimings, TransferStats, VcpuState, VcpuStats, VmStats,
};
use rxen_proto::vmspec::{files, DiskDevice, ExitReason, ExitRecord, NicDevice, VmSpec};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::bootinfo::{BootInfoError, RxenBootInfo};
use crate::boot::gdt::GdtError;
use crate::boot::lapic::LapicError;
use crate::boot::paging::PagingError;
use crate::boot::regs::RegsError;
use crate::boot::{self, BOOT_INFO_ADDR, CMDLINE_ADDR, GDT_ADDR, KERNEL_MIN_ADDR};
use crate::console::{ConsoleError, ConsoleHub, ConsoleWriter};
use crate::control::{ControlError, ControlTarget};
use crate::devices::acpi::{AcpiPorts, GedEvents, ACPI_PORT_LEN, GED_EVENT_POWER_BUTTON, GED_GSI};
use crate::devices::i8042::{COMMAND_PORT, DATA_PORT, I8042};
use crate::devices::pio_bus::PioBusError;
use crate::devices::power::{
    HostRequest, HostRequestReg, PowerPorts, HOST_REQUEST_PORT, POWER_PORT, PVPANIC_PORT,
};
use crate::devices::rtc::{Rtc, RTC_LEN, RTC_PORT};
use crate::devices::serial::{SerialDevice, COM1_GSI, COM1_LEN, COM1_PORT};
use crate::devices::vcpu_ports::{VcpuMasks, VcpuPorts, VCPU_WANTED_PORT};
use crate::devices::virtio_slots::{self, HotplugPorts, SlotError, VirtioSlots, HOTPLUG_GEN_PORT};
use crate::devices::PioBus;
use crate::event_loop::{self, EventLoopError};
use crate::exit::{ExitError, ExitSignal};
use crate::kvm_vm::{KvmVm, KvmVmError};
use crate::loader::{self, KernelKind, LoadedKernel, LoaderError};
use crate::memory::{self, MemoryError};
use crate::micros;
use crate::migration::channel::{read_line, take_incoming, TIMINGS_PREFIX};
use crate::migration::devices::{bad_device, DeviceRecord, SavedDevices};
use crate::migration::regcheck::CpuLimits;
use crate::migration::vcpu_state::{self as snapshot, SnapshotError};
use crate::migration::{self, Received, SendOptions, TransferError};
use crate::sandbox::preopen::{HostFiles, KernelPlan, PreopenError, RunFiles};
use crate::vcpu::{self, RunControl, VcpuContext, VcpuError, VcpuHandle, VcpuInfo};
use crate::{cpuid, stats};

/// Devices made before the VM is assembled: the balloon (if any) and the
/// online-vCPU masks behind ports 0x516/0x517.
type VmExtras = (Option<rxen_virtio::BalloonHandle>, Arc<VcpuMasks>);

/// Where a VM's state comes from.
enum Restore {
    /// A fresh boot of this kernel.
    Boot(LoadedKernel),
    /// A save file or migration stream, already read and checked, and its devices.
    Saved(Box<Received>, Box<SavedDevices>),
}

/// The UART type of COM1.
pub type Com1 = SerialDevice<ConsoleWriter>;

/// Errors while creating or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The kernel cannot run this many vCPUs.
    #[error("{vcpus} vCPUs requested: {who} runs at most {max}")]
    TooManyVcpus {
        /// vCPUs the domain asks for (`maxvcpus` where larger).
        vcpus: u32,
        /// The limit.
        max: u32,
        /// Whose limit it is.
        who: &'static str,
    },
    /// The VMM could not confine itself; it does not run a guest unconfined.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// A file the VMM needs could not be opened.
    #[error(transparent)]
    Preopen(#[from] PreopenError),
    /// The vCPU threads did not come up (register, and park when starting paused) in time.
    #[error("the vCPU threads did not start within {0:?}")]
    VcpusNotStarted(std::time::Duration),
    /// The spec could not be read.
    #[error("cannot read spec {path}: {source}")]
    SpecRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The spec is not a valid `VmSpec`.
    #[error("invalid spec {path}: {source}")]
    SpecParse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The run directory is unusable.
    #[error("run directory {path}: {source}")]
    RunDir {
        /// The directory or file in it.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// KVM setup failed.
    #[error(transparent)]
    Kvm(#[from] KvmVmError),
    /// Guest memory setup failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel could not be loaded.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// The GDT could not be written.
    #[error(transparent)]
    Gdt(#[from] GdtError),
    /// The page tables could not be written.
    #[error(transparent)]
    Paging(#[from] PagingError),
    /// The boot info could not be written.
    #[error(transparent)]
    BootInfo(#[from] BootInfoError),
    /// vCPU registers could not be set.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// The LAPIC could not be configured.
    #[error(transparent)]
    Lapic(#[from] LapicError),
    /// A KVM vCPU ioctl failed.
    #[error("vcpu{id}: cannot {what}: {source}")]
    VcpuIoctl {
        /// vCPU index.
        id: u32,
        /// What was being done.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// A vCPU thread failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The port bus could not be built.
    #[error(transparent)]
    PioBus(#[from] PioBusError),
    /// The console could not be set up.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// An event fd could not be created.
    #[error("cannot create an event fd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The exit machinery failed.
    #[error(transparent)]
    Exit(#[from] ExitError),
    /// The event loop failed.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// The save file or migration stream could not be used.
    #[error("cannot restore the domain: {0}")]
    Restore(#[from] TransferError),
    /// Saved vCPU, VM or device state could not be applied.
    #[error("cannot restore the domain: {0}")]
    Snapshot(#[from] SnapshotError),
    /// The save file could not be opened (or its inherited descriptor is not open).
    #[error("cannot open save file {path}: {source}")]
    SaveFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The incoming migration connection failed.
    #[error("incoming migration: {0}")]
    Incoming(String),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Device(#[from] SlotError),
}

/// A running VM and everything the control loop needs to drive it.
pub struct Vm {
    /// The launch spec.
    pub spec: VmSpec,
    /// Console input waiting for room in the UART FIFO (fed by the event loop).
    pub input: crate::console::InputQueue,
    /// The KVM VM (kept open for the VM's lifetime).
    pub kvm: KvmVm,
    /// Guest memory.
    pub mem: GuestMemory,
    /// The boot protocol of the kernel.
    pub kind: KernelKind,
    /// Pause coordination.
    pub control: Arc<RunControl>,
    /// Pending exit.
    pub exit: Arc<ExitSignal>,
    /// The host request register behind port 0x512.
    pub host_request: Arc<HostRequestReg>,
    /// COM1.
    pub serial: Arc<Mutex<Com1>>,
    /// Console output fan-out.
    pub console: Arc<ConsoleHub>,
    /// Signalled when the guest drains the UART receive FIFO.
    pub input_drained: EventFd,
    /// The port bus.
    pub pio: Arc<PioBus>,
    /// The virtio-mmio slots and their devices.
    pub slots: Arc<VirtioSlots>,
    /// The balloon in the last slot, when the spec asks for one.
    pub balloon: Option<rxen_virtio::BalloonHandle>,
    /// The vCPU online masks (ports 0x516/0x517).
    pub vcpu_masks: Arc<VcpuMasks>,
    /// The ACPI generic event device's pending events (Linux guests).
    pub ged: Arc<GedEvents>,
    /// The i8042 keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
    /// The CMOS RTC.
    pub rtc: Arc<Mutex<Rtc>>,
    vcpus: Vec<VcpuHandle>,
    infos: Vec<Arc<VcpuInfo>>,
    pending: Vec<VcpuFd>,
    /// Opened at start-up, so that nothing opens a path once the guest runs:
    /// /proc/self/pagemap (when it tells zero pages apart),
    pub(crate) pagemap: Option<Arc<crate::migration::pagemap::Pagemap>>,
    /// /proc/self/status (RSS),
    proc_status: Option<stats::ProcFile>,
    /// each vCPU thread's /proc/self/task/TID/stat (in `vcpus` order),
    vcpu_stat: Vec<Option<stats::ProcFile>>,
    /// and `RUN_DIR/transfer.json`.
    pub(crate) progress: Option<File>,
    /// A save with `then: hold` waits for rxend's `SaveFinish`: whether the
    /// guest was paused before it.
    pub(crate) held_save: Option<bool>,
    /// An incoming migration's: when the whole stream was in (the target's
    /// restore starts there).
    received_at: Option<Instant>,
}

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
    pub fn create_with(spec: VmSpec, incoming: Option<&File>) -> Result<Self, VmmError> {
        let host = HostFiles::open(&spec)?;
        Self::build(spec, incoming, host)
    }

    /// Builds the VM of `spec` from the files opened for it (see [`HostFiles`]): what a VMM
    /// does once it has confined itself.
    pub fn build(spec: VmSpec, incoming: Option<&File>, host: HostFiles) -> Result<Self, VmmError> {
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
        } else if let Some(sock) = incoming {
            // The source pauses the guest only once this VM is built.
            (&*sock)
                .write_all(b"ready\n")
                .map_err(|e| VmmError::Incoming(format!("cannot answer the source: {e}")))?;
            let r = migration::receive(
                BufReader::with_capacity(1 << 20, sock),
                &mem,
                spec.memory_mib,
                spec.vcpus,
                &cpu,
                migration::StreamSource::Connection,
                Some(&*slots),
            )?;
            tracing::info!(bytes = r.bytes, "migration stream received");
            received_at = Some(Instant::now());
            slots.take_disk_locks(Duration::from_secs(5))?;
            Some(r)
        } else {
            None
        };
        if let Some(mut r) = restored {
            let devices = SavedDevices::decode(std::mem::take(&mut r.devices), spec.vcpus)?;
            let mut vm = Self::assemble(
                spec,
                kvm,
                mem,
                slots,
                Restore::Saved(Box::new(r), Box::new(devices)),
                (balloon, vcpu_masks),
                run,
            )?;
            vm.received_at = received_at;
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
        for id in 0..spec.vcpus {
            let vcpu = kvm.create_vcpu(id)?;
            match &from {
                Restore::Boot(kernel) => setup_vcpu(&kvm, &vcpu, id, spec.vcpus, kernel)?,
                Restore::Saved(r, _) => {
                    let cpuid =
                        cpuid::for_vcpu(&kvm.supported_cpuid, id, spec.vcpus, kvm.tsc_deadline);
                    vcpu.set_cpuid2(&cpuid).map_err(vcpu_err(id, "set CPUID"))?;
                    if let Some(st) = r.vcpus.get(id as usize) {
                        snapshot::restore_vcpu(&vcpu, st)?;
                    }
                }
            }
            pending.push(vcpu);
        }
        let (kind, saved) = match from {
            Restore::Boot(kernel) => {
                Self::write_boot_info(&spec, &mem, &kernel, &pending)?;
                (kernel.kind, SavedDevices::default())
            }
            Restore::Saved(r, devices) => {
                snapshot::restore_vm(&kvm.fd, &r.vm)?;
                if let Some(m) = devices.vcpu_masks {
                    extras.1.restore(m.wanted, m.reported);
                }
                let kind = if r.info.kernel == "linux" {
                    KernelKind::Linux
                } else {
                    KernelKind::TestGuest
                };
                (kind, *devices)
            }
        };
        // Streams from before devices were saved carry none: the devices then
        // start fresh, as they did.
        if !saved.slots.is_empty() {
            slots.restore_states(&kvm.fd, &saved.slots)?;
        }
        Self::finish(spec, kvm, mem, slots, kind, pending, (saved, extras, run))
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
        })
    }

    /// Starts one thread per vCPU (parked at once when the spec says `start_paused`).
    pub fn start(&mut self) -> Result<(), VmmError> {
        vcpu::install_kick_handler()?;
        let ctx = VcpuContext {
            pio: self.pio.clone(),
            exit: self.exit.clone(),
            control: self.control.clone(),
            mmio: self.slots.clone(),
        };
        for (id, fd) in (0u32..).zip(std::mem::take(&mut self.pending)) {
            let handle = vcpu::spawn(fd, id, ctx.clone())?;
            self.infos.push(handle.info.clone());
            self.vcpus.push(handle);
        }
        // "ready" promises that every vCPU thread exists (its tid is known to
        // stats) and, for a paused start, that it is parked.
        let timeout = std::time::Duration::from_secs(10);
        let deadline = std::time::Instant::now() + timeout;
        let pending = |vm: &Self| {
            vm.infos.iter().enumerate().any(|(i, info)| {
                info.tid.load(std::sync::atomic::Ordering::SeqCst) == 0
                    || (vm.spec.start_paused && !vm.control.is_parked(i))
            })
        };
        while pending(self) {
            if std::time::Instant::now() >= deadline {
                return Err(VmmError::VcpusNotStarted(timeout));
            }
            // Briefly: a migration's target says "resumed" only after this
            // (a 1 ms nap here was a millisecond of every migration's downtime).
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
        // A jailed VMM has no /proc (rxend samples its threads from the host's instead).
        if !crate::sandbox::jail::entered() {
            self.vcpu_stat = self
                .infos
                .iter()
                .map(|info| {
                    let tid = info.tid.load(std::sync::atomic::Ordering::SeqCst);
                    stats::ProcFile::thread_stat(tid)
                        .map_err(|e| tracing::warn!(tid, "vCPU state will not be sampled: {e}"))
                        .ok()
                })
                .collect();
        }
        Ok(())
    }

    /// Passes a shutdown or reboot request to the guest.
    fn host_request(&self, req: HostRequest) -> Result<(), ControlError> {
        match self.kind {
            KernelKind::TestGuest => {
                self.host_request.set(req);
                Ok(())
            }
            // Linux: the ACPI power button for a shutdown, Ctrl-Alt-Del on the keyboard for a
            // reboot (what a PC's user would press).
            KernelKind::Linux => {
                match req {
                    HostRequest::Shutdown => self.ged.raise(GED_EVENT_POWER_BUTTON),
                    HostRequest::Reboot => {
                        if !crate::lock(&self.i8042).send_ctrl_alt_del() {
                            return Err(ControlError::Failed(
                                "the guest's keyboard is not listening (its driver has not \
                                 enabled it yet, or its buffer is full): try again"
                                    .into(),
                            ));
                        }
                    }
                    HostRequest::None => {}
                }
                Ok(())
            }
        }
    }

    /// Current counters.
    pub fn vm_stats(&self) -> VmStats {
        let vcpus = self
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let tid = h.info.tid.load(std::sync::atomic::Ordering::SeqCst);
                let sample = self
                    .vcpu_stat
                    .get(i)
                    .and_then(Option::as_ref)
                    .filter(|_| tid > 0)
                    .and_then(|f| f.sample_thread().ok());
                let state = if self.control.is_gone(i) || h.is_finished() {
                    VcpuState::Offline
                } else if self.control.is_parked(i) {
                    VcpuState::Paused
                } else {
                    sample
                        .as_ref()
                        .map(stats::vcpu_state_from)
                        .unwrap_or(VcpuState::Running)
                };
                VcpuStats {
                    id: h.info.id,
                    tid,
                    cpu_time_ns: if h.is_finished() {
                        0
                    } else {
                        stats::thread_cpu_ns(h.pthread).unwrap_or(0)
                    },
                    state,
                    host_cpu: sample.and_then(|s| s.processor),
                }
            })
            .collect();
        let (disks, nics) = self.slots.stats();
        VmStats {
            paused: self.control.is_paused(),
            memory_mib: self.spec.memory_mib,
            vcpus,
            rss_kib: self
                .proc_status
                .as_ref()
                .and_then(|f| f.rss_kib().ok())
                .unwrap_or(0),
            disks,
            nics,
            balloon: self.balloon.as_ref().map(|b| BalloonStats {
                target_pages: b.target_pages(),
                actual_pages: b.actual_pages(),
                inflated_pages: b.inflated_pages(),
            }),
            online_mask: self.vcpu_masks.reported(),
        }
    }

    /// Pauses every vCPU.
    pub(crate) fn pause_all(&self) -> Result<(), VcpuError> {
        let vcpus = &self.vcpus;
        self.control.pause(&self.infos, |i| {
            if let Some(v) = vcpus.get(i) {
                v.kick();
            }
        })
    }

    /// Runs `job` on every parked vCPU's own thread and collects the results.
    pub(crate) fn on_each_vcpu<T: Send + 'static>(
        &self,
        job: impl Fn(&mut VcpuFd, u32) -> T + Send + Sync + 'static,
    ) -> Result<Vec<T>, TransferError> {
        let job = Arc::new(job);
        let mut out = Vec::with_capacity(self.vcpus.len());
        for (i, h) in self.vcpus.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            let id = h.info.id;
            let job = job.clone();
            self.control
                .post(
                    i,
                    Box::new(move |v: &mut VcpuFd| {
                        let _ = tx.send(job(v, id));
                    }),
                )
                .map_err(|e| TransferError::Peer(e.to_string()))?;
            let r = rx
                .recv_timeout(Duration::from_secs(5))
                .map_err(|_| TransferError::Peer(format!("vCPU {id} did not answer")))?;
            out.push(r);
        }
        Ok(out)
    }

    /// Lets KVM complete any port I/O a paused vCPU is in the middle of:
    /// re-enter KVM_RUN with `immediate_exit` set. PVM may emulate a few
    /// instructions on the way (guest writes), so this comes before the last
    /// dirty pages are collected.
    pub(crate) fn settle_vcpus(&self) -> Result<(), TransferError> {
        self.on_each_vcpu(|v, _| {
            v.set_kvm_immediate_exit(1);
            let _ = v.run();
            v.set_kvm_immediate_exit(0);
        })
        .map(|_| ())
    }

    /// Captures every vCPU's state on its own (parked, settled) thread.
    pub(crate) fn capture_vcpus(&self) -> Result<Vec<Vec<u8>>, TransferError> {
        let msrs = Arc::new(snapshot::msr_list(&self.kvm.kvm));
        self.on_each_vcpu(move |v, id| snapshot::capture_vcpu(v, id, &msrs))?
            .into_iter()
            .map(|r| r.map_err(TransferError::from))
            .collect()
    }

    /// The device records (virtio devices frozen, guest paused).
    pub(crate) fn device_records(&self) -> Vec<DeviceRecord> {
        let mut serial = crate::lock(&self.serial).snapshot();
        serial.queued_input = self.input.contents();
        serial.queued_breaks = self.input.breaks();
        let mut out = vec![
            DeviceRecord::Serial(serial),
            DeviceRecord::I8042(crate::lock(&self.i8042).snapshot()),
            DeviceRecord::Rtc(crate::lock(&self.rtc).snapshot()),
            DeviceRecord::Acpi(self.ged.snapshot()),
            DeviceRecord::Power(self.host_request.snapshot()),
            DeviceRecord::Vcpus(self.vcpu_masks.snapshot()),
        ];
        out.extend(
            self.slots
                .save_states()
                .into_iter()
                .map(DeviceRecord::Virtio),
        );
        out
    }

    /// Moves queued console input (and BREAKs) into the UART as it has room.
    pub fn feed_input(&mut self) {
        let mut serial = crate::lock(&self.serial);
        let serial = &mut *serial;
        let cell = std::cell::RefCell::new(serial);
        self.input.feed(
            |bytes| cell.borrow_mut().enqueue(bytes),
            || cell.borrow_mut().receive_break(),
        );
    }

    /// Writes an ELF core of the guest to `file` (`path` names it in messages): the vCPUs
    /// are paused and the virtio devices frozen meanwhile (no device writes guest memory),
    /// and they go on after unless the guest was paused before, as xl's dump-core does.
    pub fn dump_core_to(&mut self, file: &File, path: &Path) -> Result<u64, String> {
        let was_paused = self.control.is_paused();
        self.pause_all().map_err(|e| e.to_string())?;
        self.slots.freeze_all();
        let r = self.dump_core_paused(file);
        self.resume_after_transfer(was_paused);
        r.map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    fn dump_core_paused(&self, file: &File) -> Result<u64, String> {
        use crate::coredump::{CoreLayout, CpuRegs, RamRegion};
        use vm_memory::Bytes;
        let cpus = self
            .on_each_vcpu(|v, _| -> Result<CpuRegs, kvm_ioctls::Error> {
                Ok(CpuRegs {
                    regs: v.get_regs()?,
                    sregs: v.get_sregs()?,
                })
            })
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot read the vCPUs' registers: {e}"))?;
        let regions = crate::memory::memslots(&self.mem)
            .iter()
            .map(|s| RamRegion {
                gpa: s.guest_addr,
                len: s.size,
            })
            .collect();
        let layout = CoreLayout::new(regions, cpus);
        crate::sandbox::jail::allow_file_size(layout.file_size()).map_err(|e| {
            format!(
                "cannot allow writes of a {}-byte core file: {e}",
                layout.file_size()
            )
        })?;
        layout
            .write(file, |gpa, buf| {
                self.mem
                    .read_slice(buf, GuestAddress(gpa))
                    .map_err(std::io::Error::other)
            })
            .map_err(|e| e.to_string())
    }

    /// Lets the devices and the vCPUs run again after a transfer stopped them.
    pub(crate) fn resume_after_transfer(&self, was_paused: bool) {
        self.slots.thaw_all();
        if !was_paused {
            self.control.unpause();
        }
    }
}

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

/// Binds a Unix socket at `path` with mode 0600, replacing a stale one.
pub fn bind_socket(path: &Path) -> Result<UnixListener, VmmError> {
    let err = |source| VmmError::RunDir {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    // SAFETY: umask only changes this process's file creation mask; we restore it below.
    let old = unsafe { libc::umask(0o077) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Takes ownership of the descriptor `fd` that rxend let this process inherit.
pub(crate) fn take_fd(fd: i32) -> std::io::Result<File> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::other(format!(
            "file descriptor {fd} is not open"
        )));
    }
    // SAFETY: rxend passed `fd` to this process for this purpose alone; nothing
    // else in the process owns it, and it was just checked to be open.
    let f = unsafe { File::from_raw_fd(fd) };
    // SAFETY: F_SETFD on the descriptor just taken: not passed on to children.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(f)
}

/// Opens (empty) `RUN_DIR/transfer.json`, which save and migration progress
/// is written to in place.
pub(crate) fn open_progress(run_dir: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(run_dir.join(files::TRANSFER_PROGRESS))
}

/// Runs the VM of `spec` to its end: calls `on_ready` once the vCPUs are
/// started, serves the sockets, and returns the exit record it wrote.
pub fn run(spec: VmSpec, on_ready: impl FnOnce()) -> Result<ExitRecord, VmmError> {
    if !spec.sandbox {
        crate::sandbox::disable();
        tracing::warn!("running unconfined: the sandbox is off (rxend --no-sandbox)");
    }
    crate::sandbox::limit_resources()?;
    let run_dir = spec.run_dir.clone();
    if !run_dir.is_dir() {
        return Err(VmmError::RunDir {
            path: run_dir,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    // A record left by an earlier run of this domain must not describe this one.
    crate::exit::ExitRecordFile::remove_stale(&run_dir)?;
    let sigterm = event_loop::install_sigterm()?;
    let incoming = match spec.incoming_fd {
        Some(fd) => Some(take_incoming(fd)?),
        None => None,
    };
    let tell_source = |e: VmmError| {
        if let Some(sock) = &incoming {
            let _ = (&*sock).write_all(format!("error: {e}\n").as_bytes());
        }
        e
    };
    // Every path is opened here, then the VMM jails itself, and only then builds the domain
    // (and parses a save file or a migration stream) from the descriptors.
    let host = HostFiles::open(&spec)
        .map_err(VmmError::from)
        .map_err(tell_source)?;
    let control = bind_socket(&run_dir.join(files::CONTROL_SOCKET))?;
    let console = bind_socket(&run_dir.join(files::CONSOLE_SOCKET))?;
    // The record is written at exit through this descriptor.
    let exit_file = crate::exit::ExitRecordFile::create(&run_dir)?;
    let jail_started = Instant::now();
    crate::sandbox::jail::enter_jail(&crate::sandbox::jail::JailSpec {
        mount_at: &run_dir,
        uid: spec.sandbox_uid,
        max_file_size: host.largest_write(&spec),
    })
    .map_err(VmmError::from)
    .map_err(tell_source)?;
    if crate::sandbox::jail::entered() {
        tracing::info!(
            us = micros(jail_started.elapsed()),
            uid = ?spec.sandbox_uid,
            "jailed: own namespaces, empty root"
        );
    }
    let mut vm = Vm::build(spec, incoming.as_ref(), host).map_err(tell_source)?;
    let mut timings = TargetTimings::default();
    let mut go_at = None;
    if let Some(sock) = &incoming {
        timings.restore_us = vm.received_at.map_or(0, |t| micros(t.elapsed()));
        // The source may still back out until it says "go".
        let go = (&*sock)
            .write_all(b"received\n")
            .and_then(|()| read_line(sock));
        match go {
            Ok(l) if l == "go" => go_at = Some(Instant::now()),
            other => {
                return Err(VmmError::Incoming(format!(
                    "the source did not clear the domain to run ({other:?})"
                )))
            }
        }
    }
    // Each vCPU and device thread confines itself before its first instruction.
    vm.start()?;
    if let Some(sock) = &incoming {
        timings.resume_us = go_at.map_or(0, |t| micros(t.elapsed()));
        if let Err(e) = (&*sock).write_all(b"resumed\n") {
            tracing::warn!("cannot tell the source that the domain runs: {e}");
        }
        // After "resumed", which a source from before the breakdown reads last.
        let line = serde_json::to_string(&timings)
            .map(|j| format!("{TIMINGS_PREFIX}{j}\n"))
            .unwrap_or_default();
        if let Err(e) = (&*sock).write_all(line.as_bytes()) {
            tracing::warn!("cannot send the source the target's timings: {e}");
        }
        tracing::info!(
            restore_us = timings.restore_us,
            resume_us = timings.resume_us,
            "stop-and-copy on the target"
        );
        tracing::info!("incoming migration complete; the domain runs here");
        vm.slots.after_migration();
    }
    drop(incoming);
    // This thread, which serves rxend's requests and the console, and every thread it starts
    // (hotplug, migration) from here on: no path is opened after this.
    crate::sandbox::enter(crate::sandbox::ThreadKind::Control)?;
    on_ready();
    crate::sandbox::test_forbidden_call();
    let record = event_loop::run(&mut vm, control, console, sigterm, exit_file)?;
    Ok(record)
}

/// Balloon pages that leave a guest of `ram_mib` MiB with `target_mib` MiB.
fn balloon_pages(ram_mib: u64, target_mib: u64) -> u32 {
    let pages = ram_mib.saturating_sub(target_mib) * (1 << 20) / rxen_virtio::BALLOON_PAGE;
    u32::try_from(pages).unwrap_or(u32::MAX)
}
