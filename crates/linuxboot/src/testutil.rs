//! Builders of tiny fake kernel images for the tests.

/// One PT_LOAD segment of a fake vmlinux.
pub struct ElfSegment {
    /// Physical load address.
    pub paddr: u64,
    /// File contents (p_filesz bytes).
    pub data: Vec<u8>,
    /// Size in memory (>= data.len(); the rest is bss).
    pub memsz: u64,
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// A 64-bit x86_64 ELF executable with the given entry and PT_LOAD segments, plus a
/// PT_GNU_STACK header that the loader must skip.
pub fn vmlinux(entry: u64, segments: &[ElfSegment]) -> Vec<u8> {
    let phnum = segments.len() + 1;
    let data_start = 64 + 56 * phnum;
    let mut image = vec![0u8; data_start];
    put(&mut image, 0, b"\x7fELF");
    image[4] = 2; // ELFCLASS64
    image[5] = 1; // little-endian
    image[6] = 1; // EV_CURRENT
    put(&mut image, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut image, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut image, 20, &1u32.to_le_bytes());
    put(&mut image, 24, &entry.to_le_bytes());
    put(&mut image, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut image, 52, &64u16.to_le_bytes()); // e_ehsize
    put(&mut image, 54, &56u16.to_le_bytes()); // e_phentsize
    put(&mut image, 56, &(phnum as u16).to_le_bytes());

    // PT_GNU_STACK first: not loaded.
    put(&mut image, 64, &0x6474_e551u32.to_le_bytes());

    let mut offset = data_start;
    for (i, seg) in segments.iter().enumerate() {
        let ph = 64 + 56 * (i + 1);
        put(&mut image, ph, &1u32.to_le_bytes()); // PT_LOAD
        put(&mut image, ph + 4, &7u32.to_le_bytes()); // RWX
        put(&mut image, ph + 8, &(offset as u64).to_le_bytes());
        // Kernel-style virtual address, different from the physical one.
        put(
            &mut image,
            ph + 16,
            &(0xffff_ffff_8000_0000u64 + seg.paddr).to_le_bytes(),
        );
        put(&mut image, ph + 24, &seg.paddr.to_le_bytes());
        put(&mut image, ph + 32, &(seg.data.len() as u64).to_le_bytes());
        put(&mut image, ph + 40, &seg.memsz.to_le_bytes());
        put(&mut image, ph + 48, &0x1000u64.to_le_bytes());
        image.extend_from_slice(&seg.data);
        offset += seg.data.len();
    }
    image
}

/// The setup header fields a fake bzImage carries.
#[derive(Clone, Copy)]
pub struct BzImageSpec {
    pub setup_sects: u8,
    pub version: u16,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub relocatable: u8,
    pub kernel_alignment: u32,
    pub pref_address: u64,
    pub init_size: u32,
    pub cmdline_size: u32,
    pub initrd_addr_max: u32,
}

impl Default for BzImageSpec {
    fn default() -> Self {
        BzImageSpec {
            setup_sects: 2,
            version: 0x020f,
            loadflags: 0x01,  // LOADED_HIGH
            xloadflags: 0x03, // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
            relocatable: 1,
            kernel_alignment: 0x20_0000,
            pref_address: 0x100_0000,
            init_size: 0x80_0000,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
        }
    }
}

/// A bzImage: setup sectors (filled with 0x11) holding the header at 0x1f1, then `payload`.
pub fn bzimage(spec: &BzImageSpec, payload: &[u8]) -> Vec<u8> {
    let sects = if spec.setup_sects == 0 {
        4
    } else {
        usize::from(spec.setup_sects)
    };
    let mut image = vec![0x11u8; (sects + 1) * 512];
    put(&mut image, 0x1f1, &[spec.setup_sects]);
    put(&mut image, 0x1f2, &[0; 0x26c - 0x1f2]);
    put(&mut image, 0x1fa, &0xffffu16.to_le_bytes()); // vid_mode
    put(&mut image, 0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(&mut image, 0x200, &[0xeb, 0x66]); // jump
    put(&mut image, 0x202, b"HdrS");
    put(&mut image, 0x206, &spec.version.to_le_bytes());
    put(&mut image, 0x20e, &0x3c0u16.to_le_bytes()); // kernel_version
    put(&mut image, 0x211, &[spec.loadflags]);
    put(&mut image, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(&mut image, 0x22c, &spec.initrd_addr_max.to_le_bytes());
    put(&mut image, 0x230, &spec.kernel_alignment.to_le_bytes());
    put(&mut image, 0x234, &[spec.relocatable, 0x15]);
    put(&mut image, 0x236, &spec.xloadflags.to_le_bytes());
    put(&mut image, 0x238, &spec.cmdline_size.to_le_bytes());
    put(&mut image, 0x258, &spec.pref_address.to_le_bytes());
    put(&mut image, 0x260, &spec.init_size.to_le_bytes());
    image.extend_from_slice(payload);
    image
}
