//! The e820 memory map handed to Linux, and the check that guest memory matches it.

use linux_loader::loader::bootparam::boot_e820_entry;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{EBDA_START, HIGH_MEMORY_START, MMIO_GAP_END, MMIO_GAP_START};

/// Errors about the shape of guest memory.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryLayoutError {
    /// There is not enough RAM for a kernel above 1 MiB.
    #[error("guest memory of {0:#x} bytes is too small: Linux needs RAM above 1 MiB")]
    TooSmall(u64),
    /// A range the e820 map describes is not backed by guest memory.
    #[error(
        "guest memory does not match the rxen layout: {addr:#x}..{end:#x} is not backed by RAM",
        end = addr.saturating_add(*size)
    )]
    NotBacked {
        /// Start of the missing range.
        addr: u64,
        /// Length of the missing range.
        size: u64,
    },
}

/// The type of an e820 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    /// Usable RAM (`E820_TYPE_RAM`).
    Ram = 1,
    /// Reserved, not for the kernel's allocator (`E820_TYPE_RESERVED`).
    Reserved = 2,
}

/// One range of the e820 memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest physical address of the range.
    pub addr: u64,
    /// Length of the range in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Type,
}

impl E820Entry {
    /// The first address past the range.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }

    /// The entry in the zero page's format.
    pub fn to_boot_entry(&self) -> boot_e820_entry {
        boot_e820_entry {
            addr: self.addr,
            size: self.size,
            r#type: self.kind as u32,
        }
    }
}

/// The end of RAM below the 3 GiB hole for a guest with `mem_size` bytes of RAM.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// The e820 map for `mem_size` bytes of RAM laid out as rxen does.
///
/// RAM 0..0x9fc00, reserved 0x9fc00..1 MiB (EBDA, MP table, BIOS area),
/// RAM 1 MiB..min(end, 3 GiB), and whatever is left at 4 GiB and up.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = Vec::with_capacity(4);
    let low = low_ram_end(mem_size);
    if low > 0 {
        map.push(E820Entry {
            addr: 0,
            size: low.min(EBDA_START),
            kind: E820Type::Ram,
        });
    }
    map.push(E820Entry {
        addr: EBDA_START,
        size: HIGH_MEMORY_START - EBDA_START,
        kind: E820Type::Reserved,
    });
    if low > HIGH_MEMORY_START {
        map.push(E820Entry {
            addr: HIGH_MEMORY_START,
            size: low - HIGH_MEMORY_START,
            kind: E820Type::Ram,
        });
    }
    if mem_size > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820Type::Ram,
        });
    }
    map
}

/// The total RAM of `mem`: the sum of its regions' lengths.
pub fn guest_ram_size<M: GuestMemoryBackend>(mem: &M) -> u64 {
    mem.iter()
        .map(|region| region.len())
        .fold(0u64, u64::saturating_add)
}

/// Checks that every range of `map` (RAM and the reserved low area) is backed by `mem`.
pub fn check_backed<M: GuestMemoryBackend>(
    mem: &M,
    map: &[E820Entry],
) -> Result<(), MemoryLayoutError> {
    for entry in map {
        let backed = usize::try_from(entry.size)
            .map(|len| mem.check_range(GuestAddress(entry.addr), len))
            .unwrap_or(false);
        if !backed {
            return Err(MemoryLayoutError::NotBacked {
                addr: entry.addr,
                size: entry.size,
            });
        }
    }
    Ok(())
}

/// Builds the e820 map for `mem` and checks it: more than 1 MiB of RAM, every range backed.
pub fn e820_for_memory<M: GuestMemoryBackend>(
    mem: &M,
) -> Result<Vec<E820Entry>, MemoryLayoutError> {
    let size = guest_ram_size(mem);
    if size <= HIGH_MEMORY_START {
        return Err(MemoryLayoutError::TooSmall(size));
    }
    let map = e820_map(size);
    check_backed(mem, &map)?;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn ram(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            kind: E820Type::Ram,
        }
    }

    const RESERVED: E820Entry = E820Entry {
        addr: 0x9_fc00,
        size: 0x6_0400,
        kind: E820Type::Reserved,
    };

    #[test]
    fn small_guest_has_low_ram_reserved_area_and_high_ram() {
        assert_eq!(
            e820_map(512 * MIB),
            vec![
                ram(0, 0x9_fc00),
                RESERVED,
                ram(0x10_0000, 512 * MIB - 0x10_0000)
            ]
        );
    }

    #[test]
    fn three_gib_guest_needs_no_high_range() {
        assert_eq!(
            e820_map(3 * GIB),
            vec![
                ram(0, 0x9_fc00),
                RESERVED,
                ram(0x10_0000, 0xC000_0000 - 0x10_0000)
            ]
        );
    }

    #[test]
    fn large_guest_continues_above_4gib() {
        assert_eq!(
            e820_map(5 * GIB),
            vec![
                ram(0, 0x9_fc00),
                RESERVED,
                ram(0x10_0000, 0xC000_0000 - 0x10_0000),
                ram(0x1_0000_0000, 2 * GIB),
            ]
        );
        let ram_total: u64 = e820_map(5 * GIB)
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram_total + RESERVED.size, 5 * GIB);
    }

    #[test]
    fn boot_entry_has_linux_type_numbers() {
        let e = RESERVED.to_boot_entry();
        assert_eq!(
            (
                { e.addr },
                { e.size },
                { e.r#type },
                ram(1, 2).to_boot_entry().r#type
            ),
            (0x9_fc00, 0x6_0400, 2, 1)
        );
    }

    #[test]
    fn memory_check_accepts_rxen_layout_and_rejects_others() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (64 * MIB) as usize)])
            .expect("mem");
        assert_eq!(e820_for_memory(&mem).expect("map"), e820_map(64 * MIB));

        let tiny =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MIB as usize)]).expect("mem");
        assert_eq!(
            e820_for_memory(&tiny),
            Err(MemoryLayoutError::TooSmall(MIB))
        );

        // 4 MiB of RAM, but starting at 1 MiB: low memory is missing.
        let shifted =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(MIB), (4 * MIB) as usize)])
                .expect("mem");
        assert_eq!(
            e820_for_memory(&shifted),
            Err(MemoryLayoutError::NotBacked {
                addr: 0,
                size: 0x9_fc00
            })
        );
    }
}
