//! Saving, restoring and live migration: everything that turns a running VM
//! into a stream (`rxen_proto::stream`) and a stream back into a VM.
//!
//! - `send.rs`: writing the stream: the config and shape, pre-copy rounds
//!   while the guest runs, the pause and the last round, then vCPU, VM and
//!   device state; `Vm::save_to` (a save file) and `Vm::migrate_to` (a
//!   connection to the target VMM).
//! - `memory.rs`: guest memory on its way out: dirty tracking (KVM's log and
//!   the VMM's bitmap), page batches, the progress file `rxl` reads.
//! - `pagemap.rs`: `/proc/self/pagemap`, which tells never-written pages apart.
//! - `receive.rs`: reading a whole stream into guest memory and checking
//!   every record before anything runs.
//! - `vcpu_state.rs`: vCPU and VM-wide (irqchip, PIT, clock) state: capture
//!   from KVM, the record encoding, restore; `regcheck.rs`: which saved
//!   registers a vCPU could really hold.
//! - `devices.rs`: the device records: what each device saves, and the
//!   checks a restore makes on them before any device is built.
//! - `storage.rs`: storage migration (`--copy-storage`): the disks' extents, then their
//!   dirty blocks each round, as disk block records; the target's [`storage::DiskSink`].
//! - `channel.rs`: the migration connection's handshake lines
//!   (`ready`, `received`, `go`, `resumed`, `timings`).

pub mod channel;
pub mod devices;
pub mod memory;
pub mod pagemap;
pub mod receive;
pub mod regcheck;
pub mod send;
pub mod storage;
pub mod vcpu_state;

pub use receive::{receive, Received, StreamSource, KERNEL_KINDS};
pub use send::{SendOptions, Sent};

use rxen_proto::stream::StreamError;

use crate::kvm_vm::KvmVmError;
use vcpu_state::SnapshotError;

/// Errors while sending or receiving a stream.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The stream itself is bad or the connection failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// vCPU or VM state could not be captured or applied.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The dirty log could not be read.
    #[error(transparent)]
    Kvm(#[from] KvmVmError),
    /// Guest memory could not be read or written.
    #[error("guest memory at {addr:#x}: {why}")]
    Memory {
        /// Guest physical address.
        addr: u64,
        /// What failed.
        why: String,
    },
    /// The stream does not fit this VM.
    #[error("{0}")]
    Mismatch(String),
    /// The peer said no, or broke the protocol.
    #[error("{0}")]
    Peer(String),
}
