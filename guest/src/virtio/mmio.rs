//! The virtio-mmio (version 2) register window of one device, and driver initialisation
//! per virtio 1.2 §3.1.1.
//!
//! Where the windows are depends on the monitor: rxen's 16 slots of 4 KiB at 0xD000_0000
//! (docs/internals.md), or, when the guest came in through the PVH entry (QEMU
//! `-M microvm`), QEMU's virtio-mmio transports of 512 bytes from 0xFEB0_0000: 8 of them on
//! GSIs 5..12 without ACPI, 8 on GSIs 16..23 with ACPI and one IOAPIC, 24 on GSIs 24..47
//! with the second IOAPIC (QEMU's default; see `microvm_devices_init` in QEMU's
//! hw/i386/microvm.c). QEMU fills the highest transport first: with QEMU 7.2 a lone disk sits
//! in transport 23, or in 7 with `-M microvm,acpi=off` (both seen by this guest's `disks`).
//! The guest probes 24 and never takes their interrupts: every driver
//! polls its used rings and asks for no interrupts (VRING_AVAIL_F_NO_INTERRUPT).
//! QEMU's transports speak version 2 only with `-global virtio-mmio.force-legacy=false`.

use core::ptr::{read_volatile, write_volatile};

use super::queue::Virtq;

use crate::pvh;

/// Where rxen's 16 slots start.
pub const SLOTS_BASE: u64 = 0xD000_0000;
/// Number of rxen slots.
pub const RXEN_SLOTS: usize = 16;
/// Bytes per rxen slot.
pub const SLOT_SIZE: u64 = 0x1000;
/// Where QEMU microvm's virtio-mmio transports start.
pub const MICROVM_BASE: u64 = 0xFEB0_0000;
/// Bytes per microvm transport.
pub const MICROVM_STRIDE: u64 = 0x200;
/// microvm transports probed (the most QEMU creates: one per pin of its second IOAPIC).
pub const MICROVM_SLOTS: usize = 24;
/// Room in the device table: the larger of the two layouts.
pub const SLOTS: usize = if MICROVM_SLOTS > RXEN_SLOTS {
    MICROVM_SLOTS
} else {
    RXEN_SLOTS
};

/// The slots of the monitor that booted the guest: QEMU microvm's transports after the PVH
/// entry, rxen's slots otherwise.
pub fn slot_count() -> usize {
    if pvh::booted_via_pvh() {
        MICROVM_SLOTS
    } else {
        RXEN_SLOTS
    }
}

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0A0;
const CONFIG_GENERATION: u64 = 0x0FC;
const CONFIG: u64 = 0x100;

/// "virt" little-endian.
const MAGIC_VALUE: u32 = 0x7472_6976;

const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_NEEDS_RESET: u32 = 64;
const S_FAILED: u32 = 128;

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

/// Why a device could not be brought up.
#[derive(Clone, Copy, Debug)]
pub enum InitError {
    /// The device does not offer VIRTIO_F_VERSION_1.
    NoVersion1,
    /// The device refused our features (FEATURES_OK did not stick).
    FeaturesRefused,
    /// A queue the driver needs is missing or could not be set up.
    Queue,
    /// No memory left for the rings or buffers.
    NoMemory,
    /// The device did not accept DRIVER_OK.
    NotStarted,
}

