//! The rxl/rxend API: a client sends one [`Request`] per line on rxend's
//! Unix socket and reads one [`Response`] per line. rxend learns who the
//! caller is from the socket's peer credentials, never from the message.

use serde::{Deserialize, Serialize};

/// A domain named by the user: a name or a numeric ID, resolved by rxend.
pub type DomainRef = String;

/// One request from a client to rxend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create a domain from a config file (`rxl create`).
    Create {
        /// Absolute path of the config file, remembered with the domain.
        path: String,
        /// The file's text as the client read it.
        text: String,
        /// Trailing `KEY=VALUE` overrides, applied after the file.
        overrides: Vec<String>,
        /// Leave the vCPUs paused (`-p`).
        paused: bool,
        /// Start even if the config has keys rxen does not support.
        ignore_unsupported: bool,
    },
    /// List domains (`rxl list`); empty means all.
    List {
        /// Domains to show; all when empty.
        domains: Vec<DomainRef>,
    },
    /// Host information (`rxl info`).
    Info,
    /// Destroy a domain at once.
    Destroy {
        /// The domain.
        domain: DomainRef,
    },
    /// Ask the guest to power off.
    Shutdown {
        /// The domain.
        domain: DomainRef,
    },
    /// Ask the guest to reboot.
    Reboot {
        /// The domain.
        domain: DomainRef,
    },
    /// Reset the guest at once, without asking it (`rxl trigger reset`); it then ends as
    /// rebooted and its `on_reboot` policy applies.
    Reset {
        /// The domain.
        domain: DomainRef,
    },
    /// Write an ELF core file of a running domain's memory and vCPU registers (`rxl
    /// dump-core`); the domain goes on running.
    DumpCore {
        /// The domain.
        domain: DomainRef,
        /// Absolute path of the core file to create (an existing file is not replaced).
        path: String,
    },
    /// Change the medium of a running domain's cdrom drive (`rxl cd-insert`, `rxl cd-eject`).
    ChangeCdrom {
        /// The domain.
        domain: DomainRef,
        /// The drive's virtual device (`hdc`, `xvdc`).
        vdev: String,
        /// Absolute path of the new medium; `None` ejects.
        target: Option<String>,
    },
    /// Send a magic SysRq key to a domain's serial console (`rxl sysrq`).
    Sysrq {
        /// The domain.
        domain: DomainRef,
        /// The key.
        key: u8,
    },
    /// Inject a non-maskable interrupt into one of a domain's vCPUs (`rxl trigger DOMAIN nmi
    /// [VCPU]`); a paused domain takes it when it runs again.
    Nmi {
        /// The domain.
        domain: DomainRef,
        /// The vCPU index (xl's default is 0).
        vcpu: u32,
    },
    /// Pause a domain's vCPUs.
    Pause {
        /// The domain.
        domain: DomainRef,
    },
    /// Unpause a domain's vCPUs.
    Unpause {
        /// The domain.
        domain: DomainRef,
    },
    /// Rename a domain.
    Rename {
        /// The domain.
        domain: DomainRef,
        /// Its new name.
        new_name: String,
    },
    /// Resolve a name or ID to the domain's ID and name.
    Lookup {
        /// The domain.
        domain: DomainRef,
    },
    /// rxend's log (`rxl dmesg`).
    Dmesg {
        /// Clear the log after reading it.
        clear: bool,
    },
    /// Attach to a domain's console: on success rxend sends the console
    /// connection's file descriptor with the response (SCM_RIGHTS).
    Console {
        /// The domain.
        domain: DomainRef,
    },
    /// Ask rxend to exit (running domains keep running).
    Quit,
    /// Create a domain from the config file rxend remembers for it
    /// (`boot` in rxen-shell, `rxl boot`); the file is read again now.
    Boot {
        /// The domain's name.
        domain: String,
    },
    /// Store a new config for a domain, used the next time rxend creates it again (its
    /// `on_reboot`/`on_poweroff`/`on_crash` restart, `rxl boot`): `rxl config-update`.
    ConfigUpdate {
        /// The domain.
        domain: DomainRef,
        /// Absolute path of the config file, remembered with the domain.
        path: String,
        /// The file's text as the client read it.
        text: String,
        /// Trailing `KEY=VALUE` overrides, applied after the file.
        overrides: Vec<String>,
        /// Accept the config even if it has keys rxen does not support (they are ignored).
        #[serde(default)]
        ignore_unsupported: bool,
    },
    /// The domains the caller may manage, running or not (rxen-shell).
    Known {
        /// Only this domain: empty answer (and a logged refusal) unless the caller may manage it.
        #[serde(default)]
        domain: Option<String>,
    },
    /// Hot-plug a disk (`rxl block-attach`); `spec` is an xl disk spec.
    BlockAttach {
        /// The domain.
        domain: DomainRef,
        /// The disk spec, e.g. `file:/img,xvdb,w`.
        spec: String,
    },
    /// Hot-unplug a disk (`rxl block-detach`) by vdev name or device ID.
    BlockDetach {
        /// The domain.
        domain: DomainRef,
        /// `xvdb` or `51728`.
        vdev: String,
    },
    /// Hot-plug a NIC (`rxl network-attach`); `spec` is an xl vif spec.
    NetworkAttach {
        /// The domain.
        domain: DomainRef,
        /// The vif spec, e.g. `bridge=xenbr0,mac=00:16:3e:00:00:01`.
        spec: String,
    },
    /// Hot-unplug a NIC (`rxl network-detach`) by device ID or MAC.
    NetworkDetach {
        /// The domain.
        domain: DomainRef,
        /// `1` or `00:16:3e:00:00:01`.
        device: String,
    },
    /// The disks and NICs of a running domain with their counters.
    DeviceList {
        /// The domain.
        domain: DomainRef,
    },
    /// Read or change credit-scheduler parameters (`rxl sched-credit`).
    SchedCredit {
        /// The domain; all domains when `None`.
        domain: Option<DomainRef>,
        /// New weight (1..=65535).
        weight: Option<u32>,
        /// New cap in percent of one host CPU (0 = none).
        cap: Option<u32>,
    },
    /// List vCPUs (`rxl vcpu-list`); empty means all domains.
    VcpuList {
        /// Domains to show; all when empty.
        domains: Vec<DomainRef>,
    },
    /// Set the hard and soft affinity of vCPUs (`rxl vcpu-pin`).
    VcpuPin {
        /// The domain.
        domain: DomainRef,
        /// A vCPU number, or `all`.
        vcpu: String,
        /// Hard affinity: a CPU list (`3,5-8,^6`), `all`, or `-` for unchanged.
        hard: String,
        /// Soft affinity, the same way; `None` (as `-`) leaves it unchanged.
        #[serde(default)]
        soft: Option<String>,
    },
    /// Every counter rxend keeps, for `rxl top` and metrics.
    Counters,
    /// Set how many vCPUs are online (`rxl vcpu-set`), up to `maxvcpus`.
    VcpuSet {
        /// The domain.
        domain: DomainRef,
        /// vCPUs wanted online.
        count: u32,
    },
    /// Set a domain's memory target through its balloon (`rxl mem-set`).
    MemSet {
        /// The domain.
        domain: DomainRef,
        /// The target in MiB.
        mib: u64,
    },
    /// How far a running save or migration of a domain has got.
    TransferProgress {
        /// The domain.
        domain: DomainRef,
    },
    /// Set a domain's maximum memory (`rxl mem-max`).
    MemMax {
        /// The domain.
        domain: DomainRef,
        /// The maximum in MiB.
        mib: u64,
    },
    /// Save every running domain into the host's save directory, shutting down those whose
    /// save fails (`rxl host-shutdown`, Xen's `xendomains stop`).
    HostShutdown,
    /// Restore every domain saved there, then create those whose configs are in the
    /// auto-start directory and do not run (`rxl host-start`, Xen's `xendomains start`).
    HostStart,
    /// Back a running domain up into a new directory under `dir`: its state and a copy of
    /// every disk taken at the same instant, with a manifest (`rxl backup`).
    Backup {
        /// The domain.
        domain: DomainRef,
        /// The directory that holds the domain's backups (absolute); with `incremental`, the
        /// chain's directory.
        dir: String,
        /// Add to the chain in `dir`: the first backup there is full, each next one holds only
        /// the blocks written since the one before (`rxl backup --incremental`).
        #[serde(default)]
        incremental: bool,
    },
    /// Bring a domain back from one backup directory: its disks copied back, its state
    /// restored (`rxl backup-restore`).
    BackupRestore {
        /// The backup's own directory, or a chain's directory (absolute).
        dir: String,
        /// The backup of the chain in `dir` to bring back (its directory's name); the chain's
        /// latest when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Save a domain to a file (`rxl save`).
    Save {
        /// The domain.
        domain: DomainRef,
        /// Absolute path of the save file.
        path: String,
        /// Keep the domain running afterwards (`-c`).
        checkpoint: bool,
        /// Leave the domain paused afterwards (`-p`).
        paused: bool,
        /// A config to store instead of the domain's own.
        #[serde(default)]
        config: Option<ConfigText>,
    },
    /// Restore a domain from a save file (`rxl restore`).
    Restore {
        /// Absolute path of the save file.
        path: String,
        /// A config to use instead of the one in the file.
        #[serde(default)]
        config: Option<ConfigText>,
        /// Leave the restored domain paused (`-p`).
        paused: bool,
    },
    /// Move a domain to another host (`rxl migrate`). With `ssh`, the
    /// connection to the receiver comes with this request (SCM_RIGHTS);
    /// otherwise rxend connects to `host`'s relocation server.
    Migrate {
        /// The domain.
        domain: DomainRef,
        /// The target host (name or address).
        host: String,
        /// The relocation server's port.
        port: u16,
        /// The shared key file (default: rxend's configured key).
        #[serde(default)]
        key_file: Option<String>,
        /// Pre-copy while the domain runs (else pause, copy, resume there).
        live: bool,
        /// Most pre-copy rounds.
        max_rounds: u32,
        /// Downtime target in milliseconds.
        downtime_ms: u64,
        /// Leave the domain paused on the target.
        paused: bool,
        /// The connection to the receiver is passed with the request (ssh transport).
        #[serde(default)]
        ssh: bool,
        /// Copy the disks to the target, which does not share the storage
        /// (`--copy-storage`).
        #[serde(default)]
        copy_storage: bool,
    },
    /// Receive a domain on the connection passed with this request (SCM_RIGHTS):
    /// `rxl migrate-receive`, run by ssh on the target.
    MigrateReceive {
        /// Leave the received domain paused.
        paused: bool,
    },
    /// The scheduler's pool parameters (`rxl sched-credit -s`), as CFS has them.
    SchedPool,
    /// The CPU pools (`rxl cpupool-list`).
    CpupoolList,
    /// Create a CPU pool (`rxl cpupool-create`).
    CpupoolCreate {
        /// Its name.
        name: String,
        /// Its scheduler (`credit` or `credit2`; `None`: rxend's).
        sched: Option<String>,
        /// Its CPUs: free CPUs or Pool-0's.
        cpus: Vec<u32>,
        /// Check and answer without creating it (`-n`).
        dry_run: bool,
    },
    /// Destroy an empty CPU pool (`rxl cpupool-destroy`); its CPUs become free.
    CpupoolDestroy {
        /// The pool (name or ID).
        pool: String,
    },
    /// Rename a CPU pool (`rxl cpupool-rename`).
    CpupoolRename {
        /// The pool (name or ID).
        pool: String,
        /// The new name.
        new_name: String,
    },
    /// Add CPUs to a pool (`rxl cpupool-cpu-add`).
    CpupoolCpuAdd {
        /// The pool (name or ID).
        pool: String,
        /// The CPUs as xl writes them (`1`, `2-3`, `node:0`).
        cpus: String,
    },
    /// Take CPUs out of a pool (`rxl cpupool-cpu-remove`); they become free.
    CpupoolCpuRemove {
        /// The pool (name or ID).
        pool: String,
        /// The CPUs as xl writes them.
        cpus: String,
    },
    /// Move a domain to another pool (`rxl cpupool-migrate`).
    CpupoolMigrate {
        /// The domain.
        domain: DomainRef,
        /// The pool (name or ID).
        pool: String,
    },
    /// One pool per NUMA node (`rxl cpupool-numa-split`).
    CpupoolNumaSplit,
    /// Why a domain that is gone ended (`rxl shutdown -w` prints xl's reason code). rxend
    /// remembers the last few.
    Ended {
        /// The ID the domain had.
        domid: u32,
    },
    /// The hosts of this host's pool, read from etcd (`rxl host-list`).
    PoolHosts,
    /// Every domain of this host's pool, read from etcd (`rxl list --pool`).
    PoolDomains,
    /// Marks a host of the pool disabled or enabled again (`rxl host-disable`/`host-enable`).
    PoolHostEnable {
        /// The host's name in the pool.
        host: String,
        /// Enabled (`true`) or disabled.
        enabled: bool,
    },
    /// Create a domain on the host of the pool that placement chooses (`rxl create --pool`).
    PoolCreate {
        /// Absolute path of the config file.
        path: String,
        /// The file's text as the client read it.
        text: String,
        /// Trailing `KEY=VALUE` overrides.
        overrides: Vec<String>,
        /// Leave the vCPUs paused (`-p`).
        paused: bool,
        /// Start even if the config has keys rxen does not support.
        ignore_unsupported: bool,
    },
    /// Restore a domain on the host of the pool that placement chooses (`rxl restore
    /// --pool`); the save file must be where that host sees it too.
    PoolRestore {
        /// Absolute path of the save file.
        path: String,
        /// A config to use instead of the one in the file.
        #[serde(default)]
        config: Option<ConfigText>,
        /// Leave the restored domain paused (`-p`).
        paused: bool,
    },
    /// Live-migrate one domain off `host` to the host placement chooses (a step of `rxl
    /// host-evacuate`); asked of another host's rxend, it is passed on to `host`'s.
    PoolEvacuate {
        /// The host being emptied.
        host: String,
        /// The domain (its name).
        domain: String,
    },
}

