//! A small, bounds-checked ELF64 reader: loadable segments and notes.

/// ELF note name of the rxen test guest protocol.
pub const RXEN_NOTE_NAME: &[u8] = b"RXEN";
/// ELF note type of the rxen test guest protocol.
pub const RXEN_NOTE_TYPE: u32 = 1;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const SHT_NOTE: u32 = 7;
const EM_X86_64: u16 = 62;

/// Errors while reading an ELF image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    /// The file does not start with the ELF magic.
    #[error("not an ELF file")]
    NotElf,
    /// The ELF is not a 64-bit little-endian x86_64 executable.
    #[error("not a 64-bit little-endian x86_64 executable ELF")]
    WrongKind,
    /// A header or table points outside the file.
    #[error("truncated or malformed ELF: {0}")]
    Malformed(&'static str),
    /// There is nothing to load.
    #[error("the ELF has no loadable segments")]
    NoSegments,
}

/// One loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical load address.
    pub paddr: u64,
    /// Offset of the file bytes.
    pub offset: u64,
    /// Bytes taken from the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zero).
    pub memsz: u64,
}

/// One ELF note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Note name without the terminating NUL.
    pub name: Vec<u8>,
    /// Note type.
    pub kind: u32,
    /// Descriptor bytes.
    pub desc: Vec<u8>,
}

/// What the loader needs from an ELF image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfImage {
    /// Entry point.
    pub entry: u64,
    /// PT_LOAD segments.
    pub segments: Vec<Segment>,
    /// Notes from PT_NOTE segments and SHT_NOTE sections.
    pub notes: Vec<Note>,
}

fn slice<'a>(b: &'a [u8], off: u64, len: u64, what: &'static str) -> Result<&'a [u8], ElfError> {
    let start = usize::try_from(off).map_err(|_| ElfError::Malformed(what))?;
    let len = usize::try_from(len).map_err(|_| ElfError::Malformed(what))?;
    let end = start.checked_add(len).ok_or(ElfError::Malformed(what))?;
    b.get(start..end).ok_or(ElfError::Malformed(what))
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    let s = b
        .get(off..off + 2)
        .ok_or(ElfError::Malformed("short field"))?;
    let mut a = [0u8; 2];
    a.copy_from_slice(s);
    Ok(u16::from_le_bytes(a))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    let s = b
        .get(off..off + 4)
        .ok_or(ElfError::Malformed("short field"))?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Ok(u32::from_le_bytes(a))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    let s = b
        .get(off..off + 8)
        .ok_or(ElfError::Malformed("short field"))?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// True when `bytes` starts with the ELF magic.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7FELF")
}

/// Parses the notes in one note area.
fn parse_notes(mut area: &[u8], out: &mut Vec<Note>) -> Result<(), ElfError> {
    fn pad4(n: usize) -> Option<usize> {
        n.checked_add(3).map(|v| v & !3)
    }
    while area.len() >= 12 {
        let namesz = u32_at(area, 0)? as usize;
        let descsz = u32_at(area, 4)? as usize;
        let kind = u32_at(area, 8)?;
        let name_end = pad4(namesz)
            .and_then(|n| n.checked_add(12))
            .ok_or(ElfError::Malformed("note"))?;
        let desc_end = pad4(descsz)
            .and_then(|d| d.checked_add(name_end))
            .ok_or(ElfError::Malformed("note"))?;
        let name = area
            .get(12..12 + namesz)
            .ok_or(ElfError::Malformed("note name"))?;
        let desc = area
            .get(name_end..name_end + descsz)
            .ok_or(ElfError::Malformed("note descriptor"))?;
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        out.push(Note {
            name: name.to_vec(),
            kind,
            desc: desc.to_vec(),
        });
        area = area.get(desc_end..).unwrap_or(&[]);
    }
    Ok(())
}