/// One slot's register window.
#[derive(Clone, Copy)]
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// The window of slot `slot` (of the layout `slot_count` describes).
    pub fn slot(slot: usize) -> Mmio {
        let base = if pvh::booted_via_pvh() {
            MICROVM_BASE + slot as u64 * MICROVM_STRIDE
        } else {
            SLOTS_BASE + slot as u64 * SLOT_SIZE
        };
        Mmio { base }
    }

    fn read(&self, offset: u64) -> u32 {
        // SAFETY: the slot windows are device MMIO the VMM reserves (docs/internals.md),
        // identity-mapped; a 4-byte aligned read has no effect on guest memory.
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    fn write(&self, offset: u64, value: u32) {
        // SAFETY: as for `read`; writes only reach the device model.
        unsafe { write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// The device type in this slot, or `None` if the slot is empty (or not virtio-mmio v2).
    pub fn probe(&self) -> Option<u32> {
        if self.read(MAGIC) != MAGIC_VALUE || self.read(VERSION) != 2 {
            return None;
        }
        match self.read(DEVICE_ID) {
            0 => None,
            id => Some(id),
        }
    }

    /// Resets the device (Status = 0) and waits (briefly) for the reset to show.
    pub fn reset(&self) {
        self.write(STATUS, 0);
        for _ in 0..1000 {
            if self.read(STATUS) == 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }

    /// Resets, acknowledges and negotiates: returns the accepted features (`wanted` ∩ offered, plus VERSION_1).
    pub fn negotiate(&self, wanted: u64) -> Result<u64, InitError> {
        self.reset();
        self.write(STATUS, S_ACKNOWLEDGE);
        self.write(STATUS, S_ACKNOWLEDGE | S_DRIVER);
        self.write(DEVICE_FEATURES_SEL, 0);
        let low = self.read(DEVICE_FEATURES);
        self.write(DEVICE_FEATURES_SEL, 1);
        let high = self.read(DEVICE_FEATURES);
        let offered = u64::from(low) | (u64::from(high) << 32);
        if offered & F_VERSION_1 == 0 {
            self.fail();
            return Err(InitError::NoVersion1);
        }
        let accepted = (offered & wanted) | F_VERSION_1;
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, accepted as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (accepted >> 32) as u32);
        self.write(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if self.read(STATUS) & S_FEATURES_OK == 0 {
            self.fail();
            return Err(InitError::FeaturesRefused);
        }
        Ok(accepted)
    }

    /// The largest power of two no larger than the queue's maximum and `wanted`, or `None` if the queue does not exist.
    pub fn queue_size(&self, index: u32, wanted: u16) -> Option<u16> {
        self.write(QUEUE_SEL, index);
        let max = self.read(QUEUE_NUM_MAX).min(u32::from(wanted));
        if max == 0 {
            return None;
        }
        Some(1u16 << (31 - max.leading_zeros()))
    }

    /// Hands queue `index` (its size and rings) to the device and marks it ready.
    pub fn setup_queue(&self, index: u32, queue: &Virtq) {
        self.write(QUEUE_SEL, index);
        self.write(QUEUE_NUM, u32::from(queue.size()));
        for (offset, addr) in [
            (QUEUE_DESC, queue.desc_addr()),
            (QUEUE_DRIVER, queue.avail_addr()),
            (QUEUE_DEVICE, queue.used_addr()),
        ] {
            self.write(offset, addr as u32);
            self.write(offset + 4, (addr >> 32) as u32);
        }
        self.write(QUEUE_READY, 1);
    }

    /// Sets DRIVER_OK; fails if the device then asks for a reset.
    pub fn driver_ok(&self) -> Result<(), InitError> {
        self.write(
            STATUS,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        if self.healthy() {
            Ok(())
        } else {
            self.fail();
            Err(InitError::NotStarted)
        }
    }

    /// Marks the driver as given up (FAILED).
    pub fn fail(&self) {
        let status = self.read(STATUS);
        self.write(STATUS, status | S_FAILED);
    }

    /// Whether the device is running and does not ask for a reset.
    pub fn healthy(&self) -> bool {
        let status = self.read(STATUS);
        status & S_DRIVER_OK != 0 && status & (S_NEEDS_RESET | S_FAILED) == 0
    }

    /// Tells the device that queue `index` has new buffers.
    pub fn notify(&self, index: u32) {
        self.write(QUEUE_NOTIFY, index);
    }

    /// Reads `N` bytes of configuration space at `offset`, consistently (ConfigGeneration).
    pub fn config<const N: usize>(&self, offset: u64) -> [u8; N] {
        let mut out = [0u8; N];
        for _ in 0..16 {
            let generation = self.read(CONFIG_GENERATION);
            for (i, byte) in out.iter_mut().enumerate() {
                // SAFETY: configuration space of the device's own window; byte reads.
                *byte =
                    unsafe { read_volatile((self.base + CONFIG + offset + i as u64) as *const u8) };
            }
            if self.read(CONFIG_GENERATION) == generation {
                break;
            }
        }
        out
    }

    /// Whether the device raised a configuration-change interrupt (InterruptStatus bit 1)
    /// since the last call; acknowledges it. The guest takes no interrupts: it looks.
    pub fn config_changed(&self) -> bool {
        if self.read(INTERRUPT_STATUS) & 2 == 0 {
            return false;
        }
        self.write(INTERRUPT_ACK, 2);
        true
    }

    /// Reads a little-endian u32 of configuration space at `offset` (a 4-byte access).
    pub fn config_u32(&self, offset: u64) -> u32 {
        self.read(CONFIG + offset)
    }

    /// Writes a little-endian u32 of configuration space at `offset` (a 4-byte access).
    pub fn set_config_u32(&self, offset: u64, value: u32) {
        self.write(CONFIG + offset, value);
    }
}
