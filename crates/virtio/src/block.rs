//! virtio-blk (virtio 1.2 §5.2): a disk backed by a raw image file or a host block device.
//!
//! Features offered: VIRTIO_F_VERSION_1 (by the transport), VIRTIO_RING_F_INDIRECT_DESC,
//! VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE (512), VIRTIO_BLK_F_FLUSH,
//! VIRTIO_BLK_F_RO for read-only disks, and VIRTIO_BLK_F_DISCARD for writable regular files
//! (a discard punches a hole with `fallocate(PUNCH_HOLE | KEEP_SIZE)`, so the range reads back as
//! zeros and the image's size is kept) and for writable host block devices that take discards
//! (`BLKDISCARD`; an LVM volume on an SSD or thin pool, a loop device). Requests run synchronously in the thread that calls
//! [`VirtioDevice::process_queue`].

mod dirty;
mod disk;
pub mod limits;
pub mod qcow2;
mod request;
mod stats;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};

pub use self::dirty::{DirtyError, DirtyMap, DirtyRun, DirtyTaken, DIRTY_BLOCK};
pub use self::disk::{takes_discards, Disk, DiskError, DiskImage, DiskKind};
pub use self::request::RequestError;
pub use self::stats::{BlockStats, BlockStatsSnapshot};

use crate::device::{needs_interrupt, read_config_bytes, Activation, DeviceError, VirtioDevice};
use crate::interrupt::{InterruptKind, IrqLine};
use crate::state::{BlockState, DeviceState};
use crate::GuestMemoryMmap;

/// Size of a virtio-blk sector, whatever the disk's block size.
pub const SECTOR_SIZE: u32 = 512;
/// Length of the GET_ID answer (the serial, NUL padded).
pub const ID_BYTES: usize = 20;
/// Default queue size.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Largest discard segment, in sectors (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most segments in one discard request.
pub const MAX_DISCARD_SEGMENTS: u32 = 16;
/// Discard granularity, in sectors (4 KiB, a typical filesystem block).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Size of the scratch buffer for copies between the disk and guest memory.
const BOUNCE_SIZE: usize = 128 * 1024;
/// Length of the configuration space (up to `unused1`, virtio 1.2 §5.2.4).
const CONFIG_SPACE_SIZE: usize = 60;

/// Errors building a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file is unusable.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The serial is longer than the 20 bytes GET_ID can return.
    #[error("the serial is {0} bytes long; at most {ID_BYTES} fit")]
    SerialTooLong(usize),
    /// The queue size is not a power of two between 4 and 32768.
    #[error("queue size {0} is not a power of two between 4 and 32768")]
    BadQueueSize(u16),
    /// The I/O limits are unusable.
    #[error(transparent)]
    Limits(#[from] limits::LimitError),
}

/// How the VMM wants a block device set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Refuse writes and discards and advertise VIRTIO_BLK_F_RO (forced on for files opened read-only).
    pub read_only: bool,
    /// The GET_ID answer, at most 20 bytes (for example the vdev name, `xvda`).
    pub serial: String,
    /// Offer discard where the backend supports it (writable regular files, block devices that take discards).
    pub discard: bool,
    /// Whether the backend takes discards, when the caller knows; `None`: a
    /// host block device is looked up in `/sys` (a path the VMM may open only
    /// at start-up).
    pub backend_discard: Option<bool>,
    /// Size of the request queue.
    pub queue_size: u16,
    /// I/O limits (none by default).
    pub rate: limits::BlockRate,
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig {
            read_only: false,
            serial: String::new(),
            discard: true,
            backend_discard: None,
            queue_size: DEFAULT_QUEUE_SIZE,
            rate: limits::BlockRate::default(),
        }
    }
}

/// What a running block device holds between activation and reset.
struct Active {
    mem: Arc<GuestMemoryMmap>,
    queue: Queue,
    irq: Arc<IrqLine>,
    discard: bool,
}

/// A virtio-blk device.
pub struct Block {
    disk: Disk,
    capacity: u64,
    read_only: bool,
    serial: [u8; ID_BYTES],
    features: u64,
    config_space: [u8; CONFIG_SPACE_SIZE],
    queue_sizes: [u16; 1],
    stats: Arc<BlockStats>,
    dirty: Arc<DirtyMap>,
    bounce: Vec<u8>,
    limiter: Option<limits::Limiter>,
    active: Option<Active>,
}

