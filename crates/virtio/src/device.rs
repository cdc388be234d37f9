//! The contract between a virtio transport and a virtio device model.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use crate::interrupt::IrqLine;
use crate::state::DeviceState;
use crate::GuestMemoryMmap;

/// Errors a device reports to its transport; each one means the device cannot go on until the
/// driver resets it (the transport then sets DEVICE_NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The driver did not make a queue the device needs ready.
    #[error("queue {0} is not ready")]
    QueueNotReady(u16),
    /// The device was given a different number of queues than it has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues it was given.
        got: usize,
    },
    /// A queue was processed before the device was activated.
    #[error("the device is not activated")]
    NotActivated,
    /// A queue index the device does not have.
    #[error("the device has no queue {0}")]
    NoSuchQueue(u16),
    /// Saved device state that does not fit this device.
    #[error("saved state does not fit: {0}")]
    BadState(String),
    /// The backend could not take up where the saved device was (a disk image's tables).
    #[error("cannot take over the backend: {0}")]
    Restore(#[source] std::io::Error),
    /// The device has no medium to change (only a cdrom drive has).
    #[error("the device is not a removable drive")]
    NotRemovable,
    /// The new medium is unusable.
    #[error("cannot use the new medium: {0}")]
    Medium(String),
    /// The driver broke a queue's ring (for instance an available index too far ahead).
    #[error("queue {index} is broken: {source}")]
    BrokenQueue {
        /// The queue.
        index: u16,
        /// What virtio-queue found.
        source: virtio_queue::Error,
    },
}

/// Everything a device needs to start working once the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct Activation {
    /// Guest memory, where the queues and the buffers live.
    pub mem: Arc<GuestMemoryMmap>,
    /// The queues as the driver configured them, one per entry of `queue_max_sizes`;
    /// every queue marked ready has been checked against guest memory with `Queue::is_valid`.
    pub queues: Vec<Queue>,
    /// The feature bits the driver acknowledged (a subset of `features`, with VIRTIO_F_VERSION_1).
    pub features: u64,
    /// The device's interrupt line, to signal used buffers.
    pub irq: Arc<IrqLine>,
}

/// A virtio device model, driven by a transport (virtio-mmio here).
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 for block, 1 for net, 5 for balloon).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue (powers of two, at most 32768); its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers (the transport adds VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;

    /// Reads the device configuration space at `offset`; bytes beyond its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space at `offset`; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device with the negotiated queues and features.
    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError>;

    /// Stops the device and returns it to its state before activation (the driver wrote 0 to Status).
    fn reset(&mut self);

    /// Handles the driver's notification for queue `index`: consumes available buffers and signals used ones.
    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError>;

    /// How far the device got in each of its active queues: `(next_avail,
    /// next_used)` per queue, empty while it is not activated (or for a device
    /// that cannot be saved: its queues then restart where the driver set them up).
    fn queue_positions(&self) -> Vec<(u16, u16)> {
        Vec::new()
    }

    /// Replaces the medium of a removable drive (a cdrom) with `file` (an empty file: no
    /// medium); returns the new capacity in 512-byte sectors. The caller then raises the
    /// configuration-change interrupt.
    fn change_media(&mut self, _file: std::fs::File) -> Result<u64, DeviceError> {
        Err(DeviceError::NotRemovable)
    }

    /// The device model's own state for a save file or a migration, taken
    /// while its transport is frozen (a disk flushes its writes here).
    fn save_state(&mut self) -> DeviceState {
        DeviceState::None
    }

    /// The disk behind a block device (a storage migration reads and writes it while the
    /// transport's lock keeps requests out); `None` for other devices.
    fn disk(&self) -> Option<&crate::block::Disk> {
        None
    }

    /// Makes what the device wrote durable, as the VMM ends (a qcow2 disk writes its cached
    /// tables back); nothing by default.
    fn flush(&mut self) {}

    /// Called on a migration's target once the guest runs there (a NIC
    /// announces its MAC, so that switches learn the new port).
    fn after_migration(&mut self) {}

    /// Applies what `save_state` returned, after the transport re-activated the device;
    /// refuses another device's state.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceError> {
        match state {
            DeviceState::None => Ok(()),
            other => Err(DeviceError::BadState(format!(
                "the saved state of {} does not fit this device",
                other.kind()
            ))),
        }
    }
}

/// `(next_avail, next_used)` of each queue.
pub fn positions<'a>(queues: impl IntoIterator<Item = &'a Queue>) -> Vec<(u16, u16)> {
    queues
        .into_iter()
        .map(|q| (q.next_avail(), q.next_used()))
        .collect()
}

/// Copies `config[offset..]` into `data`, filling whatever lies beyond `config` with zeros.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        if let (Some(dst), Some(src)) = (data.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
    }
}

/// Whether the driver wants an interrupt for the buffers just added to `queue`'s used ring:
/// the used_event test with VIRTIO_RING_F_EVENT_IDX, the VRING_AVAIL_F_NO_INTERRUPT flag without.
pub fn needs_interrupt(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<bool, virtio_queue::Error> {
    if queue.event_idx_enabled() {
        return queue.needs_notification(mem);
    }
    // The used ring writes must be visible before the flag is read.
    fence(Ordering::SeqCst);
    let flags: u16 = mem
        .load(
            vm_memory::GuestAddress(queue.avail_ring()),
            Ordering::Acquire,
        )
        .map_err(virtio_queue::Error::GuestMemory)?;
    Ok(u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_inside_partial_and_outside() {
        let config = [1u8, 2, 3, 4, 5, 6];
        let mut buf = [0xffu8; 4];
        read_config_bytes(&config, 1, &mut buf);
        assert_eq!(buf, [2, 3, 4, 5]);
        read_config_bytes(&config, 4, &mut buf);
        assert_eq!(buf, [5, 6, 0, 0]);
        read_config_bytes(&config, 6, &mut buf);
        assert_eq!(buf, [0, 0, 0, 0]);
        let mut buf = [0xffu8; 4];
        read_config_bytes(&config, u64::MAX, &mut buf);
        assert_eq!(buf, [0, 0, 0, 0]);
    }
}
