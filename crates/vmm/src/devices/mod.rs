//! Emulated devices and the bus that dispatches guest port I/O to them.

pub mod acpi;
pub mod i8042;
pub mod pio_bus;
pub mod power;
pub mod rtc;
pub mod serial;
pub mod vcpu_ports;
pub mod virtio_slots;

pub use pio_bus::{PioBus, PioDevice};
