//! The guest's packet code (guest/src/net/proto.rs) built for the host: checksums, and that no
//! frame, however truncated or corrupted, makes it panic.

#[allow(dead_code)]
#[path = "../../../guest/src/net/proto.rs"]
mod proto;

use proto::{Event, Iface};

const MAC: [u8; 6] = [0x52, 0x54, 0, 1, 2, 3];
const IP: [u8; 4] = [10, 0, 0, 2];

fn iface() -> Iface {
    Iface {
        mac: MAC,
        ip: Some(IP),
    }
}

/// An echo request from 10.0.0.1 to us.
fn echo_request() -> Vec<u8> {
    let mut frame = vec![0u8; 1514];
    let len = proto::icmp_echo(
        &mut frame,
        false,
        MAC,
        [2, 0, 0, 0, 0, 1],
        [10, 0, 0, 1],
        IP,
        7,
        9,
        b"abcdefgh",
    );
    frame.truncate(len);
    frame
}

#[test]
fn rfc1071_example() {
    // RFC 1071 §3: the sum of 0001 f203 f4f5 f6f7 is ddf2, so the checksum is 220d.
    assert_eq!(
        proto::checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0),
        0x220d
    );
}

#[test]
fn word_checksum_equals_the_bytewise_sum_for_every_length() {
    let data: Vec<u8> = (0..300u32).map(|i| (i * 37 + 11) as u8).collect();
    for len in 0..data.len() {
        let mut sum = 0u64;
        for pair in data[..len].chunks(2) {
            sum += u64::from(pair[0]) << 8 | u64::from(*pair.get(1).unwrap_or(&0));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        assert_eq!(
            proto::checksum(&data[..len], 0),
            !(sum as u16),
            "length {len}"
        );
    }
}

#[test]
fn echo_request_gets_a_valid_reply() {
    let frame = echo_request();
    let mut out = [0u8; 1514];
    let Event::Reply(len) = proto::handle(&iface(), &frame, &mut out) else {
        panic!("no reply");
    };
    let reply = &out[..len];
    assert_eq!(&reply[0..6], &[2, 0, 0, 0, 0, 1]);
    assert_eq!(proto::checksum(&reply[14..34], 0), 0, "IP header checksum");
    assert_eq!(proto::checksum(&reply[34..], 0), 0, "ICMP checksum");
    assert_eq!(reply[34], 0, "echo reply type");
    assert_eq!(&reply[42..], b"abcdefgh");
}

#[test]
fn truncated_and_corrupted_frames_never_panic() {
    let frame = echo_request();
    let mut out = [0u8; 1514];
    for cut in 0..frame.len() {
        let _ = proto::handle(&iface(), &frame[..cut], &mut out);
    }
    let mut seed = 12345u64;
    for _ in 0..20_000 {
        let mut bad = frame.clone();
        for _ in 0..4 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (seed >> 33) as usize % bad.len();
            bad[at] = (seed >> 20) as u8;
        }
        let _ = proto::handle(&iface(), &bad, &mut out);
        let _ = proto::arp_sender(&bad);
    }
    // A corrupted IP header checksum is dropped.
    let mut bad = frame.clone();
    bad[24] ^= 0xFF;
    assert_eq!(proto::handle(&iface(), &bad, &mut out), Event::Ignored);
}

#[test]
fn addresses_parse() {
    assert_eq!(proto::parse_cidr("10.1.2.3/24"), Some(([10, 1, 2, 3], 24)));
    assert_eq!(proto::parse_cidr("10.1.2.3/33"), None);
    assert_eq!(proto::parse_ip("10.1.2"), None);
    assert_eq!(proto::parse_ip("10.1.2.3.4"), None);
    assert!(proto::same_subnet([10, 1, 2, 3], [10, 1, 2, 200], 24));
    assert!(!proto::same_subnet([10, 1, 2, 3], [10, 1, 3, 3], 24));
}

/// The one's-complement sum of a whole UDP datagram with its pseudo-header, computed here
/// independently of the guest's code: 0xFFFF when the checksum field is right.
fn udp_verify_sum(src: [u8; 4], dst: [u8; 4], datagram: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            sum += hi | pair.get(1).map_or(0, |&b| u64::from(b));
        }
    };
    add(&src);
    add(&dst);
    add(&[0, 17]);
    add(&(datagram.len() as u16).to_be_bytes());
    add(datagram);
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn udp_with_a_known_payload_sum_builds_the_same_frame_as_udp() {
    let (src, dst) = ([10, 0, 0, 2], [10, 0, 0, 1]);
    let at = proto::udp_payload_offset();
    let mut seed = 0x1234_5678_u32;
    for len in (0..64).chain([1399, 1400, 1401]) {
        let mut plain = vec![0u8; 1514];
        for byte in &mut plain[at..at + len] {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            *byte = (seed >> 16) as u8;
        }
        let mut presummed = plain.clone();
        let n = proto::udp(&mut plain, MAC, MAC, src, dst, 40000, 9, len, 7);
        let payload_sum = proto::sum16(&presummed[at..at + len]);
        let m = proto::udp_with_payload_sum(
            &mut presummed,
            MAC,
            MAC,
            src,
            dst,
            (40000, 9),
            len,
            7,
            payload_sum,
        );
        assert_eq!(n, at + len);
        assert_eq!(m, n);
        assert_eq!(presummed[..m], plain[..n], "payload of {len} bytes");
        assert_eq!(udp_verify_sum(src, dst, &plain[34..n]), 0xFFFF, "len {len}");
    }
}

#[test]
fn set_ipv4_id_gives_the_frame_that_udp_builds_with_that_id() {
    let (src, dst) = ([10, 0, 0, 2], [10, 0, 0, 1]);
    let at = proto::udp_payload_offset();
    for (old, new) in [(0u16, 1u16), (7, 0xFFFF), (0x1234, 0x1235), (0xFFFF, 0)] {
        let mut patched = vec![0u8; 1514];
        for (k, byte) in patched[at..at + 100].iter_mut().enumerate() {
            *byte = k as u8;
        }
        let mut fresh = patched.clone();
        let n = proto::udp(&mut patched, MAC, MAC, src, dst, 40000, 9, 100, old);
        proto::set_ipv4_id(&mut patched, new);
        let m = proto::udp(&mut fresh, MAC, MAC, src, dst, 40000, 9, 100, new);
        assert_eq!(n, m);
        assert_eq!(patched[..n], fresh[..m], "id {old:#x} -> {new:#x}");
        // And the header checksum is right by an independent sum.
        let mut sum: u32 = fresh[14..34]
            .chunks(2)
            .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
            .sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        assert_eq!(sum, 0xFFFF);
    }
}
