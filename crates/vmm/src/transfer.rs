//! Moving guest memory through the stream: dirty tracking (KVM's log and
//! the VMM's own bitmap), page batches out, and the receiving side that
//! checks a whole stream before anything runs.

use std::io::Read;

use rxen_proto::stream::{
    self, decode_pages, encode_pages, DeviceRecord, RecordType, StreamError, StreamReader,
    StreamWriter, VmInfo, MAX_BATCH, PAGE_SIZE, ZERO_PAGE,
};
use rxen_proto::vmctl::TransferStats;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::kvm_vm::{KvmVm, KvmVmError};
use crate::memory::{self, GuestMemory, MemSlot};
use crate::regcheck::CpuLimits;
use crate::snapshot::{self, SnapshotError, VcpuState, VmState};

/// Errors while sending or receiving a stream.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The stream itself is bad or the connection failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// vCPU or VM state could not be captured or applied.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The dirty log could not be read.
    #[error(transparent)]
    Kvm(#[from] KvmVmError),
    /// Guest memory could not be read or written.
    #[error("guest memory at {addr:#x}: {why}")]
    Memory {
        /// Guest physical address.
        addr: u64,
        /// What failed.
        why: String,
    },
    /// The stream does not fit this VM.
    #[error("{0}")]
    Mismatch(String),
    /// The peer said no, or broke the protocol.
    #[error("{0}")]
    Peer(String),
}

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

/// A 64-bit fingerprint of each guest page as it was last sent, so that the
/// sender can find pages that changed without KVM's dirty log saying so.
///
/// On some hosts (seen on PVM) dirty logging misses writes through mappings
/// the guest already had, so a page rewritten after it was sent would arrive
/// stale. Rehashing all of RAM at the end of each round, and once more while
/// the guest is paused, closes that gap at the cost of reading memory.
pub struct PageHashes {
    /// Indexed by page frame number; `UNSENT` where nothing was sent yet.
    hashes: Vec<u64>,
    /// Where available, tells pages never written (zero page or absent)
    /// from the others, so that only the others are read.
    pagemap: Option<std::sync::Arc<crate::pagemap::Pagemap>>,
    /// Whether the host swaps: then an absent page may hold data, and only
    /// the page map (which marks swapped pages) can tell.
    swap_active: bool,
    /// The fingerprint of a zero page.
    zero: u64,
}

/// Marks a page frame whose content has not been sent.
const UNSENT: u64 = u64::MAX;

/// The fingerprint of one 4 KiB page: CRC-32C of each half.
fn page_hash(page: &[u8]) -> u64 {
    let (a, b) = page.split_at(page.len() / 2);
    let h = (u64::from(crc32c::crc32c(a)) << 32) | u64::from(crc32c::crc32c(b));
    h.min(UNSENT - 1)
}

impl PageHashes {
    /// Room for every page frame of `mem`, none sent yet; `pagemap` is the
    /// page map opened at start-up, if it helps.
    pub fn new(
        mem: &GuestMemory,
        pagemap: Option<std::sync::Arc<crate::pagemap::Pagemap>>,
    ) -> Self {
        let end = mem
            .iter()
            .map(|r| (r.start_addr().0 + r.len()) >> stream::PAGE_SHIFT)
            .max()
            .unwrap_or(0);
        Self {
            hashes: vec![UNSENT; usize::try_from(end).unwrap_or(0)],
            pagemap,
            swap_active: crate::pagemap::swap_active(),
            zero: page_hash(&[0u8; PAGE_SIZE]),
        }
    }

    /// Which of `pages` pages from host address `host` may hold data:
    /// `mincore` residency without swap (about three times cheaper than the
    /// page map: it matters in the downtime), else the page map; `None`
    /// where neither can tell.
    fn backed(&self, host: usize, pages: usize) -> Option<Vec<bool>> {
        if !self.swap_active {
            if let Ok(r) = crate::pagemap::resident(host, pages) {
                return Some(r);
            }
        }
        self.pagemap.as_ref()?.backed(host, pages).ok()
    }

    fn record_zero(&mut self, pfn: u64) {
        let zero = self.zero;
        if let Some(h) = usize::try_from(pfn)
            .ok()
            .and_then(|i| self.hashes.get_mut(i))
        {
            *h = zero;
        }
    }

