//! virtio-net driven through the MMIO transport with real rings in real guest memory, against
//! an in-memory backend.

use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_mmio as reg;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::mmio::MmioTransport;
use crate::testutil::*;

const QSIZE: u16 = 16;
const RX_DESC: u64 = 0;
const RX_AVAIL: u64 = 0x1000;
const RX_USED: u64 = 0x2000;
const TX_DESC: u64 = 0x3000;
const TX_AVAIL: u64 = 0x4000;
const TX_USED: u64 = 0x5000;
const BUF: u64 = 0x10_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;

#[derive(Clone, Default)]
struct Fake {
    inbound: Arc<Mutex<VecDeque<Vec<u8>>>>,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl NetBackend for Fake {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(f) = self.inbound.lock().expect("lock").pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        buf[..f.len()].copy_from_slice(&f);
        Ok(f.len())
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.sent.lock().expect("lock").push(frame.to_vec());
        Ok(())
    }
}

struct Harness {
    mem: Arc<GuestMemoryMmap>,
    t: MmioTransport,
    fake: Fake,
    stats: Arc<NetStats>,
    published: [u16; 2],
    /// The rate timer's fd, if the config has a rate.
    timer: Option<RawFd>,
}

fn write_desc(
    mem: &GuestMemoryMmap,
    table: u64,
    i: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let at = table + u64::from(i) * 16;
    mem.write_obj(addr, GuestAddress(at)).expect("desc");
    mem.write_obj(len, GuestAddress(at + 8)).expect("desc");
    mem.write_obj(flags, GuestAddress(at + 12)).expect("desc");
    mem.write_obj(next, GuestAddress(at + 14)).expect("desc");
}

impl Harness {
    fn new(config: NetConfig) -> Harness {
        let mem = guest_memory();
        let fake = Fake::default();
        let net = Net::new(Box::new(fake.clone()), config).expect("net");
        let stats = net.stats();
        let timer = net.rate_timer_fd();
        let mut t = MmioTransport::new(Box::new(net), mem.clone(), Box::new(Recorder::default()))
            .expect("transport");
        assert!(negotiate(&mut t, 1u64 << VIRTIO_F_VERSION_1 | 1 << 5));
        setup_queue(&mut t, 0, u32::from(QSIZE), RX_DESC, RX_AVAIL, RX_USED);
        setup_queue(&mut t, 1, u32::from(QSIZE), TX_DESC, TX_AVAIL, TX_USED);
        driver_ok(&mut t);
        assert!(t.is_activated());
        Harness {
            mem,
            t,
            fake,
            stats,
            published: [0; 2],
            timer,
        }
    }

    /// Publishes descriptor `head` on queue `q`.
    fn publish(&mut self, q: usize, head: u16) {
        let avail = if q == 0 { RX_AVAIL } else { TX_AVAIL };
        let idx = self.published[q];
        self.mem
            .write_obj(head, GuestAddress(avail + 4 + u64::from(idx % QSIZE) * 2))
            .expect("ring");
        self.published[q] = idx.wrapping_add(1);
        self.mem
            .write_obj(self.published[q], GuestAddress(avail + 2))
            .expect("idx");
    }

    fn used(&self, q: usize) -> (u16, Vec<(u32, u32)>) {
        let used = if q == 0 { RX_USED } else { TX_USED };
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).expect("used");
        let entries = (0..idx)
            .map(|i| {
                let at = used + 4 + u64::from(i % QSIZE) * 8;
                (
                    self.mem.read_obj(GuestAddress(at)).expect("id"),
                    self.mem.read_obj(GuestAddress(at + 4)).expect("len"),
                )
            })
            .collect();
        (idx, entries)
    }

    /// Queues a transmit of `frame` (header included) in descriptor `i`.
    fn tx(&mut self, i: u16, frame: &[u8]) {
        let addr = BUF + u64::from(i) * 0x1_0000;
        let mut data = vec![0u8; NET_HDR_SIZE];
        data.extend_from_slice(frame);
        self.mem
            .write_slice(&data, GuestAddress(addr))
            .expect("buf");
        write_desc(&self.mem, TX_DESC, i, addr, data.len() as u32, 0, 0);
        self.publish(1, i);
    }
}

fn config() -> NetConfig {
    NetConfig {
        mac: [0x00, 0x16, 0x3e, 1, 2, 3],
        rate: None,
        allowed_ips: Vec::new(),
    }
}

fn icmp_from(src: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[23] = 1;
    f[26..30].copy_from_slice(&src);
    f
}

