//! The VMM control socket: rxend sends one [`VmRequest`] per line and reads
//! one [`VmResponse`] per line, on `run_dir/control.sock`.

use serde::{Deserialize, Serialize};

/// The exit record's detail when a VMM destroyed its domain because its fence deadline
/// ([`VmRequest::FenceDeadline`]) passed.
pub const FENCE_EXIT_DETAIL: &str = "fence deadline passed";

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
    /// Ask the guest to have its first `online` vCPUs online (ports 0x516/0x517).
    SetVcpus {
        /// vCPUs wanted online.
        online: u32,
    },
    /// Set the balloon's target: the guest should keep `target_mib` MiB and give the rest back.
    SetBalloon {
        /// Memory the guest keeps, in MiB (at most the boot size).
        target_mib: u64,
    },
    /// Hot-plug a disk into the lowest free slot; rxend passes the opened
    /// image with this request (SCM_RIGHTS), followed by its backing files'.
    AttachDisk {
        /// The disk.
        disk: crate::vmspec::DiskDevice,
        /// A qcow2 image's backing files as its chain names them (resolved, top down), one
        /// descriptor each after the image's.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        backing: Vec<std::path::PathBuf>,
    },
    /// Hot-unplug the disk with this device ID.
    DetachDisk {
        /// Its Xen device ID.
        devid: u32,
    },
    /// Hot-plug a NIC into the lowest free slot (rxend has created its TAP and
    /// passes a `/dev/net/tun` descriptor attached to it with this request).
    AttachNic {
        /// The NIC.
        nic: crate::vmspec::NicDevice,
    },
    /// Hot-unplug the NIC with this device ID.
    DetachNic {
        /// Its Xen device ID.
        devid: u32,
    },
    /// Write the save stream to the file passed with this request
    /// (SCM_RIGHTS; rxend gives it `path`'s name once the VMM answered), then do `then`.
    Save {
        /// The save file, for messages.
        path: std::path::PathBuf,
        /// The config that rides in the stream.
        config: crate::stream::ConfigRecord,
        /// What the domain does once saved.
        then: AfterSave,
    },
    /// After a `Save` with `then: hold`: exit as saved to `path` when rxend
    /// gave the stream its name (`committed`), else go on as before the save.
    SaveFinish {
        /// The save file, for the exit record.
        path: std::path::PathBuf,
        /// Whether the save file is in place.
        committed: bool,
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
    /// A storage migration (`rxl migrate --copy-storage`): as `MigrateSend`, and every disk
    /// travels in the stream too (the target does not share the storage). A request of its
    /// own, not a field of `MigrateSend`: a VMM from before storage migration refuses it
    /// (an unknown request) instead of sending the domain without its disks.
    MigrateSendStorage {
        /// The config that rides in the stream.
        config: crate::stream::ConfigRecord,
        /// Pre-copy while the guest runs (else pause, copy, resume there).
        live: bool,
        /// Most pre-copy rounds before stop-and-copy.
        max_rounds: u32,
        /// Go to stop-and-copy once the dirty set can be sent within this many milliseconds.
        downtime_ms: u64,
    },
    /// Write an ELF core file of the guest's memory and vCPU registers to the file passed
    /// with this request (SCM_RIGHTS; rxend gives it `path`'s name once the VMM answered).
    /// The guest is paused meanwhile and runs again after unless it was paused before.
    DumpCore {
        /// The core file, for messages.
        path: std::path::PathBuf,
    },
    /// Put the medium passed with this request (SCM_RIGHTS; an empty file for none) in the
    /// cdrom drive with this device ID; the guest gets a configuration-change interrupt.
    ChangeMedia {
        /// The drive's Xen device ID.
        devid: u32,
    },
    /// Send a magic SysRq key on the console: a BREAK on the UART, then `key`, as a serial
    /// terminal does and Linux's 8250 driver understands.
    Sysrq {
        /// The key.
        key: u8,
    },
    /// Read and clear every disk's dirty map in one step (an incremental backup, while the
    /// domain is paused); answered with [`VmResponse::Dirty`].
    TakeDirty,
    /// Give back what `TakeDirty` returned for one disk when its backup failed: its blocks
    /// are marked again and its generation goes back, unless the map changed since.
    MergeDirty {
        /// The disk's map as taken.
        disk: DirtyDisk,
    },
    /// Fencing of an `ha = 1` domain in a pool: the VMM destroys the domain itself unless this
    /// request comes again within `ms` milliseconds (rxend sends it at every renewal of its
    /// host's lease, so a domain whose rxend died or lost etcd stops before the pool restarts
    /// it elsewhere); `ms = 0` disarms it.
    FenceDeadline {
        /// Milliseconds from now.
        ms: u64,
    },
    /// Inject a non-maskable interrupt into one vCPU (`rxl trigger DOMAIN nmi [VCPU]`); a
    /// paused vCPU takes it when the domain runs again.
    Nmi {
        /// The vCPU index.
        vcpu: u32,
    },
}

