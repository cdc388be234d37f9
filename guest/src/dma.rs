//! Memory for device rings and buffers: a page pool in the image, identity-mapped,
//! so that a buffer's address is its guest-physical address.

/// Pages in the pool (3 MiB).
pub const POOL_PAGES: usize = 768;
/// Bytes per page.
pub const PAGE: usize = 4096;

#[repr(C, align(4096))]
struct Pool([u8; POOL_PAGES * PAGE]);

/// The pool itself; only `Dma` hands out pieces of it. It lives in `.dma`, a section that is
/// never zeroed at boot (zeroing megabytes with `rep stosb` is very slow under PVM): `alloc`
/// zeroes what it hands out.
#[link_section = ".dma"]
static mut POOL: Pool = Pool([0; POOL_PAGES * PAGE]);

/// The pool's allocator (owned by vCPU 0's device table).
pub struct Dma {
    used: [u64; POOL_PAGES / 64],
}

impl Dma {
    /// An allocator over the whole, unused pool.
    pub const fn new() -> Dma {
        Dma {
            used: [0; POOL_PAGES / 64],
        }
    }

    fn base() -> u64 {
        core::ptr::addr_of_mut!(POOL) as u64
    }

    fn is_used(&self, page: usize) -> bool {
        self.used
            .get(page / 64)
            .is_some_and(|word| word & (1 << (page % 64)) != 0)
    }

    fn mark(&mut self, page: usize, used: bool) {
        if let Some(word) = self.used.get_mut(page / 64) {
            if used {
                *word |= 1 << (page % 64);
            } else {
                *word &= !(1 << (page % 64));
            }
        }
    }

    /// Allocates `pages` zeroed, physically contiguous pages; returns their address.
    pub fn alloc(&mut self, pages: usize) -> Option<u64> {
        if pages == 0 {
            return None;
        }
        let mut start = 0;
        while start + pages <= POOL_PAGES {
            match (start..start + pages).find(|&p| self.is_used(p)) {
                Some(busy) => start = busy + 1,
                None => {
                    for page in start..start + pages {
                        self.mark(page, true);
                    }
                    let addr = Self::base() + (start * PAGE) as u64;
                    // Word by word rather than `rep stosb`, which PVM may emulate byte by
                    // byte right after a trapping instruction.
                    for word in 0..(pages * PAGE / 8) as u64 {
                        // SAFETY: [addr, addr + pages * PAGE) lies inside POOL and was
                        // free, so nothing else refers to it.
                        unsafe { core::ptr::write_volatile((addr + 8 * word) as *mut u64, 0) };
                    }
                    return Some(addr);
                }
            }
        }
        None
    }

    /// Returns `pages` pages at `addr` (from `alloc`) to the pool.
    pub fn free(&mut self, addr: u64, pages: usize) {
        let Some(offset) = addr.checked_sub(Self::base()) else {
            return;
        };
        let first = offset as usize / PAGE;
        for page in first..first.saturating_add(pages).min(POOL_PAGES) {
            self.mark(page, false);
        }
    }
}

/// A byte slice over pool memory at `addr`.
///
/// # Safety
/// `addr..addr + len` must be memory this caller allocated from `Dma` and still owns,
/// and no device may be writing it meanwhile.
pub unsafe fn slice_mut<'a>(addr: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}
