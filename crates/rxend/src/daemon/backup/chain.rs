//! Incremental backups (`rxl backup --incremental DOMAIN DIR`): DIR holds one domain's chain,
//! `0000-full`, `0001-incr`, `0002-incr`, ... (each a backup directory with its manifest). An
//! increment holds the state and, per disk, only the 64 KiB blocks the VMM's dirty map marked
//! since the chain's backup before, packed in one file (`VDEV.incr`) with their extents in the
//! manifest; a disk the map does not cover since then (the VMM was restarted, restored or
//! migrated, the disk was hot-plugged, an earlier backup was interrupted) is copied whole
//! (`VDEV.img`). An interrupted backup leaves only a hidden `.NNNN-*.partial` directory, removed
//! by the next; when a backup fails after taking the maps, rxend gives them back to the VMM.
//! `rxl backup-restore` rebuilds each disk from its latest whole copy and the increments after.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rxen_proto::api::BackedUpDisk;
use rxen_proto::vmctl::{DirtyDisk, VmRequest};
use rxen_proto::vmspec::ImageFormat;
use rxen_virtio::block::qcow2::{self, Qcow2Image};
use serde::{Deserialize, Serialize};

use super::{
    backup_file, copy_disk, io_err, private_dir, read_manifest, write_synced, BackupDiskFile,
    BackupDone, Manifest, MANIFEST, STATE,
};
use crate::auth::Caller;
use crate::daemon::{Daemon, DaemonError};
use crate::vmm;

/// Where a backup sits in its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    /// Its position: 0 for the full backup that starts the chain.
    pub index: u32,
    /// The directory name of the backup before it (none for index 0).
    pub parent: Option<String>,
}

/// A disk's dirty map as the backup left it: the next increment may use the map only if it
/// is still this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracking {
    /// The map's identity in the VMM.
    pub epoch: u64,
    /// The map's generation after this backup took it.
    pub generation: u64,
}

/// The blocks an increment holds for one disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Increment {
    /// The disk's size.
    pub disk_bytes: u64,
    /// The extents, in order; their data follow one another in the copy.
    pub extents: Vec<Extent>,
}

/// Bytes of a disk at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Offset in the disk.
    pub offset: u64,
    /// Length.
    pub bytes: u64,
}

/// The chain's lock file in DIR (held while a backup is written).
const LOCK: &str = ".chain.lock";

/// The chain's backups in `root`, by index: `(index, directory name)`.
fn entries(root: &Path) -> Result<Vec<(u32, String)>, DaemonError> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).map_err(io_err(root))? {
        let e = e.map_err(io_err(root))?;
        let name = e.file_name().to_string_lossy().into_owned();
        // Only complete backups count: each is renamed into place with its manifest.
        if let Some(i) = entry_index(&name).filter(|_| e.path().join(MANIFEST).is_file()) {
            out.push((i, name));
        }
    }
    out.sort();
    Ok(out)
}

/// `NNNN-full` or `NNNN-incr` → NNNN.
fn entry_index(name: &str) -> Option<u32> {
    let (num, kind) = name.split_once('-')?;
    if num.len() != 4 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    matches!(kind, "full" | "incr").then(|| num.parse().ok())?
}

/// Holds the chain's lock until dropped.
struct ChainLock(#[allow(dead_code)] File);

fn lock_chain(root: &Path) -> Result<ChainLock, DaemonError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = root.join(LOCK);
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(DaemonError::Config(format!(
            "{}: another backup is being written to this chain",
            root.display()
        )));
    }
    Ok(ChainLock(f))
}

/// A disk as the guest sees it, read-only: the bytes of a raw image or block device, or a
/// qcow2 image read through its tables and backing chain (the dirty map is of guest offsets).
enum GuestView {
    /// A raw image or block device.
    Raw(File),
    /// A qcow2 chain.
    Qcow2(Box<Qcow2Image>),
}

impl GuestView {
    /// Opens the disk at `path` of format `format`.
    fn open(path: &Path, format: ImageFormat) -> std::io::Result<GuestView> {
        let file = File::open(path)?;
        Ok(match format {
            ImageFormat::Raw => GuestView::Raw(file),
            ImageFormat::Qcow2 => GuestView::Qcow2(Box::new(
                Qcow2Image::open(file, path, false, &mut |p| qcow2::open_backing(p))
                    .map_err(std::io::Error::other)?,
            )),
        })
    }