/// A host's state in its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolHostState {
    /// Its lease is alive and it is enabled.
    Up,
    /// Its lease is alive and it was disabled (`rxl host-disable`).
    Disabled,
    /// Its lease expired: its rxend stopped, or cannot reach etcd.
    DownLeaseExpired,
}

/// One host of a pool (`rxl host-list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolHost {
    /// Its name in the pool.
    pub name: String,
    /// Up, disabled or down.
    pub state: PoolHostState,
    /// Whether it is disabled (also while down).
    pub disabled: bool,
    /// Memory domains may still be given, MiB (as the host last said).
    pub mem_free_mib: u64,
    /// Memory all domains together may be given, MiB.
    pub mem_total_mib: u64,
    /// Online CPUs.
    pub cpus: u32,
    /// Its one-minute load average.
    pub load: f64,
    /// Domains of the pool on it.
    pub domains: u32,
    /// Its rxend's version.
    pub version: String,
    /// Its relocation server's address.
    pub relocation_address: Option<String>,
    /// When it last wrote its figures, seconds since the Unix epoch.
    pub updated: f64,
    /// Whether it leads the pool (restarts the `ha = 1` domains of dead hosts).
    #[serde(default)]
    pub leader: bool,
}

/// One domain of a pool (`rxl list --pool`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolDomain {
    /// Its name.
    pub name: String,
    /// The host it is on.
    pub host: String,
    /// Its ID there.
    pub domid: u32,
    /// Current memory, MiB.
    pub memory_mib: u64,
    /// Online vCPUs.
    pub vcpus: u32,
    /// Six-letter xl state (`r-----` running, `--p---` paused or starting, `---s--` shut down,
    /// `-----d` being saved or migrated away).
    pub state: String,
    /// CPU time used, seconds (as of its host's last refresh).
    pub cpu_time_s: f64,
}

