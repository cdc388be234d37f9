//! The save/migration stream: one format for save files, checkpoints and
//! live migration.
//!
//! A [`Header`] (56 bytes, its last word a CRC32C of the rest), then records. Each record is a 12-byte record
//! header — type (`u32`, bit 31 set = optional), body length (`u32`), CRC32C
//! (`u32`) of the type, the length and the body — followed by the body. All
//! integers are little-endian. A reader refuses a record longer than
//! [`MAX_RECORD`], a bad CRC, a truncated stream and an unknown mandatory
//! record type, and never panics on what it reads.

use std::io::{self, Read, Write};

/// The save file magic, in the spirit of xl's (exactly 32 bytes).
pub const MAGIC: &[u8; 32] = b"rxen saved domain, rxl format\n\0\r";
/// Written in host order so a reader can tell the byte order (as xl does).
pub const BYTE_ORDER: u32 = 0x0102_0304;
/// The stream version this code writes and reads. Version 2: every device
/// record is typed (`{"name": kind, "state": {...}}`, unknown fields refused;
/// a virtio device's slot inside its state).
pub const VERSION: u32 = 2;
/// Architecture code for x86_64 hosts and guests.
pub const ARCH_X86_64: u32 = 1;
/// log2 of the page size the stream uses.
pub const PAGE_SHIFT: u32 = 12;
/// Page size in bytes.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// Length of the encoded [`Header`].
pub const HEADER_LEN: usize = 56;
/// Length of a record header (type, length, CRC).
pub const RECORD_HEADER_LEN: usize = 12;
/// Largest record body accepted (a page batch of [`MAX_BATCH`] pages fits).
pub const MAX_RECORD: u32 = 16 << 20;
/// Most pages in one [`RecordType::Pages`] record.
pub const MAX_BATCH: usize = 1024;
/// Bit 31 of a record type: the record is optional and may be skipped by a reader that does not know it.
pub const OPTIONAL: u32 = 1 << 31;
/// Bit 63 of a page entry: the page is all zeros and carries no data.
pub const ZERO_PAGE: u64 = 1 << 63;
/// Largest page frame number a page entry may carry (52 bits, as in Xen's stream).
pub const MAX_PFN: u64 = (1 << 52) - 1;

