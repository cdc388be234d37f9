//! A device's state as it travels in save files and migration streams: the
//! virtio-mmio registers, each queue's configuration and progress, and what
//! the device model itself keeps. Every piece is a struct of its own, and
//! none takes fields it does not know: a renamed field fails to compile, or a
//! restore with a clear message, never silently.

use serde::{Deserialize, Serialize};

/// One virtqueue: where the driver put it and how far the device got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueRecord {
    /// QueueSize as the driver set it.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Guest physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest physical address of the available ring.
    pub avail_ring: u64,
    /// Guest physical address of the used ring.
    pub used_ring: u64,
    /// The next available-ring entry the device will take.
    pub next_avail: u16,
    /// The next used-ring entry the device will fill.
    pub next_used: u16,
}

/// Everything needed to rebuild a virtio-mmio transport and its device
/// where the driver left them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportState {
    /// The virtio device ID, checked on restore.
    pub device_type: u32,
    /// The Status register.
    pub status: u32,
    /// The features the driver acknowledged.
    pub driver_features: u64,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// SHMSel.
    pub shm_sel: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Whether the device was activated (DRIVER_OK reached it).
    pub activated: bool,
    /// InterruptStatus bits not yet acknowledged.
    pub interrupt_status: u32,
    /// One record per queue.
    pub queues: Vec<QueueRecord>,
    /// The device model's own state (see each device's `save_state`);
    /// [`DeviceState::None`] while the device is not activated.
    #[serde(default)]
    pub device: DeviceState,
}

/// What a device model keeps beyond its queues, one variant per device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceState {
    /// Nothing: the device is not activated, or keeps nothing of its own.
    #[default]
    None,
    /// A virtio-blk disk.
    Block(BlockState),
    /// A virtio-net NIC.
    Net(NetState),
    /// The virtio balloon.
    Balloon(BalloonState),
}

impl DeviceState {
    /// The device the state belongs to, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceState::None => "no device",
            DeviceState::Block(_) => "a disk",
            DeviceState::Net(_) => "a NIC",
            DeviceState::Balloon(_) => "a balloon",
        }
    }
}

/// A disk's own state: none beyond its queues. Requests complete before they
/// are marked used, and the disk is flushed as its state is taken, so nothing
/// is in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockState {}

/// A NIC's own state: none beyond its queues (frames in flight are lost, as
/// on a wire; the target announces the MAC once the guest runs there).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {}

/// The balloon's state: the host's target, what the driver reported, and the
/// pages it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonState {
    /// The target the host set (`num_pages`, in 4 KiB pages).
    pub num_pages: u32,
    /// What the driver last reported holding (`actual`).
    pub actual: u32,
    /// The page frame numbers in the balloon, sorted.
    pub pages: Vec<u32>,
}
