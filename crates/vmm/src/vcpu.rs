//! vCPU threads: the KVM_RUN loop, exit dispatch, and pausing.
//!
//! Each vCPU runs on its own thread `vcpu<N>`. Pausing sets a shared flag,
//! then kicks every thread out of KVM_RUN: the kicker sets the vCPU's
//! `immediate_exit` byte and sends [`kick_signal`]; the thread sees EINTR,
//! clears the byte, notices the flag and parks on a condvar. A pause is done
//! once every vCPU is parked (or gone).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use rxen_proto::vmspec::ExitReason;

use crate::devices::PioBus;
use crate::exit::ExitSignal;
use crate::lock;

/// Errors of the vCPU machinery.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The thread could not be spawned.
    #[error("cannot start vCPU thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// Not every vCPU left the guest in time.
    #[error("timed out waiting for vCPUs to stop")]
    PauseTimeout,
    /// A job was posted to a vCPU that is not parked.
    #[error("vCPU {0} is not parked")]
    NotParked(usize),
    /// A standby vCPU thread ended in a job it was lent its vCPU for.
    #[error("the thread of vCPU {0} ended before it handed its vCPU back")]
    NotHandedBack(u32),
}

/// Work for a parked vCPU thread, run with its `VcpuFd` (state capture for save and migration).
pub type VcpuJob = Box<dyn FnOnce(&mut VcpuFd) + Send>;

/// Jobs waiting for parked vCPU threads, one slot per vCPU.
#[derive(Default)]
struct Jobs(Vec<Option<VcpuJob>>);

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jobs({} pending)", self.0.iter().flatten().count())
    }
}

/// Most KVM_RUN calls [`settle`] makes: a string I/O instruction may exit once per element.
const SETTLE_RUNS: usize = 64;

/// The real-time signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal only makes KVM_RUN return EINTR.
}

/// Installs the (empty) kick signal handler; call once before starting vCPUs.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(VcpuError::Signal)
}

/// Per-vCPU facts other threads need: the host thread and the `immediate_exit` byte.
#[derive(Debug)]
pub struct VcpuInfo {
    /// vCPU index.
    pub id: u32,
    /// Host thread ID (0 until the thread runs).
    pub tid: AtomicI32,
    /// Address of `kvm_run.immediate_exit` (null until the thread runs).
    immediate_exit: AtomicPtr<u8>,
    /// An NMI was asked for (`rxl trigger DOMAIN nmi`): the thread injects it (`KVM_NMI`)
    /// before it next enters the guest.
    nmi_pending: AtomicBool,
    /// When the thread first entered the guest, in microseconds since the Unix epoch (0
    /// until then): a migration's target reports when the guest ran again.
    pub first_run_unix_us: AtomicU64,
}

impl VcpuInfo {
    fn new(id: u32) -> Self {
        Self {
            id,
            tid: AtomicI32::new(0),
            immediate_exit: AtomicPtr::new(std::ptr::null_mut()),
            nmi_pending: AtomicBool::new(false),
            first_run_unix_us: AtomicU64::new(0),
        }
    }

    /// Asks for an NMI on this vCPU and makes its next (or current) KVM_RUN return at once;
    /// the caller then kicks the thread ([`VcpuHandle::kick`]) in case it is inside KVM_RUN.
    /// The flag is set before `immediate_exit`, and the thread clears `immediate_exit` before
    /// it checks the flag, so an NMI asked for while it leaves KVM_RUN is not lost. A parked
    /// (paused) vCPU injects it when it runs again.
    pub fn request_nmi(&self) {
        self.nmi_pending.store(true, Ordering::SeqCst);
        self.set_immediate_exit(1);
    }

    fn set_immediate_exit(&self, value: u8) {
        let p = self.immediate_exit.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: `p` points at the immediate_exit byte of the vCPU's kvm_run
            // mapping, which lives as long as the VcpuFd; the thread clears this
            // pointer before the VcpuFd is dropped. The byte is only ever accessed
            // atomically by the VMM, and the kernel reads it on KVM_RUN entry.
            unsafe { AtomicU8::from_ptr(p) }.store(value, Ordering::SeqCst);
        }
    }
}

