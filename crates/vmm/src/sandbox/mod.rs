//! The VMM's confinement, entered by every thread before it touches anything a guest controls:
//! no capabilities (effective, permitted, inheritable, ambient and bounding sets), `no_new_privs`,
//! and a seccomp-bpf allowlist for its kind of thread ([`filters`]) whose violation kills the
//! VMM by SIGSYS after saying which call it was ([`sigsys`]). Resource limits bound the whole
//! process. A spec with `sandbox: false` (rxend's `--no-sandbox`, for debugging only) skips all
//! of it.

pub mod filters;
pub mod jail;
pub mod preopen;
pub mod sigsys;

use std::sync::atomic::{AtomicBool, Ordering};

/// The kinds of thread a VMM runs, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: KVM_RUN and the state ioctls, port and MMIO emulation.
    Vcpu,
    /// A virtio device's I/O thread: the disk image or TAP, and the queue's event fds.
    DeviceIo,
    /// The main thread once the guest runs: control and console sockets, save, migration,
    /// hotplug, and the threads those start.
    Control,
}

/// Errors while entering the sandbox; the VMM does not run its guest unconfined.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A system call that sets up confinement failed.
    #[error("sandbox: {what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The seccomp filter could not be built or installed.
    #[error("sandbox: seccomp filter for {kind:?} threads: {why}")]
    Seccomp {
        /// The thread kind.
        kind: ThreadKind,
        /// What went wrong.
        why: String,
    },
}

fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |source| SandboxError::Sys { what, source }
}

/// Whether this VMM confines its threads; set once at start-up from the spec.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns confinement off for this process (`--no-sandbox`, debugging only).
pub fn disable() {
    ENABLED.store(false, Ordering::SeqCst);
}

/// Whether threads are confined.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// Open descriptors the VMM may hold at once.
const MAX_OPEN_FILES: u64 = 4096;

/// Bounds the whole process: no core dumps (they would hold guest memory) and a cap on open
/// descriptors. Called once at start-up.
pub fn limit_resources() -> Result<(), SandboxError> {
    if !enabled() {
        return Ok(());
    }
    set_rlimit(libc::RLIMIT_CORE, 0).map_err(sys("setrlimit(RLIMIT_CORE)"))?;
    set_rlimit(libc::RLIMIT_NOFILE, MAX_OPEN_FILES).map_err(sys("setrlimit(RLIMIT_NOFILE)"))?;
    // glibc's malloc sizes its arena count from the CPUs online the first time a thread
    // contends for one, which it learns by opening /sys/devices/system/cpu/online: a path,
    // at run time, under the control thread's filter (seen killing a VMM mid-migration, when
    // the rehash's worker threads first contended). A fixed limit means it never asks.
    // SAFETY: mallopt only sets a malloc parameter; no memory is passed.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) } != 1 {
        return Err(sys("mallopt(M_ARENA_MAX)")(std::io::Error::other(
            "glibc refused the arena limit",
        )));
    }
    Ok(())
}

/// malloc arenas the VMM's threads share (glibc's default would be 8 per CPU).
const MALLOC_ARENAS: libc::c_int = 4;

fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Every thread kind's filter, compiled once: a thread started inside a migration's downtime
/// (the target's vCPUs) only installs its filter.
struct Compiled {
    vcpu: seccompiler::BpfProgram,
    device_io: seccompiler::BpfProgram,
    control: seccompiler::BpfProgram,
    clone3: seccompiler::BpfProgram,
}

static COMPILED: std::sync::OnceLock<Result<Compiled, String>> = std::sync::OnceLock::new();

fn compiled() -> Result<&'static Compiled, &'static String> {
    COMPILED
        .get_or_init(|| {
            Ok(Compiled {
                vcpu: filters::program(ThreadKind::Vcpu)?,
                device_io: filters::program(ThreadKind::DeviceIo)?,
                control: filters::program(ThreadKind::Control)?,
                clone3: filters::clone3_program()?,
            })
        })
        .as_ref()
}

/// Compiles every filter now, so that no thread's start pays for it (the VMM calls this
/// before it builds its domain; [`enter`] would otherwise do it on first use).
pub fn prepare() -> Result<(), SandboxError> {
    if !enabled() {
        return Ok(());
    }
    compiled().map(|_| ()).map_err(|why| SandboxError::Seccomp {
        kind: ThreadKind::Control,
        why: why.clone(),
    })
}

