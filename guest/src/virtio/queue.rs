//! A split virtqueue (virtio 1.2 §2.7) in one page of pool memory, driven by polling.
//!
//! The driver of each device decides which descriptors it uses for what; this module only
//! writes descriptors, publishes heads in the available ring and reads the used ring.
//! Nothing read from the used ring is trusted: ids and lengths are checked by the caller.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{compiler_fence, Ordering};

use crate::dma::{Dma, PAGE};

/// The descriptor continues in `next`.
pub const DESC_NEXT: u16 = 1;
/// The device writes this buffer.
pub const DESC_WRITE: u16 = 2;

/// VRING_AVAIL_F_NO_INTERRUPT: the guest polls and wants no interrupts.
const AVAIL_NO_INTERRUPT: u16 = 1;

/// Largest queue that fits the one-page layout.
pub const MAX_SIZE: u16 = 64;

/// One split virtqueue.
pub struct Virtq {
    size: u16,
    page: u64,
    next_avail: u16,
    last_used: u16,
}

impl Virtq {
    /// Allocates a queue of `size` entries (a power of two, at most `MAX_SIZE`).
    pub fn new(dma: &mut Dma, size: u16) -> Option<Virtq> {
        if size == 0 || size > MAX_SIZE || !size.is_power_of_two() {
            return None;
        }
        let page = dma.alloc(1)?;
        let queue = Virtq {
            size,
            page,
            next_avail: 0,
            last_used: 0,
        };
        // SAFETY: the avail ring lies inside the freshly allocated page.
        unsafe { write_volatile(queue.avail_addr() as *mut u16, AVAIL_NO_INTERRUPT) };
        Some(queue)
    }

    /// Returns the queue's page to the pool (after the device was reset).
    pub fn free(self, dma: &mut Dma) {
        dma.free(self.page, 1);
    }

    /// Entries in the queue.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The descriptor table's address.
    pub fn desc_addr(&self) -> u64 {
        self.page
    }

    /// The available ring's address.
    pub fn avail_addr(&self) -> u64 {
        self.page + 16 * u64::from(MAX_SIZE)
    }

    /// The used ring's address.
    pub fn used_addr(&self) -> u64 {
        // After the avail ring (6 + 2 * MAX_SIZE bytes), 4-byte aligned.
        (self.avail_addr() + 6 + 2 * u64::from(MAX_SIZE) + 3) & !3
    }

    /// Writes descriptor `index`.
    pub fn set_desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let index = index % self.size;
        let at = self.page + 16 * u64::from(index);
        // SAFETY: descriptor `index` (< size <= MAX_SIZE) lies inside the queue's page.
        unsafe {
            write_volatile(at as *mut u64, addr);
            write_volatile((at + 8) as *mut u32, len);
            write_volatile((at + 12) as *mut u16, flags);
            write_volatile((at + 14) as *mut u16, next);
        }
    }

    /// Makes the chain starting at `head` available to the device (notify afterwards).
    pub fn push(&mut self, head: u16) {
        let slot = self.next_avail % self.size;
        let avail = self.avail_addr();
        // SAFETY: the ring entry and the index lie inside the queue's page.
        unsafe {
            write_volatile((avail + 4 + 2 * u64::from(slot)) as *mut u16, head);
            // The ring entry must be visible before the index (x86 keeps stores in order;
            // this keeps the compiler from reordering them).
            compiler_fence(Ordering::SeqCst);
            self.next_avail = self.next_avail.wrapping_add(1);
            write_volatile((avail + 2) as *mut u16, self.next_avail);
        }
        compiler_fence(Ordering::SeqCst);
    }

    /// Takes the next used element, if the device returned one: (id, length).
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        let used = self.used_addr();
        // SAFETY: the used ring lies inside the queue's page; the device may write it at
        // any time, so every read is volatile.
        let index = unsafe { read_volatile((used + 2) as *const u16) };
        if index == self.last_used {
            return None;
        }
        compiler_fence(Ordering::SeqCst);
        let slot = u64::from(self.last_used % self.size);
        // SAFETY: as above; slot < size.
        let (id, len) = unsafe {
            (
                read_volatile((used + 4 + 8 * slot) as *const u32),
                read_volatile((used + 8 + 8 * slot) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }
}

// The one-page layout must fit.
const _: () = assert!(
    16 * MAX_SIZE as usize + 6 + 2 * MAX_SIZE as usize + 3 + 6 + 8 * MAX_SIZE as usize <= PAGE
);
