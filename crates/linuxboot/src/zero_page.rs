//! The zero page (`boot_params`): setup header, command line, initrd and e820 map.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{
    boot_params, setup_header, CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH,
};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::cmdline::DEFAULT_CMDLINE_LIMIT;
use crate::e820::E820Entry;
use crate::initrd::DEFAULT_INITRD_ADDR_MAX;
use crate::kernel::SETUP_HEADER_MAGIC;

/// `boot_flag` of every setup header.
pub const BOOT_FLAG_MAGIC: u16 = 0xAA55;
/// Boot protocol version written into the header made up for a vmlinux.
pub const VMLINUX_PROTOCOL_VERSION: u16 = 0x020c;
/// `type_of_loader`: a boot loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `heap_end_ptr`: end of the setup heap (0xe000) minus 0x200, as boot.rst suggests.
pub const HEAP_END_PTR: u16 = 0xde00;

/// Errors building or writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// The e820 map does not fit in the zero page.
    #[error("{0} e820 entries do not fit in the zero page (at most 128)")]
    TooManyE820Entries(usize),
    /// An address the header holds in 32 bits is above 4 GiB.
    #[error("{what} address {addr:#x} does not fit in 32 bits")]
    AddressTooHigh {
        /// Which address.
        what: &'static str,
        /// The address.
        addr: u64,
    },
    /// Guest memory could not be written.
    #[error("cannot write the zero page: {0}")]
    Write(#[from] linux_loader::configurator::Error),
}

/// What goes into the zero page besides the setup header.
#[derive(Debug, Clone, Copy)]
pub struct ZeroPageConfig<'a> {
    /// Guest address of the NUL-terminated command line.
    pub cmdline: GuestAddress,
    /// Guest address and size of the initrd, if any.
    pub initrd: Option<(GuestAddress, u64)>,
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// Guest address of the ACPI RSDP, if the machine has ACPI tables.
    pub rsdp: Option<GuestAddress>,
}

/// The setup header made up for a vmlinux, which carries none.
pub fn vmlinux_setup_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG_MAGIC,
        header: SETUP_HEADER_MAGIC,
        version: VMLINUX_PROTOCOL_VERSION,
        loadflags: LOADED_HIGH,
        code32_start: crate::layout::KERNEL_START as u32,
        initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
        cmdline_size: DEFAULT_CMDLINE_LIMIT,
        ..Default::default()
    }
}

/// Converts an address the header keeps in 32 bits.
fn low32(what: &'static str, addr: u64) -> Result<u32, ZeroPageError> {
    u32::try_from(addr).map_err(|_| ZeroPageError::AddressTooHigh { what, addr })
}

