//! The MADT ("APIC"): every vCPU's local APIC, the I/O APIC with all its pins, LINT1 as NMI.

use acpi_tables::sdt::Sdt;

use super::{Machine, OEM_ID, OEM_REVISION};
use crate::layout::{IOAPIC_START, LAPIC_START};
use crate::mptable::ioapic_id;

/// MADT flags: PCAT_COMPAT, the machine also has dual 8259 PICs (KVM's in-kernel PIC).
const PCAT_COMPAT: u32 = 1;
const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_IO_APIC: u8 = 1;
const TYPE_LOCAL_APIC_NMI: u8 = 4;
const LAPIC_ENABLED: u32 = 1;
/// The processor UID that names every processor.
const ALL_PROCESSORS: u8 = 0xFF;

/// The MADT's bytes for `machine`.
///
/// No interrupt source overrides: KVM's default routing sends ISA IRQ n to I/O APIC pin n
/// (the PIT's IRQ 0 to pin 0), which is what ACPI assumes when none is given, and every ISA
/// device here is edge-triggered and active high, ISA's default.
pub(super) fn madt_bytes(machine: &Machine) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&LAPIC_START.to_le_bytes());
    body.extend_from_slice(&PCAT_COMPAT.to_le_bytes());
    for id in 0..machine.vcpus {
        body.extend_from_slice(&[TYPE_LOCAL_APIC, 8, id, id]);
        body.extend_from_slice(&LAPIC_ENABLED.to_le_bytes());
    }
    body.extend_from_slice(&[TYPE_IO_APIC, 12, ioapic_id(machine.vcpus), 0]);
    body.extend_from_slice(&IOAPIC_START.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // GSI base: pins 0..23 are GSIs 0..23
    body.extend_from_slice(&[TYPE_LOCAL_APIC_NMI, 6, ALL_PROCESSORS]);
    body.extend_from_slice(&0u16.to_le_bytes()); // flags: conforms to the bus
    body.push(1); // LINT1
    let mut t = Sdt::new(*b"APIC", 36, 5, OEM_ID, *b"RXENAPIC", OEM_REVISION);
    t.append_slice(&body);
    t.as_slice().to_vec()
}
