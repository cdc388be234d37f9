//! The VM as a whole: builds it from a [`VmSpec`], starts it, and answers the control socket.

use crate::memory::GuestMemory;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
use kvm_ioctls::VcpuFd;
use rxen_proto::vmctl::{BalloonStats, VcpuState, VcpuStats, VmStats};
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
use crate::devices::i8042::{COMMAND_PORT, DATA_PORT, I8042};
use crate::devices::pio_bus::PioBusError;
use crate::devices::power::{
    HostRequest, HostRequestReg, PowerPorts, HOST_REQUEST_PORT, POWER_PORT, PVPANIC_PORT,
};
use crate::devices::serial::{SerialDevice, COM1_GSI, COM1_LEN, COM1_PORT};
use crate::devices::virtio_slots::{self, HotplugPorts, SlotError, VirtioSlots, HOTPLUG_GEN_PORT};
use crate::devices::PioBus;
use crate::event_loop::{self, EventLoopError};
use crate::exit::{ExitError, ExitSignal};
use crate::kvm_vm::{KvmVm, KvmVmError};
use crate::loader::{self, KernelKind, LoadedKernel, LoaderError};
use crate::memory::{self, MemoryError};
use crate::vcpu::{self, RunControl, VcpuContext, VcpuError, VcpuHandle, VcpuInfo};
use crate::{cpuid, stats};

/// The UART type of COM1.
pub type Com1 = SerialDevice<ConsoleWriter>;

/// Errors while creating or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
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
    /// A virtio device could not be set up.
    #[error(transparent)]
    Device(#[from] SlotError),
}

/// A running VM and everything the control loop needs to drive it.
pub struct Vm {
    /// The launch spec.
    pub spec: VmSpec,
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
    vcpus: Vec<VcpuHandle>,
    infos: Vec<Arc<VcpuInfo>>,
    pending: Vec<VcpuFd>,
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
        let kvm = KvmVm::new()?;
        kvm.check_vcpus(spec.vcpus)?;
        let mem = memory::create_guest_memory(spec.memory_mib)?;
        kvm.register_memory(&mem, 0)?;

        // Devices first: a disk or TAP that cannot be opened fails the start cleanly.
        let slots = Arc::new(VirtioSlots::new(Arc::new(mem.clone())));
        for d in &spec.disks {
            let shared = d.shared_writable;
            let slot = slots.add_disk(&kvm.fd, d, shared)?;
            tracing::info!(slot, vdev = %d.vdev, path = %d.path.display(), ro = d.read_only, "disk attached");
        }
        for n in &spec.nics {
            let slot = slots.add_nic(&kvm.fd, n)?;
            tracing::info!(slot, mac = %n.mac, tap = %n.tap, "nic attached");
        }
        let mut cmdline = format!(
            "{}{}",
            spec.cmdline,
            virtio_slots::linux_cmdline_entries(slots.occupied())
        );
        let balloon = if spec.balloon {
            let handle = slots.add_balloon(&kvm.fd, 0)?;
            tracing::info!(slot = virtio_slots::BALLOON_SLOT, "balloon attached");
            cmdline.push_str(&VirtioSlots::linux_cmdline_entry(
                virtio_slots::BALLOON_SLOT,
            ));
            Some(handle)
        } else {
            None
        };

        let image = loader::read_kernel(&spec.kernel)?;
        let kernel = loader::load(
            &mem,
            &image,
            spec.initrd.as_deref(),
            cmdline.trim_start(),
            spec.vcpus,
        )?;
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

        let mut pending = Vec::new();
        for id in 0..spec.vcpus {
            let vcpu = kvm.create_vcpu(id)?;
            setup_vcpu(&kvm, &vcpu, id, spec.vcpus, &kernel)?;
            pending.push(vcpu);
        }
        if kernel.kind == KernelKind::TestGuest {
            let tsc_khz = pending
                .first()
                .map(|v| v.get_tsc_khz())
                .transpose()
                .map_err(vcpu_err(0, "read the TSC frequency"))?
                .unwrap_or(0);
            RxenBootInfo::new(
                spec.vcpus,
                memory::ram_bytes(&mem),
                u64::from(tsc_khz),
                kernel.kernel_end,
            )
            .write(&mem, GuestAddress(BOOT_INFO_ADDR))?;
            tracing::info!(tsc_khz, "boot info written");
        }

