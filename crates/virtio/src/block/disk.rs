//! The storage behind a block device: a raw image file or a host block device, accessed with
//! positioned reads and writes.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};

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
}

/// What kind of file backs a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// A regular file holding a raw image.
    RegularFile,
    /// A host block device.
    BlockDevice,
}

/// An open disk: the file, its size and whether it was opened for writing.
#[derive(Debug)]
pub struct Disk {
    file: File,
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
            size,
            kind,
            writable,
        })
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
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` to the disk at byte `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Makes written data durable (fdatasync).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Whether [`Disk::discard`] can work (see [`takes_discards`]).
    pub fn supports_discard(&self) -> bool {
        takes_discards(&self.file)
    }

    /// Discards `len` bytes at `offset`: punches a hole in a file (the range
    /// then reads as zeros), or `BLKDISCARD` on a block device (the range
    /// then reads as whatever the device returns for discarded blocks).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
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
