//! Storage migration in rxend (`rxl migrate --copy-storage`): the source lists its disks
//! ([`describe_disks`]: vdev, format, guest size) in the [`Reservation`]; the target
//! creates a new image for each in its own `[relocation] storage-dir` ([`TargetDisks`]),
//! never at a path the source names, and rewrites the domain's config to them. The VMMs
//! copy the data in the migration stream.
//!
//! A target image is `STORAGE-DIR/<domain>-<vdev>.raw` (a sparse file of the disk's size) or
//! `.qcow2` (a standalone qcow2 image: the source's backing chain is flattened, the guest's
//! view copied), created with `O_EXCL`: an existing file refuses the migration before anything
//! is sent. Read-only disks and cdroms are refused (the target would open them read-only).
//!
//! [`Reservation`]: super::handshake::Reservation

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rxen_proto::vmspec::ImageFormat;
use rxen_virtio::block::qcow2::{self, Qcow2Image};
use serde::{Deserialize, Serialize};
use xlcfg::DomainConfig;

/// Where a target puts copied disks unless its config says otherwise.
pub const DEFAULT_STORAGE_DIR: &str = "/var/lib/rxen/images";

/// One disk a storage migration copies, as the source describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopiedDisk {
    /// The disk's vdev (names the target's file).
    pub vdev: String,
    /// Its format on the source: the target's image has the same (a qcow2 chain flattened).
    pub format: ImageFormat,
    /// The guest's size of the disk in bytes.
    pub size: u64,
}

/// Why a storage migration cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StorageMigrationError {
    /// A disk --copy-storage does not copy.
    #[error("disk {0}: --copy-storage copies writable disks only (read-only disks and cdroms are refused)")]
    NotCopied(String),
    /// A disk whose size cannot be read.
    #[error("disk {vdev} ({path}): {why}")]
    Source {
        /// The vdev.
        vdev: String,
        /// Its image.
        path: String,
        /// What failed.
        why: String,
    },
    /// The source's list and the config disagree, or name something unsafe.
    #[error("storage migration: {0}")]
    Mismatch(String),
    /// A target image could not be made.
    #[error("cannot create {path}: {why}")]
    Create {
        /// The file.
        path: String,
        /// What failed.
        why: String,
    },
}

/// The source's list: every disk of `config` with its format and guest size.
pub fn describe_disks(config: &DomainConfig) -> Result<Vec<CopiedDisk>, StorageMigrationError> {
    let disks = crate::storage::prepare_disks(&config.disks)
        .map_err(|e| StorageMigrationError::Mismatch(e.to_string()))?;
    let mut out = Vec::new();
    for d in disks {
        if d.read_only || d.cdrom {
            return Err(StorageMigrationError::NotCopied(d.vdev));
        }
        let src = |why: String| StorageMigrationError::Source {
            vdev: d.vdev.clone(),
            path: d.path.display().to_string(),
            why,
        };
        let size = match d.format {
            ImageFormat::Raw => File::open(&d.path)
                .and_then(|mut f| f.seek(SeekFrom::End(0)))
                .map_err(|e| src(e.to_string()))?,
            ImageFormat::Qcow2 => {
                let f = File::open(&d.path).map_err(|e| src(e.to_string()))?;
                Qcow2Image::open(f, &d.path, false, &mut |p| qcow2::open_backing(p))
                    .map_err(|e| src(e.to_string()))?
                    .size()
            }
        };
        out.push(CopiedDisk {
            vdev: d.vdev,
            format: d.format,
            size,
        });
    }
    Ok(out)
}

/// The images a target made for a storage migration: removed on drop unless kept.
#[derive(Debug, Default)]
pub struct TargetDisks {
    paths: Vec<PathBuf>,
}