#[test]
fn mac_in_config_space() {
    let mut h = Harness::new(config());
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        let mut one = [0u8; 1];
        h.t.read(0x100 + i as u64, &mut one);
        *b = one[0];
    }
    assert_eq!(mac, [0x00, 0x16, 0x3e, 1, 2, 3]);
}

#[test]
fn transmit_strips_header_and_counts() {
    let mut h = Harness::new(config());
    let frame = icmp_from([10, 0, 0, 2]);
    h.tx(0, &frame);
    h.t.notify(TX_QUEUE);
    assert_eq!(*h.fake.sent.lock().expect("lock"), vec![frame.clone()]);
    assert_eq!(h.used(1).0, 1);
    let s = h.stats.snapshot();
    assert_eq!((s.tx_packets, s.tx_bytes), (1, frame.len() as u64));
}

#[test]
fn receive_prepends_header_and_waits_for_buffers() {
    let mut h = Harness::new(config());
    let frame: Vec<u8> = (0..100u8).collect();
    h.fake
        .inbound
        .lock()
        .expect("lock")
        .push_back(frame.clone());
    // No buffers yet: the frame waits.
    h.t.notify(RX_QUEUE);
    assert_eq!(h.used(0).0, 0);
    write_desc(&h.mem, RX_DESC, 0, BUF, 2048, W, 0);
    h.publish(0, 0);
    h.t.notify(RX_QUEUE);
    let (idx, entries) = h.used(0);
    assert_eq!(idx, 1);
    assert_eq!(entries[0], (0, (NET_HDR_SIZE + 100) as u32));
    let mut got = vec![0u8; NET_HDR_SIZE + 100];
    h.mem.read_slice(&mut got, GuestAddress(BUF)).expect("read");
    assert_eq!(got[10], 1, "num_buffers");
    assert_eq!(&got[NET_HDR_SIZE..], &frame[..]);
    assert_eq!(h.stats.snapshot().rx_packets, 1);
}

#[test]
fn small_receive_buffer_drops_the_frame() {
    let mut h = Harness::new(config());
    h.fake
        .inbound
        .lock()
        .expect("lock")
        .push_back(vec![7u8; 500]);
    write_desc(&h.mem, RX_DESC, 0, BUF, 64, W, 0);
    h.publish(0, 0);
    h.t.notify(RX_QUEUE);
    assert_eq!(h.used(0).1[0], (0, 0));
    assert_eq!(h.stats.snapshot().rx_drops, 1);
}

#[test]
fn spoofed_source_is_dropped_and_counted() {
    let mut h = Harness::new(NetConfig {
        allowed_ips: vec![Ipv4Addr::new(10, 0, 0, 2)],
        ..config()
    });
    h.tx(0, &icmp_from([10, 0, 0, 99]));
    h.tx(1, &icmp_from([10, 0, 0, 2]));
    h.t.notify(TX_QUEUE);
    let sent = h.fake.sent.lock().expect("lock").clone();
    assert_eq!(sent, vec![icmp_from([10, 0, 0, 2])]);
    let s = h.stats.snapshot();
    assert_eq!((s.tx_spoof_drops, s.tx_packets), (1, 1));
    assert_eq!(h.used(1).0, 2);
}

#[test]
fn rate_limit_defers_and_arms_the_timer() {
    let mut h = Harness::new(NetConfig {
        rate: Some((1000, Duration::from_millis(50))),
        ..config()
    });
    for i in 0..4 {
        h.tx(i, &vec![0u8; 600]);
    }
    h.t.notify(TX_QUEUE);
    // 1000 bytes of credit: two 600-byte frames (the second overdraws), then wait.
    assert_eq!(h.fake.sent.lock().expect("lock").len(), 2);
    std::thread::sleep(Duration::from_millis(120));
    h.t.notify(TX_QUEUE);
    assert!(h.fake.sent.lock().expect("lock").len() >= 3);
}

/// Whether the timer fd is armed (a pending expiry) according to timerfd_gettime.
fn timer_armed(fd: RawFd) -> bool {
    // SAFETY: an all-zero itimerspec is valid; gettime writes it.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is the device's live timerfd; `spec` is writable.
    assert_eq!(unsafe { libc::timerfd_gettime(fd, &mut spec) }, 0);
    spec.it_value.tv_sec != 0 || spec.it_value.tv_nsec != 0
}

/// Whether the timer fd is readable (an expiry not consumed), waiting at most `ms`.
fn timer_readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n == 1 && p.revents & libc::POLLIN != 0
}

