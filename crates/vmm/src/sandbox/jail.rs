//! The VMM's jail, entered once its files are open and before it builds the domain: mount,
//! IPC, UTS, cgroup and network namespaces of its own (rxend started it in a PID namespace of
//! its own), an empty read-only root (nothing of the host's filesystem in view), limits on
//! processes and file size, and an unprivileged uid and gid of the domain's own. What is left of
//! root's power (the capability sets) goes when each thread installs its seccomp filter
//! ([`super::enter`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{set_rlimit, sys, SandboxError};

/// Whether this process has entered its jail (then it has no `/proc` and no host files).
static ENTERED: AtomicBool = AtomicBool::new(false);

/// Whether [`enter_jail`] has run in this process.
pub fn entered() -> bool {
    ENTERED.load(Ordering::SeqCst)
}

/// Threads (vCPUs, device I/O, migration workers) the VMM may run at once: its uid's process
/// limit, which no other process shares.
pub const MAX_THREADS: u64 = 1024;

/// How the VMM jails itself.
#[derive(Debug, Clone, Copy)]
pub struct JailSpec<'a> {
    /// An existing directory (the run directory) that an empty file system is mounted on, in
    /// the VMM's own mount namespace only, to become its root.
    pub mount_at: &'a Path,
    /// The uid (and gid of the same number) to run as; `None` keeps root's (a spec written by
    /// hand, without rxend).
    pub uid: Option<u32>,
    /// The largest file the VMM may write (its biggest disk, or a save of its memory).
    pub max_file_size: u64,
}

/// Enters the jail. Must run while the process has one thread: namespaces and the root
/// directory belong to each thread, and the threads started afterwards inherit them.
pub fn enter_jail(spec: &JailSpec<'_>) -> Result<(), SandboxError> {
    if !super::enabled() {
        return Ok(());
    }
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .map_err(sys("count this process's threads"))?;
    if threads != 1 {
        return Err(SandboxError::Sys {
            what: "enter the jail",
            source: std::io::Error::other(format!(
                "the process has {threads} threads; the jail is entered with one"
            )),
        });
    }
    use nix::sched::CloneFlags;
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP
            | CloneFlags::CLONE_NEWNET,
    )
    .map_err(|e| sys("unshare the namespaces")(e.into()))?;
    let _ = nix::unistd::sethostname("rxen-vmm");
    empty_root(spec.mount_at)?;
    set_rlimit(libc::RLIMIT_NPROC, MAX_THREADS).map_err(sys("setrlimit(RLIMIT_NPROC)"))?;
    set_file_size(spec.max_file_size).map_err(sys("setrlimit(RLIMIT_FSIZE)"))?;
    if let Some(uid) = spec.uid {
        // The bounding set needs CAP_SETPCAP to shrink, which the uid change takes away.
        super::drop_bounding_set()?;
        become_user(uid)?;
    }
    ENTERED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Makes an empty, read-only file system this process's root, with the host's detached.
fn empty_root(at: &Path) -> Result<(), SandboxError> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let none: Option<&str> = None;
    let err = |what| move |e: nix::Error| sys(what)(e.into());
    // Nothing mounted or unmounted here may reach the host's namespace.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(err("make the mounts private"))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("rxen-jail"),
        at,
        Some("tmpfs"),
        flags,
        Some("size=4k,nr_inodes=2,mode=0111"),
    )
    .map_err(err("mount the empty root"))?;
    nix::unistd::chdir(at).map_err(err("enter the empty root"))?;
    // The old root ends up stacked on the new one, and is then detached from it.
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH).map_err(err("detach the host's root"))?;
        }
        // A host that runs from its initramfs has a root that cannot be pivoted away from
        // (rootfs): the empty file system is moved over it instead, and becomes the root by
        // chroot. The host's files stay mounted beneath, out of reach: nothing open points
        // there, and leaving a chroot takes CAP_SYS_CHROOT, which goes with the rest.
        Err(nix::Error::EINVAL) => {
            mount(Some("."), "/", none, MsFlags::MS_MOVE, none)
                .map_err(err("move the empty root over the initramfs"))?;
            nix::unistd::chroot(".").map_err(err("chroot"))?;
        }
        Err(e) => return Err(err("pivot_root")(e)),
    }
    nix::unistd::chdir("/").map_err(err("chdir to the new root"))?;
    mount(
        none,
        "/",
        none,
        flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_BIND,
        none,
    )
    .map_err(err("make the root read-only"))?;
    Ok(())
}

/// Switches every id of the process to `uid` (and gid `uid`), with no supplementary groups.
fn become_user(uid: u32) -> Result<(), SandboxError> {
    // SAFETY: setgroups with a count of 0 reads no memory.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(sys("setgroups")(std::io::Error::last_os_error()));
    }
    // SAFETY: integer arguments only; glibc applies them to every thread (there is one).
    if unsafe { libc::setresgid(uid, uid, uid) } != 0 {
        return Err(sys("setresgid")(std::io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(sys("setresuid")(std::io::Error::last_os_error()));
    }
    // No core dumps and no ptrace by the domain's uid (the change of uid already cleared it).
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    Ok(())
}

/// Sets the soft file-size limit to `len` bytes, leaving the hard limit as it is.
fn set_file_size(len: u64) -> std::io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    lim.rlim_cur = len.min(lim.rlim_max);
    // SAFETY: setrlimit reads the valid struct passed.
    if unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Lets this VMM write files of `len` bytes: a disk hot-plugged later may be larger than any
/// file it had at start. Only the control thread, which takes rxend's requests, may raise the
/// (soft) limit; the guest-facing threads' filters do not allow the call.
pub fn allow_file_size(len: u64) -> std::io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur >= len {
        return Ok(());
    }
    set_file_size(len)
}
