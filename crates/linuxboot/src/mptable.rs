//! The Intel MultiProcessor Specification 1.4 table, so that Linux finds its CPUs without ACPI.
//!
//! Layout at [`MPTABLE_START`]: the 16-byte floating pointer structure, then the
//! configuration table (header, one processor entry per vCPU, the ISA bus, the I/O APIC,
//! I/O interrupt assignments for ISA IRQ 0-15, local interrupts LINT0/LINT1).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::layout::{HIGH_MEMORY_START, IOAPIC_START, LAPIC_START, MPTABLE_START};

/// Most vCPUs the table describes: APIC ids 0..=253, the I/O APIC takes the next id.
pub const MAX_VCPUS: u8 = 254;
/// MP specification revision 1.4.
pub const MP_SPEC_REV: u8 = 4;
/// OEM id in the configuration table header (8 bytes, space padded).
pub const OEM_ID: &[u8; 8] = b"RXEN    ";
/// Product id in the configuration table header (12 bytes, space padded).
pub const PRODUCT_ID: &[u8; 12] = b"RXEN VMM    ";
/// Version of the local APICs (an integrated APIC, as KVM's reports).
pub const LAPIC_VERSION: u8 = 0x14;
/// Version of the I/O APIC (82093AA).
pub const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature of each processor entry: family 6, model 15, stepping 1.
pub const CPU_SIGNATURE: u32 = (6 << 8) | (15 << 4) | 1;
/// CPUID.1 EDX feature flags of each processor entry: FPU and on-chip APIC.
pub const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// Number of ISA IRQs routed to the I/O APIC.
pub const ISA_IRQS: u8 = 16;
/// ISA bus id.
pub const ISA_BUS_ID: u8 = 0;

/// Size of the floating pointer structure.
pub const FLOATING_POINTER_SIZE: usize = 16;
/// Size of the configuration table header.
pub const CONFIG_HEADER_SIZE: usize = 44;
/// Size of a processor entry.
pub const PROCESSOR_ENTRY_SIZE: usize = 20;
/// Size of every other entry (bus, I/O APIC, interrupt assignments).
pub const SMALL_ENTRY_SIZE: usize = 8;

/// Entry type: processor.
pub const ENTRY_PROCESSOR: u8 = 0;
/// Entry type: bus.
pub const ENTRY_BUS: u8 = 1;
/// Entry type: I/O APIC.
pub const ENTRY_IOAPIC: u8 = 2;
/// Entry type: I/O interrupt assignment.
pub const ENTRY_IO_INTERRUPT: u8 = 3;
/// Entry type: local interrupt assignment.
pub const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Interrupt type: vectored interrupt.
pub const INT_TYPE_INT: u8 = 0;
/// Interrupt type: non-maskable interrupt.
pub const INT_TYPE_NMI: u8 = 1;
/// Interrupt type: external (8259) interrupt.
pub const INT_TYPE_EXTINT: u8 = 3;

/// Processor flag: enabled.
const CPU_ENABLED: u8 = 1 << 0;
/// Processor flag: bootstrap processor.
const CPU_BSP: u8 = 1 << 1;
/// I/O APIC flag: enabled.
const IOAPIC_ENABLED: u8 = 1;
/// Destination id meaning every local APIC.
const ALL_LAPICS: u8 = 0xff;

/// Errors building or writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// Zero vCPUs, or more than the table can number.
    #[error("cannot describe {0} vCPUs in the MP table: 1 to 254 are supported")]
    BadVcpuCount(u8),
    /// The table would run past the reserved area below 1 MiB.
    #[error("the MP table ({0} bytes) does not fit below 1 MiB")]
    TooLarge(usize),
    /// Guest memory could not be written.
    #[error("cannot write the MP table: {0}")]
    Write(#[from] GuestMemoryError),
}

/// The byte that makes `bytes` sum to zero (mod 256) once added.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Size in bytes of the whole MP table (floating pointer included) for `vcpus` CPUs.
pub fn mptable_size(vcpus: u8) -> usize {
    FLOATING_POINTER_SIZE
        + CONFIG_HEADER_SIZE
        + PROCESSOR_ENTRY_SIZE * usize::from(vcpus)
        + SMALL_ENTRY_SIZE * (2 + usize::from(ISA_IRQS) + 2)
}

/// The I/O APIC id: the first id after the vCPUs' APIC ids.
pub fn ioapic_id(vcpus: u8) -> u8 {
    vcpus
}

