//! The rxen virtual machine monitor: one process per domain.
//!
//! `rxen-vmm --spec RUN_DIR/spec.json` creates a KVM VM from a
//! [`rxen_proto::vmspec::VmSpec`], boots its kernel, serves the console and
//! control sockets in the run directory, and writes the exit record when the
//! guest or rxend ends it. See `docs/internals.md` for the contracts.

#![deny(missing_docs)]

pub mod boot;
pub mod console;
pub mod control;
pub mod coredump;
pub mod cpuid;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod fence;
pub mod kvm_vm;
pub mod loader;
pub mod memory;
pub mod migration;
pub mod sandbox;
pub mod stats;
pub mod vcpu;
pub mod vm;

pub use vm::{run, VmmError};

/// Locks `m`, carrying on with the data if another thread panicked while holding it.
pub(crate) fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Now, in microseconds since the Unix epoch (the clock two processes on a host share).
pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, micros)
}

/// A duration in whole microseconds (saturating).
pub(crate) fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
