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
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut id: u16 = 0;
    let mut progress = Instant::now();
    while sent < total {
        let mut queued = false;
        while sent < total {
            let len = (total - sent).min(DATAGRAM as u64) as usize;
            let offset = sent;
            let ok = link.nic.queue_frame(|buf| {
                let at = proto::udp_payload_offset();
                if let Some(payload) = buf.get_mut(at..at + len) {
                    for (k, byte) in payload.iter_mut().enumerate() {
                        *byte = (offset as usize + k) as u8;
                    }
                }
                proto::udp(buf, dst_mac, mac, src, dst, UDPSEND_PORT, port, len, id)
            });
            if !ok {
                break;
            }
            id = id.wrapping_add(1);
            sent += len as u64;
            queued = true;
        }
        if queued {
            link.nic.kick();
            progress = Instant::now();
        } else if progress.elapsed_ms() > STALL_MS || !link.nic.healthy() {
            println!("udpsend error: stalled after {sent} bytes");
            return;
        } else {
            spin_loop();
        }
        link.poll(16);
        vcpu.poll_tick();
    }
    let wait = Instant::now();
    while !link.nic.tx_idle() && wait.elapsed_ms() < STALL_MS {
        spin_loop();
    }
    println!("udpsend done {sent} bytes in {} ms", start.elapsed_ms());
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
