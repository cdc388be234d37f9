//! Which pages of guest memory the host has ever backed with data, from
//! `/proc/self/pagemap`: a page that is not present, or that maps the
//! kernel's shared zero page, has not been written since it was last zero.
//! The migration sender uses it to send never-written pages as zero pages
//! without reading them.
//! The VMM opens it at start-up (it may open no path once the guest runs).

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

const PAGE: usize = 4096;
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const PFN_MASK: u64 = (1 << 55) - 1;
/// Bytes of the probe mapping: two huge pages, so that a host with
/// transparent huge pages shows its huge zero page too.
const PROBE: usize = 4 << 20;

/// The process's page map and the frame numbers of the zero page(s).
pub struct Pagemap {
    file: File,
    zero_pfns: HashSet<u64>,
}

impl Pagemap {
    /// Opens the page map; `None` where it cannot tell zero pages apart
    /// (no access, or frame numbers hidden from this process).
    pub fn open() -> Option<Pagemap> {
        let file = File::open("/proc/self/pagemap").ok()?;
        // SAFETY: a fresh private anonymous mapping, unmapped below; no
        // other code sees it.
        let probe = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PROBE,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if probe == libc::MAP_FAILED {
            return None;
        }
        let base = probe as usize;
        for p in (0..PROBE).step_by(PAGE) {
            // SAFETY: inside the readable mapping just made; a read maps the zero page.
            unsafe { std::ptr::read_volatile((base + p) as *const u8) };
        }
        let mut entries = vec![0u64; PROBE / PAGE];
        let read = read_entries(&file, base, &mut entries);
        // SAFETY: unmaps exactly the mapping made above.
        unsafe { libc::munmap(probe, PROBE) };
        read.ok()?;
        let mut zero_pfns = HashSet::new();
        for e in entries {
            if e & PRESENT == 0 {
                continue;
            }
            let pfn = e & PFN_MASK;
            if pfn == 0 {
                return None; // frame numbers are hidden (no CAP_SYS_ADMIN)
            }
            zero_pfns.insert(pfn);
        }
        (!zero_pfns.is_empty()).then_some(Pagemap { file, zero_pfns })
    }

    /// For each of the `pages` pages from host address `host`, whether it
    /// may hold data: present on a frame of its own, or swapped out.
    pub fn backed(&self, host: usize, pages: usize) -> std::io::Result<Vec<bool>> {
        let mut entries = vec![0u64; pages];
        read_entries(&self.file, host, &mut entries)?;
        Ok(entries
            .into_iter()
            .map(|e| {
                e & SWAPPED != 0 || (e & PRESENT != 0 && !self.zero_pfns.contains(&(e & PFN_MASK)))
            })
            .collect())
    }
}

/// Reads the page map entries of the pages from `host` into `out`.
fn read_entries(file: &File, host: usize, out: &mut [u64]) -> std::io::Result<()> {
    let mut bytes = vec![0u8; out.len() * 8];
    let mut done = 0;
    let start = (host / PAGE) as u64 * 8;
    while done < bytes.len() {
        let n = file.read_at(&mut bytes[done..], start + done as u64)?;
        if n == 0 {
            return Err(std::io::Error::other("short page map read"));
        }
        done += n;
    }
    for (e, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *e = u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_pages_are_backed_and_read_ones_are_not() {
        // Root (CAP_SYS_ADMIN) sees frame numbers; rxen's VMMs, and so its tests, run as root.
        let map = Pagemap::open().expect(
            "/proc/self/pagemap shows no page frame numbers to this process: run the tests as \
             root (CAP_SYS_ADMIN), as rxen runs",
        );
        let mut v = vec![0u8; 64 * PAGE];
        let base = (v.as_ptr() as usize).div_ceil(PAGE) * PAGE;
        let off = base - v.as_ptr() as usize;
        v[off + 3 * PAGE] = 1;
        let backed = map.backed(base, 8).expect("read");
        assert!(backed[3]);
        // An anonymous mapping only read is all zero page.
        // SAFETY: private anonymous mapping, unmapped below.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(m, libc::MAP_FAILED);
        for p in 0..8 {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::read_volatile((m as usize + p * PAGE) as *const u8) };
        }
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile((m as usize + 5 * PAGE) as *mut u8, 7) };
        let backed = map.backed(m as usize, 8).expect("read");
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(m, 8 * PAGE) };
        assert_eq!(
            backed,
            vec![false, false, false, false, false, true, false, false]
        );
    }
}
