//! Disks as rxend prepares them for a VMM: `disk =` entries checked, paths resolved, device IDs
//! computed as Xen does, qcow2 backing chains checked, and formats other than raw and qcow2
//! refused.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use rxen_proto::vmspec::{DiskDevice, ImageFormat};
use xlcfg::{DiskAccess, DiskFormat, DiskSpec};

/// Why a disk cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorageError {
    /// A format other than raw and qcow2.
    #[error("disk {vdev}: format {format} is not supported: rxen serves raw and qcow2 images and block devices only (convert with `qemu-img convert -O qcow2`)")]
    Format {
        /// The vdev.
        vdev: String,
        /// The format's name.
        format: String,
    },
    /// A disk hotplug script (`script=`, `iscsi:`, `nbd:` ...).
    #[error("disk {vdev}: hotplug scripts for disks (script={script}) are not supported")]
    Script {
        /// The vdev.
        vdev: String,
        /// The script.
        script: String,
    },
    /// An empty drive.
    #[error("disk {0}: empty drives are not supported")]
    Empty(String),
    /// A qcow2 image or its backing chain is unusable.
    #[error("disk {vdev}: {reason}")]
    Qcow2 {
        /// The vdev.
        vdev: String,
        /// What is wrong (names the file).
        reason: String,
    },
    /// A disk of the domain would write a backing file of another of its disks.
    #[error(
        "disk {writer} would write {path}, a backing file of disk {reader}: backing files are \
         read-only"
    )]
    WritesBacking {
        /// The writable disk.
        writer: String,
        /// The disk whose chain holds the file.
        reader: String,
        /// The file.
        path: String,
    },
    /// One image or device given to two of the domain's disks, one of them writable.
    #[error(
        "disks {first} and {second} are the same image {path}: a writable disk is exclusive \
         (access 'w!' shares it)"
    )]
    SameImage {
        /// The first disk's vdev.
        first: String,
        /// The second disk's vdev.
        second: String,
        /// The image.
        path: String,
    },
    /// The image or device is missing.
    #[error("disk {vdev}: {path}: {reason}")]
    Path {
        /// The vdev.
        vdev: String,
        /// The path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A vdev name Xen would not accept.
    #[error("disk {0}: unrecognised virtual device name (expected xvdX, hdX, sdX or a number)")]
    Vdev(String),
    /// Two disks with the same device ID.
    #[error("disk {0}: device ID already in use by another disk of this domain")]
    Duplicate(String),
}

/// The Xen device ID of a vdev name (`xvda` = 51712, `hda` = 768, `sda` = 2048, ...).
pub fn vdev_devid(vdev: &str) -> Option<u32> {
    fn letters(s: &str) -> Option<(u32, &str)> {
        let end = s.find(|c: char| !c.is_ascii_lowercase()).unwrap_or(s.len());
        let (l, rest) = s.split_at(end);
        if l.is_empty() || l.len() > 3 {
            return None;
        }
        let mut n = 0u32;
        for c in l.bytes() {
            n = n * 26 + u32::from(c - b'a') + 1;
        }
        Some((n - 1, rest))
    }
    fn partition(s: &str) -> Option<u32> {
        if s.is_empty() {
            Some(0)
        } else {
            s.parse().ok()
        }
    }
    if let Ok(n) = vdev.parse::<u32>() {
        return Some(n);
    }
    if let Some(rest) = vdev.strip_prefix("xvd") {
        let (disk, rest) = letters(rest)?;
        let part = partition(rest)?;
        return if disk < 16 && part < 16 {
            Some((202 << 8) | (disk << 4) | part)
        } else if part < 256 {
            Some((1 << 28) | (disk << 8) | part)
        } else {
            None
        };
    }
    if let Some(rest) = vdev.strip_prefix("hd") {
        let (disk, rest) = letters(rest)?;
        let part = partition(rest)?;
        const MAJORS: [u32; 10] = [3, 22, 33, 34, 56, 57, 88, 89, 90, 91];
        let major = *MAJORS.get(usize::try_from(disk / 2).ok()?)?;
        return (part < 64).then_some((major << 8) | ((disk % 2) << 6) | part);
    }
    if let Some(rest) = vdev.strip_prefix("sd") {
        let (disk, rest) = letters(rest)?;
        let part = partition(rest)?;
        return (disk < 16 && part < 16).then_some((8 << 8) | (disk << 4) | part);
    }
    None
}