/// Confines the calling thread as a `kind` thread: drops every capability, sets
/// `no_new_privs`, installs the SIGSYS reporter and the thread's seccomp filter. Threads it
/// starts afterwards inherit all of it (and may narrow it further).
pub fn enter(kind: ThreadKind) -> Result<(), SandboxError> {
    if !enabled() {
        return Ok(());
    }
    sigsys::install().map_err(sys("install the SIGSYS handler"))?;
    drop_capabilities()?;
    let compiled = compiled().map_err(|why| SandboxError::Seccomp {
        kind,
        why: why.clone(),
    })?;
    let program = match kind {
        ThreadKind::Vcpu => &compiled.vcpu,
        ThreadKind::DeviceIo => &compiled.device_io,
        ThreadKind::Control => &compiled.control,
    };
    // apply_filter also sets no_new_privs, which seccomp needs without CAP_SYS_ADMIN.
    for p in [&compiled.clone3, program] {
        seccompiler::apply_filter(p).map_err(|e| SandboxError::Seccomp {
            kind,
            why: e.to_string(),
        })?;
    }
    Ok(())
}

/// Version 3 of the capability ABI (64-bit sets in two 32-bit halves).
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Set once the main thread emptied its bounding set before it started any other thread
/// ([`empty_bounding_set_early`]): every thread inherits that empty set.
static BOUNDING_SET_EMPTY: AtomicBool = AtomicBool::new(false);

/// Empties the bounding set of the calling thread, which must be the process's only thread,
/// so that every thread started afterwards inherits it empty and [`enter`] need not go through
/// it capability by capability (two calls each, some 80 in all: most of a vCPU thread's
/// start, inside a migration's downtime). The thread keeps the capabilities it holds until
/// it enters the sandbox itself.
pub fn empty_bounding_set_early() -> Result<(), SandboxError> {
    if !enabled() {
        return Ok(());
    }
    drop_bounding_set()?;
    BOUNDING_SET_EMPTY.store(true, Ordering::SeqCst);
    Ok(())
}

/// Empties the calling thread's bounding, ambient, effective, permitted and inheritable sets.
fn drop_capabilities() -> Result<(), SandboxError> {
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes last.
    // A thread started by a confined thread, or after the main thread emptied its set early,
    // has an empty set already.
    if !BOUNDING_SET_EMPTY.load(Ordering::SeqCst) {
        drop_bounding_set()?;
    }
    clear_thread_capabilities()
}

/// Empties the bounding set (the capabilities a later exec could ever regain); needs
/// CAP_SETPCAP for any capability still in it.
fn drop_bounding_set() -> Result<(), SandboxError> {
    let mut cap = 0;
    loop {
        // SAFETY: prctl with integer arguments only.
        let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if held < 0 {
            // EINVAL: past the last capability this kernel knows.
            break;
        }
        // SAFETY: prctl with integer arguments only.
        if held == 1 && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            return Err(sys("drop the capability bounding set")(
                std::io::Error::last_os_error(),
            ));
        }
        cap += 1;
    }
    Ok(())
}

/// Empties the calling thread's ambient, effective, permitted and inheritable sets.
fn clear_thread_capabilities() -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(sys("clear the ambient capabilities")(
            std::io::Error::last_os_error(),
        ));
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and two data structs of the v3 layout, which these are;
    // pid 0 means the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            std::ptr::addr_of_mut!(header),
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(sys("clear the capability sets")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Debug builds only, for tests: with `RXEN_VMM_TEST_FORBIDDEN_CALL=open` the control thread
/// tries to open a host file once the guest runs (refused, logged, and the VMM goes on); with
/// any other value it makes a call no filter allows (`mkdir`), which kills the VMM.
pub fn test_forbidden_call() {
    if !cfg!(debug_assertions) {
        return;
    }
    match std::env::var("RXEN_VMM_TEST_FORBIDDEN_CALL").as_deref() {
        Ok("open") => {
            let r = std::fs::File::open("/etc/hostname");
            tracing::info!(
                refused = r.is_err(),
                "test: opened /etc/hostname after ready"
            );
        }
        Ok(_) => {
            // SAFETY: mkdir of a relative name with a valid NUL-terminated string; the filter
            // stops it before the kernel runs it.
            unsafe { libc::mkdir(c"rxen-forbidden".as_ptr(), 0o700) };
        }
        Err(_) => {}
    }
}
