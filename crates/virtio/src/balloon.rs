//! virtio-balloon (device ID 5, virtio 1.2 §5.5): the host asks the guest
//! for pages (`num_pages` in the configuration space), the guest hands page
//! frame numbers over on the inflate queue, and the device returns those
//! pages to the host with `madvise(MADV_DONTNEED)`, so that the VMM's
//! resident memory really drops. Pages handed back on the deflate queue are
//! usable again (they fault in as zero pages on the next touch).
//!
//! The VMM keeps a [`BalloonHandle`] to set the target and read what the
//! guest has given.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::device::{needs_interrupt, read_config_bytes, Activation, DeviceError, VirtioDevice};
use crate::interrupt::{InterruptKind, IrqLine};
use crate::state::{BalloonState, DeviceState};
use crate::GuestMemoryMmap;

/// The balloon's page size: page frame numbers count 4 KiB pages whatever the guest uses.
pub const BALLOON_PAGE: u64 = 4096;
/// The inflate queue.
const INFLATEQ: u16 = 0;
/// The deflate queue.
const DEFLATEQ: u16 = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
/// VIRTIO_BALLOON_F_MUST_TELL_HOST: the guest tells the host before it reuses a page.
const F_MUST_TELL_HOST: u64 = 1 << 0;

/// Errors of the balloon device.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The kernel refused to drop a page.
    #[error("madvise of guest page {pfn:#x}: {source}")]
    Madvise {
        /// The page frame number.
        pfn: u32,
        /// The cause.
        source: std::io::Error,
    },
}

/// State shared between the device and the VMM's handle.
#[derive(Debug, Default)]
struct Shared {
    /// Pages the host wants in the balloon.
    num_pages: AtomicU32,
    /// Pages the driver says are in the balloon (written by it in the config space).
    actual: AtomicU32,
    /// Pages the device has returned to the host and not seen deflated.
    inflated: AtomicU64,
    /// Page frame numbers that were not RAM (ignored).
    bad_pfns: AtomicU64,
    /// The interrupt line while the device is active, for configuration changes.
    irq: Mutex<Option<Arc<IrqLine>>>,
}

/// The VMM's side of a balloon: set the target, read the guest's progress.
#[derive(Debug, Clone)]
pub struct BalloonHandle(Arc<Shared>);

impl BalloonHandle {
    /// Asks the guest to hold `pages` 4 KiB pages in the balloon (raises a configuration interrupt).
    pub fn set_target_pages(&self, pages: u32) {
        let old = self.0.num_pages.swap(pages, Ordering::SeqCst);
        if old == pages {
            return;
        }
        let irq = self.0.irq.lock().ok().and_then(|g| g.clone());
        if let Some(irq) = irq {
            if let Err(e) = irq.signal(InterruptKind::Config) {
                tracing::warn!("virtio-balloon: cannot raise the configuration interrupt: {e}");
            }
        }
    }

    /// The target in 4 KiB pages.
    pub fn target_pages(&self) -> u32 {
        self.0.num_pages.load(Ordering::SeqCst)
    }

    /// Pages the driver reports in the balloon (`actual`).
    pub fn actual_pages(&self) -> u32 {
        self.0.actual.load(Ordering::SeqCst)
    }

    /// Pages returned to the host and not deflated since.
    pub fn inflated_pages(&self) -> u64 {
        self.0.inflated.load(Ordering::SeqCst)
    }

    /// Page numbers the guest gave that were not RAM.
    pub fn bad_pfns(&self) -> u64 {
        self.0.bad_pfns.load(Ordering::SeqCst)
    }
}

struct Active {
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<Queue>,
    irq: Arc<IrqLine>,
}

/// The virtio-balloon device model.
pub struct Balloon {
    shared: Arc<Shared>,
    /// Page frames currently in the balloon.
    pages: BTreeSet<u32>,
    active: Option<Active>,
}

impl Balloon {
    /// A balloon with an initial target of `num_pages` 4 KiB pages.
    pub fn new(num_pages: u32) -> Balloon {
        let shared = Arc::new(Shared::default());
        shared.num_pages.store(num_pages, Ordering::SeqCst);
        Balloon {
            shared,
            pages: BTreeSet::new(),
            active: None,
        }
    }

