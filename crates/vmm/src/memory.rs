//! Guest physical memory: the RAM layout and its anonymous host mapping.
//!
//! The layout lives here and only here: [`ram_ranges`] decides where RAM sits
//! in guest physical space, and [`memslots`] turns the mapped regions into the
//! KVM memory slots that [`crate::kvm_vm`] registers.

use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

/// Guest memory as the VMM maps it: every page written by the VMM itself
/// (device emulation) is marked in an [`AtomicBitmap`], so that dirty
/// tracking for live migration sees those writes as well as the vCPUs' (KVM's log).
pub type GuestMemory = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// One MiB in bytes.
pub const MIB: u64 = 1 << 20;
/// One GiB in bytes.
pub const GIB: u64 = 1 << 30;
/// Start of the hole below 4 GiB for guests larger than this.
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// End of the hole below 4 GiB: RAM beyond the hole continues here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Largest guest accepted (the boot page tables map at most 512 GiB).
pub const MAX_MEMORY_MIB: u64 = 512 * 1024 - (MMIO_HOLE_END - MMIO_HOLE_START) / MIB;
/// Smallest guest accepted: room for the boot structures and a kernel at 1 MiB.
pub const MIN_MEMORY_MIB: u64 = 4;

/// Errors while building guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is outside what rxen supports.
    #[error("guest memory of {0} MiB is out of range ({MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB)")]
    BadSize(u64),
    /// Mapping the anonymous memory failed.
    #[error("cannot map guest memory: {0}")]
    Mmap(#[from] vm_memory::mmap::MmapRegionError),
    /// The region could not be placed at its guest address.
    #[error("cannot place a guest memory region at {0:#x}")]
    Region(u64),
    /// The regions could not be assembled into guest memory.
    #[error("cannot assemble guest memory: {0}")]
    Collection(#[from] vm_memory::GuestRegionCollectionError),
}

/// The RAM ranges (guest address, length in bytes) of a guest of `memory_mib` MiB.
///
/// RAM is one range from 0 while it fits below [`MMIO_HOLE_START`]; larger guests
/// get the hole up to 4 GiB and the rest of RAM above it.
pub fn ram_ranges(memory_mib: u64) -> Result<Vec<(GuestAddress, u64)>, MemoryError> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
        return Err(MemoryError::BadSize(memory_mib));
    }
    let bytes = memory_mib * MIB;
    if bytes <= MMIO_HOLE_START {
        return Ok(vec![(GuestAddress(0), bytes)]);
    }
    Ok(vec![
        (GuestAddress(0), MMIO_HOLE_START),
        (GuestAddress(MMIO_HOLE_END), bytes - MMIO_HOLE_START),
    ])
}

/// Maps anonymous, unreserved (`MAP_NORESERVE`) host memory for a guest of `memory_mib` MiB.
pub fn create_guest_memory(memory_mib: u64) -> Result<GuestMemory, MemoryError> {
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(memory_mib)? {
        let size = usize::try_from(len).map_err(|_| MemoryError::BadSize(memory_mib))?;
        let mapping = MmapRegionBuilder::new_with_bitmap(size, AtomicBitmap::with_len(size))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()?;
        let region = GuestRegionMmap::new(mapping, addr).ok_or(MemoryError::Region(addr.0))?;
        regions.push(region);
    }
    Ok(GuestMemory::from_regions(regions)?)
}

/// First guest physical address after the end of RAM.
pub fn ram_end(mem: &GuestMemory) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().0.saturating_add(r.len()))
        .max()
        .unwrap_or(0)
}

/// Total RAM in bytes.
pub fn ram_bytes(mem: &GuestMemory) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// One KVM memory slot: a guest physical range backed by host memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSlot {
    /// KVM slot number.
    pub slot: u32,
    /// Guest physical start address.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host virtual address of the backing memory.
    pub host_addr: u64,
}

/// The memory slots for `mem`: one per region, numbered from 0 in address order.
pub fn memslots(mem: &GuestMemory) -> Vec<MemSlot> {
    mem.iter()
        .zip(0u32..)
        .map(|(region, slot)| MemSlot {
            slot,
            guest_addr: region.start_addr().0,
            size: region.len(),
            host_addr: region.as_ptr() as u64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        let r = ram_ranges(128).expect("ranges");
        assert_eq!(r, vec![(GuestAddress(0), 128 * MIB)]);
        let r = ram_ranges(3072).expect("ranges");
        assert_eq!(r, vec![(GuestAddress(0), 3 * GIB)]);
    }

    #[test]
    fn large_guest_gets_hole() {
        let r = ram_ranges(4096).expect("ranges");
        assert_eq!(
            r,
            vec![(GuestAddress(0), 3 * GIB), (GuestAddress(4 * GIB), GIB),]
        );
    }

    #[test]
    fn bad_sizes_rejected() {
        assert!(ram_ranges(0).is_err());
        assert!(ram_ranges(1).is_err());
        assert!(ram_ranges(u64::MAX).is_err());
    }

    #[test]
    fn slots_follow_regions() {
        let mem = create_guest_memory(16).expect("memory");
        let slots = memslots(&mem);
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].guest_addr, 0);
        assert_eq!(slots[0].size, 16 * MIB);
        assert_ne!(slots[0].host_addr, 0);
        assert_eq!(ram_end(&mem), 16 * MIB);
        assert_eq!(ram_bytes(&mem), 16 * MIB);
    }
}