/// Checks one `disk =` entry and resolves it into what the VMM opens.
pub fn prepare_disk(spec: &DiskSpec) -> Result<DiskDevice, StorageError> {
    let vdev = spec.vdev.clone();
    if let Some(script) = &spec.script {
        return Err(StorageError::Script {
            vdev,
            script: script.clone(),
        });
    }
    let empty = matches!(spec.format, DiskFormat::Empty)
        || spec.target.as_deref().is_none_or(str::is_empty);
    if spec.is_cdrom && empty {
        // An empty cdrom drive: the VMM gives it an empty medium (capacity 0) until
        // `rxl cd-insert` puts one in.
        let devid = vdev_devid(&vdev).ok_or_else(|| StorageError::Vdev(vdev.clone()))?;
        return Ok(DiskDevice {
            devid,
            vdev,
            path: PathBuf::new(),
            format: ImageFormat::Raw,
            read_only: true,
            cdrom: true,
            shared_writable: false,
            discard: None,
            bytes_per_sec: spec.rxen_bps,
            ops_per_sec: spec.rxen_iops,
        });
    }
    let format = match spec.format {
        DiskFormat::Raw => ImageFormat::Raw,
        DiskFormat::Qcow2 => ImageFormat::Qcow2,
        DiskFormat::Empty => return Err(StorageError::Empty(vdev)),
        other => {
            let format = other.as_str().to_string();
            return Err(StorageError::Format { vdev, format });
        }
    };
    let target = match spec.target.as_deref() {
        None | Some("") => return Err(StorageError::Empty(vdev)),
        Some(t) => t,
    };
    let devid = vdev_devid(&vdev).ok_or_else(|| StorageError::Vdev(vdev.clone()))?;
    let path = PathBuf::from(target);
    let bad = |reason: String| StorageError::Path {
        vdev: vdev.clone(),
        path: target.to_string(),
        reason,
    };
    let meta = std::fs::metadata(&path).map_err(|e| bad(e.to_string()))?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(bad("not a regular file or a block device".into()));
    }
    let read_only = spec.is_cdrom || spec.access == DiskAccess::ReadOnly;
    let d = DiskDevice {
        devid,
        vdev,
        path,
        format,
        read_only,
        cdrom: spec.is_cdrom,
        shared_writable: spec.access == DiskAccess::ReadWriteShared,
        discard: None,
        bytes_per_sec: spec.rxen_bps,
        ops_per_sec: spec.rxen_iops,
    };
    backing_files(&d)?;
    Ok(d)
}

/// The backing files behind disk `d` (a qcow2 image's chain, resolved as QEMU does, links
/// followed), after checking that the whole chain opens and is one rxen reads; none for raw.
pub fn backing_files(d: &DiskDevice) -> Result<Vec<PathBuf>, StorageError> {
    if d.format != ImageFormat::Qcow2 {
        return Ok(Vec::new());
    }
    let chain =
        rxen_virtio::block::qcow2::backing_chain(&d.path).map_err(|e| StorageError::Qcow2 {
            vdev: d.vdev.clone(),
            reason: e.to_string(),
        })?;
    Ok(chain
        .into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect())
}

