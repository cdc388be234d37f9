//! The x2APIC TSC-deadline timer that paces every vCPU at 10 ms ticks.

use core::hint::spin_loop;

use crate::cpu::{cpuid_ecx, rdmsr, rdtsc, wait_for_interrupt, wrmsr};
use crate::idt::{SPURIOUS_VECTOR, TIMER_VECTOR};

const IA32_APIC_BASE: u32 = 0x1B;
const IA32_TSC_DEADLINE: u32 = 0x6E0;
const X2APIC_SVR: u32 = 0x80F;
const X2APIC_LVT_TIMER: u32 = 0x832;
const X2APIC_LVT_THERMAL: u32 = 0x833;
const X2APIC_LVT_PERF: u32 = 0x834;
const X2APIC_LVT_LINT0: u32 = 0x835;
const X2APIC_LVT_LINT1: u32 = 0x836;
const X2APIC_LVT_ERROR: u32 = 0x837;

const APIC_ENABLE: u64 = 1 << 11;
const X2APIC_ENABLE: u64 = 1 << 10;
const SVR_SOFTWARE_ENABLE: u64 = 1 << 8;
const LVT_MASKED: u64 = 1 << 16;
const LVT_TSC_DEADLINE: u64 = 0b10 << 17;

/// Length of one tick in milliseconds.
pub const TICK_MS: u64 = 10;

/// Whether the CPU offers x2APIC and the TSC-deadline timer (CPUID leaf 1 ECX bits 21 and 24).
pub fn has_deadline_timer() -> bool {
    let ecx = cpuid_ecx(1);
    ecx & (1 << 21) != 0 && ecx & (1 << 24) != 0
}

/// How a vCPU waits for its next tick.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sleep in `hlt` until the x2APIC TSC-deadline interrupt.
    Deadline,
    /// Spin with `pause` until the TSC passes the deadline.
    Polling,
}

/// One vCPU's 10 ms tick source.
pub struct Timer {
    mode: Mode,
    period: u64,
    deadline: u64,
}

impl Timer {
    /// Sets up this vCPU's local APIC (if usable) and arms the first tick.
    pub fn start(tsc_khz: u64, mode: Mode) -> Timer {
        if mode == Mode::Deadline {
            wrmsr(
                IA32_APIC_BASE,
                rdmsr(IA32_APIC_BASE) | APIC_ENABLE | X2APIC_ENABLE,
            );
            wrmsr(X2APIC_SVR, SVR_SOFTWARE_ENABLE | u64::from(SPURIOUS_VECTOR));
            for lvt in [
                X2APIC_LVT_THERMAL,
                X2APIC_LVT_PERF,
                X2APIC_LVT_LINT0,
                X2APIC_LVT_LINT1,
                X2APIC_LVT_ERROR,
            ] {
                wrmsr(lvt, LVT_MASKED);
            }
            wrmsr(X2APIC_LVT_TIMER, LVT_TSC_DEADLINE | u64::from(TIMER_VECTOR));
        }
        let mut timer = Timer {
            mode,
            period: tsc_khz.saturating_mul(TICK_MS).max(1),
            deadline: 0,
        };
        timer.arm();
        timer
    }

    /// Sets the next deadline one period after the last one, or one period
    /// from now if that has already passed: a late tick keeps the 10 ms
    /// rhythm, but periods missed while the vCPU did not run (a pause) are
    /// never made up.
    fn arm(&mut self) {
        let now = rdtsc();
        let next = self.deadline.wrapping_add(self.period);
        self.deadline = if self.deadline != 0 && next > now {
            next
        } else {
            now.wrapping_add(self.period)
        };
        if self.mode == Mode::Deadline {
            wrmsr(IA32_TSC_DEADLINE, self.deadline);
        }
    }

    /// Whether the current tick's deadline has passed.
    pub fn due(&self) -> bool {
        rdtsc() >= self.deadline
    }

    /// If the deadline has passed, re-arms the timer and returns true.
    pub fn poll(&mut self) -> bool {
        if self.due() {
            self.arm();
            true
        } else {
            false
        }
    }

    /// Sleeps (or spins, when polling) until the next tick, then re-arms.
    pub fn wait(&mut self) {
        while !self.due() {
            match self.mode {
                Mode::Deadline => wait_for_interrupt(),
                Mode::Polling => spin_loop(),
            }
        }
        self.arm();
    }

    /// Sets the period to `ticks` 10 ms ticks (100 ms for a parked vCPU, 10 ms otherwise).
    pub fn set_ticks_per_wakeup(&mut self, ticks: u64, tsc_khz: u64) {
        self.period = tsc_khz
            .saturating_mul(TICK_MS)
            .saturating_mul(ticks.max(1))
            .max(1);
    }

    /// TSC ticks per 10 ms tick.
    pub fn period(&self) -> u64 {
        self.period
    }
}
