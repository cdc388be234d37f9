//! qcow2 images (versions 2 and 3) and their chains of backing files, read and written through
//! the `imago` crate (its synchronous build: no async runtime, plain `preadv`/`pwritev`/
//! `fallocate`/`fsync` on the descriptors it is given).
//!
//! Every file of a chain is opened by the caller's `open` function (the VMM opens them before it
//! confines itself), so nothing here opens a path on its own. A backing file's name is resolved
//! as QEMU does: an absolute name as it is, a relative one against the directory of the image
//! that names it. Backing files are opened read-only. Refused, with the image's path: encrypted
//! images, images with an external data file, backing formats other than qcow2 and raw, a
//! backing file whose format the image does not say (never probed), backing files that are not
//! regular files or block devices, a chain that comes back to a file already in it, and one
//! longer than [`MAX_CHAIN`] backing files.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::FormatAccess;
use imago::ShallowMapping;

/// The most backing files behind one image.
pub const MAX_CHAIN: usize = 16;

/// The first four bytes of every qcow2 image.
const MAGIC: [u8; 4] = *b"QFI\xfb";

/// The storage every layer of a chain sits on.
type Storage = imago::file::File;

/// Why a qcow2 image (or one of its backing files) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// A backing file could not be opened.
    #[error("{path}: backing file {backing}: {source}")]
    OpenBacking {
        /// The image that names it.
        path: String,
        /// The backing file, resolved.
        backing: String,
        /// Why.
        source: io::Error,
    },
    /// The image could not be read or is not a valid qcow2 image.
    #[error("{path}: not a usable qcow2 image: {source}")]
    Invalid {
        /// The image.
        path: String,
        /// What the reader found wrong.
        source: io::Error,
    },
    /// An encrypted image (AES or LUKS).
    #[error("{path}: encrypted qcow2 images are not supported")]
    Encrypted {
        /// The image.
        path: String,
    },
    /// An image whose data lives in an external data file.
    #[error("{path}: qcow2 images with an external data file are not supported")]
    ExternalDataFile {
        /// The image.
        path: String,
    },
    /// A backing format rxen does not read.
    #[error("{path}: backing file format {format} is not supported (qcow2 or raw)")]
    BackingFormat {
        /// The image that names it.
        path: String,
        /// The format its header names.
        format: String,
    },
    /// A backing file whose format the image does not say.
    #[error(
        "{path}: the image does not say the format of its backing file {backing} (rxen does not \
         guess it; set it with `qemu-img rebase -u -b {backing} -F qcow2` or `-F raw`)"
    )]
    BackingFormatMissing {
        /// The image that names it.
        path: String,
        /// The backing file.
        backing: String,
    },
    /// The chain comes back to a file already in it.
    #[error("{path}: the backing chain loops: {backing} is already in it")]
    Loop {
        /// The image that names it.
        path: String,
        /// The backing file seen twice.
        backing: String,
    },
    /// More than [`MAX_CHAIN`] backing files.
    #[error("{path}: the backing chain is longer than {MAX_CHAIN} images")]
    TooDeep {
        /// The top image.
        path: String,
    },
}

/// A file's format, as far as a chain is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Qcow2,
    Raw,
}

/// One backing file of an open chain: its resolved path and a second descriptor of the open
/// file (the same open file description), for the sharing lock.
#[derive(Debug)]
pub struct BackingFile {
    /// The path, resolved against the image that names it.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
}

/// An open qcow2 image with its backing chain.
pub struct Qcow2Image {
    access: FormatAccess<Storage>,
    path: PathBuf,
    top: File,
    backing: Vec<BackingFile>,
    writable: bool,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("size", &self.access.size())
            .field("backing", &self.backing)
            .field("writable", &self.writable)
            .finish()
    }
}

