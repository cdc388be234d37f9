//! What can go wrong while the VM is built, restored or run: [`VmmError`].

use std::path::PathBuf;

use crate::boot::bootinfo::BootInfoError;
use crate::boot::gdt::GdtError;
use crate::boot::lapic::LapicError;
use crate::boot::paging::PagingError;
use crate::boot::regs::RegsError;
use crate::console::ConsoleError;
use crate::devices::pio_bus::PioBusError;
use crate::devices::virtio_slots::SlotError;
use crate::event_loop::EventLoopError;
use crate::exit::ExitError;
use crate::kvm_vm::KvmVmError;
use crate::loader::LoaderError;
use crate::memory::MemoryError;
use crate::migration::vcpu_state::SnapshotError;
use crate::migration::TransferError;
use crate::sandbox::preopen::PreopenError;
use crate::vcpu::VcpuError;

/// Errors while creating or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The kernel cannot run this many vCPUs.
    #[error("{vcpus} vCPUs requested: {who} runs at most {max}")]
    TooManyVcpus {
        /// vCPUs the domain asks for (`maxvcpus` where larger).
        vcpus: u32,
        /// The limit.
        max: u32,
        /// Whose limit it is.
        who: &'static str,
    },
    /// The VMM could not confine itself; it does not run a guest unconfined.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// A file the VMM needs could not be opened.
    #[error(transparent)]
    Preopen(#[from] PreopenError),
    /// The vCPU threads did not come up (register, and park when starting paused) in time.
    #[error("the vCPU threads did not start within {0:?}")]
    VcpusNotStarted(std::time::Duration),
    /// The spec could not be read.
    #[error("cannot read spec {path}: {source}")]
    SpecRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The spec is not a valid `VmSpec`.
    #[error("invalid spec {path}: {source}")]
    SpecParse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The run directory is unusable.
    #[error("run directory {path}: {source}")]
    RunDir {
        /// The directory or file in it.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// KVM setup failed.
    #[error(transparent)]
    Kvm(#[from] KvmVmError),
    /// Guest memory setup failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel could not be loaded.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// The GDT could not be written.
    #[error(transparent)]
    Gdt(#[from] GdtError),
    /// The page tables could not be written.
    #[error(transparent)]
    Paging(#[from] PagingError),
    /// The boot info could not be written.
    #[error(transparent)]
    BootInfo(#[from] BootInfoError),
    /// vCPU registers could not be set.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// The LAPIC could not be configured.
    #[error(transparent)]
    Lapic(#[from] LapicError),
    /// A KVM vCPU ioctl failed.
    #[error("vcpu{id}: cannot {what}: {source}")]
    VcpuIoctl {
        /// vCPU index.
        id: u32,
        /// What was being done.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// A vCPU thread failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The port bus could not be built.
    #[error(transparent)]
    PioBus(#[from] PioBusError),
    /// The console could not be set up.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// An event fd could not be created.
    #[error("cannot create an event fd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The exit machinery failed.
    #[error(transparent)]
    Exit(#[from] ExitError),
    /// The event loop failed.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// The save file or migration stream could not be used.
    #[error("cannot restore the domain: {0}")]
    Restore(#[from] TransferError),
    /// Saved vCPU, VM or device state could not be applied.
    #[error("cannot restore the domain: {0}")]
    Snapshot(#[from] SnapshotError),
    /// The save file could not be opened (or its inherited descriptor is not open).
    #[error("cannot open save file {path}: {source}")]
    SaveFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The incoming migration connection failed.
    #[error("incoming migration: {0}")]
    Incoming(String),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Device(#[from] SlotError),
}