/// One CPU pool, as `rxl cpupool-list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpupoolInfo {
    /// Its ID (Pool-0 is 0).
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Its scheduler's name.
    pub sched: String,
    /// Its CPUs, ascending.
    pub cpus: Vec<u32>,
    /// The domains in it (Domain-0 counts in Pool-0).
    pub domains: u32,
}

/// What `rxl cpupool-create` did (or, with `-n`, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpupoolCreated {
    /// The pool's name.
    pub name: String,
    /// Its scheduler.
    pub sched: String,
    /// How many CPUs it has.
    pub cpus: u32,
}

/// A config file given on the command line: its absolute path and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigText {
    /// Absolute path.
    pub path: String,
    /// The file's text.
    pub text: String,
}

/// One row of `xl sched-credit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedEntry {
    /// Domain name.
    pub name: String,
    /// Domain ID.
    pub domid: u32,
    /// Credit weight.
    pub weight: u32,
    /// Cap in percent of one host CPU, 0 = none.
    pub cap: u32,
    /// The ID of its CPU pool (0: Pool-0).
    #[serde(default)]
    pub pool: u32,
    /// Its disk I/O priorities as the kernel holds them (`rxl sched-credit -v`); `None` for
    /// Domain-0 and domains not running.
    #[serde(default)]
    pub io: Option<SchedIo>,
}

