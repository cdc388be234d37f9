//! Guest memory on its way out: every page frame, dirty tracking (KVM's log
//! and the VMM's own bitmap, and the page rehash that catches writes the log
//! missed), page batches into the stream, and the progress file `rxl` reads.

use rxen_proto::stream::{
    self, encode_pages, RecordType, StreamWriter, MAX_BATCH, PAGE_SIZE, ZERO_PAGE,
};
use rxen_proto::vmctl::TransferStats;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::TransferError;
use crate::kvm_vm::{KvmVm, KvmVmError};
use crate::memory::{self, GuestMemory, MemSlot};

/// Every guest page frame number of `mem`.
pub fn all_pfns(mem: &GuestMemory) -> Vec<u64> {
    let shift = stream::PAGE_SHIFT;
    mem.iter()
        .flat_map(|r| {
            let start = r.start_addr().0 >> shift;
            start..start + (r.len() >> shift)
        })
        .collect()
}

/// Dirty page tracking over all memory slots: KVM's log for vCPU writes,
/// the guest memory's bitmap for the VMM's (device) writes. KVM logs from
/// each slot's creation ([`KvmVm::register_memory`]); tracking starts by
/// clearing both logs.
pub struct DirtyLog {
    slots: Vec<MemSlot>,
}

impl DirtyLog {
    /// Clears both logs: what is written from here on is reported.
    pub fn start(kvm: &KvmVm, mem: &GuestMemory) -> Result<Self, TransferError> {
        let log = Self {
            slots: memory::memslots(mem),
        };
        log.collect(kvm, mem)?;
        Ok(log)
    }

    /// Page frame numbers written since the last call (or since `start`), sorted.
    pub fn collect(&self, kvm: &KvmVm, mem: &GuestMemory) -> Result<Vec<u64>, TransferError> {
        let mut out = Vec::new();
        for (s, region) in self.slots.iter().zip(mem.iter()) {
            let size = usize::try_from(s.size).map_err(|_| TransferError::Memory {
                addr: s.guest_addr,
                why: "slot too large".into(),
            })?;
            let kvm_bits =
                kvm.fd
                    .get_dirty_log(s.slot, size)
                    .map_err(|source| KvmVmError::Ioctl {
                        what: "read the dirty log",
                        source,
                    })?;
            let vmm_bits = vm_memory::mmap::MmapRegion::bitmap(region).get_and_reset();
            let base = s.guest_addr >> stream::PAGE_SHIFT;
            let pages = s.size >> stream::PAGE_SHIFT;
            for (w, word) in kvm_bits.iter().enumerate() {
                let mut bits = *word | vmm_bits.get(w).copied().unwrap_or(0);
                while bits != 0 {
                    let b = bits.trailing_zeros() as u64;
                    bits &= bits - 1;
                    let page = w as u64 * 64 + b;
                    if page < pages {
                        out.push(base + page);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Keeps `transfer.json` in the run directory up to date while a stream is
/// written, at most ten times a second, for `rxl`'s progress bar: rewritten in
/// place through the descriptor opened at start-up (no path is opened), and
/// emptied on drop.
pub struct ProgressFile {
    file: Option<std::fs::File>,
    now: rxen_proto::vmctl::TransferProgress,
    written: Option<std::time::Instant>,
}

impl ProgressFile {
    /// Progress written to `file` (none: not written) for a guest of `ram_pages` pages.
    pub fn new(file: Option<std::fs::File>, ram_pages: u64) -> Self {
        Self {
            file,
            now: rxen_proto::vmctl::TransferProgress {
                ram_pages,
                ..Default::default()
            },
            written: None,
        }
    }

    /// Starts round `round` of `pages` pages.
    pub fn round(&mut self, round: u32, pages: u64, paused: bool, bytes: u64) {
        self.now.round = round;
        self.now.round_pages = pages;
        self.now.round_sent = 0;
        self.now.paused = paused;
        self.now.bytes = bytes;
        self.write();
    }

    /// Counts `pages` more pages of the round as sent.
    pub fn advance(&mut self, pages: u64) {
        self.now.round_sent += pages;
        self.now.bytes += pages * PAGE_SIZE as u64;
        let due = self
            .written
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(100));
        if due {
            self.write();
        }
    }

    fn write(&mut self) {
        self.written = Some(std::time::Instant::now());
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.file else {
            return;
        };
        let Ok(json) = serde_json::to_vec(&self.now) else {
            return;
        };
        // A reader may catch the file between the two calls (or mid-write):
        // it then sees JSON it cannot parse, and tries again.
        if file.write_all_at(&json, 0).is_ok() {
            let _ = file.set_len(json.len() as u64);
        }
    }
}

impl Drop for ProgressFile {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = f.set_len(0);
        }
    }
}

/// The union of two sorted page lists, sorted, without repeats.
pub fn merge_sorted(mut a: Vec<u64>, b: Vec<u64>) -> Vec<u64> {
    if b.is_empty() {
        return a;
    }
    a.extend(b);
    a.sort_unstable();
    a.dedup();
    a
}

/// Copies the guest page at `addr` (4 KiB aligned, inside RAM) into `buf`.
fn read_page(mem: &GuestMemory, addr: u64, buf: &mut [u8]) -> Result<(), TransferError> {
    let in_ram = buf.len() == PAGE_SIZE
        && addr % PAGE_SIZE as u64 == 0
        && mem.address_in_range(GuestAddress(addr + PAGE_SIZE as u64 - 1));
    let host = mem
        .get_host_address(GuestAddress(addr))
        .ok()
        .filter(|_| in_ram)
        .ok_or_else(|| TransferError::Memory {
            addr,
            why: "not a page of guest RAM".into(),
        })?;
    // SAFETY: `host` maps the whole 4 KiB page (regions are page-aligned and
    // the page's last byte is in the same RAM), and the mapping lives as long as
    // `mem`. vCPUs may write the page meanwhile; dirty logging resends it then.
    unsafe { std::ptr::copy_nonoverlapping(host, buf.as_mut_ptr(), PAGE_SIZE) };
    Ok(())
}

fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8).fold(0u64, |acc, c| {
        acc | u64::from_ne_bytes(c.try_into().unwrap_or([0xFF; 8]))
    }) == 0
}

/// Buffers reused across page batches.
#[derive(Default)]
pub struct PageSender {
    entries: Vec<u64>,
    data: Vec<u8>,
    body: Vec<u8>,
    page: Vec<u8>,
    /// The page map opened at start-up; `None` where it cannot help.
    pagemap: Option<std::sync::Arc<crate::migration::pagemap::Pagemap>>,
    /// For the current batch: whether each page may hold data.
    backed: Vec<bool>,
}

impl PageSender {
    /// A sender that skips never-written pages with `pagemap` (opened at start-up).
    pub fn with_pagemap(
        pagemap: Option<std::sync::Arc<crate::migration::pagemap::Pagemap>>,
    ) -> Self {
        Self {
            pagemap,
            ..Self::default()
        }
    }

