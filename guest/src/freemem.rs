//! The free region: RAM past the image that no driver uses, which `dirty` rewrites,
//! `memfill` fills and `memsum` hashes, and from whose top the balloon takes pages.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::mailbox;
use crate::println;
use crate::work::Vcpu;

/// Bytes per page.
pub const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Free memory starts this far past the end of the image.
const MARGIN: u64 = MIB;
/// Only memory below the PCI hole (3 GiB) is used for now.
const LOW_MEMORY_END: u64 = 0xC000_0000;

/// The end of the free region while pages above it are given to the balloon (0 = not set yet).
static BALLOON_FLOOR: AtomicU64 = AtomicU64::new(0);

/// The first byte of the free region.
pub fn start() -> u64 {
    mailbox::boot_info()
        .kernel_end
        .div_ceil(PAGE)
        .saturating_mul(PAGE)
        .saturating_add(MARGIN)
}

/// The end of the free region before any ballooning.
pub fn full_end() -> u64 {
    (mailbox::boot_info().mem_bytes.min(LOW_MEMORY_END) / PAGE * PAGE).max(start())
}

/// The end of the free region now: pages at and above it belong to the balloon.
pub fn end() -> u64 {
    match BALLOON_FLOOR.load(Ordering::Acquire) {
        0 => full_end(),
        floor => floor,
    }
}

/// Moves the end of the free region (the balloon's floor); `end` must lie in [start, full_end].
pub fn set_end(end: u64) {
    BALLOON_FLOOR.store(end.clamp(start(), full_end()), Ordering::Release);
}

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;

/// `memsum`: FNV-1a over the free region's u64 words (one xor-multiply step per word).
pub fn memsum(vcpu: &mut Vcpu) {
    let mut hash = FNV_OFFSET;
    let (start, end) = (start(), end());
    let mut addr = start;
    while addr < end {
        let chunk_end = (addr + MIB).min(end);
        while addr < chunk_end {
            // SAFETY: addr is 8-byte aligned inside the free region: identity-mapped RAM
            // that holds nothing of the guest's and is not given to the balloon.
            let word = unsafe { core::ptr::read_volatile(addr as *const u64) };
            hash = (hash ^ word).wrapping_mul(FNV_PRIME);
            addr += 8;
        }
        vcpu.poll_tick();
    }
    println!("memsum {hash:#018x}");
}

/// The word `memfill SEED` writes at `addr`.
pub fn fill_word(seed: u64, addr: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ addr.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// `memfill SEED`: writes `fill_word(SEED, addr)` at every u64 of the free region.
pub fn memfill(seed: u64, vcpu: &mut Vcpu) {
    let (start, end) = (start(), end());
    let mut addr = start;
    while addr < end {
        let chunk_end = (addr + MIB).min(end);
        while addr < chunk_end {
            // SAFETY: as in `memsum`.
            unsafe { core::ptr::write_volatile(addr as *mut u64, fill_word(seed, addr)) };
            addr += 8;
        }
        vcpu.poll_tick();
    }
    println!("memfill done");
}