/// A running domain's disk I/O priorities, read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedIo {
    /// How many disk I/O threads (`blk-<vdev>`) its VMM has.
    pub threads: u32,
    /// Their I/O priority in ionice's words (`best-effort: prio 3`, `idle`); `mixed` when
    /// they differ, `None` without disk threads.
    pub prio: Option<String>,
    /// The cgroup I/O weight file and its value (`io.weight`, 200); `None` when the kernel
    /// offers none.
    pub cgroup_weight: Option<(String, u64)>,
}

/// The pool parameters `xl sched-credit -s` prints, from what Linux's CFS uses under rxen
/// (see rxend's `schedparams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedPoolParams {
    /// `tslice`: the CFS bandwidth period caps are accounted over, in ms.
    pub tslice_ms: u32,
    /// `ratelimit`: the run time a CPU takes from a cap's quota at a time, in us.
    pub ratelimit_us: u32,
    /// `migration-delay`: how long a task counts as cache-hot, in us.
    pub migration_delay_us: u32,
}

/// One row of `xl vcpu-list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuInfo {
    /// Domain name.
    pub name: String,
    /// Domain ID.
    pub domid: u32,
    /// vCPU index.
    pub vcpu: u32,
    /// Host CPU it last ran on; `None` when offline.
    pub cpu: Option<u32>,
    /// Online.
    pub online: bool,
    /// Running now.
    pub running: bool,
    /// Blocked (halted, waiting for an event).
    pub blocked: bool,
    /// CPU time used, in seconds.
    pub time_s: f64,
    /// Hard affinity as xl prints it (`all`, `0-3,5`, `none`).
    pub hard: String,
    /// Soft affinity as xl prints it.
    pub soft: String,
}

