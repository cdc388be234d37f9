//! The `ip=` anti-spoofing filter: which frames from the guest may leave.
//!
//! With a non-empty allow list, an IPv4 frame must carry a listed source address (a DHCP
//! request from 0.0.0.0 is let through, as Xen's vif scripts do) and an ARP frame a listed
//! sender address (or 0.0.0.0, an ARP probe). Other ethertypes are not filtered, as in Xen,
//! whose iptables rules only cover IPv4. 802.1Q-tagged frames are dropped: the tag would hide
//! the addresses. An empty list lets everything through.

use std::net::Ipv4Addr;

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88A8;

/// The verdict on one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The frame may leave.
    Pass,
    /// The frame is dropped and counted.
    Drop,
}

/// The allowed source addresses of one NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AntiSpoof {
    allowed: Vec<Ipv4Addr>,
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    let b = frame.get(at..at + 2)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

fn ipv4(frame: &[u8], at: usize) -> Option<Ipv4Addr> {
    let b: [u8; 4] = frame.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

impl AntiSpoof {
    /// A filter allowing `allowed` (empty: no filtering).
    pub fn new(allowed: Vec<Ipv4Addr>) -> Self {
        AntiSpoof { allowed }
    }

    /// Whether the filter is on.
    pub fn enabled(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// Judges one Ethernet frame (without the virtio-net header).
    pub fn check(&self, frame: &[u8]) -> Verdict {
        if !self.enabled() {
            return Verdict::Pass;
        }
        let Some(ethertype) = be16(frame, 12) else {
            return Verdict::Drop;
        };
        let ok = match ethertype {
            ETHERTYPE_IPV4 => self.ipv4_ok(frame),
            ETHERTYPE_ARP => ipv4(frame, ETH_HEADER + 14)
                .is_some_and(|a| a.is_unspecified() || self.allowed.contains(&a)),
            ETHERTYPE_VLAN | ETHERTYPE_QINQ => false,
            _ => true,
        };
        if ok {
            Verdict::Pass
        } else {
            Verdict::Drop
        }
    }

    fn ipv4_ok(&self, frame: &[u8]) -> bool {
        let Some(src) = ipv4(frame, ETH_HEADER + 12) else {
            return false;
        };
        if self.allowed.contains(&src) {
            return true;
        }
        // DHCP: UDP from 0.0.0.0:68 to port 67.
        let Some(&vihl) = frame.get(ETH_HEADER) else {
            return false;
        };
        let ihl = usize::from(vihl & 0x0F) * 4;
        let proto = frame.get(ETH_HEADER + 9).copied();
        src.is_unspecified()
            && proto == Some(17)
            && be16(frame, ETH_HEADER + ihl) == Some(68)
            && be16(frame, ETH_HEADER + ihl + 2) == Some(67)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_frame(src: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[14 + 9] = proto;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    fn arp_frame(sender: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 28];
        f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        f[14 + 14..14 + 18].copy_from_slice(&sender);
        f
    }

    #[test]
    fn filter() {
        let f = AntiSpoof::new(vec![Ipv4Addr::new(10, 0, 0, 2)]);
        assert_eq!(f.check(&ipv4_frame([10, 0, 0, 2], 1, 0, 0)), Verdict::Pass);
        assert_eq!(f.check(&ipv4_frame([10, 0, 0, 3], 1, 0, 0)), Verdict::Drop);
        assert_eq!(f.check(&arp_frame([10, 0, 0, 2])), Verdict::Pass);
        assert_eq!(f.check(&arp_frame([10, 0, 0, 9])), Verdict::Drop);
        assert_eq!(f.check(&arp_frame([0, 0, 0, 0])), Verdict::Pass);
        assert_eq!(
            f.check(&ipv4_frame([0, 0, 0, 0], 17, 68, 67)),
            Verdict::Pass
        );
        assert_eq!(
            f.check(&ipv4_frame([0, 0, 0, 0], 17, 68, 53)),
            Verdict::Drop
        );
        assert_eq!(f.check(&[0u8; 10]), Verdict::Drop);
        let mut v6 = vec![0u8; 60];
        v6[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
        assert_eq!(f.check(&v6), Verdict::Pass);
        let mut vlan = ipv4_frame([10, 0, 0, 2], 1, 0, 0);
        vlan[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        assert_eq!(f.check(&vlan), Verdict::Drop);
        // Truncated headers never panic.
        for n in 0..40 {
            let _ = f.check(&ipv4_frame([10, 0, 0, 3], 17, 68, 67)[..n]);
            let _ = f.check(&arp_frame([10, 0, 0, 2])[..n]);
        }
    }

    #[test]
    fn empty_list_passes_everything() {
        let f = AntiSpoof::default();
        assert_eq!(f.check(&ipv4_frame([1, 2, 3, 4], 1, 0, 0)), Verdict::Pass);
        assert_eq!(f.check(&[]), Verdict::Pass);
    }
}
