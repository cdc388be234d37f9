//! Save files written so that a failed or interrupted save loses nothing: rxend makes an
//! unnamed file in the target's directory, passes it to the VMM that writes the stream
//! (the VMM opens no path once its guest runs), and gives it the target's name only once
//! the VMM reported success and the file is on disk.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A save file being written; nothing is at the target until [`SaveFile::commit`].
pub struct SaveFile {
    file: File,
    target: PathBuf,
    dir: PathBuf,
    /// The name of the temporary file when the filesystem has no `O_TMPFILE`.
    named: Option<PathBuf>,
}

/// Errors while creating or committing a save file.
#[derive(Debug, thiserror::Error)]
pub enum SaveFileError {
    /// The target exists and is not a regular file (a device, a FIFO, a directory...).
    #[error("{0} is not a regular file: a save goes to a new file or replaces a regular one")]
    NotRegular(PathBuf),
    /// The target exists and the file being written may not replace it (a core dump).
    #[error("{0} exists: not replacing it")]
    Exists(PathBuf),
    /// An I/O error on the file or its directory.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SaveFileError + '_ {
    move |source| SaveFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl SaveFile {
    /// Starts a save to `target`, which must be absent or a regular file (left untouched).
    pub fn create(target: &Path) -> Result<Self, SaveFileError> {
        match std::fs::symlink_metadata(target) {
            Ok(m) if m.file_type().is_file() => {}
            // A link to a regular file is replaced by the new file, as `mv` would.
            Ok(m)
                if m.file_type().is_symlink()
                    && std::fs::metadata(target).is_ok_and(|t| t.is_file()) => {}
            // Devices, FIFOs, sockets, directories, links to any of them.
            Ok(_) => return Err(SaveFileError::NotRegular(target.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(target)(e)),
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // An unnamed file first: a crash mid-save leaves nothing behind.
        let unnamed = OpenOptions::new()
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(&dir);
        match unnamed {
            Ok(file) => Ok(Self {
                file,
                target: target.to_path_buf(),
                dir,
                named: None,
            }),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                let named = Self::temp_name(target, &dir);
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                    .open(&named)
                    .map_err(io_err(&named))?;
                Ok(Self {
                    file,
                    target: target.to_path_buf(),
                    dir,
                    named: Some(named),
                })
            }
            Err(e) => Err(io_err(&dir)(e)),
        }
    }

    /// Starts a file at `target` that must not exist (a core dump); [`SaveFile::commit_new`]
    /// puts it there only if nothing appeared there meanwhile.
    pub fn create_new(target: &Path) -> Result<Self, SaveFileError> {
        match std::fs::symlink_metadata(target) {
            Ok(_) => Err(SaveFileError::Exists(target.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::create(target),
            Err(e) => Err(io_err(target)(e)),
        }
    }

    /// Like [`SaveFile::commit`], but never replaces what is at the target: a file that
    /// appeared there since [`SaveFile::create_new`] stays and the new one is dropped.
    pub fn commit_new(mut self) -> Result<(), SaveFileError> {
        self.file.sync_all().map_err(io_err(&self.target))?;
        let linked = match self.named.take() {
            // link(2) fails with EEXIST rather than replace the target.
            Some(n) => {
                let r = std::fs::hard_link(&n, &self.target);
                let _ = std::fs::remove_file(&n);
                r
            }
            None => {
                let proc_path = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
                nix::unistd::linkat(
                    None,
                    &proc_path,
                    None,
                    &self.target,
                    nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                )
                .map_err(io::Error::from)
            }
        };
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(SaveFileError::Exists(self.target.clone()))
            }
            Err(e) => return Err(io_err(&self.target)(e)),
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    fn temp_name(target: &Path, dir: &Path) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = OsString::from(".");
        name.push(target.file_name().unwrap_or_default());
        name.push(format!(".rxen-save-{}-{n}", std::process::id()));
        dir.join(name)
    }

    /// The file to write the stream to.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A descriptor of the file to pass to the VMM.
    pub fn descriptor(&self) -> Result<std::os::fd::OwnedFd, SaveFileError> {
        self.file
            .try_clone()
            .map(Into::into)
            .map_err(io_err(&self.target))
    }

    /// Flushes the file to disk and gives it the target's name (replacing a regular file
    /// there), then flushes the directory.
    pub fn commit(mut self) -> Result<(), SaveFileError> {
        self.file.sync_all().map_err(io_err(&self.target))?;
        let named = match self.named.take() {
            Some(n) => n,
            None => {
                // Link the unnamed file under a temporary name, then rename it over the target.
                let n = Self::temp_name(&self.target, &self.dir);
                let proc_path = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
                nix::unistd::linkat(
                    None,
                    &proc_path,
                    None,
                    &n,
                    nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                )
                .map_err(|e| io_err(&n)(io::Error::from(e)))?;
                n
            }
        };
        if let Err(e) = std::fs::rename(&named, &self.target) {
            let _ = std::fs::remove_file(&named);
            return Err(io_err(&self.target)(e));
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }
}

impl Drop for SaveFile {
    fn drop(&mut self) {
        // Not committed: remove the temporary file (an unnamed one vanishes by itself).
        if let Some(n) = self.named.take() {
            let _ = std::fs::remove_file(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn nothing_appears_until_commit_and_a_failure_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let target = dir.path().join("d.save");
        std::fs::write(&target, b"old good save").expect("write");
        let s = SaveFile::create(&target).expect("create");
        s.file().write_all(b"half a stream").expect("write");
        drop(s);
        assert_eq!(std::fs::read(&target).expect("read"), b"old good save");
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");

        let s = SaveFile::create(&target).expect("create");
        s.file().write_all(b"new save").expect("write");
        s.commit().expect("commit");
        assert_eq!(std::fs::read(&target).expect("read"), b"new save");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn devices_fifos_and_directories_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        for bad in [
            PathBuf::from("/dev/full"),
            PathBuf::from("/dev/null"),
            dir.path().to_path_buf(),
        ] {
            assert!(
                matches!(SaveFile::create(&bad), Err(SaveFileError::NotRegular(_))),
                "{}",
                bad.display()
            );
        }
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert!(matches!(
            SaveFile::create(&fifo),
            Err(SaveFileError::NotRegular(_))
        ));
        assert!(
            std::fs::metadata("/dev/full").is_ok(),
            "/dev/full untouched"
        );
    }

    #[test]
    fn what_a_passed_descriptor_wrote_is_committed() {
        let dir = tempfile::tempdir().expect("tmp");
        let target = dir.path().join("passed.save");
        let s = SaveFile::create(&target).expect("create");
        let mut other = File::from(s.descriptor().expect("fd"));
        other.write_all(b"from the VMM").expect("write");
        drop(other);
        assert!(!target.exists());
        s.commit().expect("commit");
        assert_eq!(std::fs::read(&target).expect("read"), b"from the VMM");
    }

    #[test]
    fn a_new_only_file_never_replaces_one_that_is_there() {
        let dir = tempfile::tempdir().expect("tmp");
        let target = dir.path().join("core");
        std::fs::write(&target, b"precious").expect("write");
        assert!(matches!(
            SaveFile::create_new(&target),
            Err(SaveFileError::Exists(_))
        ));
        std::fs::remove_file(&target).expect("rm");
        let s = SaveFile::create_new(&target).expect("create");
        s.file().write_all(b"dump").expect("write");
        // Someone else's file appears meanwhile: it stays.
        std::fs::write(&target, b"theirs").expect("write");
        assert!(matches!(s.commit_new(), Err(SaveFileError::Exists(_))));
        assert_eq!(std::fs::read(&target).expect("read"), b"theirs");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
        std::fs::remove_file(&target).expect("rm");
        let s = SaveFile::create_new(&target).expect("create");
        s.file().write_all(b"dump").expect("write");
        s.commit_new().expect("commit");
        assert_eq!(std::fs::read(&target).expect("read"), b"dump");
    }

    #[test]
    fn a_new_target_is_created_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let target = dir.path().join("new.save");
        let s = SaveFile::create(&target).expect("create");
        s.file().write_all(b"x").expect("write");
        s.commit().expect("commit");
        let mode = std::fs::metadata(&target)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