/// Host-wide counters for `rxl top`'s header and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostCounters {
    /// Host memory in KiB.
    pub total_kib: u64,
    /// Free (available) host memory in KiB.
    pub free_kib: u64,
    /// Online host CPUs.
    pub nr_cpus: u32,
    /// CPU clock in MHz.
    pub cpu_mhz: f64,
}

/// Counters of one domain for `rxl top` and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainCounters {
    /// Domain ID.
    pub domid: u32,
    /// Name.
    pub name: String,
    /// Six-letter xl state.
    pub state: String,
    /// CPU time in nanoseconds, over the domain's whole life.
    pub cpu_ns: u64,
    /// Current memory in KiB.
    pub mem_kib: u64,
    /// Maximum memory in KiB; `None` = no limit.
    pub maxmem_kib: Option<u64>,
    /// Online vCPUs.
    pub vcpus: u32,
    /// CPU time of each vCPU in nanoseconds (the current VMM's).
    pub vcpu_ns: Vec<u64>,
    /// Credit weight.
    pub weight: u32,
    /// Cap, percent of one host CPU.
    pub cap: u32,
    /// Network interfaces.
    pub nets: u32,
    /// Bytes the guest sent, over the domain's life.
    pub net_tx_bytes: u64,
    /// Bytes the guest received, over the domain's life.
    pub net_rx_bytes: u64,
    /// Virtual block devices.
    pub vbds: u32,
    /// Requests that found the device busy (out of requests).
    pub vbd_oo: u64,
    /// Read requests.
    pub vbd_rd: u64,
    /// Write requests.
    pub vbd_wr: u64,
    /// Sectors read.
    pub vbd_rsect: u64,
    /// Sectors written.
    pub vbd_wsect: u64,
    /// Each NIC's counters (for `rxl top -n`).
    #[serde(default)]
    pub nics: Vec<crate::vmctl::NicStats>,
    /// Each disk's counters (for `rxl top -x`).
    #[serde(default)]
    pub disks: Vec<crate::vmctl::DiskStats>,
}