#[test]
fn processing_the_transmit_queue_consumes_the_timer_expiry() {
    let mut h = Harness::new(NetConfig {
        rate: Some((1000, Duration::from_millis(20))),
        ..config()
    });
    let fd = h.timer.expect("rate timer");
    for i in 0..3 {
        h.tx(i, &vec![0u8; 600]);
    }
    h.t.notify(TX_QUEUE);
    assert_eq!(h.fake.sent.lock().expect("lock").len(), 2);
    assert!(timer_armed(fd));
    // The VMM calls process_queue(TX) when the fd becomes readable; afterwards it must not be
    // (it is watched level-triggered: a readable fd would wake the I/O thread again at once).
    assert!(timer_readable(fd, 10_000), "the timer never fired");
    h.t.notify(TX_QUEUE);
    assert_eq!(h.fake.sent.lock().expect("lock").len(), 3);
    assert!(!timer_readable(fd, 0));
}

#[test]
fn reset_stops_the_rate_timer() {
    let mut h = Harness::new(NetConfig {
        rate: Some((1000, Duration::from_millis(50))),
        ..config()
    });
    let fd = h.timer.expect("rate timer");
    for i in 0..4 {
        h.tx(i, &vec![0u8; 600]);
    }
    h.t.notify(TX_QUEUE);
    assert!(timer_armed(fd));
    // The driver resets the device: the transport then ignores notifications, so a timer left
    // armed would become readable and stay so.
    wr(&mut h.t, reg::VIRTIO_MMIO_STATUS, 0);
    assert!(!h.t.is_activated());
    assert!(!timer_armed(fd));
    assert!(!timer_readable(fd, 0));
}

#[test]
fn bad_descriptors_fail_cleanly() {
    let mut h = Harness::new(config());
    // Outside guest memory.
    write_desc(&h.mem, TX_DESC, 0, MEM_SIZE + 0x1000, 100, 0, 0);
    h.publish(1, 0);
    // A loop.
    write_desc(&h.mem, TX_DESC, 1, BUF, 100, NEXT, 2);
    write_desc(&h.mem, TX_DESC, 2, BUF, 100, NEXT, 1);
    h.publish(1, 1);
    // An overflowing length.
    write_desc(&h.mem, TX_DESC, 3, u64::MAX - 10, u32::MAX, 0, 0);
    h.publish(1, 3);
    // Shorter than the header.
    write_desc(&h.mem, TX_DESC, 4, BUF, 4, 0, 0);
    h.publish(1, 4);
    h.t.notify(TX_QUEUE);
    assert!(h.fake.sent.lock().expect("lock").is_empty());
    // The device still works.
    h.tx(5, &icmp_from([1, 2, 3, 4]));
    h.t.notify(TX_QUEUE);
    assert_eq!(h.fake.sent.lock().expect("lock").len(), 1);
    assert_eq!(h.stats.snapshot().tx_drops, 4);
}

/// Where descriptors of the random tables may point when they say INDIRECT: a region of its
/// own, below every buffer address [`arb_desc`] makes, so the device never writes a table.
const INDIRECT: u64 = 0x8000;
/// Where the well-formed buffers after the random ones live (one 4 KiB page each).
const GOOD: u64 = 0x80_0000;

/// A random descriptor: mostly buffers in the buffer area, some across the end of guest
/// memory or anywhere above the rings; any length, flags (NEXT, WRITE, INDIRECT) and next.
fn arb_desc() -> impl Strategy<Value = (u64, u32, u16, u16)> {
    let addr = prop_oneof![
        4 => (0u64..0x10_0000).prop_map(|a| BUF + a),
        1 => (0u64..0x100).prop_map(|a| MEM_SIZE - a),
        1 => BUF..=u64::MAX,
    ];
    let len = prop_oneof![
        4 => 0u32..0x1400,
        1 => Just(NET_HDR_SIZE as u32),
        1 => any::<u32>(),
    ];
    (addr, len, 0u16..8, 0u16..(QSIZE + 4))
}