/// The configuration table entries (everything after its header) and their count.
fn entries(vcpus: u8) -> (Vec<u8>, u16) {
    let mut e = Vec::new();
    let mut count = 0u16;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        e.extend_from_slice(&[ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        e.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        count += 1;
    }
    e.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    e.extend_from_slice(b"ISA   ");
    count += 1;
    e.extend_from_slice(&[
        ENTRY_IOAPIC,
        ioapic_id(vcpus),
        IOAPIC_VERSION,
        IOAPIC_ENABLED,
    ]);
    e.extend_from_slice(&IOAPIC_START.to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        // Flags 0: polarity and trigger mode conform to the bus (ISA: active high, edge).
        e.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0]);
        e.extend_from_slice(&[ISA_BUS_ID, irq, ioapic_id(vcpus), irq]);
        count += 1;
    }
    for (lint, kind) in [(0u8, INT_TYPE_EXTINT), (1, INT_TYPE_NMI)] {
        e.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0]);
        e.extend_from_slice(&[ISA_BUS_ID, 0, ALL_LAPICS, lint]);
        count += 1;
    }
    (e, count)
}

/// The MP table for `vcpus` CPUs as it sits at guest address `base`.
pub fn mptable_bytes(base: u64, vcpus: u8) -> Result<Vec<u8>, MpTableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MpTableError::BadVcpuCount(vcpus));
    }
    let (body, count) = entries(vcpus);
    let config_len = CONFIG_HEADER_SIZE + body.len();
    let total = FLOATING_POINTER_SIZE + config_len;
    let too_large = MpTableError::TooLarge(total);
    let end = base
        .checked_add(total as u64)
        .ok_or(MpTableError::TooLarge(total))?;
    if end > HIGH_MEMORY_START {
        return Err(too_large);
    }
    // Cannot overflow: base + total did not.
    let config_addr = base + FLOATING_POINTER_SIZE as u64;
    let (config_addr32, config_len16) =
        match (u32::try_from(config_addr), u16::try_from(config_len)) {
            (Ok(a), Ok(l)) => (a, l),
            _ => return Err(too_large),
        };

    let mut config = Vec::with_capacity(config_len);
    config.extend_from_slice(b"PCMP");
    config.extend_from_slice(&config_len16.to_le_bytes());
    config.push(MP_SPEC_REV);
    config.push(0); // checksum, below
    config.extend_from_slice(OEM_ID);
    config.extend_from_slice(PRODUCT_ID);
    config.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    config.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    config.extend_from_slice(&count.to_le_bytes());
    config.extend_from_slice(&LAPIC_START.to_le_bytes());
    config.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    config.push(0); // extended table checksum
    config.push(0); // reserved
    config.extend_from_slice(&body);
    let sum = checksum(&config);
    if let Some(slot) = config.get_mut(7) {
        *slot = sum;
    }

    let mut table = Vec::with_capacity(FLOATING_POINTER_SIZE + config_len);
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&config_addr32.to_le_bytes());
    table.push(1); // length in 16-byte paragraphs
    table.push(MP_SPEC_REV);
    table.push(0); // checksum, below
                   // Feature bytes 1-5: 0 = a configuration table is present; IMCR absent (virtual wire).
    table.extend_from_slice(&[0; 5]);
    let sum = checksum(&table);
    if let Some(slot) = table.get_mut(10) {
        *slot = sum;
    }
    table.extend_from_slice(&config);
    Ok(table)
}

