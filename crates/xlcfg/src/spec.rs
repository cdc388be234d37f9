//! Errors of the small specification languages: disk specs, vif specs and CPU lists.

/// Why a disk spec, vif spec or CPU list was refused (the text says what was expected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A disk spec `key=value` whose key xl does not know.
    #[error("unknown disk parameter `{0}`")]
    UnknownDiskParameter(String),
    /// A `word:` prefix that is none of Xen's deprecated disk prefixes.
    #[error("unknown deprecated disk prefix `{0}` (known: phy: file: tap: tap2: tapdisk: aio: ioemu: raw: qcow: qcow2: vhd: iscsi: nbd: enbd: drbd:)")]
    UnknownDiskPrefix(String),
    /// Characters the disk spec grammar cannot read.
    #[error("bad disk syntax near `{0}`")]
    BadDiskSyntax(String),
    /// A disk setting given twice with different values.
    #[error("disk {what} respecified (`{value}`)")]
    Respecified {
        /// Which setting.
        what: &'static str,
        /// The second value.
        value: String,
    },
    /// A disk setting with a value outside its allowed set.
    #[error("unknown value `{value}` for disk {what}; expected {expected}")]
    BadDiskValue {
        /// Which setting.
        what: &'static str,
        /// The value found.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// More positional parameters than `target,format,vdev,access`.
    #[error("too many positional parameters in disk spec (at `{0}`); expected at most target,format,vdev,access")]
    TooManyPositional(String),
    /// The disk spec names no virtual device.
    #[error("no vdev specified in disk spec; expected e.g. `xvda` as the third positional parameter or `vdev=xvda`")]
    NoVdev,
    /// The vdev is not a device name.
    #[error("invalid vdev `{0}`; expected a device name such as xvda, hdc, sdb or xvda1")]
    BadVdev(String),
    /// A non-removable disk without a target.
    #[error("no target specified (and the device is not a removable cdrom)")]
    NoTarget,
    /// A vif spec item xl does not know.
    #[error("unrecognized vif argument `{0}`; expected key=value with key one of mac, bridge, ip, script, vifname, rate, model, type, backend, mtu, devid, gatewaydev, vlan, accel, or trusted/untrusted")]
    UnknownVifArgument(String),
    /// A MAC address that is not six hex bytes, or a multicast one.
    #[error(
        "invalid MAC address `{value}`: {why}; expected six hex bytes such as 00:16:3e:12:34:56"
    )]
    BadMac {
        /// The text found.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A vif `rate=` that is not `RATE/s[@INTERVAL]`.
    #[error("invalid vif rate `{value}`: {why}")]
    BadRate {
        /// The text found.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A vif value that must be a number (or one of a few words) and is not.
    #[error("invalid vif {key} `{value}`; expected {expected}")]
    BadVifValue {
        /// The vif key.
        key: &'static str,
        /// The value found.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// A CPU list with nothing in it.
    #[error("empty CPU list; expected e.g. \"3,5-8,^6\" or \"all\"")]
    EmptyCpuList,
    /// A CPU list item that is not `[^]N`, `[^]N-M` or `all`.
    #[error("invalid CPU list item `{0}`; expected N, N-M, ^N, ^N-M or all")]
    BadCpuItem(String),
    /// A range `N-M` with M < N.
    #[error(
        "CPU range `{from}-{to}` runs backwards; expected the smaller number first ({to}-{from})"
    )]
    CpuRangeBackwards {
        /// The first number.
        from: u32,
        /// The second number.
        to: u32,
    },
    /// `^all`, which xl refuses.
    #[error("can't combine \"^\" and \"all\"")]
    CaretAll,
    /// `node:`/`nodes:` items, which need the host's NUMA layout.
    #[error("NUMA node items (`{0}`) are not supported: rxen does not place domains on NUMA nodes; list the CPUs instead")]
    NodesUnsupported(String),
    /// A CPU number above what rxen handles, or above the host's CPUs.
    #[error("CPU {cpu} does not exist; expected CPU numbers below {limit}")]
    CpuTooLarge {
        /// The CPU number.
        cpu: u32,
        /// The first CPU number that is too large.
        limit: u32,
    },
}