    /// Fills `self.backed` for a batch of consecutive page frames in one
    /// mapping; false where it cannot tell (then every page is read).
    fn batch_backed(&mut self, mem: &GuestMemory, chunk: &[u64]) -> bool {
        let (Some(&first), Some(&last)) = (chunk.first(), chunk.last()) else {
            return false;
        };
        if last - first + 1 != chunk.len() as u64 {
            return false;
        }
        let host = |pfn: u64| {
            mem.get_host_address(GuestAddress(pfn << stream::PAGE_SHIFT))
                .ok()
                .map(|p| p as usize)
        };
        let (Some(h0), Some(h1)) = (host(first), host(last)) else {
            return false;
        };
        if h1.wrapping_sub(h0) != (chunk.len() - 1) * PAGE_SIZE {
            return false;
        }
        match self.pagemap.as_ref().map(|m| m.backed(h0, chunk.len())) {
            Some(Ok(b)) => {
                self.backed = b;
                true
            }
            _ => false,
        }
    }

    /// Sends `pfns` in batches: zero pages as a flag, the others with their
    /// data.
    pub fn send<W: std::io::Write>(
        &mut self,
        w: &mut StreamWriter<W>,
        mem: &GuestMemory,
        pfns: &[u64],
        stats: &mut TransferStats,
        mut progress: impl FnMut(u64),
    ) -> Result<(), TransferError> {
        self.page.resize(PAGE_SIZE, 0);
        for chunk in pfns.chunks(MAX_BATCH) {
            self.entries.clear();
            self.data.clear();
            // Pages the host never backed with data are zero: no need to read them.
            let known = self.batch_backed(mem, chunk);
            for (i, &pfn) in chunk.iter().enumerate() {
                if known && !self.backed.get(i).copied().unwrap_or(true) {
                    self.entries.push(pfn | ZERO_PAGE);
                    stats.zero_pages += 1;
                    continue;
                }
                let addr = pfn << stream::PAGE_SHIFT;
                read_page(mem, addr, &mut self.page)?;
                if is_zero(&self.page) {
                    self.entries.push(pfn | ZERO_PAGE);
                    stats.zero_pages += 1;
                } else {
                    self.entries.push(pfn);
                    self.data.extend_from_slice(&self.page);
                    stats.pages += 1;
                }
            }
            encode_pages(&self.entries, &self.data, &mut self.body);
            w.record(RecordType::Pages, &self.body)?;
            progress(chunk.len() as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::receive::{receive, StreamSource};
    use super::*;
    use rxen_proto::stream::{StreamWriter, VmInfo};
    use vm_memory::Bytes;

    /// A config record as rxend writes one (trimmed).
    const CONFIG: &[u8] =
        br#"{"config":{"name":"guest","memory_mib":8,"vcpus":1},"config_path":null}"#;

    #[test]
    fn zero_detection() {
        let mut p = vec![0u8; PAGE_SIZE];
        assert!(is_zero(&p));
        p[4095] = 1;
        assert!(!is_zero(&p));
    }

    #[test]
    fn pages_round_trip_and_bad_pages_are_refused() {
        let src = memory::create_guest_memory(8).expect("mem");
        src.write_slice(&[7u8; 16], GuestAddress(0x5000))
            .expect("w");
        let mut w = StreamWriter::new(Vec::new(), stream::Header::new(false)).expect("w");
        w.record(RecordType::Config, CONFIG).expect("c");
        let info = VmInfo {
            memory_mib: 8,
            vcpus: 1,
            kernel: "testguest".into(),
        };
        w.record(RecordType::VmInfo, &stream::json_body(&info).expect("j"))
            .expect("i");
        let mut stats = TransferStats::default();
        PageSender::with_pagemap(
            crate::migration::pagemap::Pagemap::open().map(std::sync::Arc::new),
        )
        .send(&mut w, &src, &all_pfns(&src), &mut stats, |_| {})
        .expect("send");
        assert_eq!(stats.pages, 1);
        assert_eq!(stats.zero_pages, 8 * 256 - 1);
        w.record(RecordType::End, &[]).expect("end");
        let bytes = w.into_inner();
        let dst = memory::create_guest_memory(8).expect("mem");
        let limits = super::super::vcpu_state::testing::limits();
        // What receiving `stream` into the 8 MiB, 1-vCPU `dst` refuses it with.
        let refused = |stream: &[u8], source| {
            receive(stream, &dst, 8, 1, &limits, source, None)
                .err()
                .expect("refused")
        };
        // No vCPU state: refused, though the pages were fine.
        let e = refused(&bytes[..], StreamSource::File);
        assert!(e.to_string().contains("no state for vCPU 0"), "{e}");
        let mut got = [0u8; 16];
        dst.read_slice(&mut got, GuestAddress(0x5000)).expect("r");
        assert_eq!(got, [7u8; 16]);
        // Another shape: refused.
        assert!(receive(&bytes[..], &dst, 16, 1, &limits, StreamSource::File, None).is_err());
        // A kernel kind this VMM does not know: refused before anything is read.
        let mut w = StreamWriter::new(Vec::new(), stream::Header::new(false)).expect("w");
        w.record(RecordType::Config, CONFIG).expect("c");
        let odd = VmInfo {
            kernel: "windows".into(),
            ..info.clone()
        };
        w.record(RecordType::VmInfo, &stream::json_body(&odd).expect("j"))
            .expect("i");
        let e = refused(&w.into_inner()[..], StreamSource::File);
        assert!(e.to_string().contains("does not know"), "{e}");
        // Bytes after the end record: refused in a file, left alone on a connection.
        let mut junk = bytes.clone();
        junk.extend_from_slice(b"trailing junk");
        let e = refused(&junk[..], StreamSource::File);
        assert!(e.to_string().contains("after its end record"), "{e}");
        let e = refused(&junk[..], StreamSource::Connection(None));
        assert!(e.to_string().contains("no state for vCPU 0"), "{e}");
        // A page beyond RAM: refused.
        let mut w = StreamWriter::new(Vec::new(), stream::Header::new(false)).expect("w");
        w.record(RecordType::Config, CONFIG).expect("c");
        w.record(RecordType::VmInfo, &stream::json_body(&info).expect("j"))
            .expect("i");
        let mut body = Vec::new();
        encode_pages(&[(8 << 20 >> 12) | ZERO_PAGE], &[], &mut body);
        w.record(RecordType::Pages, &body).expect("p");
        let e = refused(&w.into_inner()[..], StreamSource::File);
        assert!(e.to_string().contains("outside"), "{e}");
    }

    #[test]
    fn merged_page_lists_are_sorted_without_repeats() {
        assert_eq!(merge_sorted(vec![3, 0x1FF], vec![7, 3]), vec![3, 7, 0x1FF]);
        assert_eq!(merge_sorted(vec![5], Vec::new()), vec![5]);
    }
}
