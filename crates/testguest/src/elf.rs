//! A minimal ELF64 reader for checking and loading the embedded image in tests.

/// ELF machine number of x86_64.
pub const EM_X86_64: u16 = 62;
/// ELF type of an executable.
pub const ET_EXEC: u16 = 2;
/// Program header type of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// Program header type of a note segment.
pub const PT_NOTE: u32 = 4;
/// Section header type of a symbol table.
const SHT_SYMTAB: u32 = 2;

/// The parts of an ELF64 file the tests look at.
#[derive(Debug)]
pub struct Elf {
    /// e_type.
    pub kind: u16,
    /// e_machine.
    pub machine: u16,
    /// e_entry.
    pub entry: u64,
    /// The program headers.
    pub segments: Vec<Segment>,
}

/// One program header.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    /// p_type.
    pub kind: u32,
    /// p_offset.
    pub offset: u64,
    /// p_vaddr.
    pub vaddr: u64,
    /// p_paddr.
    pub paddr: u64,
    /// p_filesz.
    pub filesz: u64,
    /// p_memsz.
    pub memsz: u64,
}

/// One ELF note.
#[derive(Debug)]
pub struct Note {
    /// The owner name, without its terminating NUL.
    pub name: Vec<u8>,
    /// n_type.
    pub kind: u32,
    /// The descriptor bytes.
    pub desc: Vec<u8>,
}

fn bytes_at(data: &[u8], offset: u64, len: u64) -> Result<&[u8], String> {
    let start = usize::try_from(offset).map_err(|e| e.to_string())?;
    let len = usize::try_from(len).map_err(|e| e.to_string())?;
    let end = start.checked_add(len).ok_or("offset overflow")?;
    data.get(start..end).ok_or_else(|| {
        format!(
            "{len} bytes at {start:#x} are past the end ({:#x})",
            data.len()
        )
    })
}

fn u16_at(data: &[u8], offset: u64) -> Result<u16, String> {
    let b = bytes_at(data, offset, 2)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], offset: u64) -> Result<u32, String> {
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes_at(data, offset, 4)?);
    Ok(u32::from_le_bytes(b))
}

fn u64_at(data: &[u8], offset: u64) -> Result<u64, String> {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes_at(data, offset, 8)?);
    Ok(u64::from_le_bytes(b))
}

/// Parses the header and program headers of a little-endian ELF64 file.
pub fn parse(data: &[u8]) -> Result<Elf, String> {
    if bytes_at(data, 0, 4)? != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if bytes_at(data, 4, 2)? != [2, 1] {
        return Err("not a little-endian ELF64 file".into());
    }
    let phoff = u64_at(data, 0x20)?;
    let phentsize = u64::from(u16_at(data, 0x36)?);
    let phnum = u64::from(u16_at(data, 0x38)?);
    let mut segments = Vec::new();
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        segments.push(Segment {
            kind: u32_at(data, at)?,
            offset: u64_at(data, at + 8)?,
            vaddr: u64_at(data, at + 16)?,
            paddr: u64_at(data, at + 24)?,
            filesz: u64_at(data, at + 32)?,
            memsz: u64_at(data, at + 40)?,
        });
    }
    Ok(Elf {
        kind: u16_at(data, 0x10)?,
        machine: u16_at(data, 0x12)?,
        entry: u64_at(data, 0x18)?,
        segments,
    })
}

/// Returns the file bytes of a segment.
pub fn segment_bytes<'a>(data: &'a [u8], segment: &Segment) -> Result<&'a [u8], String> {
    bytes_at(data, segment.offset, segment.filesz)
}

/// Reads the notes in a PT_NOTE segment.
pub fn notes(data: &[u8], segment: &Segment) -> Result<Vec<Note>, String> {
    let bytes = segment_bytes(data, segment)?;
    let mut notes = Vec::new();
    let mut at = 0u64;
    let align4 = |n: u64| n.div_ceil(4) * 4;
    while at + 12 <= bytes.len() as u64 {
        let namesz = u64::from(u32_at(bytes, at)?);
        let descsz = u64::from(u32_at(bytes, at + 4)?);
        let kind = u32_at(bytes, at + 8)?;
        let name = bytes_at(bytes, at + 12, namesz)?;
        let name = name.strip_suffix(&[0]).unwrap_or(name).to_vec();
        let desc_at = at + 12 + align4(namesz);
        let desc = bytes_at(bytes, desc_at, descsz)?.to_vec();
        notes.push(Note { name, kind, desc });
        at = desc_at + align4(descsz);
    }
    Ok(notes)
}

/// Looks up a symbol's value in the file's symbol table (if it was not stripped).
pub fn symbol(data: &[u8], name: &str) -> Result<Option<u64>, String> {
    let shoff = u64_at(data, 0x28)?;
    let shentsize = u64::from(u16_at(data, 0x3A)?);
    let shnum = u64::from(u16_at(data, 0x3C)?);
    let section = |i: u64| -> Result<(u32, u64, u64, u32, u64), String> {
        let at = shoff + i * shentsize;
        // (sh_type, sh_offset, sh_size, sh_link, sh_entsize)
        Ok((
            u32_at(data, at + 4)?,
            u64_at(data, at + 24)?,
            u64_at(data, at + 32)?,
            u32_at(data, at + 40)?,
            u64_at(data, at + 56)?,
        ))
    };
    for i in 0..shnum {
        let (kind, offset, size, link, entsize) = section(i)?;
        if kind != SHT_SYMTAB || entsize == 0 {
            continue;
        }
        let (_, strings, strings_size, _, _) = section(u64::from(link))?;
        let strings = bytes_at(data, strings, strings_size)?;
        for entry in 0..size / entsize {
            let at = offset + entry * entsize;
            let name_at = usize::try_from(u32_at(data, at)?).map_err(|e| e.to_string())?;
            let symbol_name = strings.get(name_at..).unwrap_or_default();
            let symbol_name = symbol_name.split(|&b| b == 0).next().unwrap_or_default();
            if symbol_name == name.as_bytes() {
                return Ok(Some(u64_at(data, at + 8)?));
            }
        }
    }
    Ok(None)
}
