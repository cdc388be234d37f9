//! Ethernet, ARP, IPv4, ICMP echo and UDP: parsing received frames and building replies.
//!
//! Pure `core` code with no hardware access, so the host tests include this file and check it
//! with std. Every length and offset comes from the network and is checked before use.

/// Ethernet header length.
pub const ETH_HDR: usize = 14;
/// IPv4 header length (this stack sends no options).
pub const IP_HDR: usize = 20;
/// UDP header length.
pub const UDP_HDR: usize = 8;
/// ICMP echo header length.
pub const ICMP_HDR: usize = 8;
/// Largest Ethernet frame handled (no FCS).
pub const MAX_FRAME: usize = 1514;
/// Broadcast MAC address.
pub const BROADCAST: [u8; 6] = [0xFF; 6];

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const PROTO_ICMP: u8 = 1;
const PROTO_UDP: u8 = 17;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// The UDP echo port.
pub const ECHO_PORT: u16 = 7;

/// An IPv4 address.
pub type Ip = [u8; 4];
/// A MAC address.
pub type Mac = [u8; 6];

/// One interface's identity.
#[derive(Clone, Copy)]
pub struct Iface {
    /// Its MAC address.
    pub mac: Mac,
    /// Its IPv4 address, if set.
    pub ip: Option<Ip>,
}

/// What a received frame means to the stack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    /// Nothing for us.
    Ignored,
    /// A reply of this many bytes was built in the output buffer (ARP, echo); send it.
    Reply(usize),
    /// An ICMP echo reply arrived: source, identifier, sequence number.
    EchoReply(Ip, u16, u16),
}

fn be16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]))
}

fn put16(buf: &mut [u8], at: usize, value: u16) {
    if let Some(dst) = buf.get_mut(at..at + 2) {
        dst.copy_from_slice(&value.to_be_bytes());
    }
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

fn array<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at + N)?.try_into().ok()
}

