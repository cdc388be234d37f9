//! The seccomp allowlists, one per [`ThreadKind`], built with rust-vmm's `seccompiler`. Each
//! list names the calls a thread of that kind makes once the guest can reach it, and for
//! `ioctl` the request numbers too; anything else traps ([`super::sigsys`]) and kills the VMM.
//!
//! The lists were taken from `strace -f -Y` of VMMs running the end-to-end tests (save,
//! restore, live migration, hotplug, balloon, reboot, pause), and the tests keep them current:
//! a call that is missing kills the VMM in the test that makes it. A control thread's list holds
//! every other kind's, because the vCPU and device threads it starts after it confined itself
//! get both filters, and a call passes only when both allow it.

use std::collections::BTreeMap;
use std::mem::size_of;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_dirty_log, kvm_fpu, kvm_ioeventfd,
    kvm_irq_level, kvm_irqchip, kvm_irqfd, kvm_lapic_state, kvm_mp_state, kvm_msr_list, kvm_msrs,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::ThreadKind;

const KVMIO: u64 = 0xAE;

const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// The ioctls a vCPU thread makes on its vCPU: run it, and read or write its state (pause,
/// save, migration, reset).
const VCPU_IOCTLS: &[u64] = &[
    io(0x80),                                // KVM_RUN
    ior(0x81, size_of::<kvm_regs>()),        // KVM_GET_REGS
    iow(0x82, size_of::<kvm_regs>()),        // KVM_SET_REGS
    ior(0x83, size_of::<kvm_sregs>()),       // KVM_GET_SREGS
    iow(0x84, size_of::<kvm_sregs>()),       // KVM_SET_SREGS
    iowr(0x88, size_of::<kvm_msrs>()),       // KVM_GET_MSRS
    iow(0x89, size_of::<kvm_msrs>()),        // KVM_SET_MSRS
    ior(0x8c, size_of::<kvm_fpu>()),         // KVM_GET_FPU
    iow(0x8d, size_of::<kvm_fpu>()),         // KVM_SET_FPU
    ior(0x8e, size_of::<kvm_lapic_state>()), // KVM_GET_LAPIC
    iow(0x8f, size_of::<kvm_lapic_state>()), // KVM_SET_LAPIC
    iow(0x90, size_of::<kvm_cpuid2>()),      // KVM_SET_CPUID2
    ior(0x98, size_of::<kvm_mp_state>()),    // KVM_GET_MP_STATE
    iow(0x99, size_of::<kvm_mp_state>()),    // KVM_SET_MP_STATE
    io(0x9a),                                // KVM_NMI
    ior(0x9f, size_of::<kvm_vcpu_events>()), // KVM_GET_VCPU_EVENTS
    iow(0xa0, size_of::<kvm_vcpu_events>()), // KVM_SET_VCPU_EVENTS
    ior(0xa1, size_of::<kvm_debugregs>()),   // KVM_GET_DEBUGREGS
    iow(0xa2, size_of::<kvm_debugregs>()),   // KVM_SET_DEBUGREGS
    ior(0xa4, size_of::<kvm_xsave>()),       // KVM_GET_XSAVE
    iow(0xa5, size_of::<kvm_xsave>()),       // KVM_SET_XSAVE
    ior(0xa6, size_of::<kvm_xcrs>()),        // KVM_GET_XCRS
    iow(0xa7, size_of::<kvm_xcrs>()),        // KVM_SET_XCRS
    io(0xad),                                // KVM_KVMCLOCK_CTRL
    ior(0xcf, size_of::<kvm_xsave>()),       // KVM_GET_XSAVE2
];

