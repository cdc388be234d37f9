//! Backups in one command (`rxl backup DOMAIN DIR`): the domain's state is captured as a
//! save does, with the domain left paused; every disk is copied at that instant (a reflink,
//! which is instant where the file system clones, else a sparse copy while the domain stays
//! paused); the domain runs on; a manifest lists every file with its size and SHA-256. A backup
//! is written under a hidden name and renamed into place only once complete, so an interrupted
//! one leaves the earlier backups as they were. `rxl backup-restore DIR` checks the manifest,
//! copies the disks back where they were and restores the state. Chains of incremental
//! backups are in [`chain`].

mod chain;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rxen_proto::api::BackedUpDisk;
use rxen_proto::vmspec::ImageFormat;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xlcfg::DomainConfig;

use super::{Created, Daemon, DaemonError};
use crate::auth::Caller;
use crate::storage;

/// The manifest's file name in a backup directory.
pub const MANIFEST: &str = "manifest.json";
/// The state's file name in a backup directory.
const STATE: &str = "state.save";
/// Most bytes of a manifest read back.
const MANIFEST_MAX: u64 = 1 << 20;

/// What a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The domain's name when it was backed up.
    pub domain: String,
    /// When, as RFC 3339.
    pub created: String,
    /// Its configuration.
    pub config: DomainConfig,
    /// The state file.
    pub state: BackupFile,
    /// The disks.
    pub disks: Vec<BackupDiskFile>,
    /// Where it sits in a chain of incremental backups (absent from a standalone backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<chain::ChainLink>,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// Its name in the backup directory.
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256, in hex.
    pub sha256: String,
}

/// One disk of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupDiskFile {
    /// The disk's vdev.
    pub vdev: String,
    /// Where the domain had it.
    pub original: PathBuf,
    /// The copy: the whole image, or with `increment` its changed blocks only.
    pub copy: BackupFile,
    /// For a disk of an incremental backup copied in part: which blocks the copy holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub increment: Option<chain::Increment>,
    /// The disk's dirty map as this backup left it (backups of a chain only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<chain::Tracking>,
    /// The image's format: a qcow2 image's increments hold guest data, written back through
    /// the image's own tables (absent: raw, as in backups before qcow2 chains).
    #[serde(default, skip_serializing_if = "is_raw")]
    pub format: ImageFormat,
}

fn is_raw(f: &ImageFormat) -> bool {
    *f == ImageFormat::Raw
}

/// A backup that was written.
#[derive(Debug, Clone)]
pub struct BackupDone {
    /// Its directory.
    pub dir: PathBuf,
    /// How long the domain was paused.
    pub paused_ms: u64,
    /// The disks and how each was copied.
    pub disks: Vec<BackedUpDisk>,
    /// Bytes of state.
    pub state_bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Persist {
        path: path.to_path_buf(),
        source,
    }
}

impl Daemon {
    /// The domain a backup is of: its ID, name, configuration and prepared disks (root only;
    /// never Domain-0).
    pub(super) fn backup_subject(
        &self,
        caller: &Caller,
        r: &str,
    ) -> Result<
        (
            u32,
            String,
            DomainConfig,
            Vec<rxen_proto::vmspec::DiskDevice>,
        ),
        DaemonError,
    > {
        self.only_root(caller, "back domains up")?;
        let (id, name) = self.lookup(caller, r)?;
        if id == 0 {
            return Err(DaemonError::Dom0("backed up"));
        }
        let config = self
            .table()
            .domains
            .get(&id)
            .map(|e| e.rec.config.clone())
            .ok_or_else(|| DaemonError::NoSuchDomain(r.to_string()))?;
        let disks = storage::prepare_disks(&config.disks)
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        Ok((id, name, config, disks))
    }

