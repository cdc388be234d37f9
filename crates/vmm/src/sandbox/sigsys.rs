//! What a thread does when its seccomp filter stops a call: it writes
//! `rxen-vmm: seccomp: forbidden system call N` to stderr (the VMM's log, where rxend finds it)
//! and the whole VMM dies by SIGSYS. Only async-signal-safe calls, all on every allowlist.

use rxen_proto::vmspec::SECCOMP_KILL_MESSAGE as MESSAGE;

/// Byte offset of `si_syscall` in a SIGSYS `siginfo_t` on x86-64 (after `si_signo`, `si_errno`,
/// `si_code`, padding, and the 8-byte `si_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS, whose si_syscall is an int at
    // this offset on x86-64; the read is in bounds of the 128-byte structure.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let mut line = [0u8; 80];
    let n = format_line(nr, &mut line);
    // SAFETY: write, signal, sigprocmask and raise are async-signal-safe; the buffers are ours
    // and live for the calls.
    unsafe {
        libc::write(2, line.as_ptr().cast(), n);
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGSYS);
    }
}

/// Writes [`MESSAGE`], the decimal `nr` and a newline into `out`; returns the length.
fn format_line(nr: i32, out: &mut [u8; 80]) -> usize {
    let mut len = 0;
    for &b in MESSAGE.as_bytes() {
        out[len] = b;
        len += 1;
    }
    let mut digits = [0u8; 12];
    let mut d = 0;
    let negative = nr < 0;
    let mut v = i64::from(nr).unsigned_abs();
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        out[len] = b'-';
        len += 1;
    }
    while d > 0 {
        d -= 1;
        out[len] = digits[d];
        len += 1;
    }
    out[len] = b'\n';
    len + 1
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
        let mut buf = [0u8; 80];
        for nr in [0, 7, 83, 435, -1, i32::MAX, i32::MIN] {
            let n = format_line(nr, &mut buf);
            let line = std::str::from_utf8(&buf[..n]).expect("ascii");
            assert_eq!(line, format!("{MESSAGE}{nr}\n"));
            assert_eq!(parse_line(line), Some(i64::from(nr)));
        }
        assert_eq!(parse_line("rxen-vmm: something else"), None);
    }
}
