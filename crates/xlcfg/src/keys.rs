//! What rxen knows about the keys it does not model: Xen features it lacks, harmless
//! settings it ignores, and old xm spellings.

/// How an unmodeled key is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A Xen feature rxen does not have; values in `benign` mean "off" and are only warned about.
    Unsupported {
        /// Why (appended to the message).
        why: &'static str,
        /// Values (as text; `[]` = the empty list) that leave the feature off.
        benign: &'static [&'static str],
    },
    /// A Xen setting that has no meaning under rxen: accepted, ignored, warned about.
    Ignored {
        /// Why.
        why: &'static str,
    },
    /// An old xm (or deprecated xl) key: accepted, ignored, warned about.
    Deprecated {
        /// What to use instead.
        instead: &'static str,
    },
}

const HVM: &str = "HVM firmware and emulated platform settings are not supported (rxen boots PV/PVH kernels directly)";
const PASSTHROUGH: &str = "device passthrough is not supported";
const DEVICES: &str = "this device class is not supported (rxen guests get a serial console and virtio block, net, console and balloon devices)";
const XEN_ONLY: &str = "a Xen-internal limit with no meaning under KVM";
const DM: &str = "there is no device model (qemu) in rxen";

/// One line of the table: the keys it covers (a trailing `*` covers every key that starts
/// with what comes before it) and how they are treated.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Key names, or prefixes ending in `*`.
    pub keys: &'static [&'static str],
    /// The treatment.
    pub class: Class,
}

const fn unsupported(
    keys: &'static [&'static str],
    why: &'static str,
    benign: &'static [&'static str],
) -> Rule {
    Rule {
        keys,
        class: Class::Unsupported { why, benign },
    }
}

const fn ignored(keys: &'static [&'static str], why: &'static str) -> Rule {
    Rule {
        keys,
        class: Class::Ignored { why },
    }
}

const fn deprecated(keys: &'static [&'static str], instead: &'static str) -> Rule {
    Rule {
        keys,
        class: Class::Deprecated { instead },
    }
}

/// Every key xl knows and rxen does not model, with its treatment: the one source for the
/// parser's messages and for the `rxl.cfg(5)` manual page.
pub const RULES: &[Rule] = &[
    unsupported(&["spice*"], "SPICE displays are not supported", &["0"]),
    unsupported(&["device_model*"], DM, &[]),
    // passthrough
    unsupported(
        &["pci", "dtdev", "ioports", "iomem", "irqs", "rdm", "usbdev"],
        PASSTHROUGH,
        &["[]"],
    ),
    unsupported(&["gfx_passthru"], PASSTHROUGH, &["0"]),
    unsupported(&["passthrough"], PASSTHROUGH, &["disabled"]),
    ignored(
        &[
            "pci_permissive",
            "pci_msitranslate",
            "pci_seize",
            "pci_power_mgmt",
            "rdm_mem_boundary",
        ],
        "only meaningful with PCI passthrough, which is not supported",
    ),
    // device classes
    unsupported(
        &[
            "usbctrl", "vtpm", "p9", "pvcalls", "vkb", "vdispl", "vsnd", "channel", "virtio",
            "vscsi",
        ],
        DEVICES,
        &["[]"],
    ),
    unsupported(&["usb"], DEVICES, &["0"]),
    unsupported(&["usbdevice", "soundhw"], DEVICES, &["[]"]),
    // HVM platform
    unsupported(
        &[
            "pae",
            "acpi",
            "apic",
            "hap",
            "nx",
            "hpet",
            "xen_platform_pci",
            "acpi_s3",
            "acpi_s4",
        ],
        HVM,
        &["1"],
    ),
    unsupported(
        &[
            "localtime",
            "viridian",
            "nestedhvm",
            "stdvga",
            "acpi_laptop_slate",
            "vpmu",
            "e820_host",
        ],
        HVM,
        &["0"],
    ),
    unsupported(&["rtc_timeoffset"], HVM, &["0"]),
    unsupported(&["tsc_mode"], HVM, &["default"]),
    unsupported(&["altp2m"], HVM, &["disabled"]),
    unsupported(
        &[
            "firmware",
            "bios",
            "firmware_override",
            "bios_path_override",
            "cpuid",
            "smbios_firmware",
            "acpi_firmware",
            "mmio_hole",
            "ms_vm_genid",
            "timer_mode",
            "vendor_device",
            "vga",
            "mca_caps",
        ],
        HVM,
        &[],
    ),
    ignored(
        &[
            "boot",
            "videoram",
            "nographic",
            "keymap",
            "vnclisten",
            "vncdisplay",
            "vncunused",
            "vncpasswd",
            "opengl",
            "display",
            "xauthority",
        ],
        "display and firmware settings have no effect: rxen has no graphical console",
    ),
    // placement, security, architecture
    unsupported(
        &["cpus_soft"],
        "soft affinity is not supported; use cpus",
        &[],
    ),
    unsupported(
        &["vnuma"],
        "virtual NUMA topologies are not supported",
        &["[]"],
    ),
    unsupported(
        &["seclabel", "init_seclabel"],
        "XSM/FLASK security labels are not supported",
        &[],
    ),
    unsupported(
        &["nomigrate"],
        "marking a domain non-migratable is not supported",
        &["0"],
    ),
    unsupported(
        &["driver_domain"],
        "driver domains are not supported",
        &["0"],
    ),
    unsupported(
        &["pvshim", "pvshim_path", "pvshim_cmdline", "pvshim_extra"],
        "the PV shim is not supported (PV guests run directly)",
        &["0"],
    ),
    unsupported(
        &[
            "device_tree",
            "vuart",
            "tee",
            "sve",
            "gic_version",
            "trap_unmapped_accesses",
            "vpci",
        ],
        "Arm platform settings are not supported",
        &[],
    ),
    unsupported(&["llc_colors"], "cache colouring is not supported", &[]),
    unsupported(&["dm_restrict"], DM, &["0"]),
    ignored(
        &[
            "max_grant_frames",
            "max_maptrack_frames",
            "max_grant_version",
            "max_event_channels",
            "shadow_memory",
            "claim_mode",
            "xend_suspend_evtchn_compat",
        ],
        XEN_ONLY,
    ),
    // xm-era keys
    deprecated(
        &["nics"],
        "the number of network interfaces is the length of `vif`",
    ),
    deprecated(
        &["on_xend_start", "on_xend_stop"],
        "there is no xend; start domains at boot with your init system",
    ),
    deprecated(
        &["vncconsole", "vncviewer"],
        "rxen has no graphical console",
    ),
    deprecated(
        &[
            "dhcp",
            "netmask",
            "gateway",
            "hostname",
            "interface",
            "nfs_server",
            "nfs_root",
            "ip",
        ],
        "put kernel IP settings in `extra` (e.g. extra = \"ip=dhcp\")",
    ),
    deprecated(&["restart"], "use on_poweroff, on_reboot and on_crash"),
    deprecated(&["cpu"], "use cpus to pin vCPUs"),
    deprecated(&["vcpu_avail"], "use vcpus and maxvcpus"),
    deprecated(&["bootargs"], "use bootloader_args"),
    deprecated(
        &[
            "blkif",
            "netif",
            "tpmif",
            "security",
            "access_control",
            "extid",
        ],
        "xend-only setting with no xl equivalent",
    ),
];