/// The ioctls of the control thread beyond the vCPU ones: the VM's memory, dirty log,
/// interrupt controllers, clock, event fds, vCPUs made after start, and TAPs and sockets.
const CONTROL_IOCTLS: &[u64] = &[
    iowr(0x02, size_of::<kvm_msr_list>()), // KVM_GET_MSR_INDEX_LIST
    io(0x03),                              // KVM_CHECK_EXTENSION
    io(0x04),                              // KVM_GET_VCPU_MMAP_SIZE
    iowr(0x05, size_of::<kvm_cpuid2>()),   // KVM_GET_SUPPORTED_CPUID
    io(0x41),                              // KVM_CREATE_VCPU
    iow(0x42, size_of::<kvm_dirty_log>()), // KVM_GET_DIRTY_LOG
    iow(0x46, size_of::<kvm_userspace_memory_region>()), // KVM_SET_USER_MEMORY_REGION
    iow(0x61, size_of::<kvm_irq_level>()), // KVM_IRQ_LINE
    iowr(0x62, size_of::<kvm_irqchip>()),  // KVM_GET_IRQCHIP
    ior(0x63, size_of::<kvm_irqchip>()),   // KVM_SET_IRQCHIP
    iowr(0x67, size_of::<kvm_irq_level>()), // KVM_IRQ_LINE_STATUS
    iow(0x76, size_of::<kvm_irqfd>()),     // KVM_IRQFD
    iow(0x79, size_of::<kvm_ioeventfd>()), // KVM_IOEVENTFD
    iow(0x7b, size_of::<kvm_clock_data>()), // KVM_SET_CLOCK
    ior(0x7c, size_of::<kvm_clock_data>()), // KVM_GET_CLOCK
    ior(0x9f, size_of::<kvm_pit_state2>()), // KVM_GET_PIT2
    iow(0xa0, size_of::<kvm_pit_state2>()), // KVM_SET_PIT2
    0x400454ca,                            // TUNSETIFF
    0x400454d0,                            // TUNSETOFFLOAD
    0x400454d8,                            // TUNSETVNETHDRSZ
    0x800454cf,                            // TUNGETIFF
    libc::FIONBIO,                         // FIONBIO
    libc::FIOCLEX,                         // FIOCLEX
];

/// Calls every thread makes: memory, locks, time, signals (the SIGSYS reporter's among them),
/// thread start and end, and reading and writing descriptors it already holds.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    // A thread confining itself inside a confined parent: it can only give things up.
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_seccomp,
];

/// A device thread's calls beyond [`COMMON`]: its queue's event fds and epoll, the disk image
/// (sync, discard) or TAP, and the rate limiter's timer.
const DEVICE_IO: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    // A qcow2 image grows its file to the end of a new cluster whose untouched part it zeroes
    // (imago: punch a hole, then set the length).
    libc::SYS_ftruncate,
    libc::SYS_lseek,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
];

/// The control thread's calls beyond the others': its sockets (accepting rxend's requests and
/// the descriptors they carry: save files, core files, hot-plugged disks and TAPs, migration
/// connections), threads it starts (hotplug, migration), event fds. No call that names a path:
/// every file it needs at run time is a descriptor it holds.
const CONTROL: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_clone3,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_timerfd_create,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_flock,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_ftruncate,
    libc::SYS_sched_setaffinity,
    libc::SYS_sysinfo,
    // A hot-plugged writable qcow2 image: imago reads the file system's block size (the
    // discard granularity) from the descriptor.
    libc::SYS_fstatfs,
];

/// The `prctl` options threads use: naming themselves, and giving things up.
const PRCTL_OPTIONS: &[libc::c_int] = &[
    libc::PR_SET_NAME,
    libc::PR_GET_NAME,
    libc::PR_CAPBSET_READ,
    libc::PR_CAPBSET_DROP,
    libc::PR_CAP_AMBIENT,
    libc::PR_SET_NO_NEW_PRIVS,
    libc::PR_SET_SECCOMP,
];

/// The `clone` flags of a new thread (glibc's `pthread_create`): nothing else, so no process,
/// no namespace.
const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

fn arg_rules(arg: u8, len: SeccompCmpArgLen, values: &[u64]) -> Result<Vec<SeccompRule>, String> {
    values
        .iter()
        .map(|&v| {
            let cond = SeccompCondition::new(arg, len.clone(), SeccompCmpOp::Eq, v)
                .map_err(|e| e.to_string())?;
            SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
        })
        .collect()
}

fn ioctl_rules(requests: &[&[u64]]) -> Result<Vec<SeccompRule>, String> {
    requests
        .iter()
        .flat_map(|list| list.iter())
        .map(|&req| {
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)
                .map_err(|e| e.to_string())?;
            SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
        })
        .collect()
}

