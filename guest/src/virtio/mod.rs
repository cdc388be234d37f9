//! virtio over virtio-mmio: the transport, split virtqueues and the device drivers.

pub mod balloon;
pub mod blk;
pub mod mmio;
pub mod net;
pub mod queue;
