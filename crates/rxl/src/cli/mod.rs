//! rxl's commands and their options, as clap reads them; [`front`] reads the command
//! line the way xl does before clap sees it.

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};

use crate::client::DEFAULT_SOCKET;

pub mod front;

/// xl-compatible management of rxen domains.
#[derive(Parser, Debug)]
// No automatic `-V`: in xl, `-V` on `create` and `restore` means "connect a VNC viewer";
// rxl's version is `rxl --version` (read by [`front`]). `help` is xl's, also in [`front`].
#[command(
    name = "rxl",
    about,
    disable_version_flag = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// rxend's socket.
    #[arg(long, global = true, env = "RXEN_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The command.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// xl's `-V, --vncviewer` and `-A, --vncviewer-autopass` on `create` and `restore`: parsed so
/// that they can be refused with a clear message (rxen domains have no VNC display).
#[derive(clap::Args, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Vnc {
    /// xl: connect a VNC viewer. Refused: rxen domains have no VNC display (-c attaches the console).
    #[arg(short = 'V', long = "vncviewer")]
    pub viewer: bool,
    /// xl: pass the VNC password to the viewer. Refused, as -V.
    #[arg(short = 'A', long = "vncviewer-autopass")]
    pub autopass: bool,
}

impl Vnc {
    /// The refusal when either option was given.
    pub fn refusal(&self) -> Option<&'static str> {
        (self.viewer || self.autopass).then_some(
            "-V/--vncviewer and -A/--vncviewer-autopass are not supported: rxen domains have no VNC display (use -c to attach the serial console)",
        )
    }
}

/// xl's `restore [ConfigFile] CheckpointFile`: the config file (if any) and the save file, from
/// one or two names; `None` for any other number.
pub fn restore_files(files: &[String]) -> Option<(Option<&str>, &str)> {
    match files {
        [file] => Some((None, file)),
        [config, file] => Some((Some(config), file)),
        _ => None,
    }
}

/// `config-update`'s `[ConfigFile] [vars]`, read as xl reads them: the first argument without
/// `=` is the config file (unless `-f` named one), those with `=` are settings. `Err` with a
/// second file name (xl then prints the help and exits 2).
pub fn config_update_args(
    defconfig: Option<&str>,
    args: &[String],
) -> Result<(Option<String>, Vec<String>), String> {
    let mut file = defconfig.map(str::to_string);
    let mut vars = Vec::new();
    for a in args {
        if a.contains('=') {
            vars.push(a.clone());
        } else if file.is_none() {
            file = Some(a.clone());
        } else {
            return Err(a.clone());
        }
    }
    Ok((file, vars))
}

