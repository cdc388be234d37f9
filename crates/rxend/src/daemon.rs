//! The domain table and every operation on it. Locks are held only for
//! bookkeeping, never while a VMM starts or answers.

mod backup;
mod cdrom;
mod config_update;
mod dump_core;
mod host_domains;
mod hotplug;
mod io_sched;

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rxen_proto::api::{DomainInfo, KnownDomain};
use rxen_proto::vmctl::VmRequest;
use rxen_proto::vmspec::{DiskDevice, ExitReason, KernelSource, VmSpec};
use xlcfg::{Action, DomainConfig};

use crate::auth::Caller;
use crate::cfgfile;
use crate::hostinfo;
use crate::known::{KnownConfig, KnownConfigs};
use crate::log::Log;
use crate::network::{self, PluggedVif};
use crate::paths::Paths;
use crate::procfs;
use crate::record::{write_atomic, DomainRecord, DomainState, RecordStore};
use crate::storage;
use crate::vmm::{self, VmmError};

mod cpupool_ops;
mod memory_ops;
mod pool_ops;
mod pool_place;
mod recovery;
mod sched_ops;
pub use sched_ops::{SchedOptions, DEFAULT_DOM0_WEIGHT};

/// Built-in kernels that `kernel = "builtin:NAME"` may name.
pub const BUILTIN_KERNELS: &[&str] = &["testguest"];

/// Errors of domain operations; each is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No domain has this name or ID (xl's own wording).
    #[error("{0} is an invalid domain identifier (rc=-6)")]
    NoSuchDomain(String),
    /// The name is in use.
    #[error("domain name \"{0}\" is already in use")]
    NameTaken(String),
    /// The name cannot be a domain name.
    #[error("invalid domain name \"{0}\": {1}")]
    BadName(String, &'static str),
    /// The configuration was refused.
    #[error("{0}")]
    Config(String),
    /// The host cannot hold the domain's memory.
    #[error(
        "not enough memory: the domain needs {want} MiB; the host has {host} MiB, {allowed} MiB of \
         it may go to domains ({percent}%, [host] memory-overcommit-percent in rxend.toml), and \
         {held} MiB are given to domains already"
    )]
    NoMemory {
        /// What the domain needs.
        want: u64,
        /// The host's RAM.
        host: u64,
        /// What all domains may have together.
        allowed: u64,
        /// The overcommit percentage.
        percent: u32,
        /// What running domains have.
        held: u64,
    },
    /// The caller may not do this.
    #[error("permission denied: {0}")]
    Denied(String),
    /// The operation makes no sense for Domain-0.
    #[error("Domain-0 cannot be {0}")]
    Dom0(&'static str),
    /// The domain has no running VMM.
    #[error("domain {0} is not running")]
    NotRunning(String),
    /// Another operation on the domain is in progress.
    #[error("domain {0} is busy ({1})")]
    Busy(String, &'static str),
    /// The VMM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The pool refused, or its etcd could not be reached.
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
    /// A pool request on a host that is in no pool.
    #[error("this host is in no pool ([pool] in rxend.toml)")]
    NoPool,
    /// State could not be written.
    #[error("cannot write {path}: {source}")]
    Persist {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// An operation in progress that keeps the supervisor away from a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Busy {
    Starting,
    Destroying,
    Exiting,
    Saving,
    Migrating,
}

impl Busy {
    fn what(self) -> &'static str {
        match self {
            Busy::Starting => "starting",
            Busy::Destroying => "being destroyed",
            Busy::Exiting => "shutting down",
            Busy::Saving => "being saved",
            Busy::Migrating => "migrating",
        }
    }
}

struct Entry {
    rec: DomainRecord,
    busy: Option<Busy>,
    /// vCPU time of the current VMM, sampled by the supervisor, in nanoseconds.
    live_cpu_ns: u64,
    /// When `live_cpu_ns` was last written to the record.
    saved_at: Instant,
}

struct Table {
    domains: BTreeMap<u32, Entry>,
    next_domid: u32,
}

/// A domain successfully created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Its ID.
    pub domid: u32,
    /// Its name.
    pub name: String,
    /// Warnings for the user.
    pub warnings: Vec<String>,
}

/// The daemon: paths, log, records and the domain table.
pub struct Daemon {
    /// Where things live.
    pub paths: Paths,
    /// The daemon's log.
    pub log: Log,
    store: RecordStore,
    known: KnownConfigs,
    table: Mutex<Table>,
    /// CPU cgroups (`None` when the host has none or they are turned off).
    cgroups: Option<crate::cgroup::Cgroups>,
    /// Cgroup I/O weights (`None` when the kernel offers no weight file; logged once).
    io_weights: Option<crate::iocgroup::IoWeights>,
    /// The cpusets that confine domains to their CPU pools (`None` when the host has none).
    cpusets: Option<crate::cpuset::Cpusets>,
    /// The CPU pool definitions.
    pools: Mutex<crate::cpupools::PoolTable>,
    /// Domain-0's credit weight.
    dom0_weight: std::sync::atomic::AtomicU32,
    /// The relocation key file from rxend's config, used when `rxl migrate` names none.
    relocation_key: Mutex<Option<PathBuf>>,
    /// Where storage migrations to this host create disks (`[relocation] storage-dir`).
    storage_dir: Mutex<PathBuf>,
    /// The memory all domains may have together, in percent of the host's RAM.
    memory_percent: std::sync::atomic::AtomicU32,
    /// Whether VMMs confine themselves (off only with `--no-sandbox`).
    sandbox: std::sync::atomic::AtomicBool,
    /// The uids VMMs run as (`[sandbox]` in rxend.toml).
    sandbox_uids: Mutex<std::ops::Range<u32>>,
    /// `[domains]` in rxend.toml: host shutdown and start.
    domains_config: Mutex<crate::config::DomainsConfig>,
    /// When a console log that could not be rotated was last complained about, by domain.
    rotate_warned: Mutex<std::collections::HashMap<u32, Instant>>,
    /// The state directory's lock, held for the daemon's life.
    _lock: crate::statelock::StateLock,
    /// How the last domains that ended ended, newest last (for `rxl shutdown -w`).
    ended: Mutex<std::collections::VecDeque<(ExitReason, DomainRecord)>>,
    /// Domains being reset (`rxl trigger reset`): their VMM's end counts as a reboot.
    resetting: Mutex<std::collections::BTreeSet<u32>>,
    /// The pool this host is in (`[pool]` in rxend.toml), once joined.
    pool: std::sync::OnceLock<std::sync::Arc<crate::pool::Pool>>,
}

/// How many ended domains [`Daemon::ended`] remembers.
const ENDED_KEPT: usize = 64;

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Checks a domain name with the config parser's rules (non-empty, printable, no `/`, not a number, ...).
pub fn check_name(name: &str) -> Result<(), DaemonError> {
    xlcfg::check_name(name).map_err(|why| DaemonError::BadName(name.to_string(), why))
}

/// Diagnostics sent back at most: a config with thousands of unknown keys must still get a
/// reply that fits a message (and a readable one).
pub const MAX_DIAGNOSTICS: usize = 100;

/// `list` cut to [`MAX_DIAGNOSTICS`] lines, the last saying how many were left out.
fn capped(mut list: Vec<String>) -> Vec<String> {
    if list.len() > MAX_DIAGNOSTICS {
        let more = list.len() - (MAX_DIAGNOSTICS - 1);
        list.truncate(MAX_DIAGNOSTICS - 1);
        list.push(format!("... and {more} more"));
    }
    list
}

/// Makes `dir` and everything under it private to root: directories 0700, files 0600
/// (installations from before rxen kept its state private). Symbolic links are left alone.
fn make_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                make_private(&e.path());
            }
        }
    } else if !meta.file_type().is_symlink() && meta.permissions().mode() & 0o077 != 0 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o600));
    }
}

impl Daemon {
    /// Opens the state directory, loads every record and adopts domains whose VMM still runs.
    pub fn open(paths: Paths) -> std::io::Result<Daemon> {
        Daemon::open_with(paths, SchedOptions::default())
    }