    /// The VMM's handle.
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle(Arc::clone(&self.shared))
    }

    fn config_bytes(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..4].copy_from_slice(&self.shared.num_pages.load(Ordering::SeqCst).to_le_bytes());
        c[4..].copy_from_slice(&self.shared.actual.load(Ordering::SeqCst).to_le_bytes());
        c
    }
}

/// Whether the whole 4 KiB page `pfn` is guest RAM (regions are page aligned).
fn is_ram_page(mem: &GuestMemoryMmap, pfn: u32) -> bool {
    let addr = u64::from(pfn) * BALLOON_PAGE;
    mem.find_region(GuestAddress(addr)).is_some()
        && mem
            .find_region(GuestAddress(addr + BALLOON_PAGE - 1))
            .is_some()
}

/// Gives one guest page back to the host.
fn discard_page(mem: &GuestMemoryMmap, pfn: u32) -> Result<bool, BalloonError> {
    let addr = GuestAddress(u64::from(pfn) * BALLOON_PAGE);
    if !is_ram_page(mem, pfn) {
        return Ok(false);
    }
    let Ok(host) = mem.get_host_address(addr) else {
        return Ok(false);
    };
    // SAFETY: `host` is the start of a 4 KiB page inside a mapping that guest memory owns for
    // the VM's lifetime (checked above); MADV_DONTNEED on private anonymous memory only
    // replaces its contents with zero pages, which the guest has agreed to by ballooning it.
    let rc = unsafe {
        libc::madvise(
            host.cast::<libc::c_void>(),
            BALLOON_PAGE as usize,
            libc::MADV_DONTNEED,
        )
    };
    if rc != 0 {
        return Err(BalloonError::Madvise {
            pfn,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(true)
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        5
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        F_MUST_TELL_HOST
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write.
        let mut c = self.config_bytes();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = start.checked_add(i).filter(|&p| (4..8).contains(&p)) {
                c[slot] = *b;
            }
        }
        let actual = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        self.shared.actual.store(actual, Ordering::SeqCst);
    }

    fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
        if a.queues.len() != QUEUE_SIZES.len() {
            return Err(DeviceError::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: a.queues.len(),
            });
        }
        for (i, q) in a.queues.iter().enumerate() {
            if !q.ready() {
                return Err(DeviceError::QueueNotReady(i as u16));
            }
        }
        if let Ok(mut g) = self.shared.irq.lock() {
            *g = Some(Arc::clone(&a.irq));
        }
        self.active = Some(Active {
            mem: a.mem,
            queues: a.queues,
            irq: a.irq,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        if let Ok(mut g) = self.shared.irq.lock() {
            *g = None;
        }
        // A reset driver starts over: it will touch every page again, so the balloon is empty.
        self.pages.clear();
        self.shared.inflated.store(0, Ordering::SeqCst);
        self.shared.actual.store(0, Ordering::SeqCst);
    }

    fn queue_positions(&self) -> Vec<(u16, u16)> {
        self.active
            .as_ref()
            .map(|a| crate::device::positions(&a.queues))
            .unwrap_or_default()
    }

    fn save_state(&mut self) -> DeviceState {
        DeviceState::Balloon(BalloonState {
            num_pages: self.shared.num_pages.load(Ordering::SeqCst),
            actual: self.shared.actual.load(Ordering::SeqCst),
            pages: self.pages.iter().copied().collect(),
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceError> {
        let DeviceState::Balloon(state) = state else {
            return Err(DeviceError::BadState(format!(
                "the saved state of {} does not fit the balloon",
                state.kind()
            )));
        };
        let pages: BTreeSet<u32> = state.pages.iter().copied().collect();
        // Only RAM pages ever go into the balloon, and the host never asks for more than all.
        let mem = self
            .active
            .as_ref()
            .map(|a| Arc::clone(&a.mem))
            .ok_or(DeviceError::NotActivated)?;
        if let Some(p) = pages.iter().find(|&&p| !is_ram_page(&mem, p)) {
            return Err(DeviceError::BadState(format!(
                "balloon: page {p:#x} is not guest RAM"
            )));
        }
        let ram_pages: u64 = mem.iter().map(|r| r.len() / BALLOON_PAGE).sum();
        let num_pages = state.num_pages;
        if u64::from(num_pages) > ram_pages {
            return Err(DeviceError::BadState(format!(
                "balloon: a target of {num_pages} pages, over the guest's {ram_pages}"
            )));
        }
        self.shared.num_pages.store(num_pages, Ordering::SeqCst);
        self.shared.actual.store(state.actual, Ordering::SeqCst);
        // Ballooned pages arrive as zero pages: the host backs none of them.
        self.shared
            .inflated
            .store(pages.len() as u64, Ordering::SeqCst);
        self.pages = pages;
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
        if index != INFLATEQ && index != DEFLATEQ {
            return Err(DeviceError::NoSuchQueue(index));
        }
        let active = self.active.as_mut().ok_or(DeviceError::NotActivated)?;
        let mem = Arc::clone(&active.mem);
        let broken = |source| DeviceError::BrokenQueue { index, source };
        let queue = active
            .queues
            .get_mut(usize::from(index))
            .ok_or(DeviceError::NoSuchQueue(index))?;
        let avail = queue
            .avail_idx(mem.as_ref(), Ordering::Acquire)
            .map_err(broken)?;
        if avail.0.wrapping_sub(queue.next_avail()) > queue.size() {
            return Err(broken(virtio_queue::Error::InvalidAvailRingIndex));
        }
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem.as_ref()) {
            let head = chain.head_index();
            for desc in chain {
                if desc.is_write_only() {
                    continue;
                }
                let count = desc.len() / 4;
                for i in 0..u64::from(count) {
                    let Ok(pfn) = mem.read_obj::<u32>(desc.addr().unchecked_add(i * 4)) else {
                        self.shared.bad_pfns.fetch_add(1, Ordering::SeqCst);
                        continue;
                    };
                    let pfn = u32::from_le(pfn);
                    if index == INFLATEQ {
                        match discard_page(&mem, pfn) {
                            Ok(true) => {
                                if self.pages.insert(pfn) {
                                    self.shared.inflated.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            Ok(false) => {
                                self.shared.bad_pfns.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => tracing::warn!("virtio-balloon: {e}"),
                        }
                    } else if self.pages.remove(&pfn) {
                        self.shared.inflated.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            if head < queue.size() {
                queue.add_used(mem.as_ref(), head, 0).map_err(broken)?;
                used_any = true;
            }
        }
        if used_any && needs_interrupt(queue, mem.as_ref()).map_err(broken)? {
            if let Err(e) = active.irq.signal(InterruptKind::Queue) {
                tracing::warn!("virtio-balloon: cannot raise the queue interrupt: {e}");
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon")
            .field("num_pages", &self.shared.num_pages.load(Ordering::SeqCst))
            .field("inflated", &self.pages.len())
            .field("active", &self.active.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::MmioTransport;
    use crate::testutil::*;
    use virtio_bindings::virtio_mmio as reg;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;

    const QSIZE: u16 = 16;
    /// Rings of queue q at q * 0x1_0000.
    fn rings(q: u16) -> (u64, u64, u64) {
        let base = u64::from(q) * 0x1_0000;
        (base, base + 0x1000, base + 0x2000)
    }
    const PFN_LIST: u64 = 0x4_0000;
    /// The guest pages that go into the balloon.
    const FIRST_PFN: u32 = 0x800;
    const PAGES: u32 = 64;

    struct Harness {
        mem: Arc<GuestMemoryMmap>,
        t: MmioTransport,
        rec: Recorder,
        handle: BalloonHandle,
        published: [u16; 2],
    }

    impl Harness {
        fn new() -> Harness {
            let b = Balloon::new(0);
            let handle = b.handle();
            let mem = guest_memory();
            let rec = Recorder::default();
            let mut t = MmioTransport::new(Box::new(b), mem.clone(), Box::new(rec.clone()))
                .expect("transport");
            assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_DEVICE_ID), 5);
            let offered = device_features(&mut t);
            assert!(negotiate(&mut t, offered));
            for q in 0..2 {
                let (d, a, u) = rings(q);
                setup_queue(&mut t, u32::from(q), u32::from(QSIZE), d, a, u);
            }
            driver_ok(&mut t);
            assert!(t.is_activated());
            Harness {
                mem,
                t,
                rec,
                handle,
                published: [0; 2],
            }
        }

        /// Sends `pfns` on queue `q` in one buffer and notifies.
        fn send(&mut self, q: u16, pfns: &[u32]) {
            for (i, p) in pfns.iter().enumerate() {
                self.mem
                    .write_obj(p.to_le(), GuestAddress(PFN_LIST + 4 * i as u64))
                    .expect("pfn");
            }
            let (desc, avail, _) = rings(q);
            let raw = RawDescriptor::from(SplitDescriptor::new(
                PFN_LIST,
                (pfns.len() * 4) as u32,
                0,
                0,
            ));
            self.mem.write_obj(raw, GuestAddress(desc)).expect("desc");
            let n = &mut self.published[usize::from(q)];
            self.mem
                .write_obj(0u16, GuestAddress(avail + 4 + 2 * u64::from(*n % QSIZE)))
                .expect("avail slot");
            *n = n.wrapping_add(1);
            self.mem
                .write_obj(*n, GuestAddress(avail + 2))
                .expect("avail idx");
            wr(&mut self.t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, u32::from(q));
        }

        fn used_idx(&self, q: u16) -> u16 {
            let (_, _, used) = rings(q);
            self.mem.read_obj(GuestAddress(used + 2)).expect("used idx")
        }

        /// How many of the test pages are resident in the host's page tables (mincore).
        fn resident(&self) -> usize {
            let host = self
                .mem
                .get_host_address(GuestAddress(u64::from(FIRST_PFN) * BALLOON_PAGE))
                .expect("host address");
            let mut vec = vec![0u8; PAGES as usize];
            // SAFETY: the range is PAGES pages of guest memory mapped by `mem`, page aligned;
            // `vec` has one byte per page, as mincore requires.
            let rc = unsafe {
                libc::mincore(
                    host.cast::<libc::c_void>(),
                    (u64::from(PAGES) * BALLOON_PAGE) as usize,
                    vec.as_mut_ptr(),
                )
            };
            assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
            vec.iter().filter(|b| **b & 1 != 0).count()
        }
    }

    #[test]
    fn inflated_pages_leave_the_host_and_deflated_ones_come_back() {
        let mut h = Harness::new();
        let base = GuestAddress(u64::from(FIRST_PFN) * BALLOON_PAGE);
        let data = vec![0xA5u8; (u64::from(PAGES) * BALLOON_PAGE) as usize];
        h.mem.write_slice(&data, base).expect("touch pages");
        assert_eq!(h.resident(), PAGES as usize);

        // The host asks; the driver sees a configuration interrupt and the new target.
        h.handle.set_target_pages(PAGES);
        assert!(h.rec.seen().contains(&InterruptKind::Config));
        let mut cfg = [0u8; 4];
        h.t.read(0x100, &mut cfg);
        assert_eq!(u32::from_le_bytes(cfg), PAGES);

        let pfns: Vec<u32> = (FIRST_PFN..FIRST_PFN + PAGES).collect();
        h.send(INFLATEQ, &pfns);
        assert_eq!(h.used_idx(INFLATEQ), 1);
        assert!(h.rec.seen().contains(&InterruptKind::Queue));
        assert_eq!(h.handle.inflated_pages(), u64::from(PAGES));
        assert_eq!(h.resident(), 0, "ballooned pages are no longer resident");
        let mut back = vec![0xFFu8; 4096];
        h.mem.read_slice(&mut back, base).expect("read");
        assert!(
            back.iter().all(|b| *b == 0),
            "a dropped page reads as zeros"
        );

        // The driver reports `actual`; it is read back, and num_pages stays the host's.
        h.t.write(0x104, &PAGES.to_le_bytes());
        assert_eq!(h.handle.actual_pages(), PAGES);
        h.t.write(0x100, &7u32.to_le_bytes());
        assert_eq!(h.handle.target_pages(), PAGES);

        // Deflating gives pages back: the guest can use them again.
        h.handle.set_target_pages(0);
        h.send(DEFLATEQ, &pfns[..16]);
        assert_eq!(h.used_idx(DEFLATEQ), 1);
        assert_eq!(h.handle.inflated_pages(), u64::from(PAGES - 16));
        h.mem.write_slice(&data[..16 * 4096], base).expect("reuse");
        assert_eq!(h.resident(), 16);
    }

    #[test]
    fn saved_state_comes_back_and_impossible_ones_are_refused() {
        let mut h = Harness::new();
        h.handle.set_target_pages(PAGES);
        let pfns: Vec<u32> = (FIRST_PFN..FIRST_PFN + PAGES).collect();
        h.send(INFLATEQ, &pfns);
        assert_eq!(h.handle.inflated_pages(), u64::from(PAGES));
        let st = h.t.save_state();
        let fresh = || {
            let b = Balloon::new(0);
            let handle = b.handle();
            let t = MmioTransport::new(Box::new(b), h.mem.clone(), Box::new(Recorder::default()))
                .expect("transport");
            (t, handle)
        };
        let (mut t, handle) = fresh();
        t.restore_state(&st).expect("restore");
        assert_eq!(handle.target_pages(), PAGES);
        assert_eq!(handle.inflated_pages(), u64::from(PAGES));
        let ram_pages = MEM_SIZE / BALLOON_PAGE;
        let ram_pages = u32::try_from(ram_pages).expect("small");
        type Edit<'a> = &'a dyn Fn(&mut BalloonState);
        let edits: [(Edit, String); 3] = [
            (
                &|b| b.pages = vec![ram_pages],
                format!("page {ram_pages:#x} is not guest RAM"),
            ),
            (
                &|b| b.pages = vec![u32::MAX],
                "is not guest RAM".to_string(),
            ),
            (
                &|b| b.num_pages = ram_pages + 1,
                format!(
                    "a target of {} pages, over the guest's {ram_pages}",
                    ram_pages + 1
                ),
            ),
        ];
        for (edit, why) in edits {
            let mut bad = st.clone();
            let DeviceState::Balloon(b) = &mut bad.device else {
                panic!("a balloon's state: {:?}", bad.device);
            };
            edit(b);
            let e = fresh().0.restore_state(&bad).expect_err("refused");
            assert!(e.to_string().contains(&why), "{e} (expected {why})");
        }
        // Another device's state, or an unknown field, is refused.
        let mut bad = st.clone();
        bad.device = DeviceState::Block(crate::state::BlockState {});
        let e = fresh().0.restore_state(&bad).expect_err("refused");
        assert!(
            e.to_string().contains("a disk does not fit the balloon"),
            "{e}"
        );
        let json = serde_json::to_string(&st).expect("json");
        let renamed = json.replace("\"num_pages\"", "\"target_pages\"");
        assert_ne!(json, renamed);
        let e = serde_json::from_str::<crate::TransportState>(&renamed).expect_err("refused");
        assert!(
            e.to_string().contains("unknown field `target_pages`"),
            "{e}"
        );
    }

    #[test]
    fn page_numbers_outside_ram_are_ignored() {
        let mut h = Harness::new();
        let beyond = (MEM_SIZE / BALLOON_PAGE) as u32;
        h.send(INFLATEQ, &[beyond, u32::MAX, FIRST_PFN]);
        assert_eq!(h.used_idx(INFLATEQ), 1);
        assert_eq!(h.handle.bad_pfns(), 2);
        assert_eq!(h.handle.inflated_pages(), 1);
        // A write-only buffer carries no page numbers.
        let (desc, avail, _) = rings(INFLATEQ);
        let raw = RawDescriptor::from(SplitDescriptor::new(
            PFN_LIST,
            8,
            VRING_DESC_F_WRITE as u16,
            0,
        ));
        h.mem.write_obj(raw, GuestAddress(desc)).expect("desc");
        h.mem
            .write_obj(0u16, GuestAddress(avail + 4 + 2))
            .expect("slot");
        h.mem.write_obj(2u16, GuestAddress(avail + 2)).expect("idx");
        wr(&mut h.t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(h.used_idx(INFLATEQ), 2);
        assert_eq!(h.handle.inflated_pages(), 1);
    }
}
