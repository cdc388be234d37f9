//! rxen's virtio devices: the device side of virtio 1.x over the virtio-mmio transport
//! (version 2), and virtio-blk.
//!
//! # Parts
//!
//! - [`mmio::MmioTransport`]: the register window of one device (virtio 1.2 §4.2.2).
//! - [`device::VirtioDevice`]: what a device model implements (block today; net and balloon later).
//! - [`interrupt`]: the [`Interrupt`] trait the VMM implements, and the InterruptStatus register.
//! - [`block::Block`]: virtio-blk over a raw image file or a host block device.
//! - [`net::Net`]: virtio-net over a host TAP device, with the `ip=` filter and `rate=` limit.
//!
//! # Wiring a device into the VMM
//!
//! 1. Build the device and its transport:
//!    `MmioTransport::new(Box::new(Block::new(file, config)?), mem.clone(), Box::new(irq))?`,
//!    where `irq` implements [`Interrupt`] by writing to an irqfd registered with KVM for the
//!    device's GSI (`KVM_IRQFD`); use one GSI per device. Take `block.stats()` before boxing
//!    the device if the counters are to be reported.
//! 2. Give each device an MMIO window of [`MMIO_WINDOW_SIZE`] (0x1000) bytes outside RAM (for
//!    instance from 0xD000_0000 upwards, in the hole below 4 GiB) and route every MMIO exit in
//!    the window to [`MmioTransport::read`] / [`MmioTransport::write`] with the offset from the
//!    window's base. Keep the transport behind a `Mutex`: the vCPU threads and the ioeventfd
//!    thread both call into it.
//! 3. For each queue `q` of the device, register an ioeventfd (`KVM_IOEVENTFD`) on the 4-byte
//!    QueueNotify register (window base + [`QUEUE_NOTIFY_OFFSET`], 0x50) matching the value `q`
//!    (datamatch), and call [`MmioTransport::notify`]`(q)` when it fires. Without ioeventfds,
//!    QueueNotify writes arriving through [`MmioTransport::write`] work the same, only slower.
//! 4. Tell the guest where the device is. For a Linux guest, add
//!    `virtio_mmio.device=4K@0xADDR:IRQ` to the kernel command line for each device (for
//!    example `virtio_mmio.device=4K@0xd0000000:5`); the test guest is given the same addresses.
//! 5. Guest memory must be fixed for the transport's lifetime (it is shared as an `Arc`).
//!
//! A driver must follow virtio 1.2 §3.1.1: reset (Status = 0), ACKNOWLEDGE, DRIVER, read
//! DeviceFeatures, write DriverFeatures (VIRTIO_F_VERSION_1 is mandatory; bits the device did not
//! offer are refused), FEATURES_OK and read it back, configure the queues (QueueSel, QueueNum,
//! QueueDesc/Driver/Device, QueueReady = 1), then DRIVER_OK. Queue registers written outside the
//! FEATURES_OK..DRIVER_OK window are ignored. At DRIVER_OK every ready queue is checked against
//! guest memory; a queue that does not fit, or a device that cannot start, sets
//! DEVICE_NEEDS_RESET (and raises a configuration interrupt) instead of failing the VMM.
//!
//! Every value the guest controls (registers, ring indexes, descriptors, addresses, lengths) is
//! hostile input: it is validated, and a bad value yields an error status, an ignored write or
//! DEVICE_NEEDS_RESET, never a panic.
//!
//! The VendorID register reads "RXEN" (0x4E45_5852).

#![deny(missing_docs)]

pub mod balloon;
pub mod block;
pub mod device;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod ratetimer;
pub mod state;

pub use balloon::{Balloon, BalloonError, BalloonHandle, BALLOON_PAGE};
pub use block::{Block, BlockConfig, BlockError, BlockStats, BlockStatsSnapshot};
pub use device::{Activation, DeviceError, VirtioDevice};
pub use interrupt::{Interrupt, InterruptKind, IrqLine};
pub use mmio::{MmioError, MmioStateError, MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
pub use net::{Net, NetConfig, NetError, NetStats, NetStatsSnapshot, Tap};
pub use state::{BalloonState, BlockState, DeviceState, NetState, QueueRecord, TransportState};

/// The guest memory type devices work on: the VMM's, with a dirty bitmap so that device writes are tracked for migration.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

#[cfg(test)]
mod testutil;
