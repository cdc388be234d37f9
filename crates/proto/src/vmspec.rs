//! What rxend asks one rxen-vmm process to run (`rxen-vmm --spec FILE`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The kernel a domain boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelSource {
    /// A kernel embedded in rxen itself; `"testguest"` is the paravirtual test guest.
    Builtin(String),
    /// A kernel image on the host: an ELF (test guest or Linux vmlinux) or a bzImage.
    Path(PathBuf),
    /// The kernel, initrd and command line the first disk's GRUB menu boots (`bootloader =
    /// "pygrub"`), read by the VMM inside its jail; `entry` overrides the menu's default.
    Bootloader {
        /// The menu entry to boot (`bootloader_args = ["--entry=N"]`).
        entry: Option<u32>,
    },
}

/// Everything a VMM needs to run one domain. Written by rxend as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Domain name, for logs and thread names.
    pub name: String,
    /// Domain ID assigned by rxend.
    pub domid: u32,
    /// Domain UUID, as text.
    pub uuid: String,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs started at boot.
    pub vcpus: u32,
    /// Kernel to load.
    pub kernel: KernelSource,
    /// Initial ramdisk for Linux kernels.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (Linux only; the test guest ignores it).
    pub cmdline: String,
    /// Directory owned by this VMM: control and console sockets, console log, exit record.
    pub run_dir: PathBuf,
    /// Create the domain with its vCPUs paused (`rxl create -p`).
    pub start_paused: bool,
    /// Restore the domain from this save file instead of booting the kernel
    /// (named in messages; read from [`VmSpec::restore_fd`] when that is set).
    #[serde(default)]
    pub restore_from: Option<PathBuf>,
    /// The save file of [`VmSpec::restore_from`], opened by rxend and
    /// inherited on this file descriptor.
    #[serde(default)]
    pub restore_fd: Option<i32>,
    /// Receive the domain from the migration stream on this inherited file descriptor.
    #[serde(default)]
    pub incoming_fd: Option<i32>,
    /// Confine the VMM (capabilities, no_new_privs, seccomp filters); off only with rxend's
    /// `--no-sandbox`, for debugging, and for monitors run inside a test harness's process.
    #[serde(default = "confined")]
    pub sandbox: bool,
    /// With the sandbox on, the VMM also enters namespaces of its own, pivots into an empty
    /// root and runs as this uid (and a gid of the same number) once its files are open:
    /// one of rxend's `[sandbox]` range, never shared by two running domains.
    #[serde(default)]
    pub sandbox_uid: Option<u32>,
    /// Virtual disks, in slot order (disks take virtio-mmio slots from 0).
    #[serde(default)]
    pub disks: Vec<DiskDevice>,
    /// Network interfaces, in slot order after the disks.
    #[serde(default)]
    pub nics: Vec<NicDevice>,
    /// Give the guest a virtio-balloon device in the last slot (15), for `rxl mem-set`.
    #[serde(default)]
    pub balloon: bool,
    /// Memory the guest starts with when below `memory_mib` (`memory` under
    /// a larger `maxmem`): the balloon starts inflated by the difference.
    #[serde(default)]
    pub balloon_target_mib: Option<u64>,
    /// vCPUs to create (`maxvcpus`; 0 = `vcpus`): the test guest starts with `vcpus` of them
    /// online and the others offline (ports 0x516/0x517), for `rxl vcpu-set`.
    #[serde(default)]
    pub max_vcpus: u32,
}

/// One virtual disk as the VMM opens it (rxend has resolved the path and checked access).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDevice {
    /// Xen device ID (from the vdev, e.g. 51712 for xvda).
    pub devid: u32,
    /// The virtual device name; also the virtio-blk serial.
    pub vdev: String,
    /// Raw image file, host block device, or qcow2 image (see `format`).
    pub path: PathBuf,
    /// What the image holds (raw when absent, as from older rxend versions).
    #[serde(default, skip_serializing_if = "ImageFormat::is_raw")]
    pub format: ImageFormat,
    /// The guest sees a read-only disk.
    pub read_only: bool,
    /// A cdrom (read-only).
    #[serde(default)]
    pub cdrom: bool,
    /// `w!`: writable, and other domains may use it too (no exclusive lock).
    #[serde(default)]
    pub shared_writable: bool,
    /// Whether the image takes discards, when rxend has looked (a hot-plugged
    /// host block device: the VMM may not read `/sys` once it runs); `None`:
    /// the VMM finds out itself at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard: Option<bool>,
    /// Bytes per second the guest may move through the disk (`rxen-bps=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    /// Requests per second (`rxen-iops=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_per_sec: Option<u64>,
}

