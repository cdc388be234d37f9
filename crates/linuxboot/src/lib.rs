//! The Linux x86 boot protocol: zero page, e820 map, MP table, ACPI tables.
//!
//! [`load_linux`] loads a `vmlinux` (ELF) or `bzImage` kernel, an optional initrd and the
//! command line into guest memory, writes the zero page (`boot_params`) with the e820 map at
//! [`BOOT_PARAMS_START`], and an Intel MP table so that Linux finds its CPUs without ACPI.
//! The vCPU then starts in 64-bit mode at [`LinuxBoot::entry`] with RSI = [`LinuxBoot::boot_params`].
//! The building blocks are public for the VMM to reuse.

#![deny(missing_docs)]

pub mod acpi;
pub mod cmdline;
pub mod e820;
pub mod initrd;
pub mod kernel;
pub mod layout;
pub mod mptable;
pub mod zero_page;

#[cfg(test)]
mod testutil;

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile};

pub use cmdline::{write_cmdline, CmdlineError};
pub use e820::{e820_map, E820Entry, E820Type, MemoryLayoutError};
pub use initrd::InitrdError;
pub use kernel::{load_kernel, KernelError, KernelFormat, LoadedKernel};
pub use layout::*;
pub use mptable::{write_mptable, MpTableError};
pub use zero_page::ZeroPageError;

/// Where and how to start a loaded Linux kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxBoot {
    /// The 64-bit entry point (guest physical; RIP at start).
    pub entry: GuestAddress,
    /// The zero page (`boot_params`), 0x7000; goes in RSI.
    pub boot_params: GuestAddress,
}