/// Errors while reading or writing a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The underlying file or connection failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The stream ended in the middle of the header or a record.
    #[error("the stream is truncated ({0})")]
    Truncated(&'static str),
    /// The magic is not rxen's.
    #[error("file has wrong magic number - corrupt or not an rxen save file")]
    BadMagic,
    /// The byte order marker is wrong.
    #[error("file has wrong byte order")]
    BadByteOrder,
    /// A version this code does not read.
    #[error("stream version {0} is not supported (this rxen reads version {VERSION})")]
    BadVersion(u32),
    /// Saved on another architecture.
    #[error("stream is for architecture {0}, this host is x86_64")]
    BadArch(u32),
    /// Another page size.
    #[error("stream page shift {0} is not supported")]
    BadPageShift(u32),
    /// Header flags or reserved bits this code does not know.
    #[error("stream header has unknown flags {0:#x}")]
    BadFlags(u32),
    /// A record is longer than allowed.
    #[error("record of type {kind:#x} is {len} bytes long, over the limit of {MAX_RECORD}")]
    TooLong {
        /// Record type.
        kind: u32,
        /// Claimed length.
        len: u32,
    },
    /// A record's checksum does not match its contents.
    #[error("record of type {kind:#x} at offset {offset} is corrupt (CRC32C mismatch)")]
    BadCrc {
        /// Record type.
        kind: u32,
        /// Offset of the record header in the stream.
        offset: u64,
    },
    /// A mandatory record of a type this code does not know.
    #[error("unknown mandatory record type {0:#x}")]
    UnknownRecord(u32),
    /// A record whose body does not have the expected shape.
    #[error("malformed {what} record: {why}")]
    Malformed {
        /// The record kind.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Records in an order the stream does not allow.
    #[error("unexpected {0} record")]
    Unexpected(&'static str),
}

/// The known record types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RecordType {
    /// The end of the stream.
    End = 0,
    /// The domain config: JSON of [`ConfigRecord`].
    Config = 1,
    /// The VM's shape: memory size and vCPU count ([`VmInfo`]).
    VmInfo = 2,
    /// A batch of guest pages ([`PageBatch`]).
    Pages = 3,
    /// The state of one vCPU (opaque to this crate; the VMM encodes it).
    Vcpu = 4,
    /// VM-wide state: interrupt controllers, PIT, clock (opaque here).
    VmState = 5,
    /// One device's state: JSON of the VMM's typed device record
    /// (`rxen_vmm::migration::devices::DeviceRecord`; opaque to this crate).
    Device = 6,
    /// The end of one pre-copy round (optional; statistics only).
    RoundEnd = OPTIONAL | 7,
    /// Blocks of a disk copied by a storage migration ([`DiskBlock`]). Mandatory: a
    /// target that does not know it refuses the stream (the source then runs on), as it
    /// must, since it would otherwise run the guest over a disk missing those blocks.
    DiskBlocks = 8,
}

impl RecordType {
    /// The type of a raw record code, `None` for an unknown (optional or mandatory) code.
    pub fn from_code(code: u32) -> Option<RecordType> {
        Some(match code {
            0 => RecordType::End,
            1 => RecordType::Config,
            2 => RecordType::VmInfo,
            3 => RecordType::Pages,
            4 => RecordType::Vcpu,
            5 => RecordType::VmState,
            6 => RecordType::Device,
            c if c == RecordType::RoundEnd as u32 => RecordType::RoundEnd,
            8 => RecordType::DiskBlocks,
            _ => return None,
        })
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            RecordType::End => "end",
            RecordType::Config => "config",
            RecordType::VmInfo => "vm info",
            RecordType::Pages => "pages",
            RecordType::Vcpu => "vcpu",
            RecordType::VmState => "vm state",
            RecordType::Device => "device",
            RecordType::RoundEnd => "round end",
            RecordType::DiskBlocks => "disk blocks",
        }
    }
}

/// The stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Stream version.
    pub version: u32,
    /// Architecture code.
    pub arch: u32,
    /// Page shift.
    pub page_shift: u32,
    /// Flags: bit 0 = live migration stream (pages may repeat), else a save file.
    pub flags: u32,
}

/// Header flag: the stream comes from a live migration.
pub const FLAG_LIVE: u32 = 1;
/// Header flag: the sender waits, after each pre-copy round's end record, for the receiver's
/// `applied N` line on the connection (a migration only), so that the guest is paused only
/// once the target has every earlier page in place. A receiver from before it refuses the
/// flag, so the migration fails cleanly instead of waiting for lines that never come.
pub const FLAG_ROUND_ACKS: u32 = 2;
/// Every header flag this code knows.
const KNOWN_FLAGS: u32 = FLAG_LIVE | FLAG_ROUND_ACKS;

impl Header {
    /// The header this host writes.
    pub fn new(live: bool) -> Header {
        Header {
            version: VERSION,
            arch: ARCH_X86_64,
            page_shift: PAGE_SHIFT,
            flags: if live { FLAG_LIVE } else { 0 },
        }
    }

    /// This header with [`FLAG_ROUND_ACKS`] set.
    pub fn with_round_acks(self) -> Header {
        Header {
            flags: self.flags | FLAG_ROUND_ACKS,
            ..self
        }
    }

