//! The test guest's ELF, written to a file that QEMU can load with `-kernel`.

use std::path::{Path, PathBuf};

use crate::error::{BenchError, Result};

/// Xen's ELF note type for the 32-bit PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Writes the embedded test guest to `dir/testguest.elf`.
pub fn write_to(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("testguest.elf");
    std::fs::write(&p, rxen_testguest::image())
        .map_err(|e| BenchError::io("write the guest ELF", e))?;
    Ok(p)
}

/// Whether an ELF image carries a Xen PVH entry note (`Xen`, type 18), which QEMU's `-kernel` needs.
pub fn has_pvh_note(image: &[u8]) -> bool {
    // A note: namesz = 4, descsz = 4 or 8, type = 18, name "Xen\0".
    image.windows(16).any(|w| {
        let le = |i: usize| u32::from_le_bytes([w[i], w[i + 1], w[i + 2], w[i + 3]]);
        le(0) == 4
            && matches!(le(4), 4 | 8)
            && le(8) == XEN_ELFNOTE_PHYS32_ENTRY
            && &w[12..16] == b"Xen\0"
    })
}

#[cfg(test)]
mod tests {
    use super::has_pvh_note;

    #[test]
    fn finds_the_note() {
        let mut img = vec![0u8; 32];
        img.extend_from_slice(&[
            4, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0, b'X', b'e', b'n', 0, 0, 0, 0x10, 0,
        ]);
        assert!(has_pvh_note(&img));
        assert!(!has_pvh_note(&img[..40]));
    }
}