    /// The disk's size as the guest sees it.
    fn size(&mut self) -> std::io::Result<u64> {
        match self {
            GuestView::Raw(f) => std::io::Seek::seek(f, std::io::SeekFrom::End(0)),
            GuestView::Qcow2(q) => Ok(q.size()),
        }
    }

    /// Reads exactly `buf.len()` bytes at guest offset `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            GuestView::Raw(f) => f.read_exact_at(buf, offset),
            GuestView::Qcow2(q) => q.read_at(buf, offset),
        }
    }
}

/// Copies the `extents` of disk `from` (guest offsets) into the new file `dst`, one after
/// another.
fn copy_extents(from: &GuestView, dst: &Path, extents: &[Extent]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut out = 0u64;
    for e in extents {
        let mut done = 0u64;
        while done < e.bytes {
            let want = usize::try_from((e.bytes - done).min(buf.len() as u64)).unwrap_or(0);
            let chunk = buf.get_mut(..want).unwrap_or_default();
            from.read_at(chunk, e.offset + done)?;
            FileExt::write_all_at(&to, chunk, out)?;
            done += want as u64;
            out += want as u64;
        }
    }
    to.sync_all()
}

/// The extents the dirty runs cover, within a disk of `size` bytes.
fn extents_of(d: &DirtyDisk, size: u64) -> Vec<Extent> {
    d.runs
        .iter()
        .filter_map(|&[first, count]| {
            let offset = first.checked_mul(d.block_bytes)?;
            let end = first
                .checked_add(count)?
                .checked_mul(d.block_bytes)?
                .min(size);
            (end > offset).then_some(Extent {
                offset,
                bytes: end - offset,
            })
        })
        .collect()
}

