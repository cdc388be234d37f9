//! A polled virtio-net driver (virtio 1.2 §5.1): one receive and one transmit queue, one
//! 2 KiB buffer per descriptor, the 12-byte VERSION_1 header, no offloads.

use super::mmio::{InitError, Mmio};
use super::queue::{Virtq, DESC_WRITE};
use crate::dma::{self, Dma, PAGE};
use crate::net::proto::{Mac, MAX_FRAME};

/// virtio device type of a network card.
pub const DEVICE_TYPE: u32 = 1;
/// VIRTIO_NET_F_MAC.
const F_MAC: u64 = 1 << 5;
/// The virtio-net header with VERSION_1 (num_buffers included).
pub const HDR: usize = 12;
/// Bytes per buffer.
const BUF: usize = 2048;
/// Descriptors per queue.
const QUEUE: u16 = 32;
const RX: u32 = 0;
const TX: u32 = 1;

/// A virtio-net card in one slot.
pub struct Nic {
    /// The slot it sits in.
    pub slot: usize,
    /// Its MAC address.
    pub mac: Mac,
    mmio: Mmio,
    rx: Virtq,
    tx: Virtq,
    rx_bufs: u64,
    tx_bufs: u64,
    /// Bit i set: transmit descriptor i is with the device.
    tx_busy: u64,
    /// The tag of what each transmit buffer last carried (`queue_frame_tagged`), if any.
    tx_tags: [Option<u64>; QUEUE as usize],
    /// The last number `new_tag_epoch` handed out.
    tag_epoch: u32,
}

const QUEUE_PAGES: usize = QUEUE as usize * BUF / PAGE;

impl Nic {
    /// Brings up the card in `slot` (already probed as a network device).
    pub fn init(slot: usize, dma: &mut Dma) -> Result<Nic, InitError> {
        let mmio = Mmio::slot(slot);
        let features = mmio.negotiate(F_MAC)?;
        let rx_size = mmio.queue_size(RX, QUEUE).ok_or(InitError::Queue)?;
        let tx_size = mmio.queue_size(TX, QUEUE).ok_or(InitError::Queue)?;
        let rx = Virtq::new(dma, rx_size).ok_or(InitError::NoMemory)?;
        let Some(tx) = Virtq::new(dma, tx_size) else {
            rx.free(dma);
            return Err(InitError::NoMemory);
        };
        let (Some(rx_bufs), Some(tx_bufs)) = (dma.alloc(QUEUE_PAGES), dma.alloc(QUEUE_PAGES))
        else {
            rx.free(dma);
            tx.free(dma);
            return Err(InitError::NoMemory);
        };
        let mac = if features & F_MAC != 0 {
            mmio.config::<6>(0)
        } else {
            [0x52, 0x54, 0x00, 0x12, 0x34, slot as u8]
        };
        mmio.setup_queue(RX, &rx);
        mmio.setup_queue(TX, &tx);
        let mut nic = Nic {
            slot,
            mac,
            mmio,
            rx,
            tx,
            rx_bufs,
            tx_bufs,
            tx_busy: 0,
            tx_tags: [None; QUEUE as usize],
            tag_epoch: 0,
        };
        for i in 0..nic.rx.size() {
            nic.rx.set_desc(
                i,
                rx_bufs + u64::from(i) * BUF as u64,
                BUF as u32,
                DESC_WRITE,
                0,
            );
            nic.rx.push(i);
        }
        if let Err(e) = mmio.driver_ok() {
            nic.release(dma);
            return Err(e);
        }
        nic.mmio.notify(RX);
        Ok(nic)
    }

    /// Resets the device and returns its memory to the pool.
    pub fn release(self, dma: &mut Dma) {
        self.mmio.reset();
        self.rx.free(dma);
        self.tx.free(dma);
        dma.free(self.rx_bufs, QUEUE_PAGES);
        dma.free(self.tx_bufs, QUEUE_PAGES);
    }

