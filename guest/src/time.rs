//! Milliseconds from the TSC, for timeouts and measurements.

use crate::cpu::rdtsc;
use crate::mailbox;

/// A point in time, as a TSC value.
#[derive(Clone, Copy)]
pub struct Instant(u64);

impl Instant {
    /// Now.
    pub fn now() -> Instant {
        Instant(rdtsc())
    }

    /// Milliseconds elapsed since this instant.
    pub fn elapsed_ms(&self) -> u64 {
        rdtsc().saturating_sub(self.0) / mailbox::boot_info().tsc_khz.max(1)
    }
}