    /// Whether the sender waits for the receiver's `applied N` after each round.
    pub fn round_acks(&self) -> bool {
        self.flags & FLAG_ROUND_ACKS != 0
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..32].copy_from_slice(MAGIC);
        let words = [
            BYTE_ORDER,
            self.version,
            self.arch,
            self.page_shift,
            self.flags,
        ];
        for (i, w) in words.iter().enumerate() {
            let at = 32 + 4 * i;
            b[at..at + 4].copy_from_slice(&w.to_le_bytes());
        }
        let sum = crc32c::crc32c(&b[..HEADER_LEN - 4]);
        b[HEADER_LEN - 4..].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Parses and checks a header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, StreamError> {
        if &b[..32] != MAGIC {
            return Err(StreamError::BadMagic);
        }
        let word = |i: usize| {
            let at = 32 + 4 * i;
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[at..at + 4]);
            u32::from_le_bytes(w)
        };
        if word(0) != BYTE_ORDER {
            return Err(StreamError::BadByteOrder);
        }
        let h = Header {
            version: word(1),
            arch: word(2),
            page_shift: word(3),
            flags: word(4),
        };
        if h.version != VERSION {
            return Err(StreamError::BadVersion(h.version));
        }
        if h.arch != ARCH_X86_64 {
            return Err(StreamError::BadArch(h.arch));
        }
        if h.page_shift != PAGE_SHIFT {
            return Err(StreamError::BadPageShift(h.page_shift));
        }
        if h.flags & !KNOWN_FLAGS != 0 {
            return Err(StreamError::BadFlags(h.flags));
        }
        if word(5) != crc32c::crc32c(&b[..HEADER_LEN - 4]) {
            return Err(StreamError::BadCrc { kind: 0, offset: 0 });
        }
        Ok(h)
    }
}

fn crc(kind: u32, body: &[u8]) -> u32 {
    let len = body.len() as u32;
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&kind.to_le_bytes());
    head[4..].copy_from_slice(&len.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), body)
}

/// Writes a stream: the header, then records. Counts the bytes written.
pub struct StreamWriter<W: Write> {
    inner: W,
    /// Bytes written so far, header included.
    pub bytes: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Writes the header and returns the writer.
    pub fn new(mut inner: W, header: Header) -> Result<Self, StreamError> {
        inner.write_all(&header.encode())?;
        Ok(Self {
            inner,
            bytes: HEADER_LEN as u64,
        })
    }

    /// Writes one record of type `kind`.
    pub fn record(&mut self, kind: RecordType, body: &[u8]) -> Result<(), StreamError> {
        self.raw_record(kind as u32, body)
    }

    /// Writes one record with a raw type code (for tests of unknown types).
    pub fn raw_record(&mut self, kind: u32, body: &[u8]) -> Result<(), StreamError> {
        let len = u32::try_from(body.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or(StreamError::TooLong {
                kind,
                len: u32::try_from(body.len()).unwrap_or(u32::MAX),
            })?;
        let mut head = [0u8; RECORD_HEADER_LEN];
        head[..4].copy_from_slice(&kind.to_le_bytes());
        head[4..8].copy_from_slice(&len.to_le_bytes());
        head[8..].copy_from_slice(&crc(kind, body).to_le_bytes());
        self.inner.write_all(&head)?;
        self.inner.write_all(body)?;
        self.bytes += (RECORD_HEADER_LEN + body.len()) as u64;
        Ok(())
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> Result<(), StreamError> {
        self.inner.flush()?;
        Ok(())
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Gives back the underlying writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// One record as read: its type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The type.
    pub kind: RecordType,
    /// The body.
    pub body: Vec<u8>,
}

/// Reads a stream, checking every record.
pub struct StreamReader<R: Read> {
    inner: R,
    /// The header read at the start.
    pub header: Header,
    /// Bytes read so far.
    pub bytes: u64,
}

/// Reads exactly `buf.len()` bytes; a clean or partial end is `Truncated`.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8], what: &'static str) -> Result<(), StreamError> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(StreamError::Truncated(what)),
        Err(e) => Err(e.into()),
    }
}

impl<R: Read> StreamReader<R> {
    /// Reads and checks the header.
    pub fn new(mut inner: R) -> Result<Self, StreamError> {
        let mut b = [0u8; HEADER_LEN];
        read_full(&mut inner, &mut b, "in the header")?;
        let header = Header::decode(&b)?;
        Ok(Self {
            inner,
            header,
            bytes: HEADER_LEN as u64,
        })
    }

