//! The machine a Linux guest is told about in its ACPI tables: rxen's devices and where they sit.

use rxen_linuxboot::acpi::{LegacyDevice, Machine, MmioSlot};

use crate::devices::acpi::GED_GSI;
use crate::devices::i8042::{DATA_PORT, KEYBOARD_GSI};
use crate::devices::rtc::{RTC_IRQ, RTC_LEN, RTC_PORT};
use crate::devices::serial::{COM1_GSI, COM1_LEN, COM1_PORT};
use crate::devices::virtio_slots::{slot_gsi, SLOT_BASE, SLOT_COUNT, SLOT_SIZE};

/// The description of an rxen machine with `vcpus` vCPUs: every virtio slot (occupied or
/// not: each is present only while it holds a device), COM1, the i8042, the RTC and the GED.
pub fn machine(vcpus: u8) -> Machine {
    Machine {
        vcpus,
        virtio: (0..SLOT_COUNT)
            .map(|i| MmioSlot {
                // The slots sit below 4 GiB (0xD000_0000 + 16 pages).
                base: (SLOT_BASE + i as u64 * SLOT_SIZE) as u32,
                len: SLOT_SIZE as u32,
                gsi: slot_gsi(i),
            })
            .collect(),
        ged_gsi: GED_GSI,
        serial: LegacyDevice {
            port: COM1_PORT,
            len: COM1_LEN as u8,
            irq: COM1_GSI as u8,
        },
        keyboard: LegacyDevice {
            port: DATA_PORT,
            len: 1,
            irq: KEYBOARD_GSI as u8,
        },
        rtc: LegacyDevice {
            port: RTC_PORT,
            len: RTC_LEN as u8,
            irq: RTC_IRQ,
        },
    }
}