/// Writes the MP table for `vcpus` CPUs at [`MPTABLE_START`] (the EBDA, reserved in e820).
pub fn write_mptable<M: GuestMemoryBackend>(mem: &M, vcpus: u8) -> Result<(), MpTableError> {
    let table = mptable_bytes(MPTABLE_START, vcpus)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }
    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().expect("2"))
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().expect("4"))
    }

    /// What a parser sees in a table read back from guest memory.
    #[derive(Debug, Default)]
    struct Parsed {
        cpus: Vec<(u8, u8, u8, u32, u32)>,
        buses: Vec<(u8, Vec<u8>)>,
        ioapics: Vec<(u8, u8, u8, u32)>,
        io_ints: Vec<(u8, u16, u8, u8, u8, u8)>,
        local_ints: Vec<(u8, u16, u8, u8, u8, u8)>,
    }

    /// Finds the floating pointer the way Linux does (16-byte steps) and walks the table.
    fn parse(mem: &GuestMemoryMmap, scan_from: u64, scan_len: usize) -> Parsed {
        let mut area = vec![0u8; scan_len];
        mem.read_slice(&mut area, GuestAddress(scan_from))
            .expect("read");
        let off = (0..scan_len)
            .step_by(16)
            .find(|&o| &area[o..o + 4] == b"_MP_")
            .expect("floating pointer found");
        let fp = &area[off..off + 16];
        assert_eq!(sum(fp), 0, "floating pointer checksum");
        assert_eq!(fp[8], 1, "length");
        assert_eq!(fp[9], 4, "spec rev 1.4");
        assert_eq!(&fp[11..16], &[0; 5], "feature bytes: config table present");
        let config_addr = u64::from(u32_at(fp, 4));

        let mut hdr = [0u8; 44];
        mem.read_slice(&mut hdr, GuestAddress(config_addr))
            .expect("hdr");
        assert_eq!(&hdr[0..4], b"PCMP");
        let len = usize::from(u16_at(&hdr, 4));
        assert_eq!(hdr[6], 4, "spec rev");
        assert_eq!(&hdr[8..16], b"RXEN    ");
        assert_eq!(&hdr[16..28], b"RXEN VMM    ");
        assert_eq!(u32_at(&hdr, 28), 0, "no OEM table");
        assert_eq!(u32_at(&hdr, 36), 0xFEE0_0000, "LAPIC address");
        assert_eq!(u16_at(&hdr, 40), 0, "no extended table");
        let count = u16_at(&hdr, 34);

        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(config_addr))
            .expect("table");
        assert_eq!(sum(&table), 0, "configuration table checksum");

        let mut p = Parsed::default();
        let mut at = 44;
        for _ in 0..count {
            let e = &table[at..];
            match e[0] {
                0 => {
                    p.cpus.push((e[1], e[2], e[3], u32_at(e, 4), u32_at(e, 8)));
                    assert_eq!(&e[12..20], &[0; 8]);
                    at += 20;
                }
                1 => {
                    p.buses.push((e[1], e[2..8].to_vec()));
                    at += 8;
                }
                2 => {
                    p.ioapics.push((e[1], e[2], e[3], u32_at(e, 4)));
                    at += 8;
                }
                3 => {
                    p.io_ints.push((e[1], u16_at(e, 2), e[4], e[5], e[6], e[7]));
                    at += 8;
                }
                4 => {
                    p.local_ints
                        .push((e[1], u16_at(e, 2), e[4], e[5], e[6], e[7]));
                    at += 8;
                }
                t => panic!("unknown entry type {t}"),
            }
        }
        assert_eq!(at, len, "entry count and base table length agree");
        p
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).expect("mem")
    }

    #[test]
    fn four_vcpus_parse_back() {
        let mem = mem();
        write_mptable(&mem, 4).expect("write");
        // Linux scans the last KiB of base memory (639 KiB) for the floating pointer.
        let p = parse(&mem, 639 * 1024, 1024);
        assert_eq!(
            p.cpus,
            vec![
                (0, 0x14, 0b11, 0x6f1, 0x201),
                (1, 0x14, 0b01, 0x6f1, 0x201),
                (2, 0x14, 0b01, 0x6f1, 0x201),
                (3, 0x14, 0b01, 0x6f1, 0x201),
            ]
        );
        assert_eq!(p.buses, vec![(0, b"ISA   ".to_vec())]);
        assert_eq!(p.ioapics, vec![(4, 0x11, 1, 0xFEC0_0000)]);
        let want: Vec<_> = (0..16u8).map(|i| (0, 0, 0, i, 4, i)).collect();
        assert_eq!(p.io_ints, want);
        assert_eq!(
            p.local_ints,
            vec![(3, 0, 0, 0, 0xff, 0), (1, 0, 0, 0, 0xff, 1)]
        );

        let mut fp = [0u8; 8];
        mem.read_slice(&mut fp, GuestAddress(0x9_fc00)).expect("fp");
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(u32_at(&fp, 4), 0x9_fc10, "config table follows the pointer");
        assert_eq!(mptable_size(4), 16 + 44 + 4 * 20 + 20 * 8);
        assert_eq!(
            mptable_bytes(0x9_fc00, 4).expect("bytes").len(),
            mptable_size(4)
        );
    }

    #[test]
    fn one_and_max_vcpus() {
        let mem = mem();
        write_mptable(&mem, 1).expect("write");
        let p = parse(&mem, 0x9_fc00, 1024);
        assert_eq!(p.cpus, vec![(0, 0x14, 0b11, 0x6f1, 0x201)]);
        assert_eq!(p.ioapics[0].0, 1);

        write_mptable(&mem, 254).expect("write");
        let p = parse(&mem, 0x9_fc00, 1024);
        assert_eq!(p.cpus.len(), 254);
        assert!(p
            .cpus
            .iter()
            .enumerate()
            .all(|(i, c)| usize::from(c.0) == i && c.2 == if i == 0 { 3 } else { 1 }));
        assert_eq!(p.ioapics[0].0, 254);
        assert!(p.io_ints.iter().all(|e| e.4 == 254));
        assert!(0x9_fc00 + mptable_size(254) as u64 <= 0x10_0000);
    }

    #[test]
    fn bad_vcpu_counts() {
        let mem = mem();
        assert!(matches!(
            write_mptable(&mem, 0),
            Err(MpTableError::BadVcpuCount(0))
        ));
        assert!(matches!(
            write_mptable(&mem, 255),
            Err(MpTableError::BadVcpuCount(255))
        ));
        assert!(matches!(
            mptable_bytes(0xF_FF00, 4),
            Err(MpTableError::TooLarge(_))
        ));
        assert!(matches!(
            mptable_bytes(u64::MAX - 8, 1),
            Err(MpTableError::TooLarge(_))
        ));
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9_fc20)]).expect("m");
        assert!(matches!(
            write_mptable(&small, 2),
            Err(MpTableError::Write(_))
        ));
    }
}