    /// Reads the next known record, skipping unknown optional ones.
    pub fn next_record(&mut self) -> Result<Record, StreamError> {
        loop {
            let offset = self.bytes;
            let mut head = [0u8; RECORD_HEADER_LEN];
            read_full(&mut self.inner, &mut head, "in a record header")?;
            let word = |i: usize| {
                let mut w = [0u8; 4];
                w.copy_from_slice(&head[4 * i..4 * i + 4]);
                u32::from_le_bytes(w)
            };
            let (kind, len, sum) = (word(0), word(1), word(2));
            if len > MAX_RECORD {
                return Err(StreamError::TooLong { kind, len });
            }
            let mut body = vec![0u8; len as usize];
            read_full(&mut self.inner, &mut body, "in a record body")?;
            self.bytes += (RECORD_HEADER_LEN + body.len()) as u64;
            if crc(kind, &body) != sum {
                return Err(StreamError::BadCrc { kind, offset });
            }
            match RecordType::from_code(kind) {
                Some(kind) => return Ok(Record { kind, body }),
                None if kind & OPTIONAL != 0 => continue,
                None => return Err(StreamError::UnknownRecord(kind)),
            }
        }
    }

    /// Reads the next record and checks that it has type `kind`.
    pub fn expect(&mut self, kind: RecordType) -> Result<Vec<u8>, StreamError> {
        let r = self.next_record()?;
        if r.kind != kind {
            return Err(StreamError::Unexpected(r.kind.name()));
        }
        Ok(r.body)
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// The config that rides in every stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConfigRecord {
    /// The domain's resolved configuration (JSON of `xlcfg::DomainConfig`).
    pub config: serde_json::Value,
    /// The config file it came from, if any.
    #[serde(default)]
    pub config_path: Option<String>,
}

/// The shape of the VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmInfo {
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// The boot protocol of the kernel that runs ("testguest" or "linux").
    #[serde(default)]
    pub kernel: String,
}

/// Encodes a JSON record body.
pub fn json_body<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StreamError> {
    serde_json::to_vec(value).map_err(|e| StreamError::Malformed {
        what: "json",
        why: e.to_string(),
    })
}

/// Decodes a JSON record body.
pub fn from_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    body: &[u8],
) -> Result<T, StreamError> {
    serde_json::from_slice(body).map_err(|e| StreamError::Malformed {
        what,
        why: e.to_string(),
    })
}

/// Most data bytes in one [`RecordType::DiskBlocks`] record.
pub const MAX_DISK_BLOCK: u64 = 1 << 20;
/// Flag of a [`DiskBlock`]: the range reads as zeros and carries no data.
pub const DISK_ZERO: u32 = 1;
/// Length of a [`DiskBlock`]'s header: device ID, flags, offset, length.
pub const DISK_BLOCK_HEADER: usize = 24;

/// One range of a disk in a storage migration: `len` bytes at byte `offset` of the disk
/// with Xen device ID `devid`, given as `data` or, with [`DISK_ZERO`], as zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskBlock<'a> {
    /// The disk's Xen device ID.
    pub devid: u32,
    /// Byte offset in the disk (the guest's view).
    pub offset: u64,
    /// Bytes in the range.
    pub len: u64,
    /// The bytes, or `None` for a range of zeros.
    pub data: Option<&'a [u8]>,
}

/// Encodes a disk block body: devid, flags, offset, length (all little-endian), then the
/// data unless it is a zero range.
pub fn encode_disk_block(b: &DiskBlock<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&b.devid.to_le_bytes());
    let flags = if b.data.is_none() { DISK_ZERO } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&b.offset.to_le_bytes());
    out.extend_from_slice(&b.len.to_le_bytes());
    if let Some(d) = b.data {
        out.extend_from_slice(d);
    }
}