/// Checks the fields imago does not refuse itself: the magic, the version, and the encryption
/// method (header offset 32, big-endian).
fn check_header(file: &File, path: &Path) -> Result<(), Qcow2Error> {
    let invalid = |source| Qcow2Error::Invalid {
        path: path.display().to_string(),
        source,
    };
    let mut head = [0u8; 36];
    file.read_exact_at(&mut head, 0).map_err(invalid)?;
    let word = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&head[at..at + 4]);
        u32::from_be_bytes(b)
    };
    if head[..4] != MAGIC {
        return Err(invalid(io::Error::new(
            io::ErrorKind::InvalidData,
            "no qcow2 magic",
        )));
    }
    if !(2..=3).contains(&word(4)) {
        return Err(invalid(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("version {} (2 or 3 expected)", word(4)),
        )));
    }
    if word(32) != 0 {
        return Err(Qcow2Error::Encrypted {
            path: path.display().to_string(),
        });
    }
    Ok(())
}

/// Where QEMU looks for `backing`, named in the image at `image`: an absolute name as it is, a
/// relative one in the image's directory.
pub fn resolve_backing(image: &Path, backing: &str) -> PathBuf {
    let backing = Path::new(backing);
    if backing.is_absolute() {
        return backing.to_path_buf();
    }
    match image.parent() {
        Some(dir) => dir.join(backing),
        None => backing.to_path_buf(),
    }
}

/// One qcow2 layer, opened but not yet joined to what lies below it.
struct Layer {
    qcow2: Qcow2<Storage>,
}

/// The backing file a layer names (resolved) and its format, when the header says it.
type Below = Option<(PathBuf, Option<String>)>;

fn io_storage(file: File, path: &Path, writable: bool) -> Result<Storage, Qcow2Error> {
    let opts = imago::StorageOpenOptions::new()
        .write(writable)
        .filename(path);
    Storage::from_open_file(file, opts).map_err(|source| Qcow2Error::Invalid {
        path: path.display().to_string(),
        source,
    })
}

/// Formats `file` (empty, at `path`, which names it in messages) as a standalone qcow2 image
/// of `size` bytes with no backing file: what a storage migration's target copies a qcow2
/// disk (its chain flattened) into.
pub fn create_standalone(file: File, path: &Path, size: u64) -> Result<(), Qcow2Error> {
    use imago::FormatCreateBuilder;
    let storage = io_storage(file, path, true)?;
    Qcow2::<Storage>::create_builder(storage)
        .size(size)
        .create()
        .map(|_| ())
        .map_err(|source| Qcow2Error::Invalid {
            path: path.display().to_string(),
            source,
        })
}

/// Opens one qcow2 layer and returns it with the backing file its header names (resolved) and
/// that file's format, when the header says it.
fn open_layer(file: File, path: &Path, writable: bool) -> Result<(Layer, Below), Qcow2Error> {
    check_header(&file, path)?;
    let name = path.display().to_string();
    let storage = io_storage(file, path, writable)?;
    let mut qcow2 =
        Qcow2::<Storage>::open_image(storage, writable).map_err(|source| Qcow2Error::Invalid {
            path: name.clone(),
            source,
        })?;
    if qcow2.requires_external_data_file() {
        return Err(Qcow2Error::ExternalDataFile { path: name });
    }
    qcow2.set_data_file(None);
    let backing = qcow2.implicit_backing_file().map(|b| {
        (
            resolve_backing(path, b),
            qcow2.implicit_backing_format().cloned(),
        )
    });
    Ok((Layer { qcow2 }, backing))
}

