//! The network commands of the console: `nics`, `ip`, `ping`, `udpsend`, `spoof`.

use core::hint::spin_loop;

use crate::devices::Devices;
use crate::net::proto::{self, Ip, Mac, BROADCAST};
use crate::net::Link;
use crate::println;
use crate::time::Instant;
use crate::work::Vcpu;

/// ICMP identifier of the guest's pings.
const PING_IDENT: u16 = 0x7278;
/// UDP source port of `udpsend`.
const UDPSEND_PORT: u16 = 40000;
/// UDP payload per datagram of `udpsend`.
const DATAGRAM: usize = 1400;
/// How long a ping waits for its reply.
const PING_WAIT_MS: u64 = 1000;
/// How long `udpsend` waits for a free transmit buffer before giving up.
const STALL_MS: u64 = 5000;
/// `udpsend` notifies the device after this many frames (half the transmit queue), so that
/// the device sends one half while the guest fills the other.
const KICK_EVERY: usize = 16;
/// How often `udpsend`, while waiting for transmit buffers, checks that the device still works.
const HEALTH_CHECK_MS: u64 = 100;

/// Formats a MAC address.
pub struct MacText(pub Mac);

impl core::fmt::Display for MacText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Formats an IPv4 address.
pub struct IpText(pub Ip);

impl core::fmt::Display for IpText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let i = self.0;
        write!(f, "{}.{}.{}.{}", i[0], i[1], i[2], i[3])
    }
}

/// Answers what arrived on every card (called every tick).
pub fn poll(devices: &mut Devices) {
    for link in devices.links() {
        link.poll(64);
    }
}

/// `nics`.
pub fn nics(devices: &mut Devices) {
    let mut any = false;
    for link in devices.links() {
        any = true;
        println!("nic {} {}", link.nic.slot, MacText(link.nic.mac));
    }
    if !any {
        println!("no nics");
    }
}

/// `ip ADDR/PREFIX [SLOT]`.
pub fn ip(devices: &mut Devices, cidr: &str, slot: Option<u64>) {
    let Some((addr, prefix)) = proto::parse_cidr(cidr) else {
        println!("usage: ip ADDR/PREFIX [SLOT]");
        return;
    };
    let link = devices
        .links()
        .find(|l| slot.is_none_or(|s| l.nic.slot as u64 == s));
    let Some(link) = link else {
        println!("ip: no such nic");
        return;
    };
    link.stack.ip = Some((addr, prefix));
    // A gratuitous ARP, so that neighbours learn the address at once.
    let mac = link.nic.mac;
    let _ = link
        .nic
        .send(|buf| proto::arp_request(buf, mac, addr, addr));
    println!("ip {}/{prefix} on nic {}", IpText(addr), link.nic.slot);
}

/// The card to reach `dst`: one whose subnet holds it, else the first with an address, else the first.
fn route(devices: &mut Devices, dst: Ip) -> Option<&mut Link> {
    let mut best = None;
    for (index, link) in devices.links().enumerate() {
        let rank = match link.stack.ip {
            Some((ip, prefix)) if proto::same_subnet(ip, dst, prefix) => 0,
            Some(_) => 1,
            None => 2,
        };
        if best.is_none_or(|(r, _)| rank < r) {
            best = Some((rank, index));
        }
    }
    let (_, index) = best?;
    devices.links().nth(index)
}

/// Our source address on `link` (0.0.0.0 if none).
fn source(link: &Link) -> Ip {
    link.stack.ip.map(|(ip, _)| ip).unwrap_or([0; 4])
}

/// Finds the MAC of `dst` with ARP (3 tries, 500 ms each).
fn resolve(link: &mut Link, dst: Ip, vcpu: &mut Vcpu) -> Option<Mac> {
    for _ in 0..3 {
        if let Some(mac) = link.stack.neighbour(dst) {
            return Some(mac);
        }
        let (mac, src) = (link.nic.mac, source(link));
        let _ = link.nic.send(|buf| proto::arp_request(buf, mac, src, dst));
        let start = Instant::now();
        while start.elapsed_ms() < 500 {
            link.poll(64);
            if let Some(mac) = link.stack.neighbour(dst) {
                return Some(mac);
            }
            vcpu.poll_tick();
            spin_loop();
        }
    }
    link.stack.neighbour(dst)
}

/// `ping ADDR [COUNT]`.
pub fn ping(devices: &mut Devices, dst: &str, count: u64, vcpu: &mut Vcpu) {
    let Some(dst) = proto::parse_ip(dst) else {
        println!("usage: ping ADDR [COUNT]");
        return;
    };
    let Some(link) = route(devices, dst) else {
        println!("ping: no nics");
        return;
    };
    let mut replies = 0;
    if let Some(dst_mac) = resolve(link, dst, vcpu) {
        let data = [0x5Au8; 56];
        for seq in 1..=count {
            let seq = seq as u16;
            let (mac, src) = (link.nic.mac, source(link));
            let _ = link.nic.send(|buf| {
                proto::icmp_echo(buf, false, dst_mac, mac, src, dst, PING_IDENT, seq, &data)
            });
            let start = Instant::now();
            while start.elapsed_ms() < PING_WAIT_MS {
                link.poll(64);
                if link.stack.last_echo == Some((dst, PING_IDENT, seq)) {
                    replies += 1;
                    break;
                }
                vcpu.poll_tick();
                spin_loop();
            }
        }
    }
    println!("ping {}: {replies}/{count} replies", IpText(dst));
}

