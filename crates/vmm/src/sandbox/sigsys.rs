//! What a thread does when its seccomp filter stops a call: it writes
//! `rxen-vmm: seccomp: forbidden system call N (thread NAME[, path P])` to stderr (the VMM's
//! log, where rxend finds it) and the whole VMM dies by SIGSYS. Opening a path is the one
//! exception: refused with EACCES and logged, the VMM goes on. Only async-signal-safe calls, all on every allowlist.

use rxen_proto::vmspec::SECCOMP_KILL_MESSAGE as MESSAGE;

/// The start of the line for an open that was refused (the VMM goes on).
const DENIED: &str = "rxen-vmm: seccomp: refused (EACCES) system call ";

/// Byte offset of `si_syscall` in a SIGSYS `siginfo_t` on x86-64 (after `si_signo`, `si_errno`,
/// `si_code`, padding, and the 8-byte `si_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS, whose si_syscall is an int at
    // this offset on x86-64; the read is in bounds of the 128-byte structure.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let mut thread = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer we pass.
    unsafe { libc::prctl(libc::PR_GET_NAME, thread.as_mut_ptr(), 0, 0, 0) };
    // The path, for the calls that name one: the registers the kernel saved hold the pointer.
    // SAFETY: `ctx` is the ucontext_t the kernel passed with SA_SIGINFO.
    let regs = unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    let path_reg = match i64::from(nr) {
        libc::SYS_open | libc::SYS_mkdir | libc::SYS_unlink | libc::SYS_rename => {
            Some(libc::REG_RDI)
        }
        libc::SYS_openat | libc::SYS_mkdirat | libc::SYS_unlinkat | libc::SYS_newfstatat => {
            Some(libc::REG_RSI)
        }
        _ => None,
    };
    // Opening a path is refused (EACCES) and logged, not fatal: the C library opens a few files
    // lazily on its own (CPU counts under /sys, for one) and copes when it cannot. Nothing is
    // opened either way.
    let deny = matches!(
        i64::from(nr),
        libc::SYS_open | libc::SYS_openat | libc::SYS_openat2
    );
    let mut line = Line::default();
    if deny {
        line.push(DENIED.as_bytes());
    } else {
        line.push(MESSAGE.as_bytes());
    }
    line.push_number(nr);
    line.push(b" (thread ");
    line.push(until_nul(&thread));
    if let Some(reg) = path_reg {
        let ptr = regs[reg as usize] as *const u8;
        line.push(b", path ");
        if !ptr.is_null() {
            let mut path = [0u8; 96];
            for (i, b) in path.iter_mut().enumerate() {
                // SAFETY: the path argument of the stopped call is a NUL-terminated string of
                // this process; we stop at its NUL or after 96 bytes.
                let c = unsafe { ptr.add(i).read() };
                if c == 0 {
                    break;
                }
                *b = c;
            }
            line.push(until_nul(&path));
        }
    }
    line.push(b")\n");
    if deny {
        // SAFETY: write is async-signal-safe and the buffer is ours; the saved RAX of the
        // stopped call becomes its return value when the handler returns.
        unsafe {
            libc::write(2, line.buf.as_ptr().cast(), line.len);
            (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RAX as usize] =
                -i64::from(libc::EACCES);
        }
        return;
    }
    // SAFETY: write is async-signal-safe and the buffer is ours.
    unsafe { libc::write(2, line.buf.as_ptr().cast(), line.len) };
    die_by_sigsys();
}

/// A one-instruction seccomp program: kill the whole process, whatever the call.
static KILL_PROCESS: [libc::sock_filter; 1] = [libc::sock_filter {
    code: (libc::BPF_RET | libc::BPF_K) as u16,
    jt: 0,
    jf: 0,
    k: libc::SECCOMP_RET_KILL_PROCESS,
}];

/// Ends the process by SIGSYS. A VMM is the first process of its PID namespace, which ignores
/// a signal it raises at itself while that signal has its default action; so it installs a
/// filter that kills the process at its next call, and makes one (the kernel's kill cannot be
/// ignored). Raising SIGSYS stays as the fallback for a VMM run outside a namespace.
fn die_by_sigsys() {
    let prog = libc::sock_fprog {
        len: 1,
        filter: KILL_PROCESS.as_ptr().cast_mut(),
    };
    // SAFETY: prctl reads the program, which is static; getpid, signal, sigprocmask and raise
    // are async-signal-safe and the buffers are ours.
    unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            std::ptr::addr_of!(prog),
            0,
            0,
        );
        libc::getpid();
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGSYS);
    }
}

fn until_nul(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b.get(..end).unwrap_or_default()
}

/// A line built without allocating (the handler may run anywhere).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, nr: i32) {
        let mut digits = [0u8; 12];
        let mut d = 0;
        let mut v = i64::from(nr).unsigned_abs();
        loop {
            digits[d] = b'0' + (v % 10) as u8;
            d += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if nr < 0 {
            self.push(b"-");
        }
        while d > 0 {
            d -= 1;
            self.push(&digits[d..=d]);
        }
    }
}

/// Installs the handler (process-wide; idempotent).
pub fn install() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid start; we set a handler with the SA_SIGINFO
    // signature and an empty mask, then pass pointers to our own structs.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rxen_proto::vmspec::seccomp_killed_call as parse_line;

    #[test]
    fn the_line_names_the_call() {
        for nr in [0, 7, 83, 435, -1, i32::MAX, i32::MIN] {
            let mut line = Line::default();
            line.push(MESSAGE.as_bytes());
            line.push_number(nr);
            line.push(b" (thread vcpu0, path /etc/passwd)\n");
            let text = std::str::from_utf8(&line.buf[..line.len]).expect("ascii");
            assert_eq!(
                text,
                format!("{MESSAGE}{nr} (thread vcpu0, path /etc/passwd)\n")
            );
            assert_eq!(parse_line(text), Some(i64::from(nr)));
        }
        assert_eq!(parse_line("rxen-vmm: something else"), None);
        let mut long = Line::default();
        long.push(&[b'x'; 300]);
        assert_eq!(long.len, 256);
    }
}