/// Scheduling state shared by all vCPUs and the control loop.
#[derive(Debug)]
struct RunState {
    paused: bool,
    started: Vec<bool>,
    parked: Vec<bool>,
    gone: Vec<bool>,
    jobs: Jobs,
}

/// Pause/unpause coordination for all vCPUs.
#[derive(Debug)]
pub struct RunControl {
    flag: AtomicBool,
    state: Mutex<RunState>,
    cv: Condvar,
}

impl RunControl {
    /// Creates the control for `count` vCPUs, initially paused or not.
    pub fn new(count: usize, paused: bool) -> Self {
        Self {
            flag: AtomicBool::new(paused),
            state: Mutex::new(RunState {
                paused,
                started: vec![false; count],
                parked: vec![false; count],
                gone: vec![false; count],
                jobs: Jobs((0..count).map(|_| None).collect()),
            }),
            cv: Condvar::new(),
        }
    }

    /// True while a pause is requested.
    pub fn is_paused(&self) -> bool {
        lock(&self.state).paused
    }

    /// True when vCPU `id` is parked by a pause.
    pub fn is_parked(&self, id: usize) -> bool {
        lock(&self.state).parked.get(id).copied().unwrap_or(false)
    }

    /// True when vCPU `id`'s thread has ended.
    pub fn is_gone(&self, id: usize) -> bool {
        lock(&self.state).gone.get(id).copied().unwrap_or(true)
    }