/// The answer to [`Request::Counters`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Host figures.
    pub host: HostCounters,
    /// Every visible domain, Domain-0 first.
    pub domains: Vec<DomainCounters>,
}

/// A domain as `rxl list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// Domain ID (0 is Domain-0, the host).
    pub domid: u32,
    /// Name.
    pub name: String,
    /// UUID as text.
    pub uuid: String,
    /// Current memory in MiB.
    pub memory_mib: u64,
    /// Maximum memory in MiB.
    pub maxmem_mib: u64,
    /// Online vCPUs.
    pub vcpus: u32,
    /// Six-letter xl state, e.g. `-b----`.
    pub state: String,
    /// CPU time used, in seconds.
    pub cpu_time_s: f64,
    /// Seconds since the domain was created.
    pub uptime_s: f64,
    /// The resolved configuration (JSON of `xlcfg::DomainConfig`), for `list -l`.
    pub config: Option<serde_json::Value>,
    /// Path of the config file the domain came from.
    pub config_path: Option<String>,
}

/// A domain that rxend knows a config file for, or that runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownDomain {
    /// Its name.
    pub name: String,
    /// Its ID while it exists (running, paused or preserved), else none.
    pub domid: Option<u32>,
}

/// Host facts for `rxl info`, in xl's field names and order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `(field, value)` pairs in display order.
    pub fields: Vec<(String, String)>,
    /// The host's CPU, memory and device topology (`rxl info -n`).
    #[serde(default)]
    pub topology: HostTopology,
}

/// The host's topology as Linux describes it in `/sys` (`rxl info -n`: xl's `cpu_topology`,
/// `device topology` and `numa_info`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTopology {
    /// Every online CPU, by number.
    pub cpus: Vec<CpuTopology>,
    /// Every NUMA node with memory or CPUs, by number.
    pub nodes: Vec<NodeInfo>,
    /// PCI devices whose NUMA node is known, by address.
    pub pci: Vec<PciNode>,
}

/// Where one host CPU sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTopology {
    /// The CPU's number.
    pub cpu: u32,
    /// Its core ID (`topology/core_id`).
    pub core: u32,
    /// Its socket (`topology/physical_package_id`).
    pub socket: u32,
    /// Its NUMA node.
    pub node: u32,
}

/// One NUMA node's memory and distances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's number.
    pub node: u32,
    /// Its memory in bytes.
    pub size: u64,
    /// Its free memory in bytes.
    pub free: u64,
    /// Its distance to each node, in node order (10 = local).
    pub distances: Vec<u32>,
}

/// A PCI device's NUMA node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciNode {
    /// PCI segment (domain).
    pub seg: u16,
    /// Bus.
    pub bus: u8,
    /// Device (slot).
    pub dev: u8,
    /// Function.
    pub func: u8,
    /// The node.
    pub node: u32,
}