/// `udpsend ADDR PORT MIB`.
pub fn udpsend(devices: &mut Devices, dst: &str, port: u64, mib: u64, vcpu: &mut Vcpu) {
    let (Some(dst), Ok(port)) = (proto::parse_ip(dst), u16::try_from(port)) else {
        println!("usage: udpsend ADDR PORT MIB");
        return;
    };
    let Some(link) = route(devices, dst) else {
        println!("udpsend error: no nics");
        return;
    };
    let Some(dst_mac) = resolve(link, dst, vcpu) else {
        println!("udpsend error: {} unreachable", IpText(dst));
        return;
    };
    let total = mib.saturating_mul(1 << 20);
    let (mac, src) = (link.nic.mac, source(link));
    // Every payload is a window of this counting pattern (the byte at stream offset k is
    // k mod 256), copied with quadword moves, and only into a buffer that does not hold it
    // yet; and since a full-size datagram's payload depends only on where in the pattern it
    // starts, its checksum sum is computed once per start. Under PVM every guest instruction
    // is emulated, so not filling and not summing 1400 bytes per datagram is what makes the
    // sender fast.
    let mut pattern = [0u8; 256 + DATAGRAM];
    fill_counting(&mut pattern, 0);
    let mut sums: [Option<u16>; 256] = [None; 256];
    let run = link.nic.new_tag_epoch();
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut id: u16 = 0;
    let mut progress = Instant::now();
    let mut checked = Instant::now();
    while sent < total {
        let mut queued = 0;
        while sent < total && queued < KICK_EVERY {
            let len = (total - sent).min(DATAGRAM as u64) as usize;
            let first = (sent % 256) as usize;
            let window = pattern.get(first..first + len).unwrap_or_default();
            let payload_sum = if len == DATAGRAM {
                match sums.get_mut(first) {
                    Some(Some(sum)) => *sum,
                    Some(slot) => *slot.insert(proto::sum16(window)),
                    None => proto::sum16(window),
                }
            } else {
                proto::sum16(window)
            };
            // What the buffer's payload holds: where in the pattern it starts, and its length.
            // A full-size payload's start repeats every 32 datagrams (32 * 1400 is a multiple
            // of 256), as does the transmit buffer preferred for it: once the pattern went
            // round, a buffer mostly holds its payload already and only the headers change.
            // The run is part of the tag: a buffer from this run that carried the same payload
            // also carries the same headers (addresses, ports, lengths, UDP checksum), and only
            // the IPv4 identification and header checksum change.
            let tag = u64::from(run) << 32 | (len as u64) << 8 | first as u64;
            let ok = link.nic.queue_frame_tagged(id, tag, |buf, same| {
                let at = proto::udp_payload_offset();
                if same {
                    proto::set_ipv4_id(buf, id);
                    return at + len;
                }
                if let Some(payload) = buf.get_mut(at..at + window.len()) {
                    payload.copy_from_slice(window);
                }
                proto::udp_with_payload_sum(
                    buf,
                    dst_mac,
                    mac,
                    src,
                    dst,
                    (UDPSEND_PORT, port),
                    len,
                    id,
                    payload_sum,
                )
            });
            if !ok {
                break;
            }
            id = id.wrapping_add(1);
            sent += len as u64;
            queued += 1;
        }
        if queued > 0 {
            link.nic.kick();
            progress = Instant::now();
        } else if progress.elapsed_ms() > STALL_MS {
            println!("udpsend error: stalled after {sent} bytes");
            return;
        } else if checked.elapsed_ms() >= HEALTH_CHECK_MS {
            // A register read is an exit to the VMM, and with ioeventfds the device thread
            // holds the transport while it sends: not on every turn of this loop.
            if !link.nic.healthy() {
                println!("udpsend error: device failed after {sent} bytes");
                return;
            }
            checked = Instant::now();
        } else {
            spin_loop();
        }
        link.poll(16);
        vcpu.poll_tick();
    }
    // Wait for the device to take the last frames, still answering what arrives.
    let wait = Instant::now();
    while !link.nic.tx_idle() {
        if wait.elapsed_ms() > STALL_MS {
            println!("udpsend error: stalled after {sent} bytes");
            return;
        }
        link.poll(16);
        vcpu.poll_tick();
        spin_loop();
    }
    println!("udpsend done {sent} bytes in {} ms", start.elapsed_ms());
}

/// Fills `buf` with the bytes `first mod 256`, `first + 1 mod 256`, ... eight at a time.
fn fill_counting(buf: &mut [u8], first: u64) {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    /// Adds two words byte by byte, each byte wrapping on its own.
    fn add_bytes(x: u64, y: u64) -> u64 {
        ((x & LOW7) + (y & LOW7)) ^ ((x ^ y) & HIGH)
    }
    let mut next = first as u8;
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = add_bytes(
            0x0706_0504_0302_0100,
            u64::from(next) * 0x0101_0101_0101_0101,
        );
        chunk.copy_from_slice(&word.to_le_bytes());
        next = next.wrapping_add(8);
    }
    for byte in chunks.into_remainder() {
        *byte = next;
        next = next.wrapping_add(1);
    }
}

/// `spoof SRC DST`: one ICMP echo request with a forged source address.
pub fn spoof(devices: &mut Devices, src: &str, dst: &str, vcpu: &mut Vcpu) {
    let (Some(src), Some(dst)) = (proto::parse_ip(src), proto::parse_ip(dst)) else {
        println!("usage: spoof SRC DST");
        return;
    };
    let Some(link) = route(devices, dst) else {
        println!("spoof: no nics");
        return;
    };
    let dst_mac = resolve(link, dst, vcpu).unwrap_or(BROADCAST);
    let mac = link.nic.mac;
    let _ = link.nic.send(|buf| {
        proto::icmp_echo(
            buf,
            false,
            dst_mac,
            mac,
            src,
            dst,
            PING_IDENT,
            1,
            &[0x53; 56],
        )
    });
    println!("spoof sent");
}