/// The format of a disk's image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// The file's bytes are the disk's (an image file or a block device).
    #[default]
    Raw,
    /// A qcow2 image (v2 or v3), possibly with a chain of backing files.
    Qcow2,
}

impl ImageFormat {
    /// Whether this is raw (the default, left out of the JSON).
    pub fn is_raw(&self) -> bool {
        *self == ImageFormat::Raw
    }
}

/// A `rate=` limit on the guest's transmit side: `bytes` per `interval_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicRate {
    /// Bytes allowed per interval.
    pub bytes: u64,
    /// Replenish interval in microseconds.
    pub interval_us: u64,
}

/// One network interface as the VMM opens it (rxend has created the TAP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicDevice {
    /// Xen device ID (0, 1, ...).
    pub devid: u32,
    /// The guest's MAC, `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
    /// The host TAP device's name.
    pub tap: String,
    /// Transmit rate limit.
    #[serde(default)]
    pub rate: Option<NicRate>,
    /// `ip=`: allowed source IPv4 addresses; empty turns anti-spoofing off.
    #[serde(default)]
    pub allowed_ips: Vec<std::net::Ipv4Addr>,
}

/// File names inside [`VmSpec::run_dir`].
fn confined() -> bool {
    true
}

/// The start of the line a VMM's SIGSYS reporter writes to its log when a seccomp filter stopped
/// a call, followed by the call's number.
pub const SECCOMP_KILL_MESSAGE: &str = "rxen-vmm: seccomp: forbidden system call ";

/// The number of the forbidden call in a VMM log line that reports one.
pub fn seccomp_killed_call(line: &str) -> Option<i64> {
    let rest = line.trim_end().strip_prefix(SECCOMP_KILL_MESSAGE)?;
    let end = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(rest.len(), |(i, _)| i);
    rest.get(..end)?.parse().ok()
}

pub mod files {
    /// The launch spec rxend writes.
    pub const SPEC: &str = "spec.json";
    /// Control socket (JSON lines, see [`crate::vmctl`]).
    pub const CONTROL_SOCKET: &str = "control.sock";
    /// Console socket: raw bytes both ways; on connect the recent output is replayed.
    pub const CONSOLE_SOCKET: &str = "console.sock";
    /// Everything the guest printed on its serial console. The VMM appends to
    /// one descriptor; rxend rotates it (copy and truncate) into `console.log.1`
    /// .. `console.log.N` once it is over [`CONSOLE_LOG_MAX_BYTES`].
    pub const CONSOLE_LOG: &str = "console.log";
    /// Size at which rxend rotates a domain's console log, so that a guest
    /// flooding its console cannot fill the host's disk.
    pub const CONSOLE_LOG_MAX_BYTES: u64 = 4 << 20;
    /// Older console logs kept beside it.
    pub const CONSOLE_LOG_KEEP: u32 = 2;
    /// The VMM's own diagnostics (its stderr).
    pub const VMM_LOG: &str = "vmm.log";
    /// Written by the VMM just before it exits because of the guest or a request,
    /// through a descriptor it opened at start-up: empty (or cut short) until then.
    pub const EXIT_RECORD: &str = "exit.json";
    /// How far a save or migration has got (JSON of `vmctl::TransferProgress`),
    /// rewritten in place while it runs and emptied at its end (readers must
    /// take an empty or torn file for "no progress known").
    pub const TRANSFER_PROGRESS: &str = "transfer.json";
}

/// Why a VMM ended; stored in [`files::EXIT_RECORD`]. A VMM that ends without
/// writing it was killed, and rxend treats the domain as crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// The guest powered itself off.
    Poweroff,
    /// The guest asked to be rebooted: rxen reboot port, i8042 reset, or a
    /// triple fault (Xen's default for a triple fault is a reboot too).
    Reboot,
    /// The guest reported a crash: the panic port (an unhandled exception in
    /// the test guest ends there too) or an internal KVM error.
    Crash,
    /// The guest's watchdog fired.
    Watchdog,
    /// rxend destroyed the domain.
    Destroyed,
    /// The domain was saved to a file and stopped (`rxl save`).
    Saved,
    /// The domain now runs on another host.
    Migrated,
}

/// Contents of [`files::EXIT_RECORD`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Why the VMM ended.
    pub reason: ExitReason,
    /// Human-readable detail ("triple fault", "panic code 3", ...).
    pub detail: String,
    /// Bytes the guest sent over its NICs during this VMM's life, counted as it ended (rxend
    /// samples the counters only every few seconds, and not at all while it is away).
    #[serde(default)]
    pub net_tx_bytes: u64,
    /// Bytes the guest received over its NICs during this VMM's life, counted as it ended.
    #[serde(default)]
    pub net_rx_bytes: u64,
}