/// One disk's dirty map as taken: the blocks the guest wrote or discarded since the take
/// before (or since the device was created, for the first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirtyDisk {
    /// Xen device ID.
    pub devid: u32,
    /// Virtual device name.
    pub vdev: String,
    /// The map's identity: new whenever the device is created (VMM start, hot-plug,
    /// restore, migration).
    pub epoch: u64,
    /// The map's generation after this take (the one before is one less).
    pub generation: u64,
    /// Bytes per block.
    pub block_bytes: u64,
    /// Blocks of the disk.
    pub blocks: u64,
    /// The dirty blocks as `[first, count]` runs, in order.
    pub runs: Vec<[u64; 2]>,
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
    /// The domain stays stopped as the save left it (vCPUs and devices) until
    /// `SaveFinish`: rxend's plain `rxl save`, which must not lose the domain
    /// when the file cannot be put in place.
    Hold,
}

/// How far a save or migration has got, for progress bars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferProgress {
    /// The pre-copy round being sent (1 for a save).
    pub round: u32,
    /// Pages of this round sent so far.
    pub round_sent: u64,
    /// Pages this round sends.
    pub round_pages: u64,
    /// Pages of guest RAM.
    pub ram_pages: u64,
    /// Stream bytes written so far.
    pub bytes: u64,
    /// Whether the guest is paused (the stop-and-copy round).
    pub paused: bool,
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
    /// Pages whose content changed after they were sent although KVM's dirty
    /// log did not report them, found by rehashing: reported by VMMs before
    /// the rehash went (it found only what the last pre-copy round left
    /// unsent); 0 from current ones.
    #[serde(default)]
    pub unlogged_pages: u64,
    /// Disk bytes sent by a storage migration (data and zero ranges, all rounds).
    #[serde(default)]
    pub disk_bytes: u64,
    /// Disk bytes sent in the last (stop-and-copy) round.
    #[serde(default)]
    pub last_round_disk_bytes: u64,
    /// From the request to the end, in milliseconds.
    pub total_ms: f64,
    /// From pausing the guest to its run on the target (migration) or here (checkpoint), in
    /// milliseconds. A migration's: until the target's vCPUs ran, by the target's report,
    /// kept between the source's "go" and its reading of "resumed".
    pub downtime_ms: f64,
    /// Where the downtime went, phase by phase (absent from VMMs that did not measure it).
    #[serde(default)]
    pub stop_copy: Option<StopCopyBreakdown>,
}

/// The stop-and-copy phase of a save or migration, phase by phase, each
/// measured with a monotonic clock where it happens (the source VMM, or the
/// target VMM for the target's phases), in microseconds. The phases follow
/// one another within the downtime and do not overlap; what they leave out
/// (the handshake's round trips, the target reading the stream's tail) is
/// the downtime less [`StopCopyBreakdown::accounted_us`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopCopyBreakdown {
    /// Stopping the vCPUs: from the pause request until every vCPU left
    /// KVM_RUN and finished any port I/O it was in.
    pub vcpu_pause_us: u64,
    /// Freezing the virtio queues, so that no device writes guest memory.
    pub device_freeze_us: u64,
    /// Listing every page of RAM for the only round of a transfer that is
    /// not live (a save, `--non-live`).
    #[serde(default)]
    pub page_list_us: Option<u64>,
    /// The last read of KVM's dirty log (live migration only).
    #[serde(default)]
    pub dirty_sync_us: Option<u64>,
    /// Rehashing pages for writes the dirty log missed: from VMMs before the
    /// rehash went; current ones leave it out.
    #[serde(default)]
    pub rehash_us: Option<u64>,
    /// Taking the disks' dirty maps a last time and sending their last blocks (storage
    /// migration only).
    #[serde(default)]
    pub disk_last_round_us: Option<u64>,
    /// Reading the vCPUs', the VM's and the devices' state.
    pub state_capture_us: u64,
    /// Stream bytes of the last round: its pages and the state records.
    pub last_round_bytes: u64,
    /// Writing the last round to the connection or file, until the stream's
    /// end was flushed (a save's file not yet synced).
    pub last_round_wire_us: u64,
    /// Flushing and syncing the save file (save only).
    #[serde(default)]
    pub file_sync_us: Option<u64>,
    /// The target, from the end of the stream to being ready to run: taking
    /// the disks' locks, restoring vCPUs, VM and devices (migration only;
    /// the target's own measure).
    #[serde(default)]
    pub target_restore_us: Option<u64>,
    /// The target, from the source's "go" to the guest running: starting the
    /// vCPU and device threads (migration only; the target's own measure).
    #[serde(default)]
    pub target_resume_us: Option<u64>,
}