/// The Internet checksum (RFC 1071) of `data`, continuing from the partial sum `sum`.
pub fn checksum(data: &[u8], sum: u32) -> u16 {
    let mut sum = u64::from(sum);
    // Summing 32-bit big-endian words and folding later gives the same one's-complement sum
    // (2^16 = 1 modulo 0xFFFF) with half the additions.
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        sum += u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for pair in &mut pairs {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let Some(&last) = pairs.remainder().first() {
        sum += u64::from(last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// The partial sum of the UDP pseudo-header.
fn pseudo_sum(src: Ip, dst: Ip, proto: u8, len: u16) -> u32 {
    let mut sum = 0u32;
    for pair in [
        [src[0], src[1]],
        [src[2], src[3]],
        [dst[0], dst[1]],
        [dst[2], dst[3]],
    ] {
        sum += u32::from(u16::from_be_bytes(pair));
    }
    sum + u32::from(proto) + u32::from(len)
}

/// Builds an Ethernet header; returns its length.
pub fn ethernet(out: &mut [u8], dst: Mac, src: Mac, ethertype: u16) -> usize {
    put(out, 0, &dst);
    put(out, 6, &src);
    put16(out, 12, ethertype);
    ETH_HDR
}

/// Builds an ARP frame (padded to 60 bytes); returns its length.
pub fn arp(out: &mut [u8], op: u16, src_mac: Mac, src_ip: Ip, dst_mac: Mac, dst_ip: Ip) -> usize {
    let eth_dst = if op == ARP_REQUEST {
        BROADCAST
    } else {
        dst_mac
    };
    let at = ethernet(out, eth_dst, src_mac, ETHERTYPE_ARP);
    put16(out, at, 1);
    put16(out, at + 2, ETHERTYPE_IPV4);
    put(out, at + 4, &[6, 4]);
    put16(out, at + 6, op);
    put(out, at + 8, &src_mac);
    put(out, at + 14, &src_ip);
    put(
        out,
        at + 18,
        &if op == ARP_REQUEST { [0; 6] } else { dst_mac },
    );
    put(out, at + 24, &dst_ip);
    if let Some(pad) = out.get_mut(at + 28..60) {
        pad.fill(0);
    }
    60
}

/// Builds an ARP request for `target`.
pub fn arp_request(out: &mut [u8], mac: Mac, ip: Ip, target: Ip) -> usize {
    arp(out, ARP_REQUEST, mac, ip, BROADCAST, target)
}

/// Builds Ethernet + IPv4 headers for `payload_len` bytes of `proto`; returns the payload offset.
#[allow(clippy::too_many_arguments)]
pub fn ipv4(
    out: &mut [u8],
    dst_mac: Mac,
    src_mac: Mac,
    src: Ip,
    dst: Ip,
    proto: u8,
    payload_len: usize,
    id: u16,
) -> usize {
    let at = ethernet(out, dst_mac, src_mac, ETHERTYPE_IPV4);
    let total = (IP_HDR + payload_len).min(usize::from(u16::MAX)) as u16;
    put(out, at, &[0x45, 0]);
    put16(out, at + 2, total);
    put16(out, at + 4, id);
    put16(out, at + 6, 0x4000); // don't fragment
    put(out, at + 8, &[64, proto]);
    put16(out, at + 10, 0);
    put(out, at + 12, &src);
    put(out, at + 16, &dst);
    let sum = checksum(out.get(at..at + IP_HDR).unwrap_or_default(), 0);
    put16(out, at + 10, sum);
    at + IP_HDR
}

/// Gives the IPv4 packet in `frame` (headers as `ipv4` built them) identification `id` and the
/// header checksum that goes with it; nothing else in the frame changes.
pub fn set_ipv4_id(frame: &mut [u8], id: u16) {
    let at = ETH_HDR;
    put16(frame, at + 4, id);
    put16(frame, at + 10, 0);
    let sum = checksum(frame.get(at..at + IP_HDR).unwrap_or_default(), 0);
    put16(frame, at + 10, sum);
}

/// Builds an ICMP echo request or reply frame with `data`; returns the frame length.
#[allow(clippy::too_many_arguments)]
pub fn icmp_echo(
    out: &mut [u8],
    reply: bool,
    dst_mac: Mac,
    src_mac: Mac,
    src: Ip,
    dst: Ip,
    ident: u16,
    seq: u16,
    data: &[u8],
) -> usize {
    let len = ICMP_HDR + data.len();
    let at = ipv4(out, dst_mac, src_mac, src, dst, PROTO_ICMP, len, seq);
    put(
        out,
        at,
        &[
            if reply {
                ICMP_ECHO_REPLY
            } else {
                ICMP_ECHO_REQUEST
            },
            0,
            0,
            0,
        ],
    );
    put16(out, at + 4, ident);
    put16(out, at + 6, seq);
    put(out, at + ICMP_HDR, data);
    let sum = checksum(out.get(at..at + len).unwrap_or_default(), 0);
    put16(out, at + 2, sum);
    at + len
}

/// Builds a UDP frame carrying `payload_len` bytes already written at `udp_payload_offset()`;
/// returns the frame length.
#[allow(clippy::too_many_arguments)]
pub fn udp(
    out: &mut [u8],
    dst_mac: Mac,
    src_mac: Mac,
    src: Ip,
    dst: Ip,
    src_port: u16,
    dst_port: u16,
    payload_len: usize,
    id: u16,
) -> usize {
    let at = udp_payload_offset();
    let payload_sum = sum16(out.get(at..at + payload_len).unwrap_or_default());
    udp_with_payload_sum(
        out,
        dst_mac,
        src_mac,
        src,
        dst,
        (src_port, dst_port),
        payload_len,
        id,
        payload_sum,
    )
}

/// The one's-complement sum of `data` as big-endian 16-bit words, folded but not inverted
/// (what `udp_with_payload_sum` wants for a payload; an odd last byte is padded with zero).
pub fn sum16(data: &[u8]) -> u16 {
    !checksum(data, 0)
}

/// Like `udp`, for a payload whose `sum16` the caller already knows (a sender that sends the
/// same bytes again need not read them again): only the headers are summed here.
#[allow(clippy::too_many_arguments)]
pub fn udp_with_payload_sum(
    out: &mut [u8],
    dst_mac: Mac,
    src_mac: Mac,
    src: Ip,
    dst: Ip,
    (src_port, dst_port): (u16, u16),
    payload_len: usize,
    id: u16,
    payload_sum: u16,
) -> usize {
    let len = UDP_HDR + payload_len;
    let at = ipv4(out, dst_mac, src_mac, src, dst, PROTO_UDP, len, id);
    put16(out, at, src_port);
    put16(out, at + 2, dst_port);
    put16(out, at + 4, len as u16);
    put16(out, at + 6, 0);
    // The payload starts at an even offset of the datagram, so its words line up.
    let sum = checksum(
        out.get(at..at + UDP_HDR).unwrap_or_default(),
        pseudo_sum(src, dst, PROTO_UDP, len as u16) + u32::from(payload_sum),
    );
    put16(out, at + 6, if sum == 0 { 0xFFFF } else { sum });
    at + len
}

/// Where a UDP payload starts in a frame built by `udp`.
pub const fn udp_payload_offset() -> usize {
    ETH_HDR + IP_HDR + UDP_HDR
}

/// If `frame` tells us the MAC of an IPv4 address (any ARP packet), returns it.
pub fn arp_sender(frame: &[u8]) -> Option<(Ip, Mac)> {
    if be16(frame, 12)? != ETHERTYPE_ARP {
        return None;
    }
    let arp = frame.get(ETH_HDR..ETH_HDR + 28)?;
    if be16(arp, 0)? != 1 || be16(arp, 2)? != ETHERTYPE_IPV4 || arp.get(4..6)? != [6, 4] {
        return None;
    }
    let ip: Ip = array(arp, 14)?;
    (ip != [0; 4]).then_some((ip, array(arp, 8)?))
}

/// Handles a received frame: answers ARP requests for our address, ICMP echo requests and
/// UDP datagrams to the echo port, writing the answer into `out`; reports echo replies.
pub fn handle(iface: &Iface, frame: &[u8], out: &mut [u8]) -> Event {
    handle_inner(iface, frame, out).unwrap_or(Event::Ignored)
}

fn handle_inner(iface: &Iface, frame: &[u8], out: &mut [u8]) -> Option<Event> {
    let our_ip = iface.ip?;
    let dst_mac: Mac = array(frame, 0)?;
    if dst_mac != iface.mac && dst_mac != BROADCAST {
        return None;
    }
    let src_mac: Mac = array(frame, 6)?;
    match be16(frame, 12)? {
        ETHERTYPE_ARP => {
            let (sender_ip, sender_mac) = arp_sender(frame)?;
            let arp = frame.get(ETH_HDR..ETH_HDR + 28)?;
            let target: Ip = array(arp, 24)?;
            if be16(arp, 6)? == ARP_REQUEST && target == our_ip {
                return Some(Event::Reply(self::arp(
                    out, ARP_REPLY, iface.mac, our_ip, sender_mac, sender_ip,
                )));
            }
            None
        }
        ETHERTYPE_IPV4 => {
            let ip = frame.get(ETH_HDR..)?;
            let version_ihl = *ip.first()?;
            let header_len = usize::from(version_ihl & 0x0F) * 4;
            if version_ihl >> 4 != 4 || header_len < IP_HDR {
                return None;
            }
            let total = usize::from(be16(ip, 2)?);
            if total < header_len || total > ip.len() || checksum(ip.get(..header_len)?, 0) != 0 {
                return None;
            }
            // Fragments are not reassembled.
            if be16(ip, 6)? & 0x3FFF != 0 {
                return None;
            }
            let proto = *ip.get(9)?;
            let src: Ip = array(ip, 12)?;
            let dst: Ip = array(ip, 16)?;
            if dst != our_ip {
                return None;
            }
            let payload = ip.get(header_len..total)?;
            match proto {
                PROTO_ICMP => {
                    if payload.len() < ICMP_HDR || checksum(payload, 0) != 0 {
                        return None;
                    }
                    let ident = be16(payload, 4)?;
                    let seq = be16(payload, 6)?;
                    match *payload.first()? {
                        ICMP_ECHO_REQUEST => {
                            let data = payload.get(ICMP_HDR..)?;
                            if ETH_HDR + IP_HDR + ICMP_HDR + data.len() > out.len().min(MAX_FRAME) {
                                return None;
                            }
                            Some(Event::Reply(icmp_echo(
                                out, true, src_mac, iface.mac, our_ip, src, ident, seq, data,
                            )))
                        }
                        ICMP_ECHO_REPLY => Some(Event::EchoReply(src, ident, seq)),
                        _ => None,
                    }
                }
                PROTO_UDP => {
                    let src_port = be16(payload, 0)?;
                    let dst_port = be16(payload, 2)?;
                    let udp_len = usize::from(be16(payload, 4)?);
                    if dst_port != ECHO_PORT || udp_len < UDP_HDR || udp_len > payload.len() {
                        return None;
                    }
                    let data = payload.get(UDP_HDR..udp_len)?;
                    let at = udp_payload_offset();
                    if at + data.len() > out.len().min(MAX_FRAME) {
                        return None;
                    }
                    put(out, at, data);
                    Some(Event::Reply(udp(
                        out,
                        src_mac,
                        iface.mac,
                        our_ip,
                        src,
                        ECHO_PORT,
                        src_port,
                        data.len(),
                        0,
                    )))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether `a` and `b` share the first `prefix` bits.
pub fn same_subnet(a: Ip, b: Ip, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    u32::from_be_bytes(a) & mask == u32::from_be_bytes(b) & mask
}

/// Parses `a.b.c.d`.
pub fn parse_ip(text: &str) -> Option<Ip> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for byte in out.iter_mut() {
        *byte = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Parses `a.b.c.d/prefix`.
pub fn parse_cidr(text: &str) -> Option<(Ip, u8)> {
    let (ip, prefix) = text.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some((parse_ip(ip)?, prefix))
}