    fn park(&self, id: usize, mut vcpu: Option<&mut VcpuFd>) {
        let mut g = lock(&self.state);
        if let Some(p) = g.parked.get_mut(id) {
            *p = true;
        }
        self.cv.notify_all();
        while g.paused {
            if let Some(job) = g.jobs.0.get_mut(id).and_then(Option::take) {
                drop(g);
                if let Some(v) = vcpu.as_deref_mut() {
                    job(v);
                }
                g = lock(&self.state);
                continue;
            }
            g = self
                .cv
                .wait(g)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if let Some(p) = g.parked.get_mut(id) {
            *p = false;
        }
    }

    /// Notes that vCPU `id`'s thread runs (its tid is known).
    fn mark_started(&self, id: usize) {
        let mut g = lock(&self.state);
        if let Some(s) = g.started.get_mut(id) {
            *s = true;
        }
        self.cv.notify_all();
    }

    /// Waits until every vCPU thread runs and, if `parked`, is parked by the pause it started
    /// in (a thread that ended counts as both); false if `timeout` passed first. Woken by the
    /// threads themselves: no polling nap inside a migration's downtime.
    pub fn wait_started(&self, parked: bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.state);
        loop {
            let done = (0..g.started.len()).all(|i| {
                let gone = g.gone.get(i).copied().unwrap_or(true);
                gone || (g.started[i] && (!parked || g.parked.get(i).copied().unwrap_or(false)))
            });
            if done {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    fn mark_gone(&self, id: usize) {
        let mut g = lock(&self.state);
        if let Some(p) = g.gone.get_mut(id) {
            *p = true;
        }
        self.cv.notify_all();
    }

    /// Requests a pause, kicks the vCPUs and waits until every one is out of the guest.
    pub fn pause(&self, vcpus: &[Arc<VcpuInfo>], kick: impl Fn(usize)) -> Result<(), VcpuError> {
        {
            let mut g = lock(&self.state);
            g.paused = true;
            self.flag.store(true, Ordering::SeqCst);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let stopped = |s: &RunState| {
            s.parked
                .iter()
                .zip(&s.gone)
                .all(|(parked, gone)| *parked || *gone)
        };
        let mut g = lock(&self.state);
        loop {
            if stopped(&g) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VcpuError::PauseTimeout);
            }
            // (Re-)kick whoever is still in the guest.
            for (i, info) in vcpus.iter().enumerate() {
                let running = !g.parked.get(i).copied().unwrap_or(true)
                    && !g.gone.get(i).copied().unwrap_or(true);
                if running {
                    info.set_immediate_exit(1);
                    kick(i);
                }
            }
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(10))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Runs `job` on parked vCPU `id`'s thread (the VM must be paused).
    pub fn post(&self, id: usize, job: VcpuJob) -> Result<(), VcpuError> {
        let mut g = lock(&self.state);
        if !g.paused || !g.parked.get(id).copied().unwrap_or(false) {
            return Err(VcpuError::NotParked(id));
        }
        if let Some(slot) = g.jobs.0.get_mut(id) {
            *slot = Some(job);
        }
        self.cv.notify_all();
        Ok(())
    }

    /// Runs `job` on vCPU `id`'s thread as soon as it is parked: at once if it is, else when
    /// the pause that follows stops it (the thread is awake then; waking it again for the job
    /// would cost a wake-up inside a migration's downtime). Jobs left when the vCPUs run
    /// again are dropped.
    pub fn post_at_park(&self, id: usize, job: VcpuJob) {
        let mut g = lock(&self.state);
        if let Some(slot) = g.jobs.0.get_mut(id) {
            *slot = Some(job);
        }
        self.cv.notify_all();
    }

    /// Lets the vCPUs run again.
    pub fn unpause(&self) {
        let mut g = lock(&self.state);
        for slot in &mut g.jobs.0 {
            *slot = None;
        }
        g.paused = false;
        self.flag.store(false, Ordering::SeqCst);
        self.cv.notify_all();
    }
}

/// What a vCPU thread shares with the rest of the VMM.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port I/O dispatch.
    pub pio: Arc<PioBus>,
    /// Where exits are requested.
    pub exit: Arc<ExitSignal>,
    /// Pause coordination.
    pub control: Arc<RunControl>,
    /// The virtio-mmio slots.
    pub mmio: Arc<crate::devices::virtio_slots::VirtioSlots>,
}

/// A started vCPU thread.
pub struct VcpuHandle {
    /// Shared facts about the vCPU.
    pub info: Arc<VcpuInfo>,
    /// The POSIX thread, for signals and its CPU clock.
    pub pthread: libc::pthread_t,
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    /// Sends the kick signal to the thread.
    pub fn kick(&self) {
        if self.thread.is_finished() {
            return;
        }
        // SAFETY: the JoinHandle is alive and not joined, so the pthread_t is valid.
        let rc = unsafe { libc::pthread_kill(self.pthread, kick_signal()) };
        if rc != 0 && rc != libc::ESRCH {
            tracing::warn!(vcpu = self.info.id, "cannot kick vCPU: errno {rc}");
        }
    }

    /// True once the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// What the loop does after one exit.
enum Next {
    Continue,
    Stop,
    /// KVM could not emulate something: report it with the vCPU's state.
    InternalError,
}

fn handle_exit(id: u32, exit: VcpuExit<'_>, ctx: &VcpuContext) -> Next {
    match exit {
        VcpuExit::IoIn(port, data) => {
            ctx.pio.read(port, data);
        }
        VcpuExit::IoOut(port, data) => {
            ctx.pio.write(port, data);
        }
        VcpuExit::MmioRead(addr, data) => ctx.mmio.mmio_read(addr, data),
        VcpuExit::MmioWrite(addr, data) => ctx.mmio.mmio_write(addr, data),
        VcpuExit::Hlt => {}
        VcpuExit::Shutdown => {
            ctx.exit
                .request(ExitReason::Reboot, format!("triple fault on vcpu{id}"));
            return Next::Stop;
        }
        VcpuExit::FailEntry(reason, cpu) => {
            ctx.exit.request(
                ExitReason::Crash,
                format!("vcpu{id}: KVM entry failed (reason {reason:#x}, host cpu {cpu})"),
            );
            return Next::Stop;
        }
        VcpuExit::InternalError => return Next::InternalError,
        VcpuExit::SystemEvent(kind, _) => {
            let (reason, what) = match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => (ExitReason::Poweroff, "shutdown"),
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => (ExitReason::Reboot, "reset"),
                _ => (ExitReason::Crash, "crash"),
            };
            ctx.exit
                .request(reason, format!("vcpu{id}: system event {what}"));
            return Next::Stop;
        }
        VcpuExit::Intr => {}
        other => {
            tracing::warn!(vcpu = id, "unhandled exit {other:?}");
        }
    }
    Next::Continue
}

/// Describes a KVM internal error: suberror, its data, and where the vCPU was.
fn internal_error_detail(vcpu: &mut VcpuFd) -> String {
    let run = vcpu.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is the active union field.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    let data: Vec<String> = internal
        .data
        .iter()
        .take(n)
        .map(|d| format!("{d:#x}"))
        .collect();
    let rip = vcpu
        .get_regs()
        .map(|r| format!("{:#x}", r.rip))
        .unwrap_or_else(|_| "?".into());
    format!(
        "suberror {}, data [{}], rip {rip}",
        internal.suberror,
        data.join(", ")
    )
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

fn run_loop(vcpu: VcpuFd, info: Arc<VcpuInfo>, ctx: VcpuContext) {
    let id = info.id;
    info.tid.store(gettid(), Ordering::SeqCst);
    ctx.control.mark_started(id as usize);
    // Confined before the guest runs a single instruction on this vCPU.
    if let Err(e) = crate::sandbox::enter(crate::sandbox::ThreadKind::Vcpu) {
        ctx.exit
            .request(ExitReason::Crash, format!("vcpu{id}: {e}"));
        ctx.control.mark_gone(id as usize);
        return;
    }
    guest_loop(vcpu, info, ctx);
}

/// What a vCPU thread started ahead of its domain ([`spawn_standby`]) is told.
enum Order {
    /// Do this with this vCPU, which the job hands back ([`Standby::lend`]).
    Lend(VcpuFd, Box<dyn FnOnce(VcpuFd) + Send>),
    /// Enter the guest with this vCPU.
    Run(VcpuFd, VcpuContext),
}

/// A vCPU lent to its standby thread for a job ([`Standby::lend`]).
pub struct Lent<R>(std::sync::mpsc::Receiver<(VcpuFd, R)>);

impl<R> Lent<R> {
    /// The vCPU back and what the job returned, once it is done; None if the thread ended
    /// in the job.
    pub fn take_back(self) -> Option<(VcpuFd, R)> {
        self.0.recv().ok()
    }
}

/// A vCPU thread started before its domain was assembled: a restore's (a save file's or a
/// migration's), started before the stream is read. It confines itself at once, so that
/// neither its start nor loading its seccomp filter (some 200 µs here) falls in a migration's
/// downtime, then applies its vCPU's saved state when lent it ([`Standby::lend`]) and waits
/// for the order to run ([`Standby::run`]).
pub struct Standby {
    orders: std::sync::mpsc::Sender<Order>,
    handle: VcpuHandle,
    /// Says once the thread has confined itself (closed if it could not).
    confined: std::sync::mpsc::Receiver<()>,
}

impl Standby {
    /// Waits up to `timeout` for the thread to have confined itself. A migration's target
    /// does before it lets the source pause the guest: on a host with few CPUs a thread just
    /// started may otherwise not have run yet when its vCPU's state arrives, and its start
    /// and confinement would fall in the downtime. False if it could not, or not by then.
    pub fn wait_confined(&self, timeout: Duration) -> bool {
        self.confined.recv_timeout(timeout).is_ok()
    }

    /// Has the thread run `job` on `vcpu` while this one goes on (a restore's vCPU state is
    /// applied there while the main thread restores the VM and its devices). A thread that
    /// ended already leaves the job to this one, done before this returns.
    pub fn lend<R: Send + 'static>(
        &self,
        vcpu: VcpuFd,
        job: impl FnOnce(&mut VcpuFd) -> R + Send + 'static,
    ) -> Lent<R> {
        let (tx, rx) = std::sync::mpsc::channel();
        let work: Box<dyn FnOnce(VcpuFd) + Send> = Box::new(move |mut vcpu| {
            let r = job(&mut vcpu);
            let _ = tx.send((vcpu, r));
        });
        if let Err(std::sync::mpsc::SendError(Order::Lend(vcpu, work))) =
            self.orders.send(Order::Lend(vcpu, work))
        {
            work(vcpu);
        }
        Lent(rx)
    }

    /// Lets the thread enter the guest with `vcpu` and `ctx`.
    pub fn run(self, vcpu: VcpuFd, ctx: VcpuContext) -> VcpuHandle {
        if let Err(std::sync::mpsc::SendError(Order::Run(_, ctx))) =
            self.orders.send(Order::Run(vcpu, ctx))
        {
            // The thread ended already (it could not confine itself, and said why in the log).
            let id = self.handle.info.id;
            ctx.exit.request(
                ExitReason::Crash,
                format!("vcpu{id}: its thread ended before the guest ran"),
            );
            ctx.control.mark_gone(id as usize);
        }
        self.handle
    }
}

/// Starts vCPU `id`'s thread ahead of its domain (see [`Standby`]).
pub fn spawn_standby(id: u32) -> Result<Standby, VcpuError> {
    install_kick_handler()?;
    let (orders, rx) = std::sync::mpsc::channel();
    let (said, confined) = std::sync::mpsc::sync_channel(1);
    let handle = spawn_thread(id, move |info| standby_loop(info, rx, said))?;
    Ok(Standby {
        orders,
        handle,
        confined,
    })
}

fn standby_loop(
    info: Arc<VcpuInfo>,
    orders: std::sync::mpsc::Receiver<Order>,
    confined: std::sync::mpsc::SyncSender<()>,
) {
    let id = info.id;
    info.tid.store(gettid(), Ordering::SeqCst);
    // Confined before it gets its vCPU.
    if let Err(e) = crate::sandbox::enter(crate::sandbox::ThreadKind::Vcpu) {
        tracing::error!("vcpu{id}: {e}");
        return;
    }
    let _ = confined.try_send(());
    drop(confined);
    loop {
        match orders.recv().ok() {
            Some(Order::Lend(vcpu, work)) => work(vcpu),
            Some(Order::Run(vcpu, ctx)) => {
                ctx.control.mark_started(id as usize);
                return guest_loop(vcpu, info, ctx);
            }
            // The domain was not assembled after all: the VMM exits.
            None => return,
        }
    }
}

/// The thread's life in the guest: KVM_RUN, exits, pauses, until the domain ends.
fn guest_loop(mut vcpu: VcpuFd, info: Arc<VcpuInfo>, ctx: VcpuContext) {
    let id = info.id;
    let run = vcpu.get_kvm_run();
    info.immediate_exit
        .store(std::ptr::addr_of_mut!(run.immediate_exit), Ordering::SeqCst);
    let idx = id as usize;
    let mut ran = false;
    loop {
        if ctx.control.flag.load(Ordering::SeqCst) {
            settle(id, &mut vcpu, &ctx);
            ctx.control.park(idx, Some(&mut vcpu));
        }
        if ctx.exit.is_requested() {
            break;
        }
        if info.nmi_pending.swap(false, Ordering::SeqCst) {
            // KVM_NMI is a vCPU ioctl: issued here, on the vCPU's own thread, out of KVM_RUN.
            match vcpu.nmi() {
                Ok(()) => tracing::info!(vcpu = id, "NMI injected"),
                Err(e) => tracing::warn!(vcpu = id, "cannot inject an NMI: {e}"),
            }
        }
        if !ran {
            ran = true;
            info.first_run_unix_us
                .store(crate::unix_micros(), Ordering::SeqCst);
        }
        match vcpu.run() {
            Ok(exit) => {
                match handle_exit(id, exit, &ctx) {
                    Next::Continue => {}
                    Next::Stop => break,
                    Next::InternalError => {
                        let detail = internal_error_detail(&mut vcpu);
                        ctx.exit.request(
                            ExitReason::Crash,
                            format!("vcpu{id}: KVM internal error ({detail})"),
                        );
                        break;
                    }
                }
                if ctx.exit.is_requested() {
                    break;
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                info.set_immediate_exit(0);
            }
            Err(e) => {
                ctx.exit
                    .request(ExitReason::Crash, format!("vcpu{id}: KVM_RUN failed: {e}"));
                break;
            }
        }
    }
    info.immediate_exit
        .store(std::ptr::null_mut(), Ordering::SeqCst);
    ctx.control.mark_gone(idx);
    tracing::debug!(vcpu = id, "vCPU thread ends");
}

/// Lets KVM finish the instruction a vCPU leaving the guest is in the middle of (port I/O
/// whose data this thread just handled), without running the guest: KVM_RUN with
/// `immediate_exit` set completes it and returns. PVM may write guest memory on the way, so a
/// pause settles every vCPU before it parks: the state a save or migration then reads (and
/// the dirty log after it) is whole. An I/O exit on the way (a string instruction's next
/// element) is handled like any other.
fn settle(id: u32, vcpu: &mut VcpuFd, ctx: &VcpuContext) {
    for _ in 0..SETTLE_RUNS {
        vcpu.set_kvm_immediate_exit(1);
        let r = vcpu.run();
        let more = match r {
            Ok(exit) => matches!(handle_exit(id, exit, ctx), Next::Continue),
            Err(_) => false,
        };
        vcpu.set_kvm_immediate_exit(0);
        if !more {
            return;
        }
    }
}

/// Starts vCPU `id` on a thread named `vcpu<id>`.
pub fn spawn(vcpu: VcpuFd, id: u32, ctx: VcpuContext) -> Result<VcpuHandle, VcpuError> {
    spawn_thread(id, move |info| run_loop(vcpu, info, ctx))
}

fn spawn_thread(
    id: u32,
    body: impl FnOnce(Arc<VcpuInfo>) + Send + 'static,
) -> Result<VcpuHandle, VcpuError> {
    let info = Arc::new(VcpuInfo::new(id));
    let thread_info = info.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        // With RXEN_VIRTIO_NOTIFY=inline a vCPU runs the disks' requests itself: the same
        // stack as a device thread's.
        .stack_size(crate::devices::virtio_slots::DEVICE_THREAD_STACK)
        .spawn(move || body(thread_info))
        .map_err(VcpuError::Spawn)?;
    let pthread = std::os::unix::thread::JoinHandleExt::as_pthread_t(&thread);
    Ok(VcpuHandle {
        info,
        pthread,
        thread,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Threads that behave like vCPU loops: park when the flag is up.
    fn fake_vcpus(control: &Arc<RunControl>, n: usize, spins: &Arc<AtomicUsize>) {
        for id in 0..n {
            let c = control.clone();
            let spins = spins.clone();
            std::thread::spawn(move || loop {
                if c.flag.load(Ordering::SeqCst) {
                    c.park(id, None);
                }
                spins.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            });
        }
    }

    /// Polls `cond` until it holds; fails after 10 s (a loaded host may not run a thread
    /// for a while, but not for that long).
    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn pause_waits_for_every_vcpu_and_unpause_releases_them() {
        let control = Arc::new(RunControl::new(2, false));
        let spins = Arc::new(AtomicUsize::new(0));
        fake_vcpus(&control, 2, &spins);
        let infos: Vec<_> = (0..2).map(|i| Arc::new(VcpuInfo::new(i))).collect();
        let kicks = AtomicUsize::new(0);
        control
            .pause(&infos, |_| {
                kicks.fetch_add(1, Ordering::SeqCst);
            })
            .expect("pause");
        // `pause` returns only once both are parked, and nothing unparks them but `unpause`.
        assert!(control.is_paused());
        assert!(control.is_parked(0) && control.is_parked(1));
        let frozen = spins.load(Ordering::SeqCst);
        // Give a thread that wrongly left its park the time to show it (this cannot fail
        // a correct pause, however slow the host).
        std::thread::sleep(Duration::from_millis(30));
        assert!(control.is_parked(0) && control.is_parked(1));
        assert_eq!(
            spins.load(Ordering::SeqCst),
            frozen,
            "a vCPU ran while paused"
        );
        control.unpause();
        wait_until("both vCPUs leave their park", || {
            !control.is_parked(0) && !control.is_parked(1)
        });
        wait_until("the vCPUs run again", || {
            spins.load(Ordering::SeqCst) > frozen
        });
    }

    #[test]
    fn gone_vcpus_count_as_stopped() {
        let control = RunControl::new(1, false);
        control.mark_gone(0);
        assert!(control.is_gone(0));
        control.pause(&[], |_| {}).expect("pause");
        assert!(control.is_paused());
    }

    #[test]
    fn start_paused_parks_at_once() {
        let control = Arc::new(RunControl::new(1, true));
        let spins = Arc::new(AtomicUsize::new(0));
        fake_vcpus(&control, 1, &spins);
        wait_until("the vCPU parks", || control.is_parked(0));
        // It parked before its first turn, and stays parked.
        assert_eq!(spins.load(Ordering::SeqCst), 0);
        std::thread::sleep(Duration::from_millis(30));
        assert!(control.is_parked(0));
        assert_eq!(spins.load(Ordering::SeqCst), 0, "a vCPU ran while paused");
        control.unpause();
        wait_until("the vCPU leaves its park", || !control.is_parked(0));
        wait_until("the vCPU runs", || spins.load(Ordering::SeqCst) > 0);
    }
}