/// Errors booting Linux, each naming the file or step that failed.
#[derive(Debug, thiserror::Error)]
pub enum LinuxBootError {
    /// Guest memory does not have the shape this crate lays Linux out in.
    #[error(transparent)]
    Memory(#[from] MemoryLayoutError),
    /// The kernel file could not be opened.
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        /// The kernel path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel could not be loaded.
    #[error("kernel {path}: {source}")]
    Kernel {
        /// The kernel path.
        path: PathBuf,
        /// Why.
        source: KernelError,
    },
    /// The initrd file could not be opened or measured.
    #[error("cannot open initrd {path}: {source}")]
    OpenInitrd {
        /// The initrd path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The initrd could not be placed or loaded.
    #[error("initrd {path}: {source}")]
    Initrd {
        /// The initrd path.
        path: PathBuf,
        /// Why.
        source: InitrdError,
    },
    /// The command line was refused.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// The zero page could not be built or written.
    #[error(transparent)]
    ZeroPage(#[from] ZeroPageError),
    /// The MP table could not be built or written.
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    /// The ACPI tables could not be built or written.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
}

/// An initrd to load: a file opened already, or bytes read already (from a guest's own disk),
/// each with the name errors give it.
#[derive(Debug)]
pub enum Initrd {
    /// An open file.
    File(PathBuf, File),
    /// Bytes in memory.
    Bytes(PathBuf, Vec<u8>),
}

impl Initrd {
    /// The name errors give it.
    pub fn name(&self) -> &Path {
        match self {
            Initrd::File(p, _) | Initrd::Bytes(p, _) => p,
        }
    }

    /// Its size in bytes.
    pub fn size(&self) -> std::io::Result<u64> {
        match self {
            Initrd::File(_, f) => Ok(f.metadata()?.len()),
            Initrd::Bytes(_, b) => Ok(b.len() as u64),
        }
    }
}

/// Loads kernel (vmlinux ELF or bzImage, detected by content), optional initrd, command line;
/// writes boot_params with e820 and the MP table for `vcpus` CPUs.
pub fn load_linux<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    vcpus: u8,
) -> Result<LinuxBoot, LinuxBootError> {
    let mut kernel_file = File::open(kernel).map_err(|source| LinuxBootError::OpenKernel {
        path: kernel.to_path_buf(),
        source,
    })?;
    let initrd = match initrd {
        Some(path) => Some(Initrd::File(
            path.to_path_buf(),
            File::open(path).map_err(|source| LinuxBootError::OpenInitrd {
                path: path.to_path_buf(),
                source,
            })?,
        )),
        None => None,
    };
    load_linux_from(mem, &mut kernel_file, kernel, initrd, cmdline, vcpus, None)
}

/// Like [`load_linux`], with the kernel image read from `kernel` (e.g. a `Cursor` over bytes
/// already in memory) and the initrd from a file opened already (with its path, for errors);
/// `kernel_name` only names the kernel in errors. With `acpi`, the ACPI tables
/// that describe that machine are written too and the zero page points at them (its vCPU
/// count must be `vcpus`).
pub fn load_linux_from<M, R>(
    mem: &M,
    kernel: &mut R,
    kernel_name: &Path,
    initrd: Option<Initrd>,
    cmdline: &str,
    vcpus: u8,
    acpi: Option<&acpi::Machine>,
) -> Result<LinuxBoot, LinuxBootError>
where
    M: GuestMemoryBackend,
    R: Read + ReadVolatile + Seek,
{
    let map = e820::e820_for_memory(mem)?;
    let ram_end = e820::low_ram_end(e820::guest_ram_size(mem));

    // Cheap checks first, before anything is written.
    if vcpus == 0 || vcpus > mptable::MAX_VCPUS {
        return Err(MpTableError::BadVcpuCount(vcpus).into());
    }
    if let Some(m) = acpi {
        if m.vcpus != vcpus {
            return Err(acpi::AcpiError::BadMachine(format!(
                "{} vCPUs in the tables, {vcpus} booted",
                m.vcpus
            ))
            .into());
        }
    }

    let kernel_err = |source| LinuxBootError::Kernel {
        path: kernel_name.to_path_buf(),
        source,
    };
    let loaded = load_kernel(mem, kernel, ram_end).map_err(kernel_err)?;
    let hdr = loaded
        .setup_header
        .unwrap_or_else(zero_page::vmlinux_setup_header);

    // The kernel's limit, and the room up to the EBDA (NUL excluded).
    let room = usize::try_from(CMDLINE_MAX_SIZE - 1).unwrap_or(usize::MAX);
    let limit = usize::try_from(hdr.cmdline_size)
        .unwrap_or(usize::MAX)
        .min(room);
    write_cmdline(mem, GuestAddress(CMDLINE_START), cmdline, limit)?;

    let initrd_placed = match initrd {
        None => None,
        Some(initrd) => {
            let path = initrd.name().to_path_buf();
            let open_err = |source| LinuxBootError::OpenInitrd {
                path: path.clone(),
                source,
            };
            let initrd_err = |source| LinuxBootError::Initrd {
                path: path.clone(),
                source,
            };
            let size = initrd.size().map_err(open_err)?;
            let lowest = loaded
                .end
                .checked_add(PAGE_SIZE - 1)
                .map(|e| e & !(PAGE_SIZE - 1))
                .unwrap_or(u64::MAX);
            let addr = initrd::place_initrd(size, hdr.initrd_addr_max, lowest, ram_end)
                .map_err(initrd_err)?;
            match initrd {
                Initrd::File(_, mut file) => initrd::load_initrd(mem, &mut file, addr, size),
                Initrd::Bytes(_, bytes) => initrd::load_initrd(
                    mem,
                    &mut std::io::Cursor::new(bytes.as_slice()),
                    addr,
                    size,
                ),
            }
            .map_err(initrd_err)?;
            Some((addr, size))
        }
    };

    let rsdp = match acpi {
        Some(m) => Some(acpi::write_acpi_tables(mem, m)?),
        None => None,
    };
    let params = zero_page::build_boot_params(
        hdr,
        &zero_page::ZeroPageConfig {
            cmdline: GuestAddress(CMDLINE_START),
            initrd: initrd_placed,
            e820: &map,
            rsdp,
        },
    )?;
    zero_page::write_boot_params(mem, GuestAddress(BOOT_PARAMS_START), &params)?;
    write_mptable(mem, vcpus)?;

    Ok(LinuxBoot {
        entry: loaded.entry,
        boot_params: GuestAddress(BOOT_PARAMS_START),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{bzimage, vmlinux, BzImageSpec, ElfSegment};
    use std::io::Write;
    use vm_memory::{Bytes, GuestMemoryMmap};

    const MIB: u64 = 1 << 20;

    fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        f.write_all(bytes).expect("write");
        f.flush().expect("flush");
        f
    }

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).expect("mem")
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).expect("read");
        buf
    }