/// The calls a thread of `kind` may make: unconditional ones, and `ioctl`'s request numbers.
pub fn allowed(kind: ThreadKind) -> (Vec<i64>, Vec<u64>) {
    let mut calls: Vec<i64> = COMMON.to_vec();
    let mut ioctls: Vec<u64> = VCPU_IOCTLS.to_vec();
    match kind {
        ThreadKind::Vcpu => {}
        ThreadKind::DeviceIo => calls.extend_from_slice(DEVICE_IO),
        ThreadKind::Control => {
            calls.extend_from_slice(DEVICE_IO);
            calls.extend_from_slice(CONTROL);
            ioctls.extend_from_slice(CONTROL_IOCTLS);
        }
    }
    if kind == ThreadKind::DeviceIo {
        // Device threads touch no vCPU: only the TAP's and sockets' requests.
        ioctls = CONTROL_IOCTLS
            .iter()
            .copied()
            .filter(|&r| r >> 8 & 0xff != KVMIO)
            .collect();
    }
    calls.sort_unstable();
    calls.dedup();
    ioctls.sort_unstable();
    ioctls.dedup();
    (calls, ioctls)
}

/// The compiled filter of `kind`.
pub fn program(kind: ThreadKind) -> Result<BpfProgram, String> {
    let (calls, ioctls) = allowed(kind);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        calls.into_iter().map(|c| (c, Vec::new())).collect();
    rules.insert(libc::SYS_ioctl, ioctl_rules(&[&ioctls])?);
    let prctl: Vec<u64> = PRCTL_OPTIONS.iter().map(|&o| o as u64).collect();
    rules.insert(
        libc::SYS_prctl,
        arg_rules(0, SeccompCmpArgLen::Dword, &prctl)?,
    );
    if kind == ThreadKind::Control {
        rules.insert(
            libc::SYS_clone,
            arg_rules(0, SeccompCmpArgLen::Qword, &[THREAD_CLONE_FLAGS])?,
        );
        // Its own file-size limit alone, raised for a larger hot-plugged disk (see
        // `jail::allow_file_size`); guest-facing threads cannot touch it.
        let own_fsize = [
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 0),
            SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::from(libc::RLIMIT_FSIZE),
            ),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
        rules.insert(
            libc::SYS_prlimit64,
            vec![SeccompRule::new(own_fsize).map_err(|e| e.to_string())?],
        );
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// A second filter every thread gets: `clone3`, whose flags sit in memory where a filter cannot
/// read them, fails with ENOSYS, so that the C library falls back to `clone`, whose flags the
/// main filter checks. (The main filter lets `clone3` through to this one.)
pub fn clone3_program() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(libc::SYS_clone3, Vec::new());
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_and_control_holds_the_others() {
        for kind in [ThreadKind::Vcpu, ThreadKind::DeviceIo, ThreadKind::Control] {
            let prog = program(kind).expect("filter");
            assert!(!prog.is_empty());
        }
        let (control, control_ioctls) = allowed(ThreadKind::Control);
        for kind in [ThreadKind::Vcpu, ThreadKind::DeviceIo] {
            let (calls, ioctls) = allowed(kind);
            assert!(calls.iter().all(|c| control.contains(c)), "{kind:?} calls");
            assert!(
                ioctls.iter().all(|r| control_ioctls.contains(r)),
                "{kind:?} ioctls"
            );
        }
    }

    #[test]
    fn guest_facing_threads_cannot_open_exec_or_connect() {
        for kind in [ThreadKind::Vcpu, ThreadKind::DeviceIo] {
            let (calls, _) = allowed(kind);
            for forbidden in [
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_ptrace,
                libc::SYS_clone,
                libc::SYS_mount,
                libc::SYS_setuid,
            ] {
                assert!(!calls.contains(&forbidden), "{kind:?} allows {forbidden}");
            }
        }
    }

    #[test]
    fn the_control_thread_names_no_path() {
        let (calls, _) = allowed(ThreadKind::Control);
        for forbidden in [
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_openat2,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_linkat,
            libc::SYS_mkdir,
            libc::SYS_chmod,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_execve,
            libc::SYS_clone,
        ] {
            assert!(!calls.contains(&forbidden), "control allows {forbidden}");
        }
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Spot checks against the values in linux/kvm.h.
        assert_eq!(VCPU_IOCTLS[0], 0xae80); // KVM_RUN
        assert!(VCPU_IOCTLS.contains(&0x8090_ae81)); // KVM_GET_REGS
        assert!(VCPU_IOCTLS.contains(&0x4138_ae84)); // KVM_SET_SREGS
        assert!(CONTROL_IOCTLS.contains(&0x4020_ae46)); // KVM_SET_USER_MEMORY_REGION
        assert!(CONTROL_IOCTLS.contains(&0x4040_ae79)); // KVM_IOEVENTFD
    }
}
