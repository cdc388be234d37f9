//! State shared between vCPUs: check-in, heartbeat, and work handed to other vCPUs.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::bootinfo::BootInfo;
use crate::entry::MAX_VCPUS;

/// Set by vCPU 0 once the IDT and console are ready; the other vCPUs wait for it.
pub static SETUP_DONE: AtomicBool = AtomicBool::new(false);

/// Number of vCPUs that have finished their own setup.
pub static CHECKED_IN: AtomicU32 = AtomicU32::new(0);

/// 10 ms ticks counted on vCPU 0 (the heartbeat is this divided by 10).
pub static TICKS: AtomicU64 = AtomicU64::new(0);

/// Requested memory-dirtying rate in MiB/s (0 = off).
pub static DIRTY_MIB_PER_S: AtomicU64 = AtomicU64::new(0);

/// vCPUs that should be online (bit i = vCPU i); vCPU 0 always is.
pub static WANTED: AtomicU64 = AtomicU64::new(1);

/// Whether vCPU `index` should be online.
pub fn wanted(index: usize) -> bool {
    index < 64 && WANTED.load(Ordering::Acquire) & (1 << index) != 0
}

/// Seconds of CPU burn requested per vCPU, plus one (0 = none).
static BURN: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];

/// The checked boot info, published by vCPU 0 before `SETUP_DONE`.
static mut BOOT_INFO: BootInfo = BootInfo {
    vcpus: 1,
    mem_bytes: 0,
    tsc_khz: 1_000_000,
    kernel_end: 0,
};

/// Publishes the boot info (vCPU 0 only, before setting `SETUP_DONE`).
pub fn set_boot_info(info: BootInfo) {
    // SAFETY: called once by vCPU 0 before any other vCPU passes SETUP_DONE
    // (Release/Acquire), so there is no concurrent access.
    unsafe { *core::ptr::addr_of_mut!(BOOT_INFO) = info };
}

/// The boot info (valid on every vCPU once `SETUP_DONE` is set).
pub fn boot_info() -> BootInfo {
    // SAFETY: written once before SETUP_DONE, read-only afterwards.
    unsafe { *core::ptr::addr_of!(BOOT_INFO) }
}

/// The vCPU that rewrites memory for `dirty R`: the last one online.
pub fn dirty_vcpu() -> usize {
    let mask = WANTED.load(Ordering::Acquire) | 1;
    63 - mask.leading_zeros() as usize
}

/// Asks vCPU `vcpu` to burn for `seconds`.
pub fn request_burn(vcpu: usize, seconds: u64) {
    if let Some(slot) = BURN.get(vcpu) {
        slot.store(seconds.saturating_add(1), Ordering::Release);
    }
}

/// Takes the burn request addressed to `vcpu`, if any.
pub fn take_burn(vcpu: usize) -> Option<u64> {
    let slot = BURN.get(vcpu)?;
    if slot.load(Ordering::Relaxed) == 0 {
        return None;
    }
    match slot.swap(0, Ordering::Acquire) {
        0 => None,
        plus_one => Some(plus_one - 1),
    }
}
