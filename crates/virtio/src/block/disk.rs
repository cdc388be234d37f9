//! The storage behind a block device: a raw image file or a host block device, accessed with
//! positioned reads and writes, or a qcow2 image (see [`super::qcow2`]).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};

use super::qcow2::Qcow2Image;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file's metadata could not be read.
    #[error("cannot inspect the disk: {0}")]
    Metadata(#[source] io::Error),
    /// The file is neither a regular file nor a block device.
    #[error("the disk is neither a regular file nor a block device")]
    NotADisk,
    /// The size could not be determined.
    #[error("cannot find the disk's size: {0}")]
    Size(#[source] io::Error),
    /// The file's access mode could not be read.
    #[error("cannot read the disk's access mode: {0}")]
    AccessMode(#[source] io::Error),
    /// A qcow2 image (or its chain) is unusable.
    #[error(transparent)]
    Qcow2(#[from] super::qcow2::Qcow2Error),
}

/// What kind of file backs a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// A regular file holding a raw image.
    RegularFile,
    /// A host block device.
    BlockDevice,
}

/// What the guest's sectors are stored in.
#[derive(Debug)]
enum Backend {
    /// The file's bytes are the disk's.
    Raw,
    /// A qcow2 image and its backing chain.
    Qcow2(Box<Qcow2Image>),
}

/// An open image as the VMM opened it: what [`Disk::from_image`] takes.
#[derive(Debug)]
pub enum DiskImage {
    /// A raw image file or a host block device.
    Raw(File),
    /// A qcow2 image with its backing chain.
    Qcow2(Box<Qcow2Image>),
}

impl DiskImage {
    /// The image's own file (for a qcow2 image, the top one): what the sharing lock is taken on.
    pub fn file(&self) -> &File {
        match self {
            DiskImage::Raw(f) => f,
            DiskImage::Qcow2(q) => q.file(),
        }
    }

    /// The backing files behind the image (none for a raw one).
    pub fn backing(&self) -> &[super::qcow2::BackingFile] {
        match self {
            DiskImage::Raw(_) => &[],
            DiskImage::Qcow2(q) => q.backing(),
        }
    }

    /// The most bytes the image's file may grow to while the guest writes: a raw file keeps its
    /// size; a qcow2 file holds the virtual disk's data plus its tables, and clusters freed by
    /// rewrites of compressed data are not always reused: twice the virtual size and 256 MiB.
    pub fn largest_write(&self) -> u64 {
        match self {
            DiskImage::Raw(f) => f.metadata().map(|m| m.len()).unwrap_or(0),
            DiskImage::Qcow2(q) => q.size().saturating_mul(2).saturating_add(256 << 20),
        }
    }
}

/// An open disk: the file, its size and whether it was opened for writing.
#[derive(Debug)]
pub struct Disk {
    file: File,
    backend: Backend,
    size: u64,
    kind: DiskKind,
    writable: bool,
}

impl Disk {
    /// Inspects `file`: its kind, its size (for a block device, as seen by seeking to its end)
    /// and whether it was opened for writing.
    pub fn open(mut file: File) -> Result<Self, DiskError> {
        let file_type = file.metadata().map_err(DiskError::Metadata)?.file_type();
        let kind = if file_type.is_file() {
            DiskKind::RegularFile
        } else if file_type.is_block_device() {
            DiskKind::BlockDevice
        } else {
            return Err(DiskError::NotADisk);
        };
        let size = file.seek(SeekFrom::End(0)).map_err(DiskError::Size)?;
        // SAFETY: F_GETFL on a file descriptor we own reads its status flags; it touches no memory.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(DiskError::AccessMode(io::Error::last_os_error()));
        }
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        Ok(Disk {
            file,
            backend: Backend::Raw,
            size,
            kind,
            writable,
        })
    }

    /// A disk over an opened image: a raw one as [`Disk::open`]; a qcow2 one with its virtual
    /// size, writable when its top image was opened for writing.
    pub fn from_image(image: DiskImage) -> Result<Self, DiskError> {
        match image {
            DiskImage::Raw(file) => Disk::open(file),
            DiskImage::Qcow2(q) => {
                let file = q.file().try_clone().map_err(DiskError::Metadata)?;
                Ok(Disk {
                    file,
                    size: q.size(),
                    kind: DiskKind::RegularFile,
                    writable: q.writable(),
                    backend: Backend::Qcow2(q),
                })
            }
        }
    }

    /// Whether the disk is a qcow2 image.
    pub fn is_qcow2(&self) -> bool {
        matches!(self.backend, Backend::Qcow2(_))
    }

    /// Size in bytes when opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// What kind of file backs the disk.
    pub fn kind(&self) -> DiskKind {
        self.kind
    }

    /// Whether the file was opened for writing.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Fills `buf` from the disk at byte `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.backend {
            Backend::Raw => self.file.read_exact_at(buf, offset),
            Backend::Qcow2(q) => q.read_at(buf, offset),
        }
    }

    /// Writes all of `buf` to the disk at byte `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match &self.backend {
            Backend::Raw => self.file.write_all_at(buf, offset),
            Backend::Qcow2(q) => q.write_at(buf, offset),
        }
    }

    /// The ranges of `from..to` that may hold data, as `(offset, len)` in order: a raw image
    /// file's allocated extents (`SEEK_DATA`/`SEEK_HOLE`; holes read as zeros); the whole
    /// range for a qcow2 image or a block device (the caller skips what reads as zeros).
    pub fn data_extents(&self, from: u64, to: u64) -> io::Result<Vec<(u64, u64)>> {
        let to = to.min(self.size);
        if from >= to {
            return Ok(Vec::new());
        }
        if self.is_qcow2() || self.kind != DiskKind::RegularFile {
            return Ok(vec![(from, to - from)]);
        }
        let seek = |at: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
            let at = libc::off_t::try_from(at)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: lseek on a descriptor we own with integer arguments; it touches no memory.
            let r = unsafe { libc::lseek(self.file.as_raw_fd(), at, whence) };
            if r < 0 {
                let e = io::Error::last_os_error();
                // ENXIO: no data (or hole) at or after `at`.
                return if e.raw_os_error() == Some(libc::ENXIO) {
                    Ok(None)
                } else {
                    Err(e)
                };
            }
            Ok(Some(r as u64))
        };
        let mut out = Vec::new();
        let mut at = from;
        while at < to {
            let Some(data) = seek(at, libc::SEEK_DATA)? else {
                break;
            };
            if data >= to {
                break;
            }
            let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(to).min(to);
            if hole <= data {
                break;
            }
            out.push((data, hole - data));
            at = hole;
        }
        Ok(out)
    }

    /// Makes written data durable (fdatasync; a qcow2 image first writes its cached tables).
    pub fn flush(&self) -> io::Result<()> {
        match &self.backend {
            Backend::Raw => self.file.sync_data(),
            Backend::Qcow2(q) => q.flush(),
        }
    }

    /// Forgets what a qcow2 image cached of its tables (another host wrote it last: the source
    /// of a migration); nothing for a raw disk.
    pub fn reload(&mut self) -> io::Result<()> {
        match &mut self.backend {
            Backend::Raw => Ok(()),
            Backend::Qcow2(q) => q.reload(),
        }
    }

    /// Whether [`Disk::discard`] can work (see [`takes_discards`]).
    pub fn supports_discard(&self) -> bool {
        match &self.backend {
            Backend::Raw => takes_discards(&self.file),
            Backend::Qcow2(q) => q.supports_discard(),
        }
    }

    /// Discards `len` bytes at `offset`: punches a hole in a file (the range
    /// then reads as zeros), or `BLKDISCARD` on a block device (the range
    /// then reads as whatever the device returns for discarded blocks).
    pub fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if let Backend::Qcow2(q) = &mut self.backend {
            return q.discard(offset, len);
        }
        match self.kind {
            DiskKind::RegularFile => self.punch_hole(offset, len),
            DiskKind::BlockDevice => {
                /// `_IO(0x12, 119)` from linux/fs.h.
                const BLKDISCARD: libc::c_ulong = 0x1277;
                let range = [offset, len];
                // SAFETY: BLKDISCARD reads two u64s (start, length) from the
                // pointer, which points at `range` for the whole call.
                let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKDISCARD, range.as_ptr()) };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
        }
    }

    /// Deallocates `len` bytes at `offset`, which then read as zeros; the size does not change.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: fallocate on a file descriptor we own with plain integer arguments; it touches
        // no memory of ours.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Whether an open image takes discards: always a regular file; a host block device when the
/// kernel says so (`/sys/dev/block/MAJ:MIN/queue/discard_max_bytes` above zero).
pub fn takes_discards(file: &File) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if meta.file_type().is_file() {
        return true;
    }
    if !meta.file_type().is_block_device() {
        return false;
    }
    let rdev = meta.rdev();
    let path = format!(
        "/sys/dev/block/{}:{}/queue/discard_max_bytes",
        libc::major(rdev),
        libc::minor(rdev)
    );
    std::fs::read_to_string(path)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|max| max > 0)
}