/// Builds the zero page from the kernel's setup header (or a made-up one) and `cfg`.
pub fn build_boot_params(
    hdr: setup_header,
    cfg: &ZeroPageConfig<'_>,
) -> Result<boot_params, ZeroPageError> {
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = HEAP_END_PTR;
    params.hdr.cmd_line_ptr = low32("command line", cfg.cmdline.0)?;
    params.ext_cmd_line_ptr = 0;
    if let Some((addr, size)) = cfg.initrd {
        params.hdr.ramdisk_image = low32("initrd", addr.0)?;
        params.hdr.ramdisk_size = low32("initrd size", size)?;
    }
    params.acpi_rsdp_addr = cfg.rsdp.map_or(0, |a| a.0);
    params.ext_ramdisk_image = 0;
    params.ext_ramdisk_size = 0;

    if cfg.e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(ZeroPageError::TooManyE820Entries(cfg.e820.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(cfg.e820) {
        *slot = entry.to_boot_entry();
    }
    // At most 128, checked above.
    params.e820_entries = cfg.e820.len() as u8;
    Ok(params)
}

/// Writes `params` into guest memory at `addr`.
pub fn write_boot_params<M: GuestMemoryBackend>(
    mem: &M,
    addr: GuestAddress,
    params: &boot_params,
) -> Result<(), ZeroPageError> {
    LinuxBootConfigurator::write_bootparams::<M>(&BootParams::new(params, addr), mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820::e820_map;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().expect("2"))
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().expect("4"))
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().expect("8"))
    }

    #[test]
    fn vmlinux_zero_page_bytes() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("m");
        mem.write_slice(&[0xEE; 0x1100], GuestAddress(0x7000))
            .expect("fill");
        let map = e820_map(256 << 20);
        let params = build_boot_params(
            vmlinux_setup_header(),
            &ZeroPageConfig {
                cmdline: GuestAddress(0x2_0000),
                initrd: Some((GuestAddress(0xFF_0000), 0x1234)),
                e820: &map,
                rsdp: None,
            },
        )
        .expect("build");
        write_boot_params(&mem, GuestAddress(0x7000), &params).expect("write");

        let mut zp = vec![0u8; 0x1001];
        mem.read_slice(&mut zp, GuestAddress(0x7000)).expect("read");
        assert_eq!(zp[0x1000], 0xEE, "exactly one page written");
        assert_eq!(zp[0x1e8], 3, "e820_entries");
        assert_eq!(u16_at(&zp, 0x1fe), 0xAA55, "boot_flag");
        assert_eq!(&zp[0x202..0x206], b"HdrS");
        assert_eq!(u16_at(&zp, 0x206), 0x020c, "version");
        assert_eq!(zp[0x210], 0xff, "type_of_loader");
        assert_eq!(zp[0x211], 0x81, "loadflags LOADED_HIGH | CAN_USE_HEAP");
        assert_eq!(u32_at(&zp, 0x218), 0xFF_0000, "ramdisk_image");
        assert_eq!(u32_at(&zp, 0x21c), 0x1234, "ramdisk_size");
        assert_eq!(u16_at(&zp, 0x224), 0xde00, "heap_end_ptr");
        assert_eq!(u32_at(&zp, 0x228), 0x2_0000, "cmd_line_ptr");
        assert_eq!(u32_at(&zp, 0x22c), 0x7fff_ffff, "initrd_addr_max");
        assert_eq!(u32_at(&zp, 0x238), 2047, "cmdline_size");
        assert_eq!(u32_at(&zp, 0xc0), 0, "ext_ramdisk_image");
        assert_eq!(u32_at(&zp, 0xc4), 0, "ext_ramdisk_size");
        assert_eq!(u32_at(&zp, 0xc8), 0, "ext_cmd_line_ptr");
        // e820_table at 0x2d0, 20 bytes per entry.
        let expect = [
            (0u64, 0x9_fc00u64, 1u32),
            (0x9_fc00, 0x6_0400, 2),
            (0x10_0000, (256 << 20) - 0x10_0000, 1),
        ];
        for (i, (addr, size, kind)) in expect.iter().enumerate() {
            let off = 0x2d0 + 20 * i;
            assert_eq!(
                (
                    u64_at(&zp, off),
                    u64_at(&zp, off + 8),
                    u32_at(&zp, off + 16)
                ),
                (*addr, *size, *kind),
                "e820 entry {i}"
            );
        }
        assert_eq!(&zp[0x2d0 + 60..0x2d0 + 80], &[0u8; 20], "no 4th entry");
        // Everything before the e820 count that we do not set stays zero.
        assert!(zp[..0xc0].iter().all(|&b| b == 0));
    }

    #[test]
    fn bzimage_header_is_kept_and_completed() {
        let mut hdr = vmlinux_setup_header();
        hdr.version = 0x020f;
        hdr.setup_sects = 27;
        hdr.kernel_alignment = 0x20_0000;
        hdr.init_size = 0x123_4000;
        hdr.loadflags = LOADED_HIGH | 0x20; // QUIET_FLAG kept
        let p = build_boot_params(
            hdr,
            &ZeroPageConfig {
                cmdline: GuestAddress(0x2_0000),
                initrd: None,
                e820: &[],
                rsdp: None,
            },
        )
        .expect("build");
        assert_eq!(
            (
                { p.hdr.version },
                { p.hdr.setup_sects },
                { p.hdr.kernel_alignment },
                { p.hdr.init_size },
                { p.hdr.loadflags },
                { p.hdr.ramdisk_image },
                { p.hdr.ramdisk_size },
                p.e820_entries
            ),
            (0x020f, 27, 0x20_0000, 0x123_4000, 0xa1, 0, 0, 0)
        );
    }

    #[test]
    fn limits() {
        let many = vec![e820_map(1 << 30)[0]; 129];
        let cfg = ZeroPageConfig {
            cmdline: GuestAddress(0x2_0000),
            initrd: None,
            e820: &many,
            rsdp: None,
        };
        assert!(matches!(
            build_boot_params(vmlinux_setup_header(), &cfg),
            Err(ZeroPageError::TooManyE820Entries(129))
        ));
        let cfg = ZeroPageConfig {
            cmdline: GuestAddress(0x2_0000),
            initrd: Some((GuestAddress(0x1_0000_0000), 1)),
            e820: &[],
            rsdp: None,
        };
        assert!(matches!(
            build_boot_params(vmlinux_setup_header(), &cfg),
            Err(ZeroPageError::AddressTooHigh { what: "initrd", .. })
        ));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x7800)]).expect("m");
        let p = build_boot_params(
            vmlinux_setup_header(),
            &ZeroPageConfig {
                cmdline: GuestAddress(0),
                initrd: None,
                e820: &[],
                rsdp: None,
            },
        )
        .expect("build");
        assert!(write_boot_params(&mem, GuestAddress(0x7000), &p).is_err());
    }
}
