//! The tiny IPv4 stack on top of the virtio-net driver: addresses, the ARP cache, and what the
//! guest answers on its own (ARP, ICMP echo, UDP echo on port 7).

pub mod proto;

use self::proto::{Event, Iface, Ip, Mac, MAX_FRAME};
use crate::virtio::net::Nic;

/// ARP cache entries kept per card.
const ARP_ENTRIES: usize = 8;

/// A card and its stack.
pub struct Link {
    /// The card.
    pub nic: Nic,
    /// Its address and neighbours.
    pub stack: Stack,
}

/// One card's IPv4 state.
pub struct Stack {
    /// The address and prefix length, once `ip` set them.
    pub ip: Option<(Ip, u8)>,
    arp: [Option<(Ip, Mac)>; ARP_ENTRIES],
    arp_next: usize,
    /// The last ICMP echo reply seen: source, identifier, sequence.
    pub last_echo: Option<(Ip, u16, u16)>,
}

impl Stack {
    /// No address, empty cache.
    pub const fn new() -> Stack {
        Stack {
            ip: None,
            arp: [None; ARP_ENTRIES],
            arp_next: 0,
            last_echo: None,
        }
    }

    /// The MAC of `ip`, if known.
    pub fn neighbour(&self, ip: Ip) -> Option<Mac> {
        self.arp
            .iter()
            .flatten()
            .find(|(i, _)| *i == ip)
            .map(|(_, m)| *m)
    }

    fn learn(&mut self, ip: Ip, mac: Mac) {
        if let Some(entry) = self.arp.iter_mut().flatten().find(|(i, _)| *i == ip) {
            entry.1 = mac;
            return;
        }
        if let Some(slot) = self.arp.get_mut(self.arp_next % ARP_ENTRIES) {
            *slot = Some((ip, mac));
        }
        self.arp_next = self.arp_next.wrapping_add(1);
    }

    /// Handles one received frame: learns neighbours, answers, records echo replies.
    pub fn input(&mut self, nic: &mut Nic, frame: &[u8]) {
        if let Some((ip, mac)) = proto::arp_sender(frame) {
            self.learn(ip, mac);
        }
        let iface = Iface {
            mac: nic.mac,
            ip: self.ip.map(|(ip, _)| ip),
        };
        let mut out = [0u8; MAX_FRAME];
        match proto::handle(&iface, frame, &mut out) {
            Event::Reply(len) => {
                let reply = out.get(..len).unwrap_or_default();
                let _ = nic.send(|buf| {
                    if let Some(dst) = buf.get_mut(..reply.len()) {
                        dst.copy_from_slice(reply);
                    }
                    reply.len()
                });
            }
            Event::EchoReply(src, ident, seq) => self.last_echo = Some((src, ident, seq)),
            Event::Ignored => {}
        }
    }
}

impl Link {
    /// Handles up to `budget` received frames.
    pub fn poll(&mut self, budget: usize) {
        let Link { nic, stack } = self;
        nic.poll_rx(budget, |nic, frame| stack.input(nic, frame));
    }
}
