//! Counters of a block device, for `rxl top` and the like.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one block device, updated as requests complete.
#[derive(Debug, Default)]
pub struct BlockStats {
    read_requests: AtomicU64,
    read_sectors: AtomicU64,
    write_requests: AtomicU64,
    write_sectors: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    errors: AtomicU64,
}

/// A copy of a device's counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatsSnapshot {
    /// Read requests completed successfully.
    pub read_requests: u64,
    /// 512-byte sectors read by those requests.
    pub read_sectors: u64,
    /// Write requests completed successfully.
    pub write_requests: u64,
    /// 512-byte sectors written by those requests.
    pub write_sectors: u64,
    /// Flush requests completed successfully.
    pub flushes: u64,
    /// Discard requests completed successfully.
    pub discards: u64,
    /// Requests that completed with an error or unsupported status, or were dropped as malformed.
    pub errors: u64,
}

impl BlockStats {
    /// Copies the counters.
    pub fn snapshot(&self) -> BlockStatsSnapshot {
        BlockStatsSnapshot {
            read_requests: self.read_requests.load(Ordering::Relaxed),
            read_sectors: self.read_sectors.load(Ordering::Relaxed),
            write_requests: self.write_requests.load(Ordering::Relaxed),
            write_sectors: self.write_sectors.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            discards: self.discards.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_read(&self, sectors: u64) {
        self.read_requests.fetch_add(1, Ordering::Relaxed);
        self.read_sectors.fetch_add(sectors, Ordering::Relaxed);
    }

    pub(crate) fn add_write(&self, sectors: u64) {
        self.write_requests.fetch_add(1, Ordering::Relaxed);
        self.write_sectors.fetch_add(sectors, Ordering::Relaxed);
    }

    pub(crate) fn add_flush(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_discard(&self) {
        self.discards.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}
