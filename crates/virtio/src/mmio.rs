//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): the register window a driver
//! uses to discover, negotiate with, configure and notify one device.
//!
//! Every register access comes from the guest and is treated as hostile: accesses of the wrong
//! width or alignment, to unknown offsets, or out of the order the specification requires are
//! ignored (writes) or read as zero (reads); nothing here panics.

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;

use crate::device::{Activation, VirtioDevice};
use crate::interrupt::{Interrupt, InterruptKind, IrqLine};
use crate::state::{DeviceState, QueueRecord, TransportState};
use crate::GuestMemoryMmap;

/// Size of the MMIO window of one device, in bytes.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// The MagicValue register: "virt" in little-endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The Version register: 2, the non-legacy virtio-mmio layout.
pub const MMIO_VERSION: u32 = 2;
/// The VendorID register: "RXEN" as little-endian bytes (0x4E45_5852).
pub const MMIO_VENDOR_ID: u32 = u32::from_le_bytes(*b"RXEN");
/// Offset of the QueueNotify register, where the VMM registers its ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the device configuration space in the window.
pub const CONFIG_SPACE_OFFSET: u64 = reg::VIRTIO_MMIO_CONFIG as u64;

const STATUS_ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const STATUS_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const STATUS_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const STATUS_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const STATUS_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const STATUS_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;

/// Errors building a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The device declared a queue size virtio-queue does not accept.
    #[error("queue {index} has an invalid maximum size {size}")]
    BadQueueSize {
        /// The queue.
        index: usize,
        /// Its declared maximum size.
        size: u16,
    },
    /// The device declared more queues than a 32-bit QueueSel can address sensibly.
    #[error("the device declares {0} queues")]
    TooManyQueues(usize),
}

/// Saved transport state that cannot be applied here.
#[derive(Debug, thiserror::Error)]
#[error("virtio device state: {0}")]
pub struct MmioStateError(pub String);

/// A virtio-mmio (version 2) transport in front of one device.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemoryMmap>,
    irq: Arc<IrqLine>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    config_generation: u32,
    activated: bool,
    /// While frozen (for a save or migration) notifications are only noted.
    frozen: bool,
    /// Queues notified while frozen (bit per queue index).
    missed: u64,
}

