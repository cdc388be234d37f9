//! Persisted domain records: one JSON file per domain, written atomically,
//! so that a restarted rxend finds and adopts every domain it left.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rxen_proto::vmspec::ExitReason;
use serde::{Deserialize, Serialize};
use xlcfg::DomainConfig;

/// Where a domain is in its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DomainState {
    /// rxend is starting it (create, restore, incoming migration): written before anything is
    /// plugged or spawned, so that an rxend that dies meanwhile finds, when it starts again,
    /// the VMM, TAPs and run directory to adopt or remove.
    Starting {
        /// Started paused.
        paused: bool,
    },
    /// A VMM runs it.
    Running {
        /// PID of its rxen-vmm.
        pid: i32,
        /// Start time of that process (clock ticks after boot), against PID reuse.
        start_ticks: u64,
        /// Paused by `rxl pause`.
        paused: bool,
    },
    /// The guest stopped and the domain was preserved (`on_* = "preserve"`).
    Shutdown {
        /// Why it stopped.
        reason: ExitReason,
    },
}

/// Everything rxend remembers about one domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainRecord {
    /// Domain ID.
    pub domid: u32,
    /// Current name.
    pub name: String,
    /// UUID as text.
    pub uuid: String,
    /// The resolved configuration.
    pub config: DomainConfig,
    /// The config file the domain was created from.
    pub config_path: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: f64,
    /// CPU time used by earlier VMM processes of this record, in nanoseconds.
    pub cpu_time_ns: u64,
    /// CPU time of the current VMM's vCPUs when last sampled, in nanoseconds
    /// (saved periodically, so that accounting survives an rxend restart).
    #[serde(default)]
    pub vmm_cpu_ns: u64,
    /// The uid (and gid) its VMM runs as, from rxend's `[sandbox]` range; no other running
    /// domain has it. `None` with the sandbox off.
    #[serde(default)]
    pub sandbox_uid: Option<u32>,
    /// Bytes the guest sent on its network interfaces, over its life.
    #[serde(default)]
    pub net_tx_bytes: u64,
    /// Bytes the guest received on its network interfaces, over its life.
    #[serde(default)]
    pub net_rx_bytes: u64,
    /// Bytes sent through the current VMM's NICs when last sampled (not yet in `net_tx_bytes`).
    #[serde(default)]
    pub vmm_net_tx_bytes: u64,
    /// Bytes received through the current VMM's NICs when last sampled (not yet in `net_rx_bytes`).
    #[serde(default)]
    pub vmm_net_rx_bytes: u64,
    /// The balloon target set by `rxl mem-set`, in MiB; `None` = the boot size.
    #[serde(default)]
    pub mem_target_mib: Option<u64>,
    /// vCPUs wanted online after `rxl vcpu-set`; `None` = `vcpus` from the config.
    #[serde(default)]
    pub online_vcpus: Option<u32>,
    /// The bound for `rxl mem-set` set by `rxl mem-max`; `None` = `maxmem` from the config.
    #[serde(default)]
    pub mem_max_mib: Option<u64>,
    /// Soft affinity set by `rxl vcpu-pin`, per vCPU (a vCPU not here: all CPUs). Linux's
    /// scheduler has no preferred CPUs to give it; it is kept and shown by `rxl vcpu-list`.
    #[serde(default)]
    pub soft_affinity: std::collections::BTreeMap<u32, Vec<u32>>,
    /// A config stored by `rxl config-update`: the one the domain is created from when it is
    /// next restarted, in place of `config`. `None`: `config` again.
    #[serde(default)]
    pub next_config: Option<NextConfig>,
    /// Current state.
    pub state: DomainState,
}

/// The config `rxl config-update` stored for a domain's next restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NextConfig {
    /// The resolved configuration.
    pub config: DomainConfig,
    /// The config file it was read from (relative paths in it follow this file).
    pub path: String,
}

impl DomainRecord {
    /// A new domain's record: nothing accounted yet, no runtime settings.
    pub fn new(
        domid: u32,
        name: String,
        uuid: String,
        config: DomainConfig,
        config_path: Option<String>,
        created_at: f64,
        state: DomainState,
    ) -> DomainRecord {
        DomainRecord {
            domid,
            name,
            uuid,
            config,
            config_path,
            created_at,
            cpu_time_ns: 0,
            vmm_cpu_ns: 0,
            sandbox_uid: None,
            net_tx_bytes: 0,
            net_rx_bytes: 0,
            vmm_net_tx_bytes: 0,
            vmm_net_rx_bytes: 0,
            mem_target_mib: None,
            online_vcpus: None,
            mem_max_mib: None,
            soft_affinity: Default::default(),
            next_config: None,
            state,
        }
    }

    /// The memory the domain has now: the balloon target, or `memory` from the config.
    pub fn current_mib(&self) -> u64 {
        self.mem_target_mib.unwrap_or(self.config.memory_mib)
    }

    /// The most `rxl mem-set` may give it: `mem-max`'s bound, or `maxmem`.
    pub fn max_mib(&self) -> u64 {
        self.mem_max_mib
            .unwrap_or(self.config.maxmem_mib)
            .min(ram_mib(&self.config))
    }
}

/// The guest RAM a domain of `config` is built with, MiB: `maxmem` when it is
/// above `memory` (the balloon then starts inflated by the difference, as Xen
/// starts such a domain with `memory` populated), else `memory`.
pub fn ram_mib(config: &DomainConfig) -> u64 {
    config.maxmem_mib.max(config.memory_mib)
}

/// The directory of records.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    /// A store in `dir`, created if needed. Half-written records (the temporary files of a
    /// [`write_atomic`] that a crash interrupted) are removed: the record they were to replace
    /// is still whole.
    pub fn open(dir: &Path) -> io::Result<RecordStore> {
        fs::create_dir_all(dir)?;
        for e in fs::read_dir(dir)?.flatten() {
            if e.path().extension().is_some_and(|x| x == TMP_EXTENSION) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(RecordStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, domid: u32) -> PathBuf {
        self.dir.join(format!("{domid}.json"))
    }

    /// Writes a record atomically: a temporary file, fsync, rename, fsync of the directory.
    pub fn save(&self, rec: &DomainRecord) -> io::Result<()> {
        let data = serde_json::to_vec_pretty(rec).map_err(io::Error::other)?;
        write_atomic(&self.path(rec.domid), &data)
    }

    /// Removes a record; a missing one is not an error.
    pub fn remove(&self, domid: u32) -> io::Result<()> {
        match fs::remove_file(self.path(domid)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Loads every record; unreadable files are returned as errors with their path.
    pub fn load_all(&self) -> Vec<Result<DomainRecord, String>> {
        let mut out = Vec::new();
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return out;
        };
        let mut paths: Vec<PathBuf> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        for p in paths {
            out.push(
                fs::read(&p)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                    .map_err(|e| format!("{}: {e}", p.display())),
            );
        }
        out
    }
}

/// The extension of [`write_atomic`]'s temporary files.
const TMP_EXTENSION: &str = "tmp";

/// Replaces `path` with `data` so that a crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(TMP_EXTENSION);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}
