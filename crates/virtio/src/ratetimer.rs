//! The timer a rate-limited queue waits on: a non-blocking timerfd that the VMM's I/O thread
//! watches (level-triggered) and that the device arms for the wait its token bucket names, and
//! drains each time it processes the queue.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A rate limiter's wake-up timer.
#[derive(Debug)]
pub struct RateTimer {
    fd: OwnedFd,
    /// Which device, for warnings.
    who: &'static str,
}

impl RateTimer {
    /// A disarmed timer on the monotonic clock.
    pub fn new(who: &'static str) -> io::Result<Self> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, who })
    }

    /// The descriptor to watch.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Fires once after `wait`.
    pub fn arm(&self, wait: Duration) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32).max(1),
            },
        };
        // SAFETY: `spec` is a valid itimerspec for the call; the old value is not asked for.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            tracing::warn!(
                "{}: cannot arm the rate timer: {}",
                self.who,
                io::Error::last_os_error()
            );
        }
    }

    /// Consumes an expiry, if any.
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `buf`; the fd is non-blocking.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }

    /// Stops the timer and consumes any expiry: a reset device has nothing to wait for, and an
    /// expiry left readable would spin the I/O thread that watches it level-triggered.
    pub fn disarm(&self) {
        // SAFETY: an all-zero itimerspec is valid and disarms the timer; no old value asked.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                0,
                &std::mem::zeroed(),
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            tracing::warn!(
                "{}: cannot stop the rate timer: {}",
                self.who,
                io::Error::last_os_error()
            );
        }
        self.drain();
    }
}
