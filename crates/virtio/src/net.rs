//! virtio-net (virtio 1.2 §5.1): a NIC whose frames go to and come from a host TAP device.
//!
//! Features offered: VIRTIO_F_VERSION_1 (by the transport), VIRTIO_NET_F_MAC and
//! VIRTIO_NET_F_STATUS (link always up). No offloads: every frame carries the 12-byte
//! `virtio_net_hdr_v1` (num_buffers included) that the device strips on transmit and writes
//! (all zero, num_buffers = 1) on receive; the TAP sees plain Ethernet frames.
//!
//! Queue 0 receives, queue 1 transmits. The VMM calls [`VirtioDevice::process_queue`]`(0)` when
//! the driver adds receive buffers *and* when the TAP becomes readable, and `(1)` when the driver
//! notifies the transmit queue *and* when the rate-limit timer ([`Net::rate_timer_fd`]) fires.
//! The `ip=` filter ([`antispoof`]) and the `rate=` bucket ([`ratelimit`]) apply to transmit.

pub mod antispoof;
pub mod ratelimit;
mod stats;
pub mod tap;
#[cfg(test)]
mod tests;

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};

pub use self::antispoof::{AntiSpoof, Verdict};
pub use self::ratelimit::{RateLimitError, TokenBucket};
pub use self::stats::{NetStats, NetStatsSnapshot};
pub use self::tap::{NetBackend, Tap, TapError};

use crate::device::{needs_interrupt, read_config_bytes, Activation, DeviceError, VirtioDevice};
use crate::interrupt::{InterruptKind, IrqLine};
use crate::ratetimer::RateTimer;
use crate::state::{DeviceState, NetState};
use crate::GuestMemoryMmap;

/// Size of `virtio_net_hdr_v1` (with num_buffers), the header of every frame under VERSION_1.
pub const NET_HDR_SIZE: usize = 12;
/// Largest frame the device moves (no offloads: an MTU of 1500 needs 1514; leave room for jumbo).
pub const MAX_FRAME: usize = 65_535;
/// Queue size of both queues.
pub const NET_QUEUE_SIZE: u16 = 256;
/// Receive queue index.
pub const RX_QUEUE: u16 = 0;
/// Transmit queue index.
pub const TX_QUEUE: u16 = 1;

/// Errors building a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The rate limit is invalid.
    #[error(transparent)]
    Rate(#[from] RateLimitError),
    /// The rate-limit timer could not be created.
    #[error("cannot create the rate-limit timer: {0}")]
    Timer(#[source] io::Error),
}

/// How the VMM wants a NIC set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// Transmit limit: bytes per interval.
    pub rate: Option<(u64, Duration)>,
    /// Allowed source addresses (`ip=`); empty: no filtering.
    pub allowed_ips: Vec<std::net::Ipv4Addr>,
}

struct Active {
    mem: Arc<GuestMemoryMmap>,
    rx: Queue,
    tx: Queue,
    irq: Arc<IrqLine>,
}

/// A reverse-ARP broadcast from `mac`, the frame QEMU sends after a
/// migration so that bridges and switches learn the guest's new port.
pub fn rarp_announcement(mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xFF; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x80, 0x35]); // EtherType RARP
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 3]); // Ethernet/IPv4, reverse request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.resize(60, 0);
    f
}

/// A virtio-net device.
pub struct Net {
    backend: Box<dyn NetBackend>,
    config_space: [u8; 8],
    features: u64,
    queue_sizes: [u16; 2],
    filter: AntiSpoof,
    bucket: Option<TokenBucket>,
    timer: Option<RateTimer>,
    stats: Arc<NetStats>,
    /// A frame read from the backend that found no receive buffer yet.
    pending_rx: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    active: Option<Active>,
}

