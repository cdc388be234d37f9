//! The running VM: its parts (private to the `vm` module), and the methods
//! the event loop, the control handlers and the migration code drive it by.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use rxen_proto::stream::VmInfo;
use rxen_proto::vmctl::{BalloonStats, VcpuState, VcpuStats, VmStats};
use rxen_proto::vmspec::{ExitReason, ExitRecord, VmSpec};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::error::VmmError;
use crate::console::{ConsoleHub, ConsoleWriter};
use crate::control::ControlError;
use crate::devices::acpi::{GedEvents, GED_EVENT_POWER_BUTTON};
use crate::devices::i8042::I8042;
use crate::devices::power::{HostRequest, HostRequestReg};
use crate::devices::rtc::Rtc;
use crate::devices::serial::SerialDevice;
use crate::devices::vcpu_ports::VcpuMasks;
use crate::devices::virtio_slots::VirtioSlots;
use crate::devices::PioBus;
use crate::event_loop::{NetTotals, Served};
use crate::exit::ExitSignal;
use crate::kvm_vm::KvmVm;
use crate::loader::KernelKind;
use crate::memory::GuestMemory;
use crate::migration::devices::DeviceRecord;
use crate::migration::vcpu_state as snapshot;
use crate::migration::TransferError;
use crate::stats;
use crate::vcpu::{self, RunControl, VcpuContext, VcpuError, VcpuHandle, VcpuInfo};

/// The UART type of COM1.
pub type Com1 = SerialDevice<ConsoleWriter>;

/// A running VM and everything the control loop needs to drive it.
pub struct Vm {
    /// The launch spec.
    pub(super) spec: VmSpec,
    /// Console input waiting for room in the UART FIFO (fed by the event loop).
    pub(super) input: crate::console::InputQueue,
    /// The KVM VM (kept open for the VM's lifetime).
    pub(super) kvm: KvmVm,
    /// Guest memory.
    pub(super) mem: GuestMemory,
    /// The boot protocol of the kernel.
    pub(super) kind: KernelKind,
    /// Pause coordination.
    pub(super) control: Arc<RunControl>,
    /// Pending exit.
    pub(super) exit: Arc<ExitSignal>,
    /// The host request register behind port 0x512.
    pub(super) host_request: Arc<HostRequestReg>,
    /// COM1.
    pub(super) serial: Arc<Mutex<Com1>>,
    /// Console output fan-out.
    pub(super) console: Arc<ConsoleHub>,
    /// Signalled when the guest drains the UART receive FIFO.
    pub(super) input_drained: EventFd,
    /// The port bus.
    pub(super) pio: Arc<PioBus>,
    /// The virtio-mmio slots and their devices.
    pub(super) slots: Arc<VirtioSlots>,
    /// The balloon in the last slot, when the spec asks for one.
    pub(super) balloon: Option<rxen_virtio::BalloonHandle>,
    /// The vCPU online masks (ports 0x516/0x517).
    pub(super) vcpu_masks: Arc<VcpuMasks>,
    /// The ACPI generic event device's pending events (Linux guests).
    pub(super) ged: Arc<GedEvents>,
    /// The i8042 keyboard controller.
    pub(super) i8042: Arc<Mutex<I8042>>,
    /// The CMOS RTC.
    pub(super) rtc: Arc<Mutex<Rtc>>,
    pub(super) vcpus: Vec<VcpuHandle>,
    pub(super) infos: Vec<Arc<VcpuInfo>>,
    pub(super) pending: Vec<VcpuFd>,
    /// Opened at start-up, so that nothing opens a path once the guest runs:
    /// /proc/self/pagemap (when it tells zero pages apart),
    pub(super) pagemap: Option<Arc<crate::migration::pagemap::Pagemap>>,
    /// /proc/self/status (RSS),
    pub(super) proc_status: Option<stats::ProcFile>,
    /// each vCPU thread's /proc/self/task/TID/stat (in `vcpus` order),
    pub(super) vcpu_stat: Vec<Option<stats::ProcFile>>,
    /// and `RUN_DIR/transfer.json`.
    pub(super) progress: Option<File>,
    /// A save with `then: hold` waits for rxend's `SaveFinish`: whether the
    /// guest was paused before it.
    pub(super) held_save: Option<bool>,
    /// An incoming migration's: when the whole stream was in (the target's
    /// restore starts there).
    pub(super) received_at: Option<Instant>,
    /// A restore's vCPU threads, started before the stream was read, waiting for their vCPU
    /// (in `pending`, in the same order).
    pub(super) standby: Vec<vcpu::Standby>,
}

