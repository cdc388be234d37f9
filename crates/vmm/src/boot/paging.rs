//! Identity-mapping boot page tables: PML4 at 0x9000, PDPT at 0xA000, page
//! directories of 2 MiB pages from 0xB000.

use crate::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use super::{PDPT_ADDR, PD_ADDR, PML4_ADDR};
use crate::memory::GIB;

/// Present and writable.
const PRESENT_RW: u64 = 0x3;
/// Present, writable, 2 MiB page.
const PRESENT_RW_HUGE: u64 = 0x83;
/// Most memory one PDPT can map.
pub const MAX_MAPPED: u64 = 512 * GIB;

/// Errors while writing the page tables.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// Writing the tables into guest memory failed.
    #[error("cannot write the boot page tables: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// How many GiB the identity map covers for a guest whose RAM ends at
/// `ram_end`: `max(4 GiB, RAM rounded up to 1 GiB)`, at most 512 GiB, and no
/// more than the page directories that fit between 0xB000 and `tables_limit`.
pub fn mapped_gib(ram_end: u64, tables_limit: u64) -> u64 {
    let wanted = ram_end.div_ceil(GIB).clamp(4, MAX_MAPPED / GIB);
    let room = tables_limit.saturating_sub(PD_ADDR) / 0x1000;
    wanted.min(room.max(1))
}

/// Writes the identity map of the first `gib` GiB (see [`mapped_gib`]).
pub fn write(mem: &GuestMemory, gib: u64) -> Result<(), PagingError> {
    let gib = gib.clamp(1, MAX_MAPPED / GIB);
    mem.write_obj(PDPT_ADDR | PRESENT_RW, GuestAddress(PML4_ADDR))?;
    let mut pd = vec![0u8; 4096];
    for dir in 0..gib {
        let pd_addr = PD_ADDR + dir * 0x1000;
        mem.write_obj(pd_addr | PRESENT_RW, GuestAddress(PDPT_ADDR + dir * 8))?;
        for (i, chunk) in (0u64..).zip(pd.chunks_exact_mut(8)) {
            let phys = (dir * 512 + i) << 21;
            chunk.copy_from_slice(&(phys | PRESENT_RW_HUGE).to_le_bytes());
        }
        mem.write_slice(&pd, GuestAddress(pd_addr))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{CMDLINE_ADDR, KERNEL_MIN_ADDR};
    use crate::memory::{create_guest_memory, MIB};

    fn read(mem: &GuestMemory, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).expect("read")
    }

    /// Walks the tables like the MMU would, for a 2 MiB mapping.
    fn translate(mem: &GuestMemory, va: u64) -> Option<u64> {
        let pml4e = read(mem, PML4_ADDR + ((va >> 39) & 511) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = read(mem, (pml4e & !0xFFF) + ((va >> 30) & 511) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = read(mem, (pdpte & !0xFFF) + ((va >> 21) & 511) * 8);
        if pde & 0x81 != 0x81 {
            return None;
        }
        Some((pde & !0x1F_FFFF & 0x000F_FFFF_FFFF_FFFF) | (va & 0x1F_FFFF))
    }

    #[test]
    fn tables_identity_map_4gib() {
        let mem = create_guest_memory(64).expect("memory");
        write(&mem, mapped_gib(64 * MIB, CMDLINE_ADDR)).expect("write");
        assert_eq!(read(&mem, PML4_ADDR), 0xA003);
        assert_eq!(read(&mem, PML4_ADDR + 8), 0);
        for i in 0..4 {
            assert_eq!(read(&mem, PDPT_ADDR + i * 8), (0xB000 + i * 0x1000) | 3);
        }
        assert_eq!(read(&mem, PDPT_ADDR + 4 * 8), 0);
        assert_eq!(read(&mem, PD_ADDR), 0x83);
        assert_eq!(read(&mem, PD_ADDR + 8), 0x20_0083);
        assert_eq!(read(&mem, PD_ADDR + 0x3FF8), 0xFFE0_0083);
        for va in [0u64, 0x10_0000, 0x123_4567, 0xBFFF_FFFF, 0xFFFF_FFFF] {
            assert_eq!(translate(&mem, va), Some(va));
        }
        assert_eq!(translate(&mem, 4 * GIB), None);
    }

    #[test]
    fn mapped_size_rules() {
        assert_eq!(mapped_gib(128 * MIB, KERNEL_MIN_ADDR), 4);
        assert_eq!(mapped_gib(4 * GIB + 1, KERNEL_MIN_ADDR), 5);
        assert_eq!(mapped_gib(9 * GIB, KERNEL_MIN_ADDR), 9);
        // The directories must stay below the command line for Linux.
        assert_eq!(mapped_gib(100 * GIB, CMDLINE_ADDR), 21);
        assert_eq!(mapped_gib(100 * GIB, KERNEL_MIN_ADDR), 100);
        assert_eq!(mapped_gib(u64::MAX, KERNEL_MIN_ADDR), 245);
    }

    #[test]
    fn larger_guest_maps_high_memory() {
        let mem = create_guest_memory(16).expect("memory");
        write(&mem, 6).expect("write");
        assert_eq!(translate(&mem, 5 * GIB + 0x1234), Some(5 * GIB + 0x1234));
        assert_eq!(translate(&mem, 6 * GIB), None);
    }
}
