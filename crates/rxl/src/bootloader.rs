//! What `bootloader = "pygrub"` will boot, for `rxl create -n`: the same reader the VMM runs on
//! the domain's first disk (raw files, block devices and qcow2 chains), run here on the disk's
//! path, so that the dry run shows the menu entry, kernel, initrd and command line it chose.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use xlcfg::{DiskFormat, DomainConfig};

/// What pygrub chose, as `create -n` shows it under `rxen.pygrub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PygrubChoice {
    /// The disk read: its vdev and path.
    pub disk: String,
    /// Its path on the host.
    pub path: String,
    /// The partition the menu was found on (0: the whole disk).
    pub partition: u32,
    /// The menu file.
    pub menu: String,
    /// The entry's index (submenus flattened) and title.
    pub entry: usize,
    /// The entry's title.
    pub title: String,
    /// The kernel's path inside the guest's file system.
    pub kernel: String,
    /// The initrd's path, if the entry has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// The command line the guest will get: the entry's, then the domain's `root`/`extra`.
    pub cmdline: String,
}

/// Why the dry run could not say what pygrub will boot.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The disk could not be opened here (a caller who may not read it; the real create runs as
    /// rxend's user).
    #[error("pygrub: cannot read disk {vdev} ({path}): {source}")]
    Unreadable {
        /// The disk's vdev.
        vdev: String,
        /// Its path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The disk has nothing pygrub can boot, or is malformed: the domain would not start.
    #[error("pygrub: disk {vdev} ({path}): {why}")]
    Unbootable {
        /// The disk's vdev.
        vdev: String,
        /// Its path.
        path: String,
        /// What was wrong.
        why: String,
    },
}

/// What pygrub will boot for `config`, or `None` when the domain does not boot through pygrub
/// (a `kernel`, no bootloader, no disk or bootloader arguments rxen's pygrub does not take:
/// the daemon's own checks report those).
pub fn preview(config: &DomainConfig) -> Result<Option<PygrubChoice>, PreviewError> {
    if config.kernel.is_some()
        || !config
            .bootloader
            .as_deref()
            .is_some_and(xlcfg::model::is_pygrub)
    {
        return Ok(None);
    }
    let Some(entry) = xlcfg::model::pygrub_entry(&config.bootloader_args) else {
        return Ok(None);
    };
    let Some(d) = config.disks.first() else {
        return Ok(None);
    };
    let Some(target) = d.target.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    // As rxend opens it: the path as written.
    let path = PathBuf::from(target);
    let shown = path.display().to_string();
    let unreadable = |source| PreviewError::Unreadable {
        vdev: d.vdev.clone(),
        path: shown.clone(),
        source,
    };
    let unbootable = |why: String| PreviewError::Unbootable {
        vdev: d.vdev.clone(),
        path: shown.clone(),
        why,
    };
    let file = File::open(&path).map_err(unreadable)?;
    let disk: Arc<dyn rxen_pygrub::Disk> = match d.format {
        DiskFormat::Qcow2 => Arc::new(
            rxen_virtio::block::qcow2::Qcow2Image::open(file, &path, false, &mut |p| {
                rxen_virtio::block::qcow2::open_backing(p)
            })
            .map_err(|e| unbootable(e.to_string()))?,
        ),
        _ => Arc::new(file),
    };
    let c = rxen_pygrub::choose_from(disk, entry.map(|e| e as usize))
        .map_err(|e| unbootable(e.to_string()))?;
    let own = config.cmdline.clone().unwrap_or_default();
    Ok(Some(PygrubChoice {
        disk: d.vdev.clone(),
        path: shown.clone(),
        partition: c.partition,
        menu: c.menu,
        entry: c.index,
        title: c.title,
        kernel: c.kernel_path,
        initrd: c.initrd.map(|(p, _)| p),
        // As the VMM joins them: the entry's line, then the domain's own.
        cmdline: format!("{} {own}", c.args).trim().to_string(),
    }))
}