    fn u32_at(mem: &GuestMemoryMmap, addr: u64) -> u32 {
        mem.read_obj(GuestAddress(addr)).expect("read")
    }

    fn initrd_bytes() -> Vec<u8> {
        (0..0x2345u32).map(|i| (i % 241) as u8).collect()
    }

    #[test]
    fn vmlinux_with_initrd_end_to_end() {
        let mem = mem(64 * MIB);
        let kernel = file(&vmlinux(
            0x100_0100,
            &[ElfSegment {
                paddr: 0x100_0000,
                data: vec![0x90; 0x400],
                memsz: 0x10_0000,
            }],
        ));
        let initrd = file(&initrd_bytes());
        let boot = load_linux(
            &mem,
            kernel.path(),
            Some(initrd.path()),
            "console=ttyS0 root=/dev/vda",
            2,
        )
        .expect("boot");
        assert_eq!(
            boot,
            LinuxBoot {
                entry: GuestAddress(0x100_0100),
                boot_params: GuestAddress(0x7000)
            }
        );
        assert_eq!(read(&mem, 0x100_0000, 0x400), vec![0x90; 0x400]);
        // Command line at 0x20000, NUL-terminated, pointed to by cmd_line_ptr.
        assert_eq!(read(&mem, 0x2_0000, 28), b"console=ttyS0 root=/dev/vda\0");
        assert_eq!(u32_at(&mem, 0x7000 + 0x228), 0x2_0000);
        // Initrd at the top of RAM, page aligned, and described in the header.
        let initrd_addr = 64 * MIB - 0x3000;
        assert_eq!(u32_at(&mem, 0x7000 + 0x218), initrd_addr as u32);
        assert_eq!(u32_at(&mem, 0x7000 + 0x21c), 0x2345);
        assert_eq!(read(&mem, initrd_addr, 0x2345), initrd_bytes());
        // Made-up header for a vmlinux.
        assert_eq!(read(&mem, 0x7000 + 0x202, 4), b"HdrS");
        assert_eq!(read(&mem, 0x7000 + 0x1fe, 2), vec![0x55, 0xAA]);
        assert_eq!(read(&mem, 0x7000 + 0x210, 2), vec![0xff, 0x81]);
        // e820: three entries.
        assert_eq!(read(&mem, 0x7000 + 0x1e8, 1), vec![3]);
        let e820_2: [u8; 20] = mem
            .read_obj(GuestAddress(0x7000 + 0x2d0 + 40))
            .expect("e820");
        assert_eq!(&e820_2[..8], &0x10_0000u64.to_le_bytes());
        assert_eq!(&e820_2[8..16], &(63 * MIB).to_le_bytes());
        assert_eq!(&e820_2[16..], &1u32.to_le_bytes());
        // MP table with 2 CPUs.
        assert_eq!(read(&mem, 0x9_fc00, 4), b"_MP_");
        assert_eq!(read(&mem, 0x9_fc10, 4), b"PCMP");
        assert_eq!(
            u32_at(&mem, 0x9_fc10 + 34) & 0xffff,
            2 + 1 + 1 + 16 + 2,
            "entry count"
        );
    }

    #[test]
    fn bzimage_end_to_end() {
        let mem = mem(64 * MIB);
        let spec = BzImageSpec {
            cmdline_size: 10,
            initrd_addr_max: 0x1ff_ffff,
            ..Default::default()
        };
        let payload = vec![0xC3u8; 0x1000];
        let kernel = file(&bzimage(&spec, &payload));
        let initrd = file(&initrd_bytes());
        let boot = load_linux(&mem, kernel.path(), Some(initrd.path()), "quiet", 1).expect("boot");
        assert_eq!(boot.entry, GuestAddress(0x10_0200));
        assert_eq!(boot.boot_params, GuestAddress(0x7000));
        assert_eq!(read(&mem, 0x10_0000, 0x1000), payload);
        // The kernel's own header is copied: its version, alignment, init_size, code32_start.
        assert_eq!(read(&mem, 0x7000 + 0x206, 2), 0x020fu16.to_le_bytes());
        assert_eq!(u32_at(&mem, 0x7000 + 0x214), 0x10_0000);
        assert_eq!(u32_at(&mem, 0x7000 + 0x230), 0x20_0000);
        assert_eq!(u32_at(&mem, 0x7000 + 0x260), 0x80_0000);
        assert_eq!(read(&mem, 0x7000 + 0x210, 2), vec![0xff, 0x81]);
        // Initrd below initrd_addr_max + 1 (32 MiB), above the kernel's 16..24 MiB window.
        assert_eq!(u32_at(&mem, 0x7000 + 0x218), 0x200_0000 - 0x3000);
        assert_eq!(read(&mem, 0x2_0000, 6), b"quiet\0");
    }