impl StopCopyBreakdown {
    /// The phases measured, in order, as (label, microseconds).
    pub fn phases(&self) -> Vec<(&'static str, u64)> {
        let mut out = vec![
            ("vCPU pause", self.vcpu_pause_us),
            ("device freeze", self.device_freeze_us),
        ];
        if let Some(us) = self.page_list_us {
            out.push(("page list", us));
        }
        if let Some(us) = self.dirty_sync_us {
            out.push(("dirty-log sync", us));
        }
        if let Some(us) = self.rehash_us {
            out.push(("rehash", us));
        }
        if let Some(us) = self.disk_last_round_us {
            out.push(("last disk blocks", us));
        }
        out.push(("state capture", self.state_capture_us));
        out.push(("last round on the wire", self.last_round_wire_us));
        if let Some(us) = self.file_sync_us {
            out.push(("file sync", us));
        }
        if let Some(us) = self.target_restore_us {
            out.push(("target restore", us));
        }
        if let Some(us) = self.target_resume_us {
            out.push(("target resume", us));
        }
        out
    }

    /// The sum of the phases, in microseconds.
    pub fn accounted_us(&self) -> u64 {
        self.phases().iter().map(|(_, us)| us).sum()
    }

    /// One line for logs: `vCPU pause 12 us, ..., last round 4096 bytes`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .phases()
            .iter()
            .map(|(what, us)| format!("{what} {us} us"))
            .collect();
        parts.push(format!("last round {} bytes", self.last_round_bytes));
        parts.join(", ")
    }
}

/// What a migration's target tells the source after `resumed`, on a line of
/// its own (`timings {json}`): its side of the stop-and-copy phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetTimings {
    /// From the end of the stream to being ready to run, in microseconds.
    pub restore_us: u64,
    /// From "go" to the guest running, in microseconds.
    pub resume_us: u64,
    /// When the guest ran on the target: the last vCPU's first entry into the guest, in
    /// microseconds since the Unix epoch by the target host's clock (absent from targets
    /// before it). The source bounds it by what it saw itself, so a skewed clock cannot make
    /// the downtime it reports wrong by more than the handshake's last message.
    #[serde(default)]
    pub running_at_unix_us: Option<u64>,
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
    /// One entry per disk.
    #[serde(default)]
    pub disks: Vec<DiskStats>,
    /// One entry per NIC.
    #[serde(default)]
    pub nics: Vec<NicStats>,
    /// The balloon, when the VM has one.
    #[serde(default)]
    pub balloon: Option<BalloonStats>,
    /// The vCPUs the guest reports online (port 0x517), if it has reported.
    #[serde(default)]
    pub online_mask: Option<u32>,
}

/// The state of the virtio-balloon, in 4 KiB pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    /// Pages the host asked for.
    pub target_pages: u32,
    /// Pages the guest driver says it holds.
    pub actual_pages: u32,
    /// Pages given back to the host (dropped from the VMM's memory).
    pub inflated_pages: u64,
}

/// Counters of one virtual disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStats {
    /// Xen device ID.
    pub devid: u32,
    /// Virtual device name.
    pub vdev: String,
    /// virtio-mmio slot.
    pub slot: u32,
    /// Read requests.
    pub read_reqs: u64,
    /// Sectors read.
    pub read_sectors: u64,
    /// Write requests.
    pub write_reqs: u64,
    /// Sectors written.
    pub write_sectors: u64,
    /// Flush requests.
    #[serde(default)]
    pub flush_reqs: u64,
    /// Requests that failed.
    #[serde(default)]
    pub errors: u64,
}

/// Counters of one network interface (tx = from the guest, rx = to the guest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicStats {
    /// Xen device ID.
    pub devid: u32,
    /// The guest's MAC.
    pub mac: String,
    /// The host TAP device.
    pub tap: String,
    /// virtio-mmio slot.
    pub slot: u32,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Frames the guest sent.
    pub tx_packets: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Guest frames dropped by the `ip=` anti-spoofing filter.
    pub tx_spoof_drops: u64,
    /// Guest frames dropped for other reasons (bad descriptors, TAP errors).
    pub tx_drops: u64,
    /// Frames for the guest dropped (no buffers, too large).
    pub rx_drops: u64,
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
    /// Every disk's dirty map, the answer to [`VmRequest::TakeDirty`].
    Dirty {
        /// One entry per disk.
        disks: Vec<DirtyDisk>,
    },
    /// The request failed.
    Error {
        /// What went wrong.
        message: String,
    },
}