impl Daemon {
    /// `rxl backup --incremental`: adds a backup of domain `r` to the chain in `dir`.
    pub(super) fn backup_chained(
        &self,
        caller: &Caller,
        r: &str,
        dir: &str,
    ) -> Result<BackupDone, DaemonError> {
        let (id, name, config, disks) = self.backup_subject(caller, r)?;
        let root = PathBuf::from(dir);
        if !root.is_absolute() {
            return Err(DaemonError::Config(format!(
                "backup directory {dir}: give an absolute path"
            )));
        }
        private_dir(&root)?;
        let _lock = lock_chain(&root)?;
        // What an interrupted backup left: nobody else writes here while the lock is held.
        for e in fs::read_dir(&root).map_err(io_err(&root))?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') && n.ends_with(".partial") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        let chain = entries(&root)?;
        let previous = match chain.last() {
            Some((i, n)) => {
                let m = read_manifest(&root.join(n))?;
                if m.domain != name {
                    return Err(DaemonError::Config(format!(
                        "{} holds the backup chain of domain {}, not of {name}",
                        root.display(),
                        m.domain
                    )));
                }
                Some((*i, n.clone(), m))
            }
            None => None,
        };
        let index = match &previous {
            Some((i, _, _)) => i.checked_add(1).filter(|i| *i <= 9999).ok_or_else(|| {
                DaemonError::Config(format!(
                    "{}: the chain is full (10000 backups); start a new one",
                    root.display()
                ))
            })?,
            None => 0,
        };
        let entry = format!("{index:04}-{}", if index == 0 { "full" } else { "incr" });
        let final_dir = root.join(&entry);
        let partial = root.join(format!(".{entry}.partial"));
        private_dir(&partial)?;
        let cleanup = |e: DaemonError| {
            let _ = fs::remove_dir_all(&partial);
            e
        };
        let run_dir = self.paths.run_dir(id);
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
        // The domain is paused: the maps are taken at the instant of the state.
        let taken = match vmm::take_dirty(&run_dir) {
            Ok(t) => t,
            Err(e) => {
                if let Err(e) = self.set_paused(caller, &name, false) {
                    self.log
                        .error(format!("backup of {name}: cannot unpause it: {e}"));
                }
                return Err(cleanup(e.into()));
            }
        };
        let give_back = |why: &DaemonError| {
            for d in &taken {
                if let Err(e) = vmm::command(&run_dir, &VmRequest::MergeDirty { disk: d.clone() }) {
                    self.log.error(format!(
                        "backup of {name} failed ({why}); disk {}'s dirty map could not be given \
                         back ({e}): its next backup copies it whole",
                        d.vdev
                    ));
                }
            }
        };
        let copied: Result<Vec<(BackedUpDisk, BackupDiskFile)>, DaemonError> = disks
            .iter()
            .map(|d| {
                let map = taken.iter().find(|t| t.devid == d.devid);
                // Opened once: its size, then (for an increment) its dirty blocks.
                let mut view = GuestView::open(&d.path, d.format).map_err(io_err(&d.path))?;
                let size = view.size().map_err(io_err(&d.path))?;
                let before = previous.as_ref().and_then(|(_, _, m)| {
                    m.disks
                        .iter()
                        .find(|p| p.vdev == d.vdev && p.original == d.path)
                });
                let covered = match (map, before.and_then(|b| b.tracking)) {
                    (Some(map), Some(t)) => {
                        t.epoch == map.epoch
                            && t.generation.checked_add(1) == Some(map.generation)
                            && map.blocks == size.div_ceil(map.block_bytes.max(1))
                    }
                    _ => false,
                };
                let tracking = map.map(|m| Tracking {
                    epoch: m.epoch,
                    generation: m.generation,
                });
                let fail = |e: std::io::Error| DaemonError::Config(format!("disk {}: {e}", d.vdev));
                let (file, method, increment) = match map.filter(|_| covered) {
                    Some(map) => {
                        let extents = extents_of(map, size);
                        let dst = partial.join(format!("{}.incr", d.vdev));
                        copy_extents(&view, &dst, &extents).map_err(fail)?;
                        (
                            dst,
                            "increment",
                            Some(Increment {
                                disk_bytes: size,
                                extents,
                            }),
                        )
                    }
                    None => {
                        let dst = partial.join(format!("{}.img", d.vdev));
                        let method = copy_disk(&d.path, &dst).map_err(fail)?;
                        (dst, method, None)
                    }
                };
                let copy = backup_file(&file)?;
                Ok((
                    BackedUpDisk {
                        vdev: d.vdev.clone(),
                        bytes: copy.bytes,
                        method: method.into(),
                    },
                    BackupDiskFile {
                        vdev: d.vdev.clone(),
                        original: d.path.clone(),
                        copy,
                        increment,
                        tracking,
                        format: d.format,
                    },
                ))
            })
            .collect();
        let paused_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Err(e) = self.set_paused(caller, &name, false) {
            self.log
                .error(format!("backup of {name}: cannot unpause it: {e}"));
        }
        let finish = || -> Result<(Vec<BackedUpDisk>, u64), DaemonError> {
            let copied = copied?;
            let state = backup_file(&state_path)?;
            let manifest = Manifest {
                domain: name.clone(),
                created: chrono::Utc::now().to_rfc3339(),
                config: config.clone(),
                state: state.clone(),
                disks: copied.iter().map(|(_, f)| f.clone()).collect(),
                chain: Some(ChainLink {
                    index,
                    parent: previous.as_ref().map(|(_, n, _)| n.clone()),
                }),
            };
            let text = serde_json::to_vec_pretty(&manifest)
                .map_err(|e| DaemonError::Config(e.to_string()))?;
            write_synced(&partial.join(MANIFEST), &text)?;
            if let Ok(d) = File::open(&partial) {
                let _ = d.sync_all();
            }
            fs::rename(&partial, &final_dir).map_err(io_err(&final_dir))?;
            if let Ok(d) = File::open(&root) {
                let _ = d.sync_all();
            }
            Ok((copied.into_iter().map(|(d, _)| d).collect(), state.bytes))
        };
        let (disks, state_bytes) = finish().map_err(|e| {
            give_back(&e);
            cleanup(e)
        })?;
        self.log.info(format!(
            "domain {id} ({name}) backed up to {} (paused {paused_ms} ms)",
            final_dir.display()
        ));
        Ok(BackupDone {
            dir: final_dir,
            paused_ms,
            disks,
            state_bytes,
        })
    }
}

/// How to rebuild one disk: its latest whole copy, then the increments after it.
#[derive(Debug)]
pub(super) struct DiskPlan {
    /// The disk's vdev.
    pub vdev: String,
    /// Where the domain had it.
    pub original: PathBuf,
    /// The whole copy.
    pub base: PathBuf,
    /// The increments after it, in order: their data file and extents.
    pub increments: Vec<(PathBuf, Vec<Extent>)>,
    /// The whole copy's format (the increments are guest data either way).
    pub format: ImageFormat,
}