/// rxend's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// Done, nothing to report.
    Ok,
    /// A domain was created, or looked up.
    Domain {
        /// Its ID.
        domid: u32,
        /// Its name.
        name: String,
        /// Warnings to show the user (unsupported keys ignored, deprecated keys, ...).
        warnings: Vec<String>,
    },
    /// The answer to `List`.
    Domains {
        /// The domains, Domain-0 first.
        domains: Vec<DomainInfo>,
    },
    /// The answer to `Info`.
    Host(HostInfo),
    /// The answer to `Dmesg`.
    Log {
        /// The log text.
        text: String,
    },
    /// The answer to `Known`, sorted by name.
    Known {
        /// The domains.
        domains: Vec<KnownDomain>,
    },
    /// A save or migration finished, with its figures.
    Transferred {
        /// The domain's name.
        name: String,
        /// The figures.
        stats: crate::vmctl::TransferStats,
    },
    /// A backup was written.
    BackedUp {
        /// Its directory.
        dir: String,
        /// How long the domain was paused, in milliseconds.
        paused_ms: u64,
        /// Each disk copied and how.
        disks: Vec<BackedUpDisk>,
        /// Bytes of the domain's state.
        state_bytes: u64,
    },
    /// What [`Request::HostShutdown`] or [`Request::HostStart`] did to each domain.
    HostDomains {
        /// One entry per domain, in the order they were handled.
        domains: Vec<HostDomainOutcome>,
    },
    /// The answer to [`Request::DeviceList`].
    Devices {
        /// The domain's ID.
        domid: u32,
        /// Its disks.
        disks: Vec<crate::vmctl::DiskStats>,
        /// Its NICs.
        nics: Vec<crate::vmctl::NicStats>,
    },
    /// The answer to `SchedCredit`.
    Sched {
        /// One entry per domain.
        entries: Vec<SchedEntry>,
    },
    /// The answer to `SchedPool`.
    SchedPool(SchedPoolParams),
    /// The answer to `CpupoolList` and `CpupoolNumaSplit` (the pools afterwards).
    Cpupools {
        /// Every pool, by ID.
        pools: Vec<CpupoolInfo>,
    },
    /// The answer to `CpupoolCreate`.
    CpupoolCreated(CpupoolCreated),
    /// The answer to `VcpuList`.
    Vcpus {
        /// One entry per vCPU.
        vcpus: Vec<VcpuInfo>,
    },
    /// The answer to `Counters`.
    Counters(Counters),
    /// The answer to `TransferProgress`.
    Progress {
        /// How far it got; `None` when no transfer runs.
        progress: Option<crate::vmctl::TransferProgress>,
    },
    /// The answer to `Ended`.
    Ended {
        /// Why it ended; `None` when rxend does not remember the domain.
        reason: Option<crate::vmspec::ExitReason>,
    },
    /// The answer to `PoolHosts`, by name.
    PoolHosts {
        /// The pool's name.
        pool: String,
        /// Its hosts.
        hosts: Vec<PoolHost>,
    },
    /// The answer to `PoolDomains`, by host then name.
    PoolDomains {
        /// The pool's name.
        pool: String,
        /// Its domains.
        domains: Vec<PoolDomain>,
    },
    /// The answer to `PoolCreate` and `PoolRestore`: where the domain now runs.
    Placed {
        /// The host placement chose.
        host: String,
        /// The domain's ID there.
        domid: u32,
        /// Its name.
        name: String,
        /// Warnings to show the user.
        warnings: Vec<String>,
    },
    /// The answer to `PoolEvacuate`: the domain runs on `host` now.
    PoolMoved {
        /// The domain.
        name: String,
        /// The host it moved to.
        host: String,
    },
    /// The request failed; `message` is one line for the user.
    Error {
        /// What went wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_op() {
        let json = serde_json::to_string(&Request::Pause {
            domain: "web".into(),
        })
        .expect("json");
        assert_eq!(json, r#"{"op":"pause","domain":"web"}"#);
        let back: Request = serde_json::from_str(&json).expect("parse");
        assert_eq!(
            back,
            Request::Pause {
                domain: "web".into()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
        let boot: Request =
            serde_json::from_str(r#"{"op":"boot","domain":"goneril"}"#).expect("boot");
        assert_eq!(
            boot,
            Request::Boot {
                domain: "goneril".into()
            }
        );
    }
}

/// What happened to one domain when the host went down or came up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDomainOutcome {
    /// The domain's name.
    pub name: String,
    /// What was done.
    pub action: HostDomainAction,
    /// The file involved (save file or config), if any.
    pub file: Option<String>,
    /// Why it went as it did, when not as planned.
    pub detail: Option<String>,
}

/// What was done to a domain by `host-shutdown` or `host-start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostDomainAction {
    /// Saved to the save directory (and gone from the host).
    Saved,
    /// Its save failed; it was shut down cleanly instead.
    ShutDown,
    /// Its save failed and it did not shut down in time; it was destroyed.
    Destroyed,
    /// Restored from its save file (the file is removed).
    Restored,
    /// Created from its config in the auto-start directory.
    Created,
    /// Left alone: it runs already.
    AlreadyRunning,
    /// Its restore or creation failed (a save file stays where it was).
    Failed,
}

impl HostDomainAction {
    /// Whether the domain ended up as planned (saved, restored, created or running).
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Self::Saved | Self::Restored | Self::Created | Self::AlreadyRunning
        )
    }
}

/// One disk in a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackedUpDisk {
    /// Its vdev.
    pub vdev: String,
    /// Bytes copied (the image's size).
    pub bytes: u64,
    /// `reflink` (an instant copy-on-write clone), `copy` (read while the domain was paused)
    /// or `increment` (only the blocks written since the chain's backup before).
    pub method: String,
}