/// Whether `pattern` (a key, or a prefix ending in `*`) covers `key`.
fn covers(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => pattern == key,
    }
}

/// The class of a key rxen does not model, or `None` for a key unknown to xl too.
pub(crate) fn classify(key: &str) -> Option<Class> {
    RULES
        .iter()
        .find(|r| r.keys.iter().any(|p| covers(p, key)))
        .map(|r| r.class)
}

/// The keys rxen models.
pub const MODELED: &[&str] = &[
    "name",
    "uuid",
    "type",
    "builder",
    "pvh",
    "memory",
    "maxmem",
    "vcpus",
    "maxvcpus",
    "cpus",
    "cpu_weight",
    "cap",
    "pool",
    "kernel",
    "ramdisk",
    "cmdline",
    "root",
    "extra",
    "bootloader",
    "bootloader_args",
    "disk",
    "vif",
    "on_poweroff",
    "on_reboot",
    "on_watchdog",
    "on_crash",
    "on_soft_reset",
    "vnc",
    "sdl",
    "vfb",
    "serial",
    "xen_shell",
    "pool_host",
    "pool_anti_affinity",
    "ha",
];

/// Edit distance (insertions, deletions, substitutions, adjacent swaps), capped at `max + 1`.
fn distance(a: &str, b: &str, max: usize) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > max {
        return max + 1;
    }
    // rows of the Damerau-Levenshtein (optimal string alignment) table
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let (ai, bj) = (a.get(i - 1), b.get(j - 1));
            let cost = usize::from(ai != bj);
            let mut d = (prev.get(j).copied().unwrap_or(0) + 1)
                .min(cur.get(j - 1).copied().unwrap_or(0) + 1)
                .min(prev.get(j - 1).copied().unwrap_or(0) + cost);
            if i > 1 && j > 1 && ai == b.get(j - 2) && a.get(i - 2) == bj {
                d = d.min(prev2.get(j - 2).copied().unwrap_or(0) + 1);
            }
            if let Some(c) = cur.get_mut(j) {
                *c = d;
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev.last().copied().unwrap_or(0)
}

/// A modeled key close to `key` (a likely typo), if there is one.
pub(crate) fn suggest(key: &str) -> Option<&'static str> {
    let max = if key.len() <= 4 { 1 } else { 2 };
    MODELED
        .iter()
        .map(|k| (distance(key, k, max), *k))
        .filter(|(d, _)| *d <= max)
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_suggestions() {
        assert_eq!(suggest("memroy"), Some("memory"));
        assert_eq!(suggest("vcpu"), Some("vcpus"));
        assert_eq!(suggest("on_crsh"), Some("on_crash"));
        assert_eq!(suggest("kernal"), Some("kernel"));
        assert_eq!(suggest("frobnicate"), None);
        assert_eq!(suggest("x"), None);
    }

    #[test]
    fn each_rule_key_is_classified_by_its_own_rule_and_none_is_modeled() {
        for rule in RULES {
            for k in rule.keys {
                let key = k.trim_end_matches('*');
                assert_eq!(
                    classify(key),
                    Some(rule.class),
                    "{k} is shadowed by an earlier rule"
                );
                assert!(!MODELED.contains(&key), "{k} is modeled");
            }
        }
    }

    #[test]
    fn modeled_keys_are_not_classified() {
        for k in MODELED {
            assert_eq!(classify(k), None, "{k}");
        }
    }
}