/// What a restore brings back: the backup's directory, its manifest, and its disks' plans;
/// every file used was checked against its manifest.
pub(super) fn plan(
    dir: &Path,
    name: Option<&str>,
) -> Result<(PathBuf, Manifest, Vec<DiskPlan>), DaemonError> {
    let (root, target) = match name {
        Some(n) => {
            if entry_index(n).is_none() {
                return Err(DaemonError::Config(format!(
                    "{n}: not a backup of a chain (NNNN-full or NNNN-incr)"
                )));
            }
            (Some(dir.to_path_buf()), dir.join(n))
        }
        None if dir.join(MANIFEST).exists() => {
            let m = read_manifest(dir)?;
            let root = m.chain.as_ref().and(dir.parent().map(Path::to_path_buf));
            (root, dir.to_path_buf())
        }
        None => {
            let chain = entries(dir)?;
            let Some((_, last)) = chain.last() else {
                return Err(DaemonError::Config(format!(
                    "{}: neither a backup nor a chain of backups",
                    dir.display()
                )));
            };
            (Some(dir.to_path_buf()), dir.join(last))
        }
    };
    let manifest = read_manifest(&target)?;
    super::check_files(&target, std::iter::once(&manifest.state))?;
    let Some(link) = manifest.chain.clone() else {
        super::check_files(&target, manifest.disks.iter().map(|d| &d.copy))?;
        let plans = manifest
            .disks
            .iter()
            .map(|d| DiskPlan {
                vdev: d.vdev.clone(),
                original: d.original.clone(),
                base: target.join(&d.copy.file),
                increments: Vec::new(),
                format: d.format,
            })
            .collect();
        return Ok((target, manifest, plans));
    };
    let root = root.unwrap_or_else(|| target.clone());
    // The chain from its start to the target, each link checked.
    let mut links: Vec<(PathBuf, Manifest)> = Vec::new();
    let mut at = Some((target.clone(), manifest.clone()));
    while let Some((d, m)) = at.take() {
        let link_now = m
            .chain
            .clone()
            .ok_or_else(|| DaemonError::Config(format!("{}: not part of a chain", d.display())))?;
        if m.domain != manifest.domain {
            return Err(DaemonError::Config(format!(
                "{}: a backup of domain {}, not {}: the chain is broken",
                d.display(),
                m.domain,
                manifest.domain
            )));
        }
        if let Some(p) = &link_now.parent {
            let pi = entry_index(p).filter(|i| i.checked_add(1) == Some(link_now.index));
            if pi.is_none() {
                return Err(DaemonError::Config(format!(
                    "{}: parent {p} is not the backup before it: the chain is broken",
                    d.display()
                )));
            }
            let pd = root.join(p);
            let pm = read_manifest(&pd)
                .map_err(|e| DaemonError::Config(format!("the chain is broken: {e}")))?;
            at = Some((pd, pm));
        } else if link_now.index != 0 {
            return Err(DaemonError::Config(format!(
                "{}: backup {} names no parent: the chain is broken",
                d.display(),
                link_now.index
            )));
        }
        links.push((d, m));
    }
    links.reverse();
    debug_assert_eq!(links.len() as u64, u64::from(link.index) + 1);
    let mut plans = Vec::new();
    for d in &manifest.disks {
        let mut base: Option<(PathBuf, ImageFormat)> = None;
        let mut increments = Vec::new();
        for (ld, lm) in &links {
            let Some(e) = lm
                .disks
                .iter()
                .find(|e| e.vdev == d.vdev && e.original == d.original)
            else {
                // Not in this backup: a later one must copy it whole.
                base = None;
                increments.clear();
                continue;
            };
            super::check_files(ld, std::iter::once(&e.copy))?;
            match &e.increment {
                None => {
                    base = Some((ld.join(&e.copy.file), e.format));
                    increments.clear();
                }
                Some(inc) => {
                    let outside = inc.extents.iter().find(|x| {
                        x.offset
                            .checked_add(x.bytes)
                            .is_none_or(|end| end > inc.disk_bytes)
                    });
                    if let Some(x) = outside {
                        return Err(DaemonError::Config(format!(
                            "{}: disk {}'s extent {}+{} lies beyond its {} bytes: the backup \
                             is damaged",
                            ld.display(),
                            e.vdev,
                            x.offset,
                            x.bytes,
                            inc.disk_bytes
                        )));
                    }
                    let sum = inc
                        .extents
                        .iter()
                        .try_fold(0u64, |a, x| a.checked_add(x.bytes));
                    if sum != Some(e.copy.bytes) {
                        let sum = sum.map_or("more than 2^64".to_string(), |s| s.to_string());
                        return Err(DaemonError::Config(format!(
                            "{}: disk {}'s extents add up to {sum} bytes, its copy has {}: \
                             the backup is damaged",
                            ld.display(),
                            e.vdev,
                            e.copy.bytes
                        )));
                    }
                    increments.push((ld.join(&e.copy.file), inc.extents.clone()));
                }
            }
        }
        let Some((base, format)) = base else {
            return Err(DaemonError::Config(format!(
                "disk {}: no whole copy of it before {}: the chain is broken",
                d.vdev,
                target.display()
            )));
        };
        plans.push(DiskPlan {
            vdev: d.vdev.clone(),
            original: d.original.clone(),
            base,
            increments,
            format,
        });
    }
    Ok((target, manifest, plans))
}

