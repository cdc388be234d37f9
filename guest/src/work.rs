//! What a vCPU does on each tick: count the heartbeat, dirty memory, burn CPU.

use core::hint::spin_loop;
use core::sync::atomic::Ordering;

use crate::apic::Timer;
use crate::cpu::rdtsc;
use crate::freemem;
use crate::mailbox::{self, DIRTY_MIB_PER_S, TICKS};
use crate::println;

const PAGE: u64 = freemem::PAGE;
const MIB: u64 = 1 << 20;
/// Ticks between wake-ups of a parked (offline) vCPU: 100 ms.
const PARKED_TICKS: u64 = 10;

/// The pages `dirty R` rewrites (the free region), and where it is in them.
struct Dirtier {
    next: u64,
    /// Page-rate credit in 1/100 pages (R MiB/s = R * 256 pages/s).
    credit: u64,
    value: u64,
}

impl Dirtier {
    fn new() -> Dirtier {
        Dirtier {
            next: 0,
            credit: 0,
            value: 0,
        }
    }

    /// Rewrites one tick's worth of pages at `mib_per_s`.
    fn tick(&mut self, mib_per_s: u64) {
        let start = freemem::start();
        if mib_per_s == 0 || freemem::end() <= start {
            self.credit = 0;
            return;
        }
        // Pages per 10 ms tick = R MiB/s * 256 pages/MiB / 100 ticks/s.
        self.credit = self
            .credit
            .saturating_add(mib_per_s.saturating_mul(MIB / PAGE));
        let count = self.credit / 100;
        self.credit %= 100;
        for _ in 0..count {
            // `dirty 0` takes effect at once, even in the middle of a tick.
            if DIRTY_MIB_PER_S.load(Ordering::Relaxed) == 0 {
                break;
            }
            self.value = self.value.wrapping_add(1);
            // The end is reread for every page: the balloon may lower it meanwhile.
            let pages = freemem::end().saturating_sub(start) / PAGE;
            if self.next >= pages {
                self.next = 0;
            }
            if pages == 0 {
                break;
            }
            let addr = start + self.next * PAGE;
            // SAFETY: addr is a page inside the free region: RAM that is identity-mapped
            // and holds nothing of the guest's (past the image, its stacks and device
            // memory, below mem_bytes and the 3 GiB hole, below the balloon's pages).
            unsafe { core::ptr::write_volatile(addr as *mut u64, self.value) };
            self.next += 1;
        }
    }
}

/// One vCPU's view of the machine: its index, its timer and its chores.
pub struct Vcpu {
    /// This vCPU's index (0 is the bootstrap vCPU).
    pub index: usize,
    /// This vCPU's 10 ms tick source.
    pub timer: Timer,
    dirtier: Dirtier,
}

impl Vcpu {
    /// Creates the per-vCPU state (after the boot info has been published).
    pub fn new(index: usize, timer: Timer) -> Vcpu {
        Vcpu {
            index,
            timer,
            dirtier: Dirtier::new(),
        }
    }

    /// The work due once per 10 ms tick.
    pub fn on_tick(&mut self) {
        crate::idt::report_nmis(self.index);
        if self.index == 0 {
            TICKS.fetch_add(1, Ordering::Relaxed);
        }
        if self.index == mailbox::dirty_vcpu() {
            self.dirtier.tick(DIRTY_MIB_PER_S.load(Ordering::Relaxed));
        }
    }

    /// Does the tick's work if a tick is due (for long commands on vCPU 0).
    pub fn poll_tick(&mut self) {
        if self.timer.poll() {
            self.on_tick();
        }
    }

    /// Sleeps until the next tick and does its work.
    pub fn next_tick(&mut self) {
        self.timer.wait();
        self.on_tick();
    }

    /// Spins with interrupts off for `seconds`, still doing each tick's work.
    pub fn burn(&mut self, seconds: u64) {
        let ticks = seconds.saturating_mul(1000 / crate::apic::TICK_MS);
        let end = rdtsc().saturating_add(ticks.saturating_mul(self.timer.period()));
        while rdtsc() < end {
            if self.timer.poll() {
                self.on_tick();
            }
            spin_loop();
        }
        println!("burn done on vcpu {}", self.index);
    }

    /// The loop of every vCPU but 0: tick, and burn when asked; while the host wants this
    /// vCPU offline (port 0x516), it is parked: it wakes every 100 ms only to check again.
    pub fn run_secondary(&mut self) -> ! {
        let tsc_khz = mailbox::boot_info().tsc_khz;
        let mut parked = false;
        loop {
            self.next_tick();
            let wanted = mailbox::wanted(self.index);
            if wanted == parked {
                parked = !wanted;
                self.timer
                    .set_ticks_per_wakeup(if parked { PARKED_TICKS } else { 1 }, tsc_khz);
            }
            if parked {
                // A burn asked of an offline vCPU is dropped.
                let _ = mailbox::take_burn(self.index);
            } else if let Some(seconds) = mailbox::take_burn(self.index) {
                self.burn(seconds);
            }
        }
    }
}
