//! The typed domain model: what a domain is, whatever file it came from.

use crate::cpus::CpuAffinity;
use crate::disk::DiskSpec;
use crate::vif::VifSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The kind of guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    /// Paravirtualised (the default on x86).
    Pv,
    /// PVH.
    Pvh,
    /// Fully virtualised with firmware and emulated devices.
    Hvm,
}

impl DomainType {
    /// The name as xl.cfg spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Pv => "pv",
            DomainType::Pvh => "pvh",
            DomainType::Hvm => "hvm",
        }
    }
}

impl fmt::Display for DomainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do when the guest powers off, reboots, crashes, trips its watchdog or soft-resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Destroy the domain.
    Destroy,
    /// Destroy it and start it again with the same config.
    Restart,
    /// Keep the old domain under a new name and start a new one.
    RenameRestart,
    /// Keep the domain as it is, for inspection.
    Preserve,
    /// Write a core dump, then destroy.
    CoredumpDestroy,
    /// Write a core dump, then restart.
    CoredumpRestart,
    /// Reset the domain in place, keeping its memory.
    SoftReset,
}

impl Action {
    /// Every action, in xl's order.
    pub const ALL: [Action; 7] = [
        Action::Destroy,
        Action::Restart,
        Action::RenameRestart,
        Action::Preserve,
        Action::CoredumpDestroy,
        Action::CoredumpRestart,
        Action::SoftReset,
    ];

    /// The name as xl.cfg spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Destroy => "destroy",
            Action::Restart => "restart",
            Action::RenameRestart => "rename-restart",
            Action::Preserve => "preserve",
            Action::CoredumpDestroy => "coredump-destroy",
            Action::CoredumpRestart => "coredump-restart",
            Action::SoftReset => "soft-reset",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of [`Action::from_str`]: the text that is no action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action \"{0}\"; expected one of destroy, restart, rename-restart, preserve, coredump-destroy, coredump-restart, soft-reset")]
pub struct UnknownAction(pub String);

impl FromStr for Action {
    type Err = UnknownAction;
    /// Exact xl.cfg spellings only (xl uses strcmp).
    fn from_str(s: &str) -> Result<Self, UnknownAction> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAction(s.to_string()))
    }
}

/// Xen's default memory (MiB) when neither `memory` nor `maxmem` is given (libxl_create.c).
pub const DEFAULT_MEMORY_MIB: u64 = 32;
/// Xen's default `cpu_weight` (CSCHED_DEFAULT_WEIGHT).
pub const DEFAULT_CPU_WEIGHT: u32 = 256;

/// A domain's configuration, resolved from an xl.cfg file and its command-line overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainConfig {
    /// `name`: the domain's unique name.
    pub name: String,
    /// `uuid` (lower-case), or `None` to have one generated.
    pub uuid: Option<String>,
    /// `type` (or the deprecated `builder`/`pvh`); default pv.
    pub domain_type: DomainType,
    /// `memory`, MiB (default `maxmem`, else 32).
    pub memory_mib: u64,
    /// `maxmem`, MiB (default `memory`).
    pub maxmem_mib: u64,
    /// `vcpus` (default 1).
    pub vcpus: u32,
    /// `maxvcpus` (default `vcpus`).
    pub maxvcpus: u32,
    /// `cpus`: hard affinity; `None` = not pinned.
    pub cpus: Option<CpuAffinity>,
    /// `cpu_weight` (default 256, 1..=65535).
    pub cpu_weight: u32,
    /// `pool`: the CPU pool the domain runs in; `None` = Pool-0.
    #[serde(default)]
    pub pool: Option<String>,
    /// `cap`: percent of one host CPU, 0 = no cap.
    pub cap: u32,
    /// `kernel` (kept as written; `builtin:testguest` is rxen's test guest).
    pub kernel: Option<String>,
    /// `ramdisk`.
    pub ramdisk: Option<String>,
    /// The kernel command line, from `cmdline`, or from `root` and `extra`.
    pub cmdline: Option<String>,
    /// `bootloader`.
    pub bootloader: Option<String>,
    /// `disk`.
    pub disks: Vec<DiskSpec>,
    /// `vif`.
    pub vifs: Vec<VifSpec>,
    /// `on_poweroff` (default destroy).
    pub on_poweroff: Action,
    /// `on_reboot` (default restart).
    pub on_reboot: Action,
    /// `on_watchdog` (default destroy).
    pub on_watchdog: Action,
    /// `on_crash` (default destroy).
    pub on_crash: Action,
    /// `on_soft_reset` (default soft-reset).
    pub on_soft_reset: Action,
    /// `xen_shell` (or `xen-shell`): the users who may manage this domain from rxen-shell.
    pub xen_shell: Vec<String>,
    /// `pool_host` (rxen's own): the host of the pool the domain must be placed on by
    /// `rxl create --pool` (and evacuation); `None` = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_host: Option<String>,
    /// `pool_anti_affinity` (rxen's own): the domain's anti-affinity group; placement puts
    /// domains of one group on hosts that hold none of it while such a host has room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_anti_affinity: Option<String>,
    /// `bootloader_args`.
    #[serde(default)]
    pub bootloader_args: Vec<String>,
    /// `vnc` (default off in rxen, which has no graphical console).
    #[serde(default)]
    pub vnc: bool,
    /// `sdl`.
    #[serde(default)]
    pub sdl: bool,
    /// `vfb`: framebuffer specs as written.
    #[serde(default)]
    pub vfb: Vec<String>,
    /// `ha` (rxen's own key, default 0): in a pool, restart the domain on another host when
    /// its host dies (docs/pools.md).
    #[serde(default)]
    pub ha: bool,
    /// `serial`: serial port specs as written (qemu `-serial` syntax).
    #[serde(default)]
    pub serial: Vec<String>,
    /// Every key rxen does not model (unknown, unsupported or deprecated), by name, as written.
    #[serde(default)]
    pub other_keys: BTreeMap<String, serde_json::Value>,
}

/// Whether `bootloader` names pygrub (as xl configs spell it), which rxen carries out itself.
pub fn is_pygrub(bootloader: &str) -> bool {
    matches!(
        bootloader,
        "pygrub" | "/usr/bin/pygrub" | "/usr/lib/xen/bin/pygrub" | "/usr/local/bin/pygrub"
    )
}

/// The menu entry `bootloader_args` asks pygrub for (`--entry=N`; `-q` is accepted and
/// changes nothing): `Some(None)` for none, `None` when they ask for something rxen's pygrub
/// does not do.
pub fn pygrub_entry(args: &[String]) -> Option<Option<u32>> {
    let mut entry = None;
    for a in args {
        // pygrub's quiet switch changes nothing here.
        if a == "-q" || a == "--quiet" {
            continue;
        }
        entry = Some(a.strip_prefix("--entry=")?.trim().parse().ok()?);
    }
    Some(entry)
}