    /// Hands each received frame to `f` (at most `budget` of them) and gives the buffers back.
    ///
    /// The frame is handed over in place, in its receive buffer: copying it out first would
    /// cost as much as the rest of the receive path under PVM, where every instruction of the
    /// guest is emulated.
    pub fn poll_rx(&mut self, budget: usize, mut f: impl FnMut(&mut Nic, &[u8])) -> usize {
        let mut seen = 0;
        while seen < budget {
            let Some((id, len)) = self.rx.pop_used() else {
                break;
            };
            seen += 1;
            let Ok(id) = u16::try_from(id) else { continue };
            if id >= self.rx.size() {
                continue;
            }
            let len = len as usize;
            if (HDR + 14..=BUF).contains(&len) {
                let frame_len = (len - HDR).min(MAX_FRAME);
                // SAFETY: buffer `id` is ours again (the device returned it) until we push it
                // back below, after `f` is done with it; `f` only sends, which uses the
                // transmit buffers, never this one.
                let buf = unsafe { dma::slice_mut(self.rx_bufs + u64::from(id) * BUF as u64, BUF) };
                f(self, buf.get(HDR..HDR + frame_len).unwrap_or_default());
            }
            self.rx.push(id);
        }
        if seen > 0 {
            self.mmio.notify(RX);
        }
        seen
    }

    /// Takes back the transmit buffers the device is done with.
    fn reclaim(&mut self) {
        while let Some((id, _)) = self.tx.pop_used() {
            if id < u32::from(self.tx.size()) {
                self.tx_busy &= !(1 << id);
            }
        }
    }

    /// Queues one frame built by `build` (which returns its length) without notifying;
    /// returns false when every transmit buffer is busy.
    pub fn queue_frame(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> bool {
        self.queue(0, None, |frame, _| build(frame))
    }

    /// Like `queue_frame`, for a sender that sends the same frames again: the buffer records
    /// `tag`, and `build` learns whether its buffer last carried a frame with the same tag (the
    /// device only reads transmit buffers, so those bytes are still there and need not be
    /// written again). Buffer `prefer` (modulo the queue size) is taken if it is free.
    pub fn queue_frame_tagged(
        &mut self,
        prefer: u16,
        tag: u64,
        build: impl FnOnce(&mut [u8], bool) -> usize,
    ) -> bool {
        self.queue(prefer, Some(tag), build)
    }

    /// A number no earlier call returned (until it wraps after 2^32 calls), for a sender to
    /// put in its tags so that they never match what an earlier sender left in the buffers.
    pub fn new_tag_epoch(&mut self) -> u32 {
        self.tag_epoch = self.tag_epoch.wrapping_add(1);
        self.tag_epoch
    }

    fn queue(
        &mut self,
        prefer: u16,
        tag: Option<u64>,
        build: impl FnOnce(&mut [u8], bool) -> usize,
    ) -> bool {
        self.reclaim();
        // Queue sizes are at most 64: one bit per buffer.
        let all = u64::MAX >> (64 - u32::from(self.tx.size()));
        let idle = !self.tx_busy & all;
        if idle == 0 {
            return false;
        }
        let prefer = prefer % self.tx.size();
        // The preferred buffer if it is free, else the lowest free one.
        let free = if idle & (1 << prefer) != 0 {
            prefer
        } else {
            idle.trailing_zeros() as u16
        };
        let Some(last_tag) = self.tx_tags.get_mut(usize::from(free)) else {
            return false;
        };
        let same = tag.is_some() && *last_tag == tag;
        *last_tag = tag;
        let addr = self.tx_bufs + u64::from(free) * BUF as u64;
        // SAFETY: buffer `free` is not with the device (its busy bit is clear).
        let buf = unsafe { dma::slice_mut(addr, BUF) };
        let (header, frame) = buf.split_at_mut(HDR);
        header.fill(0);
        let len = build(frame.get_mut(..MAX_FRAME).unwrap_or_default(), same).min(MAX_FRAME);
        self.tx.set_desc(free, addr, (HDR + len) as u32, 0, 0);
        self.tx_busy |= 1 << free;
        self.tx.push(free);
        true
    }

    /// Tells the device that frames were queued.
    pub fn kick(&self) {
        self.mmio.notify(TX);
    }

    /// Sends one frame now; false if no buffer was free.
    pub fn send(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> bool {
        let queued = self.queue_frame(build);
        if queued {
            self.kick();
        }
        queued
    }

    /// Whether every transmit buffer is back from the device.
    pub fn tx_idle(&mut self) -> bool {
        self.reclaim();
        self.tx_busy == 0
    }

    /// Whether the device still works.
    pub fn healthy(&self) -> bool {
        self.mmio.healthy()
    }
}
