//! The partitions of a disk: a GPT (behind its protective MBR), an MBR's four primary entries,
//! or, with neither, the whole disk as one file system.

use crate::{Disk, PygrubError};

/// Bytes per sector in partition tables.
const SECTOR: u64 = 512;

/// One partition: where it starts and how long it is, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Its number as the table lists it (1-based; 0 for a disk without a table).
    pub number: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Marked bootable (MBR) or legacy-bootable (GPT attribute bit 2).
    pub bootable: bool,
}

/// MBR partition type of a GPT's protective entry.
const TYPE_GPT_PROTECTIVE: u8 = 0xEE;
/// MBR types of extended partitions (their logical partitions are not searched).
const TYPES_EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];
/// Most GPT entries read (the usual table holds 128).
const GPT_MAX_ENTRIES: u32 = 256;

/// The partitions of `disk`, bootable ones first, or the whole disk when it has no table.
pub fn partitions(disk: &dyn Disk) -> Result<Vec<Partition>, PygrubError> {
    let size = disk.size();
    let mut mbr = [0u8; 512];
    if size < SECTOR {
        return Err(PygrubError::TooSmall(size));
    }
    disk.read_at(0, &mut mbr)?;
    let whole = vec![Partition {
        number: 0,
        start: 0,
        len: size,
        bootable: true,
    }];
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(whole);
    }
    let entries: Vec<[u8; 16]> = (0..4)
        .filter_map(|i| mbr.get(446 + 16 * i..462 + 16 * i)?.try_into().ok())
        .collect();
    if entries.iter().any(|e| e[4] == TYPE_GPT_PROTECTIVE) {
        return gpt(disk, size);
    }
    let mut parts = Vec::new();
    for (i, e) in (1u32..).zip(&entries) {
        let kind = e[4];
        if kind == 0 || TYPES_EXTENDED.contains(&kind) {
            continue;
        }
        let first = u64::from(u32::from_le_bytes([e[8], e[9], e[10], e[11]]));
        let count = u64::from(u32::from_le_bytes([e[12], e[13], e[14], e[15]]));
        if let Some(p) = within(i, first, count, size, e[0] == 0x80) {
            parts.push(p);
        }
    }
    // A boot sector with the signature but no valid entry (a file system's own, say): the
    // whole disk.
    if parts.is_empty() {
        return Ok(whole);
    }
    parts.sort_by_key(|p| !p.bootable);
    Ok(parts)
}

/// A partition of `count` sectors from sector `first`, if it lies on the disk.
fn within(number: u32, first: u64, count: u64, size: u64, bootable: bool) -> Option<Partition> {
    let start = first.checked_mul(SECTOR)?;
    let len = count.checked_mul(SECTOR)?;
    let end = start.checked_add(len)?;
    (first > 0 && count > 0 && end <= size).then_some(Partition {
        number,
        start,
        len,
        bootable,
    })
}

fn gpt(disk: &dyn Disk, size: u64) -> Result<Vec<Partition>, PygrubError> {
    let mut hdr = [0u8; 92];
    disk.read_at(SECTOR, &mut hdr)?;
    if &hdr[0..8] != b"EFI PART" {
        return Err(PygrubError::BadTable(
            "a protective MBR without a GPT header".into(),
        ));
    }
    let u32_at = |o: usize| u32::from_le_bytes([hdr[o], hdr[o + 1], hdr[o + 2], hdr[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&hdr[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let table_lba = u64_at(72);
    let count = u32_at(80);
    let entry_size = u32_at(84);
    if !(128..=4096).contains(&entry_size) || count == 0 || count > GPT_MAX_ENTRIES {
        return Err(PygrubError::BadTable(format!(
            "GPT header with {count} entries of {entry_size} bytes"
        )));
    }
    let mut parts = Vec::new();
    let mut entry = vec![0u8; entry_size as usize];
    for i in 0..count {
        let at = table_lba
            .checked_mul(SECTOR)
            .and_then(|t| t.checked_add(u64::from(i) * u64::from(entry_size)))
            .ok_or_else(|| PygrubError::BadTable("GPT table past the disk's end".into()))?;
        disk.read_at(at, &mut entry)?;
        if entry[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let le = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&entry[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let (first, last, attrs) = (le(32), le(40), le(48));
        let Some(count) = last.checked_sub(first).and_then(|c| c.checked_add(1)) else {
            continue;
        };
        if let Some(p) = within(i + 1, first, count, size, attrs & 4 != 0) {
            parts.push(p);
        }
    }
    parts.sort_by_key(|p| !p.bootable);
    Ok(parts)
}
