//! pygrub for rxen: finds the kernel, initrd and command line that a guest's own first disk
//! would boot, as Xen's pygrub does, without mounting anything. It reads the partition table
//! ([`partition`]: GPT or MBR, or a disk that is one file system), each partition's ext2/3/4
//! file system read-only through the `ext4-view` crate, and the GRUB menu there ([`menu`]:
//! GRUB 2's `grub.cfg` or GRUB legacy's `menu.lst`). The disk is the guest's, so everything is
//! hostile input: a malformed table, file system or menu is an error naming what was wrong,
//! never a panic, and nothing read is larger than the limits below.

pub mod menu;
pub mod partition;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The largest kernel image read from a guest's disk.
pub const MAX_KERNEL: u64 = 256 << 20;
/// The largest initrd read from a guest's disk.
pub const MAX_INITRD: u64 = 1 << 30;
/// The largest boot menu read.
const MAX_MENU: u64 = 1 << 20;

/// Where GRUB keeps its menu, relative to the root of a root or a `/boot` file system, in the
/// order pygrub tries them.
const MENUS: [(&str, MenuKind); 8] = [
    ("/boot/grub/grub.cfg", MenuKind::Grub2),
    ("/boot/grub2/grub.cfg", MenuKind::Grub2),
    ("/grub/grub.cfg", MenuKind::Grub2),
    ("/grub2/grub.cfg", MenuKind::Grub2),
    ("/boot/grub/menu.lst", MenuKind::Legacy),
    ("/boot/grub/grub.conf", MenuKind::Legacy),
    ("/grub/menu.lst", MenuKind::Legacy),
    ("/grub/grub.conf", MenuKind::Legacy),
];

#[derive(Debug, Clone, Copy)]
enum MenuKind {
    Grub2,
    Legacy,
}

/// Why no kernel was found.
#[derive(Debug, thiserror::Error)]
pub enum PygrubError {
    /// The disk could not be read.
    #[error("cannot read the disk: {0}")]
    Io(#[from] std::io::Error),
    /// The disk is smaller than one sector.
    #[error("the disk is {0} bytes: too small to hold a partition table or a file system")]
    TooSmall(u64),
    /// The partition table is malformed.
    #[error("bad partition table: {0}")]
    BadTable(String),
    /// No partition holds an ext2/3/4 file system with a GRUB menu.
    #[error("no GRUB menu (grub.cfg or menu.lst) on any ext2/3/4 file system of the disk ({0})")]
    NoMenu(String),
    /// The menu has no entry that boots a kernel, or not the one asked for.
    #[error("{menu}: {why}")]
    NoEntry {
        /// The menu's path.
        menu: String,
        /// What is missing.
        why: String,
    },
    /// A file the chosen entry names cannot be read.
    #[error("partition {partition}: {path}: {why}")]
    File {
        /// The partition number (0: the whole disk).
        partition: u32,
        /// The path in the file system.
        path: String,
        /// What went wrong.
        why: String,
    },
}

/// What a disk boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The partition (0: the whole disk) and menu the entry came from.
    pub partition: u32,
    /// The menu's path.
    pub menu: String,
    /// The entry's index in the menu (submenus flattened) and title.
    pub index: usize,
    /// The entry's title.
    pub title: String,
    /// The kernel's path and bytes.
    pub kernel_path: String,
    /// The kernel image.
    pub kernel: Vec<u8>,
    /// The initrd's path and bytes.
    pub initrd: Option<(String, Vec<u8>)>,
    /// The entry's kernel command line.
    pub args: String,
}