/// Opens a disk image for a running VMM (a hot-plug: the VMM opens no path
/// once its guest runs), with the flags the VMM uses at start-up. The VMM
/// takes the sharing lock on the descriptor. Links are followed: the path is
/// the administrator's (LVM volumes are links), not one a VMM could plant.
pub fn open_for_vmm(d: &DiskDevice) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if d.cdrom && d.path.as_os_str().is_empty() {
        return empty_medium();
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(!d.read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(&d.path)
}

/// Opens the backing files of disk `d` for a running VMM (a hot-plug), read-only, each with the
/// path its chain names it by (top down); none for a raw disk.
pub fn open_backing_for_vmm(d: &DiskDevice) -> Result<Vec<(PathBuf, std::fs::File)>, StorageError> {
    if d.format != ImageFormat::Qcow2 {
        return Ok(Vec::new());
    }
    let bad = |reason: String| StorageError::Qcow2 {
        vdev: d.vdev.clone(),
        reason,
    };
    rxen_virtio::block::qcow2::backing_chain(&d.path)
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .map(|p| {
            rxen_virtio::block::qcow2::open_backing(&p)
                .map(|f| (p.clone(), f))
                .map_err(|e| bad(format!("{}: {e}", p.display())))
        })
        .collect()
}

/// An empty cdrom medium for a running VMM (`rxl cd-eject`): an empty anonymous file.
pub fn empty_medium() -> std::io::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(
        c"rxen-empty-cdrom",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    Ok(std::fs::File::from(fd))
}

/// Whether an open image takes discards (what the VMM would look up itself at start-up).
pub fn takes_discards(file: &std::fs::File) -> bool {
    rxen_virtio::block::takes_discards(file)
}

/// Prepares every disk of a domain, refusing duplicate device IDs.
pub fn prepare_disks(specs: &[DiskSpec]) -> Result<Vec<DiskDevice>, StorageError> {
    let mut out: Vec<DiskDevice> = Vec::new();
    // Each disk's image with links resolved, and its backing files, beside `out`.
    let mut images: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    for s in specs {
        let d = prepare_disk(s)?;
        if out.iter().any(|o| o.devid == d.devid) {
            return Err(StorageError::Duplicate(d.vdev));
        }
        if d.path.as_os_str().is_empty() {
            // An empty cdrom drive shares no image.
            out.push(d);
            images.push((PathBuf::new(), Vec::new()));
            continue;
        }
        let image = std::fs::canonicalize(&d.path).unwrap_or_else(|_| d.path.clone());
        let backing = backing_files(&d)?;
        let exclusive = |x: &DiskDevice| !x.read_only && !x.shared_writable;
        if let Some(o) = out
            .iter()
            .zip(&images)
            .find(|(o, (i, _))| *i == image && (exclusive(o) || exclusive(&d)))
            .map(|(o, _)| o)
        {
            return Err(StorageError::SameImage {
                first: o.vdev.clone(),
                second: d.vdev.clone(),
                path: d.path.display().to_string(),
            });
        }
        // Nobody writes a backing file: neither this disk one of an earlier disk, nor an
        // earlier disk one of this one.
        for (o, (oi, ob)) in out.iter().zip(&images) {
            if !d.read_only && ob.contains(&image) {
                return Err(StorageError::WritesBacking {
                    writer: d.vdev.clone(),
                    reader: o.vdev.clone(),
                    path: image.display().to_string(),
                });
            }
            if !o.read_only && backing.contains(oi) {
                return Err(StorageError::WritesBacking {
                    writer: o.vdev.clone(),
                    reader: d.vdev.clone(),
                    path: oi.display().to_string(),
                });
            }
        }
        images.push((image, backing));
        out.push(d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devids_follow_xen() {
        assert_eq!(vdev_devid("xvda"), Some(51712));
        assert_eq!(vdev_devid("xvdb"), Some(51728));
        assert_eq!(vdev_devid("xvda1"), Some(51713));
        assert_eq!(vdev_devid("xvdq"), Some((1 << 28) | (16 << 8)));
        assert_eq!(vdev_devid("hda"), Some(768));
        assert_eq!(vdev_devid("hdb"), Some(832));
        assert_eq!(vdev_devid("hdc"), Some(5632));
        assert_eq!(vdev_devid("sda"), Some(2048));
        assert_eq!(vdev_devid("51712"), Some(51712));
        assert_eq!(vdev_devid("vda"), None);
        assert_eq!(vdev_devid("xvd"), None);
    }

    #[test]
    fn one_image_twice_is_refused_unless_shared_or_read_only() {
        let dir = tempfile::tempdir().expect("dir");
        let img = dir.path().join("a.img");
        std::fs::write(&img, vec![0u8; 4096]).expect("img");
        let spec =
            |a: &str| xlcfg::parse_disk_spec(&format!("file:{},{a}", img.display())).expect("spec");
        let e = prepare_disks(&[spec("xvda,w"), spec("xvdb,w")]).expect_err("twice");
        assert!(e.to_string().contains("same image"), "{e}");
        assert!(prepare_disks(&[spec("xvda,w"), spec("xvdb,r")]).is_err());
        assert!(prepare_disks(&[spec("xvda,r"), spec("xvdb,r")]).is_ok());
        assert!(prepare_disks(&[spec("xvda,w!"), spec("xvdb,w!")]).is_ok());
    }

    #[test]
    fn formats_and_paths() {
        let dir = tempfile::tempdir().expect("dir");
        let img = dir.path().join("a.img");
        std::fs::write(&img, vec![0u8; 4096]).expect("img");
        let d = prepare_disk(
            &xlcfg::parse_disk_spec(&format!("file:{},xvda,r", img.display())).expect("spec"),
        )
        .expect("disk");
        assert!(d.read_only);
        assert_eq!(d.devid, 51712);
        let q = xlcfg::parse_disk_spec(&format!("{},qcow2,xvdb,w", img.display())).expect("spec");
        let e = prepare_disk(&q).expect_err("not a qcow2 image");
        assert!(e.to_string().contains("not a usable qcow2 image"), "{e}");
        let v = xlcfg::parse_disk_spec(&format!("{},vhd,xvdb,w", img.display())).expect("spec");
        let e = prepare_disk(&v).expect_err("vhd");
        assert!(e.to_string().contains("vhd is not supported"), "{e}");
        let m = xlcfg::parse_disk_spec("file:/nonexistent/x.img,xvdc,w").expect("spec");
        assert!(matches!(prepare_disk(&m), Err(StorageError::Path { .. })));
        let w = xlcfg::parse_disk_spec(&format!("phy:{},xvdd,w!", img.display())).expect("spec");
        assert!(prepare_disk(&w).expect("disk").shared_writable);
        let c =
            xlcfg::parse_disk_spec(&format!("{},,hdc,devtype=cdrom", img.display())).expect("spec");
        let c = prepare_disk(&c).expect("cdrom");
        assert!(c.read_only && c.cdrom);
    }

    #[test]
    fn an_empty_cdrom_drive_gets_an_empty_medium() {
        let c = xlcfg::parse_disk_spec(",raw,hdc,devtype=cdrom").expect("spec");
        let d = prepare_disk(&c).expect("empty cdrom");
        assert!(d.cdrom && d.read_only && d.path.as_os_str().is_empty());
        let f = open_for_vmm(&d).expect("an empty medium");
        assert_eq!(f.metadata().expect("meta").len(), 0);
        // Two empty drives share no image.
        let c2 = xlcfg::parse_disk_spec(",raw,hdd,devtype=cdrom").expect("spec");
        assert_eq!(prepare_disks(&[c, c2]).expect("two drives").len(), 2);
    }
}
