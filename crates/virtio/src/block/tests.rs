//! virtio-blk driven through the MMIO transport with real descriptor rings in real guest memory,
//! against temporary image files.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use proptest::prelude::*;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_mmio as reg;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::mmio::MmioTransport;
use crate::testutil::*;

const QSIZE: u16 = 16;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const DATA2: u64 = 0x28_0000;
const STATUS: u64 = 0x30_0000;
const INDIRECT: u64 = 0x38_0000;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Sectors in the default test image (1 MiB).
const IMAGE_SECTORS: u64 = 2048;

/// A block device behind a transport, with its queue set up by register writes.
struct Harness {
    mem: Arc<GuestMemoryMmap>,
    t: MmioTransport,
    rec: Recorder,
    stats: Arc<BlockStats>,
    dirty: Arc<super::DirtyMap>,
    image: tempfile::NamedTempFile,
    avail: u64,
    used: u64,
    desc: u64,
    published: u16,
    used_seen: u16,
}

impl Harness {
    fn new(config: BlockConfig) -> Harness {
        Harness::with_features(config, u64::MAX)
    }

    /// Brings up a device over a fresh 1 MiB image, acknowledging `wanted & offered`.
    fn with_features(config: BlockConfig, wanted: u64) -> Harness {
        let mut image = tempfile::NamedTempFile::new().expect("image");
        let pattern: Vec<u8> = (0..IMAGE_SECTORS * 512).map(|i| (i % 251) as u8).collect();
        image.write_all(&pattern).expect("fill image");
        image.flush().expect("flush");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(image.path())
            .expect("open image");
        Harness::over(file, image, config, wanted)
    }

    fn over(
        file: File,
        image: tempfile::NamedTempFile,
        config: BlockConfig,
        wanted: u64,
    ) -> Harness {
        Harness::over_block(Block::new(file, config).expect("block"), image, wanted)
    }

    fn over_block(block: Block, image: tempfile::NamedTempFile, wanted: u64) -> Harness {
        let stats = block.stats();
        let dirty = block.dirty();
        let mem = guest_memory();
        let rec = Recorder::default();
        let mut t =
            MmioTransport::new(Box::new(block), mem.clone(), Box::new(rec.clone())).expect("t");
        let offered = device_features(&mut t);
        assert!(negotiate(&mut t, offered & wanted));
        // Our own ring layout: virtio-queue 0.18's MockSplitQueue sizes the available ring in
        // elements rather than bytes and places the used ring on top of its tail.
        let (desc, avail, used) = (DESC_TABLE, AVAIL_RING, USED_RING);
        setup_queue(&mut t, 0, u32::from(QSIZE), desc, avail, used);
        driver_ok(&mut t);
        assert!(t.is_activated());
        Harness {
            mem,
            t,
            rec,
            stats,
            dirty,
            image,
            avail,
            used,
            desc,
            published: 0,
            used_seen: 0,
        }
    }

    fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        self.mem
            .write_obj(raw, GuestAddress(self.desc + 16 * u64::from(index)))
            .expect("descriptor");
    }

    fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.published % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).expect("avail");
        self.published = self.published.wrapping_add(1);
        self.mem
            .write_obj(self.published, GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    /// Notifies through QueueNotify and returns the new used elements (id, len).
    fn kick(&mut self) -> Vec<(u32, u32)> {
        wr(&mut self.t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        let used_idx: u16 = self
            .mem
            .read_obj(GuestAddress(self.used + 2))
            .expect("used idx");
        let mut out = Vec::new();
        while self.used_seen != used_idx {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % QSIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("id");
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("len");
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Submits one chain built at table index 0 (NEXT set on all but the last) and returns the
    /// used length reported for it.
    fn submit(&mut self, descs: &[(u64, u32, u16)]) -> u32 {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = i as u16;
            let last = usize::from(i) + 1 == descs.len();
            let flags = if last { flags } else { flags | NEXT };
            self.write_desc(i, addr, len, flags, i + 1);
        }
        self.publish(0);
        let used = self.kick();
        assert_eq!(used.len(), 1, "one used element per request");
        assert_eq!(used[0].0, 0);
        used[0].1
    }

    fn header(&self, request_type: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&request_type.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).expect("header");
        self.mem
            .write_obj(0xeeu8, GuestAddress(STATUS))
            .expect("status");
    }

    fn status(&self) -> u32 {
        u32::from(
            self.mem
                .read_obj::<u8>(GuestAddress(STATUS))
                .expect("status"),
        )
    }

    fn image_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut f = File::open(self.image.path()).expect("image");
        f.seek(SeekFrom::Start(offset)).expect("seek");
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).expect("read image");
        buf
    }

    fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem
            .read_slice(&mut buf, GuestAddress(addr))
            .expect("guest");
        buf
    }

    /// A plain one-sector read of sector 0, to show the device still works.
    fn still_works(&mut self) {
        self.header(VIRTIO_BLK_T_IN, 0);
        let used = self.submit(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
        assert_eq!(used, 513);
        assert_eq!(self.status(), VIRTIO_BLK_S_OK);
        assert_eq!(self.guest_bytes(DATA, 512), self.image_bytes(0, 512));
    }
}