/// rxl's commands, in the order `rxl help` lists them.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a domain from a config file.
    Create {
        /// Attach to the console after creating the domain.
        #[arg(short = 'c')]
        console: bool,
        /// Leave the domain paused after creating it.
        #[arg(short = 'p')]
        paused: bool,
        /// Dry run: print the resolved configuration as JSON and create nothing.
        #[arg(short = 'n', long = "dryrun")]
        dry_run: bool,
        /// Quiet: print no "Parsing config" line.
        #[arg(short = 'q')]
        quiet: bool,
        /// Start the domain even if its config uses keys rxen does not support (they are ignored).
        #[arg(long)]
        ignore_unsupported: bool,
        /// Create it on the host of this host's pool that placement chooses (rxen; see docs/pools.md).
        #[arg(long, conflicts_with = "console")]
        pool: bool,
        #[command(flatten)]
        vnc: Vnc,
        /// The config file (looked up in /etc/xen/ if it has no slash and is not here).
        file: String,
        /// KEY=VALUE settings that override the file, as extra config lines.
        overrides: Vec<String>,
    },
    /// Create a domain again from the config file rxend remembers for it (rxen).
    Boot {
        /// Attach to the console after booting the domain.
        #[arg(short = 'c')]
        console: bool,
        /// The domain's name.
        domain: String,
    },
    /// Update a running domain's saved configuration, used when rebuilding the domain after reboot.
    #[command(name = "config-update")]
    ConfigUpdate {
        /// The config file (instead of the ConfigFile argument).
        #[arg(short = 'f', long = "defconfig", value_name = "FILE")]
        defconfig: Option<String>,
        /// Also print the new configuration as JSON.
        #[arg(short = 'd')]
        debug: bool,
        /// Accept the config even if it uses keys rxen does not support (they are ignored).
        #[arg(long)]
        ignore_unsupported: bool,
        /// The domain (name or ID).
        domain: String,
        /// `[ConfigFile] [KEY=VALUE ...]`, as xl: the config file, then settings that override it.
        #[arg(value_name = "[ConfigFile] [vars]")]
        args: Vec<String>,
    },
    /// List domains in xl's format.
    List {
        /// Print the full configuration as JSON.
        #[arg(short = 'l', long = "long")]
        long: bool,
        /// Add UUID, reason code and security label columns.
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
        /// Every domain of this host's pool, with a Host column (rxen; see docs/pools.md).
        #[arg(long = "pool", conflicts_with_all = ["long", "verbose", "domains"])]
        pool: bool,
        /// Domains to show (all when none).
        domains: Vec<String>,
    },
    /// Attach to a domain's console (Ctrl-] detaches).
    Console {
        /// Console type: serial (the domain's 16550 UART); pv and vuart are refused (none).
        #[arg(short = 't', value_name = "TYPE")]
        kind: Option<String>,
        /// Console number (with -t): 0, rxen domains have one serial console.
        #[arg(short = 'n', value_name = "NUMBER")]
        number: Option<String>,
        /// Escape character that detaches: ^X for Ctrl-X, or one character (default ^]).
        #[arg(short = 'e', value_name = "ESCAPE")]
        escape: Option<String>,
        /// The domain (name or ID).
        domain: String,
    },
    /// Ask a domain to shut down.
    Shutdown {
        /// Wait for the domain to finish shutting down.
        #[arg(short = 'w', long = "wait", action = ArgAction::Count)]
        wait: u8,
        /// Shut down every domain.
        #[arg(short = 'a', long = "all")]
        all: bool,
        /// xl: fall back to the ACPI button without PV drivers. Accepted: rxen always asks
        /// through the guest's power button or reset port (the test guest's, or ACPI).
        #[arg(short = 'F')]
        fallback: bool,
        /// The domain (name or ID).
        domain: Option<String>,
    },
    /// Ask a domain to reboot.
    Reboot {
        /// Wait for the domain to finish rebooting.
        #[arg(short = 'w', long = "wait", action = ArgAction::Count)]
        wait: u8,
        /// Reboot every domain.
        #[arg(short = 'a', long = "all")]
        all: bool,
        /// xl: fall back to the ACPI button without PV drivers. Accepted: rxen always asks
        /// through the guest's power button or reset port (the test guest's, or ACPI).
        #[arg(short = 'F')]
        fallback: bool,
        /// The domain (name or ID).
        domain: Option<String>,
    },
    /// Destroy a domain at once.
    Destroy {
        /// xl: permit destroying domain 0. rxen still refuses: Domain-0 is the host.
        #[arg(short = 'f')]
        force: bool,
        /// The domain (name or ID).
        domain: String,
    },
    /// Pause a domain.
    Pause {
        /// The domain (name or ID).
        domain: String,
    },
    /// Unpause a domain.
    Unpause {
        /// The domain (name or ID).
        domain: String,
    },
    /// Rename a domain.
    Rename {
        /// The domain (name or ID).
        domain: String,
        /// The new name.
        new_name: String,
    },
    /// Send a trigger to a domain.
    Trigger {
        /// The domain (name or ID).
        domain: String,
        /// power (the power button), reset (at once), nmi (an NMI into one vCPU); init, sleep
        /// and s3resume are refused.
        #[arg(value_name = "nmi|reset|init|power|sleep|s3resume")]
        trigger: String,
        /// The vCPU an nmi goes to (default 0; one the domain does not have is refused); power
        /// and reset act on the whole domain.
        vcpu: Option<String>,
    },
    /// Send a sysrq to a domain.
    Sysrq {
        /// The domain (name or ID).
        domain: String,
        /// The SysRq key: one character (a BREAK and then it go to the serial console).
        #[arg(value_name = "LETTER")]
        letter: String,
    },
    /// Insert a cdrom into a guest's cd drive.
    CdInsert {
        /// The domain (name or ID).
        domain: String,
        /// The cdrom drive (its vdev, as in the config: hdc, xvdc).
        #[arg(value_name = "VIRTUALDEVICE")]
        vdev: String,
        /// The medium: an image file or a block device.
        path: std::path::PathBuf,
    },
    /// Eject a cdrom from a guest's cd drive.
    CdEject {
        /// The domain (name or ID).
        domain: String,
        /// The cdrom drive (its vdev, as in the config: hdc, xvdc).
        #[arg(value_name = "VIRTUALDEVICE")]
        vdev: String,
    },
    /// Core dump a domain.
    DumpCore {
        /// The domain (name or ID).
        domain: String,
        /// The ELF core file to create (an existing file is not replaced).
        filename: std::path::PathBuf,
    },
    /// Print a domain's ID.
    Domid {
        /// The domain's name.
        name: String,
    },
    /// Print a domain's name.
    Domname {
        /// The domain's ID.
        id: String,
    },
    /// Back a running domain up: its state and every disk at one instant, with a manifest (rxen).
    Backup {
        /// Add to the chain in DIR: the first backup there is full (0000-full), each next one
        /// (0001-incr, ...) holds only the blocks the guest wrote since the one before.
        #[arg(short = 'i', long)]
        incremental: bool,
        /// The domain (name or ID).
        domain: String,
        /// The directory that holds the domain's backups; each goes in a new directory there.
        dir: std::path::PathBuf,
    },
    /// Bring a domain back from a backup: disks rebuilt (a chain's applied up to it), state restored (rxen).
    BackupRestore {
        /// The backup's directory (as `rxl backup` printed it), or a chain's directory.
        dir: std::path::PathBuf,
        /// The backup of the chain in DIR to bring back (0001-incr, ...); the latest if absent.
        name: Option<String>,
    },
    /// List the hosts of this host's pool: state, memory, CPUs, domains (rxen; see docs/pools.md).
    #[command(name = "host-list")]
    HostList,
    /// Mark a host of the pool disabled (rxen; see docs/pools.md).
    #[command(name = "host-disable")]
    HostDisable {
        /// The host's name in the pool.
        host: String,
    },
    /// Mark a disabled host of the pool enabled again (rxen; see docs/pools.md).
    #[command(name = "host-enable")]
    HostEnable {
        /// The host's name in the pool.
        host: String,
    },
    /// Live-migrate every domain off a host of the pool to the others, then leave it disabled (rxen; see docs/pools.md).
    #[command(name = "host-evacuate")]
    HostEvacuate {
        /// Domains migrated at once (1 to 4: a relocation server serves 4 connections per peer).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=4))]
        parallel: u32,
        /// The host's name in the pool.
        host: String,
    },
    /// Save every running domain for a host shutdown; shut down those that cannot be saved (rxen: Xen's xendomains stop).
    HostShutdown,
    /// Restore the domains saved by host-shutdown and create the auto-start ones (rxen: Xen's xendomains start).
    HostStart,
    /// Print how long domains have been up.
    Uptime {
        /// Short form, like uptime(1).
        #[arg(short = 's')]
        short: bool,
        /// Domains to show (all when none).
        domains: Vec<String>,
    },
    /// Print information about the host.
    Info {
        /// Also print the host's CPU topology, PCI devices' nodes and NUMA nodes.
        #[arg(short = 'n', long = "numa")]
        numa: bool,
        /// Also print xenstore's features (rxen has no xenstore: none).
        #[arg(short = 'x', long = "xenstore")]
        xenstore: bool,
        /// Print the values of every line that starts with FIELD.
        field: Option<String>,
    },
    /// Show or set credit-scheduler weights and caps.
    #[command(name = "sched-credit")]
    SchedCredit {
        /// The domain (name or ID); all domains when absent.
        #[arg(short = 'd', long = "domain")]
        domain: Option<String>,
        /// New weight (1-65535; 256 is the default).
        #[arg(short = 'w', long = "weight")]
        weight: Option<u32>,
        /// New cap in percent of one host CPU (0: no cap).
        #[arg(short = 'c', long = "cap")]
        cap: Option<u32>,
        /// Show the pool's scheduler parameters (tslice, ratelimit, migration delay).
        #[arg(short = 's', long = "schedparam")]
        schedparam: bool,
        /// Set the time slice, in ms (refused: it is the CFS period rxen caps over).
        #[arg(short = 't', long = "tslice_ms", value_name = "TSLICE")]
        tslice: Option<String>,
        /// Set the rate limit, in us (refused: it is Linux's CFS bandwidth slice).
        #[arg(short = 'r', long = "ratelimit_us", value_name = "RLIMIT")]
        ratelimit: Option<String>,
        /// Set the migration delay, in us (refused: it is Linux's migration cost).
        #[arg(short = 'm', long = "migration_delay_us", value_name = "DLY")]
        migration_delay: Option<String>,
        /// Only this CPU pool (rxen has one: Pool-0).
        #[arg(short = 'p', long = "cpupool", value_name = "CPUPOOL")]
        cpupool: Option<String>,
        /// Also show each domain's disk I/O priority and cgroup I/O weight (rxen's; xl has
        /// no -v): a second table after xl's.
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
    },
    /// Show or set credit2-scheduler weights and caps (the same as sched-credit's).
    #[command(name = "sched-credit2")]
    SchedCredit2 {
        /// The domain (name or ID); all domains when absent.
        #[arg(short = 'd', long = "domain")]
        domain: Option<String>,
        /// New weight (1-65535; 256 is the default).
        #[arg(short = 'w', long = "weight")]
        weight: Option<u32>,
        /// New cap in percent of one host CPU (0: no cap).
        #[arg(short = 'c', long = "cap")]
        cap: Option<u32>,
        /// Show the pool's scheduler parameters (ratelimit).
        #[arg(short = 's', long = "schedparam")]
        schedparam: bool,
        /// Set the rate limit, in us (refused: it is Linux's CFS bandwidth slice).
        #[arg(short = 'r', long = "ratelimit_us", value_name = "RLIMIT")]
        ratelimit: Option<String>,
        /// Only this CPU pool (rxen has one: Pool-0).
        #[arg(short = 'p', long = "cpupool", value_name = "CPUPOOL")]
        cpupool: Option<String>,
    },
    /// Create a new CPU pool.
    #[command(name = "cpupool-create")]
    CpupoolCreate {
        /// Use the given configuration file.
        #[arg(short = 'f', long = "defconfig", value_name = "FILE")]
        defconfig: Option<String>,
        /// Dry run: print the resulting configuration and create nothing.
        #[arg(short = 'n', long = "dryrun")]
        dry_run: bool,
        /// `[ConfigFile] [Variable=value ...]`: the pool file (`name`, `sched`, `cpus`, `nodes`), then settings that override it.
        #[arg(value_name = "[ConfigFile] [Variable=value]")]
        args: Vec<String>,
    },
    /// List CPU pools on host.
    #[command(name = "cpupool-list")]
    CpupoolList {
        /// Output list of CPUs used by a pool.
        #[arg(short = 'c', long = "cpus")]
        cpus: bool,
        /// Only this pool.
        #[arg(value_name = "CPU Pool")]
        pool: Option<String>,
    },
    /// Deactivates a CPU pool (its CPUs become free).
    #[command(name = "cpupool-destroy")]
    CpupoolDestroy {
        /// The pool (name or ID).
        #[arg(value_name = "CPU Pool")]
        pool: String,
    },
    /// Renames a CPU pool.
    #[command(name = "cpupool-rename")]
    CpupoolRename {
        /// The pool (name or ID).
        #[arg(value_name = "CPU Pool")]
        pool: String,
        /// Its new name.
        #[arg(value_name = "new name")]
        new_name: String,
    },
    /// Adds a CPU to a CPU pool (a free CPU, or one of Pool-0's).
    #[command(name = "cpupool-cpu-add")]
    CpupoolCpuAdd {
        /// The pool (name or ID).
        #[arg(value_name = "CPU Pool")]
        pool: String,
        /// A CPU number or range (`1`, `2-3`), or `node:N`.
        #[arg(value_name = "CPU nr|node:node nr")]
        cpus: String,
    },
    /// Removes a CPU from a CPU pool (it becomes free).
    #[command(name = "cpupool-cpu-remove")]
    CpupoolCpuRemove {
        /// The pool (name or ID).
        #[arg(value_name = "CPU Pool")]
        pool: String,
        /// A CPU number or range (`1`, `2-3`), or `node:N`.
        #[arg(value_name = "CPU nr|node:node nr")]
        cpus: String,
    },
    /// Moves a domain into a CPU pool.
    #[command(name = "cpupool-migrate")]
    CpupoolMigrate {
        /// The domain (name or ID).
        domain: String,
        /// The pool (name or ID).
        #[arg(value_name = "CPU Pool")]
        pool: String,
    },
    /// Splits up the machine into one CPU pool per NUMA node.
    #[command(name = "cpupool-numa-split")]
    CpupoolNumaSplit,
    /// List the vCPUs of domains.
    #[command(name = "vcpu-list")]
    VcpuList {
        /// Domains to show (all when none).
        domains: Vec<String>,
    },
    /// Set which CPUs a domain's vCPUs can use.
    #[command(name = "vcpu-pin")]
    VcpuPin {
        /// xl: undo a pinning the guest kernel made. rxen guests cannot pin themselves, so it
        /// pins as without it (but not with `all` as the vCPU, as in xl).
        #[arg(short = 'f', long = "force")]
        force: bool,
        /// xl: ignore xl.conf's global affinity masks (rxen has none).
        #[arg(short = 'i', long = "ignore-global-affinity-masks")]
        ignore_masks: bool,
        /// The domain (name or ID).
        domain: String,
        /// A vCPU number, or `all`.
        vcpu: String,
        /// Hard affinity: host CPUs as `3,5-8,^6`, `all`, or `-` for unchanged.
        hard: String,
        /// Soft affinity (preferred CPUs), the same way; kept and shown by vcpu-list.
        soft: Option<String>,
    },
    /// Set how many vCPUs a domain has online (up to maxvcpus).
    #[command(name = "vcpu-set")]
    VcpuSet {
        /// Allow more vCPUs than the host has CPUs.
        #[arg(short = 'i', long = "ignore-host")]
        ignore_host: bool,
        /// The domain (name or ID).
        domain: String,
        /// vCPUs to have online.
        count: u32,
    },
    /// List guest domains, excluding dom0, stubdoms, etc.
    #[command(name = "vm-list")]
    VmList,
    /// Set a domain's memory through its balloon.
    #[command(name = "mem-set")]
    MemSet {
        /// The domain (name or ID).
        domain: String,
        /// The new size: a number of MiB, or with a suffix b, k, m, g or t.
        size: String,
    },
    /// Set a domain's maximum memory.
    #[command(name = "mem-max")]
    MemMax {
        /// The domain (name or ID).
        domain: String,
        /// The new maximum: a number of MiB, or with a suffix b, k, m, g or t.
        size: String,
    },
    /// Show domains and their use of CPU, memory, network and disks, as xentop does.
    Top {
        /// Seconds between refreshes.
        #[arg(short = 'd', long = "delay", default_value_t = 3.0)]
        delay: f64,
        /// Batch mode: print plain lines for scripts instead of the screen.
        #[arg(short = 'b', long = "batch")]
        batch: bool,
        /// Stop after this many refreshes.
        #[arg(short = 'i', long = "iterations")]
        iterations: Option<u64>,
        /// Show full domain names.
        #[arg(short = 'f', long = "full-name")]
        full_name: bool,
        /// Show Domain-0 first.
        #[arg(short = 'z', long = "dom0-first")]
        dom0_first: bool,
        /// Show each NIC's counters under its domain.
        #[arg(short = 'n', long = "networks")]
        networks: bool,
        /// Show each virtual block device's counters under its domain.
        #[arg(short = 'x', long = "vbds")]
        vbds: bool,
        /// Show each vCPU's CPU seconds under its domain.
        #[arg(short = 'v', long = "vcpus")]
        vcpus: bool,
        /// Repeat the column header before every domain.
        #[arg(short = 'r', long = "repeat-header")]
        repeat_header: bool,
    },
    /// Save a domain to a file (it stops, unless -c or -p).
    Save {
        /// Checkpoint: leave the domain running after saving it.
        #[arg(short = 'c')]
        checkpoint: bool,
        /// Leave the domain paused after saving it.
        #[arg(short = 'p')]
        paused: bool,
        /// xl: store the domain ID in the saved configuration. Refused: rxen gives every
        /// domain an ID of its own, a restored one too.
        #[arg(short = 'D')]
        keep_domid: bool,
        /// Also print where the downtime went, phase by phase.
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
        /// The domain (name or ID).
        domain: String,
        /// The save file.
        file: PathBuf,
        /// A config file to store instead of the domain's own.
        config: Option<String>,
    },
    /// Restore a domain from a save file.
    Restore {
        /// Leave the restored domain paused.
        #[arg(short = 'p')]
        paused: bool,
        /// Restore it on the host of this host's pool that placement chooses; the save file
        /// must be where that host sees it too (rxen; see docs/pools.md).
        #[arg(long, conflicts_with = "console")]
        pool: bool,
        /// Do not wait in the background for the death of the domain (accepted for xl compatibility).
        #[arg(short = 'e')]
        no_wait: bool,
        /// Attach to the console after restoring.
        #[arg(short = 'c')]
        console: bool,
        #[command(flatten)]
        vnc: Vnc,
        /// `[ConfigFile] CheckpointFile`, as xl: the save file last, after a config file to
        /// use instead of the one in the save file.
        #[arg(required = true, value_name = "[ConfigFile] CheckpointFile")]
        files: Vec<String>,
    },
    /// Move a domain to another host, live by default.
    ///
    /// Over ssh as xl does (`ssh HOST rxl migrate-receive`), or to HOST's relocation server
    /// (rxend, TCP port 8002) with --relocation, --port or --key.
    Migrate {
        /// Use this command instead of ssh; with '', run HOST itself as the command (as xl).
        #[arg(short = 's')]
        ssh: Option<String>,
        /// Do not wait in the background for the death of the domain on the target (xl compatibility).
        #[arg(short = 'e')]
        no_wait: bool,
        /// Leave the domain paused on the target.
        #[arg(short = 'p')]
        paused: bool,
        /// Live migration (the default).
        #[arg(long, conflicts_with = "non_live")]
        live: bool,
        /// Pause the domain, copy it, resume it on the target (as xm migrate without --live).
        #[arg(long = "non-live")]
        non_live: bool,
        /// Use HOST's relocation server (rxend) instead of ssh.
        #[arg(long)]
        relocation: bool,
        /// The relocation server's port (implies --relocation).
        #[arg(long)]
        port: Option<u16>,
        /// The relocation key file (implies --relocation; default: rxend's configured key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Most pre-copy rounds before stop-and-copy.
        #[arg(long, default_value_t = 30)]
        max_rounds: u32,
        /// Stop-and-copy once the dirty pages can be sent within this many milliseconds.
        #[arg(long, default_value_t = 20)]
        downtime_ms: u64,
        /// Also print where the downtime went, phase by phase.
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
        /// Copy the disks too: the target does not share the storage (it creates them in
        /// its `[relocation] storage-dir`).
        #[arg(long = "copy-storage")]
        copy_storage: bool,
        /// The domain (name or ID).
        domain: String,
        /// The target host.
        host: String,
    },
    /// Receive a migrating domain on stdin/stdout (run by `rxl migrate` through ssh).
    MigrateReceive {
        /// Leave the received domain paused.
        #[arg(short = 'p')]
        paused: bool,
        /// Accepted for xl compatibility.
        #[arg(short = 'e')]
        no_wait: bool,
        /// Accepted for xl compatibility (debug).
        #[arg(short = 'd')]
        debug: bool,
    },
    /// Attach a disk to a running domain.
    #[command(name = "block-attach")]
    BlockAttach {
        /// The domain (name or ID).
        domain: String,
        /// The disk spec (its parts may be given as separate arguments, as with xl).
        #[arg(required = true)]
        spec: Vec<String>,
    },
    /// Detach a disk from a running domain.
    #[command(name = "block-detach")]
    BlockDetach {
        /// Accepted for xl compatibility (a device the guest holds is removed after 5 s anyway).
        #[arg(short = 'f', long = "force")]
        force: bool,
        /// The domain (name or ID).
        domain: String,
        /// The virtual device (xvdb) or its device ID.
        vdev: String,
    },
    /// List a domain's disks.
    #[command(name = "block-list")]
    BlockList {
        /// The domains (name or ID).
        #[arg(required = true)]
        domains: Vec<String>,
    },
    /// Attach a network interface to a running domain.
    #[command(name = "network-attach")]
    NetworkAttach {
        /// The domain (name or ID).
        domain: String,
        /// vif settings as key=value (mac=, bridge=, ip=, script=, vifname=, rate=, ...).
        settings: Vec<String>,
    },
    /// Detach a network interface from a running domain.
    #[command(name = "network-detach")]
    NetworkDetach {
        /// The domain (name or ID).
        domain: String,
        /// The device ID or MAC address.
        device: String,
    },
    /// List a domain's network interfaces.
    #[command(name = "network-list")]
    NetworkList {
        /// The domains (name or ID).
        #[arg(required = true)]
        domains: Vec<String>,
    },
    /// Insert a new pass-through PCI device (refused: rxen has no passthrough).
    #[command(name = "pci-attach")]
    PciAttach {
        /// The domain (name or ID).
        domain: String,
        /// The PCI device (BDF and options).
        #[arg(value_name = "PCI_SPEC_STRING")]
        spec: String,
    },
    /// Remove a domain's pass-through PCI device (refused: rxen has no passthrough).
    #[command(name = "pci-detach")]
    PciDetach {
        /// The domain (name or ID).
        domain: String,
        /// The PCI device (BDF and options).
        #[arg(value_name = "PCI_SPEC_STRING")]
        spec: String,
    },
    /// List pass-through PCI devices for a domain (refused: rxen has no passthrough).
    #[command(name = "pci-list")]
    PciList {
        /// The domain (name or ID).
        domain: String,
    },
    /// Make a device assignable for PCI passthrough (refused: rxen has no passthrough).
    #[command(name = "pci-assignable-add")]
    PciAssignableAdd {
        /// Name the assignable device.
        #[arg(short = 'n', long = "name", value_name = "NAME")]
        name: Option<String>,
        /// The device's BDF.
        #[arg(value_name = "BDF")]
        bdf: String,
    },
    /// Remove a device from being assignable (refused: rxen has no passthrough).
    #[command(name = "pci-assignable-remove")]
    PciAssignableRemove {
        /// Attempt to re-assign the device to the original driver.
        #[arg(short = 'r')]
        rebind: bool,
        /// The device's BDF or name.
        #[arg(value_name = "BDF|NAME")]
        device: String,
    },
    /// List all the assignable PCI devices (refused: rxen has no passthrough).
    #[command(name = "pci-assignable-list")]
    PciAssignableList {
        /// Display assignable device names where supplied.
        #[arg(short = 'n', long = "show-names")]
        show_names: bool,
    },
    /// Print rxend's log.
    Dmesg {
        /// Clear the log after printing it.
        #[arg(short = 'c', long = "clear")]
        clear: bool,
    },
}