impl Block {
    /// Builds a block device over `file` (a raw image or a block device).
    pub fn new(file: File, config: BlockConfig) -> Result<Self, BlockError> {
        Self::with_image(DiskImage::Raw(file), config)
    }

    /// Builds a block device over an opened image (raw, or qcow2 with its chain).
    pub fn with_image(image: DiskImage, config: BlockConfig) -> Result<Self, BlockError> {
        let serial_bytes = config.serial.as_bytes();
        let mut serial = [0u8; ID_BYTES];
        serial
            .get_mut(..serial_bytes.len())
            .ok_or(BlockError::SerialTooLong(serial_bytes.len()))?
            .copy_from_slice(serial_bytes);
        let queue_size = config.queue_size;
        if !queue_size.is_power_of_two() || !(4..=32768).contains(&queue_size) {
            return Err(BlockError::BadQueueSize(queue_size));
        }
        let disk = Disk::from_image(image)?;
        let read_only = config.read_only || !disk.writable();
        // A qcow2 image answers for itself (version 3 frees clusters; version 2 cannot).
        let discard = config.discard
            && !read_only
            && if disk.is_qcow2() {
                disk.supports_discard()
            } else {
                config
                    .backend_discard
                    .unwrap_or_else(|| disk.supports_discard())
            };
        let capacity = disk.size() / u64::from(SECTOR_SIZE);

        let mut features = (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX)
            | (1u64 << VIRTIO_BLK_F_BLK_SIZE)
            | (1u64 << VIRTIO_BLK_F_FLUSH);
        if read_only {
            features |= 1u64 << VIRTIO_BLK_F_RO;
        }
        if discard {
            features |= 1u64 << VIRTIO_BLK_F_DISCARD;
        }

        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        let fields: [(usize, &[u8]); 7] = [
            (0, &capacity.to_le_bytes()),
            // seg_max: the header and the status take two descriptors of a direct chain.
            (12, &(u32::from(queue_size) - 2).to_le_bytes()),
            (20, &SECTOR_SIZE.to_le_bytes()),
            (34, &1u16.to_le_bytes()),
            (36, &MAX_DISCARD_SECTORS.to_le_bytes()),
            (40, &MAX_DISCARD_SEGMENTS.to_le_bytes()),
            (44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes()),
        ];
        for (offset, bytes) in fields {
            if let Some(dst) = config_space.get_mut(offset..offset + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }

        Ok(Block {
            disk,
            capacity,
            read_only,
            serial,
            features,
            config_space,
            queue_sizes: [queue_size],
            stats: Arc::new(BlockStats::default()),
            dirty: Arc::new(DirtyMap::new(capacity * u64::from(SECTOR_SIZE))),
            bounce: vec![0; BOUNCE_SIZE],
            limiter: limits::Limiter::new(config.rate)?,
            active: None,
        })
    }

    /// The device's counters, shared with whoever reports them.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    /// The blocks the guest changed since the map was last taken, shared with whoever takes it.
    pub fn dirty(&self) -> Arc<DirtyMap> {
        self.dirty.clone()
    }

    /// Capacity in 512-byte sectors (the image size rounded down).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the device refuses writes.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The timer fd that becomes readable when a rate-limited queue may go on; the VMM then
    /// calls `process_queue(0)`. Valid as long as the device lives.
    pub fn rate_timer_fd(&self) -> Option<std::os::fd::RawFd> {
        self.limiter.as_ref().map(|l| l.timer.fd())
    }

    /// Whether the device is running (activated and not reset since).
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
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
        // Every field is read-only without VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
    }

    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError> {
        let Activation {
            mem,
            queues,
            features,
            irq,
        } = activation;
        let got = queues.len();
        let Ok([queue]) = <[Queue; 1]>::try_from(queues) else {
            return Err(DeviceError::QueueCount { expected: 1, got });
        };
        if !queue.ready() {
            return Err(DeviceError::QueueNotReady(0));
        }
        self.active = Some(Active {
            mem,
            queue,
            irq,
            discard: features & (1u64 << VIRTIO_BLK_F_DISCARD) != 0,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        if let Some(l) = &self.limiter {
            l.timer.disarm();
        }
    }

    fn queue_positions(&self) -> Vec<(u16, u16)> {
        self.active
            .as_ref()
            .map(|a| crate::device::positions([&a.queue]))
            .unwrap_or_default()
    }

    fn change_media(&mut self, file: File) -> Result<u64, DeviceError> {
        // Only a read-only drive takes new media: nothing written is lost with the old one.
        if !self.read_only {
            return Err(DeviceError::NotRemovable);
        }
        let disk = Disk::open(file).map_err(|e| DeviceError::Medium(e.to_string()))?;
        self.capacity = disk.size() / u64::from(SECTOR_SIZE);
        self.disk = disk;
        if let Some(dst) = self.config_space.get_mut(0..8) {
            dst.copy_from_slice(&self.capacity.to_le_bytes());
        }
        Ok(self.capacity)
    }

    fn save_state(&mut self) -> DeviceState {
        // Requests complete before they are marked used; what they wrote
        // must be on stable storage before another host opens the disk.
        if let Err(e) = self.disk.flush() {
            tracing::warn!("virtio-blk: flush before saving state failed: {e}");
        }
        DeviceState::Block(BlockState {})
    }

    fn disk(&self) -> Option<&Disk> {
        Some(&self.disk)
    }

    fn flush(&mut self) {
        if let Err(e) = self.disk.flush() {
            tracing::warn!("virtio-blk: flush as the VMM ends failed: {e}");
        }
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceError> {
        let DeviceState::Block(BlockState {}) = state else {
            return Err(DeviceError::BadState(format!(
                "the saved state of {} does not fit a disk",
                state.kind()
            )));
        };
        // The image was last written by the saved domain (a migration's source until just
        // now): what this side read of a qcow2 image's tables at start-up may be stale.
        self.disk.reload().map_err(DeviceError::Restore)
    }

    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
        if index != 0 {
            return Err(DeviceError::NoSuchQueue(index));
        }
        let active = self.active.as_mut().ok_or(DeviceError::NotActivated)?;
        let mem = active.mem.clone();
        let queue = &mut active.queue;
        let broken = |source| DeviceError::BrokenQueue { index, source };
        let mut ctx = request::Context {
            disk: &mut self.disk,
            capacity: self.capacity,
            queue_size: queue.size(),
            read_only: self.read_only,
            discard: active.discard,
            serial: &self.serial,
            stats: &self.stats,
            dirty: &self.dirty,
            bounce: &mut self.bounce,
        };
        if let Some(l) = &self.limiter {
            l.timer.drain();
        }
        let limiter = &mut self.limiter;
        let mut used_any = false;
        let mut held_back = None;
        loop {
            if queue.event_idx_enabled() {
                queue.disable_notification(mem.as_ref()).map_err(broken)?;
            }
            // virtio-queue drops an available index more than a queue size ahead silently;
            // catch it here so the driver learns its ring is broken.
            let avail = queue
                .avail_idx(mem.as_ref(), Ordering::Acquire)
                .map_err(broken)?;
            if avail.0.wrapping_sub(queue.next_avail()) > queue.size() {
                return Err(broken(virtio_queue::Error::InvalidAvailRingIndex));
            }
            loop {
                if let Some(w) = limiter
                    .as_mut()
                    .and_then(|l| l.wait(std::time::Instant::now()))
                {
                    held_back = Some(w);
                    break;
                }
                let Some(chain) = queue.pop_descriptor_chain(mem.as_ref()) else {
                    break;
                };
                // The data the request moves: its descriptors less the header and status.
                let bytes = chain
                    .clone()
                    .map(|d| u64::from(d.len()))
                    .sum::<u64>()
                    .saturating_sub(17);
                if let Some(l) = limiter.as_mut() {
                    l.charge(bytes);
                }
                let head = chain.head_index();
                if head >= queue.size() {
                    // Not a descriptor of this queue: there is nothing valid to return.
                    ctx.stats.add_error();
                    continue;
                }
                let used_len = request::handle(chain, mem.as_ref(), &mut ctx);
                queue
                    .add_used(mem.as_ref(), head, used_len)
                    .map_err(broken)?;
                used_any = true;
            }
            // Held back by a limit: the timer, not the driver, says when to go on.
            if let (Some(w), Some(l)) = (held_back, limiter.as_ref()) {
                l.timer.arm(w);
                break;
            }
            if !queue.event_idx_enabled()
                || !queue.enable_notification(mem.as_ref()).map_err(broken)?
            {
                break;
            }
        }
        if used_any && needs_interrupt(queue, mem.as_ref()).map_err(broken)? {
            if let Err(e) = active.irq.signal(InterruptKind::Queue) {
                tracing::warn!("virtio-blk: cannot raise the queue interrupt: {e}");
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("capacity", &self.capacity)
            .field("read_only", &self.read_only)
            .field("features", &self.features)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}
