//! Kernel loading: picks the boot protocol for a [`KernelSource`] and places
//! the image in guest memory.

pub mod builtin;
pub mod elf;

use crate::memory::GuestMemory;
use rxen_linuxboot::Initrd;
use std::path::{Path, PathBuf};

use rxen_proto::vmspec::KernelSource;
use vm_memory::{Bytes, GuestAddress};

use crate::boot::KERNEL_MIN_ADDR;
use elf::{ElfError, ElfImage};

/// Largest kernel file read from disk.
const MAX_KERNEL_FILE: u64 = 512 << 20;

/// Errors while loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The built-in kernel name is unknown.
    #[error("unknown built-in kernel {0:?} (known: {known})", known = builtin::TESTGUEST)]
    UnknownBuiltin(String),
    /// The built-in image is not part of this build.
    #[error("the built-in test guest is not part of this build")]
    BuiltinMissing,
    /// The kernel file could not be read.
    #[error("cannot read kernel {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel file is too large.
    #[error("kernel {0} is larger than {MAX_KERNEL_FILE} bytes")]
    TooLarge(PathBuf),
    /// The image is neither an ELF nor a bzImage.
    #[error("disk {disk}: pygrub: {source}")]
    Pygrub {
        /// The disk's vdev.
        disk: String,
        /// What was wrong.
        source: rxen_pygrub::PygrubError,
    },
    /// The kernel a disk's menu names is not one.
    #[error("disk {disk}: pygrub: {path}: {why}")]
    DiskKernel {
        /// The disk's vdev.
        disk: String,
        /// The kernel's path on the disk.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// `bootloader = "pygrub"` with no disk to read.
    #[error("bootloader = \"pygrub\" boots the first disk, and the domain has none")]
    NoBootDisk,
    /// The first disk's image cannot be read for pygrub.
    #[error("disk {disk}: pygrub cannot read the image: {why}")]
    BootDiskImage {
        /// The vdev.
        disk: String,
        /// Why.
        why: String,
    },
    /// The image is not a kernel.
    #[error("kernel is neither an ELF nor a bzImage")]
    UnknownFormat,
    /// The ELF is malformed.
    #[error("bad kernel ELF: {0}")]
    Elf(#[from] ElfError),
    /// A segment does not fit in guest RAM.
    #[error("kernel segment at {addr:#x} (+{len:#x} bytes) does not fit in guest RAM above 1 MiB")]
    Placement {
        /// Guest physical address of the segment.
        addr: u64,
        /// Its size in memory.
        len: u64,
    },
    /// Writing into guest memory failed.
    #[error("cannot write the kernel into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The Linux boot protocol failed.
    #[error(transparent)]
    Linux(#[from] rxen_linuxboot::LinuxBootError),
    /// Too many vCPUs for the Linux MP table.
    #[error("{0} vCPUs is too many for a Linux guest")]
    LinuxVcpus(u32),
}

/// Which boot protocol a kernel image follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// The rxen test guest protocol (ELF with the RXEN note): every vCPU runnable in long mode.
    TestGuest,
    /// The Linux x86 boot protocol (vmlinux ELF or bzImage): only vCPU 0 runnable.
    Linux,
}

/// A kernel image read into memory, with its protocol.
#[derive(Debug, Clone)]
pub struct KernelImage {
    /// The protocol.
    pub kind: KernelKind,
    /// The image bytes.
    pub bytes: KernelBytes,
    /// Where the image came from, for Linux loaders that want a path.
    pub path: Option<PathBuf>,
}

/// Image bytes: embedded or read from a file.
#[derive(Debug, Clone)]
pub enum KernelBytes {
    /// An image compiled into the VMM.
    Static(&'static [u8]),
    /// An image read from disk.
    Owned(Vec<u8>),
}

impl KernelBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            KernelBytes::Static(b) => b,
            KernelBytes::Owned(v) => v,
        }
    }
}

/// The kernel placed in guest memory: where the vCPUs start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The protocol.
    pub kind: KernelKind,
    /// 64-bit entry point.
    pub entry: u64,
    /// First byte after the image, 4 KiB aligned.
    pub kernel_end: u64,
    /// Linux only: guest address of `boot_params` (RSI at entry).
    pub boot_params: Option<u64>,
}

/// True when `bytes` looks like a bzImage (the "HdrS" setup header magic).
pub fn is_bzimage(bytes: &[u8]) -> bool {
    bytes.get(0x202..0x206) == Some(b"HdrS")
}

/// Classifies an image by its content.
pub fn classify(bytes: &[u8]) -> Result<KernelKind, LoaderError> {
    if elf::is_elf(bytes) {
        let img = ElfImage::parse(bytes)?;
        return Ok(if img.is_rxen_guest() {
            KernelKind::TestGuest
        } else {
            KernelKind::Linux
        });
    }
    if is_bzimage(bytes) {
        return Ok(KernelKind::Linux);
    }
    Err(LoaderError::UnknownFormat)
}