impl Qcow2Image {
    /// Opens the qcow2 image `file` (at `path`, for messages and for resolving its backing
    /// file), writable or not, and its whole backing chain, each backing file through `open`
    /// (read-only).
    pub fn open(
        file: File,
        path: &Path,
        writable: bool,
        open: &mut dyn FnMut(&Path) -> io::Result<File>,
    ) -> Result<Self, Qcow2Error> {
        let top = file.try_clone().map_err(|source| Qcow2Error::Invalid {
            path: path.display().to_string(),
            source,
        })?;
        let mut seen = vec![identity(&top)];
        let (layer, mut next) = open_layer(file, path, writable)?;
        let mut layers = vec![layer];
        let mut backing: Vec<BackingFile> = Vec::new();
        // The bottom of the chain, when it is a raw file.
        let mut raw_bottom: Option<Storage> = None;
        let mut names_it = path.to_path_buf();
        while let Some((backing_path, format)) = next.take() {
            if backing.len() == MAX_CHAIN {
                return Err(Qcow2Error::TooDeep {
                    path: path.display().to_string(),
                });
            }
            let file = open(&backing_path).map_err(|source| Qcow2Error::OpenBacking {
                path: names_it.display().to_string(),
                backing: backing_path.display().to_string(),
                source,
            })?;
            let kind = file.metadata().map(|m| m.file_type());
            if !kind.is_ok_and(|k| {
                use std::os::unix::fs::FileTypeExt;
                k.is_file() || k.is_block_device()
            }) {
                return Err(Qcow2Error::OpenBacking {
                    path: names_it.display().to_string(),
                    backing: backing_path.display().to_string(),
                    source: io::Error::other("neither a regular file nor a block device"),
                });
            }
            let id = identity(&file);
            if id.is_some() && seen.contains(&id) {
                return Err(Qcow2Error::Loop {
                    path: names_it.display().to_string(),
                    backing: backing_path.display().to_string(),
                });
            }
            seen.push(id);
            let format = match format.as_deref() {
                Some("qcow2") => Format::Qcow2,
                Some("raw") => Format::Raw,
                // No format in the header: refused rather than probed (as libvirt does): a
                // raw file a guest once wrote could pass for a qcow2 image naming any host file.
                None | Some("") => {
                    return Err(Qcow2Error::BackingFormatMissing {
                        path: names_it.display().to_string(),
                        backing: backing_path.display().to_string(),
                    })
                }
                Some(other) => {
                    return Err(Qcow2Error::BackingFormat {
                        path: names_it.display().to_string(),
                        format: other.to_string(),
                    })
                }
            };
            let lock = file.try_clone().map_err(|source| Qcow2Error::Invalid {
                path: backing_path.display().to_string(),
                source,
            })?;
            backing.push(BackingFile {
                path: backing_path.clone(),
                file: lock,
            });
            match format {
                Format::Qcow2 => {
                    let (layer, below) = open_layer(file, &backing_path, false)?;
                    layers.push(layer);
                    next = below;
                }
                Format::Raw => raw_bottom = Some(io_storage(file, &backing_path, false)?),
            }
            names_it = backing_path;
        }
        // Join the layers from the bottom up.
        let mut below: Option<FormatAccess<Storage>> = match raw_bottom {
            Some(storage) => {
                let raw =
                    Raw::open_image(storage, false).map_err(|source| Qcow2Error::Invalid {
                        path: names_it.display().to_string(),
                        source,
                    })?;
                Some(FormatAccess::new(raw))
            }
            None => None,
        };
        while let Some(Layer { mut qcow2 }) = layers.pop() {
            qcow2.set_backing(below.take());
            below = Some(FormatAccess::new(qcow2));
        }
        let access = below.ok_or_else(|| Qcow2Error::Invalid {
            path: path.display().to_string(),
            source: io::Error::other("no image"),
        })?;
        Ok(Qcow2Image {
            access,
            path: path.to_path_buf(),
            top,
            backing,
            writable,
        })
    }

    /// A second, read-only view of the same chain over duplicates of its descriptors (opens no
    /// path: for reading the disk inside the jail, as pygrub does, before the guest runs).
    pub fn read_only_view(&self) -> Result<Qcow2Image, Qcow2Error> {
        let path = self.path.clone();
        let top = self.top.try_clone().map_err(|source| Qcow2Error::Invalid {
            path: path.display().to_string(),
            source,
        })?;
        let backing = &self.backing;
        Qcow2Image::open(top, &path, false, &mut |p| {
            backing
                .iter()
                .find(|b| b.path == p)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
                .and_then(|b| b.file.try_clone())
        })
    }