impl Harness {
    /// Used elements of queue `q` from position `from` (of the used index) to the current one.
    fn used_from(&self, q: usize, from: u16) -> Vec<(u32, u32)> {
        let used = if q == 0 { RX_USED } else { TX_USED };
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).expect("used idx");
        let count = idx.wrapping_sub(from);
        assert!(count <= QSIZE, "{count} used elements at once");
        (0..count)
            .map(|k| {
                let at = used + 4 + u64::from(from.wrapping_add(k) % QSIZE) * 8;
                (
                    self.mem.read_obj(GuestAddress(at)).expect("id"),
                    self.mem.read_obj(GuestAddress(at + 4)).expect("len"),
                )
            })
            .collect()
    }

    /// Walks the chains of `heads` on queue `q` as published, with a queue of the test's own
    /// (before the device runs): (readable, writable) bytes of each, (0, 0) for a head
    /// outside the table.
    fn walk(&self, q: usize, heads: &[u16]) -> Vec<(u64, u64)> {
        let (desc, avail, used) = if q == 0 {
            (RX_DESC, RX_AVAIL, RX_USED)
        } else {
            (TX_DESC, TX_AVAIL, TX_USED)
        };
        let mut reference = Queue::new(QSIZE).expect("queue");
        reference.set_size(QSIZE);
        reference.set_desc_table_address(Some(desc as u32), Some(0));
        reference.set_avail_ring_address(Some(avail as u32), Some(0));
        reference.set_used_ring_address(Some(used as u32), Some(0));
        reference.set_ready(true);
        let mut out = Vec::new();
        while let Some(chain) = reference.pop_descriptor_chain(self.mem.as_ref()) {
            let sum = |d: virtio_queue::desc::split::Descriptor| u64::from(d.len());
            out.push((
                chain.clone().readable().map(sum).sum(),
                chain.writable().map(sum).sum(),
            ));
        }
        assert_eq!(
            out.len(),
            heads.len(),
            "chains walked for the heads published"
        );
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Random descriptor tables on both queues: no panic, only valid used elements (one per
    /// head in the table, in order, with a length the chain holds), counters that add up,
    /// and the device moves well-formed frames both ways afterwards.
    #[test]
    fn random_chains_never_break_the_device(
        rx_table in proptest::collection::vec(arb_desc(), QSIZE as usize),
        tx_table in proptest::collection::vec(arb_desc(), QSIZE as usize),
        indirect in proptest::collection::vec(arb_desc(), 8),
        rx_heads in proptest::collection::vec(0u16..(QSIZE + 2), 0..=(QSIZE as usize)),
        tx_heads in proptest::collection::vec(0u16..(QSIZE + 2), 0..=(QSIZE as usize)),
        frames in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..3000), 0..(QSIZE as usize)
        ),
    ) {
        let mut h = Harness::new(config());
        for (table, tables) in [(RX_DESC, &rx_table), (TX_DESC, &tx_table)] {
            for (i, &(addr, len, flags, next)) in tables.iter().enumerate() {
                let addr = if flags & 4 != 0 { INDIRECT + (addr % 8) * 16 } else { addr };
                write_desc(&h.mem, table, i as u16, addr, len, flags, next);
            }
        }
        for (i, &(addr, len, flags, next)) in indirect.iter().enumerate() {
            write_desc(&h.mem, INDIRECT, i as u16, addr, len, flags, next % 10);
        }
        for &head in &rx_heads {
            h.publish(0, head);
        }
        for &head in &tx_heads {
            h.publish(1, head);
        }
        let rx_chains = h.walk(0, &rx_heads);
        let tx_chains = h.walk(1, &tx_heads);
        h.fake.inbound.lock().expect("lock").extend(frames.iter().cloned());

        h.t.notify(RX_QUEUE);
        h.t.notify(TX_QUEUE);
        prop_assert_eq!(
            rd(&mut h.t, reg::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );

        // Receive: each frame takes the next chain; a head outside the table, or a chain too
        // small or malformed, drops its frame. One used element per head in the table, with
        // the header and the frame or nothing, never more than the chain can hold.
        let consumed = frames.len().min(rx_heads.len());
        let rx_used = h.used_from(0, 0);
        let mut expected = (0..consumed).filter(|&k| rx_heads[k] < QSIZE);
        let (mut delivered, mut delivered_bytes) = (0u64, 0u64);
        for &(id, len) in &rx_used {
            let k = expected.next().expect("a used element for each receive head in the table");
            prop_assert_eq!(id, u32::from(rx_heads[k]));
            let whole = (NET_HDR_SIZE + frames[k].len()) as u32;
            prop_assert!(len == 0 || len == whole, "used len {} for a frame of {}", len, whole);
            prop_assert!(u64::from(len) <= rx_chains[k].1, "len {} > writable {}", len, rx_chains[k].1);
            if len != 0 {
                delivered += 1;
                delivered_bytes += frames[k].len() as u64;
            }
        }
        prop_assert!(expected.next().is_none(), "a receive head in the table got no used element");
        let s = h.stats.snapshot();
        prop_assert_eq!((s.rx_packets, s.rx_bytes), (delivered, delivered_bytes));
        prop_assert_eq!(s.rx_packets + s.rx_drops, consumed as u64);

        // Transmit: every chain is taken; one used element of length 0 per head in the
        // table; each frame sent is a chain's readable bytes less the header, in order.
        let tx_used = h.used_from(1, 0);
        let in_table: Vec<u32> = tx_heads.iter().filter(|&&x| x < QSIZE).map(|&x| u32::from(x)).collect();
        prop_assert_eq!(tx_used.iter().map(|&(id, _)| id).collect::<Vec<_>>(), in_table);
        prop_assert!(tx_used.iter().all(|&(_, len)| len == 0));
        let sent = h.fake.sent.lock().expect("lock").clone();
        prop_assert_eq!(s.tx_packets + s.tx_drops, tx_heads.len() as u64);
        prop_assert_eq!(s.tx_packets, sent.len() as u64);
        prop_assert_eq!(s.tx_bytes, sent.iter().map(|f| f.len() as u64).sum::<u64>());
        let mut chains = tx_chains.iter();
        for frame in &sent {
            let len = frame.len() as u64 + NET_HDR_SIZE as u64;
            prop_assert!(
                chains.any(|&(readable, _)| readable == len),
                "a frame of {} bytes that no chain in order holds", frame.len()
            );
        }

        // Afterwards the device still works. Receive chains left unused take filler frames
        // (with the same rules) ...
        let mut rx_seen = rx_used.len() as u16;
        let filler = vec![0u8; 60];
        let left = &rx_heads[consumed..];
        h.fake.inbound.lock().expect("lock").extend(left.iter().map(|_| filler.clone()));
        h.t.notify(RX_QUEUE);
        let filled = h.used_from(0, rx_seen);
        let mut expected = (consumed..rx_heads.len()).filter(|&k| rx_heads[k] < QSIZE);
        for &(id, len) in &filled {
            let k = expected.next().expect("a used element for each receive head in the table");
            prop_assert_eq!(id, u32::from(rx_heads[k]));
            prop_assert!(len == 0 || len as usize == NET_HDR_SIZE + filler.len());
            prop_assert!(u64::from(len) <= rx_chains[k].1);
        }
        prop_assert!(expected.next().is_none(), "a receive head in the table got no used element");
        rx_seen = rx_seen.wrapping_add(filled.len() as u16);
        // ... then every frame still waiting, and one more, lands whole in a good buffer.
        let mut waiting: Vec<Vec<u8>> = frames[consumed..].to_vec();
        waiting.push((0..100u8).collect());
        h.fake.inbound.lock().expect("lock").extend(waiting.last().cloned());
        for k in 0..waiting.len() as u16 {
            write_desc(&h.mem, RX_DESC, k, GOOD + u64::from(k) * 0x1000, 0x1000, W, 0);
            h.publish(0, k);
        }
        h.t.notify(RX_QUEUE);
        let good = h.used_from(0, rx_seen);
        prop_assert_eq!(good.len(), waiting.len());
        for (k, (&(id, len), frame)) in good.iter().zip(&waiting).enumerate() {
            prop_assert_eq!(id, k as u32);
            prop_assert_eq!(len as usize, NET_HDR_SIZE + frame.len());
            let mut got = vec![0u8; NET_HDR_SIZE + frame.len()];
            h.mem.read_slice(&mut got, GuestAddress(GOOD + k as u64 * 0x1000)).expect("read");
            prop_assert_eq!(got[10], 1, "num_buffers");
            prop_assert_eq!(&got[NET_HDR_SIZE..], &frame[..]);
        }
        // And a well-formed transmit goes out as it is.
        let before = sent.len();
        let frame = icmp_from([10, 0, 0, 2]);
        h.tx(0, &frame);
        h.t.notify(TX_QUEUE);
        let sent = h.fake.sent.lock().expect("lock").clone();
        prop_assert_eq!(sent.len(), before + 1);
        prop_assert_eq!(sent.last(), Some(&frame));
        prop_assert_eq!(h.used_from(1, tx_used.len() as u16), vec![(0, 0)]);
    }
}

#[test]
fn saved_state_is_the_nics_own_and_another_devices_is_refused() {
    let mut h = Harness::new(config());
    let st = h.t.save_state();
    assert_eq!(
        st.device,
        crate::state::DeviceState::Net(crate::state::NetState {})
    );
    let fresh = |h: &Harness| {
        let net = Net::new(Box::new(h.fake.clone()), config()).expect("net");
        MmioTransport::new(Box::new(net), h.mem.clone(), Box::new(Recorder::default()))
            .expect("transport")
    };
    fresh(&h).restore_state(&st).expect("restore");
    let mut other = st.clone();
    other.device = crate::state::DeviceState::Block(crate::state::BlockState {});
    let e = fresh(&h).restore_state(&other).expect_err("refused");
    assert!(
        e.to_string()
            .contains("the saved state of a disk does not fit a NIC"),
        "{e}"
    );
}
