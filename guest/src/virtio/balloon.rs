//! A polled virtio-balloon driver (virtio 1.2 §5.5): every 100 ms it compares the host's
//! `num_pages` with what it holds, and inflates by taking pages from the top of the free
//! region (never touched again while inflated) or deflates by giving them back.

use core::hint::spin_loop;

use super::mmio::{InitError, Mmio};
use super::queue::Virtq;
use crate::dma::Dma;
use crate::freemem::{self, PAGE};
use crate::time::Instant;

/// virtio device type of a balloon.
pub const DEVICE_TYPE: u32 = 5;
/// VIRTIO_BALLOON_F_MUST_TELL_HOST: the guest always tells the host before reusing a page.
const F_MUST_TELL_HOST: u64 = 1 << 0;
const INFLATEQ: u32 = 0;
const DEFLATEQ: u32 = 1;
/// Page frame numbers per request (one page of u32s).
const BATCH: u64 = 1024;
/// Requests per poll at most (64 MiB each way per 100 ms).
const BATCHES_PER_POLL: usize = 16;
/// How long the device may take with one request.
const TIMEOUT_MS: u64 = 5000;
/// Offsets in the configuration space.
const NUM_PAGES: u64 = 0;
const ACTUAL: u64 = 4;

/// The balloon in one slot.
pub struct Balloon {
    mmio: Mmio,
    inflate: Virtq,
    deflate: Virtq,
    pfns: u64,
    /// Pages given to the host: always the top `inflated` pages of the free region.
    inflated: u64,
    broken: bool,
}

impl Balloon {
    /// Brings up the balloon in `slot` (already probed as a balloon).
    pub fn init(slot: usize, dma: &mut Dma) -> Result<Balloon, InitError> {
        let mmio = Mmio::slot(slot);
        mmio.negotiate(F_MUST_TELL_HOST)?;
        let inflate_size = mmio.queue_size(INFLATEQ, 4).ok_or(InitError::Queue)?;
        let deflate_size = mmio.queue_size(DEFLATEQ, 4).ok_or(InitError::Queue)?;
        let inflate = Virtq::new(dma, inflate_size).ok_or(InitError::NoMemory)?;
        let Some(deflate) = Virtq::new(dma, deflate_size) else {
            inflate.free(dma);
            return Err(InitError::NoMemory);
        };
        let Some(pfns) = dma.alloc(1) else {
            inflate.free(dma);
            deflate.free(dma);
            return Err(InitError::NoMemory);
        };
        mmio.setup_queue(INFLATEQ, &inflate);
        mmio.setup_queue(DEFLATEQ, &deflate);
        let balloon = Balloon {
            mmio,
            inflate,
            deflate,
            pfns,
            inflated: 0,
            broken: false,
        };
        if let Err(e) = mmio.driver_ok() {
            balloon.release(dma);
            return Err(e);
        }
        Ok(balloon)
    }

    /// Resets the device (the host then holds no page of ours) and frees its memory.
    pub fn release(self, dma: &mut Dma) {
        self.mmio.reset();
        self.inflate.free(dma);
        self.deflate.free(dma);
        dma.free(self.pfns, 1);
        freemem::set_end(freemem::full_end());
    }

    /// Pages given to the host.
    pub fn inflated(&self) -> u64 {
        self.inflated
    }

    /// Moves towards the host's target; called every 100 ms.
    pub fn poll(&mut self) {
        if self.broken || !self.mmio.healthy() {
            return;
        }
        let capacity = freemem::full_end().saturating_sub(freemem::start()) / PAGE;
        let target = u64::from(self.mmio.config_u32(NUM_PAGES)).min(capacity);
        let before = self.inflated;
        for _ in 0..BATCHES_PER_POLL {
            let ok = if target > self.inflated {
                self.inflate_batch((target - self.inflated).min(BATCH))
            } else if target < self.inflated {
                self.deflate_batch((self.inflated - target).min(BATCH))
            } else {
                break;
            };
            if !ok {
                self.broken = true;
                break;
            }
        }
        if self.inflated != before {
            self.mmio.set_config_u32(ACTUAL, self.inflated as u32);
        }
    }

    /// Gives the `count` pages just below the balloon to the host.
    fn inflate_batch(&mut self, count: u64) -> bool {
        let end = freemem::end();
        let new_end = end - count * PAGE;
        // The free region shrinks first, so that nothing writes these pages again.
        freemem::set_end(new_end);
        if !self.send(true, new_end, count) {
            return false;
        }
        self.inflated += count;
        true
    }

    /// Takes the `count` lowest pages of the balloon back from the host.
    fn deflate_batch(&mut self, count: u64) -> bool {
        let end = freemem::end();
        if !self.send(false, end, count) {
            return false;
        }
        // Only once the host has been told may the pages be used again.
        freemem::set_end(end + count * PAGE);
        self.inflated -= count;
        true
    }

    /// Sends the PFNs of `count` pages from `first` on the inflate or deflate queue and waits.
    fn send(&mut self, inflate: bool, first: u64, count: u64) -> bool {
        for i in 0..count.min(BATCH) {
            let pfn = (first / PAGE + i) as u32;
            // SAFETY: the PFN page is this driver's and no request is in flight.
            unsafe { core::ptr::write_volatile((self.pfns + 4 * i) as *mut u32, pfn) };
        }
        let (queue, index) = if inflate {
            (&mut self.inflate, INFLATEQ)
        } else {
            (&mut self.deflate, DEFLATEQ)
        };
        queue.set_desc(0, self.pfns, (4 * count.min(BATCH)) as u32, 0, 0);
        queue.push(0);
        self.mmio.notify(index);
        let start = Instant::now();
        loop {
            if let Some((0, _)) = queue.pop_used() {
                return true;
            }
            if start.elapsed_ms() > TIMEOUT_MS || !self.mmio.healthy() {
                self.mmio.reset();
                return false;
            }
            spin_loop();
        }
    }
}
