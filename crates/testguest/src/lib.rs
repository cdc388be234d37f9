//! The embedded paravirtual test guest image.
//!
//! `build.rs` builds the no_std kernel in `guest/` and this crate embeds the
//! resulting ELF, so every rxen binary can boot it without any files on disk.
//! Its boot protocol, I/O ports and console language are in
//! `docs/internals.md`.

/// The name that selects it in a config: `kernel = "builtin:testguest"`.
pub const BUILTIN_NAME: &str = "testguest";

/// The most vCPUs the test guest runs (`MAX_VCPUS` in `guest/src/entry.rs`: one stack and one
/// bit of its online mask each).
pub const MAX_VCPUS: u32 = 64;

static IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testguest.elf"));

/// The test guest's ELF image.
pub fn image() -> &'static [u8] {
    IMAGE
}

#[cfg(test)]
mod elf;

#[cfg(test)]
mod limits {
    #[test]
    fn the_vcpu_limit_is_the_guests() {
        let entry = include_str!("../../../guest/src/entry.rs");
        let want = format!("pub const MAX_VCPUS: usize = {};", super::MAX_VCPUS);
        assert!(
            entry.lines().any(|l| l.trim() == want),
            "guest/src/entry.rs no longer says {want}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::elf::{self, EM_X86_64, ET_EXEC, PT_LOAD, PT_NOTE};
    use super::{image, BUILTIN_NAME};

    const ONE_MIB: u64 = 1 << 20;

    #[test]
    fn image_is_an_x86_64_executable_entered_at_or_above_1_mib() {
        let elf = elf::parse(image()).expect("the embedded image parses as ELF64");
        assert_eq!(elf.machine, EM_X86_64);
        assert_eq!(elf.kind, ET_EXEC);
        assert!(
            elf.entry >= ONE_MIB,
            "entry {:#x} is below 1 MiB",
            elf.entry
        );
    }

    #[test]
    fn loadable_segments_sit_at_or_above_1_mib_and_hold_the_entry() {
        let elf = elf::parse(image()).expect("the embedded image parses as ELF64");
        let loads: Vec<_> = elf.segments.iter().filter(|s| s.kind == PT_LOAD).collect();
        assert!(!loads.is_empty(), "no PT_LOAD segments");
        for segment in &loads {
            assert!(
                segment.paddr >= ONE_MIB,
                "segment at {:#x} is below 1 MiB",
                segment.paddr
            );
            assert_eq!(segment.paddr, segment.vaddr, "the image is identity-mapped");
            assert!(segment.memsz >= segment.filesz);
            elf::segment_bytes(image(), segment).expect("segment bytes lie inside the file");
        }
        assert!(loads
            .iter()
            .any(|s| (s.paddr..s.paddr + s.memsz).contains(&elf.entry)));
        // The 64 per-vCPU stacks live in memsz only, so the image stays small.
        assert!(image().len() < 1 << 20, "image is {} bytes", image().len());
    }

    #[test]
    fn image_carries_the_rxen_note() {
        let elf = elf::parse(image()).expect("the embedded image parses as ELF64");
        let notes: Vec<_> = elf
            .segments
            .iter()
            .filter(|s| s.kind == PT_NOTE)
            .flat_map(|s| elf::notes(image(), s).expect("notes parse"))
            .collect();
        let rxen = notes
            .iter()
            .find(|n| n.name == b"RXEN" && n.kind == 1)
            .unwrap_or_else(|| panic!("no RXEN note of type 1 among {notes:?}"));
        assert_eq!(rxen.desc, [1, 0, 0, 0], "the RXEN note carries version 1");
    }

    #[test]
    fn image_carries_the_xen_pvh_entry_note() {
        let elf = elf::parse(image()).expect("the embedded image parses as ELF64");
        let notes: Vec<_> = elf
            .segments
            .iter()
            .filter(|s| s.kind == PT_NOTE)
            .flat_map(|s| elf::notes(image(), s).expect("notes parse"))
            .collect();
        let xen = notes
            .iter()
            .find(|n| n.name == b"Xen" && n.kind == 18)
            .unwrap_or_else(|| panic!("no Xen PHYS32_ENTRY note among {notes:?}"));
        let entry = u64::from_le_bytes(xen.desc.as_slice().try_into().expect("8-byte entry"));
        let pvh = elf::symbol(image(), "rxen_pvh_start").expect("symbol table parses");
        assert_eq!(Some(entry), pvh);
        assert!(entry < 1 << 32, "the PVH entry must be a 32-bit address");
    }

    #[test]
    fn symbols_are_kept_and_start_is_the_entry() {
        let elf = elf::parse(image()).expect("the embedded image parses as ELF64");
        let start = elf::symbol(image(), "_start").expect("symbol table parses");
        assert_eq!(start, Some(elf.entry));
        assert_eq!(
            elf::symbol(image(), "no_such_symbol").expect("symbol table parses"),
            None
        );
    }

    #[test]
    fn builtin_name_is_testguest() {
        assert_eq!(BUILTIN_NAME, "testguest");
        assert_eq!(format!("builtin:{BUILTIN_NAME}"), "builtin:testguest");
    }
}
