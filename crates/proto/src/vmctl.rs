//! The VMM control socket: rxend sends one [`VmRequest`] per line and reads
//! one [`VmResponse`] per line, on `run_dir/control.sock`.

use serde::{Deserialize, Serialize};

/// A request from rxend to a running VMM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Write the save stream to `path` (`rxl save`), then do `then`.
    Save {
        /// The save file to create.
        path: std::path::PathBuf,
        /// The config that rides in the stream.
        config: crate::stream::ConfigRecord,
        /// What the domain does once saved.
        then: AfterSave,
    },
    /// Send the domain over the connected socket passed with this request
    /// (SCM_RIGHTS); the VMM exits once the target says it resumed, and
    /// resumes locally on any failure before that.
    MigrateSend {
        /// The config that rides in the stream.
        config: crate::stream::ConfigRecord,
        /// Pre-copy while the guest runs (else pause, copy, resume there).
        live: bool,
        /// Most pre-copy rounds before stop-and-copy.
        max_rounds: u32,
        /// Go to stop-and-copy once the dirty set can be sent within this many milliseconds.
        downtime_ms: u64,
    },
}

/// What a domain does after `Save`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterSave {
    /// The VMM exits (plain `rxl save`).
    Exit,
    /// The domain keeps running (`rxl save -c`).
    Resume,
    /// The domain stays paused (`rxl save -p`).
    Pause,
}

/// Figures of one save or migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TransferStats {
    /// Pre-copy rounds (the stop-and-copy round included); 1 for a save.
    pub rounds: u32,
    /// Stream bytes written.
    pub bytes: u64,
    /// Pages sent with data.
    pub pages: u64,
    /// Zero pages sent as a flag only.
    pub zero_pages: u64,
    /// Pages sent in the last (stop-and-copy) round.
    pub last_round_pages: u64,
    /// From the request to the end, in milliseconds.
    pub total_ms: f64,
    /// From pausing the guest to its run on the target (migration) or here (checkpoint), in milliseconds.
    pub downtime_ms: f64,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum VmResponse {
    /// The request was carried out.
    Ok,
    /// Statistics, the answer to [`VmRequest::Stats`].
    Stats(VmStats),
    /// A save or migration finished.
    Transferred(TransferStats),
    /// The request failed.
    Error {
        /// What went wrong.
        message: String,
    },
}