impl TargetDisks {
    /// Creates an image in `dir` for each disk of `disks` and points `config`'s disks at
    /// them. Every disk of `config` must be in the list and nothing else; a file that exists
    /// already refuses (nothing is overwritten) and removes what was made before it.
    pub fn create(
        dir: &Path,
        disks: &[CopiedDisk],
        config: &mut DomainConfig,
    ) -> Result<Self, StorageMigrationError> {
        let mismatch = StorageMigrationError::Mismatch;
        if disks.len() != config.disks.len() {
            return Err(mismatch(format!(
                "the source lists {} disks to copy, the domain has {}",
                disks.len(),
                config.disks.len()
            )));
        }
        // The directory itself is made on first use (root's only).
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| StorageMigrationError::Create {
                    path: dir.display().to_string(),
                    why: e.to_string(),
                })?;
        }
        let mut made = TargetDisks::default();
        for c in disks {
            let safe = !c.vdev.is_empty()
                && c.vdev.len() <= 32
                && c.vdev.bytes().all(|b| b.is_ascii_alphanumeric());
            if !safe {
                return Err(mismatch(format!("bad vdev {:?}", c.vdev)));
            }
            let spec = config
                .disks
                .iter_mut()
                .find(|d| d.vdev == c.vdev)
                .ok_or_else(|| mismatch(format!("disk {} is not in the domain", c.vdev)))?;
            if spec.is_cdrom || matches!(spec.access, xlcfg::DiskAccess::ReadOnly) {
                return Err(StorageMigrationError::NotCopied(c.vdev.clone()));
            }
            let ext = match c.format {
                ImageFormat::Raw => "raw",
                ImageFormat::Qcow2 => "qcow2",
            };
            let path = dir.join(format!("{}-{}.{ext}", config.name, c.vdev));
            let err = |why: String| StorageMigrationError::Create {
                path: path.display().to_string(),
                why,
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| err(e.to_string()))?;
            made.paths.push(path.clone());
            match c.format {
                ImageFormat::Raw => file.set_len(c.size).map_err(|e| err(e.to_string()))?,
                ImageFormat::Qcow2 => {
                    qcow2::create_standalone(file, &path, c.size).map_err(|e| err(e.to_string()))?
                }
            }
            spec.target = Some(path.display().to_string());
            spec.format = match c.format {
                ImageFormat::Raw => xlcfg::DiskFormat::Raw,
                ImageFormat::Qcow2 => xlcfg::DiskFormat::Qcow2,
            };
        }
        Ok(made)
    }

    /// The images made.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The migration succeeded: the images stay.
    pub fn keep(mut self) {
        self.paths.clear();
    }
}

impl Drop for TargetDisks {
    fn drop(&mut self) {
        for p in &self.paths {
            // Nothing to do about a file already gone.
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> DomainConfig {
        let text = format!(
            "name = \"vm1\"\nmemory = 64\nkernel = \"/k\"\ndisk = [ \"{}/a.raw,raw,xvda,w\", \"{}/b.qcow2,qcow2,xvdb,w\" ]\n",
            dir.display(),
            dir.display()
        );
        xlcfg::parse(&text, "vm1.cfg", &[]).expect("config").config
    }

    #[test]
    fn target_images_are_new_files_in_the_storage_dir_and_go_on_failure() {
        let top = tempfile::tempdir().expect("tmp");
        // Made on first use.
        let dir = top.path().join("images");
        let dir = &dir;
        let mut cfg = config(Path::new("/elsewhere"));
        let disks = vec![
            CopiedDisk {
                vdev: "xvda".into(),
                format: ImageFormat::Raw,
                size: 8 << 20,
            },
            CopiedDisk {
                vdev: "xvdb".into(),
                format: ImageFormat::Qcow2,
                size: 16 << 20,
            },
        ];
        let made = TargetDisks::create(dir.as_path(), &disks, &mut cfg).expect("made");
        let raw = dir.as_path().join("vm1-xvda.raw");
        let q = dir.as_path().join("vm1-xvdb.qcow2");
        assert_eq!(made.paths(), &[raw.clone(), q.clone()]);
        assert_eq!(fs::metadata(&raw).expect("raw").len(), 8 << 20);
        let img = Qcow2Image::open(File::open(&q).expect("q"), &q, false, &mut |p| {
            qcow2::open_backing(p)
        })
        .expect("a qcow2 image");
        assert_eq!(img.size(), 16 << 20);
        assert!(img.backing().is_empty());
        assert_eq!(
            cfg.disks[0].target.as_deref(),
            Some(raw.to_str().expect("utf8"))
        );
        assert_eq!(
            cfg.disks[1].target.as_deref(),
            Some(q.to_str().expect("utf8"))
        );
        // A second migration of the same name finds the files: refused, nothing overwritten,
        // and what it made before the clash is gone.
        fs::remove_file(&q).expect("rm");
        let mut again = config(Path::new("/elsewhere"));
        let e = TargetDisks::create(dir.as_path(), &disks, &mut again).expect_err("refused");
        assert!(e.to_string().contains("vm1-xvda.raw"), "{e}");
        assert!(!q.exists(), "nothing made after the clash");
        drop(made);
        assert!(!raw.exists() && !q.exists(), "dropped: removed");
        // Unsafe or unknown vdevs, a list that leaves a disk out.
        for bad in ["../x", "xvdz", ""] {
            let mut d = disks.clone();
            d[0].vdev = bad.into();
            let mut c = config(Path::new("/elsewhere"));
            assert!(
                TargetDisks::create(dir.as_path(), &d, &mut c).is_err(),
                "{bad}"
            );
        }
        let mut c = config(Path::new("/elsewhere"));
        assert!(TargetDisks::create(dir.as_path(), &disks[..1], &mut c).is_err());
        assert_eq!(fs::read_dir(dir.as_path()).expect("dir").count(), 0);
        let kept = TargetDisks::create(dir.as_path(), &disks, &mut c).expect("made");
        kept.keep();
        assert!(raw.exists() && q.exists());
    }
}
