//! Reading a config file on behalf of a user who is not root: the file must
//! be one that only root can change, or a customer could boot anything.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a config file may not be used for a non-root caller.
#[derive(Debug, thiserror::Error)]
pub enum CfgFileError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file or its directory may be changed by someone other than root.
    #[error("{path} is {why}: config files that customers boot must be writable by root only")]
    Untrusted {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
}

/// Write bits for group and others.
const GROUP_OTHER_WRITE: u32 = 0o022;

fn check_owner_and_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), CfgFileError> {
    let untrusted = |why| CfgFileError::Untrusted {
        path: path.to_path_buf(),
        why,
    };
    if meta.uid() != 0 {
        return Err(untrusted("not owned by root"));
    }
    if meta.mode() & GROUP_OTHER_WRITE != 0 {
        return Err(untrusted("writable by group or others"));
    }
    Ok(())
}

/// Reads a config file if it and its directory are owned by root and
/// writable by no one else (after resolving symbolic links); returns the
/// resolved path and the text.
pub fn read_root_only(path: &Path) -> Result<(PathBuf, String), CfgFileError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CfgFileError::Io { path, source }
    };
    let real = path.canonicalize().map_err(io(path))?;
    // Without blocking: a FIFO is refused below instead of hanging the daemon.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&real)
        .map_err(io(&real))?;
    // Check the file that was opened, not the name, so a swap after the check changes nothing.
    let meta = file.metadata().map_err(io(&real))?;
    if !meta.is_file() {
        return Err(CfgFileError::Untrusted {
            path: real,
            why: "not a regular file",
        });
    }
    check_owner_and_mode(&real, &meta)?;
    if let Some(dir) = real.parent() {
        let dmeta = dir.metadata().map_err(io(dir))?;
        check_owner_and_mode(dir, &dmeta)?;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io(&real))?;
    Ok((real, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_files_that_root_alone_can_change_are_read() {
        if !nix::unistd::geteuid().is_root() {
            return; // ownership checks need files owned by root
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("web.cfg");
        std::fs::write(&cfg, "name = 'web'\n").expect("write");
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let (real, text) = read_root_only(&cfg).expect("root's file");
        assert_eq!(text, "name = 'web'\n");
        assert!(real.is_absolute());

        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let err = read_root_only(&cfg).expect_err("world-writable");
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );

        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod dir");
        assert!(
            read_root_only(&cfg).is_err(),
            "a writable directory lets the file be replaced"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod dir");

        nix::unistd::chown(&cfg, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let err = read_root_only(&cfg).expect_err("not root's");
        assert!(err.to_string().contains("not owned by root"), "{err}");

        assert!(read_root_only(&dir.path().join("missing.cfg")).is_err());
    }
}