/// Writes each increment's extents (guest data) over `to`, the disk rebuilt so far at `path`:
/// a raw image's bytes directly, a qcow2 image's through its tables (allocating clusters,
/// copying partial ones from its backing chain), then its tables written back.
pub(super) fn apply_to(
    to: &File,
    path: &Path,
    format: ImageFormat,
    increments: &[(PathBuf, Vec<Extent>)],
) -> std::io::Result<()> {
    match format {
        ImageFormat::Raw => apply(to, increments),
        ImageFormat::Qcow2 => {
            if increments.is_empty() {
                return Ok(());
            }
            let image =
                Qcow2Image::open(to.try_clone()?, path, true, &mut |p| qcow2::open_backing(p))
                    .map_err(std::io::Error::other)?;
            apply(&QcowWriter(&image), increments)?;
            image.flush()
        }
    }
}

/// Where [`apply`] writes.
trait WriteAt {
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
}

impl WriteAt for File {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
}

/// A qcow2 image written at guest offsets.
struct QcowWriter<'a>(&'a Qcow2Image);

impl WriteAt for QcowWriter<'_> {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(buf, offset)
    }
}

/// Writes each increment's extents over `to` (the disk rebuilt so far).
fn apply(to: &dyn WriteAt, increments: &[(PathBuf, Vec<Extent>)]) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for (file, extents) in increments {
        let from = File::open(file)?;
        let mut at = 0u64;
        for e in extents {
            let mut done = 0u64;
            while done < e.bytes {
                let want = usize::try_from((e.bytes - done).min(buf.len() as u64)).unwrap_or(0);
                let chunk = buf.get_mut(..want).unwrap_or_default();
                from.read_exact_at(chunk, at)?;
                to.write_all_at(chunk, e.offset + done)?;
                done += want as u64;
                at += want as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        assert_eq!(entry_index("0000-full"), Some(0));
        assert_eq!(entry_index("0012-incr"), Some(12));
        for bad in [
            "12-incr",
            "0001-fulls",
            "x001-incr",
            ".0001-incr.partial",
            "0001",
        ] {
            assert_eq!(entry_index(bad), None, "{bad}");
        }
    }

    /// Writes backup `name` of a chain in `root` holding `files` and disk entries `disks`
    /// (vdev, file, increment) for a domain `dom` whose disk xvda is `original`.
    fn write_backup(
        root: &Path,
        name: &str,
        parent: Option<&str>,
        dom: &str,
        original: &Path,
        disk: (&str, &[u8], Option<Increment>),
    ) {
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join(STATE), b"state").expect("state");
        fs::write(dir.join(disk.0), disk.1).expect("disk");
        let config = xlcfg::parse("name = \"d\"\nmemory = 32\nkernel = \"/k\"\n", "d.cfg", &[])
            .expect("config")
            .config;
        let m = Manifest {
            domain: dom.into(),
            created: String::new(),
            config,
            state: backup_file(&dir.join(STATE)).expect("hash"),
            disks: vec![BackupDiskFile {
                vdev: "xvda".into(),
                original: original.to_path_buf(),
                copy: backup_file(&dir.join(disk.0)).expect("hash"),
                increment: disk.2,
                tracking: None,
                format: ImageFormat::Raw,
            }],
            chain: Some(ChainLink {
                index: entry_index(name).expect("name"),
                parent: parent.map(str::to_string),
            }),
        };
        fs::write(dir.join(MANIFEST), serde_json::to_vec(&m).expect("json")).expect("manifest");
    }

    fn ext(offset: u64, bytes: u64) -> Extent {
        Extent { offset, bytes }
    }

    #[test]
    fn a_chain_is_planned_checked_and_applied() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().join("chain");
        let original = t.path().join("disk.img");
        let inc = |extents: Vec<Extent>| {
            Some(Increment {
                disk_bytes: 16,
                extents,
            })
        };
        write_backup(
            &root,
            "0000-full",
            None,
            "d",
            &original,
            ("xvda.img", &[b'a'; 16], None),
        );
        write_backup(
            &root,
            "0001-incr",
            Some("0000-full"),
            "d",
            &original,
            ("xvda.incr", b"bbcc", inc(vec![ext(2, 2), ext(10, 2)])),
        );
        write_backup(
            &root,
            "0002-incr",
            Some("0001-incr"),
            "d",
            &original,
            ("xvda.incr", b"dd", inc(vec![ext(14, 2)])),
        );
        let rebuilt = |name: Option<&str>| {
            let (_, _, plans) = plan(&root, name).expect("plan");
            let [p] = &plans[..] else { panic!("{plans:?}") };
            super::super::copy_back(&p.base, &p.original, &p.increments, p.format)
                .expect("copy back");
            fs::read(&original).expect("disk")
        };
        assert_eq!(rebuilt(Some("0000-full")), b"aaaaaaaaaaaaaaaa");
        assert_eq!(rebuilt(Some("0001-incr")), b"aabbaaaaaaccaaaa");
        assert_eq!(rebuilt(None), b"aabbaaaaaaccaadd");
        // Named by its own directory.
        let (target, _, _) = plan(&root.join("0001-incr"), None).expect("plan");
        assert_eq!(target, root.join("0001-incr"));

        let err = |name: Option<&str>| plan(&root, name).expect_err("refused").to_string();
        assert!(err(Some("../x")).contains("not a backup of a chain"));
        assert!(err(Some("0007-incr")).contains("manifest.json"));
        // An extent beyond the disk, a broken link, another domain's backup: damage, told.
        write_backup(
            &root,
            "0003-incr",
            Some("0002-incr"),
            "d",
            &original,
            ("xvda.incr", b"ee", inc(vec![ext(15, 2)])),
        );
        assert!(err(None).contains("lies beyond"), "{}", err(None));
        write_backup(
            &root,
            "0003-incr",
            Some("0000-full"),
            "d",
            &original,
            ("xvda.incr", b"ee", inc(vec![ext(0, 2)])),
        );
        assert!(err(None).contains("chain is broken"), "{}", err(None));
        write_backup(
            &root,
            "0003-incr",
            Some("0002-incr"),
            "other",
            &original,
            ("xvda.incr", b"ee", inc(vec![ext(0, 2)])),
        );
        assert!(err(Some("0003-incr")).contains("chain is broken"));
        fs::write(root.join("0001-incr/xvda.incr"), b"XXcc").expect("damage");
        assert!(err(Some("0002-incr")).contains("does not match the manifest"));
        assert_eq!(
            fs::read(&original).expect("disk"),
            b"aabbaaaaaaccaadd",
            "touched"
        );
    }

    #[test]
    fn extents_are_clipped_to_the_disk() {
        let d = DirtyDisk {
            devid: 0,
            vdev: "xvda".into(),
            epoch: 1,
            generation: 1,
            block_bytes: 65536,
            blocks: 3,
            runs: vec![[0, 1], [2, 1], [u64::MAX, 2]],
        };
        assert_eq!(
            extents_of(&d, 65536 * 2 + 100),
            vec![
                Extent {
                    offset: 0,
                    bytes: 65536
                },
                Extent {
                    offset: 131072,
                    bytes: 100
                }
            ]
        );
    }
}