    /// [`Daemon::open`] with scheduler options (cgroup name, Domain-0's weight).
    pub fn open_with(paths: Paths, sched: SchedOptions) -> std::io::Result<Daemon> {
        fs::create_dir_all(&paths.state_dir)?;
        // VMMs are known by the absolute path of their spec (see `reconcile`).
        let mut paths = paths;
        paths.state_dir = fs::canonicalize(&paths.state_dir)?;
        // Before anything is read or logged: one rxend per state directory.
        let lock = crate::statelock::StateLock::take(&paths.state_dir)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::WouldBlock, e))?;
        fs::create_dir_all(paths.state_dir.join("dom"))?;
        make_private(&paths.state_dir);
        let log = Log::open(&paths.log_file());
        let store = RecordStore::open(&paths.records_dir())?;
        let (known, known_err) = KnownConfigs::open(&paths.known_configs_file());
        if let Some(e) = known_err {
            log.error(format!("{e}; starting with no known config files"));
        }
        let mut domains = BTreeMap::new();
        let mut max_id = 0;
        for loaded in store.load_all() {
            match loaded {
                Ok(rec) => {
                    max_id = max_id.max(rec.domid);
                    // `reconcile` decides about domains rxend was starting when it stopped.
                    let busy =
                        matches!(rec.state, DomainState::Starting { .. }).then_some(Busy::Starting);
                    domains.insert(
                        rec.domid,
                        Entry {
                            live_cpu_ns: rec.vmm_cpu_ns,
                            rec,
                            busy,
                            saved_at: Instant::now(),
                        },
                    );
                }
                Err(e) => log.error(format!("skipping unreadable record {e}")),
            }
        }
        let stored_next = fs::read_to_string(paths.next_domid_file())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(1);
        let next_domid = stored_next.max(max_id + 1).max(1);
        let cgroups = sched_ops::open_cgroups(&sched, &log);
        let io_weights = io_sched::open_io_weights(&sched, cgroups.as_ref(), &log);
        let cpusets = cpupool_ops::open_cpusets(sched.cgroup.as_deref(), &log);
        let pools = Mutex::new(cpupool_ops::open_pools(&paths.cpupools_file(), &log));
        let daemon = Daemon {
            paths,
            log,
            store,
            known,
            table: Mutex::new(Table {
                domains,
                next_domid,
            }),
            relocation_key: Mutex::new(None),
            storage_dir: Mutex::new(crate::migration::storage::DEFAULT_STORAGE_DIR.into()),
            memory_percent: std::sync::atomic::AtomicU32::new(100),
            sandbox: std::sync::atomic::AtomicBool::new(true),
            sandbox_uids: Mutex::new(crate::config::SandboxConfig::default().uids()),
            domains_config: Mutex::new(crate::config::DomainsConfig::default()),
            rotate_warned: Mutex::new(std::collections::HashMap::new()),
            ended: Mutex::new(std::collections::VecDeque::new()),
            resetting: Mutex::new(std::collections::BTreeSet::new()),
            pool: std::sync::OnceLock::new(),
            _lock: lock,
            cgroups,
            io_weights,
            cpusets,
            pools,
            dom0_weight: std::sync::atomic::AtomicU32::new(sched.dom0_weight),
        };
        daemon.reconcile();
        daemon.adopt_sched();
        Ok(daemon)
    }

    /// Sets how much memory all domains may have together, in percent of the host's RAM.
    pub fn set_memory_overcommit_percent(&self, percent: u32) {
        self.memory_percent
            .store(percent.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets the uids VMMs run as (`[sandbox]`, checked already).
    pub fn set_sandbox_uids(&self, uids: std::ops::Range<u32>) {
        *self
            .sandbox_uids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = uids;
    }

    /// The lowest uid of the `[sandbox]` range that no domain holds and no host user owns.
    fn free_sandbox_uid(&self, t: &Table) -> Result<u32, DaemonError> {
        let uids = self
            .sandbox_uids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // A preserved (shut down) domain has no VMM left: its uid is free.
        let held: std::collections::HashSet<u32> = t
            .domains
            .values()
            .filter(|e| !matches!(e.rec.state, DomainState::Shutdown { .. }))
            .filter_map(|e| e.rec.sandbox_uid)
            .collect();
        let (first, count) = (uids.start, uids.len());
        uids.filter(|u| !held.contains(u))
            .find(|&u| {
                !matches!(
                    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u)),
                    Ok(Some(_))
                )
            })
            .ok_or_else(|| {
                DaemonError::Config(format!(
                    "no free sandbox uid: the {count} uids from {first} ([sandbox] in \
                     rxend.toml) are all held by running domains or host users"
                ))
            })
    }

    /// Turns the VMMs' sandbox off (`--no-sandbox`, for debugging) or on.
    pub fn set_sandbox(&self, on: bool) {
        self.sandbox.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the VMMs rxend starts confine themselves.
    pub fn sandbox(&self) -> bool {
        self.sandbox.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Refuses a domain of `want` MiB when the host's share for domains is taken.
    fn admit_memory(&self, t: &Table, want: u64) -> Result<(), DaemonError> {
        let host = crate::hostinfo::memory().total_kib / 1024;
        if host == 0 {
            return Ok(());
        }
        let percent = self
            .memory_percent
            .load(std::sync::atomic::Ordering::Relaxed);
        let allowed = host.saturating_mul(u64::from(percent)) / 100;
        let held: u64 = t
            .domains
            .values()
            .map(|e| crate::record::ram_mib(&e.rec.config))
            .sum();
        if held.saturating_add(want) > allowed {
            return Err(DaemonError::NoMemory {
                want,
                host,
                allowed,
                percent,
                held,
            });
        }
        Ok(())
    }

    /// Sets the relocation key file (from rxend's config).
    pub fn set_relocation_key_file(&self, path: Option<PathBuf>) {
        *self
            .relocation_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = path;
    }

    /// Sets where storage migrations to this host create disks (from rxend's config).
    pub fn set_storage_dir(&self, dir: PathBuf) {
        *self
            .storage_dir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = dir;
    }

    /// Where storage migrations to this host create disks.
    pub fn storage_dir(&self) -> PathBuf {
        self.storage_dir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The relocation key file from rxend's config.
    pub fn relocation_key_file(&self) -> Option<PathBuf> {
        self.relocation_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Refuses callers other than root, logging who was refused `what`.
    pub(crate) fn only_root(&self, caller: &Caller, what: &str) -> Result<(), DaemonError> {
        if caller.is_root() {
            return Ok(());
        }
        self.log
            .warn(format!("refused: {} may not {what}", caller.describe()));
        Err(DaemonError::Denied(format!("only root may {what}")))
    }

    /// Marks a running, idle guest `busy` (a save or a migration: the supervisor keeps away);
    /// its ID, run directory and record.
    pub(crate) fn mark_busy(
        &self,
        caller: &Caller,
        r: &str,
        verb: &'static str,
        busy: Busy,
    ) -> Result<(u32, PathBuf, DomainRecord), DaemonError> {
        let (id, dir) = self.running_guest(caller, r, verb)?;
        let mut t = self.table();
        let e = t
            .domains
            .get_mut(&id)
            .ok_or_else(|| DaemonError::NoSuchDomain(r.to_string()))?;
        if let Some(b) = e.busy {
            return Err(DaemonError::Busy(e.rec.name.clone(), b.what()));
        }
        e.busy = Some(busy);
        Ok((id, dir, e.rec.clone()))
    }

    /// Sets or clears what keeps the supervisor away from a domain.
    pub(crate) fn set_busy(&self, id: u32, busy: Option<Busy>) {
        if let Some(e) = self.table().domains.get_mut(&id) {
            e.busy = busy;
        }
    }

    /// Changes a domain's record and writes it (nothing when the domain is gone).
    pub(crate) fn update_record(
        &self,
        id: u32,
        change: impl FnOnce(&mut DomainRecord),
    ) -> Result<(), DaemonError> {
        let rec = self.table().domains.get_mut(&id).map(|e| {
            change(&mut e.rec);
            e.rec.clone()
        });
        match rec {
            Some(rec) => self.save(&rec),
            None => Ok(()),
        }
    }

    /// Whether a domain of this name is here (running, starting or on its way out).
    pub(crate) fn name_in_use(&self, name: &str) -> bool {
        self.table().domains.values().any(|e| e.rec.name == name)
    }

    /// Waits for a VMM that is done (saved or migrated) to exit, then forgets the domain.
    pub(crate) fn finish_gone(&self, id: u32, rec: &DomainRecord) {
        if let DomainState::Running {
            pid, start_ticks, ..
        } = rec.state
        {
            if !wait_gone(pid, start_ticks, Duration::from_secs(10)) {
                kill_vmm(pid, start_ticks);
                wait_gone(pid, start_ticks, Duration::from_secs(5));
            }
        }
        self.forget(id);
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn save(&self, rec: &DomainRecord) -> Result<(), DaemonError> {
        if let Some(pool) = self.pool.get() {
            pool.nudge();
        }
        self.store.save(rec).map_err(|source| DaemonError::Persist {
            path: self.paths.records_dir(),
            source,
        })
    }

    /// Finds a domain by name or ID that `caller` may manage; `Ok(0)` is Domain-0.
    fn resolve(&self, t: &Table, caller: &Caller, r: &str) -> Result<u32, DaemonError> {
        let refuse = |r: &str| {
            self.log.warn(format!(
                "refused: {} may not manage domain {r}",
                caller.describe()
            ));
            DaemonError::NoSuchDomain(r.to_string())
        };
        let found = if r.bytes().all(|b| b.is_ascii_digit()) && !r.is_empty() {
            match r.parse::<u32>() {
                Ok(0) if caller.is_root() => return Ok(0),
                Ok(0) => return Err(refuse(r)),
                Ok(id) if t.domains.contains_key(&id) => Some(id),
                _ => None,
            }
        } else if r == "Domain-0" {
            if caller.is_root() {
                return Ok(0);
            }
            return Err(refuse(r));
        } else {
            t.domains
                .values()
                .find(|e| e.rec.name == r)
                .map(|e| e.rec.domid)
        };
        match found {
            Some(id) => {
                let visible = t
                    .domains
                    .get(&id)
                    .is_some_and(|e| caller.may_manage(&e.rec));
                match t.domains.get(&id) {
                    _ if visible => Ok(id),
                    // Named by ID: the log names the domain too.
                    Some(e) if e.rec.name != r => {
                        self.log.warn(format!(
                            "refused: {} may not manage domain {r} ({})",
                            caller.describe(),
                            e.rec.name
                        ));
                        Err(DaemonError::NoSuchDomain(r.to_string()))
                    }
                    _ => Err(refuse(r)),
                }
            }
            None => Err(DaemonError::NoSuchDomain(r.to_string())),
        }
    }

    /// Resolves a domain that must be a guest (not Domain-0) and returns its ID and run directory.
    pub(crate) fn guest(
        &self,
        caller: &Caller,
        r: &str,
        verb: &'static str,
    ) -> Result<(u32, PathBuf), DaemonError> {
        let t = self.table();
        let id = self.resolve(&t, caller, r)?;
        if id == 0 {
            return Err(DaemonError::Dom0(verb));
        }
        Ok((id, self.paths.run_dir(id)))
    }

    /// Resolves a guest with a running, idle VMM.
    fn running_guest(
        &self,
        caller: &Caller,
        r: &str,
        verb: &'static str,
    ) -> Result<(u32, PathBuf), DaemonError> {
        let (id, dir) = self.guest(caller, r, verb)?;
        let t = self.table();
        let e = t
            .domains
            .get(&id)
            .ok_or_else(|| DaemonError::NoSuchDomain(r.to_string()))?;
        if let Some(b) = e.busy {
            return Err(DaemonError::Busy(e.rec.name.clone(), b.what()));
        }
        match e.rec.state {
            DomainState::Running { .. } => Ok((id, dir)),
            DomainState::Starting { .. } => {
                Err(DaemonError::Busy(e.rec.name.clone(), Busy::Starting.what()))
            }
            DomainState::Shutdown { .. } => Err(DaemonError::NotRunning(e.rec.name.clone())),
        }
    }

    /// Creates a domain from config text (`rxl create`).
    pub fn create(
        &self,
        caller: &Caller,
        path: &str,
        text: &str,
        overrides: &[String],
        paused: bool,
        ignore_unsupported: bool,
    ) -> Result<Created, DaemonError> {
        if !caller.is_root() {
            self.log.warn(format!(
                "refused: {} may not create domains from {path}",
                caller.describe()
            ));
            return Err(DaemonError::Denied(
                "only root may create domains from a file".into(),
            ));
        }
        let parsed =
            xlcfg::parse(text, path, overrides).map_err(|e| DaemonError::Config(e.to_string()))?;
        let known = KnownConfig {
            path: path.to_string(),
            overrides: overrides.to_vec(),
            ignore_unsupported,
        };
        self.create_parsed(parsed, known, paused)
    }

    /// Creates a domain from a parsed config and remembers the file it came from.
    fn create_parsed(
        &self,
        parsed: xlcfg::Parsed,
        known: KnownConfig,
        paused: bool,
    ) -> Result<Created, DaemonError> {
        let path = known.path.as_str();
        let ignore_unsupported = known.ignore_unsupported;
        let mut warnings: Vec<String> = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        for d in &parsed.diagnostics {
            if matches!(d.kind, xlcfg::DiagnosticKind::Unsupported) {
                refused.push(d.to_string());
            } else {
                warnings.push(d.to_string());
            }
        }
        let config = parsed.config;
        let refused = capped(refused);
        if !refused.is_empty() {
            if !ignore_unsupported {
                return Err(DaemonError::Config(format!(
                    "refusing to create domain \"{}\": this configuration uses what rxen does not support:\n  {}\n(pass --ignore-unsupported to start it without them)",
                    config.name,
                    refused.join("\n  ")
                )));
            }
            warnings.extend(refused.into_iter().map(|r| format!("ignored: {r}")));
        }
        let created = self.start(config, Some(path.to_string()), paused)?;
        if let Err(e) = self.known.remember(&created.name, known) {
            self.log.error(format!(
                "domain {} runs, but rxend cannot remember its config file for boot: {e}",
                created.name
            ));
        }
        warnings.extend(created.warnings.iter().cloned());
        Ok(Created {
            warnings: capped(warnings),
            ..created
        })
    }

    /// Creates a domain again from the config file rxend remembers for it,
    /// read now; a non-root caller must be named in `xen_shell` in the file
    /// as it reads now, and the file must be one that only root can change.
    pub fn boot(&self, caller: &Caller, name: &str) -> Result<Created, DaemonError> {
        let refuse = |why: String| {
            self.log.warn(format!(
                "refused: {} may not boot domain {name}: {why}",
                caller.describe()
            ));
            DaemonError::NoSuchDomain(name.to_string())
        };
        let Some(known) = self.known.get(name) else {
            if caller.is_root() {
                return Err(DaemonError::Config(format!(
                    "rxend knows no config file for domain \"{name}\": create it once with rxl create FILE"
                )));
            }
            return Err(refuse("no config file is known for it".into()));
        };
        let text = if caller.is_root() {
            fs::read_to_string(&known.path).map_err(|e| {
                DaemonError::Config(format!("cannot read config file {}: {e}", known.path))
            })?
        } else {
            match cfgfile::read_root_only(Path::new(&known.path)) {
                Ok((_, text)) => text,
                Err(e) => return Err(refuse(e.to_string())),
            }
        };
        let parsed = match xlcfg::parse(&text, &known.path, &known.overrides) {
            Ok(p) => p,
            Err(e) if caller.is_root() => return Err(DaemonError::Config(e.to_string())),
            Err(e) => return Err(refuse(e.to_string())),
        };
        let allowed = caller.is_root()
            || caller
                .user
                .as_ref()
                .is_some_and(|u| parsed.config.xen_shell.iter().any(|s| s == u));
        if !allowed {
            return Err(refuse(format!(
                "{} does not name the user in xen_shell",
                known.path
            )));
        }
        if parsed.config.name != name {
            return Err(DaemonError::Config(format!(
                "config file {} now names domain \"{}\", not \"{name}\"; ask the administrator to create it again",
                known.path, parsed.config.name
            )));
        }
        if let Some(id) = self
            .table()
            .domains
            .values()
            .find(|e| e.rec.name == name)
            .map(|e| e.rec.domid)
        {
            return Err(DaemonError::Config(format!(
                "domain {name} already exists (ID {id})"
            )));
        }
        let created = self.create_parsed(parsed, known, false)?;
        self.log.info(format!(
            "domain {} ({}) booted by {}",
            created.domid,
            created.name,
            caller.describe()
        ));
        Ok(created)
    }

    /// The domains `caller` may manage, running or not, by name: those that
    /// exist, and those whose remembered config file names him in `xen_shell`.
    /// With `only`, just that domain; asking for one he may not manage is
    /// logged as a refusal.
    pub fn known(&self, caller: &Caller, only: Option<&str>) -> Vec<KnownDomain> {
        let wanted = |name: &str| only.is_none_or(|o| o == name);
        let mut out: BTreeMap<String, Option<u32>> = BTreeMap::new();
        // Names of existing domains: their records, not the files, say who manages them.
        let existing: std::collections::BTreeSet<String> = {
            let t = self.table();
            for e in t.domains.values() {
                if wanted(&e.rec.name) && caller.may_manage(&e.rec) {
                    out.insert(e.rec.name.clone(), Some(e.rec.domid));
                }
            }
            t.domains.values().map(|e| e.rec.name.clone()).collect()
        };
        let mut exists = only.is_some_and(|o| existing.contains(o));
        for (name, known) in self.known.all() {
            if existing.contains(&name) || !wanted(&name) {
                continue;
            }
            exists = true;
            let allowed = caller.is_root()
                || caller.user.as_ref().is_some_and(|u| {
                    cfgfile::read_root_only(Path::new(&known.path))
                        .ok()
                        .and_then(|(_, text)| {
                            xlcfg::parse(&text, &known.path, &known.overrides).ok()
                        })
                        .is_some_and(|p| p.config.name == name && p.config.xen_shell.contains(u))
                });
            if allowed {
                out.insert(name, None);
            }
        }
        if let Some(name) = only {
            if out.is_empty() && exists {
                self.log.warn(format!(
                    "refused: {} may not manage domain {name}",
                    caller.describe()
                ));
            }
        }
        out.into_iter()
            .map(|(name, domid)| KnownDomain { name, domid })
            .collect()
    }

    /// Reserves an ID and name, starts a VMM, and records the domain.
    fn start(
        &self,
        config: DomainConfig,
        config_path: Option<String>,
        paused: bool,
    ) -> Result<Created, DaemonError> {
        self.start_from(config, config_path, paused, None, None)
    }

    /// Like [`Self::start`], restoring from a save file or receiving on a migration connection.
    pub(crate) fn start_from(
        &self,
        config: DomainConfig,
        config_path: Option<String>,
        paused: bool,
        restore_from: Option<PathBuf>,
        incoming: Option<OwnedFd>,
    ) -> Result<Created, DaemonError> {
        check_name(&config.name)?;
        // Its CPU pool must exist here (a save file or migration may name one this host lacks).
        self.config_pool(&config)?;
        let kernel = kernel_source(&config, config_path.as_deref())?;
        // In a pool the name must be free on the other hosts too. A domain received by
        // migration keeps its name: its key passes from the source to this host.
        if self
            .table()
            .domains
            .values()
            .any(|e| e.rec.name == config.name)
        {
            return Err(DaemonError::NameTaken(config.name.clone()));
        }
        let pool = self.pool.get().map(std::sync::Arc::clone);
        let received = incoming.is_some();
        let _claim = match &pool {
            Some(p) if !received => Some(p.claim(&config)?),
            _ => None,
        };
        let uuid = config
            .uuid
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let name = config.name.clone();
        let (domid, intent) = {
            let mut t = self.table();
            if t.domains.values().any(|e| e.rec.name == name) {
                return Err(DaemonError::NameTaken(name));
            }
            self.admit_memory(&t, crate::record::ram_mib(&config))?;
            let sandbox_uid = if self.sandbox() {
                Some(self.free_sandbox_uid(&t)?)
            } else {
                None
            };
            let domid = t.next_domid;
            t.next_domid = domid.checked_add(1).unwrap_or(1).max(1);
            let next_file = self.paths.next_domid_file();
            write_atomic(&next_file, t.next_domid.to_string().as_bytes()).map_err(|source| {
                DaemonError::Persist {
                    path: next_file.clone(),
                    source,
                }
            })?;
            let mut rec = DomainRecord::new(
                domid,
                name.clone(),
                uuid.clone(),
                config.clone(),
                config_path,
                now_secs(),
                DomainState::Starting { paused },
            );
            rec.sandbox_uid = sandbox_uid;
            t.domains.insert(
                domid,
                Entry {
                    rec: rec.clone(),
                    busy: Some(Busy::Starting),
                    live_cpu_ns: 0,
                    saved_at: Instant::now(),
                },
            );
            (domid, rec)
        };
        // The intent is on disk before anything exists for the domain: an rxend that dies from
        // here on finds the record at its next start and adopts or removes what was made.
        if let Err(err) = self.save(&intent) {
            self.table().domains.remove(&domid);
            let _ = self.store.remove(domid);
            return Err(err);
        }
        crate::failpoint::hit(crate::failpoint::START_RECORDED);
        let run_dir = self.paths.run_dir(domid);
        let _ = fs::remove_dir_all(&run_dir);
        let devices = self.plug_devices(&config, domid, &uuid, &run_dir);
        let (disks, vifs) = match devices {
            Ok(d) => d,
            Err(err) => {
                self.abandon_start(domid, &run_dir);
                self.log
                    .error(format!("domain {domid} ({name}) failed to start: {err}"));
                return Err(err);
            }
        };
        crate::failpoint::hit(crate::failpoint::START_PLUGGED);
        let join = match self.prepare_pool(domid, &config) {
            Ok(j) => j,
            Err(err) => {
                self.unplug_devices(domid, &run_dir);
                self.remove_cpuset(domid);
                self.abandon_start(domid, &run_dir);
                self.log
                    .error(format!("domain {domid} ({name}) failed to start: {err}"));
                return Err(err);
            }
        };
        let spec = VmSpec {
            name: name.clone(),
            domid,
            uuid,
            memory_mib: crate::record::ram_mib(&config),
            balloon_target_mib: (config.maxmem_mib > config.memory_mib)
                .then_some(config.memory_mib),
            vcpus: config.vcpus,
            kernel,
            initrd: config.ramdisk.as_ref().map(|r| resolve_path(r, None)),
            cmdline: config.cmdline.clone().unwrap_or_default(),
            run_dir: run_dir.clone(),
            start_paused: paused,
            balloon: true,
            max_vcpus: config.maxvcpus,
            restore_from,
            restore_fd: None,
            incoming_fd: None,
            sandbox: self.sandbox(),
            sandbox_uid: intent.sandbox_uid,
            disks,
            nics: vifs.iter().map(|v| v.nic.clone()).collect(),
        };
        match vmm::launch_with(&spec, incoming, join) {
            Ok(l) => {
                crate::failpoint::hit(crate::failpoint::START_READY);
                let mut t = self.table();
                let Some(e) = t.domains.get_mut(&domid) else {
                    return Err(DaemonError::NoSuchDomain(domid.to_string()));
                };
                e.rec.state = DomainState::Running {
                    pid: l.pid,
                    start_ticks: l.start_ticks,
                    paused,
                };
                e.busy = None;
                let rec = e.rec.clone();
                drop(t);
                self.save(&rec)?;
                if let (Some(p), true) = (&pool, received) {
                    p.take_over(&name);
                }
                let sched_warnings = self.apply_sched(domid, l.pid, &config, true);
                // (A domain received by migration is still arriving: its VMM answers once it
                // runs, and gets its deadline at the next renewal.)
                if config.ha && !received {
                    self.pool_arm_fence(&name, &run_dir);
                }
                self.log.info(format!(
                    "domain {domid} ({name}) started: VMM pid {}, {} MiB, {} vCPUs{}",
                    l.pid,
                    config.memory_mib,
                    config.vcpus,
                    if paused { ", paused" } else { "" }
                ));
                Ok(Created {
                    domid,
                    name,
                    warnings: sched_warnings,
                })
            }
            Err(err) => {
                self.unplug_devices(domid, &run_dir);
                self.remove_cpuset(domid);
                self.abandon_start(domid, &run_dir);
                self.log
                    .error(format!("domain {domid} ({name}) failed to start: {err}"));
                Err(err.into())
            }
        }
    }

    /// Drops a domain whose start failed: its entry, its intent record and its run directory.
    fn abandon_start(&self, domid: u32, run_dir: &Path) {
        self.table().domains.remove(&domid);
        if let Err(e) = self.store.remove(domid) {
            self.log
                .error(format!("cannot remove record of domain {domid}: {e}"));
        }
        let _ = fs::remove_dir_all(run_dir);
    }

    /// The domains `caller` may see (all when `refs` is empty), Domain-0 first for root.
    pub fn list(&self, caller: &Caller, refs: &[String]) -> Result<Vec<DomainInfo>, DaemonError> {
        let t = self.table();
        let ids: Vec<u32> = if refs.is_empty() {
            let mut v = Vec::new();
            if caller.is_root() {
                v.push(0);
            }
            v.extend(
                t.domains
                    .values()
                    .filter(|e| caller.may_manage(&e.rec))
                    .map(|e| e.rec.domid),
            );
            v
        } else {
            refs.iter()
                .map(|r| self.resolve(&t, caller, r))
                .collect::<Result<_, _>>()?
        };
        Ok(ids
            .into_iter()
            .filter_map(|id| {
                if id == 0 {
                    Some(dom0_info())
                } else {
                    t.domains.get(&id).map(domain_info)
                }
            })
            .collect())
    }

    /// Looks a domain up by name or ID.
    pub fn lookup(&self, caller: &Caller, r: &str) -> Result<(u32, String), DaemonError> {
        let t = self.table();
        let id = self.resolve(&t, caller, r)?;
        if id == 0 {
            return Ok((0, "Domain-0".into()));
        }
        let name = t
            .domains
            .get(&id)
            .map(|e| e.rec.name.clone())
            .ok_or_else(|| DaemonError::NoSuchDomain(r.to_string()))?;
        Ok((id, name))
    }

    /// Pauses (`true`) or unpauses a domain.
    pub fn set_paused(&self, caller: &Caller, r: &str, pause: bool) -> Result<(), DaemonError> {
        let verb = if pause { "paused" } else { "unpaused" };
        let (id, dir) = self.running_guest(caller, r, verb)?;
        vmm::command(
            &dir,
            if pause {
                &VmRequest::Pause
            } else {
                &VmRequest::Unpause
            },
        )?;
        let rec = {
            let mut t = self.table();
            let Some(e) = t.domains.get_mut(&id) else {
                return Ok(());
            };
            if let DomainState::Running { paused, .. } = &mut e.rec.state {
                *paused = pause;
            }
            e.rec.clone()
        };
        self.save(&rec)?;
        self.log.info(format!(
            "domain {id} ({}) {verb} by {}",
            rec.name,
            caller.describe()
        ));
        Ok(())
    }

    /// Asks the guest to power off (`reboot = false`) or reboot.
    pub fn request_shutdown(
        &self,
        caller: &Caller,
        r: &str,
        reboot: bool,
    ) -> Result<(), DaemonError> {
        let (id, dir) = self.running_guest(caller, r, "shut down")?;
        let req = if reboot {
            VmRequest::Reboot
        } else {
            VmRequest::Shutdown
        };
        vmm::command(&dir, &req)?;
        self.log.info(format!(
            "domain {id}: {} requested by {}",
            if reboot { "reboot" } else { "shutdown" },
            caller.describe()
        ));
        Ok(())
    }

    /// Resets a domain at once, as a hard reset button would (`rxl trigger reset`): its VMM is
    /// stopped without asking the guest, and the domain ends as rebooted, so that its
    /// `on_reboot` policy applies (by default it is created again at once).
    pub fn reset(&self, caller: &Caller, r: &str) -> Result<(), DaemonError> {
        let (id, dir) = self.running_guest(caller, r, "reset")?;
        self.resetting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        if let Err(e) = vmm::command(&dir, &VmRequest::Destroy) {
            self.resetting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(e.into());
        }
        self.log
            .info(format!("domain {id}: reset by {}", caller.describe()));
        Ok(())
    }

    /// Destroys a domain at once: its VMM is stopped and its record removed.
    pub fn destroy(&self, caller: &Caller, r: &str) -> Result<(), DaemonError> {
        let (id, dir) = self.guest(caller, r, "destroyed")?;
        let (name, vmm_proc) = {
            let mut t = self.table();
            let Some(e) = t.domains.get_mut(&id) else {
                return Err(DaemonError::NoSuchDomain(r.to_string()));
            };
            // A save or migration decides the domain's fate itself: destroying it meanwhile
            // would report success for a domain that lives on in the save file or elsewhere.
            if let Some(b @ (Busy::Starting | Busy::Destroying | Busy::Saving | Busy::Migrating)) =
                e.busy
            {
                return Err(DaemonError::Busy(e.rec.name.clone(), b.what()));
            }
            e.busy = Some(Busy::Destroying);
            let p = match e.rec.state {
                DomainState::Running {
                    pid, start_ticks, ..
                } => Some((pid, start_ticks)),
                DomainState::Starting { .. } | DomainState::Shutdown { .. } => None,
            };
            (e.rec.name.clone(), p)
        };
        if let Some((pid, start)) = vmm_proc {
            if vmm::command(&dir, &VmRequest::Destroy).is_err() {
                kill_vmm(pid, start);
            }
            if !wait_gone(pid, start, Duration::from_secs(5)) {
                kill_vmm(pid, start);
                wait_gone(pid, start, Duration::from_secs(5));
            }
        }
        self.forget(id);
        self.log.info(format!(
            "domain {id} ({name}) destroyed by {}",
            caller.describe()
        ));
        Ok(())
    }

    /// Checks the disks and creates and wires the TAPs of a domain about to start; records the
    /// vifs in its run directory so that whoever ends the domain can unplug them.
    fn plug_devices(
        &self,
        config: &DomainConfig,
        domid: u32,
        uuid: &str,
        run_dir: &std::path::Path,
    ) -> Result<(Vec<DiskDevice>, Vec<PluggedVif>), DaemonError> {
        let disks = storage::prepare_disks(&config.disks)
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        let mut described = Vec::new();
        for (i, vif) in config.vifs.iter().enumerate() {
            let v = network::describe_vif(vif, domid, i as u32, uuid)
                .map_err(|e| DaemonError::Config(e.to_string()))?;
            if described
                .iter()
                .any(|o: &PluggedVif| o.nic.devid == v.nic.devid)
            {
                return Err(DaemonError::Config(
                    network::NetworkError::Duplicate(v.nic.devid).to_string(),
                ));
            }
            described.push(v);
        }
        fs::create_dir_all(run_dir).map_err(|source| DaemonError::Persist {
            path: run_dir.to_path_buf(),
            source,
        })?;
        let mut plugged: Vec<PluggedVif> = Vec::new();
        for v in described {
            // Record before plugging, so that a crash in between still cleans up.
            let mut next = plugged.clone();
            next.push(v.clone());
            let saved = network::save_vifs(run_dir, &next);
            let result = saved
                .map_err(|source| DaemonError::Persist {
                    path: run_dir.join(network::VIFS_FILE),
                    source,
                })
                .and_then(|()| network::plug(&v).map_err(|e| DaemonError::Config(e.to_string())));
            if let Err(e) = result {
                for p in &plugged {
                    network::unplug(p);
                }
                let _ = fs::remove_file(run_dir.join(network::VIFS_FILE));
                return Err(e);
            }
            self.log.info(format!(
                "domain {domid}: vif {} ({}) plugged, MAC {}",
                v.nic.devid, v.nic.tap, v.nic.mac
            ));
            plugged.push(v);
        }
        Ok((disks, plugged))
    }

    /// Unplugs every vif recorded in a run directory.
    fn unplug_devices(&self, domid: u32, run_dir: &Path) {
        for v in network::load_vifs(run_dir) {
            for problem in network::unplug(&v) {
                self.log.warn(format!(
                    "domain {domid}: unplugging vif {}: {problem}",
                    v.nic.tap
                ));
            }
        }
        let _ = fs::remove_file(run_dir.join(network::VIFS_FILE));
    }

    /// Removes a domain's entry, record and run directory.
    fn forget(&self, id: u32) {
        self.unplug_devices(id, &self.paths.run_dir(id));
        self.table().domains.remove(&id);
        self.remove_sched(id);
        if let Err(e) = self.store.remove(id) {
            self.log
                .error(format!("cannot remove record of domain {id}: {e}"));
        }
        let _ = fs::remove_dir_all(self.paths.run_dir(id));
    }

    /// Why domain `domid` ended, if it ended lately and the caller may manage it.
    pub fn ended(&self, caller: &Caller, domid: u32) -> Option<ExitReason> {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended
            .iter()
            .rev()
            .find(|(_, rec)| rec.domid == domid && caller.may_manage(rec))
            .map(|(reason, _)| *reason)
    }

    /// Renames a domain.
    pub fn rename(&self, caller: &Caller, r: &str, new_name: &str) -> Result<(), DaemonError> {
        if !caller.is_root() {
            // A customer could otherwise take the name of another customer's stopped domain.
            self.log.warn(format!(
                "refused: {} may not rename domain {r}",
                caller.describe()
            ));
            return Err(DaemonError::Denied("only root may rename domains".into()));
        }
        check_name(new_name)?;
        let (id, _) = self.guest(caller, r, "renamed")?;
        // In a pool the new name must be free on the other hosts too.
        let pool = self.pool.get().map(std::sync::Arc::clone);
        let _claim = match &pool {
            Some(p) => {
                let mut config = self
                    .table()
                    .domains
                    .get(&id)
                    .map(|e| e.rec.config.clone())
                    .ok_or_else(|| DaemonError::NoSuchDomain(r.to_string()))?;
                config.name = new_name.to_string();
                Some(p.claim(&config)?)
            }
            None => None,
        };
        let rec = {
            let mut t = self.table();
            if t.domains
                .values()
                .any(|e| e.rec.name == new_name && e.rec.domid != id)
            {
                return Err(DaemonError::NameTaken(new_name.to_string()));
            }
            let Some(e) = t.domains.get_mut(&id) else {
                return Err(DaemonError::NoSuchDomain(r.to_string()));
            };
            let old = std::mem::replace(&mut e.rec.name, new_name.to_string());
            e.rec.config.name = new_name.to_string();
            self.log
                .info(format!("domain {id} renamed from {old} to {new_name}"));
            e.rec.clone()
        };
        self.save(&rec)
    }

    /// Opens a domain's console: the live console socket of a running
    /// domain, or the console log of a preserved one.
    pub fn console(&self, caller: &Caller, r: &str) -> Result<OwnedFd, DaemonError> {
        let (id, dir) = self.guest(caller, r, "attached to")?;
        // Like `xl console`, wait for the console of a domain that is still being built.
        let deadline = Instant::now() + Duration::from_secs(30);
        let running = loop {
            let starting = {
                let t = self.table();
                match t.domains.get(&id) {
                    None => return Err(DaemonError::NoSuchDomain(r.to_string())),
                    Some(e) if e.busy == Some(Busy::Starting) => true,
                    Some(e) => break matches!(e.rec.state, DomainState::Running { .. }),
                }
            };
            if starting && Instant::now() >= deadline {
                return Err(DaemonError::Busy(r.to_string(), Busy::Starting.what()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let fd: OwnedFd = if running {
            vmm::connect_console(&dir)
                .map_err(|e| DaemonError::Vmm(VmmError::Control(format!("console: {e}"))))?
                .into()
        } else {
            vmm::open_console_log(&dir)
                .map_err(|e| DaemonError::Vmm(VmmError::Control(format!("console log: {e}"))))?
                .into()
        };
        Ok(fd)
    }

    /// One round of supervision: reap children, sample CPU time, and handle
    /// every domain whose VMM has gone.
    pub fn supervise(&self) {
        // Only the VMMs rxend spawned: reaping any child would steal the exit
        // status of helpers other threads wait for (`ip`, hotplug scripts).
        vmm::reap_children();
        let ticks = procfs::clock_ticks().max(1);
        let mut gone = Vec::new();
        let mut to_save = Vec::new();
        let mut running = Vec::new();
        {
            let mut t = self.table();
            for e in t.domains.values_mut() {
                if matches!(e.rec.state, DomainState::Running { .. }) {
                    running.push(e.rec.domid);
                }
                if e.busy.is_some() {
                    continue;
                }
                if let DomainState::Running {
                    pid, start_ticks, ..
                } = e.rec.state
                {
                    if procfs::alive(pid, start_ticks) {
                        e.live_cpu_ns = vcpu_cpu_ns(pid, ticks);
                        if e.rec.vmm_cpu_ns != e.live_cpu_ns
                            && e.saved_at.elapsed() >= ACCOUNTING_SAVE_INTERVAL
                        {
                            e.rec.vmm_cpu_ns = e.live_cpu_ns;
                            e.saved_at = Instant::now();
                            to_save.push(e.rec.clone());
                        }
                    } else {
                        e.busy = Some(Busy::Exiting);
                        gone.push(e.rec.domid);
                    }
                }
            }
        }
        self.rotate_console_logs(&running);
        self.account_devices(&mut to_save);
        for rec in to_save {
            if let Err(e) = self.save(&rec) {
                self.log.error(e);
            }
        }
        for id in gone {
            self.handle_exit(id);
        }
    }

    /// Rotates the console logs of running domains that grew past the limit. The VMM appends
    /// to one descriptor and may not rename paths, so rxend copies and truncates (see
    /// `rxen_logfile::rotate_copy_truncate` for the short window in which output is lost).
    fn rotate_console_logs(&self, ids: &[u32]) {
        use rxen_proto::vmspec::files;
        for &id in ids {
            let path = self.paths.run_dir(id).join(files::CONSOLE_LOG);
            match rxen_logfile::rotate_copy_truncate(
                &path,
                files::CONSOLE_LOG_MAX_BYTES,
                files::CONSOLE_LOG_KEEP,
            ) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Said once a minute at most: a VMM that planted a link would flood the log.
                    let mut last = self
                        .rotate_warned
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if last
                        .get(&id)
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                    {
                        last.insert(id, Instant::now());
                        self.log
                            .warn(format!("domain {id}: cannot rotate its console log: {e}"));
                    }
                }
            }
        }
    }

    /// Applies the domain's `on_*` policy after its VMM ended.
    fn handle_exit(&self, id: u32) {
        let dir = self.paths.run_dir(id);
        // The VMM counts its NICs' bytes as it ends; without its record (it was killed), the
        // last sample is what there is.
        let (reason, detail, net_tx, net_rx) = match vmm::exit_record(&dir) {
            Some(r) => (r.reason, r.detail, r.net_tx_bytes, r.net_rx_bytes),
            None => match vmm::seccomp_kill(&dir) {
                Some(nr) => {
                    self.log.error(format!(
                        "rxen-vmm of {} killed by its seccomp filter (syscall {nr})",
                        self.name_of(id)
                    ));
                    let why = format!("its VMM was killed by its seccomp filter (syscall {nr})");
                    (ExitReason::Crash, why, 0, 0)
                }
                None => (ExitReason::Crash, "the VMM process died".to_string(), 0, 0),
            },
        };
        // A reset stops the VMM as `destroy` does; the domain then reboots (`on_reboot`).
        let reset = self
            .resetting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let (reason, detail) = if reset && reason == ExitReason::Destroyed {
            (
                ExitReason::Reboot,
                "hard reset (rxl trigger reset)".to_string(),
            )
        } else {
            (reason, detail)
        };
        if reason == ExitReason::Destroyed && detail == rxen_proto::vmctl::FENCE_EXIT_DETAIL {
            self.pool_vmm_fenced(id);
        }
        let Some(mut rec) = self.table().domains.get(&id).map(|e| {
            let mut r = e.rec.clone();
            r.cpu_time_ns += e.live_cpu_ns;
            r.vmm_cpu_ns = 0;
            r.net_tx_bytes += r.vmm_net_tx_bytes.max(net_tx);
            r.net_rx_bytes += r.vmm_net_rx_bytes.max(net_rx);
            r.vmm_net_tx_bytes = 0;
            r.vmm_net_rx_bytes = 0;
            r
        }) else {
            return;
        };
        self.remove_sched(id);
        let action = match reason {
            ExitReason::Poweroff => rec.config.on_poweroff,
            ExitReason::Reboot => rec.config.on_reboot,
            ExitReason::Crash => rec.config.on_crash,
            ExitReason::Watchdog => rec.config.on_watchdog,
            // The domain lives on in a save file or on another host.
            ExitReason::Destroyed | ExitReason::Saved | ExitReason::Migrated => Action::Destroy,
        };
        self.log.info(format!(
            "domain {id} ({}): {} ({detail}); action {action}",
            rec.name,
            reason_word(reason)
        ));
        {
            let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            if ended.len() >= ENDED_KEPT {
                ended.pop_front();
            }
            ended.push_back((reason, rec.clone()));
        }
        let preserve = |rec: &mut DomainRecord| {
            rec.state = DomainState::Shutdown { reason };
            let mut t = self.table();
            if let Some(e) = t.domains.get_mut(&id) {
                e.rec = rec.clone();
                e.busy = None;
                e.live_cpu_ns = 0;
            }
            drop(t);
            if let Err(e) = self.save(rec) {
                self.log.error(e);
            }
        };
        match action {
            Action::Destroy => self.forget(id),
            Action::CoredumpDestroy => {
                self.log.warn(format!(
                    "domain {id}: core dumps are not supported; destroying"
                ));
                self.forget(id);
            }
            Action::Preserve => preserve(&mut rec),
            Action::Restart | Action::CoredumpRestart | Action::SoftReset => {
                if action != Action::Restart {
                    self.log.warn(format!(
                        "domain {id}: {action} is carried out as a plain restart"
                    ));
                }
                self.forget(id);
                let (config, path) = next_config(rec, &self.log);
                self.restart(config, path);
            }
            Action::RenameRestart => {
                let original = rec.name.clone();
                let stamp = chrono::Utc::now().format("-%Y%m%dT%H%MZ");
                let next = rec.next_config.take();
                rec.name = format!("{original}{stamp}");
                rec.config.name = rec.name.clone();
                preserve(&mut rec);
                let mut config = rec.config.clone();
                config.name = original;
                rec.config = config;
                rec.next_config = next;
                let (config, path) = next_config(rec, &self.log);
                self.restart(config, path);
            }
        }
    }

    fn restart(&self, config: DomainConfig, path: Option<String>) {
        let name = config.name.clone();
        match self.start(config, path, false) {
            Ok(c) => self
                .log
                .info(format!("domain {name} restarted as domain {}", c.domid)),
            Err(e) => self.log.error(format!("cannot restart domain {name}: {e}")),
        }
    }
}

/// The config a domain is created from again: the one `rxl config-update` stored, if any
/// (xl's "\"xl\" configuration found, using it"), else the one it ran with.
fn next_config(rec: DomainRecord, log: &Log) -> (DomainConfig, Option<String>) {
    match rec.next_config {
        Some(next) => {
            log.info(format!(
                "domain {}: restarting with the configuration from {} (config-update)",
                rec.name, next.path
            ));
            (next.config, Some(next.path))
        }
        None => (rec.config, rec.config_path),
    }
}

/// How often the supervisor writes a running domain's CPU time to its record,
/// so that the figure survives an rxend restart (and a VMM that ends while
/// rxend is away).
const ACCOUNTING_SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// Kills a VMM process if it is still the one we started.
fn kill_vmm(pid: i32, start_ticks: u64) {
    if procfs::alive(pid, start_ticks) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Waits until a process is gone; true if it went within `timeout`.
fn wait_gone(pid: i32, start_ticks: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        vmm::reap_children();
        if !procfs::alive(pid, start_ticks) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn vcpu_cpu_ns(pid: i32, ticks: u64) -> u64 {
    procfs::threads(pid, "vcpu")
        .iter()
        .map(|t| (t.stat.utime + t.stat.stime) * 1_000_000_000 / ticks)
        .sum()
}

fn reason_word(r: ExitReason) -> &'static str {
    match r {
        ExitReason::Poweroff => "powered off",
        ExitReason::Reboot => "rebooted",
        ExitReason::Crash => "crashed",
        ExitReason::Watchdog => "watchdog fired",
        ExitReason::Destroyed => "destroyed",
        ExitReason::Saved => "saved",
        ExitReason::Migrated => "migrated",
    }
}

/// xl's six-letter state: running, blocked, paused, shutdown, reason, dying.
fn state_string(e: &Entry) -> String {
    let mut s = *b"------";
    match (&e.rec.state, e.busy) {
        (_, Some(Busy::Destroying)) => s[5] = b'd',
        (_, Some(Busy::Starting)) | (DomainState::Starting { .. }, _) => s[2] = b'p',
        // The VMM has gone and the supervisor has yet to apply on_*: dying, as xl shows it,
        // rather than blocked.
        (
            DomainState::Running {
                pid, start_ticks, ..
            },
            None | Some(Busy::Exiting),
        ) if !procfs::alive(*pid, *start_ticks) => s[5] = b'd',
        (DomainState::Running { paused: true, .. }, _) => s[2] = b'p',
        (DomainState::Running { pid, .. }, _) => {
            let threads = procfs::threads(*pid, "vcpu");
            if threads.iter().any(|t| t.stat.state == 'R') {
                s[0] = b'r';
            } else {
                s[1] = b'b';
            }
        }
        (DomainState::Shutdown { reason }, _) => {
            s[3] = b's';
            s[4] = match reason {
                ExitReason::Poweroff
                | ExitReason::Destroyed
                | ExitReason::Saved
                | ExitReason::Migrated => b'-',
                ExitReason::Reboot => b'r',
                ExitReason::Crash => b'c',
                ExitReason::Watchdog => b'w',
            };
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn domain_info(e: &Entry) -> DomainInfo {
    let live = match e.rec.state {
        DomainState::Running { pid, .. } if e.busy.is_none() => {
            vcpu_cpu_ns(pid, procfs::clock_ticks().max(1))
        }
        _ => e.live_cpu_ns,
    };
    DomainInfo {
        domid: e.rec.domid,
        name: if e.busy == Some(Busy::Migrating) {
            format!("migrating-{}", e.rec.name)
        } else {
            e.rec.name.clone()
        },
        uuid: e.rec.uuid.clone(),
        memory_mib: e.rec.current_mib(),
        maxmem_mib: e.rec.max_mib(),
        // As in xl, a preserved dead domain still has the vCPUs it had online.
        vcpus: e.rec.online_vcpus.unwrap_or(e.rec.config.vcpus),
        state: state_string(e),
        cpu_time_s: (e.rec.cpu_time_ns + live) as f64 / 1e9,
        uptime_s: (now_secs() - e.rec.created_at).max(0.0),
        config: serde_json::to_value(&e.rec.config).ok(),
        config_path: e.rec.config_path.clone(),
    }
}

fn dom0_info() -> DomainInfo {
    let mem = hostinfo::memory();
    DomainInfo {
        domid: 0,
        name: "Domain-0".into(),
        uuid: "00000000-0000-0000-0000-000000000000".into(),
        memory_mib: mem.total_kib / 1024,
        maxmem_mib: mem.total_kib / 1024,
        vcpus: hostinfo::nr_cpus(),
        state: "r-----".into(),
        cpu_time_s: hostinfo::busy_seconds(),
        uptime_s: hostinfo::host_uptime(),
        config: None,
        config_path: None,
    }
}

/// Resolves a path from a config file: absolute as is, relative to the file's directory.
fn resolve_path(p: &str, config_path: Option<&str>) -> PathBuf {
    let path = Path::new(p);
    match config_path.and_then(|c| Path::new(c).parent()) {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// The kernel a config names.
fn kernel_source(
    config: &DomainConfig,
    config_path: Option<&str>,
) -> Result<KernelSource, DaemonError> {
    if config.kernel.is_none() {
        if let Some(b) = config
            .bootloader
            .as_deref()
            .filter(|b| xlcfg::model::is_pygrub(b))
        {
            let Some(entry) = xlcfg::model::pygrub_entry(&config.bootloader_args) else {
                return Err(DaemonError::Config(format!(
                    "bootloader_args {:?}: rxen's pygrub takes --entry=N alone",
                    config.bootloader_args
                )));
            };
            if config.disks.is_empty() {
                return Err(DaemonError::Config(format!(
                    "bootloader = \"{b}\" boots the domain's first disk, and it has none"
                )));
            }
            return Ok(KernelSource::Bootloader { entry });
        }
    }
    let Some(kernel) = config.kernel.as_deref() else {
        return Err(DaemonError::Config(format!(
            "domain \"{}\" has no kernel: set kernel = \"builtin:testguest\" or the path of a kernel image",
            config.name
        )));
    };
    if let Some(name) = kernel.strip_prefix("builtin:") {
        if BUILTIN_KERNELS.contains(&name) {
            let vcpus = config.vcpus.max(config.maxvcpus);
            if name == rxen_testguest::BUILTIN_NAME && vcpus > rxen_testguest::MAX_VCPUS {
                return Err(DaemonError::Config(format!(
                    "vcpus = {vcpus}: the built-in test guest runs at most {} vCPUs",
                    rxen_testguest::MAX_VCPUS
                )));
            }
            return Ok(KernelSource::Builtin(name.to_string()));
        }
        return Err(DaemonError::Config(format!(
            "unknown built-in kernel \"{name}\" (built in: {})",
            BUILTIN_KERNELS.join(", ")
        )));
    }
    let path = resolve_path(kernel, config_path);
    match fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(KernelSource::Path(path)),
        Ok(_) => Err(DaemonError::Config(format!(
            "kernel {}: not a regular file (a kernel is a vmlinux or bzImage file)",
            path.display()
        ))),
        Err(e) => Err(DaemonError::Config(format!(
            "kernel {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_xl_does() {
        assert!(check_name("web-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("42").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a b").is_err());
    }

    fn daemon(dir: &Path) -> Daemon {
        Daemon::open(Paths {
            socket: dir.join("rxend.sock"),
            state_dir: dir.join("state"),
        })
        .expect("open")
    }

    /// A preserved (shut down) domain in `d`'s table and records, with ID 1.
    fn preserved(d: &Daemon, name: &str) {
        let text = format!("name = \"{name}\"\nkernel = \"builtin:testguest\"\n");
        let config = xlcfg::parse(&text, "d.cfg", &[]).expect("config").config;
        let rec = DomainRecord::new(
            1,
            name.into(),
            "00000000-0000-0000-0000-000000000001".into(),
            config,
            None,
            0.0,
            DomainState::Shutdown {
                reason: ExitReason::Poweroff,
            },
        );
        d.save(&rec).expect("save record");
        d.table().domains.insert(
            1,
            Entry {
                rec,
                busy: None,
                live_cpu_ns: 0,
                saved_at: Instant::now(),
            },
        );
    }

    #[test]
    fn destroy_refuses_a_domain_being_saved_or_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = daemon(dir.path());
        preserved(&d, "moving");
        let root = Caller::from_uid(0);
        for busy in [Busy::Saving, Busy::Migrating, Busy::Starting] {
            d.table().domains.get_mut(&1).expect("entry").busy = Some(busy);
            let err = d.destroy(&root, "moving").expect_err("destroy must wait");
            assert!(
                err.to_string()
                    .contains(&format!("is busy ({})", busy.what())),
                "{err}"
            );
            assert!(d.table().domains.contains_key(&1), "still there");
        }
        d.table().domains.get_mut(&1).expect("entry").busy = None;
        d.destroy(&root, "moving").expect("destroy once idle");
        assert!(!d.table().domains.contains_key(&1));
    }

    #[test]
    fn an_intent_record_with_no_vmm_is_removed_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let d = daemon(dir.path());
            preserved(&d, "half");
            let mut rec = d.table().domains.get(&1).expect("entry").rec.clone();
            rec.state = DomainState::Starting { paused: false };
            d.save(&rec).expect("save intent");
            let run = d.paths.run_dir(1);
            fs::create_dir_all(&run).expect("run dir");
            fs::write(run.join("console.log"), "x").expect("file in run dir");
        }
        let d = daemon(dir.path());
        assert!(d.table().domains.is_empty());
        assert!(!d.paths.run_dir(1).exists());
        assert!(d.store.load_all().is_empty());
        assert!(fs::read_to_string(d.paths.log_file())
            .expect("log")
            .contains("domain 1 (half) was being started when rxend stopped"));
    }

    fn customer(name: &str) -> Caller {
        Caller {
            uid: 4242,
            user: Some(name.to_string()),
        }
    }

    /// Writes a config naming `users` and registers it as root's create would.
    fn known_config(d: &Daemon, dir: &Path, name: &str, users: &str) -> PathBuf {
        let path = dir.join(format!("{name}.cfg"));
        fs::write(
            &path,
            format!("name = \"{name}\"\nkernel = \"builtin:testguest\"\nxen_shell = {users}\n"),
        )
        .expect("write config");
        d.known
            .remember(
                name,
                KnownConfig {
                    path: path.display().to_string(),
                    overrides: Vec::new(),
                    ignore_unsupported: false,
                },
            )
            .expect("remember");
        path
    }

    #[test]
    fn customers_know_only_the_domains_their_files_name_them_in() {
        if !nix::unistd::geteuid().is_root() {
            return; // files a customer may boot must be root's
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let d = daemon(dir.path());
        known_config(&d, dir.path(), "goneril", "\"marlowe\"");
        known_config(&d, dir.path(), "regan", "[\"kent\", \"marlowe\"]");
        known_config(&d, dir.path(), "cordelia", "\"france\"");
        let names = |v: Vec<KnownDomain>| v.into_iter().map(|k| k.name).collect::<Vec<_>>();
        let marlowe = customer("marlowe");
        assert_eq!(names(d.known(&marlowe, None)), ["goneril", "regan"]);
        assert!(d.known(&customer("edgar"), None).is_empty());
        let root = Caller { uid: 0, user: None };
        assert_eq!(names(d.known(&root, None)).len(), 3);
        assert!(d.known(&marlowe, Some("cordelia")).is_empty());
        assert_eq!(names(d.known(&marlowe, Some("regan"))), ["regan"]);
        assert!(d
            .log
            .text(false)
            .contains("refused: marlowe (uid 4242) may not manage domain cordelia"));

        // Booting someone else's domain is refused before anything starts.
        let err = d.boot(&marlowe, "cordelia").expect_err("not his");
        assert!(matches!(err, DaemonError::NoSuchDomain(_)), "{err}");
        let err = d.boot(&marlowe, "lear").expect_err("unknown");
        assert!(matches!(err, DaemonError::NoSuchDomain(_)), "{err}");
        let log = d.log.text(false);
        assert!(log.contains("may not boot domain cordelia"), "{log}");
        assert!(log.contains("may not boot domain lear"), "{log}");
        assert!(
            d.list(&root, &[]).expect("list").len() == 1,
            "only Domain-0"
        );
        // Nor may a customer see or name Domain-0.
        assert!(d.list(&marlowe, &[]).expect("list").is_empty());
        assert!(d.list(&marlowe, &["Domain-0".into()]).is_err());
        assert!(d.list(&marlowe, &["0".into()]).is_err());
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        assert_eq!(
            resolve_path("vmlinux", Some("/etc/xen/web.cfg")),
            PathBuf::from("/etc/xen/vmlinux")
        );
        assert_eq!(
            resolve_path("/boot/vmlinux", Some("/etc/xen/web.cfg")),
            PathBuf::from("/boot/vmlinux")
        );
    }
}