    #[test]
    fn kernel_from_bytes_in_memory() {
        let mem = mem(64 * MIB);
        let image = bzimage(&BzImageSpec::default(), &[0xC3; 0x1000]);
        let boot = load_linux_from(
            &mem,
            &mut std::io::Cursor::new(&image[..]),
            Path::new("builtin:bz"),
            None,
            "",
            1,
            None,
        )
        .expect("boot");
        assert_eq!(boot.entry, GuestAddress(0x10_0200));
        assert_eq!(read(&mem, 0x10_0000, 0x1000), vec![0xC3; 0x1000]);
        assert_eq!(read(&mem, 0x2_0000, 1), vec![0]);
        assert_eq!(u32_at(&mem, 0x7000 + 0x218), 0, "no initrd");
        let err = load_linux_from(
            &mem,
            &mut std::io::Cursor::new(&b"nope"[..]),
            Path::new("builtin:bz"),
            None,
            "",
            1,
            None,
        )
        .expect_err("junk");
        assert!(err
            .to_string()
            .starts_with("kernel builtin:bz: not a vmlinux ELF or bzImage"));
    }

    #[test]
    fn command_line_over_the_kernel_limit_is_refused() {
        let mem = mem(64 * MIB);
        let spec = BzImageSpec {
            cmdline_size: 10,
            ..Default::default()
        };
        let kernel = file(&bzimage(&spec, &[1; 0x1000]));
        let err = load_linux(&mem, kernel.path(), None, "console=ttyS0", 1).expect_err("long");
        assert_eq!(
            err.to_string(),
            "command line is 13 bytes, longer than the 10 bytes the kernel allows"
        );
        // A vmlinux allows 2047.
        let kernel = file(&vmlinux(
            0x100_0000,
            &[ElfSegment {
                paddr: 0x100_0000,
                data: vec![1; 16],
                memsz: 16,
            }],
        ));
        load_linux(&mem, kernel.path(), None, &"x".repeat(2047), 1).expect("2047 fits");
        assert!(matches!(
            load_linux(&mem, kernel.path(), None, &"x".repeat(2048), 1),
            Err(LinuxBootError::Cmdline(CmdlineError::TooLong {
                max: 2047,
                ..
            }))
        ));
    }