impl MmioTransport {
    /// Builds the transport for `device`, whose queues will live in `mem` and whose
    /// interrupts go through `interrupt`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Box<dyn Interrupt>,
    ) -> Result<Self, MmioError> {
        let sizes = device.queue_max_sizes();
        if sizes.len() > usize::from(u16::MAX) {
            return Err(MmioError::TooManyQueues(sizes.len()));
        }
        let queues = sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                Queue::new(size).map_err(|_| MmioError::BadQueueSize { index, size })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            irq: Arc::new(IrqLine::new(interrupt)),
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            config_generation: 0,
            activated: false,
            frozen: false,
            missed: 0,
        })
    }

    /// Handles a guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_SPACE_OFFSET {
            if offset < MMIO_WINDOW_SIZE && matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            }
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handles a guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if offset < MMIO_WINDOW_SIZE && matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }

    /// Delivers a driver notification for `queue` (a QueueNotify write or its ioeventfd).
    pub fn notify(&mut self, queue: u16) {
        if !self.activated
            || self.status & STATUS_NEEDS_RESET != 0
            || usize::from(queue) >= self.queues.len()
        {
            return;
        }
        if self.frozen {
            self.missed |= 1u64.checked_shl(u32::from(queue)).unwrap_or(0);
            return;
        }
        if let Err(e) = self.device.process_queue(queue) {
            tracing::warn!("virtio device type {}: {e}", self.device.device_type());
            self.needs_reset();
        }
    }

    /// Tells the driver that the device configuration space changed: bumps ConfigGeneration
    /// and raises a configuration interrupt once the driver is running.
    pub fn config_changed(&mut self) -> io::Result<()> {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & STATUS_DRIVER_OK != 0 {
            self.irq.signal(InterruptKind::Config)?;
        }
        Ok(())
    }

    /// Stops the device from touching guest memory: notifications (from the
    /// driver, the TAP, timers) are noted, not processed, until [`Self::thaw`].
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// Lets the device run again and processes what was noted meanwhile.
    pub fn thaw(&mut self) {
        self.frozen = false;
        let missed = std::mem::take(&mut self.missed);
        for q in 0..self.queues.len().min(64) {
            if missed & (1u64 << q) != 0 {
                if let Ok(q) = u16::try_from(q) {
                    self.notify(q);
                }
            }
        }
    }

    /// Makes what the device wrote durable (see [`VirtioDevice::flush`]): the VMM is ending.
    pub fn flush_device(&mut self) {
        self.device.flush();
    }

    /// The registers, queues and device state, for a save file or migration.
    /// Call it frozen, so that the queues' progress matches guest memory.
    pub fn save_state(&mut self) -> TransportState {
        let live = if self.activated {
            self.device.queue_positions()
        } else {
            Vec::new()
        };
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (next_avail, next_used) = live
                    .get(i)
                    .copied()
                    .unwrap_or((q.next_avail(), q.next_used()));
                QueueRecord {
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                    next_avail,
                    next_used,
                }
            })
            .collect();
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            driver_features: self.driver_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            shm_sel: self.shm_sel,
            config_generation: self.config_generation,
            activated: self.activated,
            interrupt_status: self.irq.status(),
            queues,
            device: if self.activated {
                self.device.save_state()
            } else {
                DeviceState::None
            },
        }
    }

    /// Puts the transport and its device where `st` says the driver left
    /// them (on a fresh transport, before the guest runs): re-activates the
    /// device with the saved queue positions, re-raises a pending interrupt
    /// and processes every queue once for notifications lost on the way.
    pub fn restore_state(&mut self, st: &TransportState) -> Result<(), MmioStateError> {
        let kind = self.device.device_type();
        if st.device_type != kind {
            return Err(MmioStateError(format!(
                "saved device type {} is not this device's ({kind})",
                st.device_type
            )));
        }
        if st.queues.len() != self.queues.len() {
            return Err(MmioStateError(format!(
                "{} saved queues for a device with {}",
                st.queues.len(),
                self.queues.len()
            )));
        }
        Self::check_saved_status(st)?;
        let event_idx = st.driver_features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(st.queues.len());
        for (i, (q, r)) in self.queues.iter().zip(&st.queues).enumerate() {
            let state = QueueState {
                max_size: q.max_size(),
                next_avail: r.next_avail,
                next_used: r.next_used,
                event_idx_enabled: event_idx,
                size: r.size,
                ready: r.ready,
                desc_table: r.desc_table,
                avail_ring: r.avail_ring,
                used_ring: r.used_ring,
            };
            let queue = Queue::try_from(state).map_err(|e| {
                MmioStateError(format!(
                    "queue {i}: size {} (at most {}, a power of two) or ring addresses: {e}",
                    r.size,
                    q.max_size()
                ))
            })?;
            if r.ready && st.status & STATUS_FEATURES_OK == 0 {
                return Err(MmioStateError(format!(
                    "queue {i} is ready before the features were negotiated"
                )));
            }
            // An active device's ready queues passed the check at DRIVER_OK.
            if st.activated && r.ready && !queue.is_valid(self.mem.as_ref()) {
                return Err(MmioStateError(format!(
                    "queue {i}: its rings (descriptors at {:#x}, available at {:#x}, used at {:#x}, \
                     {} entries) are not in guest memory",
                    r.desc_table, r.avail_ring, r.used_ring, r.size
                )));
            }
            queues.push(queue);
        }
        self.reset();
        self.queues = queues;
        self.status = st.status;
        self.driver_features = st.driver_features;
        if !self.features_acceptable() && st.status & STATUS_FEATURES_OK != 0 {
            return Err(MmioStateError(format!(
                "saved features {:#x} are not offered here",
                st.driver_features
            )));
        }
        self.device_features_sel = st.device_features_sel;
        self.driver_features_sel = st.driver_features_sel;
        self.queue_sel = st.queue_sel;
        self.shm_sel = st.shm_sel;
        self.config_generation = st.config_generation;
        if st.activated {
            self.activate();
            if !self.activated {
                return Err(MmioStateError(
                    "the device did not accept its saved queues".into(),
                ));
            }
            self.device
                .restore_state(&st.device)
                .map_err(|e| MmioStateError(e.to_string()))?;
        }
        if st.interrupt_status != 0 {
            for kind in [InterruptKind::Queue, InterruptKind::Config] {
                if st.interrupt_status & kind.status_bit() != 0 {
                    self.irq
                        .signal(kind)
                        .map_err(|e| MmioStateError(format!("cannot raise the interrupt: {e}")))?;
                }
            }
        }
        if self.activated {
            for q in 0..self.queues.len() {
                if let Ok(q) = u16::try_from(q) {
                    self.notify(q);
                }
            }
        }
        Ok(())
    }

    /// Refuses saved registers the driver could not have brought the transport
    /// to: status bits beyond the eight, an initialization step without the one
    /// before it, an active device without DRIVER_OK, interrupt bits that do not exist.
    fn check_saved_status(st: &TransportState) -> Result<(), MmioStateError> {
        let status = st.status;
        if status > 0xff {
            return Err(MmioStateError(format!(
                "status {status:#x} has bits beyond the eight there are"
            )));
        }
        let steps = [
            (STATUS_DRIVER, STATUS_ACKNOWLEDGE),
            (STATUS_FEATURES_OK, STATUS_DRIVER),
            (STATUS_DRIVER_OK, STATUS_FEATURES_OK),
        ];
        if steps
            .iter()
            .any(|&(bit, needs)| status & bit != 0 && status & needs == 0)
        {
            return Err(MmioStateError(format!(
                "status {status:#x} has an initialization step without the one before it"
            )));
        }
        if st.activated && status & STATUS_DRIVER_OK == 0 {
            return Err(MmioStateError(format!(
                "the device is active but status {status:#x} lacks DRIVER_OK"
            )));
        }
        let known = InterruptKind::Queue.status_bit() | InterruptKind::Config.status_bit();
        if st.interrupt_status & !known != 0 {
            return Err(MmioStateError(format!(
                "interrupt status {:#x} has bits that do not exist",
                st.interrupt_status
            )));
        }
        Ok(())
    }

    /// Tells the device the guest now runs on this host after a migration.
    pub fn after_migration(&mut self) {
        if self.activated {
            self.device.after_migration();
        }
    }

    /// The Status register as the driver sees it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device was activated (DRIVER_OK accepted) and not reset since.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device behind the transport, mutably (for VMM-side events such as a tap being readable).
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// The device's interrupt line (InterruptStatus and delivery).
    pub fn irq(&self) -> &Arc<IrqLine> {
        &self.irq
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | (1u64 << VIRTIO_F_VERSION_1)
    }

    fn selected_queue(&self) -> Option<&Queue> {
        usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get(i))
    }

    /// The selected queue, if the driver may configure it now: after FEATURES_OK, before
    /// DRIVER_OK, and (unless `even_if_ready`) while the queue is not ready.
    fn configurable_queue(&mut self, even_if_ready: bool) -> Option<&mut Queue> {
        if self.status & STATUS_FEATURES_OK == 0 || self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        let index = usize::try_from(self.queue_sel).ok()?;
        let queue = self.queues.get_mut(index)?;
        if queue.ready() && !even_if_ready {
            return None;
        }
        Some(queue)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let Ok(offset) = u32::try_from(offset) else {
            return 0;
        };
        match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            reg::VIRTIO_MMIO_VERSION => MMIO_VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            reg::VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| q.max_size().into())
            }
            reg::VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.irq.status(),
            reg::VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: their length reads as all ones ("does not exist").
            reg::VIRTIO_MMIO_SHM_LEN_LOW
            | reg::VIRTIO_MMIO_SHM_LEN_HIGH
            | reg::VIRTIO_MMIO_SHM_BASE_LOW
            | reg::VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            reg::VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let Ok(offset) = u32::try_from(offset) else {
            return;
        };
        match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            reg::VIRTIO_MMIO_QUEUE_NUM => {
                if let (Some(queue), Ok(size)) =
                    (self.configurable_queue(false), u16::try_from(value))
                {
                    // Sizes that are zero, too large or not a power of two are ignored.
                    let _ = queue.try_set_size(size);
                }
            }
            reg::VIRTIO_MMIO_QUEUE_READY => {
                if let Some(queue) = self.configurable_queue(true) {
                    match value {
                        0 => queue.set_ready(false),
                        1 => queue.set_ready(true),
                        _ => {}
                    }
                }
            }
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => {
                if let Ok(queue) = u16::try_from(value) {
                    self.notify(queue);
                }
            }
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.irq.ack(value),
            reg::VIRTIO_MMIO_STATUS => self.write_status(value),
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW
            | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | reg::VIRTIO_MMIO_QUEUE_USED_LOW
            | reg::VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_address(offset, value),
            reg::VIRTIO_MMIO_SHM_SEL => self.shm_sel = value,
            _ => {}
        }
    }

    /// Writes half of one of the selected queue's ring addresses. Misaligned addresses are
    /// ignored; whether the rings fit in guest memory is checked at DRIVER_OK.
    fn write_queue_address(&mut self, offset: u32, value: u32) {
        let Some(queue) = self.configurable_queue(false) else {
            return;
        };
        let high = offset % 8 == 4;
        let merge = |old: u64| {
            if high {
                (old & 0xffff_ffff) | (u64::from(value) << 32)
            } else {
                (old & !0xffff_ffff) | u64::from(value)
            }
        };
        let _ = match offset & !4 {
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW => {
                queue.try_set_desc_table_address(GuestAddress(merge(queue.desc_table())))
            }
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                queue.try_set_avail_ring_address(GuestAddress(merge(queue.avail_ring())))
            }
            _ => queue.try_set_used_ring_address(GuestAddress(merge(queue.used_ring()))),
        };
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features may only be written between DRIVER and FEATURES_OK.
        if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
            return;
        }
        let value = u64::from(value);
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            _ => {}
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver cannot set NEEDS_RESET (the device's bit) and cannot clear bits other
        // than by writing 0; a write that would clear a bit is ignored.
        let requested = value & !STATUS_NEEDS_RESET;
        let current = self.status & !STATUS_NEEDS_RESET;
        if requested & current != current || requested > 0xff {
            return;
        }
        let added = requested & !current;
        if added & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
        }
        // The initialization steps, each requiring the previous one (virtio 1.2 §3.1.1).
        let steps = [
            (STATUS_ACKNOWLEDGE, 0),
            (STATUS_DRIVER, STATUS_ACKNOWLEDGE),
            (STATUS_FEATURES_OK, STATUS_DRIVER),
            (STATUS_DRIVER_OK, STATUS_FEATURES_OK),
        ];
        for (bit, needs) in steps {
            if added & bit == 0 {
                continue;
            }
            if self.status & needs != needs {
                return;
            }
            match bit {
                STATUS_FEATURES_OK if !self.features_acceptable() => return,
                STATUS_DRIVER_OK => {
                    self.status |= STATUS_DRIVER_OK;
                    self.activate();
                    return;
                }
                _ => self.status |= bit,
            }
        }
    }

    /// Whether the driver's features are a subset of the offered ones and include VERSION_1.
    fn features_acceptable(&self) -> bool {
        let offered = self.offered_features();
        self.driver_features & !offered == 0
            && self.driver_features & (1u64 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        if self.status & STATUS_FAILED != 0 {
            return;
        }
        let mem = self.mem.as_ref();
        if let Some(index) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(mem))
        {
            tracing::warn!(
                "virtio device type {}: queue {index} does not fit in guest memory",
                self.device.device_type()
            );
            self.needs_reset();
            return;
        }
        let event_idx = self.driver_features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for queue in &self.queues {
            // A copy through QueueState: the transport keeps its own for register reads.
            match Queue::try_from(queue.state()) {
                Ok(mut copy) => {
                    copy.set_event_idx(event_idx);
                    queues.push(copy);
                }
                Err(e) => {
                    tracing::warn!("virtio queue copy failed: {e}");
                    self.needs_reset();
                    return;
                }
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            features: self.driver_features,
            irq: self.irq.clone(),
        };
        match self.device.activate(activation) {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::warn!("virtio device type {}: {e}", self.device.device_type());
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            if let Err(e) = self.irq.signal(InterruptKind::Config) {
                tracing::warn!("cannot raise the configuration interrupt: {e}");
            }
        }
    }

    fn reset(&mut self) {
        if self.activated || self.status != 0 {
            self.device.reset();
        }
        for queue in &mut self.queues {
            queue.reset();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        self.activated = false;
        self.frozen = false;
        self.missed = 0;
        self.irq.clear();
    }
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceError;
    use crate::testutil::*;
    use std::sync::Mutex;
    use virtio_queue::QueueT;

    const QUEUE_MAX: [u16; 2] = [16, 8];
    const OFFERED: u64 = (1 << 3) | (1 << 40);
    const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

    /// A queue as the device received it: size, ready, desc, avail, used, event_idx.
    type QueueSeen = (u16, bool, u64, u64, u64, bool);

    /// What the fake device saw.
    #[derive(Default)]
    struct Seen {
        activations: Vec<(u64, Vec<QueueSeen>)>,
        resets: usize,
        processed: Vec<u16>,
        config_writes: Vec<(u64, Vec<u8>)>,
        fail_activate: bool,
        fail_process: bool,
        irq: Option<Arc<IrqLine>>,
    }

    struct Fake(Arc<Mutex<Seen>>);

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &QUEUE_MAX
        }
        fn features(&self) -> u64 {
            OFFERED
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let config: Vec<u8> = (1..=12).collect();
            crate::device::read_config_bytes(&config, offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.0
                .lock()
                .expect("lock")
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
            let mut seen = self.0.lock().expect("lock");
            if seen.fail_activate {
                return Err(DeviceError::QueueNotReady(0));
            }
            let queues = a
                .queues
                .iter()
                .map(|q| {
                    (
                        q.size(),
                        q.ready(),
                        q.desc_table(),
                        q.avail_ring(),
                        q.used_ring(),
                        q.event_idx_enabled(),
                    )
                })
                .collect();
            seen.activations.push((a.features, queues));
            seen.irq = Some(a.irq);
            Ok(())
        }
        fn reset(&mut self) {
            self.0.lock().expect("lock").resets += 1;
        }
        fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
            let mut seen = self.0.lock().expect("lock");
            if seen.fail_process {
                return Err(DeviceError::NoSuchQueue(index));
            }
            seen.processed.push(index);
            if let Some(irq) = &seen.irq {
                irq.signal(InterruptKind::Queue).expect("signal");
            }
            Ok(())
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Seen>>, Recorder) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let rec = Recorder::default();
        let t = MmioTransport::new(
            Box::new(Fake(seen.clone())),
            guest_memory(),
            Box::new(rec.clone()),
        )
        .expect("transport");
        (t, seen, rec)
    }

    fn status(t: &mut MmioTransport) -> u32 {
        rd(t, reg::VIRTIO_MMIO_STATUS)
    }

    /// Negotiates, sets up queue 0 at valid addresses, and sets DRIVER_OK.
    fn bring_up(t: &mut MmioTransport) {
        assert!(negotiate(t, VERSION_1 | (1 << 3)));
        setup_queue(t, 0, 16, 0x1000, 0x2000, 0x3000);
        driver_ok(t);
    }

    #[test]
    fn the_transport_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<MmioTransport>();
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<IrqLine>();
    }

    #[test]
    fn identification_registers() {
        let (mut t, _, _) = transport();
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_VERSION), 2);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_VENDOR_ID), 0x4E45_5852);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_CONFIG_GENERATION), 0);
        assert_eq!(status(&mut t), 0);
    }

    #[test]
    fn bad_widths_and_offsets_read_zero_and_writes_are_ignored() {
        let (mut t, _, _) = transport();
        let mut two = [0xffu8; 2];
        t.read(0, &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0xffu8; 4];
        t.read(2, &mut four);
        assert_eq!(four, [0; 4]);
        t.read(0x1000, &mut four);
        assert_eq!(four, [0; 4]);
        t.read(u64::MAX, &mut four);
        assert_eq!(four, [0; 4]);
        let mut three = [0xffu8; 3];
        t.read(0x100, &mut three);
        assert_eq!(three, [0; 3]);
        let mut empty = [0u8; 0];
        t.read(0x70, &mut empty);
        // A 1-byte Status write and an unaligned one change nothing.
        t.write(0x70, &[1]);
        t.write(0x71, &1u32.to_le_bytes());
        t.write(u64::MAX, &1u32.to_le_bytes());
        assert_eq!(status(&mut t), 0);
        // Read-only registers ignore writes.
        wr(&mut t, reg::VIRTIO_MMIO_MAGIC_VALUE, 0);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    }

    #[test]
    fn device_features_are_offered_with_version_1() {
        let (mut t, _, _) = transport();
        assert_eq!(device_features(&mut t), OFFERED | VERSION_1);
        wr(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES), 0);
    }

    #[test]
    fn features_ok_refuses_unoffered_bits_and_requires_version_1() {
        let (mut t, _, _) = transport();
        assert!(!negotiate(&mut t, VERSION_1 | (1 << 4)));
        assert!(!negotiate(&mut t, 1 << 3));
        assert!(negotiate(&mut t, VERSION_1 | (1 << 40)));
        assert!(negotiate(&mut t, VERSION_1));
    }

    #[test]
    fn status_steps_must_come_in_order_and_bits_cannot_be_cleared() {
        let (mut t, _, _) = transport();
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(status(&mut t), 0);
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, 1);
        wr(
            &mut t,
            reg::VIRTIO_MMIO_STATUS,
            1 | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        assert_eq!(status(&mut t), 1);
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, 1 | 2);
        assert_eq!(status(&mut t), 3);
        // Clearing ACKNOWLEDGE is refused.
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, 2);
        assert_eq!(status(&mut t), 3);
        // DRIVER_OK before FEATURES_OK is refused.
        wr(
            &mut t,
            reg::VIRTIO_MMIO_STATUS,
            3 | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert_eq!(status(&mut t), 3);
        // The driver cannot set NEEDS_RESET itself; FAILED is always accepted.
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, 3 | STATUS_NEEDS_RESET);
        assert_eq!(status(&mut t), 3);
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, 3 | STATUS_FAILED);
        assert_eq!(status(&mut t), 3 | STATUS_FAILED);
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, 0x1_0003);
        assert_eq!(status(&mut t), 3 | STATUS_FAILED);
    }

    #[test]
    fn driver_features_are_only_taken_between_driver_and_features_ok() {
        let (mut t, seen, _) = transport();
        // Before DRIVER: ignored.
        wr(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES, 1);
        bring_up(&mut t);
        // After FEATURES_OK: ignored.
        wr(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES, 1 << 8);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.activations.len(), 1);
        assert_eq!(seen.activations[0].0, VERSION_1 | (1 << 3));
    }

    #[test]
    fn queue_setup_reaches_the_device_at_driver_ok() {
        let (mut t, seen, rec) = transport();
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 2);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        // Queue writes before FEATURES_OK are ignored.
        setup_queue(&mut t, 0, 4, 0x5000, 0x6000, 0x7000);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 0);

        assert!(!negotiate(
            &mut t,
            VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX)
        ));
        assert!(negotiate(&mut t, VERSION_1));
        // A size that is not a power of two, or above the maximum, is ignored.
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 6);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 16);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 0x1_0004);
        setup_queue(&mut t, 0, 8, 0x1_0000, 0x1_1000, 0x1_2000);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 1);
        // Once ready, the queue's size and addresses are frozen.
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 2);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x9000);
        driver_ok(&mut t);
        assert!(t.is_activated());
        assert_eq!(status(&mut t), 0xf);
        // After DRIVER_OK queue registers are frozen too.
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 1);

        let seen = seen.lock().expect("lock");
        assert_eq!(
            seen.activations,
            vec![(
                VERSION_1,
                vec![
                    (8, true, 0x1_0000, 0x1_1000, 0x1_2000, false),
                    (8, false, 0, 0, 0, false)
                ]
            )]
        );
        assert!(rec.seen().is_empty());
    }

    #[test]
    fn queue_addresses_combine_halves_and_ignore_misalignment() {
        let (mut t, seen, _) = transport();
        assert!(negotiate(&mut t, VERSION_1));
        setup_queue(&mut t, 0, 16, 0x1_0000_1000, 0x2000, 0x3000);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x4000);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x4008);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x5000);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x5001);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_USED_HIGH, 2);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, 0x6000);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, 0x6002);
        // Queue 0 is beyond guest memory: nothing is activated...
        driver_ok(&mut t);
        assert_ne!(status(&mut t) & STATUS_NEEDS_RESET, 0);
        // ...so look at the addresses through a second, valid bring-up of queue 1's values.
        assert!(seen.lock().expect("lock").activations.is_empty());
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
        assert!(negotiate(&mut t, VERSION_1));
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x4000);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x4008);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x5000);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x5001);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_USED_HIGH, 2);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, 0x6000);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, 0x6002);
        driver_ok(&mut t);
        let seen = seen.lock().expect("lock");
        let queue1 = seen.activations[0].1[1];
        assert_eq!(
            (queue1.2, queue1.3, queue1.4),
            (0x4000, 0x5000, 0x2_0000_6000)
        );
    }

    #[test]
    fn queue_outside_memory_sets_needs_reset_instead_of_activating() {
        let (mut t, seen, rec) = transport();
        assert!(negotiate(&mut t, VERSION_1));
        setup_queue(&mut t, 0, 16, MEM_SIZE - 0x10, 0x2000, 0x3000);
        driver_ok(&mut t);
        assert!(!t.is_activated());
        assert_eq!(
            status(&mut t),
            0xf | STATUS_NEEDS_RESET,
            "DRIVER_OK is kept, NEEDS_RESET added"
        );
        assert_eq!(rec.seen(), vec![InterruptKind::Config]);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert!(seen.lock().expect("lock").activations.is_empty());
        // Notifications are ignored; a reset recovers.
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(seen.lock().expect("lock").processed.is_empty());
        bring_up(&mut t);
        assert!(t.is_activated());
        assert_eq!(status(&mut t), 0xf);
    }

    #[test]
    fn failed_activation_sets_needs_reset() {
        let (mut t, seen, rec) = transport();
        seen.lock().expect("lock").fail_activate = true;
        bring_up(&mut t);
        assert!(!t.is_activated());
        assert_ne!(status(&mut t) & STATUS_NEEDS_RESET, 0);
        assert_eq!(rec.seen(), vec![InterruptKind::Config]);
    }

    #[test]
    fn notify_interrupt_status_and_ack() {
        let (mut t, seen, rec) = transport();
        // Before DRIVER_OK a notification is ignored.
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        t.notify(0);
        assert!(seen.lock().expect("lock").processed.is_empty());
        bring_up(&mut t);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        t.notify(1);
        // Queues the device does not have are ignored.
        t.notify(2);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0x1_0000);
        assert_eq!(seen.lock().expect("lock").processed, vec![0, 1]);
        assert_eq!(rec.seen(), vec![InterruptKind::Queue, InterruptKind::Queue]);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        wr(&mut t, reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn frozen_notifications_wait_for_thaw() {
        let (mut t, seen, _) = transport();
        bring_up(&mut t);
        t.freeze();
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        t.notify(0);
        assert!(seen.lock().expect("lock").processed.is_empty());
        t.thaw();
        assert_eq!(seen.lock().expect("lock").processed, vec![0]);
    }

    #[test]
    fn saved_state_rebuilds_an_active_transport() {
        let (mut t, _, _) = transport();
        bring_up(&mut t);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        let st = t.save_state();
        assert!(st.activated);
        assert_eq!(st.interrupt_status, 1);
        assert_eq!(st.queues[0].size, 16);
        assert_eq!(st.queues[0].desc_table, 0x1000);
        let json = serde_json::to_string(&st).expect("json");
        let back: TransportState = serde_json::from_str(&json).expect("parse");
        let (mut u, seen, rec) = transport();
        u.restore_state(&back).expect("restore");
        assert_eq!(status(&mut u), status(&mut t));
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.activations.len(), 1);
        assert_eq!(seen.activations[0].1[0].0, 16);
        assert_eq!(seen.activations[0].1[0].2, 0x1000);
        // Every queue is processed once for notifications lost on the way,
        // and the pending interrupt is raised again.
        assert_eq!(seen.processed, vec![0, 1]);
        assert!(rec.seen().contains(&InterruptKind::Queue));
        // Another device type or shape is refused.
        let mut other = back.clone();
        other.device_type = 2;
        assert!(transport().0.restore_state(&other).is_err());
        let mut other = back.clone();
        other.queues.pop();
        assert!(transport().0.restore_state(&other).is_err());
        // A device that keeps nothing of its own takes no other device's state.
        let mut other = back.clone();
        other.device = DeviceState::Balloon(crate::state::BalloonState::default());
        let e = transport().0.restore_state(&other).expect_err("refused");
        assert!(
            e.to_string()
                .contains("the saved state of a balloon does not fit this device"),
            "{e}"
        );
        // States the driver could not have brought the transport to.
        let refused = |edit: &dyn Fn(&mut TransportState), why: &str| {
            let mut other = back.clone();
            edit(&mut other);
            let (mut u, seen, _) = transport();
            let e = u.restore_state(&other).expect_err("refused");
            assert!(e.to_string().contains(why), "{e} (expected {why})");
            assert!(seen.lock().expect("lock").activations.is_empty());
        };
        refused(&|s| s.queues[0].size = 12, "queue 0: size 12");
        refused(&|s| s.queues[1].size = 1024, "queue 1: size 1024");
        refused(&|s| s.queues[0].size = 0, "queue 0: size 0");
        refused(&|s| s.queues[0].desc_table = 0x1001, "queue 0: size 16");
        refused(
            &|s| s.queues[0].used_ring = 0x1_0000_0000,
            "queue 0: its rings",
        );
        refused(
            &|s| s.queues[0].desc_table = !0xf,
            "are not in guest memory",
        );
        refused(&|s| s.status |= 0x100, "beyond the eight");
        refused(
            &|s| s.status &= !STATUS_FEATURES_OK,
            "an initialization step without the one before it",
        );
        refused(&|s| s.status &= !STATUS_DRIVER_OK, "lacks DRIVER_OK");
        refused(&|s| s.interrupt_status = 4, "interrupt status 0x4");
        refused(
            &|s| {
                s.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
                s.activated = false;
            },
            "queue 0 is ready before the features were negotiated",
        );
    }

    #[test]
    fn process_error_sets_needs_reset_and_stops_notifications() {
        let (mut t, seen, rec) = transport();
        bring_up(&mut t);
        seen.lock().expect("lock").fail_process = true;
        t.notify(0);
        assert_ne!(status(&mut t) & STATUS_NEEDS_RESET, 0);
        assert_eq!(rec.seen(), vec![InterruptKind::Config]);
        seen.lock().expect("lock").fail_process = false;
        t.notify(0);
        assert!(seen.lock().expect("lock").processed.is_empty());
    }

    #[test]
    fn reset_clears_everything() {
        let (mut t, seen, _) = transport();
        bring_up(&mut t);
        t.notify(0);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(status(&mut t), 0);
        assert!(!t.is_activated());
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(seen.lock().expect("lock").resets, 1);
        // Queue 0 comes back with its default size: activation sees 16, not the old value.
        assert!(negotiate(&mut t, VERSION_1));
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
        driver_ok(&mut t);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.activations.len(), 2);
        assert_eq!(seen.activations[1].1[0].0, 16);
    }

    #[test]
    fn config_space_reads_and_writes() {
        let (mut t, seen, rec) = transport();
        let mut b1 = [0u8; 1];
        t.read(0x100, &mut b1);
        assert_eq!(b1, [1]);
        let mut b2 = [0u8; 2];
        t.read(0x102, &mut b2);
        assert_eq!(b2, [3, 4]);
        let mut b4 = [0u8; 4];
        t.read(0x108, &mut b4);
        assert_eq!(b4, [9, 10, 11, 12]);
        let mut b8 = [0u8; 8];
        t.read(0x108, &mut b8);
        assert_eq!(b8, [9, 10, 11, 12, 0, 0, 0, 0]);
        t.read(0xffc, &mut b4);
        assert_eq!(b4, [0; 4]);
        t.write(0x104, &[7, 7]);
        t.write(0x104, &[7, 7, 7]);
        assert_eq!(
            seen.lock().expect("lock").config_writes,
            vec![(4, vec![7, 7])]
        );
        // A configuration change bumps the generation; the interrupt waits for DRIVER_OK.
        t.config_changed().expect("config changed");
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_CONFIG_GENERATION), 1);
        assert!(rec.seen().is_empty());
        bring_up(&mut t);
        t.config_changed().expect("config changed");
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_CONFIG_GENERATION), 2);
        assert_eq!(rec.seen(), vec![InterruptKind::Config]);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    }

    #[test]
    fn event_idx_reaches_the_queues_when_negotiated() {
        struct EventIdx(Fake);
        impl VirtioDevice for EventIdx {
            fn device_type(&self) -> u32 {
                self.0.device_type()
            }
            fn queue_max_sizes(&self) -> &[u16] {
                self.0.queue_max_sizes()
            }
            fn features(&self) -> u64 {
                1 << VIRTIO_RING_F_EVENT_IDX
            }
            fn read_config(&self, offset: u64, data: &mut [u8]) {
                self.0.read_config(offset, data)
            }
            fn write_config(&mut self, offset: u64, data: &[u8]) {
                self.0.write_config(offset, data)
            }
            fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
                self.0.activate(a)
            }
            fn reset(&mut self) {
                self.0.reset()
            }
            fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
                self.0.process_queue(index)
            }
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut t = MmioTransport::new(
            Box::new(EventIdx(Fake(seen.clone()))),
            guest_memory(),
            Box::new(Recorder::default()),
        )
        .expect("transport");
        assert!(negotiate(
            &mut t,
            VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX)
        ));
        setup_queue(&mut t, 0, 16, 0x1000, 0x2000, 0x3000);
        driver_ok(&mut t);
        assert!(seen.lock().expect("lock").activations[0].1[0].5);
    }

    #[test]
    fn bad_queue_sizes_are_refused_at_construction() {
        struct Bad;
        impl VirtioDevice for Bad {
            fn device_type(&self) -> u32 {
                1
            }
            fn queue_max_sizes(&self) -> &[u16] {
                &[3]
            }
            fn features(&self) -> u64 {
                0
            }
            fn read_config(&self, _: u64, _: &mut [u8]) {}
            fn write_config(&mut self, _: u64, _: &[u8]) {}
            fn activate(&mut self, _: Activation) -> Result<(), DeviceError> {
                Ok(())
            }
            fn reset(&mut self) {}
            fn process_queue(&mut self, _: u16) -> Result<(), DeviceError> {
                Ok(())
            }
        }
        let r = MmioTransport::new(Box::new(Bad), guest_memory(), Box::new(Recorder::default()));
        assert!(matches!(
            r,
            Err(MmioError::BadQueueSize { index: 0, size: 3 })
        ));
    }

    fn arb_queue() -> impl proptest::strategy::Strategy<Value = QueueRecord> {
        use proptest::prelude::*;
        (
            prop_oneof![Just(8u16), Just(16), any::<u16>()],
            any::<bool>(),
            prop_oneof![Just(0x1000u64), 0u64..MEM_SIZE + 0x2000, any::<u64>()],
            prop_oneof![Just(0x2000u64), 0u64..MEM_SIZE + 0x2000, any::<u64>()],
            prop_oneof![Just(0x3000u64), 0u64..MEM_SIZE + 0x2000, any::<u64>()],
            any::<u16>(),
            any::<u16>(),
        )
            .prop_map(
                |(size, ready, desc_table, avail_ring, used_ring, next_avail, next_used)| {
                    QueueRecord {
                        size,
                        ready,
                        desc_table,
                        avail_ring,
                        used_ring,
                        next_avail,
                        next_used,
                    }
                },
            )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Random saved transport states: refused or restored, never a panic;
        /// what is restored is a state the driver could have reached.
        #[test]
        fn random_saved_states_never_panic(
            status in proptest::prop_oneof![0u32..0x100, proptest::prelude::any::<u32>()],
            activated in proptest::prelude::any::<bool>(),
            features in proptest::prop_oneof![
                proptest::strategy::Just(1u64 << VIRTIO_F_VERSION_1),
                proptest::prelude::any::<u64>()
            ],
            interrupt_status in 0u32..8,
            queues in proptest::collection::vec(arb_queue(), 2..=2),
        ) {
            let st = TransportState {
                device_type: 42,
                status,
                driver_features: features,
                device_features_sel: 0,
                driver_features_sel: 0,
                queue_sel: 0,
                shm_sel: 0,
                config_generation: 0,
                activated,
                interrupt_status,
                queues: queues.clone(),
                device: DeviceState::None,
            };
            let (mut t, _, _) = transport();
            if t.restore_state(&st).is_ok() {
                proptest::prop_assert!(status <= 0xff);
                proptest::prop_assert!(!activated || status & STATUS_DRIVER_OK != 0);
                for (q, max) in queues.iter().zip(QUEUE_MAX) {
                    proptest::prop_assert!(q.size.is_power_of_two() && q.size <= max);
                    proptest::prop_assert!(!q.ready || status & STATUS_FEATURES_OK != 0);
                }
            }
        }
    }
}
