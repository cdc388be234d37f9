//! The boot GDT at [`super::GDT_ADDR`]: null, 64-bit code (0x08), data (0x10), TSS (0x18).

use crate::memory::GuestMemory;
use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

/// Selector of the 64-bit code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS slot.
pub const TSS_SELECTOR: u16 = 0x18;

/// Flags (access byte and granularity nibble) of the 64-bit code segment: G, L, P, S, execute/read.
const CODE_FLAGS: u16 = 0xA09B;
/// Flags of the data segment: G, D/B, P, S, read/write.
const DATA_FLAGS: u16 = 0xC093;
/// Flags of the TSS: G, P, busy 64-bit TSS.
const TSS_FLAGS: u16 = 0x808B;

/// Errors while writing the GDT.
#[derive(Debug, thiserror::Error)]
pub enum GdtError {
    /// The GDT does not fit in guest memory.
    #[error("cannot write the GDT: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// Encodes one 8-byte descriptor from its flags, base and 20-bit limit.
pub fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xFF00_0000) << 32)
        | ((flags & 0xF0FF) << 40)
        | ((limit & 0xF_0000) << 32)
        | ((base & 0x00FF_FFFF) << 16)
        | (limit & 0xFFFF)
}

/// The four boot descriptors, in selector order.
pub fn table() -> [u64; 4] {
    [
        0,
        entry(CODE_FLAGS, 0, 0xF_FFFF),
        entry(DATA_FLAGS, 0, 0xF_FFFF),
        entry(TSS_FLAGS, 0, 0xF_FFFF),
    ]
}

/// Limit of the GDT register (size in bytes minus one).
pub fn limit() -> u16 {
    // Four 8-byte entries.
    4 * 8 - 1
}

/// Converts a descriptor to the segment register state KVM loads for `selector`.
pub fn segment(descriptor: u64, selector: u16) -> kvm_segment {
    let base = ((descriptor >> 16) & 0x00FF_FFFF) | ((descriptor >> 32) & 0xFF00_0000);
    let raw_limit = (descriptor & 0xFFFF) | ((descriptor >> 32) & 0xF_0000);
    let g = ((descriptor >> 55) & 1) as u8;
    // With 4 KiB granularity the effective limit covers the whole last page.
    let limit = if g == 1 {
        (raw_limit << 12) | 0xFFF
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit: limit as u32,
        selector,
        type_: ((descriptor >> 40) & 0xF) as u8,
        present: ((descriptor >> 47) & 1) as u8,
        dpl: ((descriptor >> 45) & 3) as u8,
        db: ((descriptor >> 54) & 1) as u8,
        s: ((descriptor >> 44) & 1) as u8,
        l: ((descriptor >> 53) & 1) as u8,
        g,
        avl: ((descriptor >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the boot GDT at `addr`.
pub fn write(mem: &GuestMemory, addr: GuestAddress) -> Result<(), GdtError> {
    let mut bytes = [0u8; 32];
    for (chunk, desc) in bytes.chunks_exact_mut(8).zip(table()) {
        chunk.copy_from_slice(&desc.to_le_bytes());
    }
    mem.write_slice(&bytes, addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn descriptors_have_expected_bits() {
        let t = table();
        assert_eq!(t[0], 0);
        assert_eq!(t[1], 0x00AF_9B00_0000_FFFF);
        assert_eq!(t[2], 0x00CF_9300_0000_FFFF);
        assert_eq!(t[3], 0x008F_8B00_0000_FFFF);
        assert_eq!(limit(), 31);
    }

    #[test]
    fn segments_decode_descriptors() {
        let t = table();
        let cs = segment(t[1], CODE_SELECTOR);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.s, cs.present),
            (8, 0xB, 1, 0, 1, 1)
        );
        assert_eq!((cs.base, cs.limit, cs.g, cs.dpl), (0, 0xFFFF_FFFF, 1, 0));
        let ds = segment(t[2], DATA_SELECTOR);
        assert_eq!(
            (ds.selector, ds.type_, ds.l, ds.db, ds.s),
            (0x10, 3, 0, 1, 1)
        );
        let tr = segment(t[3], TSS_SELECTOR);
        assert_eq!((tr.selector, tr.type_, tr.s, tr.present), (0x18, 0xB, 0, 1));
        let odd = segment(entry(0x0089, 0x1234_5678, 0x6_7890), 0x20);
        assert_eq!((odd.base, odd.limit, odd.g), (0x1234_5678, 0x6_7890, 0));
    }

    #[test]
    fn gdt_lands_at_its_address() {
        let mem = create_guest_memory(16).expect("memory");
        write(&mem, GuestAddress(super::super::GDT_ADDR)).expect("write");
        let mut buf = [0u8; 32];
        mem.read_slice(&mut buf, GuestAddress(0x500)).expect("read");
        assert_eq!(&buf[0..8], &[0; 8]);
        assert_eq!(&buf[8..16], &0x00AF_9B00_0000_FFFFu64.to_le_bytes());
        assert_eq!(&buf[16..24], &0x00CF_9300_0000_FFFFu64.to_le_bytes());
        assert_eq!(&buf[24..32], &0x008F_8B00_0000_FFFFu64.to_le_bytes());
    }
}
