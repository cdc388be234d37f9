//! The VMM's own fence for `ha = 1` domains in a pool: rxend sends a deadline
//! (`FenceDeadline`) at every renewal of its host's lease; when one passes without a newer
//! one (rxend died, was stopped, or lost etcd), the event loop destroys the domain, so that it
//! never runs beside the copy the pool's leader starts on another host once the lease expires.
//! One timer per process (a timerfd the event loop watches); unarmed until the first deadline.

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

static TIMER: OnceLock<Mutex<TimerFd>> = OnceLock::new();

fn timer() -> std::io::Result<&'static Mutex<TimerFd>> {
    if let Some(t) = TIMER.get() {
        return Ok(t);
    }
    // Non-blocking: a deadline renewed between the timer becoming readable and the event
    // loop reading it must not block the loop.
    // SAFETY: timerfd_create takes no pointers; the descriptor it returns is checked, and
    // owned by the TimerFd from here on.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a timerfd just created and owned by nothing else.
    let t = unsafe { TimerFd::from_raw_fd(fd) };
    Ok(TIMER.get_or_init(|| Mutex::new(t)))
}

/// The timer's descriptor, for the event loop's epoll (created on first use).
pub fn fd() -> std::io::Result<RawFd> {
    Ok(timer()?
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_raw_fd())
}

/// Arms the fence `ms` milliseconds from now (a later call replaces the deadline); `0`
/// disarms it.
pub fn arm(ms: u64) -> Result<(), String> {
    let t = timer().map_err(|e| format!("fence timer: {e}"))?;
    let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
    let r = if ms == 0 {
        t.clear()
    } else {
        t.reset(Duration::from_millis(ms), None)
    };
    r.map_err(|e| format!("fence timer: {e}"))
}

/// Whether the deadline passed (the event loop asks when the timer's descriptor is readable;
/// a deadline renewed meanwhile counts as not passed).
pub fn fired() -> bool {
    let Ok(t) = timer() else {
        return false;
    };
    let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
    // Re-armed or disarmed since it became readable: nothing to read, not passed.
    t.wait().is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_fires_unless_renewed_and_zero_disarms() {
        arm(60_000).expect("arm");
        assert!(!fired(), "an armed deadline has not passed");
        arm(0).expect("disarm");
        assert!(!timer()
            .expect("timer")
            .lock()
            .expect("lock")
            .is_armed()
            .expect("armed"));
        arm(20).expect("arm");
        std::thread::sleep(Duration::from_millis(60));
        assert!(fired());
    }
}