fn serial(s: &str) -> BlockConfig {
    BlockConfig {
        serial: s.to_string(),
        ..BlockConfig::default()
    }
}

#[test]
fn config_space_and_features() {
    let mut h = Harness::new(serial("xvda"));
    let features = device_features(&mut h.t);
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
    ] {
        assert_ne!(features & (1 << bit), 0, "bit {bit} offered");
    }
    assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(rd(&mut h.t, reg::VIRTIO_MMIO_DEVICE_ID), 2);
    let mut cap = [0u8; 8];
    h.t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), IMAGE_SECTORS);
    assert_eq!(rd(&mut h.t, 0x100 + 12), u32::from(DEFAULT_QUEUE_SIZE) - 2);
    assert_eq!(rd(&mut h.t, 0x100 + 20), 512);
    assert_eq!(rd(&mut h.t, 0x100 + 36), MAX_DISCARD_SECTORS);
    assert_eq!(rd(&mut h.t, 0x100 + 40), MAX_DISCARD_SEGMENTS);
    assert_eq!(rd(&mut h.t, 0x100 + 60), 0);
}

#[test]
fn write_then_read_back() {
    let mut h = Harness::new(BlockConfig::default());
    let pattern: Vec<u8> = (0..3 * 512).map(|i| (i * 7 % 256) as u8).collect();
    h.mem
        .write_slice(&pattern[..1024], GuestAddress(DATA))
        .expect("data");
    h.mem
        .write_slice(&pattern[1024..], GuestAddress(DATA2))
        .expect("data");
    h.header(VIRTIO_BLK_T_OUT, 3);
    let used = h.submit(&[
        (HDR, 16, R),
        (DATA, 1024, R),
        (DATA2, 512, R),
        (STATUS, 1, W),
    ]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert_eq!(used, 1, "a write only writes the status byte");
    assert_eq!(h.image_bytes(3 * 512, 3 * 512), pattern);
    assert_eq!(rd(&mut h.t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    assert_eq!(h.rec.seen(), vec![InterruptKind::Queue]);

    // Read sectors 2..7 across two buffers and compare with the file.
    h.mem
        .write_slice(&[0u8; 2560], GuestAddress(DATA))
        .expect("clear");
    h.header(VIRTIO_BLK_T_IN, 2);
    let used = h.submit(&[
        (HDR, 16, R),
        (DATA, 2048, W),
        (DATA2, 512, W),
        (STATUS, 1, W),
    ]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert_eq!(used, 5 * 512 + 1);
    let mut got = h.guest_bytes(DATA, 2048);
    got.extend(h.guest_bytes(DATA2, 512));
    assert_eq!(got, h.image_bytes(2 * 512, 5 * 512));
    assert_eq!(&got[512..2048], &pattern[..]);

    let s = h.stats.snapshot();
    assert_eq!((s.write_requests, s.write_sectors), (1, 3));
    assert_eq!((s.read_requests, s.read_sectors), (1, 5));
    assert_eq!(s.errors, 0);
}

#[test]
fn header_and_status_may_share_descriptors_with_data() {
    // Any layout is allowed: header+data in one readable buffer, data+status in one writable one.
    let mut h = Harness::new(BlockConfig::default());
    let mut buf = vec![0u8; 16 + 512];
    buf[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    buf[8..16].copy_from_slice(&7u64.to_le_bytes());
    buf[16..].fill(0x5a);
    h.mem.write_slice(&buf, GuestAddress(HDR)).expect("request");
    h.mem
        .write_obj(0xeeu8, GuestAddress(STATUS))
        .expect("status");
    assert_eq!(h.submit(&[(HDR, 16 + 512, R), (STATUS, 1, W)]), 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert_eq!(h.image_bytes(7 * 512, 512), vec![0x5a; 512]);

    h.header(VIRTIO_BLK_T_IN, 7);
    // Data and status in one 513-byte descriptor at STATUS - 512.
    assert_eq!(h.submit(&[(HDR, 16, R), (STATUS - 512, 513, W)]), 513);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert_eq!(h.guest_bytes(STATUS - 512, 512), vec![0x5a; 512]);
}

#[test]
fn indirect_chain() {
    let mut h = Harness::new(BlockConfig::default());
    h.header(VIRTIO_BLK_T_IN, 10);
    let table = [
        (HDR, 16u32, R | NEXT, 1u16),
        (DATA, 1024, W | NEXT, 2),
        (STATUS, 1, W, 0),
    ];
    for (i, (addr, len, flags, next)) in table.into_iter().enumerate() {
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        h.mem
            .write_obj(raw, GuestAddress(INDIRECT + 16 * i as u64))
            .expect("indirect");
    }
    h.write_desc(0, INDIRECT, 48, VRING_DESC_F_INDIRECT as u16, 0);
    h.publish(0);
    assert_eq!(h.kick(), vec![(0, 1025)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert_eq!(h.guest_bytes(DATA, 1024), h.image_bytes(10 * 512, 1024));
}

#[test]
fn chains_longer_than_the_queue_get_ioerr() {
    let mut h = Harness::new(BlockConfig::default());
    let table = |n: usize| {
        let mut t = vec![(HDR, 16u32, R)];
        t.extend((0..n).map(|i| (DATA + 512 * i as u64, 512u32, W)));
        t.push((STATUS, 1, W));
        t
    };
    let write_indirect = |h: &mut Harness, descs: &[(u64, u32, u16)]| {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | NEXT };
            let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, i as u16 + 1));
            h.mem
                .write_obj(raw, GuestAddress(INDIRECT + 16 * i as u64))
                .expect("indirect");
        }
        let len = 16 * descs.len() as u32;
        h.write_desc(0, INDIRECT, len, VRING_DESC_F_INDIRECT as u16, 0);
        h.publish(0);
    };
    // 16 descriptors (the queue size) through an indirect table: fine.
    h.header(VIRTIO_BLK_T_IN, 0);
    write_indirect(&mut h, &table(14));
    assert_eq!(h.kick(), vec![(0, 14 * 512 + 1)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    // 17: too long.
    h.header(VIRTIO_BLK_T_IN, 0);
    write_indirect(&mut h, &table(15));
    assert_eq!(h.kick(), vec![(0, 1)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
    h.still_works();
}

#[test]
fn flush_and_get_id() {
    let mut h = Harness::new(serial("xvda"));
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.submit(&[(HDR, 16, R), (STATUS, 1, W)]), 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert_eq!(h.stats.snapshot().flushes, 1);

    h.mem
        .write_slice(&[0xffu8; 20], GuestAddress(DATA))
        .expect("clear");
    h.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(h.submit(&[(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)]), 21);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    let mut want = b"xvda".to_vec();
    want.resize(20, 0);
    assert_eq!(h.guest_bytes(DATA, 20), want);
}

#[test]
fn a_full_20_byte_serial_and_a_too_long_one() {
    let mut h = Harness::new(serial("ABCDEFGHIJKLMNOPQRST"));
    h.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(h.submit(&[(HDR, 16, R), (DATA, 64, W), (STATUS, 1, W)]), 21);
    assert_eq!(h.guest_bytes(DATA, 20), b"ABCDEFGHIJKLMNOPQRST".to_vec());
    let file = tempfile::tempfile().expect("file");
    assert!(matches!(
        Block::new(file, serial("ABCDEFGHIJKLMNOPQRSTU")),
        Err(BlockError::SerialTooLong(21))
    ));
}

#[test]
fn read_only_refuses_writes_and_discards() {
    let mut h = Harness::new(BlockConfig {
        read_only: true,
        ..BlockConfig::default()
    });
    let features = device_features(&mut h.t);
    assert_ne!(features & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(features & (1 << VIRTIO_BLK_F_DISCARD), 0);
    let before = h.image_bytes(0, 1024);
    h.mem
        .write_slice(&[0x11u8; 1024], GuestAddress(DATA))
        .expect("data");
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.submit(&[(HDR, 16, R), (DATA, 1024, R), (STATUS, 1, W)]),
        1
    );
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
    assert_eq!(h.image_bytes(0, 1024), before);
    h.still_works();
    assert_eq!(h.stats.snapshot().errors, 1);
}

#[test]
fn a_file_opened_read_only_makes_a_read_only_device() {
    let image = tempfile::NamedTempFile::new().expect("image");
    image.as_file().set_len(4096).expect("size");
    let file = File::open(image.path()).expect("open read-only");
    let mut h = Harness::over(file, image, BlockConfig::default(), u64::MAX);
    assert_ne!(device_features(&mut h.t) & (1 << VIRTIO_BLK_F_RO), 0);
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(h.submit(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]), 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
}

#[test]
fn out_of_range_and_unaligned_requests_fail() {
    let mut h = Harness::new(BlockConfig::default());
    // The last sector is fine, one past it is not.
    h.header(VIRTIO_BLK_T_IN, IMAGE_SECTORS - 1);
    assert_eq!(
        h.submit(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]),
        513
    );
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    for (request_type, sector, len, dir) in [
        (VIRTIO_BLK_T_IN, IMAGE_SECTORS - 1, 1024, W),
        (VIRTIO_BLK_T_IN, IMAGE_SECTORS, 512, W),
        (VIRTIO_BLK_T_OUT, IMAGE_SECTORS, 512, R),
        (VIRTIO_BLK_T_IN, u64::MAX, 512, W),
        (VIRTIO_BLK_T_OUT, u64::MAX / 512, 1024, R),
        (VIRTIO_BLK_T_IN, 0, 100, W),
        (VIRTIO_BLK_T_OUT, 0, 513, R),
    ] {
        h.header(request_type, sector);
        let used = h.submit(&[(HDR, 16, R), (DATA, len, dir), (STATUS, 1, W)]);
        assert_eq!(
            h.status(),
            VIRTIO_BLK_S_IOERR,
            "{request_type} {sector} {len}"
        );
        assert_eq!(used, 1);
    }
    assert_eq!(h.stats.snapshot().errors, 7);
    h.still_works();
}

#[test]
fn unknown_requests_are_unsupported() {
    let mut h = Harness::new(BlockConfig::default());
    h.header(99, 0);
    assert_eq!(h.submit(&[(HDR, 16, R), (STATUS, 1, W)]), 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_UNSUPP);
    // Discard without negotiating it.
    let mut h = Harness::with_features(BlockConfig::default(), !(1 << VIRTIO_BLK_F_DISCARD));
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    write_discard(&h, &[(0, 8, 0)]);
    assert_eq!(h.submit(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]), 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_UNSUPP);
}

fn write_discard(h: &Harness, segments: &[(u64, u32, u32)]) {
    let mut raw = Vec::new();
    for &(sector, n, flags) in segments {
        raw.extend(sector.to_le_bytes());
        raw.extend(n.to_le_bytes());
        raw.extend(flags.to_le_bytes());
    }
    h.mem
        .write_slice(&raw, GuestAddress(DATA))
        .expect("segments");
}

/// The first hole at or after `offset`, as `lseek(SEEK_HOLE)` reports it.
fn seek_hole(file: &File, offset: i64) -> i64 {
    // SAFETY: lseek on an open file descriptor with integer arguments touches no memory.
    unsafe { libc::lseek(file.as_raw_fd(), offset, libc::SEEK_HOLE) }
}

#[test]
fn discard_punches_a_hole() {
    let mut h = Harness::new(BlockConfig::default());
    // A 64 KiB range at 128 KiB: filesystem-block aligned, so it becomes a real hole.
    let (sector, count) = (256u64, 128u32);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    write_discard(&h, &[(sector, count, 0), (1000, 1, 0)]);
    assert_eq!(h.submit(&[(HDR, 16, R), (DATA, 32, R), (STATUS, 1, W)]), 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert_eq!(h.image_bytes(sector * 512, 65536), vec![0u8; 65536]);
    assert_eq!(h.image_bytes(1000 * 512, 512), vec![0u8; 512]);
    // Around it the data is intact, and the size did not change.
    let mut around = h.image_bytes(sector * 512 - 512, 512);
    around.extend(h.image_bytes((sector + u64::from(count)) * 512, 512));
    let pattern = |at: u64| (0..512).map(move |i| ((at + i) % 251) as u8);
    let mut want: Vec<u8> = pattern(sector * 512 - 512).collect();
    want.extend(pattern((sector + u64::from(count)) * 512));
    assert_eq!(around, want);
    let file = File::open(h.image.path()).expect("image");
    assert_eq!(file.metadata().expect("meta").len(), IMAGE_SECTORS * 512);
    assert_eq!(seek_hole(&file, 0), (sector * 512) as i64);
    assert_eq!(h.stats.snapshot().discards, 1);

    // The unmap flag is refused on discard; ranges are checked before anything is punched.
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    write_discard(&h, &[(0, 8, 1)]);
    h.submit(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_UNSUPP);
    let before = h.image_bytes(0, 4096);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    write_discard(&h, &[(0, 8, 0), (IMAGE_SECTORS, 1, 0)]);
    h.submit(&[(HDR, 16, R), (DATA, 32, R), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
    assert_eq!(h.image_bytes(0, 4096), before);
    // A segment list that is not a whole number of segments.
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    h.submit(&[(HDR, 16, R), (DATA, 17, R), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
}

#[test]
fn writes_and_discards_mark_the_dirty_map_and_reads_do_not() {
    use super::{DirtyRun, DIRTY_BLOCK};
    let mut h = Harness::new(BlockConfig::default());
    let block = DIRTY_BLOCK / 512;
    // A read marks nothing.
    h.header(VIRTIO_BLK_T_IN, 0);
    h.submit(&[(HDR, 16, R), (DATA, 4096, W), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert!(h.dirty.take().runs.is_empty());
    // A write across the boundary of blocks 1 and 2, and a discard in block 5.
    h.header(VIRTIO_BLK_T_OUT, 2 * block - 1);
    h.submit(&[(HDR, 16, R), (DATA, 1024, R), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    write_discard(&h, &[(5 * block + 8, 8, 0)]);
    h.submit(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    let t = h.dirty.take();
    assert_eq!(
        t.runs,
        vec![
            DirtyRun { first: 1, count: 2 },
            DirtyRun { first: 5, count: 1 }
        ]
    );
    // A refused write (out of range) marks nothing.
    h.header(VIRTIO_BLK_T_OUT, IMAGE_SECTORS);
    h.submit(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
    assert!(h.dirty.take().runs.is_empty());
}

#[test]
fn descriptor_beyond_memory_gets_ioerr() {
    let mut h = Harness::new(BlockConfig::default());
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.submit(&[(HDR, 16, R), (MEM_SIZE - 256, 512, W), (STATUS, 1, W)]),
        1
    );
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.submit(&[(HDR, 16, R), (u64::MAX - 100, 512, R), (STATUS, 1, W)]),
        1
    );
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
    // Header outside memory.
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.submit(&[(MEM_SIZE, 16, R), (DATA, 512, W), (STATUS, 1, W)]),
        1
    );
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
    // Status outside memory: nothing can be written, the chain comes back with length 0.
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.submit(&[(HDR, 16, R), (DATA, 512, W), (MEM_SIZE + 5, 1, W)]),
        0
    );
    h.still_works();
}

#[test]
fn looping_chain_gets_ioerr() {
    let mut h = Harness::new(BlockConfig::default());
    h.header(VIRTIO_BLK_T_IN, 0);
    h.write_desc(0, HDR, 16, R | NEXT, 1);
    h.write_desc(1, DATA, 512, W | NEXT, 2);
    h.write_desc(2, STATUS, 1, W | NEXT, 0);
    h.publish(0);
    assert_eq!(h.kick(), vec![(0, 1)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
    // A self-loop on the head.
    h.header(VIRTIO_BLK_T_IN, 0);
    h.write_desc(0, HDR, 16, R | NEXT, 0);
    h.publish(0);
    assert_eq!(h.kick(), vec![(0, 0)], "no writable byte: length 0");
    h.still_works();
}

#[test]
fn next_beyond_the_table_gets_ioerr() {
    let mut h = Harness::new(BlockConfig::default());
    h.header(VIRTIO_BLK_T_IN, 0);
    h.write_desc(0, STATUS, 1, W | NEXT, QSIZE);
    h.publish(0);
    assert_eq!(h.kick(), vec![(0, 1)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
    h.still_works();
}

#[test]
fn overflowing_lengths_get_ioerr() {
    let mut h = Harness::new(BlockConfig::default());
    h.header(VIRTIO_BLK_T_IN, 0);
    // Two writable descriptors whose lengths overflow a u32 total, then the status.
    let used = h.submit(&[
        (HDR, 16, R),
        (DATA, u32::MAX - 8, W),
        (DATA2, u32::MAX - 8, W),
        (STATUS, 1, W),
    ]);
    assert!(used <= 1);
    assert_ne!(h.status(), VIRTIO_BLK_S_OK);
    h.still_works();
}

#[test]
fn missing_or_misplaced_status_and_short_header() {
    let mut h = Harness::new(BlockConfig::default());
    // Only a header: no status byte at all.
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.submit(&[(HDR, 16, R)]), 0);
    // The status descriptor is readable and after a writable one: malformed; IOERR goes to the
    // last writable byte.
    h.header(VIRTIO_BLK_T_IN, 0);
    h.mem
        .write_obj(0u8, GuestAddress(DATA + 511))
        .expect("clear");
    assert_eq!(h.submit(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)]), 1);
    assert_eq!(h.status(), 0xee, "a readable status byte is never written");
    assert_eq!(h.guest_bytes(DATA + 511, 1), vec![VIRTIO_BLK_S_IOERR as u8]);
    // A header of 8 bytes.
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(h.submit(&[(HDR, 8, R), (DATA, 512, W), (STATUS, 1, W)]), 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
    // A header split 8 + 8 is fine.
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.submit(&[(HDR, 8, R), (HDR + 8, 8, R), (DATA, 512, W), (STATUS, 1, W)]),
        513
    );
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert_eq!(h.stats.snapshot().errors, 3);
    h.still_works();
}

#[test]
fn head_beyond_the_queue_is_dropped() {
    let mut h = Harness::new(BlockConfig::default());
    h.publish(QSIZE + 3);
    assert_eq!(h.kick(), vec![]);
    assert_eq!(h.stats.snapshot().errors, 1);
    h.still_works();
}

#[test]
fn avail_index_too_far_ahead_needs_reset() {
    let mut h = Harness::new(BlockConfig::default());
    h.mem
        .write_obj(QSIZE + 1, GuestAddress(h.avail + 2))
        .expect("avail idx");
    assert_eq!(h.kick(), vec![]);
    let status = rd(&mut h.t, reg::VIRTIO_MMIO_STATUS);
    assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(h.rec.seen(), vec![InterruptKind::Config]);
}

#[test]
fn event_idx_suppresses_and_requests_interrupts() {
    let mut h = Harness::new(BlockConfig::default());
    // The driver asks for an interrupt only once used idx passes 1 (used_event = 1).
    let used_event = h.avail + 4 + 2 * u64::from(QSIZE);
    h.mem
        .write_obj(1u16, GuestAddress(used_event))
        .expect("used_event");
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.submit(&[(HDR, 16, R), (STATUS, 1, W)]);
    assert!(
        h.rec.seen().is_empty(),
        "used idx 1 does not pass used_event 1"
    );
    h.submit(&[(HDR, 16, R), (STATUS, 1, W)]);
    assert_eq!(h.rec.seen(), vec![InterruptKind::Queue]);
    // The device publishes avail_event so the driver knows when to notify.
    let avail_event = h.used + 4 + 8 * u64::from(QSIZE);
    let ev: u16 = h
        .mem
        .read_obj(GuestAddress(avail_event))
        .expect("avail_event");
    assert_eq!(ev, 2);
}

#[test]
fn without_event_idx_no_interrupt_flag_is_honoured() {
    let mut h = Harness::with_features(BlockConfig::default(), !(1 << VIRTIO_RING_F_EVENT_IDX));
    h.mem
        .write_obj(1u16, GuestAddress(h.avail))
        .expect("VRING_AVAIL_F_NO_INTERRUPT");
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.submit(&[(HDR, 16, R), (STATUS, 1, W)]);
    assert!(h.rec.seen().is_empty());
    h.mem.write_obj(0u16, GuestAddress(h.avail)).expect("flags");
    h.submit(&[(HDR, 16, R), (STATUS, 1, W)]);
    assert_eq!(h.rec.seen(), vec![InterruptKind::Queue]);
}

#[test]
fn reset_and_reactivate() {
    let mut h = Harness::new(BlockConfig::default());
    h.still_works();
    wr(&mut h.t, reg::VIRTIO_MMIO_STATUS, 0);
    assert!(!h.t.is_activated());
    // Fresh rings after the reset, as a driver would set up.
    h.mem
        .write_slice(&[0u8; 0x1000], GuestAddress(AVAIL_RING))
        .expect("avail");
    h.mem
        .write_slice(&[0u8; 0x1000], GuestAddress(USED_RING))
        .expect("used");
    assert!(negotiate(&mut h.t, 1 << VIRTIO_F_VERSION_1));
    setup_queue(
        &mut h.t,
        0,
        u32::from(QSIZE),
        DESC_TABLE,
        AVAIL_RING,
        USED_RING,
    );
    driver_ok(&mut h.t);
    h.published = 0;
    h.used_seen = 0;
    h.still_works();
}

#[test]
fn bad_configurations_are_refused() {
    let file = tempfile::tempfile().expect("file");
    assert!(matches!(
        Block::new(
            file,
            BlockConfig {
                queue_size: 100,
                ..BlockConfig::default()
            }
        ),
        Err(BlockError::BadQueueSize(100))
    ));
    let dir = File::open(std::env::temp_dir()).expect("dir");
    assert!(matches!(
        Block::new(dir, BlockConfig::default()),
        Err(BlockError::Disk(DiskError::NotADisk))
    ));
    // An image whose size is not a whole number of sectors rounds down.
    let file = tempfile::tempfile().expect("file");
    file.set_len(1000).expect("size");
    assert_eq!(
        Block::new(file, BlockConfig::default())
            .expect("block")
            .capacity(),
        1
    );
}

/// One random descriptor: address kind, length, flags, next.
fn arb_desc() -> impl Strategy<Value = (u64, u32, u16, u16)> {
    let addr = prop_oneof![
        4 => (0u64..0x8000).prop_map(|a| DATA + a),
        1 => Just(HDR),
        1 => Just(STATUS),
        1 => (0u64..0x100).prop_map(|a| MEM_SIZE - a),
        1 => any::<u64>(),
    ];
    let len = prop_oneof![
        4 => 0u32..0x1400,
        1 => Just(16u32),
        1 => Just(1u32),
        1 => any::<u32>(),
    ];
    (addr, len, 0u16..8, 0u16..(QSIZE + 4))
}

fn arb_header() -> impl Strategy<Value = (u32, u64)> {
    let request_type = prop_oneof![
        Just(VIRTIO_BLK_T_IN),
        Just(VIRTIO_BLK_T_OUT),
        Just(VIRTIO_BLK_T_FLUSH),
        Just(VIRTIO_BLK_T_GET_ID),
        Just(VIRTIO_BLK_T_DISCARD),
        any::<u32>(),
    ];
    let sector = prop_oneof![0u64..IMAGE_SECTORS + 4, any::<u64>()];
    (request_type, sector)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random descriptor tables and headers: no panic, only valid used entries, and the device
    /// keeps working afterwards.
    #[test]
    fn random_chains_never_break_the_device(
        table in proptest::collection::vec(arb_desc(), QSIZE as usize),
        indirect in proptest::collection::vec(arb_desc(), 8),
        heads in proptest::collection::vec(0u16..(QSIZE + 2), 0..(QSIZE as usize)),
        header in arb_header(),
        discard in (0u64..IMAGE_SECTORS + 4, 0u32..64, 0u32..2),
    ) {
        let mut h = Harness::new(serial("prop"));
        h.header(header.0, header.1);
        write_discard(&h, &[(discard.0, discard.1, discard.2)]);
        for (i, &(addr, len, flags, next)) in table.iter().enumerate() {
            // Flags: bit 0 NEXT, bit 1 WRITE, bit 2 INDIRECT. Indirect tables live in their own
            // region, which no buffer points into, so the device cannot rewrite them.
            let addr = if flags & 4 != 0 { INDIRECT + (addr % 8) * 16 } else { addr };
            h.write_desc(i as u16, addr, len, flags, next);
        }
        for (i, &(addr, len, flags, next)) in indirect.iter().enumerate() {
            let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next % 10));
            h.mem
                .write_obj(raw, GuestAddress(INDIRECT + 16 * i as u64))
                .expect("indirect");
        }
        // The writable bytes of each head's chain, walked by a queue of our own before the
        // device runs (the device cannot touch the table: no address points into it).
        let mut reference = virtio_queue::Queue::new(QSIZE).expect("queue");
        reference.set_size(QSIZE);
        reference.set_desc_table_address(Some(h.desc as u32), Some(0));
        reference.set_avail_ring_address(Some(h.avail as u32), Some(0));
        reference.set_used_ring_address(Some(h.used as u32), Some(0));
        reference.set_ready(true);
        for &head in &heads {
            h.publish(head);
        }
        let mut writable = Vec::new();
        while let Some(chain) = reference.pop_descriptor_chain(h.mem.as_ref()) {
            let head = chain.head_index();
            let bytes: u64 = chain.writable().map(|d| u64::from(d.len())).sum();
            writable.push((head, bytes));
        }
        prop_assert_eq!(writable.len(), heads.len());

        let used = h.kick();
        let valid_heads = heads.iter().filter(|&&x| x < QSIZE).count();
        prop_assert_eq!(used.len(), valid_heads);
        let mut expected = writable.iter().filter(|(head, _)| *head < QSIZE);
        for &(id, len) in &used {
            let &(head, bytes) = expected.next().expect("one used entry per valid head");
            prop_assert_eq!(id, u32::from(head));
            prop_assert!(u64::from(len) <= bytes, "len {} > writable {}", len, bytes);
        }
        prop_assert_eq!(rd(&mut h.t, reg::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        h.still_works();
    }
}

#[test]
fn mock_split_queue_puts_its_used_ring_on_its_avail_ring() {
    // Why the harness lays out its own rings: the avail ring of a 16-entry queue is
    // 4 + 2 * 16 + 2 bytes long, but MockSplitQueue starts the used ring before its end.
    let mem = guest_memory();
    let vq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0), QSIZE);
    let avail_end = vq.avail_addr().0 + 4 + 2 * u64::from(QSIZE) + 2;
    assert!(vq.used_addr().0 < avail_end);
}

/// A loop device over `image`, detached on drop.
struct Loop(String);

impl Loop {
    /// Attaches `image`; fails the test, saying what is missing, on a host without loop devices.
    fn over(image: &std::path::Path) -> Loop {
        assert!(
            std::path::Path::new("/dev/loop-control").exists(),
            "/dev/loop-control is missing: this test puts its image on a loop device \
             (`modprobe loop`; scripts/test.sh also makes the device nodes where /dev has no udev)"
        );
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .output()
            .expect("run losetup (Debian: mount)");
        assert!(
            out.status.success(),
            "losetup -f --show {}: {}(this test needs root and a free loop device with its \
             /dev/loopN node; scripts/test.sh makes the nodes where /dev has no udev)",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .output();
    }
}

#[test]
fn discard_on_a_block_device_reaches_the_device() {
    let mut image = tempfile::NamedTempFile::new().expect("image");
    let pattern: Vec<u8> = (0..IMAGE_SECTORS * 512).map(|i| (i % 251) as u8).collect();
    image.write_all(&pattern).expect("fill image");
    image.flush().expect("flush");
    let lo = Loop::over(image.path());
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lo.0)
        .expect("open the loop device");
    let backing = image.path().to_path_buf();
    let mut h = Harness::over(dev, image, BlockConfig::default(), u64::MAX);
    // A loop device takes discards (it punches holes in its file).
    assert_ne!(
        device_features(&mut h.t) & (1 << VIRTIO_BLK_F_DISCARD),
        0,
        "discard not offered on {}",
        lo.0
    );
    let (sector, count) = (256u64, 128u32);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    write_discard(&h, &[(sector, count, 0)]);
    assert_eq!(h.submit(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]), 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    let data = std::fs::read(&backing).expect("read the backing file");
    let range = (sector * 512) as usize..((sector + u64::from(count)) * 512) as usize;
    assert_eq!(&data[range.clone()], &vec![0u8; range.len()][..]);
    assert_eq!(&data[..range.start], &pattern[..range.start]);
    h.still_works();
}

/// A device over a fresh qcow2 image of version `version` (4 MiB, empty).
fn qcow2_device(version: u32) -> Harness {
    let image = tempfile::NamedTempFile::new().expect("image");
    super::qcow2::create_for_tests(image.path(), 4 << 20, version);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image.path())
        .expect("open image");
    let q = super::qcow2::Qcow2Image::open(file, image.path(), true, &mut |p| File::open(p))
        .expect("qcow2");
    let block =
        Block::with_image(DiskImage::Qcow2(Box::new(q)), BlockConfig::default()).expect("block");
    Harness::over_block(block, image, u64::MAX)
}

#[test]
fn a_qcow2_disk_writes_flushes_and_discards_through_the_device() {
    let mut h = qcow2_device(3);
    assert_ne!(device_features(&mut h.t) & (1 << VIRTIO_BLK_F_DISCARD), 0);
    let mut cap = [0u8; 8];
    h.t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8192);
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i * 13 % 253) as u8).collect();
    h.mem.write_slice(&data, GuestAddress(DATA)).expect("data");
    h.header(VIRTIO_BLK_T_OUT, 1024);
    h.submit(&[(HDR, 16, R), (DATA, 256 * 1024, R), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.submit(&[(HDR, 16, R), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    let path = h.image.path().to_path_buf();
    let blocks = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&path).expect("meta").blocks() * 512
    };
    let full = blocks();
    h.mem
        .write_slice(&[0u8; 4096], GuestAddress(DATA))
        .expect("clear");
    h.header(VIRTIO_BLK_T_IN, 1024 + 8);
    h.submit(&[(HDR, 16, R), (DATA, 4096, W), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert!(h.guest_bytes(DATA, 4096) == data[4096..8192]);

    // Discard all of it but a sector at each end: the whole clusters inside are freed and
    // their space given back; everything discarded reads as zeros.
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    write_discard(&h, &[(1025, 510, 0)]);
    h.submit(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.submit(&[(HDR, 16, R), (STATUS, 1, W)]);
    let after = blocks();
    assert!(after + 128 * 1024 <= full, "{full} -> {after}");
    h.header(VIRTIO_BLK_T_IN, 1024);
    h.submit(&[(HDR, 16, R), (DATA, 256 * 1024, W), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    let got = h.guest_bytes(DATA, 256 * 1024);
    assert!(got[..512] == data[..512]);
    assert!(got[512..511 * 512].iter().all(|&b| b == 0));
    assert!(got[511 * 512..] == data[511 * 512..]);
}

#[test]
fn a_qcow2_v2_disk_does_not_offer_discard() {
    let mut h = qcow2_device(2);
    assert_eq!(device_features(&mut h.t) & (1 << VIRTIO_BLK_F_DISCARD), 0);
    h.header(VIRTIO_BLK_T_OUT, 7);
    h.mem
        .write_slice(&[0xa5; 512], GuestAddress(DATA))
        .expect("data");
    h.submit(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    h.mem
        .write_slice(&[0; 1024], GuestAddress(DATA))
        .expect("clear");
    h.header(VIRTIO_BLK_T_IN, 6);
    h.submit(&[(HDR, 16, R), (DATA, 1024, W), (STATUS, 1, W)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert!(h.guest_bytes(DATA, 512) == [0; 512] && h.guest_bytes(DATA + 512, 512) == [0xa5; 512]);
}

#[test]
fn a_read_only_drive_takes_a_new_medium_and_a_writable_one_refuses() {
    let mut h = Harness::new(BlockConfig {
        read_only: true,
        ..serial("hdc")
    });
    let mut medium = tempfile::tempfile().expect("medium");
    medium.write_all(&vec![0x5a; 4096]).expect("fill");
    let sectors = h.t.device_mut().change_media(medium).expect("new medium");
    assert_eq!(sectors, 8);
    let mut cap = [0u8; 8];
    h.t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8, "the capacity in config space");
    let empty = tempfile::tempfile().expect("empty");
    assert_eq!(h.t.device_mut().change_media(empty).expect("no medium"), 0);
    h.t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 0);

    let mut rw = Harness::new(serial("xvda"));
    let other = tempfile::tempfile().expect("other");
    assert!(matches!(
        rw.t.device_mut().change_media(other),
        Err(DeviceError::NotRemovable)
    ));
}

#[test]
fn saved_state_is_the_disks_own_and_another_devices_is_refused() {
    let mut h = Harness::new(serial("saved"));
    let st = h.t.save_state();
    assert_eq!(
        st.device,
        crate::state::DeviceState::Block(crate::state::BlockState {})
    );
    let fresh = |h: &Harness| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(h.image.path())
            .expect("open image");
        let block = Block::new(file, serial("saved")).expect("block");
        MmioTransport::new(
            Box::new(block),
            h.mem.clone(),
            Box::new(Recorder::default()),
        )
        .expect("t")
    };
    fresh(&h).restore_state(&st).expect("restore");
    let mut other = st.clone();
    other.device = crate::state::DeviceState::Net(crate::state::NetState {});
    let e = fresh(&h).restore_state(&other).expect_err("refused");
    assert!(
        e.to_string()
            .contains("the saved state of a NIC does not fit a disk"),
        "{e}"
    );
}

#[test]
fn data_extents_skip_a_raw_files_holes_and_the_block_device_sees_its_disk() {
    let f = tempfile::tempfile().expect("tmp");
    f.set_len(8 << 20).expect("size");
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0x5A; 4096], 3 << 20).expect("write");
    let disk = Disk::open(f.try_clone().expect("dup")).expect("disk");
    let ext = disk.data_extents(0, 8 << 20).expect("extents");
    assert!(
        ext.iter()
            .any(|&(o, l)| o <= 3 << 20 && o + l >= (3 << 20) + 4096),
        "the data is not in {ext:?}"
    );
    let total: u64 = ext.iter().map(|&(_, l)| l).sum();
    assert!(total < 8 << 20, "the holes were not skipped: {ext:?}");
    assert!(ext.iter().all(|&(o, l)| o + l <= 8 << 20));
    // A range past the data: nothing; the range is clipped to the disk.
    assert_eq!(
        disk.data_extents(4 << 20, 64 << 20).expect("extents"),
        vec![]
    );
    // Through the device: what a storage migration reads and writes.
    let block = Block::new(f, BlockConfig::default()).expect("block");
    let d = block.disk().expect("a block device has a disk");
    let mut buf = [0u8; 4096];
    d.read_at(&mut buf, 3 << 20).expect("read");
    assert_eq!(buf, [0x5A; 4096]);
}
