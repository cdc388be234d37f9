//! Loading a Linux kernel image: a vmlinux ELF or a bzImage, told apart by content.

use std::io::{self, Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, ReadVolatile,
};

use crate::layout::{BZIMAGE_64BIT_ENTRY_OFFSET, HIGH_MEMORY_START, KERNEL_START};

/// Offset of the setup header in a bzImage (and of `hdr` in the zero page).
pub const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// The setup header's `header` magic, "HdrS".
pub const SETUP_HEADER_MAGIC: u32 = 0x5372_6448;
/// The oldest boot protocol accepted (2.06, which has `cmdline_size`).
pub const MIN_BOOT_PROTOCOL: u16 = 0x0206;
/// Size of one setup sector of a bzImage.
const SECTOR_SIZE: u64 = 512;
/// `setup_sects` of 0 means this many.
const DEFAULT_SETUP_SECTS: u64 = 4;
/// Boot protocol that added `pref_address` and `init_size`.
const PROTOCOL_PREF_ADDRESS: u16 = 0x020a;

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const ELF64_EHDR_SIZE: u64 = 64;
const ELF64_PHDR_SIZE: u16 = 56;
const PT_LOAD: u32 = 1;

/// Errors loading a kernel image.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The file could not be read.
    #[error("cannot read the kernel image: {0}")]
    Io(#[from] io::Error),
    /// Neither a 64-bit x86 ELF nor a bzImage.
    #[error("not a vmlinux ELF or bzImage: {0}")]
    UnknownFormat(String),
    /// A header points past the end of the file.
    #[error("truncated image: {0} lies past the end of the file")]
    Truncated(&'static str),
    /// Arithmetic on header fields overflowed.
    #[error("bad image: {0} overflows")]
    Overflow(&'static str),
    /// A vmlinux with nothing to load.
    #[error("vmlinux has no PT_LOAD segment")]
    NoLoadSegment,
    /// A segment whose file part is bigger than its memory part.
    #[error("vmlinux segment at {addr:#x} has p_filesz {filesz:#x} > p_memsz {memsz:#x}")]
    BadSegment {
        /// Physical address of the segment.
        addr: u64,
        /// Bytes in the file.
        filesz: u64,
        /// Bytes in memory.
        memsz: u64,
    },
    /// Something would be placed outside the RAM a kernel may use.
    #[error("{what} at {addr:#x}..{end:#x} lies outside guest RAM {low:#x}..{high:#x}")]
    OutsideRam {
        /// What would be placed.
        what: &'static str,
        /// Its first address.
        addr: u64,
        /// Its end.
        end: u64,
        /// Lowest address allowed (1 MiB).
        low: u64,
        /// End of usable RAM below the hole.
        high: u64,
    },
    /// The ELF entry point is not inside any loaded segment.
    #[error("vmlinux entry point {0:#x} is outside every PT_LOAD segment")]
    EntryOutsideImage(u64),
    /// The bzImage speaks a boot protocol older than 2.06.
    #[error("bzImage boot protocol {major}.{minor:02} is too old: 2.06 or later is needed")]
    OldProtocol {
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
    },
    /// The bzImage is not loaded high (a zImage).
    #[error("bzImage does not set LOADED_HIGH in loadflags (a zImage cannot be booted)")]
    NotLoadedHigh,
    /// The bzImage has no 64-bit entry point.
    #[error("bzImage has no 64-bit entry point (XLF_KERNEL_64 not set in xloadflags)")]
    No64BitEntry,
    /// The bzImage has no protected-mode payload after its setup sectors.
    #[error("bzImage has no protected-mode kernel after its {0} setup bytes")]
    EmptyPayload(u64),
    /// A relocatable bzImage with a `kernel_alignment` that is not a power of two.
    #[error("bzImage kernel_alignment {0:#x} is not a power of two")]
    BadAlignment(u32),
    /// linux-loader failed to copy the image.
    #[error("cannot load the image into guest memory: {0}")]
    Loader(#[from] linux_loader::loader::Error),
    /// Guest memory could not be written.
    #[error("cannot write guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// The two kernel formats accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed 64-bit x86 ELF (`vmlinux`).
    Vmlinux,
    /// A compressed `bzImage` with a setup header.
    BzImage,
}

/// A kernel loaded into guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Which format it was.
    pub format: KernelFormat,
    /// The 64-bit entry point (guest physical).
    pub entry: GuestAddress,
    /// Lowest address written (bzImage: the payload's load address).
    pub load_addr: GuestAddress,
    /// First address past everything the kernel occupies or will use while starting.
    pub end: u64,
    /// The bzImage's setup header (`code32_start` set to the load address); `None` for vmlinux.
    pub setup_header: Option<setup_header>,
}

/// One PT_LOAD program header.
#[derive(Debug, Clone, Copy)]
struct Segment {
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// Reads a little-endian u16 at `off` of `buf`.
fn le16(buf: &[u8], off: usize) -> Option<u16> {
    let bytes = buf.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

/// Reads a little-endian u32 at `off` of `buf`.
fn le32(buf: &[u8], off: usize) -> Option<u32> {
    let bytes = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Reads a little-endian u64 at `off` of `buf`.
fn le64(buf: &[u8], off: usize) -> Option<u64> {
    let bytes = buf.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Tells the format of an image from its first bytes (at least 0x26c for a bzImage).
pub fn detect_format(head: &[u8]) -> Result<KernelFormat, KernelError> {
    if head.get(..4) == Some(&ELF_MAGIC[..]) {
        let class = head.get(4).copied().unwrap_or(0);
        let data = head.get(5).copied().unwrap_or(0);
        let machine = le16(head, 18).unwrap_or(0);
        if class != ELFCLASS64 || data != ELFDATA2LSB || machine != EM_X86_64 {
            return Err(KernelError::UnknownFormat(format!(
                "an ELF file, but not 64-bit little-endian x86_64 \
                 (class {class}, data {data}, machine {machine})"
            )));
        }
        return Ok(KernelFormat::Vmlinux);
    }
    if le32(head, 0x202) == Some(SETUP_HEADER_MAGIC) {
        return Ok(KernelFormat::BzImage);
    }
    Err(KernelError::UnknownFormat(
        "no ELF magic at offset 0 and no \"HdrS\" setup header magic at offset 0x202".into(),
    ))
}

/// Parses the setup header of a bzImage from its first bytes.
pub fn parse_setup_header(head: &[u8]) -> Result<setup_header, KernelError> {
    let mut hdr = setup_header::default();
    let start = SETUP_HEADER_OFFSET as usize;
    let size = std::mem::size_of::<setup_header>();
    let src = head
        .get(start..start + size)
        .ok_or(KernelError::Truncated("the bzImage setup header"))?;
    for (dst, src) in hdr.as_mut_slice().iter_mut().zip(src) {
        *dst = *src;
    }
    Ok(hdr)
}

/// Checks `addr..addr+size` lies in `HIGH_MEMORY_START..ram_end` and returns its end.
fn check_in_ram(
    what: &'static str,
    addr: u64,
    size: u64,
    ram_end: u64,
) -> Result<u64, KernelError> {
    let end = addr.checked_add(size).ok_or(KernelError::Overflow(what))?;
    if addr < HIGH_MEMORY_START || end > ram_end {
        return Err(KernelError::OutsideRam {
            what,
            addr,
            end,
            low: HIGH_MEMORY_START,
            high: ram_end,
        });
    }
    Ok(end)
}

/// Length of a seekable image.
fn image_len<R: Seek>(image: &mut R) -> Result<u64, KernelError> {
    let len = image.seek(SeekFrom::End(0))?;
    image.rewind()?;
    Ok(len)
}

/// Reads up to `max` bytes from the start of `image`.
fn read_head<R: Read + Seek>(image: &mut R, len: u64, max: u64) -> Result<Vec<u8>, KernelError> {
    image.rewind()?;
    let n = len.min(max);
    let mut head = vec![0u8; usize::try_from(n).map_err(|_| KernelError::Overflow("header"))?];
    image.read_exact(&mut head)?;
    Ok(head)
}

/// Loads a vmlinux ELF or a bzImage from `image` into `mem`, below `ram_end` and above 1 MiB.
pub fn load_kernel<M, R>(mem: &M, image: &mut R, ram_end: u64) -> Result<LoadedKernel, KernelError>
where
    M: GuestMemoryBackend,
    R: Read + ReadVolatile + Seek,
{
    let len = image_len(image)?;
    let head = read_head(image, len, 0x1000)?;
    match detect_format(&head)? {
        KernelFormat::Vmlinux => load_vmlinux(mem, image, &head, len, ram_end),
        KernelFormat::BzImage => load_bzimage(mem, image, &head, len, ram_end),
    }
}

/// Reads and checks the PT_LOAD segments of a 64-bit ELF.
fn elf_segments<R: Read + Seek>(
    image: &mut R,
    head: &[u8],
    len: u64,
) -> Result<Vec<Segment>, KernelError> {
    let phoff = le64(head, 32).ok_or(KernelError::Truncated("the ELF header"))?;
    let phentsize = le16(head, 54).ok_or(KernelError::Truncated("the ELF header"))?;
    let phnum = le16(head, 56).ok_or(KernelError::Truncated("the ELF header"))?;
    if phentsize != ELF64_PHDR_SIZE {
        return Err(KernelError::UnknownFormat(format!(
            "ELF program header size is {phentsize}, not {ELF64_PHDR_SIZE}"
        )));
    }
    let table_len = u64::from(phnum) * u64::from(ELF64_PHDR_SIZE);
    let table_end = phoff
        .checked_add(table_len)
        .ok_or(KernelError::Overflow("the program header table"))?;
    if phoff < ELF64_EHDR_SIZE || table_end > len {
        return Err(KernelError::Truncated("the program header table"));
    }
    image.seek(SeekFrom::Start(phoff))?;
    let mut table = vec![0u8; table_len as usize];
    image.read_exact(&mut table)?;

    let mut segments = Vec::new();
    for phdr in table.chunks_exact(usize::from(ELF64_PHDR_SIZE)) {
        let field = |off| le64(phdr, off).ok_or(KernelError::Truncated("a program header"));
        if le32(phdr, 0) != Some(PT_LOAD) {
            continue;
        }
        let seg = Segment {
            offset: field(8)?,
            paddr: field(24)?,
            filesz: field(32)?,
            memsz: field(40)?,
        };
        if seg.filesz > seg.memsz {
            return Err(KernelError::BadSegment {
                addr: seg.paddr,
                filesz: seg.filesz,
                memsz: seg.memsz,
            });
        }
        let file_end = seg
            .offset
            .checked_add(seg.filesz)
            .ok_or(KernelError::Overflow("a segment's file range"))?;
        if file_end > len {
            return Err(KernelError::Truncated("a PT_LOAD segment"));
        }
        segments.push(seg);
    }
    if segments.is_empty() {
        return Err(KernelError::NoLoadSegment);
    }
    Ok(segments)
}

/// Writes `len` zero bytes at `addr`.
fn zero_fill<M: GuestMemoryBackend>(mem: &M, addr: u64, len: u64) -> Result<(), KernelError> {
    const CHUNK: [u8; 4096] = [0; 4096];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK.len() as u64);
        let chunk = CHUNK.get(..n as usize).unwrap_or(&CHUNK);
        mem.write_slice(chunk, GuestAddress(addr + done))?;
        done += n;
    }
    Ok(())
}

/// Loads a vmlinux: PT_LOAD segments at their physical addresses, bss zeroed, entry = e_entry.
fn load_vmlinux<M, R>(
    mem: &M,
    image: &mut R,
    head: &[u8],
    len: u64,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError>
where
    M: GuestMemoryBackend,
    R: Read + ReadVolatile + Seek,
{
    let entry = le64(head, 24).ok_or(KernelError::Truncated("the ELF header"))?;
    let segments = elf_segments(image, head, len)?;
    let mut end = 0u64;
    let mut low = u64::MAX;
    for seg in &segments {
        let seg_end = check_in_ram("vmlinux segment", seg.paddr, seg.memsz, ram_end)?;
        end = end.max(seg_end);
        low = low.min(seg.paddr);
    }
    if !segments
        .iter()
        .any(|s| entry >= s.paddr && entry - s.paddr < s.memsz)
    {
        return Err(KernelError::EntryOutsideImage(entry));
    }

    Elf::load(mem, None, image, Some(GuestAddress(HIGH_MEMORY_START)))?;
    for seg in &segments {
        // Both additions were checked by `check_in_ram` (filesz <= memsz).
        zero_fill(mem, seg.paddr + seg.filesz, seg.memsz - seg.filesz)?;
    }
    Ok(LoadedKernel {
        format: KernelFormat::Vmlinux,
        entry: GuestAddress(entry),
        load_addr: GuestAddress(low),
        end,
        setup_header: None,
    })
}

/// Rounds `value` up to `align` (a power of two).
fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

/// Loads a bzImage's protected-mode payload at 1 MiB (a non-relocatable kernel at `pref_address`).
fn load_bzimage<M, R>(
    mem: &M,
    image: &mut R,
    head: &[u8],
    len: u64,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError>
where
    M: GuestMemoryBackend,
    R: Read + ReadVolatile + Seek,
{
    let hdr = parse_setup_header(head)?;
    let version = hdr.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(KernelError::OldProtocol {
            major: (version >> 8) as u8,
            minor: version as u8,
        });
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(KernelError::NotLoadedHigh);
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(KernelError::No64BitEntry);
    }
    let setup_sects = match u64::from(hdr.setup_sects) {
        0 => DEFAULT_SETUP_SECTS,
        n => n,
    };
    let setup_size = (setup_sects + 1) * SECTOR_SIZE;
    if len <= setup_size {
        return Err(KernelError::EmptyPayload(setup_size));
    }
    let payload_len = len - setup_size;

    let relocatable = hdr.relocatable_kernel != 0;
    let has_pref = version >= PROTOCOL_PREF_ADDRESS;
    let pref_address = if has_pref { hdr.pref_address } else { 0 };
    let load = if !relocatable && pref_address != 0 {
        // A non-relocatable kernel runs at pref_address whatever we do: put it there.
        pref_address
    } else {
        KERNEL_START
    };
    let payload_end = check_in_ram("bzImage payload", load, payload_len, ram_end)?;

    // Where the kernel will decompress and run: it needs init_size bytes there.
    let run_end = if has_pref {
        let run = if relocatable {
            let align = hdr.kernel_alignment;
            if !align.is_power_of_two() {
                return Err(KernelError::BadAlignment(align));
            }
            align_up(load, u64::from(align))
                .ok_or(KernelError::Overflow("the aligned load address"))?
                .max(pref_address)
        } else {
            load
        };
        check_in_ram(
            "bzImage decompression area (init_size)",
            run,
            u64::from(hdr.init_size),
            ram_end,
        )?
    } else {
        payload_end
    };

    let result = BzImage::load(mem, Some(GuestAddress(load)), image, None)?;
    Ok(LoadedKernel {
        format: KernelFormat::BzImage,
        entry: GuestAddress(load + BZIMAGE_64BIT_ENTRY_OFFSET),
        load_addr: GuestAddress(load),
        end: payload_end.max(run_end),
        setup_header: result.setup_header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{bzimage, vmlinux, BzImageSpec, ElfSegment};
    use std::io::Cursor;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;

    fn mem(size: u64) -> GuestMemoryMmap {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).expect("mem");
        // Garbage everywhere, so that zeroing and exact placement are visible.
        let junk = vec![0xEEu8; size as usize];
        mem.write_slice(&junk, GuestAddress(0)).expect("fill");
        mem
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).expect("read");
        buf
    }

    fn two_segment_vmlinux() -> Vec<u8> {
        vmlinux(
            0x100_0000,
            &[
                ElfSegment {
                    paddr: 0x100_0000,
                    data: (0..=255u8).cycle().take(0x1800).collect(),
                    memsz: 0x1800,
                },
                ElfSegment {
                    paddr: 0x120_0000,
                    data: vec![0x5A; 0x100],
                    memsz: 0x3000,
                },
            ],
        )
    }

    #[test]
    fn vmlinux_segments_land_at_their_physical_addresses() {
        let mem = mem(32 * MIB);
        let image = two_segment_vmlinux();
        let k = load_kernel(&mem, &mut Cursor::new(&image), 32 * MIB).expect("load");
        assert_eq!(k.format, KernelFormat::Vmlinux);
        assert_eq!(k.entry, GuestAddress(0x100_0000));
        assert_eq!(k.load_addr, GuestAddress(0x100_0000));
        assert_eq!(k.end, 0x120_3000);
        assert!(k.setup_header.is_none());
        let expected: Vec<u8> = (0..=255u8).cycle().take(0x1800).collect();
        assert_eq!(read(&mem, 0x100_0000, 0x1800), expected);
        // Around it, memory is untouched.
        assert_eq!(read(&mem, 0xFF_FFFF, 1), vec![0xEE]);
        assert_eq!(read(&mem, 0x100_1800, 1), vec![0xEE]);
        // Second segment: file bytes, then a zeroed bss up to p_memsz, then untouched.
        assert_eq!(read(&mem, 0x120_0000, 0x100), vec![0x5A; 0x100]);
        assert_eq!(read(&mem, 0x120_0100, 0x2F00), vec![0; 0x2F00]);
        assert_eq!(read(&mem, 0x120_3000, 1), vec![0xEE]);
    }

    #[test]
    fn vmlinux_outside_ram_is_refused() {
        let image = two_segment_vmlinux();
        // RAM ends inside the second segment's bss.
        let mem = mem(0x120_2000);
        let err = load_kernel(&mem, &mut Cursor::new(&image), 0x120_2000).expect_err("too small");
        assert!(
            matches!(
                err,
                KernelError::OutsideRam {
                    addr: 0x120_0000,
                    end: 0x120_3000,
                    ..
                }
            ),
            "{err}"
        );
        // Nothing was copied.
        assert_eq!(read(&mem, 0x100_0000, 4), vec![0xEE; 4]);

        let low = vmlinux(
            0x8_0000,
            &[ElfSegment {
                paddr: 0x8_0000,
                data: vec![1; 16],
                memsz: 16,
            }],
        );
        let err = load_kernel(&mem, &mut Cursor::new(&low), 0x120_2000).expect_err("low");
        assert_eq!(
            err.to_string(),
            "vmlinux segment at 0x80000..0x80010 lies outside guest RAM 0x100000..0x1202000"
        );
    }

    #[test]
    fn vmlinux_entry_must_be_inside_an_image_segment() {
        let image = vmlinux(
            0x200_0000,
            &[ElfSegment {
                paddr: 0x100_0000,
                data: vec![1; 16],
                memsz: 16,
            }],
        );
        let err =
            load_kernel(&mem(64 * MIB), &mut Cursor::new(&image), 64 * MIB).expect_err("entry");
        assert!(matches!(err, KernelError::EntryOutsideImage(0x200_0000)));
    }

    #[test]
    fn truncated_vmlinux_is_refused() {
        let mut image = two_segment_vmlinux();
        image.truncate(image.len() - 1);
        let err =
            load_kernel(&mem(32 * MIB), &mut Cursor::new(&image), 32 * MIB).expect_err("truncated");
        assert!(matches!(err, KernelError::Truncated(_)), "{err}");
        // Program header table cut off.
        let image = two_segment_vmlinux();
        let err = load_kernel(&mem(32 * MIB), &mut Cursor::new(&image[..100]), 32 * MIB)
            .expect_err("truncated");
        assert!(matches!(err, KernelError::Truncated(_)), "{err}");
    }

    #[test]
    fn other_files_are_refused_with_a_clear_error() {
        let mem = mem(16 * MIB);
        let err = load_kernel(
            &mem,
            &mut Cursor::new(b"#!/bin/sh\necho hi\n".to_vec()),
            16 * MIB,
        )
        .expect_err("script");
        assert!(
            err.to_string()
                .starts_with("not a vmlinux ELF or bzImage: "),
            "{err}"
        );
        let err =
            load_kernel(&mem, &mut Cursor::new(Vec::new()), 16 * MIB).expect_err("empty file");
        assert!(matches!(err, KernelError::UnknownFormat(_)));

        // A 32-bit ELF.
        let mut elf32 = two_segment_vmlinux();
        elf32[4] = 1;
        let err = load_kernel(&mem, &mut Cursor::new(&elf32), 16 * MIB).expect_err("elf32");
        assert!(err
            .to_string()
            .starts_with("not a vmlinux ELF or bzImage: an ELF file"));
        // An aarch64 ELF.
        let mut arm = two_segment_vmlinux();
        arm[18..20].copy_from_slice(&183u16.to_le_bytes());
        let err = load_kernel(&mem, &mut Cursor::new(&arm), 16 * MIB).expect_err("arm");
        assert!(matches!(err, KernelError::UnknownFormat(_)));
    }

    fn payload() -> Vec<u8> {
        (0..0x3000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn bzimage_payload_loads_at_1mib_with_entry_plus_0x200() {
        let mem = mem(64 * MIB);
        let spec = BzImageSpec::default();
        let image = bzimage(&spec, &payload());
        let k = load_kernel(&mem, &mut Cursor::new(&image), 64 * MIB).expect("load");
        assert_eq!(k.format, KernelFormat::BzImage);
        assert_eq!(k.load_addr, GuestAddress(0x10_0000));
        assert_eq!(k.entry, GuestAddress(0x10_0200));
        // Runs at max(align_up(1 MiB, 2 MiB), pref 16 MiB) and needs init_size there.
        assert_eq!(k.end, 0x100_0000 + u64::from(spec.init_size));
        assert_eq!(read(&mem, 0x10_0000, 0x3000), payload());
        assert_eq!(read(&mem, 0x10_3000, 1), vec![0xEE]);
        assert_eq!(read(&mem, 0xF_FFFF, 1), vec![0xEE]);
        let hdr = k.setup_header.expect("header");
        assert_eq!({ hdr.header }, SETUP_HEADER_MAGIC);
        assert_eq!({ hdr.version }, spec.version);
        assert_eq!({ hdr.code32_start }, 0x10_0000);
        assert_eq!({ hdr.cmdline_size }, spec.cmdline_size);
    }

    #[test]
    fn bzimage_setup_sects_zero_means_four() {
        let mem = mem(64 * MIB);
        let spec = BzImageSpec {
            setup_sects: 0,
            ..Default::default()
        };
        let image = bzimage(&spec, &payload());
        assert_eq!(image.len(), 5 * 512 + 0x3000);
        load_kernel(&mem, &mut Cursor::new(&image), 64 * MIB).expect("load");
        assert_eq!(read(&mem, 0x10_0000, 0x3000), payload());
    }

    #[test]
    fn non_relocatable_bzimage_loads_at_pref_address() {
        let mem = mem(64 * MIB);
        let spec = BzImageSpec {
            relocatable: 0,
            pref_address: 0x200_0000,
            ..Default::default()
        };
        let image = bzimage(&spec, &payload());
        let k = load_kernel(&mem, &mut Cursor::new(&image), 64 * MIB).expect("load");
        assert_eq!(k.load_addr, GuestAddress(0x200_0000));
        assert_eq!(k.entry, GuestAddress(0x200_0200));
        assert_eq!(read(&mem, 0x200_0000, 0x3000), payload());
        assert_eq!(read(&mem, 0x10_0000, 4), vec![0xEE; 4]);
        assert_eq!({ k.setup_header.expect("hdr").code32_start }, 0x200_0000);
    }

    #[test]
    fn bzimage_header_checks() {
        let mem = mem(64 * MIB);
        let load = |spec: BzImageSpec| {
            let image = bzimage(&spec, &payload());
            load_kernel(&mem, &mut Cursor::new(&image), 64 * MIB)
        };
        let err = load(BzImageSpec {
            version: 0x0205,
            ..Default::default()
        })
        .expect_err("old");
        assert_eq!(
            err.to_string(),
            "bzImage boot protocol 2.05 is too old: 2.06 or later is needed"
        );
        let err = load(BzImageSpec {
            loadflags: 0,
            ..Default::default()
        })
        .expect_err("zImage");
        assert!(matches!(err, KernelError::NotLoadedHigh));
        let err = load(BzImageSpec {
            xloadflags: 0,
            ..Default::default()
        })
        .expect_err("32-bit only");
        assert!(matches!(err, KernelError::No64BitEntry));
        let err = load(BzImageSpec {
            kernel_alignment: 0x30_0000,
            ..Default::default()
        })
        .expect_err("alignment");
        assert!(matches!(err, KernelError::BadAlignment(0x30_0000)));
        // Nothing was loaded by any of them.
        assert_eq!(read(&mem, 0x10_0000, 4), vec![0xEE; 4]);
    }

    #[test]
    fn bzimage_without_payload_is_refused() {
        let spec = BzImageSpec::default();
        let image = bzimage(&spec, &[]);
        let err =
            load_kernel(&mem(64 * MIB), &mut Cursor::new(&image), 64 * MIB).expect_err("empty");
        assert!(matches!(err, KernelError::EmptyPayload(0x600)));
    }

    #[test]
    fn bzimage_needing_more_ram_than_there_is_is_refused() {
        // init_size of 16 MiB at 16 MiB does not fit in 24 MiB.
        let spec = BzImageSpec {
            init_size: 0x100_0000,
            ..Default::default()
        };
        let image = bzimage(&spec, &payload());
        let err =
            load_kernel(&mem(24 * MIB), &mut Cursor::new(&image), 24 * MIB).expect_err("small");
        assert_eq!(
            err.to_string(),
            "bzImage decompression area (init_size) at 0x1000000..0x2000000 \
             lies outside guest RAM 0x100000..0x1800000"
        );
        // Payload itself past the end of RAM.
        let big = bzimage(&BzImageSpec::default(), &vec![1u8; 3 * MIB as usize]);
        let err = load_kernel(&mem(4 * MIB), &mut Cursor::new(&big), 2 * MIB).expect_err("big");
        assert!(matches!(
            err,
            KernelError::OutsideRam {
                addr: 0x10_0000,
                end: 0x40_0000,
                high: 0x20_0000,
                ..
            }
        ));
    }
}
