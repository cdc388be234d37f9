//! The initial ramdisk: placed page-aligned as high as it fits, then read into guest memory.

use std::io::{self, Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, ReadVolatile};

use crate::layout::PAGE_SIZE;

/// `initrd_addr_max` for a vmlinux, which has no setup header to say (modern kernels' value).
pub const DEFAULT_INITRD_ADDR_MAX: u32 = 0x7fff_ffff;

/// Errors placing or loading the initrd.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// The file could not be read.
    #[error("cannot read the initrd: {0}")]
    Io(#[from] io::Error),
    /// An empty file.
    #[error("the initrd is empty")]
    Empty,
    /// Larger than `ramdisk_size` can describe.
    #[error("the initrd is {0} bytes; the boot protocol allows at most 4 GiB - 1")]
    TooLarge(u64),
    /// No room between the kernel and the highest address allowed.
    #[error(
        "the initrd ({size:#x} bytes) does not fit in guest RAM between \
         the kernel's end {lowest:#x} and {highest:#x}"
    )]
    DoesNotFit {
        /// Size of the initrd.
        size: u64,
        /// Lowest address it may start at (end of the kernel).
        lowest: u64,
        /// First address it may not reach.
        highest: u64,
    },
    /// Guest memory could not be written.
    #[error("cannot read the initrd into guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// Where a `size`-byte initrd goes: page-aligned, as high as possible, ending at most at
/// `initrd_addr_max` + 1 and `ram_end`, starting at or above `lowest`.
pub fn place_initrd(
    size: u64,
    initrd_addr_max: u32,
    lowest: u64,
    ram_end: u64,
) -> Result<GuestAddress, InitrdError> {
    if size == 0 {
        return Err(InitrdError::Empty);
    }
    if size > u64::from(u32::MAX) {
        return Err(InitrdError::TooLarge(size));
    }
    let highest = (u64::from(initrd_addr_max) + 1).min(ram_end);
    let does_not_fit = InitrdError::DoesNotFit {
        size,
        lowest,
        highest,
    };
    let start = highest
        .checked_sub(size)
        .map(|s| s & !(PAGE_SIZE - 1))
        .ok_or(does_not_fit)?;
    if start < lowest {
        return Err(InitrdError::DoesNotFit {
            size,
            lowest,
            highest,
        });
    }
    Ok(GuestAddress(start))
}

/// Reads `size` bytes from the start of `image` into `mem` at `addr`.
pub fn load_initrd<M, R>(
    mem: &M,
    image: &mut R,
    addr: GuestAddress,
    size: u64,
) -> Result<(), InitrdError>
where
    M: GuestMemoryBackend,
    R: ReadVolatile + Seek,
{
    image.seek(SeekFrom::Start(0))?;
    let len = usize::try_from(size).map_err(|_| InitrdError::TooLarge(size))?;
    mem.read_exact_volatile_from(addr, image, len)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;

    #[test]
    fn placed_page_aligned_at_the_top_of_ram() {
        // 0x1801 bytes below 64 MiB: start rounded down to a page.
        assert_eq!(
            place_initrd(0x1801, DEFAULT_INITRD_ADDR_MAX, 2 * MIB, 64 * MIB).expect("place"),
            GuestAddress(64 * MIB - 0x2000)
        );
        assert_eq!(
            place_initrd(0x2000, DEFAULT_INITRD_ADDR_MAX, 2 * MIB, 64 * MIB).expect("place"),
            GuestAddress(64 * MIB - 0x2000)
        );
    }

    #[test]
    fn initrd_addr_max_caps_the_top() {
        // The last byte may be at initrd_addr_max itself.
        assert_eq!(
            place_initrd(0x1000, 0x00ff_ffff, 2 * MIB, 64 * MIB).expect("place"),
            GuestAddress(0x00ff_f000)
        );
        // The 3 GiB RAM end caps it too.
        assert_eq!(
            place_initrd(0x1000, 0xffff_ffff, 2 * MIB, 0xC000_0000).expect("place"),
            GuestAddress(0xBFFF_F000)
        );
    }

    #[test]
    fn must_stay_above_the_kernel() {
        let err = place_initrd(0x10_0000, DEFAULT_INITRD_ADDR_MAX, 0x1F0_0001, 32 * MIB)
            .expect_err("overlap");
        assert!(
            matches!(
                err,
                InitrdError::DoesNotFit {
                    size: 0x10_0000,
                    lowest: 0x1F0_0001,
                    highest: 0x200_0000
                }
            ),
            "{err}"
        );
        assert_eq!(
            place_initrd(0x10_0000, DEFAULT_INITRD_ADDR_MAX, 0x1F0_0000, 32 * MIB).expect("fits"),
            GuestAddress(0x1F0_0000)
        );
        assert!(matches!(
            place_initrd(u64::MAX, DEFAULT_INITRD_ADDR_MAX, 0, 32 * MIB),
            Err(InitrdError::TooLarge(_))
        ));
        assert!(matches!(
            place_initrd(64 * MIB, DEFAULT_INITRD_ADDR_MAX, 0, 32 * MIB),
            Err(InitrdError::DoesNotFit { .. })
        ));
        assert!(matches!(
            place_initrd(0, DEFAULT_INITRD_ADDR_MAX, 0, 32 * MIB),
            Err(InitrdError::Empty)
        ));
    }

    #[test]
    fn loaded_bytes_match_the_file() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (4 * MIB) as usize)])
            .expect("mem");
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let mut file = Cursor::new(data.clone());
        load_initrd(&mem, &mut file, GuestAddress(0x30_0000), 5000).expect("load");
        let mut back = vec![0u8; 5000];
        mem.read_slice(&mut back, GuestAddress(0x30_0000))
            .expect("read");
        assert_eq!(back, data);
        assert!(load_initrd(&mem, &mut file, GuestAddress(4 * MIB - 100), 5000).is_err());
    }
}
