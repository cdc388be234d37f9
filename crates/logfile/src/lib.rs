//! Append-only log files that never grow without bound: once a write would take the file
//! past its size limit, `FILE` becomes `FILE.1` (`FILE.1` becomes `FILE.2`, ...), the oldest
//! beyond the kept count is dropped, and writing goes on in a new `FILE`.
//!
//! [`rotate_copy_truncate`] rotates a log that another process appends to
//! through a descriptor of its own (a VMM's console log: the VMM may not open
//! or rename paths once its guest runs).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A size-rotated log file.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    /// Opens `path` for appending; it holds at most `max_bytes` (at least 1) before it is
    /// rotated, and `keep` older files are kept beside it.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            written,
            max_bytes: max_bytes.max(1),
            keep,
        })
    }

    /// The name of the `n`th older file.
    pub fn older(path: &Path, n: u32) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            let _ = std::fs::remove_file(Self::older(&self.path, self.keep));
            for n in (1..self.keep).rev() {
                let from = Self::older(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, Self::older(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, Self::older(&self.path, 1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written > 0 && self.written.saturating_add(buf.len() as u64) > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.written = self.written.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Rotates `path`, which another process appends to (`O_APPEND`) through a
/// descriptor of its own, once it holds more than `max_bytes`: its content is
/// copied to `path.1` (older files shift up to `path.keep`, the oldest is
/// dropped) and `path` is truncated in place, so the writer's next write lands
/// at its start. Returns whether it rotated.
///
/// Bytes the writer appends after the copy read the end of the file and
/// before the truncation are lost: a window of one `ftruncate` call. So are
/// bytes beyond `max_bytes` more than the size seen at the start, when the
/// writer outpaces the copy. With `keep` 0 the file is only truncated.
///
/// The writer may be untrusted and share the directory: `path` is opened
/// without following links and must be a regular file with one link (never
/// truncate a file planted there by hard link); the copy is made under a
/// fresh name (`O_EXCL`, no links followed) and renamed into place, and the
/// older files are only renamed or unlinked, which never follows links.
pub fn rotate_copy_truncate(path: &Path, max_bytes: u64, keep: u32) -> io::Result<bool> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let live = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = live.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(io::Error::other(format!(
            "{} is not a plain log file (a link, or not a regular file): not rotated",
            path.display()
        )));
    }
    if meta.len() <= max_bytes.max(1) {
        return Ok(false);
    }
    if keep == 0 {
        live.set_len(0)?;
        return Ok(true);
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".rotating");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut copy = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let copied = io::copy(
        &mut (&live).take(meta.len().saturating_add(max_bytes)),
        &mut copy,
    )
    .and_then(|_| live.set_len(0));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    match std::fs::remove_file(RotatingFile::older(path, keep)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    for n in (1..keep).rev() {
        let from = RotatingFile::older(path, n);
        if std::fs::symlink_metadata(&from).is_ok() {
            std::fs::rename(&from, RotatingFile::older(path, n + 1))?;
        }
    }
    std::fs::rename(&tmp, RotatingFile::older(path, 1))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("console.log");
        let mut f = RotatingFile::open(&path, 10, 2).expect("open");
        for chunk in ["aaaaaa", "bbbbbb", "cccccc", "dddddd"] {
            f.write_all(chunk.as_bytes()).expect("write");
        }
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        assert_eq!(read(path.clone()), "dddddd");
        assert_eq!(read(RotatingFile::older(&path, 1)), "cccccc");
        assert_eq!(read(RotatingFile::older(&path, 2)), "bbbbbb");
        assert!(
            !RotatingFile::older(&path, 3).exists(),
            "more files than kept"
        );
    }

    #[test]
    fn an_existing_file_counts_and_keep_zero_truncates() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("rxend.log");
        std::fs::write(&path, "0123456789").expect("seed");
        let mut f = RotatingFile::open(&path, 12, 0).expect("open");
        f.write_all(b"abc").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "abc");
        assert!(!RotatingFile::older(&path, 1).exists());
    }

    #[test]
    fn a_write_larger_than_the_limit_still_lands_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("big.log");
        let mut f = RotatingFile::open(&path, 4, 1).expect("open");
        f.write_all(b"0123456789").expect("write");
        f.write_all(b"x").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "x");
        assert_eq!(
            std::fs::read_to_string(RotatingFile::older(&path, 1)).expect("read"),
            "0123456789"
        );
    }

    #[test]
    fn copy_truncate_keeps_the_writers_descriptor_working() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("console.log");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open");
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        writer.write_all(b"aaaaaa").expect("write");
        assert!(!rotate_copy_truncate(&path, 10, 2).expect("small"));
        writer.write_all(b"bbbbbb").expect("write");
        assert!(rotate_copy_truncate(&path, 10, 2).expect("rotate"));
        for chunk in ["ccccccccccc", "ddddddddddd"] {
            writer.write_all(chunk.as_bytes()).expect("write");
            assert!(rotate_copy_truncate(&path, 10, 2).expect("rotate"));
        }
        writer.write_all(b"ee").expect("write");
        assert_eq!(read(path.clone()), "ee", "the writer goes on at the start");
        assert_eq!(read(RotatingFile::older(&path, 1)), "ddddddddddd");
        assert_eq!(read(RotatingFile::older(&path, 2)), "ccccccccccc");
        assert!(!RotatingFile::older(&path, 3).exists());
        assert!(!dir.path().join("console.log.rotating").exists());
    }

    #[test]
    fn copy_truncate_never_touches_what_links_point_at() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("console.log");
        let precious = dir.path().join("precious");
        std::fs::write(&precious, "x".repeat(100)).expect("seed");
        std::os::unix::fs::symlink(&precious, &path).expect("symlink");
        assert!(rotate_copy_truncate(&path, 10, 2).is_err());
        std::fs::remove_file(&path).expect("rm");
        std::fs::hard_link(&precious, &path).expect("link");
        assert!(rotate_copy_truncate(&path, 10, 2).is_err());
        std::fs::remove_file(&path).expect("rm");
        // Links planted at the older names are replaced, not followed.
        std::fs::write(&path, "y".repeat(100)).expect("log");
        std::os::unix::fs::symlink(&precious, RotatingFile::older(&path, 1)).expect("l1");
        std::os::unix::fs::symlink(&precious, RotatingFile::older(&path, 2)).expect("l2");
        std::os::unix::fs::symlink(&precious, dir.path().join("console.log.rotating")).expect("l3");
        assert!(rotate_copy_truncate(&path, 10, 2).expect("rotate"));
        assert_eq!(
            std::fs::read_to_string(&precious).expect("read"),
            "x".repeat(100)
        );
        assert_eq!(
            std::fs::read_to_string(RotatingFile::older(&path, 1)).expect("read"),
            "y".repeat(100)
        );
        assert!(std::fs::symlink_metadata(RotatingFile::older(&path, 2))
            .expect("l1 moved up")
            .file_type()
            .is_symlink());
    }
}
