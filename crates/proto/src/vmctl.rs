//! The VMM control socket: rxend sends one [`VmRequest`] per line and reads
//! one [`VmResponse`] per line, on `run_dir/control.sock`.

use serde::{Deserialize, Serialize};

/// A request from rxend to a running VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum VmRequest {
    /// Stop every vCPU (they leave KVM_RUN and wait).
    Pause,
    /// Let the vCPUs run again.
    Unpause,
    /// Ask the guest to power itself off (the guest sees it and shuts down).
    Shutdown,
    /// Ask the guest to reboot itself.
    Reboot,
    /// Stop the guest now and exit (writes an exit record with `destroyed`).
    Destroy,
    /// Report state and counters.
    Stats,
}

/// What a vCPU is doing, as `xl vcpu-list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VcpuState {
    /// Executing guest code (or in the VMM on its behalf).
    Running,
    /// Halted, waiting for an interrupt.
    Blocked,
    /// Stopped by a pause request.
    Paused,
    /// Not started or offline.
    Offline,
}

/// Counters of one vCPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuStats {
    /// vCPU index.
    pub id: u32,
    /// Host thread ID of the vCPU thread.
    pub tid: i32,
    /// CPU time consumed by the thread, in nanoseconds.
    pub cpu_time_ns: u64,
    /// Current state.
    pub state: VcpuState,
    /// Host CPU the thread last ran on.
    pub host_cpu: Option<u32>,
}

/// Counters and state of the whole VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    /// True while paused.
    pub paused: bool,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// One entry per vCPU.
    pub vcpus: Vec<VcpuStats>,
    /// Resident memory of the VMM process, in KiB (guest pages included).
    pub rss_kib: u64,
}

/// The VMM's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum VmResponse {
    /// The request was carried out.
    Ok,
    /// Statistics, the answer to [`VmRequest::Stats`].
    Stats(VmStats),
    /// The request failed.
    Error {
        /// What went wrong.
        message: String,
    },
}