        let exit = Arc::new(ExitSignal::new()?);
        let host_request = Arc::new(HostRequestReg::default());
        let console = Arc::new(ConsoleHub::new(Some(
            &spec.run_dir.join(files::CONSOLE_LOG),
        ))?);
        let evt =
            || EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VmmError::EventFd);
        let irq = evt()?;
        kvm.register_irqfd(&irq, COM1_GSI)?;
        let input_drained = evt()?;
        let drained_for_uart = input_drained.try_clone().map_err(VmmError::EventFd)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            irq,
            drained_for_uart,
            ConsoleWriter(console.clone()),
        )));
        let mut pio = PioBus::new();
        pio.insert(COM1_PORT, COM1_LEN, serial.clone())?;
        let power = Arc::new(Mutex::new(PowerPorts::new(
            exit.clone(),
            host_request.clone(),
        )));
        for port in [PVPANIC_PORT, POWER_PORT, HOST_REQUEST_PORT] {
            pio.insert(port, 1, power.clone())?;
        }
        let i8042 = Arc::new(Mutex::new(I8042::new(exit.clone())));
        for port in [DATA_PORT, COMMAND_PORT] {
            pio.insert(port, 1, i8042.clone())?;
        }

        pio.insert(
            HOTPLUG_GEN_PORT,
            2,
            Arc::new(Mutex::new(HotplugPorts(slots.clone()))),
        )?;

        let control = Arc::new(RunControl::new(spec.vcpus as usize, spec.start_paused));
        Ok(Self {
            spec,
            kvm,
            mem,
            kind: kernel.kind,
            control,
            exit,
            host_request,
            serial,
            console,
            input_drained,
            pio: Arc::new(pio),
            slots,
            balloon,
            vcpus: Vec::new(),
            infos: Vec::new(),
            pending,
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
            std::thread::sleep(std::time::Duration::from_millis(1));
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
            // Linux needs ACPI (power button) or an i8042 keyboard (Ctrl-Alt-Del) for these.
            KernelKind::Linux => Err(ControlError::Failed(format!(
                "{} requests are not supported for Linux guests yet",
                if req == HostRequest::Shutdown {
                    "shutdown"
                } else {
                    "reboot"
                }
            ))),
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
                let sample = (tid > 0).then(|| stats::sample_thread(tid).ok()).flatten();
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
            rss_kib: stats::rss_kib().unwrap_or(0),
            disks,
            nics,
            balloon: self.balloon.as_ref().map(|b| BalloonStats {
                target_pages: b.target_pages(),
                actual_pages: b.actual_pages(),
                inflated_pages: b.inflated_pages(),
            }),
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
        let pages = (self.spec.memory_mib - target_mib) * (1 << 20) / rxen_virtio::BALLOON_PAGE;
        b.set_target_pages(u32::try_from(pages).unwrap_or(u32::MAX));
        Ok(())
    }

    fn attach_disk(&mut self, disk: &DiskDevice) -> Result<(), ControlError> {
        let slot = self
            .slots
            .add_disk(&self.kvm.fd, disk, disk.shared_writable)
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        tracing::info!(slot, vdev = %disk.vdev, "disk hot-plugged");
        self.slots.announce_attach();
        Ok(())
    }

    fn attach_nic(&mut self, nic: &NicDevice) -> Result<(), ControlError> {
        let slot = self
            .slots
            .add_nic(&self.kvm.fd, nic)
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
        if !clean {
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

/// Runs the VM of `spec` to its end: calls `on_ready` once the vCPUs are
/// started, serves the sockets, and returns the exit record it wrote.
pub fn run(spec: VmSpec, on_ready: impl FnOnce()) -> Result<ExitRecord, VmmError> {
    let run_dir = spec.run_dir.clone();
    if !run_dir.is_dir() {
        return Err(VmmError::RunDir {
            path: run_dir,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    // A record left by an earlier run of this domain must not describe this one.
    let stale = run_dir.join(files::EXIT_RECORD);
    match std::fs::remove_file(&stale) {
        Ok(()) => tracing::info!("removed a stale {}", files::EXIT_RECORD),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(VmmError::RunDir {
                path: stale,
                source,
            })
        }
    }
    let sigterm = event_loop::install_sigterm()?;
    let mut vm = Vm::create(spec)?;
    let control = bind_socket(&run_dir.join(files::CONTROL_SOCKET))?;
    let console = bind_socket(&run_dir.join(files::CONSOLE_SOCKET))?;
    vm.start()?;
    on_ready();
    let record = event_loop::run(&mut vm, control, console, sigterm)?;
    Ok(record)
}
