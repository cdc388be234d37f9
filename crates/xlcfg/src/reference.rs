//! The reference of every key rxen models, with its default and what it means: the source of
//! the `rxl.cfg(5)` manual page (with `keys::RULES` for the keys rxen does not model).

/// One modeled key's entry.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// The key, as written in the file.
    pub key: &'static str,
    /// Its value when absent (`-` when there is none).
    pub default: &'static str,
    /// What it does under rxen, and what of xl's meaning it refuses.
    pub meaning: &'static str,
}

const fn k(key: &'static str, default: &'static str, meaning: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        default,
        meaning,
    }
}

/// Every key in `keys::MODELED`, in the order of the manual page.
pub const KEYS: &[KeyDoc] = &[
    k("name", "-", "The domain's name (required). At most 64 bytes; not all digits, not `.` or `..`; no leading `-`, no `/`, no white space, control or invisible characters."),
    k("uuid", "a random UUID", "The domain's UUID."),
    k("type", "pv", "pv or pvh. hvm is refused: rxen boots kernels directly, with no firmware or emulated platform."),
    k("builder", "generic", "xm's spelling of type: generic is pv; hvm is refused."),
    k("pvh", "0", "Old spelling of type = \"pvh\"."),
    k("memory", "32", "RAM in MiB at start. Refused when the host cannot hold it (rxend's admission control)."),
    k("maxmem", "memory", "The most RAM in MiB the domain may be given back by its balloon (rxl mem-set up to it; rxl mem-max changes it); not below memory."),
    k("vcpus", "1", "vCPUs online at start."),
    k("maxvcpus", "vcpus", "vCPUs the domain may bring online (rxl vcpu-set); at most 64 for the test guest and the host's limit."),
    k("cpus", "all", "Hard affinity of the vCPUs: a CPU list (\"0-3,^2\"), or a list of lists, one per vCPU."),
    k("cpu_weight", "256", "The credit scheduler's weight (1-65535): a cgroup CPU weight beside the other domains."),
    k("cap", "0", "The most CPU the domain may use, in percent of one CPU (0: no cap)."),
    k("pool", "Pool-0", "The CPU pool (rxl cpupool-list) whose CPUs the domain's threads run on."),
    k("kernel", "-", "The kernel: rxen's test guest, or a Linux bzImage or vmlinux (PVH entry or the 64-bit boot protocol)."),
    k("ramdisk", "-", "The initial ramdisk passed to a Linux kernel."),
    k("cmdline", "-", "The whole kernel command line; root and extra are ignored when it is given."),
    k("root", "-", "Appended to the command line as root=VALUE."),
    k("extra", "-", "Appended to the command line."),
    k("bootloader", "-", "\"pygrub\" (or a path ending in pygrub): boot the kernel, initrd and arguments of the first disk's GRUB menu, read inside the VMM's sandbox. Other bootloaders are refused."),
    k("bootloader_args", "[]", "For pygrub: [\"--entry=N\"] picks menu entry N instead of the default."),
    k("disk", "[]", "Disks, in xl's disk spec language (target, vdev, access, format, devtype), plus rxen's own rxen-bps= and rxen-iops= limits. Formats raw and qcow2."),
    k("vif", "[]", "Network interfaces, in xl's vif spec language (mac, bridge, ip, vifname, rate, script), each a TAP on a bridge."),
    k("on_poweroff", "destroy", "What to do when the guest powers off: destroy, restart, preserve, rename-restart (and the coredump- forms)."),
    k("on_reboot", "restart", "What to do when the guest reboots."),
    k("on_watchdog", "destroy", "What to do when the guest's watchdog fires."),
    k("on_crash", "destroy", "What to do when the guest or its VMM crashes (a VMM killed by its seccomp filter counts as a crash)."),
    k("on_soft_reset", "soft-reset", "What to do on a soft reset."),
    k("vnc", "0", "Accepted when off; a graphical console is refused (rxen has the serial console)."),
    k("sdl", "0", "Accepted when off; refused when on."),
    k("vfb", "[]", "Accepted when empty; a framebuffer is refused."),
    k("serial", "pty", "The serial console: pty (reached with rxl console); other devices are refused."),
    k("ha", "0", "rxen's own key (xl has none): 1 restarts the domain from its configuration on another host of its pool when its host dies or is cut off from etcd (its disks must be on storage every host reaches); the cut-off host stops it first. See docs/pools.md."),
    k("xen_shell", "[]", "rxen-shell users allowed to manage the domain (xen-shell's key; xen-shell is also read)."),
    k("pool_host", "-", "rxen's own: the host of the pool (rxl host-list) that rxl create --pool and rxl restore --pool must put the domain on; refused when that host is down, disabled or full. rxl host-evacuate cannot move such a domain off its host."),
    k("pool_anti_affinity", "-", "rxen's own: an anti-affinity group. rxl create --pool, rxl restore --pool and rxl host-evacuate put domains of one group on hosts that hold none of it while such a host has room (best-effort, as XenServer's VM groups: when none has, the domain goes where it fits)."),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MODELED;

    #[test]
    fn every_modeled_key_has_exactly_one_entry() {
        for m in MODELED {
            assert_eq!(KEYS.iter().filter(|d| d.key == *m).count(), 1, "{m}");
        }
        assert_eq!(
            KEYS.len(),
            MODELED.len(),
            "an entry for a key the parser does not model"
        );
    }

    #[test]
    fn defaults_agree_with_the_parser() {
        let default = |key: &str| {
            KEYS.iter()
                .find(|d| d.key == key)
                .map(|d| d.default.to_string())
                .unwrap_or_default()
        };
        let c = crate::parse("name = \"d\"\nkernel = \"/k\"\n", "d.cfg", &[])
            .expect("parses")
            .config;
        assert_eq!(default("memory"), c.memory_mib.to_string());
        assert_eq!(default("maxmem"), "memory");
        assert_eq!(c.maxmem_mib, c.memory_mib);
        assert_eq!(default("vcpus"), c.vcpus.to_string());
        assert_eq!(default("maxvcpus"), "vcpus");
        assert_eq!(c.maxvcpus, c.vcpus);
        assert_eq!(default("cpu_weight"), c.cpu_weight.to_string());
        assert_eq!(default("cap"), c.cap.to_string());
        assert_eq!(default("ha"), u8::from(c.ha).to_string());
        for (key, action) in [
            ("on_poweroff", c.on_poweroff),
            ("on_reboot", c.on_reboot),
            ("on_watchdog", c.on_watchdog),
            ("on_crash", c.on_crash),
            ("on_soft_reset", c.on_soft_reset),
        ] {
            assert_eq!(default(key), action.as_str(), "{key}");
        }
    }
}