/// Something a partition table can be read from.
pub trait Disk {
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl Disk for File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

/// One partition of a disk, as `ext4-view` reads it.
struct Window {
    disk: Arc<dyn Disk>,
    start: u64,
    len: u64,
}

impl ext4_view::Ext4Read for Window {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        start_byte
            .checked_add(dst.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or("a read past the partition's end")?;
        let at = self
            .start
            .checked_add(start_byte)
            .ok_or("offset overflow")?;
        self.disk.read_at(at, dst)?;
        Ok(())
    }
}

/// The kernel, initrd and command line `disk` boots: entry `wanted` of its menu, or the menu's
/// default. `disk` is a block device or an image file (raw).
pub fn choose(disk: &File, wanted: Option<usize>) -> Result<Choice, PygrubError> {
    choose_from(Arc::new(disk.try_clone()?), wanted)
}

/// [`choose`] on any disk: a raw file, or the virtual disk of an image format (qcow2).
pub fn choose_from(disk: Arc<dyn Disk>, wanted: Option<usize>) -> Result<Choice, PygrubError> {
    let mut tried = Vec::new();
    for part in partition::partitions(&*disk)? {
        let window = Window {
            disk: disk.clone(),
            start: part.start,
            len: part.len,
        };
        let fs = match ext4_view::Ext4::load(Box::new(window)) {
            Ok(fs) => fs,
            Err(e) => {
                tried.push(format!("partition {}: {e}", part.number));
                continue;
            }
        };
        let Some((path, kind)) = MENUS.iter().find(|(p, _)| fs.exists(*p).unwrap_or(false)) else {
            tried.push(format!(
                "partition {}: no grub.cfg or menu.lst",
                part.number
            ));
            continue;
        };
        let text = read(&fs, part.number, path, MAX_MENU)?;
        let text = String::from_utf8_lossy(&text);
        let menu = match kind {
            MenuKind::Grub2 => menu::parse_grub_cfg(&text),
            MenuKind::Legacy => menu::parse_menu_lst(&text),
        };
        if menu.entries.is_empty() {
            return Err(PygrubError::NoEntry {
                menu: path.to_string(),
                why: "no entry boots a kernel (no `linux` or `kernel` line)".into(),
            });
        }
        let index = menu.pick(wanted).ok_or_else(|| PygrubError::NoEntry {
            menu: path.to_string(),
            why: format!(
                "no entry {} (the menu has {})",
                wanted.unwrap_or(0),
                menu.entries.len()
            ),
        })?;
        let entry = &menu.entries[index];
        let (kernel_path, kernel) = read_boot_file(&fs, part.number, &entry.kernel, MAX_KERNEL)?;
        let initrd = match &entry.initrd {
            Some(p) => Some(read_boot_file(&fs, part.number, p, MAX_INITRD)?),
            None => None,
        };
        return Ok(Choice {
            partition: part.number,
            menu: path.to_string(),
            index,
            title: entry.title.clone(),
            kernel_path,
            kernel,
            initrd,
            args: entry.args.clone(),
        });
    }
    Err(PygrubError::NoMenu(tried.join("; ")))
}

/// Reads a file the menu names: its path as written (less a GRUB device prefix such as
/// `(hd0,msdos1)`), or under `/boot` when the menu lives on the root file system.
fn read_boot_file(
    fs: &ext4_view::Ext4,
    partition: u32,
    named: &str,
    max: u64,
) -> Result<(String, Vec<u8>), PygrubError> {
    let path = match named.strip_prefix('(') {
        Some(rest) => rest.split_once(')').map_or(named, |(_, p)| p),
        None => named,
    };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let candidates = [path.clone(), format!("/boot{path}")];
    let found = candidates
        .iter()
        .find(|p| fs.exists(p.as_str()).unwrap_or(false))
        .ok_or_else(|| PygrubError::File {
            partition,
            path: path.clone(),
            why: "not found".into(),
        })?;
    Ok((found.clone(), read(fs, partition, found, max)?))
}

/// Reads a regular file of at most `max` bytes.
fn read(
    fs: &ext4_view::Ext4,
    partition: u32,
    path: &str,
    max: u64,
) -> Result<Vec<u8>, PygrubError> {
    let err = |why: String| PygrubError::File {
        partition,
        path: path.to_string(),
        why,
    };
    let meta = fs.metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.is_dir() {
        return Err(err("a directory, not a file".into()));
    }
    if meta.len() > max {
        return Err(err(format!("{} bytes; at most {max} are read", meta.len())));
    }
    fs.read(path).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn disk_of(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(bytes).expect("write");
        f
    }

    #[test]
    fn an_empty_or_tiny_disk_is_a_clear_error() {
        let e = choose(&disk_of(&[]), None).expect_err("empty");
        assert!(e.to_string().contains("too small"), "{e}");
        let e = choose(&disk_of(&[0u8; 4096]), None).expect_err("zeros");
        assert!(e.to_string().contains("no GRUB menu"), "{e}");
    }

    #[test]
    fn an_mbr_entry_past_the_disk_is_skipped() {
        let mut d = vec![0u8; 8192];
        d[510] = 0x55;
        d[511] = 0xAA;
        d[446 + 4] = 0x83;
        d[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        d[446 + 12..446 + 16].copy_from_slice(&100_000u32.to_le_bytes());
        let parts = partition::partitions(&disk_of(&d)).expect("table");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].number, 0, "falls back to the whole disk");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_disks_give_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..8192),
                                               sig in any::<bool>(), gpt in any::<bool>()) {
            let mut bytes = bytes;
            if sig && bytes.len() >= 1024 {
                bytes[510] = 0x55;
                bytes[511] = 0xAA;
                if gpt {
                    bytes[446 + 4] = 0xEE;
                    bytes[512..520].copy_from_slice(b"EFI PART");
                }
            }
            let _ = choose(&disk_of(&bytes), None);
        }
    }
}
