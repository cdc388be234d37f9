//! One virtio-blk request: validating its descriptor chain, executing it against the disk and
//! writing its status byte.
//!
//! Layout (virtio 1.2 §5.2.6): a driver-readable header `{ le32 type, le32 reserved, le64 sector }`,
//! then data (driver-readable for writes and discards, device-writable for reads and GET_ID),
//! then one device-writable status byte, the last byte of the chain. Descriptor boundaries carry
//! no meaning (any layout is accepted), but readable descriptors must precede writable ones.

use std::io::{self, Read, Write};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Address, Bytes};

use super::dirty::DirtyMap;
use super::disk::Disk;
use super::stats::BlockStats;
use super::{ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, SECTOR_SIZE};
use crate::GuestMemoryMmap;

/// Size of the request header.
const HEADER_SIZE: usize = 16;
/// Size of one discard segment `{ le64 sector, le32 num_sectors, le32 flags }`.
const DISCARD_SEGMENT_SIZE: usize = 16;

/// Why a request failed; each maps to the status byte the driver sees.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain loops, points outside the table, is longer than the queue, or puts readable
    /// after writable descriptors.
    #[error("malformed descriptor chain")]
    MalformedChain,
    /// A descriptor points outside guest memory or the chain's length overflows.
    #[error("descriptor buffers outside guest memory: {0}")]
    GuestMemory(#[source] virtio_queue::Error),
    /// The chain has no device-writable byte for the status.
    #[error("no writable status byte")]
    NoStatus,
    /// Fewer than 16 readable bytes for the header.
    #[error("request header shorter than {HEADER_SIZE} bytes")]
    ShortHeader,
    /// A read or write whose data is not a whole number of sectors.
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    UnalignedLength(u64),
    /// Sectors beyond the end of the disk.
    #[error("sectors {sector}..+{count} are beyond the capacity of {capacity} sectors")]
    OutOfRange {
        /// First sector requested.
        sector: u64,
        /// Number of sectors requested.
        count: u64,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// A write or discard on a read-only device.
    #[error("the device is read-only")]
    ReadOnly,
    /// A malformed discard request.
    #[error("malformed discard request")]
    BadDiscard,
    /// A request type (or flag) this device does not implement or did not negotiate.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// The disk failed the operation.
    #[error("disk I/O failed: {0}")]
    Disk(#[source] io::Error),
    /// Copying to or from the guest's buffers failed.
    #[error("guest buffer access failed: {0}")]
    Buffer(#[source] io::Error),
}

impl RequestError {
    /// The status byte for this failure.
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// What a request may use: the disk and the device's settings.
pub(crate) struct Context<'a> {
    /// The disk.
    pub disk: &'a mut Disk,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Size of the queue: no chain may have more descriptors.
    pub queue_size: u16,
    /// Whether writes and discards are refused.
    pub read_only: bool,
    /// Whether the driver negotiated VIRTIO_BLK_F_DISCARD.
    pub discard: bool,
    /// The GET_ID answer, NUL padded.
    pub serial: &'a [u8; ID_BYTES],
    /// The counters.
    pub stats: &'a BlockStats,
    /// The blocks written or discarded since the last backup.
    pub dirty: &'a DirtyMap,
    /// Scratch space for copies between the disk and guest memory (never empty).
    pub bounce: &'a mut [u8],
}

/// Executes the request in `chain` and returns the used length to report for it (the bytes
/// written into the chain's writable buffers, status byte included).
pub(crate) fn handle<'m>(
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    mem: &'m GuestMemoryMmap,
    ctx: &mut Context<'_>,
) -> u32 {
    // One more than allowed is enough to tell that a chain is too long.
    let limit = usize::from(ctx.queue_size) + 1;
    let descs: Vec<Descriptor> = chain.clone().take(limit).collect();
    match run(chain, mem, &descs, ctx) {
        Ok(used) => used,
        Err((e, used)) => {
            tracing::debug!("virtio-blk: {e}");
            ctx.stats.add_error();
            used.unwrap_or_else(|| fallback_status(mem, &descs))
        }
    }
}

/// Validates and executes a request; on failure returns the error and, if a status byte could
/// be written through the chain's buffers, the used length.
fn run<'m>(
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    mem: &'m GuestMemoryMmap,
    descs: &[Descriptor],
    ctx: &mut Context<'_>,
) -> Result<u32, (RequestError, Option<u32>)> {
    if !well_formed(descs, ctx.queue_size) {
        return Err((RequestError::MalformedChain, None));
    }
    let mut reader = chain
        .clone()
        .reader(mem)
        .map_err(|e| (RequestError::GuestMemory(e), None))?;
    let mut writer = chain
        .writer(mem)
        .map_err(|e| (RequestError::GuestMemory(e), None))?;
    let status_at = writer
        .available_bytes()
        .checked_sub(1)
        .ok_or((RequestError::NoStatus, Some(0)))?;
    let mut status_writer = writer
        .split_at(status_at)
        .map_err(|e| (RequestError::GuestMemory(e), None))?;
    let result = execute(&mut reader, &mut writer, ctx);
    let status = match &result {
        Ok(()) => VIRTIO_BLK_S_OK as u8,
        Err(e) => e.status(),
    };
    let data_written = writer.bytes_written();
    let used = match status_writer.write_all(&[status]) {
        Ok(()) => data_written.saturating_add(1),
        Err(_) => data_written,
    };
    let used = u32::try_from(used).unwrap_or(u32::MAX);
    match result {
        Ok(()) => Ok(used),
        Err(e) => Err((e, Some(used))),
    }
}

/// Whether the chain ended properly (its last descriptor has no NEXT: it did not loop, leave the
/// table or overflow), is no longer than the queue (indirect tables included), and has all its
/// readable descriptors before its writable ones.
fn well_formed(descs: &[Descriptor], queue_size: u16) -> bool {
    let Some(last) = descs.last() else {
        return false;
    };
    if last.has_next() || descs.len() > usize::from(queue_size) {
        return false;
    }
    let first_writable = descs
        .iter()
        .position(|d| d.is_write_only())
        .unwrap_or(descs.len());
    descs
        .get(first_writable..)
        .is_some_and(|rest| rest.iter().all(|d| d.is_write_only()))
}

/// For a chain that cannot be processed: writes IOERR to the last byte of its last writable
/// descriptor if that byte is in guest memory, and returns the used length (1, or 0 if no
/// status could be written).
fn fallback_status(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> u32 {
    let Some(desc) = descs.iter().rev().find(|d| d.is_write_only()) else {
        return 0;
    };
    let Some(addr) = u64::from(desc.len())
        .checked_sub(1)
        .and_then(|last| desc.addr().checked_add(last))
    else {
        return 0;
    };
    match mem.write_obj(VIRTIO_BLK_S_IOERR as u8, addr) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}

/// Reads the header and runs the request it describes.
fn execute<B: BitmapSlice>(
    reader: &mut Reader<'_, B>,
    writer: &mut Writer<'_, B>,
    ctx: &mut Context<'_>,
) -> Result<(), RequestError> {
    if reader.available_bytes() < HEADER_SIZE {
        return Err(RequestError::ShortHeader);
    }
    let mut header = [0u8; HEADER_SIZE];
    reader
        .read_exact(&mut header)
        .map_err(RequestError::Buffer)?;
    let (request_type, sector) = parse_header(&header);
    match request_type {
        VIRTIO_BLK_T_IN => read(writer, sector, ctx),
        VIRTIO_BLK_T_OUT => write(reader, sector, ctx),
        VIRTIO_BLK_T_FLUSH => {
            ctx.disk.flush().map_err(RequestError::Disk)?;
            ctx.stats.add_flush();
            Ok(())
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = writer.available_bytes().min(ID_BYTES);
            let id = ctx.serial.get(..n).unwrap_or_default();
            writer.write_all(id).map_err(RequestError::Buffer)
        }
        VIRTIO_BLK_T_DISCARD if ctx.discard => discard(reader, ctx),
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Splits a header into its type and sector.
fn parse_header(header: &[u8; HEADER_SIZE]) -> (u32, u64) {
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = *header;
    (
        u32::from_le_bytes([t0, t1, t2, t3]),
        u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
    )
}

/// Checks that `len` bytes at `sector` are whole sectors inside the disk; returns the byte offset
/// and the number of sectors.
fn byte_range(sector: u64, len: u64, capacity: u64) -> Result<(u64, u64), RequestError> {
    let sector_size = u64::from(SECTOR_SIZE);
    if len % sector_size != 0 {
        return Err(RequestError::UnalignedLength(len));
    }
    let count = len / sector_size;
    let out_of_range = RequestError::OutOfRange {
        sector,
        count,
        capacity,
    };
    match sector.checked_add(count) {
        Some(end) if end <= capacity => {}
        _ => return Err(out_of_range),
    }
    // sector <= capacity <= u64::MAX / 512, so this cannot overflow; stay checked anyway.
    let offset = sector.checked_mul(sector_size).ok_or(out_of_range)?;
    Ok((offset, count))
}

/// VIRTIO_BLK_T_IN: disk → guest.
fn read<B: BitmapSlice>(
    writer: &mut Writer<'_, B>,
    sector: u64,
    ctx: &mut Context<'_>,
) -> Result<(), RequestError> {
    let len = writer.available_bytes() as u64;
    let (offset, count) = byte_range(sector, len, ctx.capacity)?;
    let mut done = 0u64;
    while done < len {
        let n = chunk(len - done, ctx.bounce.len());
        let buf = ctx
            .bounce
            .get_mut(..n)
            .ok_or(RequestError::MalformedChain)?;
        ctx.disk
            .read_at(buf, offset + done)
            .map_err(RequestError::Disk)?;
        writer.write_all(buf).map_err(RequestError::Buffer)?;
        done += n as u64;
    }
    ctx.stats.add_read(count);
    Ok(())
}

/// VIRTIO_BLK_T_OUT: guest → disk.
fn write<B: BitmapSlice>(
    reader: &mut Reader<'_, B>,
    sector: u64,
    ctx: &mut Context<'_>,
) -> Result<(), RequestError> {
    if ctx.read_only {
        return Err(RequestError::ReadOnly);
    }
    let len = reader.available_bytes() as u64;
    let (offset, count) = byte_range(sector, len, ctx.capacity)?;
    let mut done = 0u64;
    while done < len {
        let n = chunk(len - done, ctx.bounce.len());
        let buf = ctx
            .bounce
            .get_mut(..n)
            .ok_or(RequestError::MalformedChain)?;
        reader.read_exact(buf).map_err(RequestError::Buffer)?;
        let written = ctx.disk.write_at(buf, offset + done);
        // After the write, whatever its outcome (a failed write may have changed some).
        ctx.dirty.mark(offset + done, n as u64);
        written.map_err(RequestError::Disk)?;
        done += n as u64;
    }
    ctx.stats.add_write(count);
    Ok(())
}

/// VIRTIO_BLK_T_DISCARD: every segment is checked before any is punched.
fn discard<B: BitmapSlice>(
    reader: &mut Reader<'_, B>,
    ctx: &mut Context<'_>,
) -> Result<(), RequestError> {
    if ctx.read_only {
        return Err(RequestError::ReadOnly);
    }
    let len = reader.available_bytes();
    let segments = len / DISCARD_SEGMENT_SIZE;
    if len == 0 || len % DISCARD_SEGMENT_SIZE != 0 || segments > MAX_DISCARD_SEGMENTS as usize {
        return Err(RequestError::BadDiscard);
    }
    let mut ranges = Vec::with_capacity(segments);
    for _ in 0..segments {
        let mut raw = [0u8; DISCARD_SEGMENT_SIZE];
        reader.read_exact(&mut raw).map_err(RequestError::Buffer)?;
        let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = raw;
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let num_sectors = u32::from_le_bytes([n0, n1, n2, n3]);
        let flags = u32::from_le_bytes([f0, f1, f2, f3]);
        if flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            // The unmap flag is for write-zeroes; on a discard the device must answer UNSUPP.
            return Err(RequestError::Unsupported(VIRTIO_BLK_T_DISCARD));
        }
        if flags != 0 || num_sectors > MAX_DISCARD_SECTORS {
            return Err(RequestError::BadDiscard);
        }
        let bytes = u64::from(num_sectors) * u64::from(SECTOR_SIZE);
        ranges.push(byte_range(sector, bytes, ctx.capacity)?);
    }
    for (offset, count) in ranges {
        if count == 0 {
            continue;
        }
        let punched = ctx.disk.discard(offset, count * u64::from(SECTOR_SIZE));
        ctx.dirty.mark(offset, count * u64::from(SECTOR_SIZE));
        punched.map_err(|e| match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => RequestError::Unsupported(VIRTIO_BLK_T_DISCARD),
            _ => RequestError::Disk(e),
        })?;
    }
    ctx.stats.add_discard();
    Ok(())
}

/// The size of the next copy: what is left, at most the bounce buffer.
fn chunk(left: u64, bounce: usize) -> usize {
    usize::try_from(left).map_or(bounce, |left| left.min(bounce))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_range_checks_alignment_bounds_and_overflow() {
        assert_eq!(byte_range(0, 1024, 4).expect("ok"), (0, 2));
        assert_eq!(byte_range(2, 1024, 4).expect("ok"), (1024, 2));
        assert!(matches!(
            byte_range(3, 1024, 4),
            Err(RequestError::OutOfRange { .. })
        ));
        assert!(matches!(
            byte_range(0, 100, 4),
            Err(RequestError::UnalignedLength(100))
        ));
        assert!(matches!(
            byte_range(u64::MAX, 512, u64::MAX / 512),
            Err(RequestError::OutOfRange { .. })
        ));
        assert_eq!(byte_range(4, 0, 4).expect("empty at end"), (2048, 0));
    }

    #[test]
    fn header_parses_little_endian() {
        let mut h = [0u8; HEADER_SIZE];
        h[0] = 8;
        h[4] = 0xff;
        h[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(parse_header(&h), (8, 0x0102_0304_0506_0708));
    }
}