impl Vm {
    fn spawn_vcpus(&mut self) -> Result<(), VmmError> {
        vcpu::install_kick_handler()?;
        let ctx = VcpuContext {
            pio: self.pio.clone(),
            exit: self.exit.clone(),
            control: self.control.clone(),
            mmio: self.slots.clone(),
        };
        let mut standby = std::mem::take(&mut self.standby).into_iter();
        for (id, fd) in (0u32..).zip(std::mem::take(&mut self.pending)) {
            // A restore's vCPUs have their threads already, confined and waiting.
            let handle = match standby.next() {
                Some(thread) => thread.run(fd, ctx.clone()),
                None => vcpu::spawn(fd, id, ctx.clone())?,
            };
            self.infos.push(handle.info.clone());
            self.vcpus.push(handle);
        }
        Ok(())
    }

    /// Starts one thread per vCPU (parked at once when the spec says `start_paused`).
    pub fn start(&mut self) -> Result<(), VmmError> {
        self.spawn_vcpus()?;
        // "ready" promises that every vCPU thread exists (its tid is known to
        // stats) and, for a paused start, that it is parked.
        let timeout = std::time::Duration::from_secs(10);
        if !self.control.wait_started(self.spec.start_paused, timeout) {
            return Err(VmmError::VcpusNotStarted(timeout));
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

    /// When the last vCPU first entered the guest, in microseconds since the Unix epoch,
    /// waiting up to `wait` for threads just started; None for a domain started paused, or
    /// if one has not run by then.
    pub(crate) fn first_run_unix_us(&self, wait: Duration) -> Option<u64> {
        if self.spec.start_paused {
            return None;
        }
        let deadline = Instant::now() + wait;
        loop {
            let stamps: Vec<u64> = self
                .infos
                .iter()
                .map(|i| {
                    i.first_run_unix_us
                        .load(std::sync::atomic::Ordering::SeqCst)
                })
                .collect();
            if stamps.iter().all(|&t| t != 0) {
                return stamps.into_iter().max();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Passes a shutdown or reboot request to the guest.
    pub(super) fn host_request(&self, req: HostRequest) -> Result<(), ControlError> {
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
        self.post_jobs(job, false)?.collect()
    }

    /// Posts `job` to every vCPU's thread at once, each to run as it parks (see
    /// [`RunControl::post_at_park`]) or at once if it is parked; `at_park` false: only to
    /// parked ones. Their results come in through what this returns, while this thread does
    /// something else.
    fn post_jobs<T: Send + 'static>(
        &self,
        job: impl Fn(&mut VcpuFd, u32) -> T + Send + Sync + 'static,
        at_park: bool,
    ) -> Result<VcpuResults<T>, TransferError> {
        let job = Arc::new(job);
        let mut pending = Vec::with_capacity(self.vcpus.len());
        for (i, h) in self.vcpus.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            let id = h.info.id;
            let job = job.clone();
            let job: vcpu::VcpuJob = Box::new(move |v: &mut VcpuFd| {
                let _ = tx.send(job(v, id));
            });
            if at_park {
                self.control.post_at_park(i, job);
            } else {
                self.control
                    .post(i, job)
                    .map_err(|e| TransferError::Peer(e.to_string()))?;
            }
            pending.push((id, rx));
        }
        Ok(VcpuResults(pending))
    }

    /// Has every vCPU's thread capture its state as it parks for the pause that follows (or
    /// at once, if paused): each is awake then, and settled.
    pub(crate) fn capture_vcpus_at_park(
        &self,
    ) -> Result<VcpuResults<Result<Vec<u8>, snapshot::SnapshotError>>, TransferError> {
        let msrs = Arc::new(snapshot::msr_list(&self.kvm.kvm));
        self.post_jobs(move |v, id| snapshot::capture_vcpu(v, id, &msrs), true)
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

    /// Whether the guest is paused.
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// The VM's shape and kernel kind, as a stream carries them.
    pub fn shape(&self) -> VmInfo {
        VmInfo {
            memory_mib: self.spec.memory_mib,
            vcpus: self.spec.vcpus,
            kernel: match self.kind {
                KernelKind::TestGuest => "testguest".into(),
                KernelKind::Linux => "linux".into(),
            },
        }
    }

    /// The KVM VM.
    pub(crate) fn kvm(&self) -> &KvmVm {
        &self.kvm
    }

    /// Guest memory.
    pub(crate) fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// The virtio slots.
    pub(crate) fn slots(&self) -> &VirtioSlots {
        &self.slots
    }

    /// The pending exit.
    pub(crate) fn exit(&self) -> &ExitSignal {
        &self.exit
    }

    /// `/proc/self/pagemap`, opened at start-up (when it tells zero pages apart).
    pub(crate) fn pagemap(&self) -> Option<Arc<crate::migration::pagemap::Pagemap>> {
        self.pagemap.clone()
    }

    /// `RUN_DIR/transfer.json`, for a transfer's progress.
    pub(crate) fn progress_file(&self) -> Option<File> {
        self.progress.as_ref().and_then(|f| f.try_clone().ok())
    }

    /// A save with `then: hold` is written: the guest stays paused until
    /// rxend's `SaveFinish` (`was_paused`: whether it was before the save).
    pub(crate) fn hold_save(&mut self, was_paused: bool) {
        self.held_save = Some(was_paused);
    }
}

impl Served for Vm {
    fn exit_event(&self) -> &EventFd {
        self.exit.eventfd()
    }

    fn input_drained_event(&self) -> &EventFd {
        &self.input_drained
    }

    fn exit_record(&self) -> Option<ExitRecord> {
        self.exit.record()
    }

    fn request_exit(&self, reason: ExitReason, detail: &str) {
        self.exit.request(reason, detail);
    }

    fn attach_console(&self, id: u64, out: UnixStream) {
        self.console.attach(id, out);
    }

    fn detach_console(&self, id: u64) {
        self.console.detach(id);
    }

    fn queue_input(&mut self, bytes: &[u8]) -> usize {
        self.input.push(bytes)
    }

    fn feed_input(&mut self) {
        Vm::feed_input(self);
    }

    fn end_io(&self) -> NetTotals {
        // Before the exit record: once rxend reads it, another VMM may open the disks.
        self.slots.flush_disks();
        let (_, nics) = self.slots.stats();
        NetTotals {
            tx_bytes: nics.iter().map(|n| n.tx_bytes).sum(),
            rx_bytes: nics.iter().map(|n| n.rx_bytes).sum(),
        }
    }
}

/// The results of a job posted to every vCPU ([`Vm::capture_vcpus_at_park`]), in vCPU order.
pub(crate) struct VcpuResults<T>(Vec<(u32, std::sync::mpsc::Receiver<T>)>);

impl<T> VcpuResults<T> {
    /// Waits for every result.
    pub(crate) fn collect(self) -> Result<Vec<T>, TransferError> {
        self.0
            .into_iter()
            .map(|(id, rx)| {
                rx.recv_timeout(Duration::from_secs(5))
                    .map_err(|_| TransferError::Peer(format!("vCPU {id} did not answer")))
            })
            .collect()
    }
}
