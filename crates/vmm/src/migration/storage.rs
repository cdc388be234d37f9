//! Storage migration (`rxl migrate --copy-storage`): the disks travel in the stream as
//! [`RecordType::DiskBlocks`] records. The source takes every disk's dirty map (so that
//! every write from then on is tracked), sends each allocated extent, then after each
//! pre-copy round the blocks the maps name since, and in stop-and-copy (devices frozen, no
//! request in flight) the last ones before the device state. The target writes each range
//! through its disk backend (raw or qcow2) and flushes before the guest runs.
//!
//! The disk is read under its transport's lock, so a guest request never runs half-way
//! through a read. A block is marked dirty after the guest's write reached the disk, and
//! the map is taken before the disk is read: a write is either in what was read or in a
//! later map, never lost. A failed migration gives the maps back (see
//! [`StorageSender::give_back`]).

use std::io::Write;
use std::sync::Arc;

use rxen_proto::stream::{self as pstream, DiskBlock, RecordType, StreamWriter};
use rxen_virtio::block::{DirtyMap, DirtyRun, DirtyTaken, DIRTY_BLOCK};

use super::TransferError;
use crate::devices::virtio_slots::VirtioSlots;

/// Bytes read from a disk at a time (one record).
const CHUNK: u64 = pstream::MAX_DISK_BLOCK;

/// One disk being copied.
struct DiskCopy {
    devid: u32,
    vdev: String,
    size: u64,
    map: Arc<DirtyMap>,
    /// Every take of the map so far, oldest first (given back newest first).
    taken: Vec<DirtyTaken>,
}

/// The source's side of a storage migration.
pub struct StorageSender {
    disks: Vec<DiskCopy>,
    buf: Vec<u8>,
    body: Vec<u8>,
    /// Disk bytes sent (data and zero ranges).
    pub bytes: u64,
}

impl StorageSender {
    /// Takes every disk's dirty map: writes from now on are tracked. Refuses a read-only
    /// disk or a cdrom (the target would open it read-only and could not be written).
    pub fn start(slots: &VirtioSlots) -> Result<Self, TransferError> {
        let mut disks = Vec::new();
        for (spec, map) in slots.disk_maps() {
            if spec.read_only || spec.cdrom {
                return Err(TransferError::Mismatch(format!(
                    "disk {} is read-only or a cdrom: --copy-storage copies writable disks only",
                    spec.vdev
                )));
            }
            let size = slots
                .with_disk(spec.devid, |d| d.size())
                .ok_or_else(|| TransferError::Peer(format!("disk {} went away", spec.vdev)))?;
            let t = map.take();
            disks.push(DiskCopy {
                devid: spec.devid,
                vdev: spec.vdev,
                size,
                map,
                taken: vec![t],
            });
        }
        Ok(StorageSender {
            disks,
            buf: vec![0; CHUNK as usize],
            body: Vec::with_capacity(CHUNK as usize + pstream::DISK_BLOCK_HEADER),
            bytes: 0,
        })
    }

    /// Sends every range of every disk that may hold data (the target's disk is new and
    /// reads as zeros: ranges that read as zeros are skipped).
    pub fn send_all<W: Write>(
        &mut self,
        slots: &VirtioSlots,
        w: &mut StreamWriter<W>,
    ) -> Result<(), TransferError> {
        for i in 0..self.disks.len() {
            let (devid, size) = (self.disks[i].devid, self.disks[i].size);
            let extents = slots
                .with_disk(devid, |d| d.data_extents(0, size))
                .ok_or_else(|| self.gone(i))?
                .map_err(|e| self.io(i, e))?;
            for (off, len) in extents {
                self.send_range(i, slots, w, off, len, true)?;
            }
        }
        Ok(())
    }

    /// Takes every disk's dirty map again and sends the blocks it names (zero ranges as
    /// such: the target's copy may hold older data there). Returns the bytes sent.
    pub fn send_dirty<W: Write>(
        &mut self,
        slots: &VirtioSlots,
        w: &mut StreamWriter<W>,
    ) -> Result<u64, TransferError> {
        let before = self.bytes;
        for i in 0..self.disks.len() {
            let t = self.disks[i].map.take();
            let runs = t.runs.clone();
            self.disks[i].taken.push(t);
            let size = self.disks[i].size;
            for DirtyRun { first, count } in runs {
                let off = first.saturating_mul(DIRTY_BLOCK);
                let end = first
                    .saturating_add(count)
                    .saturating_mul(DIRTY_BLOCK)
                    .min(size);
                if off < end {
                    self.send_range(i, slots, w, off, end - off, false)?;
                }
            }
        }
        Ok(self.bytes - before)
    }