/// Decodes and checks a disk block body: known flags, a length of 1 to
/// [`MAX_DISK_BLOCK`] bytes (any for a zero range), data of exactly that length, no overflow.
pub fn decode_disk_block(body: &[u8]) -> Result<DiskBlock<'_>, StreamError> {
    let bad = |why: String| StreamError::Malformed {
        what: "disk blocks",
        why,
    };
    let head = body
        .get(..DISK_BLOCK_HEADER)
        .ok_or_else(|| bad("shorter than its header".into()))?;
    let word = |at: usize, n: usize| {
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(&head[at..at + n]);
        u64::from_le_bytes(w)
    };
    let (devid, flags, offset, len) = (
        word(0, 4) as u32,
        word(4, 4) as u32,
        word(8, 8),
        word(16, 8),
    );
    if flags & !DISK_ZERO != 0 {
        return Err(bad(format!("unknown flags {flags:#x}")));
    }
    if len == 0 || offset.checked_add(len).is_none() {
        return Err(bad(format!("bad range {offset}+{len}")));
    }
    let rest = &body[DISK_BLOCK_HEADER..];
    let data = if flags & DISK_ZERO != 0 {
        if !rest.is_empty() {
            return Err(bad("a zero range carries data".into()));
        }
        None
    } else {
        if len > MAX_DISK_BLOCK || rest.len() as u64 != len {
            return Err(bad(format!(
                "{} data bytes for a range of {len} (at most {MAX_DISK_BLOCK})",
                rest.len()
            )));
        }
        Some(rest)
    };
    Ok(DiskBlock {
        devid,
        offset,
        len,
        data,
    })
}

/// A page batch being read: entries (PFN and zero flag) and the data of the non-zero pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageBatch<'a> {
    /// Page entries: PFN in bits 0..52, [`ZERO_PAGE`] for a zero page.
    pub entries: Vec<u64>,
    /// Data of the non-zero pages, [`PAGE_SIZE`] bytes each, in entry order.
    pub data: &'a [u8],
}

/// Encodes a page batch body: count, reserved, entries, then the page data.
pub fn encode_pages(entries: &[u64], data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.to_le_bytes());
    }
    out.extend_from_slice(data);
}

