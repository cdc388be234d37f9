//! Counters of a network device, for `rxl network-list`, `rxl top` and the like.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one NIC (tx = from the guest, rx = to the guest).
#[derive(Debug, Default)]
pub struct NetStats {
    tx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    tx_spoof_drops: AtomicU64,
    tx_drops: AtomicU64,
    rx_drops: AtomicU64,
}

/// A copy of a NIC's counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStatsSnapshot {
    /// Frame bytes the guest sent (headers of the virtio-net header excluded).
    pub tx_bytes: u64,
    /// Frames the guest sent.
    pub tx_packets: u64,
    /// Frame bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Guest frames dropped by the anti-spoofing filter.
    pub tx_spoof_drops: u64,
    /// Guest frames dropped for malformed chains or host errors.
    pub tx_drops: u64,
    /// Frames for the guest dropped (buffer too small or malformed).
    pub rx_drops: u64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl NetStats {
    /// Copies the counters.
    pub fn snapshot(&self) -> NetStatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStatsSnapshot {
            tx_bytes: g(&self.tx_bytes),
            tx_packets: g(&self.tx_packets),
            rx_bytes: g(&self.rx_bytes),
            rx_packets: g(&self.rx_packets),
            tx_spoof_drops: g(&self.tx_spoof_drops),
            tx_drops: g(&self.tx_drops),
            rx_drops: g(&self.rx_drops),
        }
    }

    pub(crate) fn sent(&self, len: usize) {
        bump(&self.tx_bytes, len as u64);
        bump(&self.tx_packets, 1);
    }

    pub(crate) fn received(&self, len: usize) {
        bump(&self.rx_bytes, len as u64);
        bump(&self.rx_packets, 1);
    }

    pub(crate) fn spoofed(&self) {
        bump(&self.tx_spoof_drops, 1);
    }

    pub(crate) fn tx_dropped(&self) {
        bump(&self.tx_drops, 1);
    }

    pub(crate) fn rx_dropped(&self) {
        bump(&self.rx_drops, 1);
    }
}