    /// `rxl backup`: backs domain `r` up into a new directory under `dir` (with
    /// `incremental`, adds a backup to the chain in `dir`).
    pub fn backup_domain(
        &self,
        caller: &Caller,
        r: &str,
        dir: &str,
        incremental: bool,
    ) -> Result<BackupDone, DaemonError> {
        if incremental {
            return self.backup_chained(caller, r, dir);
        }
        let (id, name, config, mut disks) = self.backup_subject(caller, r)?;
        // An empty cdrom drive has nothing to copy.
        disks.retain(|d| !d.path.as_os_str().is_empty());
        let root = PathBuf::from(dir);
        if !root.is_absolute() {
            return Err(DaemonError::Config(format!(
                "backup directory {dir}: give an absolute path"
            )));
        }
        private_dir(&root)?;
        let stamp = chrono::Utc::now();
        let final_dir = root.join(format!("{name}-{}", stamp.format("%Y%m%dT%H%M%S%.3fZ")));
        let partial = root.join(format!(
            ".{name}-{}.partial",
            stamp.format("%Y%m%dT%H%M%S%.3fZ")
        ));
        private_dir(&partial)?;
        let cleanup = |e: DaemonError| {
            let _ = fs::remove_dir_all(&partial);
            e
        };
        // The state, with the domain left paused: its disks do not change until it runs again.
        let started = Instant::now();
        let state_path = partial.join(STATE);
        self.save_domain(
            caller,
            &name,
            &state_path.display().to_string(),
            false,
            true,
            None,
        )
        .map_err(cleanup)?;
        let copied: Result<Vec<(BackedUpDisk, PathBuf, PathBuf, ImageFormat)>, DaemonError> = disks
            .iter()
            .map(|d| {
                let dst = partial.join(format!("{}.img", d.vdev));
                let method = copy_disk(&d.path, &dst)
                    .map_err(|e| DaemonError::Config(format!("disk {}: {e}", d.vdev)))?;
                let bytes = fs::metadata(&dst).map_err(io_err(&dst))?.len();
                Ok((
                    BackedUpDisk {
                        vdev: d.vdev.clone(),
                        bytes,
                        method: method.into(),
                    },
                    d.path.clone(),
                    dst,
                    d.format,
                ))
            })
            .collect();
        let paused_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Whatever happened to the copies, the domain runs on.
        if let Err(e) = self.set_paused(caller, &name, false) {
            self.log
                .error(format!("backup of {name}: cannot unpause it: {e}"));
        }
        let copied = copied.map_err(cleanup)?;
        let state = backup_file(&state_path).map_err(cleanup)?;
        let mut files = Vec::new();
        for (disk, original, copy, format) in &copied {
            files.push(BackupDiskFile {
                vdev: disk.vdev.clone(),
                original: original.clone(),
                copy: backup_file(copy).map_err(cleanup)?,
                increment: None,
                tracking: None,
                format: *format,
            });
        }
        let manifest = Manifest {
            domain: name.clone(),
            created: stamp.to_rfc3339(),
            config,
            state: state.clone(),
            disks: files,
            chain: None,
        };
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| DaemonError::Config(e.to_string()))
            .map_err(cleanup)?;
        let mpath = partial.join(MANIFEST);
        write_synced(&mpath, &text).map_err(cleanup)?;
        fs::rename(&partial, &final_dir)
            .map_err(io_err(&final_dir))
            .map_err(cleanup)?;
        if let Ok(d) = File::open(&root) {
            let _ = d.sync_all();
        }
        self.log.info(format!(
            "domain {id} ({name}) backed up to {} (paused {paused_ms} ms)",
            final_dir.display()
        ));
        Ok(BackupDone {
            dir: final_dir,
            paused_ms,
            disks: copied.into_iter().map(|(d, _, _, _)| d).collect(),
            state_bytes: state.bytes,
        })
    }

    /// `rxl backup-restore`: checks backup `dir` (or backup `name` of the chain in `dir`, or
    /// the chain's latest) against its manifests, rebuilds its disks where the domain had them
    /// (a chain's whole copies with the increments after them applied), and restores the
    /// domain's state.
    pub fn backup_restore(
        &self,
        caller: &Caller,
        dir: &str,
        name: Option<&str>,
    ) -> Result<Created, DaemonError> {
        self.only_root(caller, "restore backups")?;
        let dir = PathBuf::from(dir);
        // Every file as the manifests say, before anything is touched.
        let (target, manifest, plans) = chain::plan(&dir, name)?;
        if self
            .table()
            .domains
            .values()
            .any(|e| e.rec.name == manifest.domain)
        {
            return Err(DaemonError::NameTaken(manifest.domain));
        }
        for p in &plans {
            copy_back(&p.base, &p.original, &p.increments, p.format)
                .map_err(|e| DaemonError::Config(format!("disk {}: {e}", p.vdev)))?;
        }
        self.restore_domain(
            caller,
            &target.join(STATE).display().to_string(),
            None,
            false,
        )
    }
}