    /// Sends `len` bytes at `off` of disk `i` in chunks; a chunk that reads as zeros is
    /// skipped (`skip_zero`) or sent as a zero range.
    fn send_range<W: Write>(
        &mut self,
        i: usize,
        slots: &VirtioSlots,
        w: &mut StreamWriter<W>,
        off: u64,
        len: u64,
        skip_zero: bool,
    ) -> Result<(), TransferError> {
        let devid = self.disks[i].devid;
        let end = off.saturating_add(len).min(self.disks[i].size);
        let mut at = off;
        while at < end {
            let n = (end - at).min(CHUNK);
            let buf = &mut self.buf[..n as usize];
            slots
                .with_disk(devid, |d| d.read_at(buf, at))
                .ok_or_else(|| {
                    TransferError::Peer(format!("disk {} went away", self.disks[i].vdev))
                })?
                .map_err(|e| TransferError::Peer(format!("disk {}: {e}", self.disks[i].vdev)))?;
            let zero = buf.iter().all(|&b| b == 0);
            if !(zero && skip_zero) {
                let block = DiskBlock {
                    devid,
                    offset: at,
                    len: n,
                    data: (!zero).then_some(&buf[..]),
                };
                pstream::encode_disk_block(&block, &mut self.body);
                w.record(RecordType::DiskBlocks, &self.body)?;
                self.bytes += n;
            }
            at += n;
        }
        Ok(())
    }

    fn gone(&self, i: usize) -> TransferError {
        TransferError::Peer(format!("disk {} went away", self.disks[i].vdev))
    }

    fn io(&self, i: usize, e: std::io::Error) -> TransferError {
        TransferError::Peer(format!("disk {}: {e}", self.disks[i].vdev))
    }

    /// The migration failed and the guest runs on here: gives every map back what was
    /// taken from it, newest take first, so that the map (epoch and generation included)
    /// is as if no migration had taken it and the next incremental backup copies every
    /// block written since the last one. A map another taker moved on meanwhile refuses;
    /// then the backup chain sees a generation it did not record and copies the disk whole.
    pub fn give_back(self) {
        for d in self.disks {
            for t in d.taken.iter().rev() {
                if let Err(e) = d.map.merge(t.epoch, t.generation, &t.runs) {
                    tracing::warn!(vdev = %d.vdev, "cannot give the dirty map back: {e}");
                    break;
                }
            }
        }
    }
}

/// Where a migration's target writes the disk blocks of the stream.
pub trait DiskSink {
    /// Writes `len` bytes at `offset` of disk `devid`: `data`, or zeros.
    fn write_block(&self, block: &DiskBlock<'_>) -> Result<(), TransferError>;
    /// Makes every disk written durable.
    fn flush_all(&self) -> Result<(), TransferError>;
}

impl DiskSink for VirtioSlots {
    fn write_block(&self, b: &DiskBlock<'_>) -> Result<(), TransferError> {
        let written = self.with_disk(b.devid, |d| {
            if !d.writable() {
                return Err(format!("disk {} is read-only here", b.devid));
            }
            if b.offset.checked_add(b.len).is_none_or(|e| e > d.size()) {
                return Err(format!(
                    "disk blocks {}+{} are beyond the disk's {} bytes",
                    b.offset,
                    b.len,
                    d.size()
                ));
            }
            match b.data {
                Some(data) => d.write_at(data, b.offset).map_err(|e| e.to_string()),
                None => {
                    let zeros = vec![0u8; CHUNK.min(b.len) as usize];
                    let mut at = b.offset;
                    let end = b.offset + b.len;
                    while at < end {
                        let n = (end - at).min(CHUNK) as usize;
                        d.write_at(&zeros[..n], at).map_err(|e| e.to_string())?;
                        at += n as u64;
                    }
                    Ok(())
                }
            }
        });
        match written {
            None => Err(TransferError::Mismatch(format!(
                "the stream carries blocks of disk {}, which this domain does not have",
                b.devid
            ))),
            Some(r) => r.map_err(TransferError::Mismatch),
        }
    }

    fn flush_all(&self) -> Result<(), TransferError> {
        for (spec, _) in self.disk_maps() {
            if let Some(Err(e)) = self.with_disk(spec.devid, |d| d.flush()) {
                return Err(TransferError::Peer(format!(
                    "cannot flush disk {}: {e}",
                    spec.vdev
                )));
            }
        }
        Ok(())
    }
}