    #[test]
    fn errors_name_the_file() {
        let mem = mem(64 * MIB);
        let junk = file(b"this is not a kernel, just text padding the file out a bit");
        let err = load_linux(&mem, junk.path(), None, "", 1).expect_err("junk");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "kernel {}: not a vmlinux ELF or bzImage: ",
                junk.path().display()
            )),
            "{msg}"
        );
        let err =
            load_linux(&mem, Path::new("/nonexistent/vmlinux"), None, "", 1).expect_err("missing");
        assert!(err
            .to_string()
            .starts_with("cannot open kernel /nonexistent/vmlinux: "));

        let kernel = file(&bzimage(&BzImageSpec::default(), &[1; 0x1000]));
        let empty = file(b"");
        let err = load_linux(&mem, kernel.path(), Some(empty.path()), "", 1).expect_err("empty");
        assert_eq!(
            err.to_string(),
            format!("initrd {}: the initrd is empty", empty.path().display())
        );
        // The bzImage needs RAM up to 24 MiB and the initrd must not go below that.
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (24 * MIB) as usize)])
            .expect("mem");
        let initrd = file(&initrd_bytes());
        let err = load_linux(&small, kernel.path(), Some(initrd.path()), "", 1).expect_err("fit");
        assert!(matches!(
            err,
            LinuxBootError::Initrd {
                source: InitrdError::DoesNotFit {
                    lowest: 0x180_0000,
                    highest: 0x180_0000,
                    ..
                },
                ..
            }
        ));
        let err = load_linux(&mem, kernel.path(), None, "", 0).expect_err("0 vcpus");
        assert!(matches!(
            err,
            LinuxBootError::MpTable(MpTableError::BadVcpuCount(0))
        ));
    }

    #[test]
    fn large_guest_with_hole_gets_high_e820_entry() {
        // 3 GiB + 16 MiB: low region up to 3 GiB, 16 MiB at 4 GiB (sparse mmap, cheap).
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0xC000_0000),
            (GuestAddress(0x1_0000_0000), (16 * MIB) as usize),
        ])
        .expect("mem");
        let kernel = file(&vmlinux(
            0x100_0000,
            &[ElfSegment {
                paddr: 0x100_0000,
                data: vec![1; 16],
                memsz: 16,
            }],
        ));
        let initrd = file(&initrd_bytes());
        load_linux(&mem, kernel.path(), Some(initrd.path()), "", 4).expect("boot");
        let zp = |off: u64, len| {
            let mut b = vec![0u8; len];
            mem.read_slice(&mut b, GuestAddress(0x7000 + off))
                .expect("read");
            b
        };
        assert_eq!(zp(0x1e8, 1), vec![4]);
        let last = zp(0x2d0 + 60, 20);
        assert_eq!(&last[..8], &0x1_0000_0000u64.to_le_bytes());
        assert_eq!(&last[8..16], &(16 * MIB).to_le_bytes());
        // The initrd ends at initrd_addr_max + 1 (2 GiB) for a vmlinux.
        let initrd_addr = u32::from_le_bytes(zp(0x218, 4).try_into().expect("4"));
        assert_eq!(u64::from(initrd_addr), 0x8000_0000 - 0x3000);
    }

    /// Loads a real bzImage named by `RXEN_TEST_BZIMAGE`: it cannot be booted on nested
    /// KVM, but its header and payload placement can be checked. Run it with
    /// `RXEN_TEST_BZIMAGE=/boot/vmlinuz-... cargo test -p rxen-linuxboot -- --ignored`.
    #[test]
    #[ignore = "needs a real kernel image in RXEN_TEST_BZIMAGE"]
    fn real_bzimage_from_env() {
        let path = std::env::var_os("RXEN_TEST_BZIMAGE")
            .expect("set RXEN_TEST_BZIMAGE to the path of a bzImage");
        let path = std::path::PathBuf::from(path);
        let image = std::fs::read(&path).expect("read kernel");
        let mem = mem(512 * MIB);
        let initrd = file(&initrd_bytes());
        let boot = load_linux(&mem, &path, Some(initrd.path()), "console=ttyS0", 2)
            .expect("load real bzImage");
        assert_eq!(boot.entry, GuestAddress(0x10_0200));
        let zp = |off: u64, len| read(&mem, 0x7000 + off, len);
        let version = u16::from_le_bytes(zp(0x206, 2).try_into().expect("2"));
        assert!(version >= 0x020c, "version {version:#x}");
        assert_eq!(zp(0x236, 1)[0] & 1, 1, "XLF_KERNEL_64");
        let setup_sects = match image[0x1f1] {
            0 => 4,
            n => usize::from(n),
        };
        let payload = &image[(setup_sects + 1) * 512..];
        assert_eq!(read(&mem, 0x10_0000, payload.len()), payload);
        let init_size = u32_at(&mem, 0x7000 + 0x260);
        let pref = u32_at(&mem, 0x7000 + 0x258);
        let initrd_at = u32_at(&mem, 0x7000 + 0x218);
        assert!(u64::from(initrd_at) >= u64::from(pref) + u64::from(init_size));
        eprintln!(
            "real bzImage: protocol {version:#x}, payload {:#x} bytes, pref_address {pref:#x}, \
             init_size {init_size:#x}, cmdline_size {}, initrd at {initrd_at:#x}",
            payload.len(),
            u32_at(&mem, 0x7000 + 0x238)
        );
    }
}