/// Reads the manifest of backup `dir`.
fn read_manifest(dir: &Path) -> Result<Manifest, DaemonError> {
    let mpath = dir.join(MANIFEST);
    let mut text = Vec::new();
    File::open(&mpath)
        .and_then(|f| f.take(MANIFEST_MAX).read_to_end(&mut text))
        .map_err(|e| DaemonError::Config(format!("{}: {e}", mpath.display())))?;
    serde_json::from_slice(&text)
        .map_err(|e| DaemonError::Config(format!("{}: {e}", mpath.display())))
}

/// Checks `files` of backup `dir` against what its manifest says of them.
fn check_files<'a>(
    dir: &Path,
    files: impl Iterator<Item = &'a BackupFile>,
) -> Result<(), DaemonError> {
    for f in files {
        if f.file.contains('/') || f.file.starts_with('.') || f.file.is_empty() {
            return Err(DaemonError::Config(format!(
                "{}: file name {} is not in the backup directory",
                dir.join(MANIFEST).display(),
                f.file
            )));
        }
        let path = dir.join(&f.file);
        let now = backup_file(&path)?;
        if now.bytes != f.bytes || now.sha256 != f.sha256 {
            return Err(DaemonError::Config(format!(
                "{}: does not match the manifest (size or SHA-256 differs): the backup is damaged",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Creates `dir` with mode 0700 (and its parents) if missing.
fn private_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Size and SHA-256 of `path`.
fn backup_file(path: &Path) -> Result<BackupFile, DaemonError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(BackupFile {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        bytes,
        sha256: h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    })
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), DaemonError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// `FICLONE`: makes the destination share the source's blocks (copy on write).
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Copies disk `src` (an image file or a block device) to the new file `dst`: a reflink where
/// the file system can, else a copy that keeps an image's holes. Returns how.
fn copy_disk(src: &Path, dst: &Path) -> std::io::Result<&'static str> {
    use std::os::unix::fs::OpenOptionsExt;
    let from = File::open(src)?;
    let to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let is_file = from.metadata()?.is_file();
    if is_file {
        // SAFETY: FICLONE takes the source descriptor as its argument; both are open.
        let r = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) };
        if r == 0 {
            to.sync_all()?;
            return Ok("reflink");
        }
    }
    sparse_copy(&from, &to, is_file)?;
    to.sync_all()?;
    Ok("copy")
}

/// Copies `from` into `to` from offset 0; for a regular file only its data extents (holes
/// stay holes, the size is kept).
fn sparse_copy(from: &File, to: &File, is_file: bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = if is_file {
        from.metadata()?.len()
    } else {
        let mut f = from;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))?
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let (start, end) = if is_file {
            match data_extent(from, pos)? {
                Some((s, e)) => (s, e.min(len)),
                None => break,
            }
        } else {
            (pos, len)
        };
        let mut at = start;
        while at < end {
            let want = usize::try_from((end - at).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = from.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            to.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        pos = end.max(at);
    }
    to.set_len(len)
}

/// The next data extent of `f` at or after `pos`: `(start, end)`, or `None` past the last.
fn data_extent(f: &File, pos: u64) -> std::io::Result<Option<(u64, u64)>> {
    let off = |v: u64| libc::off_t::try_from(v).unwrap_or(libc::off_t::MAX);
    // SAFETY: lseek on an open descriptor with an in-range offset; no memory is passed.
    let start = unsafe { libc::lseek(f.as_raw_fd(), off(pos), libc::SEEK_DATA) };
    if start < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(f.as_raw_fd(), start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((start as u64, end as u64)))
}

/// Puts backup copy `copy` back at `original`, with the `increments` after it applied: a file
/// is replaced whole (written beside it, then renamed over it); a block device is overwritten
/// in place.
fn copy_back(
    copy: &Path,
    original: &Path,
    increments: &[(PathBuf, Vec<chain::Extent>)],
    format: ImageFormat,
) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let from = File::open(copy)?;
    let is_device = fs::metadata(original).is_ok_and(|m| !m.is_file());
    if is_device {
        let to = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(original)?;
        sparse_copy(&from, &to, false)?;
        chain::apply_to(&to, original, format, increments)?;
        return to.sync_all();
    }
    let tmp = original.with_file_name(format!(
        ".{}.restoring",
        original
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = fs::remove_file(&tmp);
    // Read too: a qcow2 image's tables are read back to apply the increments.
    let to = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    // Beside the original, so that a qcow2 copy's relative backing file names resolve as
    // the original's do.
    let result = sparse_copy(&from, &to, true)
        .and_then(|()| chain::apply_to(&to, &tmp, format, increments))
        .and_then(|()| to.sync_all());
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, original)
}