impl Net {
    /// Builds a NIC over `backend` (a [`Tap`] in the VMM).
    pub fn new(backend: Box<dyn NetBackend>, config: NetConfig) -> Result<Self, NetError> {
        let mut config_space = [0u8; 8];
        if let Some(dst) = config_space.get_mut(..6) {
            dst.copy_from_slice(&config.mac);
        }
        if let Some(dst) = config_space.get_mut(6..8) {
            dst.copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        }
        let (bucket, timer) = match config.rate {
            Some((bytes, interval)) => (
                Some(TokenBucket::new(bytes, interval, Instant::now())?),
                Some(RateTimer::new("virtio-net").map_err(NetError::Timer)?),
            ),
            None => (None, None),
        };
        Ok(Net {
            backend,
            config_space,
            features: (1u64 << VIRTIO_NET_F_MAC) | (1u64 << VIRTIO_NET_F_STATUS),
            queue_sizes: [NET_QUEUE_SIZE; 2],
            filter: AntiSpoof::new(config.allowed_ips),
            bucket,
            timer,
            stats: Arc::new(NetStats::default()),
            pending_rx: None,
            rx_buf: vec![0; MAX_FRAME],
            tx_buf: vec![0; MAX_FRAME],
            active: None,
        })
    }

    /// The device's counters, shared with whoever reports them.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// The timer fd that becomes readable when a rate-limited transmit queue may go on; the
    /// VMM then calls `process_queue(TX_QUEUE)`. Valid as long as the device lives.
    pub fn rate_timer_fd(&self) -> Option<RawFd> {
        self.timer.as_ref().map(RateTimer::fd)
    }

    fn arm_timer(&mut self, wait: Duration) {
        if let Some(t) = &self.timer {
            t.arm(wait);
        }
    }

    fn drain_timer(&mut self) {
        if let Some(t) = &self.timer {
            t.drain();
        }
    }

    /// Stops the rate timer (a reset device has nothing to send) and consumes any expiry.
    fn disarm_timer(&mut self) {
        if let Some(t) = &self.timer {
            t.disarm();
        }
    }