    /// The virtual disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.access.size()
    }

    /// Whether the top image was opened for writing.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The top image's file (another descriptor of it).
    pub fn file(&self) -> &File {
        &self.top
    }

    /// The backing files, from the one the image names down to the bottom of the chain.
    pub fn backing(&self) -> &[BackingFile] {
        &self.backing
    }

    /// Fills `buf` from the virtual disk at byte `offset` (unallocated clusters come from the
    /// backing chain, or read as zeros).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.access.read(buf, offset)
    }

    /// Writes `buf` at byte `offset` of the virtual disk (into the top image only).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.access.write(buf, offset)
    }

    /// Writes imago's cached metadata back and makes the top image durable.
    pub fn flush(&self) -> io::Result<()> {
        self.access.flush()?;
        self.access.sync()
    }

    /// Whether [`Qcow2Image::discard`] works: version 3 images (imago does not discard on
    /// version 2, which has no zero clusters).
    pub fn supports_discard(&self) -> bool {
        self.access.inner().zero_granularity().is_some()
    }

    /// Discards `len` bytes at `offset`: the range reads back as zeros (also over a backing
    /// file); whole clusters the top image owns alone are freed (their refcount drops to zero,
    /// later writes reuse them) and their space in the image file is punched out.
    pub fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let freed = self.owned_clusters(offset, len)?;
        self.access.discard_to_zero(offset, len)?;
        // Nothing was written since the clusters were freed (requests run one at a time), so
        // none has been reused yet.
        for (host, len) in freed {
            punch_hole(&self.top, host, len)?;
        }
        Ok(())
    }

    /// The host ranges of the whole clusters inside `offset..offset + len` that only the top
    /// image references (a refcount of one: no internal snapshot shares them).
    fn owned_clusters(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
        let Some(cluster) = self.access.inner().zero_granularity() else {
            return Ok(Vec::new());
        };
        let mut at = offset.next_multiple_of(cluster);
        let end = offset.saturating_add(len) / cluster * cluster;
        let mut out = Vec::new();
        while at < end {
            let (mapping, n) = self.access.get_shallow_mapping(at, end - at)?;
            if n == 0 {
                break;
            }
            if let ShallowMapping::Raw {
                offset: host,
                writable: true,
                ..
            } = mapping
            {
                out.push((host, n));
            }
            at += n;
        }
        Ok(out)
    }

    /// Drops every cached table and reloads the header: the image was written by another
    /// process meanwhile (the source of a live migration, which flushed before it let go).
    pub fn reload(&mut self) -> io::Result<()> {
        // SAFETY: invalidate_cache drops imago's cached tables without writing them back; none
        // holds anything unwritten, because this side has not written the image since it
        // opened it (its guest has not run yet), and no mapping of ours outlives a request.
        unsafe { self.access.invalidate_cache() }
    }
}

/// Deallocates `len` bytes of `file` at `offset` (they read as zeros; the size stays).
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let bad = |_| io::Error::from(io::ErrorKind::InvalidInput);
    let offset = libc::off_t::try_from(offset).map_err(bad)?;
    let len = libc::off_t::try_from(len).map_err(bad)?;
    // SAFETY: fallocate on a descriptor we own, with plain integers; it touches no memory of
    // ours.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
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

/// Makes an empty qcow2 image of `size` bytes at `path` for tests: version 3, or version 2 (the
/// version field rewritten: version 2 readers stop at the 72-byte header).
#[cfg(test)]
pub(crate) fn create_for_tests(path: &Path, size: u64, version: u32) {
    use imago::FormatCreateBuilder;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create");
    let storage = io_storage(file, path, true).expect("storage");
    Qcow2::<Storage>::create_builder(storage)
        .size(size)
        .create()
        .expect("format");
    if version == 2 {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open");
        f.write_all_at(&2u32.to_be_bytes(), 4).expect("version");
    }
}

