//! Append-only log files that never grow without bound: once a write would take the file
//! past its size limit, `FILE` becomes `FILE.1` (`FILE.1` becomes `FILE.2`, ...), the oldest
//! beyond the kept count is dropped, and writing goes on in a new `FILE`.

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
}
