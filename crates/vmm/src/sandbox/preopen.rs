//! Everything a VMM opens by path, opened before it confines itself: `/dev/kvm` (as its VM),
//! the kernel and initrd, disk images, TAPs, the save file, the console log, the progress file
//! and its own `/proc` files. Once these are open the VMM enters its jail (see [`super::jail`])
//! and builds the domain from the descriptors alone, so that nothing a guest or a stream
//! controls is parsed with the host's filesystem in view.

use std::fs::File;
use std::path::PathBuf;

use rxen_proto::vmspec::{files, VmSpec};

use crate::devices::virtio_slots::{self, SlotError};
use crate::kvm_vm::{KvmVm, KvmVmError};
use crate::loader::{self, KernelImage, LoaderError};
use crate::stats::ProcFile;

/// Errors while opening the VMM's files.
#[derive(Debug, thiserror::Error)]
pub enum PreopenError {
    /// `/dev/kvm` or the VM could not be opened.
    #[error(transparent)]
    Kvm(#[from] KvmVmError),
    /// The kernel could not be read.
    #[error(transparent)]
    Kernel(#[from] LoaderError),
    /// A disk image or TAP could not be opened.
    #[error(transparent)]
    Device(#[from] SlotError),
    /// Another file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Files the VM's last stage of building keeps: the console log, the progress file and the
/// process's own `/proc` files.
pub struct RunFiles {
    /// `RUN_DIR/console.log`, appended to.
    pub console_log: File,
    /// `RUN_DIR/transfer.json`, written in place with save and migration progress.
    pub progress: File,
    /// `/proc/self/pagemap`, where this process may read it.
    pub pagemap: Option<crate::migration::pagemap::Pagemap>,
    /// `/proc/self/status`, for the resident memory.
    pub proc_status: Option<ProcFile>,
}

/// Where the kernel comes from.
pub enum KernelPlan {
    /// Read from the host (or built in) before the jail.
    Read(KernelImage),
    /// From the first disk's GRUB menu (pygrub), read inside the jail: the disk is the guest's,
    /// and its file system is parsed with nothing of the host in view.
    FirstDisk {
        /// The menu entry asked for.
        entry: Option<u32>,
    },
}

/// What a VMM needs from the host's filesystem, open.
pub struct HostFiles {
    /// The VM, created on `/dev/kvm`.
    pub kvm: KvmVm,
    /// The kernel, read and classified, or where to find it.
    pub kernel: KernelPlan,
    /// The initrd, with its path for messages.
    pub initrd: Option<(PathBuf, File)>,
    /// The disks' images (a qcow2 one with its backing chain), in the order of the spec's disks
    /// (not yet locked).
    pub disks: Vec<rxen_virtio::block::DiskImage>,
    /// The NICs' TAP queues, in the order of the spec's NICs.
    pub taps: Vec<File>,
    /// The save file to restore from.
    pub restore: Option<File>,
    /// The files the running VM keeps.
    pub run: RunFiles,
}

impl HostFiles {
    /// Opens every file `spec` names. The save file comes from `restore_fd` when rxend passed
    /// it (a spec written by hand may name the path alone).
    pub fn open(spec: &VmSpec) -> Result<Self, PreopenError> {
        let open_err = |path: PathBuf| move |source| PreopenError::Open { path, source };
        let kernel = match spec.kernel {
            rxen_proto::vmspec::KernelSource::Bootloader { entry } => {
                if spec.disks.is_empty() {
                    return Err(LoaderError::NoBootDisk.into());
                }
                KernelPlan::FirstDisk { entry }
            }
            ref source => KernelPlan::Read(loader::read_kernel(source)?),
        };
        let initrd = match &spec.initrd {
            Some(p) => Some((p.clone(), File::open(p).map_err(open_err(p.clone()))?)),
            None => None,
        };
        let disks = spec
            .disks
            .iter()
            .map(virtio_slots::open_disk_image)
            .collect::<Result<Vec<_>, _>>()?;
        let taps = spec
            .nics
            .iter()
            .map(|n| {
                rxen_virtio::net::Tap::open(&n.tap)
                    .map(rxen_virtio::net::Tap::into_file)
                    .map_err(|e| PreopenError::Device(SlotError::from(e)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let restore = match (&spec.restore_from, spec.restore_fd) {
            (Some(path), Some(fd)) => {
                Some(crate::vm::take_fd(fd).map_err(|source| PreopenError::Open {
                    path: path.clone(),
                    source,
                })?)
            }
            (Some(path), None) => Some(File::open(path).map_err(open_err(path.clone()))?),
            (None, _) => None,
        };
        let run = RunFiles {
            console_log: crate::console::open_log(&spec.run_dir.join(files::CONSOLE_LOG))
                .map_err(open_err(spec.run_dir.join(files::CONSOLE_LOG)))?,
            progress: crate::vm::open_progress(&spec.run_dir)
                .map_err(open_err(spec.run_dir.join(files::TRANSFER_PROGRESS)))?,
            pagemap: crate::migration::pagemap::Pagemap::open(),
            proc_status: ProcFile::status()
                .map_err(|e| tracing::warn!("RSS will read as 0: {e}"))
                .ok(),
        };
        Ok(Self {
            kvm: KvmVm::new()?,
            kernel,
            initrd,
            disks,
            taps,
            restore,
            run,
        })
    }

    /// The largest file the VMM may write: its biggest disk, or a save stream of its memory.
    pub fn largest_write(&self, spec: &VmSpec) -> u64 {
        let disks = self
            .disks
            .iter()
            .map(rxen_virtio::block::DiskImage::largest_write)
            .max()
            .unwrap_or(0);
        // A save stream holds the memory once, plus page headers and device state.
        let save = spec
            .memory_mib
            .saturating_mul(2 << 20)
            .saturating_add(1 << 30);
        disks.max(save)
    }
}
