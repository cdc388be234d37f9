//! Test helpers: guest memory, an interrupt recorder and a register-level driver.

use std::io;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio as reg;
use vm_memory::GuestAddress;

use crate::interrupt::{Interrupt, InterruptKind};
use crate::mmio::MmioTransport;
use crate::GuestMemoryMmap;

/// Size of test guest memory.
pub const MEM_SIZE: u64 = 0x100_0000;

/// Fresh guest memory of [`MEM_SIZE`] bytes at 0.
pub fn guest_memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("memory"))
}

/// An `Interrupt` that records what it was asked to raise.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<InterruptKind>>>);

impl Recorder {
    /// The interrupts raised so far.
    pub fn seen(&self) -> Vec<InterruptKind> {
        self.0.lock().expect("lock").clone()
    }
}

impl Interrupt for Recorder {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        self.0.lock().expect("lock").push(kind);
        Ok(())
    }
}

/// Reads a 32-bit register.
pub fn rd(t: &mut MmioTransport, offset: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(offset), &mut b);
    u32::from_le_bytes(b)
}

/// Writes a 32-bit register.
pub fn wr(t: &mut MmioTransport, offset: u32, value: u32) {
    t.write(u64::from(offset), &value.to_le_bytes());
}

/// Reads the 64-bit DeviceFeatures.
pub fn device_features(t: &mut MmioTransport) -> u64 {
    wr(t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let low = rd(t, reg::VIRTIO_MMIO_DEVICE_FEATURES);
    wr(t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let high = rd(t, reg::VIRTIO_MMIO_DEVICE_FEATURES);
    u64::from(low) | (u64::from(high) << 32)
}

/// Resets, acknowledges and negotiates `features`; returns whether FEATURES_OK stuck.
pub fn negotiate(t: &mut MmioTransport, features: u64) -> bool {
    wr(t, reg::VIRTIO_MMIO_STATUS, 0);
    wr(t, reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    wr(
        t,
        reg::VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    let status = rd(t, reg::VIRTIO_MMIO_STATUS);
    wr(
        t,
        reg::VIRTIO_MMIO_STATUS,
        status | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    rd(t, reg::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK != 0
}

/// Configures queue `index` (size and ring addresses) and marks it ready.
pub fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, desc: u64, avail: u64, used: u64) {
    wr(t, reg::VIRTIO_MMIO_QUEUE_SEL, index);
    wr(t, reg::VIRTIO_MMIO_QUEUE_NUM, size);
    wr(t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
    wr(t, reg::VIRTIO_MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
    wr(t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
    wr(t, reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
    wr(t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
    wr(t, reg::VIRTIO_MMIO_QUEUE_USED_HIGH, (used >> 32) as u32);
    wr(t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
}

/// Sets DRIVER_OK.
pub fn driver_ok(t: &mut MmioTransport) {
    let status = rd(t, reg::VIRTIO_MMIO_STATUS);
    wr(
        t,
        reg::VIRTIO_MMIO_STATUS,
        status | VIRTIO_CONFIG_S_DRIVER_OK,
    );
}