fn read_file(path: &Path) -> Result<Vec<u8>, LoaderError> {
    let read_err = |source| LoaderError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_KERNEL_FILE {
        return Err(LoaderError::TooLarge(path.to_path_buf()));
    }
    std::fs::read(path).map_err(read_err)
}

/// Reads and classifies the kernel named by `source`.
pub fn read_kernel(source: &KernelSource) -> Result<KernelImage, LoaderError> {
    match source {
        KernelSource::Builtin(name) if name == builtin::TESTGUEST => {
            let bytes = builtin::testguest().ok_or(LoaderError::BuiltinMissing)?;
            Ok(KernelImage {
                kind: classify(bytes)?,
                bytes: KernelBytes::Static(bytes),
                path: None,
            })
        }
        KernelSource::Builtin(name) => Err(LoaderError::UnknownBuiltin(name.clone())),
        KernelSource::Bootloader { .. } => Err(LoaderError::NoBootDisk),
        KernelSource::Path(path) => {
            let bytes = read_file(path)?;
            Ok(KernelImage {
                kind: classify(&bytes)?,
                bytes: KernelBytes::Owned(bytes),
                path: Some(path.clone()),
            })
        }
    }
}

/// What a guest's own first disk boots (`bootloader = "pygrub"`): its GRUB menu's entry
/// `entry` (or default), read from the disk inside the VMM's jail.
pub struct DiskBoot {
    /// The kernel, classified.
    pub image: KernelImage,
    /// The initrd.
    pub initrd: Option<Initrd>,
    /// The entry's command line.
    pub args: String,
}

/// What pygrub reads of an opened disk: the raw file, or a read-only view of a qcow2 chain
/// (the guest's own disk; it has not run yet).
pub fn boot_disk(
    image: &rxen_virtio::block::DiskImage,
    name: &str,
) -> Result<std::sync::Arc<dyn rxen_pygrub::Disk>, LoaderError> {
    let bad = |why: String| LoaderError::BootDiskImage {
        disk: name.to_string(),
        why,
    };
    match image {
        rxen_virtio::block::DiskImage::Raw(f) => Ok(std::sync::Arc::new(
            f.try_clone().map_err(|e| bad(e.to_string()))?,
        )),
        rxen_virtio::block::DiskImage::Qcow2(q) => Ok(std::sync::Arc::new(
            q.read_only_view().map_err(|e| bad(e.to_string()))?,
        )),
    }
}

/// Finds and reads what `disk` (vdev `name`) boots.
pub fn from_disk(
    disk: std::sync::Arc<dyn rxen_pygrub::Disk>,
    name: &str,
    entry: Option<u32>,
) -> Result<DiskBoot, LoaderError> {
    let pygrub = |source| LoaderError::Pygrub {
        disk: name.to_string(),
        source,
    };
    let c = rxen_pygrub::choose_from(disk, entry.map(|e| e as usize)).map_err(pygrub)?;
    tracing::info!(
        disk = name,
        partition = c.partition,
        menu = %c.menu,
        entry = c.index,
        title = %c.title,
        kernel = %c.kernel_path,
        initrd = c.initrd.as_ref().map_or("", |(p, _)| p.as_str()),
        args = %c.args,
        "pygrub: booting the disk's menu entry"
    );
    let path = PathBuf::from(format!("{name}:{}", c.kernel_path));
    let kind = classify(&c.kernel).map_err(|e| LoaderError::DiskKernel {
        disk: name.to_string(),
        path: c.kernel_path.clone(),
        why: e.to_string(),
    })?;
    Ok(DiskBoot {
        image: KernelImage {
            kind,
            bytes: KernelBytes::Owned(c.kernel),
            path: Some(path),
        },
        initrd: c
            .initrd
            .map(|(p, b)| Initrd::Bytes(PathBuf::from(format!("{name}:{p}")), b)),
        args: c.args,
    })
}

/// Writes `len` zero bytes at `addr`.
fn zero_fill(mem: &GuestMemory, addr: u64, len: u64) -> Result<(), LoaderError> {
    const CHUNK: u64 = 64 * 1024;
    let zeros = vec![0u8; CHUNK as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK);
        let chunk = zeros.get(..n as usize).unwrap_or(&zeros);
        mem.write_slice(chunk, GuestAddress(addr + done))?;
        done += n;
    }
    Ok(())
}

/// Loads a test guest ELF at its physical addresses.
pub fn load_test_guest(mem: &GuestMemory, bytes: &[u8]) -> Result<LoadedKernel, LoaderError> {
    let img = ElfImage::parse(bytes)?;
    let ram_end = crate::memory::ram_end(mem);
    for seg in &img.segments {
        let placement = LoaderError::Placement {
            addr: seg.paddr,
            len: seg.memsz,
        };
        let end = seg.paddr.checked_add(seg.memsz).ok_or(placement)?;
        if seg.paddr < KERNEL_MIN_ADDR || end > ram_end {
            return Err(LoaderError::Placement {
                addr: seg.paddr,
                len: seg.memsz,
            });
        }
        let data = bytes
            .get(seg.offset as usize..(seg.offset + seg.filesz) as usize)
            .ok_or(ElfError::Malformed("segment data"))?;
        mem.write_slice(data, GuestAddress(seg.paddr))?;
        zero_fill(mem, seg.paddr + seg.filesz, seg.memsz - seg.filesz)?;
    }
    let kernel_end = img.end().checked_add(0xFFF).ok_or(LoaderError::Placement {
        addr: img.end(),
        len: 0,
    })? & !0xFFF;
    Ok(LoadedKernel {
        kind: KernelKind::TestGuest,
        entry: img.entry,
        kernel_end,
        boot_params: None,
    })
}

