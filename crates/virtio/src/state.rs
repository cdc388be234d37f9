//! A device's state as it travels in save files and migration streams: the
//! virtio-mmio registers, each queue's configuration and progress, and what
//! the device model itself keeps.

use serde::{Deserialize, Serialize};

/// One virtqueue: where the driver put it and how far the device got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The device model's own state (see each device's `save_state`).
    #[serde(default)]
    pub device: serde_json::Value,
}