/// Decodes and checks a page batch body.
pub fn decode_pages(body: &[u8]) -> Result<PageBatch<'_>, StreamError> {
    let bad = |why: String| StreamError::Malformed { what: "pages", why };
    let count_bytes: [u8; 4] = body
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| bad("shorter than its count".into()))?;
    let count = u32::from_le_bytes(count_bytes) as usize;
    if count == 0 || count > MAX_BATCH {
        return Err(bad(format!("{count} pages (1..={MAX_BATCH} allowed)")));
    }
    let table_end = 8 + 8 * count;
    let table = body
        .get(8..table_end)
        .ok_or_else(|| bad("shorter than its page table".into()))?;
    let mut entries = Vec::with_capacity(count);
    let mut nonzero = 0usize;
    for chunk in table.chunks_exact(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let e = u64::from_le_bytes(w);
        if e & !(ZERO_PAGE | MAX_PFN) != 0 {
            return Err(bad(format!("entry {e:#x} has reserved bits set")));
        }
        if e & ZERO_PAGE == 0 {
            nonzero += 1;
        }
        entries.push(e);
    }
    let data = body.get(table_end..).unwrap_or_default();
    if data.len() != nonzero * PAGE_SIZE {
        return Err(bad(format!(
            "{} bytes of page data for {nonzero} non-zero pages",
            data.len()
        )));
    }
    Ok(PageBatch { entries, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;
    use std::io::Cursor;

    #[test]
    fn disk_blocks_round_trip_and_bad_ones_are_refused() {
        let data = vec![7u8; 4096];
        let mut body = Vec::new();
        let b = DiskBlock {
            devid: 51712,
            offset: 1 << 20,
            len: 4096,
            data: Some(&data),
        };
        encode_disk_block(&b, &mut body);
        assert_eq!(decode_disk_block(&body).expect("decoded"), b);
        let z = DiskBlock {
            devid: 5,
            offset: 0,
            len: 1 << 40,
            data: None,
        };
        encode_disk_block(&z, &mut body);
        assert_eq!(decode_disk_block(&body).expect("decoded"), z);
        assert_eq!(
            RecordType::from_code(8),
            Some(RecordType::DiskBlocks),
            "mandatory: a target that does not know it refuses the stream"
        );
        // Short data, data on a zero range, unknown flags, an overflowing range, a short header.
        let mut short = Vec::new();
        encode_disk_block(&b, &mut short);
        short.pop();
        let mut zero_with_data = body.clone();
        zero_with_data.push(1);
        let mut flags = body.clone();
        flags[4] = 2;
        let mut wrap = Vec::new();
        encode_disk_block(
            &DiskBlock {
                offset: u64::MAX,
                ..z.clone()
            },
            &mut wrap,
        );
        for bad in [short, zero_with_data, flags, wrap, body[..10].to_vec()] {
            assert!(decode_disk_block(&bad).is_err(), "{bad:?} accepted");
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), Header::new(false)).expect("header");
        let cfg = ConfigRecord {
            config: serde_json::json!({"name": "x"}),
            config_path: Some("/etc/xen/x.cfg".into()),
        };
        w.record(RecordType::Config, &json_body(&cfg).expect("json"))
            .expect("config");
        let mut body = Vec::new();
        let page = vec![0xABu8; PAGE_SIZE];
        encode_pages(&[5, 6 | ZERO_PAGE], &page, &mut body);
        w.record(RecordType::Pages, &body).expect("pages");
        w.raw_record(OPTIONAL | 0x77, b"ignored").expect("optional");
        w.record(RecordType::End, &[]).expect("end");
        let n = w.bytes;
        let v = w.into_inner();
        assert_eq!(n as usize, v.len());
        v
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Record>, StreamError> {
        let mut r = StreamReader::new(Cursor::new(bytes))?;
        let mut out = Vec::new();
        loop {
            let rec = r.next_record()?;
            let end = rec.kind == RecordType::End;
            out.push(rec);
            if end {
                return Ok(out);
            }
        }
    }

    #[test]
    fn round_trip_skips_unknown_optional_records() {
        let recs = read_all(&sample()).expect("read");
        let kinds: Vec<_> = recs.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            vec![RecordType::Config, RecordType::Pages, RecordType::End]
        );
        let cfg: ConfigRecord = from_json("config", &recs[0].body).expect("cfg");
        assert_eq!(cfg.config["name"], "x");
        let batch = decode_pages(&recs[1].body).expect("pages");
        assert_eq!(batch.entries, vec![5, 6 | ZERO_PAGE]);
        assert_eq!(batch.data.len(), PAGE_SIZE);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            let e = read_all(&bytes[..cut]).expect_err("truncated stream accepted");
            assert!(matches!(e, StreamError::Truncated(_)), "cut at {cut}: {e}");
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = sample();
        for at in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[at] ^= bit;
                assert!(
                    read_all(&b).is_err(),
                    "flipping bit {bit:#x} of byte {at} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn wrong_magic_order_version_and_arch() {
        let mut b = sample();
        b[0] = b'X';
        assert!(matches!(read_all(&b), Err(StreamError::BadMagic)));
        let mut b = sample();
        b[32..36].copy_from_slice(&0x0403_0201u32.to_le_bytes());
        assert!(matches!(read_all(&b), Err(StreamError::BadByteOrder)));
        let mut b = sample();
        b[36] = 9;
        assert!(matches!(read_all(&b), Err(StreamError::BadVersion(9))));
        let mut b = sample();
        b[40] = 2;
        assert!(matches!(read_all(&b), Err(StreamError::BadArch(2))));
    }

    #[test]
    fn oversize_and_unknown_mandatory_records() {
        let mut b = Header::new(false).encode().to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&(MAX_RECORD + 1).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(read_all(&b), Err(StreamError::TooLong { .. })));
        let mut w = StreamWriter::new(Vec::new(), Header::new(false)).expect("w");
        w.raw_record(0x55, b"what").expect("rec");
        let b = w.into_inner();
        assert!(matches!(
            read_all(&b),
            Err(StreamError::UnknownRecord(0x55))
        ));
        let mut w = StreamWriter::new(Vec::new(), Header::new(false)).expect("w");
        assert!(w.raw_record(1, &vec![0; MAX_RECORD as usize + 1]).is_err());
    }

    #[test]
    fn round_acks_flag_round_trips_and_unknown_flags_are_refused() {
        let h = Header::new(true).with_round_acks();
        let back = Header::decode(&h.encode()).expect("known flags");
        assert!(back.round_acks() && back.flags & FLAG_LIVE != 0);
        assert!(!Header::new(true).round_acks());
        let mut odd = Header::new(true);
        odd.flags |= 4;
        assert!(matches!(
            Header::decode(&odd.encode()),
            Err(StreamError::BadFlags(5))
        ));
    }

    #[test]
    fn malformed_page_batches() {
        assert!(decode_pages(&[]).is_err());
        let mut body = Vec::new();
        encode_pages(&[], &[], &mut body);
        assert!(decode_pages(&body).is_err());
        encode_pages(&[1], &[], &mut body);
        assert!(decode_pages(&body).is_err(), "missing data");
        encode_pages(&[1 | ZERO_PAGE], &[0; 8], &mut body);
        assert!(decode_pages(&body).is_err(), "extra data");
        encode_pages(&[1 << 55], &[], &mut body);
        assert!(decode_pages(&body).is_err(), "reserved bits");
        let mut body = vec![0u8; 8];
        body[..4].copy_from_slice(&(MAX_BATCH as u32 + 1).to_le_bytes());
        assert!(decode_pages(&body).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut b = Header::new(true).encode().to_vec();
            b.extend_from_slice(&tail);
            let _ = read_all(&b);
            let _ = decode_pages(&tail);
        }

        /// Random record bodies, checksums right, into every decoder of this crate.
        #[test]
        fn random_record_bodies_never_panic_a_decoder(
            kind in proptest::prop_oneof![0u32..8, proptest::num::u32::ANY],
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
        ) {
            let mut w = StreamWriter::new(Vec::new(), Header::new(false)).expect("w");
            w.raw_record(kind, &body).expect("record");
            let bytes = w.into_inner();
            let mut r = StreamReader::new(Cursor::new(&bytes[..])).expect("header");
            if let Ok(rec) = r.next_record() {
                proptest::prop_assert_eq!(&rec.body, &body);
                let _ = decode_pages(&rec.body);
                let _ = from_json::<ConfigRecord>("config", &rec.body);
                let _ = from_json::<VmInfo>("vm info", &rec.body);
            }
        }

        /// Page batches with counts, entries and amounts of data near or far
        /// from right: a batch that decodes keeps to its rules.
        #[test]
        fn random_page_batches_decode_only_when_whole(
            entries in proptest::collection::vec(
                proptest::prop_oneof![0u64..64, (0u64..64).prop_map(|p| p | ZERO_PAGE), proptest::num::u64::ANY],
                0..40,
            ),
            count_off in proptest::prop_oneof![proptest::strategy::Just(0i64), -2i64..3, proptest::num::i32::ANY.prop_map(i64::from)],
            pages_off in proptest::prop_oneof![proptest::strategy::Just(0i64), -1i64..2],
            extra in proptest::prop_oneof![proptest::strategy::Just(0usize), 0usize..5],
        ) {
            let count = u32::try_from(entries.len() as i64 + count_off).unwrap_or(u32::MAX);
            let nonzero = entries.iter().filter(|e| *e & ZERO_PAGE == 0).count();
            let pages = usize::try_from(nonzero as i64 + pages_off).unwrap_or(0);
            let mut body = count.to_le_bytes().to_vec();
            body.extend_from_slice(&0u32.to_le_bytes());
            for e in &entries {
                body.extend_from_slice(&e.to_le_bytes());
            }
            body.extend(std::iter::repeat_n(0x5Au8, pages * PAGE_SIZE + extra));
            if let Ok(b) = decode_pages(&body) {
                proptest::prop_assert!((1..=MAX_BATCH).contains(&b.entries.len()));
                proptest::prop_assert_eq!(b.entries.len() as u32, count);
                proptest::prop_assert!(b.entries.iter().all(|e| e & !(ZERO_PAGE | MAX_PFN) == 0));
                let nonzero = b.entries.iter().filter(|e| *e & ZERO_PAGE == 0).count();
                proptest::prop_assert_eq!(b.data.len(), nonzero * PAGE_SIZE);
            }
        }
    }
}