    /// Moves frames from the backend into receive buffers; returns whether any buffer was used.
    fn process_rx(&mut self) -> Result<bool, DeviceError> {
        let active = self.active.as_mut().ok_or(DeviceError::NotActivated)?;
        let mem = active.mem.clone();
        let broken = |source| DeviceError::BrokenQueue {
            index: RX_QUEUE,
            source,
        };
        check_avail(&mut active.rx, &mem, RX_QUEUE)?;
        let mut used_any = false;
        loop {
            let len = match self.pending_rx.take() {
                Some(len) => len,
                None => match self.backend.recv(&mut self.rx_buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!("virtio-net: backend receive failed: {e}");
                        break;
                    }
                },
            };
            let Some(chain) = active.rx.pop_descriptor_chain(mem.as_ref()) else {
                self.pending_rx = Some(len);
                break;
            };
            let head = chain.head_index();
            let frame = self.rx_buf.get(..len).unwrap_or(&[]);
            let used = match write_rx(chain, mem.as_ref(), frame, active.rx.size()) {
                Ok(used) => {
                    self.stats.received(len);
                    used
                }
                Err(e) => {
                    tracing::debug!("virtio-net: receive buffer unusable: {e}");
                    self.stats.rx_dropped();
                    0
                }
            };
            if head < active.rx.size() {
                active
                    .rx
                    .add_used(mem.as_ref(), head, used)
                    .map_err(broken)?;
                used_any = true;
            }
        }
        Ok(used_any)
    }

    /// Sends the guest's frames to the backend; returns whether any buffer was used.
    fn process_tx(&mut self) -> Result<bool, DeviceError> {
        let active = self.active.as_mut().ok_or(DeviceError::NotActivated)?;
        let mem = active.mem.clone();
        let broken = |source| DeviceError::BrokenQueue {
            index: TX_QUEUE,
            source,
        };
        check_avail(&mut active.tx, &mem, TX_QUEUE)?;
        let mut used_any = false;
        let mut wait = None;
        loop {
            if let Some(bucket) = self.bucket.as_mut() {
                if let Err(w) = bucket.check(Instant::now()) {
                    // Only stop if there is something to send.
                    let more = active
                        .tx
                        .avail_idx(mem.as_ref(), Ordering::Acquire)
                        .map_err(broken)?
                        != std::num::Wrapping(active.tx.next_avail());
                    if more {
                        wait = Some(w);
                    }
                    break;
                }
            }
            let Some(chain) = active.tx.pop_descriptor_chain(mem.as_ref()) else {
                break;
            };
            let head = chain.head_index();
            match read_tx(chain, mem.as_ref(), &mut self.tx_buf, active.tx.size()) {
                Ok(len) => {
                    let frame = self.tx_buf.get(..len).unwrap_or(&[]);
                    if self.filter.check(frame) == Verdict::Drop {
                        self.stats.spoofed();
                    } else {
                        if let Some(bucket) = self.bucket.as_mut() {
                            bucket.take(len as u64);
                        }
                        match self.backend.send(frame) {
                            Ok(()) => self.stats.sent(len),
                            Err(e) => {
                                tracing::debug!("virtio-net: backend send failed: {e}");
                                self.stats.tx_dropped();
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("virtio-net: transmit chain unusable: {e}");
                    self.stats.tx_dropped();
                }
            }
            if head < active.tx.size() {
                active.tx.add_used(mem.as_ref(), head, 0).map_err(broken)?;
                used_any = true;
            }
        }
        // (Re)arm for the bucket's current wait: `process_queue` consumed any earlier expiry.
        if let Some(w) = wait {
            self.arm_timer(w);
        }
        Ok(used_any)
    }

    fn signal(&mut self, index: u16) -> Result<(), DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let queue = if index == RX_QUEUE {
            &mut active.rx
        } else {
            &mut active.tx
        };
        let need = needs_interrupt(queue, active.mem.as_ref())
            .map_err(|source| DeviceError::BrokenQueue { index, source })?;
        if need {
            if let Err(e) = active.irq.signal(InterruptKind::Queue) {
                tracing::warn!("virtio-net: cannot raise the queue interrupt: {e}");
            }
        }
        Ok(())
    }
}

/// Catches an available index more than a queue size ahead (virtio-queue would drop it silently).
fn check_avail(queue: &mut Queue, mem: &GuestMemoryMmap, index: u16) -> Result<(), DeviceError> {
    let broken = |source| DeviceError::BrokenQueue { index, source };
    let avail = queue.avail_idx(mem, Ordering::Acquire).map_err(broken)?;
    if avail.0.wrapping_sub(queue.next_avail()) > queue.size() {
        return Err(broken(virtio_queue::Error::InvalidAvailRingIndex));
    }
    Ok(())
}

/// Errors moving one frame through a descriptor chain.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The chain's buffers are outside guest memory, loop, or overflow.
    #[error("bad descriptor chain: {0}")]
    Chain(#[source] virtio_queue::Error),
    /// The chain loops or is longer than the queue.
    #[error("descriptor chain loops or is longer than the queue")]
    Malformed,
    /// The chain is too small for the header and the frame.
    #[error("buffer of {have} bytes for {need}")]
    TooSmall {
        /// Bytes the chain holds.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The frame is larger than the device moves.
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    /// Copying to or from guest memory failed.
    #[error("guest buffer access failed: {0}")]
    Copy(#[source] io::Error),
}

/// Refuses a chain that loops or runs past the queue size (its last descriptor still says NEXT).
fn check_chain(
    chain: &DescriptorChain<&GuestMemoryMmap>,
    queue_size: u16,
) -> Result<(), FrameError> {
    let limit = usize::from(queue_size) + 1;
    let mut count = 0usize;
    let mut last_next = true;
    for d in chain.clone().take(limit) {
        count += 1;
        last_next = d.has_next();
    }
    if count == 0 || count > usize::from(queue_size) || last_next {
        return Err(FrameError::Malformed);
    }
    Ok(())
}

/// Writes the header and `frame` into a receive chain; returns the used length.
fn write_rx(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    frame: &[u8],
    queue_size: u16,
) -> Result<u32, FrameError> {
    check_chain(&chain, queue_size)?;
    let mut writer = Writer::new(mem, chain).map_err(FrameError::Chain)?;
    let need = NET_HDR_SIZE + frame.len();
    if writer.available_bytes() < need {
        return Err(FrameError::TooSmall {
            have: writer.available_bytes(),
            need,
        });
    }
    let mut header = [0u8; NET_HDR_SIZE];
    // num_buffers = 1 (without VIRTIO_NET_F_MRG_RXBUF every frame takes one chain).
    if let Some(b) = header.get_mut(10) {
        *b = 1;
    }
    writer.write_all(&header).map_err(FrameError::Copy)?;
    writer.write_all(frame).map_err(FrameError::Copy)?;
    Ok(u32::try_from(need).unwrap_or(u32::MAX))
}

/// Reads one frame from a transmit chain into `buf` (header stripped); returns its length.
fn read_tx(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
    queue_size: u16,
) -> Result<usize, FrameError> {
    check_chain(&chain, queue_size)?;
    let mut reader = Reader::new(mem, chain).map_err(FrameError::Chain)?;
    let total = reader.available_bytes();
    let len = total
        .checked_sub(NET_HDR_SIZE)
        .ok_or(FrameError::TooSmall {
            have: total,
            need: NET_HDR_SIZE,
        })?;
    let dst = buf.get_mut(..len).ok_or(FrameError::TooLarge(len))?;
    let mut header = [0u8; NET_HDR_SIZE];
    reader.read_exact(&mut header).map_err(FrameError::Copy)?;
    reader.read_exact(dst).map_err(FrameError::Copy)?;
    Ok(len)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR, which is not offered.
    }

    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError> {
        let Activation {
            mem, queues, irq, ..
        } = activation;
        let got = queues.len();
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(queues) else {
            return Err(DeviceError::QueueCount { expected: 2, got });
        };
        if !rx.ready() {
            return Err(DeviceError::QueueNotReady(RX_QUEUE));
        }
        if !tx.ready() {
            return Err(DeviceError::QueueNotReady(TX_QUEUE));
        }
        self.active = Some(Active { mem, rx, tx, irq });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending_rx = None;
        // The VMM watches the timer fd level-triggered and the transport ignores notifications
        // while the device is reset: an expiry now would stay readable and spin its I/O thread.
        self.disarm_timer();
    }

    fn after_migration(&mut self) {
        let mac: [u8; 6] = self.config_space[..6].try_into().unwrap_or([0; 6]);
        match self.backend.send(&rarp_announcement(mac)) {
            Ok(()) => tracing::info!("virtio-net: announced {mac:02x?} after migration"),
            Err(e) => tracing::warn!("virtio-net: cannot announce the MAC: {e}"),
        }
    }

    fn save_state(&mut self) -> DeviceState {
        DeviceState::Net(NetState {})
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceError> {
        match state {
            DeviceState::Net(NetState {}) => Ok(()),
            other => Err(DeviceError::BadState(format!(
                "the saved state of {} does not fit a NIC",
                other.kind()
            ))),
        }
    }

    fn queue_positions(&self) -> Vec<(u16, u16)> {
        self.active
            .as_ref()
            .map(|a| crate::device::positions([&a.rx, &a.tx]))
            .unwrap_or_default()
    }

    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
        let used = match index {
            RX_QUEUE => self.process_rx()?,
            TX_QUEUE => {
                // Always consume an expiry first. (This used to happen only while a flag said
                // the timer was armed; a notification before the expiry cleared the flag, and
                // when the bucket then allowed the rest (the wait is at least 100 us) nothing
                // re-armed it, so the expiry that followed left the fd readable for good and
                // the VMM, which watches it level-triggered, called this in a loop.)
                self.drain_timer();
                self.process_tx()?
            }
            _ => return Err(DeviceError::NoSuchQueue(index)),
        };
        if used {
            self.signal(index)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("features", &self.features)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}