/// Loads a Linux kernel (vmlinux or bzImage) with the Linux boot protocol (rxen-linuxboot).
pub fn load_linux(
    mem: &GuestMemory,
    image: &KernelImage,
    initrd: Option<Initrd>,
    cmdline: &str,
    vcpus: u32,
) -> Result<LoadedKernel, LoaderError> {
    let vcpus = u8::try_from(vcpus).map_err(|_| LoaderError::LinuxVcpus(vcpus))?;
    let machine = crate::boot::acpi::machine(vcpus);
    let name = image
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from("(built-in kernel)"));
    let mut reader = std::io::Cursor::new(image.bytes.as_slice());
    let boot = rxen_linuxboot::load_linux_from(
        mem,
        &mut reader,
        &name,
        initrd,
        cmdline,
        vcpus,
        Some(&machine),
    )?;
    Ok(LoadedKernel {
        kind: KernelKind::Linux,
        entry: boot.entry.0,
        kernel_end: 0,
        boot_params: Some(boot.boot_params.0),
    })
}

/// Places `image` in guest memory according to its protocol.
pub fn load(
    mem: &GuestMemory,
    image: &KernelImage,
    initrd: Option<Initrd>,
    cmdline: &str,
    vcpus: u32,
) -> Result<LoadedKernel, LoaderError> {
    match image.kind {
        KernelKind::TestGuest => load_test_guest(mem, image.bytes.as_slice()),
        KernelKind::Linux => load_linux(mem, image, initrd, cmdline, vcpus),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn loads_segments_and_zeroes_bss() {
        let mem = create_guest_memory(16).expect("memory");
        mem.write_slice(&[0xAA; 16], GuestAddress(0x10_0004))
            .expect("dirty");
        let elf = elf::tests::build_elf(&[1, 2, 3, 4], 0x10_0000, 0x2000, true);
        let k = load_test_guest(&mem, &elf).expect("load");
        assert_eq!(k.entry, 0x10_0000);
        assert_eq!(k.kernel_end, 0x10_3000);
        let mut buf = [0u8; 8];
        mem.read_slice(&mut buf, GuestAddress(0x10_0000))
            .expect("read");
        assert_eq!(buf, [1, 2, 3, 4, 0, 0, 0, 0]);
    }

    #[test]
    fn rejects_segments_outside_ram() {
        let mem = create_guest_memory(16).expect("memory");
        let low = elf::tests::build_elf(&[1], 0x8000, 0, true);
        assert!(matches!(
            load_test_guest(&mem, &low),
            Err(LoaderError::Placement { .. })
        ));
        let high = elf::tests::build_elf(&[1], 15 << 20, 2 << 20, true);
        assert!(matches!(
            load_test_guest(&mem, &high),
            Err(LoaderError::Placement { .. })
        ));
    }

    #[test]
    fn classification() {
        let guest = elf::tests::build_elf(&[1], 0x10_0000, 0, true);
        assert_eq!(classify(&guest).expect("guest"), KernelKind::TestGuest);
        let linux = elf::tests::build_elf(&[1], 0x100_0000, 0, false);
        assert_eq!(classify(&linux).expect("linux"), KernelKind::Linux);
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(classify(&bz).expect("bz"), KernelKind::Linux);
        assert!(matches!(classify(b"junk"), Err(LoaderError::UnknownFormat)));
    }

    #[test]
    fn linux_elf_goes_through_the_linux_protocol() {
        let mem = create_guest_memory(64).expect("memory");
        let image = KernelImage {
            kind: KernelKind::Linux,
            bytes: KernelBytes::Owned(elf::tests::build_elf(&[0xF4], 0x100_0000, 0, false)),
            path: None,
        };
        let k = load(&mem, &image, None, "console=ttyS0", 2).expect("load");
        assert_eq!(k.kind, KernelKind::Linux);
        assert_eq!(k.entry, 0x100_0000);
        assert_eq!(k.boot_params, Some(0x7000));
        let mut b = [0u8; 1];
        mem.read_slice(&mut b, GuestAddress(0x100_0000))
            .expect("read");
        assert_eq!(b, [0xF4]);
        let mut cmdline = [0u8; 13];
        mem.read_slice(&mut cmdline, GuestAddress(0x20000))
            .expect("read");
        assert_eq!(&cmdline, b"console=ttyS0");
        assert!(matches!(
            load(&mem, &image, None, "", 300),
            Err(LoaderError::LinuxVcpus(300))
        ));
    }
}