    fn record(&mut self, pfn: u64, page: &[u8]) {
        if let Some(h) = usize::try_from(pfn)
            .ok()
            .and_then(|i| self.hashes.get_mut(i))
        {
            *h = page_hash(page);
        }
    }

    /// Page frames of `mem` whose content differs from what was last sent
    /// (or that were never sent), leaving out those in `already` (sorted).
    /// Reads every page the host has backed with data (all of RAM where the
    /// page map cannot tell), split over the host's CPUs.
    pub fn changed(&self, mem: &GuestMemory, already: &[u64]) -> Vec<u64> {
        let mut spans = Vec::new();
        let mut backed = Vec::new();
        for r in mem.iter() {
            let start = r.start_addr().0 >> stream::PAGE_SHIFT;
            let pages = r.len() >> stream::PAGE_SHIFT;
            let host = r.as_ptr() as usize;
            spans.push((start, pages, host));
            backed.push(self.backed(host, pages as usize));
        }
        let zero = self.zero;
        let threads = usable_cpus().clamp(1, 8) as u64;
        let mut found: Vec<u64> = std::thread::scope(|s| {
            let workers: Vec<_> = spans
                .iter()
                .zip(&backed)
                .flat_map(|(&(start, pages, host), backed)| {
                    let per = pages.div_ceil(threads).max(1);
                    (0..threads).filter_map(move |t| {
                        let from = t * per;
                        (from < pages).then(|| (start, from, (from + per).min(pages), host, backed))
                    })
                })
                .map(|(start, from, to, host, backed)| {
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for p in from..to {
                            let pfn = start + p;
                            let sent = usize::try_from(pfn)
                                .ok()
                                .and_then(|i| self.hashes.get(i))
                                .copied()
                                .unwrap_or(UNSENT);
                            let never_written = backed
                                .as_ref()
                                .and_then(|b| b.get(p as usize))
                                .is_some_and(|b| !b);
                            if never_written {
                                // Zero now: changed only if something else was sent.
                                if sent != zero {
                                    out.push(pfn);
                                }
                                continue;
                            }
                            // SAFETY: `host` maps this region's `pages` pages for as
                            // long as `mem` lives, which outlives this scope; vCPUs may
                            // write meanwhile, which at worst makes the page look changed.
                            let page = unsafe {
                                std::slice::from_raw_parts(
                                    (host + (p as usize) * PAGE_SIZE) as *const u8,
                                    PAGE_SIZE,
                                )
                            };
                            if sent == UNSENT || sent != page_hash(page) {
                                out.push(pfn);
                            }
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        });
        found.retain(|pfn| already.binary_search(pfn).is_err());
        found
    }
}

/// CPUs this process may run on, from its affinity mask (`sched_getaffinity`):
/// unlike `available_parallelism`, which reads cgroup files under /proc, it
/// opens no path, as the VMM may not once its guest runs.
fn usable_cpus() -> usize {
    // SAFETY: zeroed is a valid (empty) `cpu_set_t`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid out buffer of the size passed, for the whole call.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return 1;
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads bit `i` of `set`, within its CPU_SETSIZE bits.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .count()
        .max(1)
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
    pagemap: Option<std::sync::Arc<crate::pagemap::Pagemap>>,
    /// For the current batch: whether each page may hold data.
    backed: Vec<bool>,
}

impl PageSender {
    /// A sender that skips never-written pages with `pagemap` (opened at start-up).
    pub fn with_pagemap(pagemap: Option<std::sync::Arc<crate::pagemap::Pagemap>>) -> Self {
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
    /// data; records what each page held in `hashes` when given.
    pub fn send<W: std::io::Write>(
        &mut self,
        w: &mut StreamWriter<W>,
        mem: &GuestMemory,
        pfns: &[u64],
        stats: &mut TransferStats,
        mut hashes: Option<&mut PageHashes>,
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
                    if let Some(h) = hashes.as_deref_mut() {
                        h.record_zero(pfn);
                    }
                    self.entries.push(pfn | ZERO_PAGE);
                    stats.zero_pages += 1;
                    continue;
                }
                let addr = pfn << stream::PAGE_SHIFT;
                read_page(mem, addr, &mut self.page)?;
                if let Some(h) = hashes.as_deref_mut() {
                    h.record(pfn, &self.page);
                }
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

/// Everything a stream carried besides memory, checked and ready to apply.
pub struct Received {
    /// The VM's shape and kernel kind.
    pub info: VmInfo,
    /// One state per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Interrupt controllers, PIT, clock.
    pub vm: VmState,
    /// Device states.
    pub devices: Vec<DeviceRecord>,
    /// Stream bytes read.
    pub bytes: u64,
}

/// The kernel kinds a stream may name (`VmInfo::kernel`).
pub const KERNEL_KINDS: [&str; 2] = ["testguest", "linux"];

/// Where a stream comes from: a save file ends with its end record; a migration connection
/// stays open after it (the target answers on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamSource {
    /// A save file: nothing may follow the end record.
    File,
    /// A migration connection.
    Connection,
}

/// Reads a whole stream into `mem` and returns the rest of the state. The
/// stream must describe a VM of `memory_mib` MiB with `vcpus` vCPUs whose
/// registers keep to `cpu` (the limits of the vCPUs built for it). Nothing
/// runs until the caller applies the result, so any error here leaves no guest running.
pub fn receive<R: Read>(
    input: R,
    mem: &GuestMemory,
    memory_mib: u64,
    vcpus: u32,
    cpu: &CpuLimits,
    source: StreamSource,
) -> Result<Received, TransferError> {
    let mut r = StreamReader::new(input)?;
    // The daemon took what it needs from the config record (or was given
    // another config); here it must at least be one.
    let config: stream::ConfigRecord = stream::from_json("config", &r.expect(RecordType::Config)?)?;
    if !config.config.is_object() {
        return Err(StreamError::Malformed {
            what: "config",
            why: "the domain config is not a JSON object".into(),
        }
        .into());
    }
    let info: VmInfo = stream::from_json("vm info", &r.expect(RecordType::VmInfo)?)?;
    if !KERNEL_KINDS.contains(&info.kernel.as_str()) {
        return Err(TransferError::Mismatch(format!(
            "the stream holds a kernel of kind \"{}\", which this VMM does not know",
            info.kernel.escape_debug()
        )));
    }
    if info.memory_mib != memory_mib || info.vcpus != vcpus {
        return Err(TransferError::Mismatch(format!(
            "the stream holds a domain of {} MiB with {} vCPUs, not {memory_mib} MiB with {vcpus}",
            info.memory_mib, info.vcpus
        )));
    }
    let ram_end = memory::ram_end(mem);
    let mut states: Vec<Option<VcpuState>> = (0..vcpus).map(|_| None).collect();
    let mut vm = None;
    let mut devices = Vec::new();
    let mut page = vec![0u8; PAGE_SIZE];
    // Pages this stream has written: any other page is still fresh (zero), so
    // a zero page there needs no work, and reading it would fault it in.
    let mut written = vec![0u64; (ram_end >> stream::PAGE_SHIFT).div_ceil(64) as usize];
    loop {
        let rec = r.next_record()?;
        match rec.kind {
            RecordType::Pages => {
                let batch = decode_pages(&rec.body)?;
                let mut data = batch.data.chunks_exact(PAGE_SIZE);
                for e in batch.entries {
                    let addr = (e & !ZERO_PAGE) << stream::PAGE_SHIFT;
                    let in_ram = addr < ram_end
                        && mem.address_in_range(GuestAddress(addr))
                        && mem.address_in_range(GuestAddress(addr + PAGE_SIZE as u64 - 1));
                    if !in_ram {
                        return Err(TransferError::Mismatch(format!(
                            "the stream has a page at {addr:#x}, outside the guest's memory"
                        )));
                    }
                    let mem_err = |e: vm_memory::GuestMemoryError| TransferError::Memory {
                        addr,
                        why: e.to_string(),
                    };
                    let pfn = (addr >> stream::PAGE_SHIFT) as usize;
                    let (word, bit) = (pfn / 64, 1u64 << (pfn % 64));
                    let seen = written.get(word).is_some_and(|w| w & bit != 0);
                    if e & ZERO_PAGE != 0 {
                        // Only a page this stream filled before needs clearing.
                        if seen {
                            page.fill(0);
                            mem.write_slice(&page, GuestAddress(addr))
                                .map_err(mem_err)?;
                        }
                    } else {
                        if let Some(w) = written.get_mut(word) {
                            *w |= bit;
                        }
                        let d = data.next().ok_or_else(|| {
                            TransferError::Peer("page batch shorter than its table".into())
                        })?;
                        mem.write_slice(d, GuestAddress(addr)).map_err(mem_err)?;
                    }
                }
            }
            RecordType::Vcpu => {
                let st = snapshot::decode_vcpu(&rec.body, cpu)?;
                let slot = states.get_mut(st.id as usize).ok_or_else(|| {
                    TransferError::Mismatch(format!(
                        "the stream holds state for vCPU {}, but the domain has vCPUs 0 to {}",
                        st.id,
                        vcpus.saturating_sub(1)
                    ))
                })?;
                if slot.is_some() {
                    return Err(TransferError::Mismatch(format!(
                        "the stream holds vCPU {} twice",
                        st.id
                    )));
                }
                *slot = Some(st);
            }
            RecordType::VmState => vm = Some(snapshot::decode_vm(&rec.body)?),
            RecordType::Device => devices.push(stream::from_json("device", &rec.body)?),
            RecordType::End => {
                if source == StreamSource::File {
                    let mut extra = [0u8; 1];
                    let n = r
                        .get_mut()
                        .read(&mut extra)
                        .map_err(|e| TransferError::Peer(format!("cannot read the file: {e}")))?;
                    if n != 0 {
                        return Err(TransferError::Mismatch(
                            "the save file goes on after its end record (corrupt or not a save file)"
                                .into(),
                        ));
                    }
                }
                break;
            }
            RecordType::RoundEnd => {}
            RecordType::Config | RecordType::VmInfo => {
                return Err(StreamError::Unexpected(rec.kind.name()).into())
            }
        }
    }
    let mut out = Vec::with_capacity(states.len());
    for (i, s) in states.into_iter().enumerate() {
        out.push(s.ok_or_else(|| {
            TransferError::Mismatch(format!("the stream has no state for vCPU {i}"))
        })?);
    }
    let vm = vm.ok_or_else(|| TransferError::Mismatch("the stream has no VM state".into()))?;
    Ok(Received {
        info,
        vcpus: out,
        vm,
        devices,
        bytes: r.bytes,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn usable_cpus_counts_the_affinity_mask() {
        let n = usable_cpus();
        assert!((1..=libc::CPU_SETSIZE as usize).contains(&n), "{n}");
    }
    use super::*;

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
        PageSender::with_pagemap(crate::pagemap::Pagemap::open().map(std::sync::Arc::new))
            .send(&mut w, &src, &all_pfns(&src), &mut stats, None, |_| {})
            .expect("send");
        assert_eq!(stats.pages, 1);
        assert_eq!(stats.zero_pages, 8 * 256 - 1);
        w.record(RecordType::End, &[]).expect("end");
        let bytes = w.into_inner();
        let dst = memory::create_guest_memory(8).expect("mem");
        let limits = crate::snapshot::testing::limits();
        // What receiving `stream` into the 8 MiB, 1-vCPU `dst` refuses it with.
        let refused = |stream: &[u8], source| {
            receive(stream, &dst, 8, 1, &limits, source)
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
        assert!(receive(&bytes[..], &dst, 16, 1, &limits, StreamSource::File).is_err());
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
        let e = refused(&junk[..], StreamSource::Connection);
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
    fn rehash_finds_pages_rewritten_after_they_were_sent() {
        let mem = memory::create_guest_memory(8).expect("mem");
        mem.write_slice(&[1u8; 64], GuestAddress(0x3000))
            .expect("w");
        let mut hashes = PageHashes::new(
            &mem,
            crate::pagemap::Pagemap::open().map(std::sync::Arc::new),
        );
        // Before anything is sent, every page counts as changed.
        assert_eq!(hashes.changed(&mem, &[]).len(), 8 * 256);
        let mut w = StreamWriter::new(Vec::new(), stream::Header::new(true)).expect("w");
        let mut stats = TransferStats::default();
        PageSender::with_pagemap(crate::pagemap::Pagemap::open().map(std::sync::Arc::new))
            .send(
                &mut w,
                &mem,
                &all_pfns(&mem),
                &mut stats,
                Some(&mut hashes),
                |_| {},
            )
            .expect("send");
        assert!(hashes.changed(&mem, &[]).is_empty());
        // A zero page written, a data page rewritten, one byte in a third.
        mem.write_slice(&[9u8; 8], GuestAddress(0x7000)).expect("w");
        mem.write_slice(&[2u8; 64], GuestAddress(0x3000))
            .expect("w");
        mem.write_slice(&[5u8], GuestAddress(0x1F_FFFF)).expect("w");
        assert_eq!(hashes.changed(&mem, &[]), vec![3, 7, 0x1FF]);
        // Pages the dirty log already reported are left out.
        assert_eq!(hashes.changed(&mem, &[3, 0x1FF]), vec![7]);
        assert_eq!(merge_sorted(vec![3, 0x1FF], vec![7, 3]), vec![3, 7, 0x1FF]);
    }

    use crate::snapshot::testing::{break_one, limits, vm_body, Parts, BREAKS};
    use proptest::prelude::*;

    /// Record types as written on the wire.
    const CONF: u32 = RecordType::Config as u32;
    const INFO: u32 = RecordType::VmInfo as u32;
    const PAGES: u32 = RecordType::Pages as u32;
    const VCPU: u32 = RecordType::Vcpu as u32;
    const VMSTATE: u32 = RecordType::VmState as u32;
    const DEVICE: u32 = RecordType::Device as u32;
    const ROUND_END: u32 = RecordType::RoundEnd as u32;
    const END: u32 = RecordType::End as u32;

    fn info_body(memory_mib: u64, vcpus: u32, kernel: &str) -> Vec<u8> {
        stream::json_body(&VmInfo {
            memory_mib,
            vcpus,
            kernel: kernel.into(),
        })
        .expect("json")
    }

    /// The records of a whole, plausible stream of an 8 MiB guest with `vcpus` vCPUs.
    fn records(vcpus: u32) -> Vec<(u32, Vec<u8>)> {
        let mut out = vec![
            (CONF, CONFIG.to_vec()),
            (INFO, info_body(8, vcpus, "testguest")),
        ];
        let mut pages = Vec::new();
        encode_pages(&[0x10, 0x11 | ZERO_PAGE], &[0x5A; PAGE_SIZE], &mut pages);
        out.push((PAGES, pages));
        out.push((ROUND_END, Vec::new()));
        for id in 0..vcpus {
            out.push((VCPU, Parts::sample(id).encode()));
        }
        out.push((VMSTATE, vm_body()));
        let serial = DeviceRecord {
            name: "serial".into(),
            state: serde_json::json!({"divisor": [1, 0], "regs": [0, 1, 3, 0x60, 8, 0xB0, 0], "fifo": []}),
        };
        out.push((DEVICE, stream::json_body(&serial).expect("json")));
        out.push((END, Vec::new()));
        out
    }

    /// The stream of `recs`, every checksum right.
    fn write(recs: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), stream::Header::new(false)).expect("w");
        for (kind, body) in recs {
            w.raw_record(*kind, body).expect("record");
        }
        w.into_inner()
    }

    /// `receive` into a fresh 8 MiB guest of `vcpus` vCPUs.
    fn take(bytes: &[u8], vcpus: u32) -> Result<Received, TransferError> {
        let mem = memory::create_guest_memory(8).expect("mem");
        receive(bytes, &mem, 8, vcpus, &limits(), StreamSource::File)
    }

    /// Index of the `n`-th record of type `kind`.
    fn nth(recs: &[(u32, Vec<u8>)], kind: u32, n: usize) -> usize {
        recs.iter()
            .enumerate()
            .filter(|(_, (k, _))| *k == kind)
            .nth(n)
            .map(|(i, _)| i)
            .expect("record")
    }

    #[test]
    fn a_whole_stream_is_received() {
        let bytes = write(&records(3));
        let mem = memory::create_guest_memory(8).expect("mem");
        let r = receive(&bytes[..], &mem, 8, 3, &limits(), StreamSource::File).expect("received");
        assert_eq!(r.vcpus.len(), 3);
        assert!(r.vcpus.iter().enumerate().all(|(i, v)| v.id as usize == i));
        assert_eq!(r.devices.len(), 1);
        assert_eq!(r.bytes, bytes.len() as u64);
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(0x10 << 12))
            .expect("r");
        assert_eq!(got, [0x5A; 4]);
    }

    /// How many kinds of damage [`damage`] knows.
    const DAMAGES: usize = 16;

    /// Damages a plausible stream of `vcpus` vCPUs in one way (`kind`, with
    /// `seed` choosing the details); returns its bytes (checksums right) and
    /// a part of the message its refusal must carry.
    fn damage(kind: usize, seed: u64, vcpus: u32) -> (Vec<u8>, String) {
        let mut recs = records(vcpus);
        let id = (seed % u64::from(vcpus)) as u32;
        let at = nth(&recs, VCPU, id as usize);
        let want = match kind % DAMAGES {
            0 => {
                let mut p = Parts::sample(id);
                let reg = break_one(
                    &mut p,
                    (seed % BREAKS as u64) as usize,
                    seed >> 8,
                    &limits(),
                );
                recs[at].1 = p.encode();
                format!("vCPU {id}: impossible {reg}")
            }
            1 => {
                let out = vcpus + (seed % u64::from(u32::MAX - vcpus)) as u32;
                recs[at].1 = Parts::sample(out).encode();
                format!(
                    "the stream holds state for vCPU {out}, but the domain has vCPUs 0 to {}",
                    vcpus - 1
                )
            }
            2 => {
                let copy = recs[at].clone();
                recs.insert(
                    at + 1 + (seed >> 8) as usize % (vcpus as usize - id as usize),
                    copy,
                );
                format!("the stream holds vCPU {id} twice")
            }
            3 => {
                recs.remove(at);
                format!("the stream has no state for vCPU {id}")
            }
            4 => {
                let other = if seed % 2 == 0 {
                    (seed >> 1) as u32 % vcpus
                } else {
                    vcpus + 1 + ((seed >> 1) % 1000) as u32
                };
                recs[1].1 = info_body(8, other, "testguest");
                format!("a domain of 8 MiB with {other} vCPUs")
            }
            5 => {
                let other = if seed % 9 == 8 { 9 } else { seed % 8 };
                recs[1].1 = info_body(other, vcpus, "testguest");
                format!("a domain of {other} MiB")
            }
            6 => {
                let first = (8u64 << 20) >> 12;
                let pfn = first + seed % (stream::MAX_PFN - first);
                let mut body = Vec::new();
                encode_pages(&[pfn | ZERO_PAGE], &[], &mut body);
                recs.insert(nth(&recs, PAGES, 0) + 1, (PAGES, body));
                "outside the guest's memory".into()
            }
            7 => {
                // One section cut short, its length word telling the truth.
                let body = &recs[at].1;
                let mut parts = Vec::new();
                let mut rest = &body[4..];
                while rest.len() >= 8 {
                    let len = u32::from_le_bytes(rest[4..8].try_into().expect("len")) as usize;
                    parts.push((rest[..4].to_vec(), rest[8..8 + len].to_vec()));
                    rest = &rest[8 + len..];
                }
                // Any section but the MSR list, which may be shorter by whole entries.
                let msrs = 10u32.to_le_bytes().to_vec();
                let full: Vec<usize> = (0..parts.len())
                    .filter(|&i| parts[i].0 != msrs && !parts[i].1.is_empty())
                    .collect();
                let cut = full[(seed >> 8) as usize % full.len()];
                let n = parts[cut].1.len();
                parts[cut].1.truncate((seed >> 16) as usize % n);
                let mut out = body[..4].to_vec();
                for (t, b) in &parts {
                    out.extend_from_slice(t);
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    out.extend_from_slice(b);
                }
                recs[at].1 = out;
                format!("vCPU {id}: the ")
            }
            8 => {
                let mut bytes = write(&recs);
                bytes.extend((0..1 + seed % 64).map(|i| (seed >> (i % 8)) as u8));
                return (bytes, "after its end record".into());
            }
            9 => {
                let kernel = format!("kind-{seed:x}");
                recs[1].1 = info_body(8, vcpus, &kernel);
                "which this VMM does not know".into()
            }
            10 => {
                recs[0].1 = match seed % 4 {
                    0 => b"{}".to_vec(),
                    1 => br#"{"config":[1,2]}"#.to_vec(),
                    2 => b"not json".to_vec(),
                    _ => seed.to_le_bytes().to_vec(),
                };
                "config".into()
            }
            11 => {
                // One of the four VM state sections left out.
                let body = vm_body();
                let mut out = Vec::new();
                let mut rest = &body[..];
                let skip = (seed % 4) as usize;
                let mut i = 0;
                while rest.len() >= 8 {
                    let len = u32::from_le_bytes(rest[4..8].try_into().expect("len")) as usize;
                    if i != skip {
                        out.extend_from_slice(&rest[..8 + len]);
                    }
                    rest = &rest[8 + len..];
                    i += 1;
                }
                let v = nth(&recs, VMSTATE, 0);
                recs[v].1 = out;
                "interrupt controllers or PIT missing".into()
            }
            12 => {
                let v = nth(&recs, VMSTATE, 0);
                recs.remove(v);
                "no VM state".into()
            }
            13 => {
                let again = if seed % 2 == 0 {
                    recs[0].clone()
                } else {
                    recs[1].clone()
                };
                let at = 2 + (seed >> 8) as usize % (recs.len() - 2);
                recs.insert(at, again);
                "unexpected".into()
            }
            14 => {
                let mut body = Vec::new();
                let pages = 1 + (seed % 4) as usize;
                let entries: Vec<u64> = (0..pages as u64).map(|p| 0x20 + p).collect();
                encode_pages(&entries, &vec![1u8; (pages - 1) * PAGE_SIZE], &mut body);
                recs.insert(2, (PAGES, body));
                "malformed pages record".into()
            }
            _ => {
                let d = nth(&recs, DEVICE, 0);
                recs[d].1 = seed.to_le_bytes().to_vec();
                "malformed device record".into()
            }
        };
        (write(&recs), want)
    }

    #[test]
    fn each_kind_of_damage_is_refused() {
        for kind in 0..DAMAGES {
            for seed in [0, 1, 2, 3, 0x1234_5678_9ABC_DEF0, u64::MAX] {
                for vcpus in [1, 2, 3] {
                    let (bytes, want) = damage(kind, seed, vcpus);
                    let e = take(&bytes, vcpus)
                        .err()
                        .unwrap_or_else(|| panic!("damage {kind}, seed {seed:#x} accepted"));
                    assert!(
                        e.to_string().contains(&want),
                        "damage {kind}, seed {seed:#x}, {vcpus} vCPUs: {e} (expected {want})"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A plausible stream with one impossible thing in it, checksums
        /// right: refused with the reason, never a panic.
        #[test]
        fn a_damaged_stream_is_refused(kind in 0usize..DAMAGES, seed in any::<u64>(), vcpus in 1u32..5) {
            let (bytes, want) = damage(kind, seed, vcpus);
            let e = take(&bytes, vcpus);
            prop_assert!(e.is_err(), "damage {} accepted", kind);
            let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
            prop_assert!(msg.contains(&want), "{} (expected {})", msg, want);
        }

        /// Random records after a good start (random bodies, and real vCPU
        /// records with random bytes changed): an error or a result, never a panic.
        #[test]
        fn random_records_never_panic(
            recs in proptest::collection::vec(
                (
                    prop_oneof![Just(PAGES), Just(VCPU), Just(VMSTATE), Just(DEVICE), Just(END), Just(ROUND_END), Just(CONF), any::<u32>()],
                    proptest::collection::vec(any::<u8>(), 0..300),
                    proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                ),
                0..10,
            ),
        ) {
            let mut all = records(2);
            all.truncate(2);
            for (kind, body, flips) in recs {
                let body = if kind == VCPU && !flips.is_empty() {
                    let mut b = Parts::sample(1).encode();
                    for (at, v) in flips {
                        let n = b.len();
                        b[at % n] = v;
                    }
                    b
                } else {
                    body
                };
                all.push((kind, body));
            }
            let bytes = write(&all);
            let _ = take(&bytes, 2);
            let _ = take(&bytes[..bytes.len() / 2], 2);
        }
    }
}