impl ElfImage {
    /// Parses `bytes` as an x86_64 executable ELF.
    pub fn parse(bytes: &[u8]) -> Result<Self, ElfError> {
        if !is_elf(bytes) {
            return Err(ElfError::NotElf);
        }
        let ident = bytes.get(4..6).ok_or(ElfError::Malformed("header"))?;
        bytes.get(..64).ok_or(ElfError::Malformed("header"))?;
        // ELFCLASS64, ELFDATA2LSB.
        if ident != [2, 1] || u16_at(bytes, 18)? != EM_X86_64 {
            return Err(ElfError::WrongKind);
        }
        // ET_EXEC or ET_DYN are both loaded at their physical addresses.
        let e_type = u16_at(bytes, 16)?;
        if e_type != 2 && e_type != 3 {
            return Err(ElfError::WrongKind);
        }
        let entry = u64_at(bytes, 24)?;
        let phoff = u64_at(bytes, 32)?;
        let shoff = u64_at(bytes, 40)?;
        let phentsize = u64::from(u16_at(bytes, 54)?);
        let phnum = u64::from(u16_at(bytes, 56)?);
        let shentsize = u64::from(u16_at(bytes, 58)?);
        let shnum = u64::from(u16_at(bytes, 60)?);

        let mut segments = Vec::new();
        let mut notes = Vec::new();
        if phnum > 0 {
            if phentsize < 56 {
                return Err(ElfError::Malformed("program header size"));
            }
            let table = slice(bytes, phoff, phentsize * phnum, "program headers")?;
            for ph in table.chunks_exact(phentsize as usize) {
                let p_type = u32_at(ph, 0)?;
                let offset = u64_at(ph, 8)?;
                let paddr = u64_at(ph, 24)?;
                let filesz = u64_at(ph, 32)?;
                let memsz = u64_at(ph, 40)?;
                match p_type {
                    PT_LOAD => {
                        if filesz > memsz {
                            return Err(ElfError::Malformed("segment file size above memory size"));
                        }
                        slice(bytes, offset, filesz, "segment data")?;
                        paddr
                            .checked_add(memsz)
                            .ok_or(ElfError::Malformed("segment address"))?;
                        if memsz > 0 {
                            segments.push(Segment {
                                paddr,
                                offset,
                                filesz,
                                memsz,
                            });
                        }
                    }
                    PT_NOTE => {
                        parse_notes(slice(bytes, offset, filesz, "note segment")?, &mut notes)?
                    }
                    _ => {}
                }
            }
        }
        if shnum > 0 && shoff != 0 && shentsize >= 64 {
            if let Ok(table) = slice(bytes, shoff, shentsize * shnum, "section headers") {
                for sh in table.chunks_exact(shentsize as usize) {
                    if u32_at(sh, 4)? == SHT_NOTE {
                        let off = u64_at(sh, 24)?;
                        let size = u64_at(sh, 32)?;
                        let mut found = Vec::new();
                        parse_notes(slice(bytes, off, size, "note section")?, &mut found)?;
                        for n in found {
                            if !notes.contains(&n) {
                                notes.push(n);
                            }
                        }
                    }
                }
            }
        }
        if segments.is_empty() {
            return Err(ElfError::NoSegments);
        }
        Ok(Self {
            entry,
            segments,
            notes,
        })
    }

    /// True when the image carries the rxen test guest note.
    pub fn is_rxen_guest(&self) -> bool {
        self.notes
            .iter()
            .any(|n| n.name == RXEN_NOTE_NAME && n.kind == RXEN_NOTE_TYPE)
    }

    /// First byte after the highest segment.
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.paddr.saturating_add(s.memsz))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal ELF with one PT_LOAD of `code` at `paddr` and optionally the RXEN note.
    pub(crate) fn build_elf(code: &[u8], paddr: u64, bss: u64, rxen_note: bool) -> Vec<u8> {
        let mut note = Vec::new();
        if rxen_note {
            note.extend_from_slice(&5u32.to_le_bytes());
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&1u32.to_le_bytes());
            note.extend_from_slice(b"RXEN\0\0\0\0");
            note.extend_from_slice(&1u32.to_le_bytes());
        }
        let phnum: u16 = if rxen_note { 2 } else { 1 };
        let data_off = 64 + 56 * u64::from(phnum);
        let note_off = data_off + code.len() as u64;
        let mut b = vec![0u8; 64];
        b[0..4].copy_from_slice(b"\x7FELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[24..32].copy_from_slice(&paddr.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&phnum.to_le_bytes());
        let mut ph = |t: u32, off: u64, addr: u64, fsz: u64, msz: u64| {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&t.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&addr.to_le_bytes());
            p[24..32].copy_from_slice(&addr.to_le_bytes());
            p[32..40].copy_from_slice(&fsz.to_le_bytes());
            p[40..48].copy_from_slice(&msz.to_le_bytes());
            b.extend_from_slice(&p);
        };
        ph(
            PT_LOAD,
            data_off,
            paddr,
            code.len() as u64,
            code.len() as u64 + bss,
        );
        if rxen_note {
            ph(PT_NOTE, note_off, 0, note.len() as u64, note.len() as u64);
        }
        b.extend_from_slice(code);
        b.extend_from_slice(&note);
        b
    }

    #[test]
    fn parses_segments_and_note() {
        let elf = build_elf(&[0x90, 0xF4], 0x10_0000, 0x100, true);
        let img = ElfImage::parse(&elf).expect("parse");
        assert_eq!(img.entry, 0x10_0000);
        assert_eq!(img.segments.len(), 1);
        assert_eq!(img.segments[0].paddr, 0x10_0000);
        assert_eq!(img.segments[0].filesz, 2);
        assert_eq!(img.segments[0].memsz, 0x102);
        assert!(img.is_rxen_guest());
        assert_eq!(img.end(), 0x10_0102);
    }

    #[test]
    fn no_note_is_not_rxen() {
        let elf = build_elf(&[0x90], 0x100_0000, 0, false);
        let img = ElfImage::parse(&elf).expect("parse");
        assert!(!img.is_rxen_guest());
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        assert_eq!(ElfImage::parse(b"hello"), Err(ElfError::NotElf));
        let elf = build_elf(&[0x90; 16], 0x10_0000, 0, true);
        for cut in 0..elf.len() {
            let _ = ElfImage::parse(&elf[..cut]);
        }
        let mut bad = elf.clone();
        // Point the program headers far outside the file.
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(ElfImage::parse(&bad).is_err());
        let mut flipped = elf;
        for i in 0..flipped.len() {
            flipped[i] ^= 0xFF;
            let _ = ElfImage::parse(&flipped);
            flipped[i] ^= 0xFF;
        }
    }
}