/// The device and inode of an open file, to find a chain that loops.
fn identity(file: &File) -> Option<(u64, u64)> {
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// pygrub reads a qcow2 chain's virtual disk as it reads a raw file (`bootloader = "pygrub"`
/// on a qcow2 disk, in the VMM and in `rxl create -n`).
impl rxen_pygrub::Disk for Qcow2Image {
    fn size(&self) -> u64 {
        Qcow2Image::size(self)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // Past the end is an error here, as a file's read_exact_at would give.
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > Qcow2Image::size(self))
        {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Qcow2Image::read_at(self, buf, offset)
    }
}

/// Opens a backing file as every chain does: read-only, close-on-exec, and without waiting on
/// a FIFO (a backing file must be a regular file or a block device; [`Qcow2Image::open`]
/// refuses anything else).
pub fn open_backing(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
}

/// The backing chain of the qcow2 image at `path`, opened read-only (what rxend checks before it
/// starts a domain): every backing file's resolved path, from the image's own down.
pub fn backing_chain(path: &Path) -> Result<Vec<PathBuf>, Qcow2Error> {
    let file = File::open(path).map_err(|source| Qcow2Error::Invalid {
        path: path.display().to_string(),
        source,
    })?;
    let image = Qcow2Image::open(file, path, false, &mut |p| open_backing(p))?;
    Ok(image.backing.iter().map(|b| b.path.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use imago::FormatCreateBuilder;
    use std::os::unix::fs::FileExt;

    fn rw(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open")
    }

    /// Makes a qcow2 image of `size` bytes at `path`, with `backing` (name as written, format).
    fn create(path: &Path, size: u64, backing: Option<(&str, &str)>) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("create");
        let storage = io_storage(file, path, true).expect("storage");
        let mut b = Qcow2::<Storage>::create_builder(storage).size(size);
        if let Some((name, format)) = backing {
            b = b.backing(name.to_string(), format.to_string());
        }
        b.create().expect("format");
    }

    fn open(path: &Path, writable: bool) -> Result<Qcow2Image, Qcow2Error> {
        let file = if writable {
            rw(path)
        } else {
            File::open(path).expect("open")
        };
        Qcow2Image::open(file, path, writable, &mut |p| File::open(p))
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|k| seed.wrapping_add((k % 251) as u8))
            .collect()
    }

    #[test]
    fn a_chain_reads_through_and_writes_the_top_only() {
        let dir = tempfile::tempdir().expect("dir");
        let base = dir.path().join("base.raw");
        std::fs::write(&base, pattern(7, 4 << 20)).expect("base");
        std::fs::create_dir(dir.path().join("sub")).expect("sub");
        // mid names base relative to its own directory, top names mid relative to its own.
        let mid = dir.path().join("sub/mid.qcow2");
        create(&mid, 4 << 20, Some(("../base.raw", "raw")));
        let top = dir.path().join("top.qcow2");
        create(&top, 4 << 20, Some(("sub/mid.qcow2", "qcow2")));
        let before_base = std::fs::read(&base).expect("read");
        let before_mid = std::fs::read(&mid).expect("read");

        let image = open(&top, true).expect("open chain");
        assert_eq!(image.size(), 4 << 20);
        let names: Vec<_> = image.backing().iter().map(|b| b.path.clone()).collect();
        assert_eq!(names, vec![mid.clone(), dir.path().join("sub/../base.raw")]);
        let mut buf = vec![0u8; 8192];
        image.read_at(&mut buf, 65536 + 512).expect("read");
        assert_eq!(buf, before_base[65536 + 512..65536 + 512 + 8192]);
        let data = pattern(99, 1536);
        image.write_at(&data, 70_000).expect("write");
        image.flush().expect("flush");
        image.read_at(&mut buf, 65536 + 512).expect("read");
        assert_eq!(buf[70_000 - 66_048..70_000 - 66_048 + 1536], data[..]);
        // What the write did not cover still comes from the base.
        assert_eq!(buf[..100], before_base[66_048..66_148]);
        drop(image);
        assert_eq!(std::fs::read(&base).expect("read"), before_base);
        assert_eq!(std::fs::read(&mid).expect("read"), before_mid);
        let image = open(&top, true).expect("open chain");
        let view = image.read_only_view().expect("view");
        assert!(!view.writable());
        view.read_at(&mut buf, 70_000 - 66_048 + 65_536)
            .expect("read");
        assert_eq!(buf[66_048 - 65_536..][..1536], data[..]);
        drop((view, image));
        assert_eq!(
            backing_chain(&top).expect("chain"),
            vec![mid, dir.path().join("sub/../base.raw")]
        );
    }

    #[test]
    fn loops_deep_chains_encryption_and_data_files_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let a = dir.path().join("a.qcow2");
        let b = dir.path().join("b.qcow2");
        create(&a, 1 << 20, Some(("b.qcow2", "qcow2")));
        create(&b, 1 << 20, Some(("a.qcow2", "qcow2")));
        let e = open(&a, false).expect_err("loop");
        assert!(matches!(e, Qcow2Error::Loop { .. }), "{e}");
        assert!(e.to_string().contains("loops"), "{e}");

        let first = dir.path().join("c0.qcow2");
        create(&first, 1 << 20, None);
        for i in 1..=MAX_CHAIN + 1 {
            let prev = format!("c{}.qcow2", i - 1);
            create(
                &dir.path().join(format!("c{i}.qcow2")),
                1 << 20,
                Some((&prev, "qcow2")),
            );
        }
        let deepest_ok = dir.path().join(format!("c{MAX_CHAIN}.qcow2"));
        assert_eq!(
            open(&deepest_ok, false).expect("16").backing().len(),
            MAX_CHAIN
        );
        let too_deep = dir.path().join(format!("c{}.qcow2", MAX_CHAIN + 1));
        let e = open(&too_deep, false).expect_err("17");
        assert!(matches!(e, Qcow2Error::TooDeep { .. }), "{e}");

        let missing = dir.path().join("m.qcow2");
        create(&missing, 1 << 20, Some(("gone.raw", "raw")));
        let e = open(&missing, false).expect_err("missing");
        assert!(e.to_string().contains("gone.raw"), "{e}");

        let unsaid = dir.path().join("u.qcow2");
        create(&unsaid, 1 << 20, Some(("c0.qcow2", "")));
        // An empty format name, as a missing one.
        let e = open(&unsaid, false).expect_err("no format");
        assert!(matches!(e, Qcow2Error::BackingFormatMissing { .. }), "{e}");

        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("name");
        // SAFETY: mkfifo reads the NUL-terminated name for the length of the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let f = dir.path().join("f.qcow2");
        create(&f, 1 << 20, Some(("fifo", "raw")));
        let file = File::open(&f).expect("open");
        let e = Qcow2Image::open(file, &f, false, &mut |p| open_backing(p)).expect_err("fifo");
        assert!(e.to_string().contains("neither a regular file"), "{e}");

        let vmdk = dir.path().join("v.qcow2");
        create(&vmdk, 1 << 20, Some(("c0.qcow2", "vmdk")));
        let e = open(&vmdk, false).expect_err("vmdk");
        assert!(matches!(e, Qcow2Error::BackingFormat { .. }), "{e}");

        let enc = dir.path().join("e.qcow2");
        create(&enc, 1 << 20, None);
        rw(&enc)
            .write_all_at(&1u32.to_be_bytes(), 32)
            .expect("crypt");
        let e = open(&enc, true).expect_err("encrypted");
        assert!(matches!(e, Qcow2Error::Encrypted { .. }), "{e}");

        let ext = dir.path().join("x.qcow2");
        create(&ext, 1 << 20, None);
        // Incompatible feature bit 2: an external data file.
        rw(&ext)
            .write_all_at(&4u64.to_be_bytes(), 72)
            .expect("feature");
        let e = open(&ext, true).expect_err("data file");
        assert!(matches!(e, Qcow2Error::ExternalDataFile { .. }), "{e}");
    }

    #[test]
    fn discard_frees_clusters_and_reads_zeros() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("d.qcow2");
        create(&path, 16 << 20, None);
        let mut image = open(&path, true).expect("open");
        image.write_at(&pattern(3, 8 << 20), 0).expect("write");
        image.flush().expect("flush");
        let blocks = |p: &Path| std::fs::metadata(p).expect("meta").blocks() * 512;
        let full = blocks(&path);
        assert!(full >= 8 << 20, "{full}");
        image.discard(1 << 20, 6 << 20).expect("discard");
        image.flush().expect("flush");
        let after = blocks(&path);
        assert!(after <= full - (5 << 20), "{full} -> {after}");
        let mut buf = vec![1u8; 6 << 20];
        image.read_at(&mut buf, 1 << 20).expect("read");
        assert!(buf.iter().all(|&b| b == 0));
        let mut head = vec![0u8; 4096];
        image.read_at(&mut head, 0).expect("read");
        assert_eq!(head, pattern(3, 8 << 20)[..4096]);
        // The freed clusters are reused: 6 MiB more data barely grows the file.
        let size = std::fs::metadata(&path).expect("meta").len();
        image
            .write_at(&pattern(4, 6 << 20), 9 << 20)
            .expect("write");
        image.flush().expect("flush");
        let grown = std::fs::metadata(&path).expect("meta").len();
        assert!(grown < size + (1 << 20), "{size} -> {grown}");
    }

    #[test]
    fn reload_sees_what_another_opener_wrote() {
        // A migration's target opens the image while the source still writes it; once the
        // source has flushed and let go, the target reloads and sees the new clusters.
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("m.qcow2");
        create(&path, 64 << 20, None);
        let source = open(&path, true).expect("source");
        let mut target = open(&path, true).expect("target");
        let mut buf = vec![0u8; 65536];
        target.read_at(&mut buf, 40 << 20).expect("read");
        assert!(buf.iter().all(|&b| b == 0));
        // New clusters, and a new L2 table: the target's L1 copy is stale.
        source
            .write_at(&pattern(8, 65536), 40 << 20)
            .expect("write");
        source.flush().expect("flush");
        drop(source);
        target.reload().expect("reload");
        target.read_at(&mut buf, 40 << 20).expect("read");
        assert_eq!(buf, pattern(8, 65536));
        // The target allocates after the source's clusters, not over them.
        target
            .write_at(&pattern(9, 65536), 50 << 20)
            .expect("write");
        target.flush().expect("flush");
        target.read_at(&mut buf, 40 << 20).expect("read");
        assert_eq!(buf, pattern(8, 65536));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Damaged headers and tables are errors (or read as something), never a panic.
        #[test]
        fn damaged_images_never_panic(
            edits in proptest::collection::vec((0usize..3 * 65536 + 4096, proptest::prelude::any::<u8>()), 1..24),
            writable in proptest::prelude::any::<bool>(),
        ) {
            // On a thread with the stack rxen-vmm gives its device threads (64 MiB): imago's
            // cluster allocation recurses once per refcount block it must allocate, and a
            // damaged refcount table overflowed the test's 2 MiB default once in a full run.
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn(move || damage_and_use(edits, writable))
                .expect("thread")
                .join()
                .expect("no panic");
        }
    }

    /// Damages a fresh image at `edits` and uses what opens.
    fn damage_and_use(edits: Vec<(usize, u8)>, writable: bool) {
        {
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("p.qcow2");
            create(&path, 4 << 20, None);
            {
                let image = open(&path, true).expect("open");
                image.write_at(&pattern(5, 70_000), 60_000).expect("write");
                image.flush().expect("flush");
            }
            let f = rw(&path);
            let len = f.metadata().expect("meta").len() as usize;
            for (at, byte) in edits {
                f.write_all_at(&[byte], (at % len) as u64).expect("damage");
            }
            if let Ok(image) = open(&path, writable) {
                let mut buf = vec![0u8; 65536];
                for off in (0..4u64 << 20).step_by(1 << 20) {
                    let _ = image.read_at(&mut buf, off);
                    if writable {
                        let _ = image.write_at(&buf[..4096], off + 512);
                    }
                }
                let _ = image.flush();
            }
        }
    }
}
