//! Disk specs as Xen's xl-disk-configuration(5) and its flex scanner (libxlu_disk_l.l) read them.

use crate::spec::SpecError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The image format of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A raw image or block device (the default).
    Raw,
    /// qcow version 1.
    Qcow,
    /// qcow2.
    Qcow2,
    /// VHD.
    Vhd,
    /// QED.
    Qed,
    /// An empty (cdrom) drive.
    Empty,
}

impl DiskFormat {
    /// The name as xl.cfg and libxl spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow => "qcow",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vhd => "vhd",
            DiskFormat::Qed => "qed",
            DiskFormat::Empty => "empty",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the guest may access a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskAccess {
    /// `r` / `ro`.
    #[serde(rename = "r")]
    ReadOnly,
    /// `w` / `rw` (the default for disks).
    #[serde(rename = "w")]
    ReadWrite,
    /// `w!` / `rw!`: writable even if another domain has it open (xm's shared write).
    #[serde(rename = "w!")]
    ReadWriteShared,
}

impl DiskAccess {
    /// Whether the guest may write.
    pub fn is_writable(self) -> bool {
        !matches!(self, DiskAccess::ReadOnly)
    }
}

impl fmt::Display for DiskAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskAccess::ReadOnly => "r",
            DiskAccess::ReadWrite => "w",
            DiskAccess::ReadWriteShared => "w!",
        })
    }
}

/// libxl's disk backend types (`backendtype=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBackendType {
    /// The kernel block backend.
    Phy,
    /// blktap.
    Tap,
    /// qemu's disk backend.
    Qdisk,
    /// A standalone backend.
    Standalone,
}

impl DiskBackendType {
    /// The name as xl.cfg and libxl spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskBackendType::Phy => "phy",
            DiskBackendType::Tap => "tap",
            DiskBackendType::Qdisk => "qdisk",
            DiskBackendType::Standalone => "standalone",
        }
    }
}

/// One parsed `disk=[...]` entry (field meanings as in libxl_device_disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// The image path or block device (libxl's pdev_path); `Some("")` for an empty cdrom drive.
    /// A relative path without a `script` gets `/dev/` prepended.
    pub target: Option<String>,
    /// The image format.
    pub format: DiskFormat,
    /// The virtual device name the guest sees (xvda, hdc, ...).
    pub vdev: String,
    /// Read-only, read-write, or shared read-write.
    pub access: DiskAccess,
    /// A cdrom (removable, read-only) rather than a disk.
    pub is_cdrom: bool,
    /// `backend=`: the domain that serves the disk.
    #[serde(default)]
    pub backend: Option<String>,
    /// `backendtype=`.
    #[serde(default)]
    pub backend_type: Option<DiskBackendType>,
    /// `script=` (or the `iscsi:`/`nbd:`/`enbd:`/`drbd:` prefixes): a hotplug script that interprets the target.
    #[serde(default)]
    pub script: Option<String>,
    /// `specification=xen|virtio`.
    #[serde(default)]
    pub specification: Option<String>,
    /// `direct-io-safe`.
    #[serde(default)]
    pub direct_io_safe: bool,
    /// `discard` / `no-discard`; `None` = the backend's default.
    #[serde(default)]
    pub discard: Option<bool>,
    /// rxen's own `rxen-bps=N[K|M|G]`: bytes per second the guest may read and write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rxen_bps: Option<u64>,
    /// rxen's own `rxen-iops=N[K|M|G]`: requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rxen_iops: Option<u64>,
    /// `trusted` / `untrusted`; `None` = default.
    #[serde(default)]
    pub trusted: Option<bool>,
    /// `grant_usage=0|1`; `None` = default.
    #[serde(default)]
    pub grant_usage: Option<bool>,
    /// COLO settings (`colo`, `colo-host=`, `colo-port=`, `colo-export=`, `active-disk=`, `hidden-disk=`).
    #[serde(default)]
    pub colo: BTreeMap<String, String>,
}

impl DiskSpec {
    /// Whether the drive is removable (libxl: every cdrom is).
    pub fn removable(&self) -> bool {
        self.is_cdrom
    }
}

/// What the scanner knows so far (DiskParseContext and the libxl_device_disk it fills).
#[derive(Default)]
struct Ctx {
    target: Option<String>,
    format: Option<DiskFormat>,
    vdev: Option<String>,
    access: Option<DiskAccess>,
    access_set: bool,
    is_cdrom: bool,
    backend: Option<String>,
    backend_type: Option<DiskBackendType>,
    script: Option<String>,
    specification: Option<String>,
    direct_io_safe: bool,
    discard: Option<bool>,
    rxen_bps: Option<u64>,
    rxen_iops: Option<u64>,
    trusted: Option<bool>,
    grant_usage: Option<bool>,
    colo: BTreeMap<String, String>,
    had_depr_prefix: bool,
}

/// savestring(): sets a string unless a non-empty one is already there.
fn save(slot: &mut Option<String>, what: &'static str, value: &str) -> Result<(), SpecError> {
    if let Some(old) = slot {
        if !old.is_empty() {
            return Err(SpecError::Respecified {
                what,
                value: value.to_string(),
            });
        }
    }
    *slot = Some(value.to_string());
    Ok(())
}

/// DSET(): sets an enum unless already set to a different value.
fn dset<T: PartialEq + Copy>(
    slot: &mut Option<T>,
    v: T,
    what: &'static str,
    text: &str,
) -> Result<(), SpecError> {
    match slot {
        Some(old) if *old != v => Err(SpecError::Respecified {
            what,
            value: text.to_string(),
        }),
        _ => {
            *slot = Some(v);
            Ok(())
        }
    }
}

fn set_format(ctx: &mut Ctx, s: &str) -> Result<(), SpecError> {
    let f = match s {
        "" | "raw" => DiskFormat::Raw,
        "qcow" => DiskFormat::Qcow,
        "qcow2" => DiskFormat::Qcow2,
        "vhd" => DiskFormat::Vhd,
        "empty" => DiskFormat::Empty,
        "qed" => DiskFormat::Qed,
        _ => {
            return Err(SpecError::BadDiskValue {
                what: "format",
                value: s.to_string(),
                expected: "raw, qcow, qcow2, vhd, qed or empty",
            })
        }
    };
    dset(&mut ctx.format, f, "format", s)
}

fn set_access(ctx: &mut Ctx, s: &str) -> Result<(), SpecError> {
    ctx.access = Some(match s {
        "r" | "ro" => DiskAccess::ReadOnly,
        "" | "w" | "rw" => DiskAccess::ReadWrite,
        "w!" | "rw!" => DiskAccess::ReadWriteShared,
        _ => {
            return Err(SpecError::BadDiskValue {
                what: "access",
                value: s.to_string(),
                expected: "r, ro, w, rw, w! or rw!",
            })
        }
    });
    Ok(())
}

fn set_backend_type(ctx: &mut Ctx, s: &str) -> Result<(), SpecError> {
    let b = match s {
        "phy" => DiskBackendType::Phy,
        "tap" => DiskBackendType::Tap,
        "qdisk" => DiskBackendType::Qdisk,
        "standalone" => DiskBackendType::Standalone,
        _ => {
            return Err(SpecError::BadDiskValue {
                what: "backendtype",
                value: s.to_string(),
                expected: "phy, tap, qdisk or standalone",
            })
        }
    };
    dset(&mut ctx.backend_type, b, "backendtype", s)
}

/// vdev_and_devtype(): handles `vdev:cdrom` / `vdev:disk`; false if there is no colon.
fn vdev_and_devtype(ctx: &mut Ctx, s: &str) -> Result<bool, SpecError> {
    let Some((vdev, devtype)) = s.rsplit_once(':') else {
        return Ok(false);
    };
    save(&mut ctx.vdev, "vdev", vdev)?;
    match devtype {
        "cdrom" => ctx.is_cdrom = true,
        "disk" => ctx.is_cdrom = false,
        _ => {
            return Err(SpecError::BadDiskValue {
                what: "deprecated device type",
                value: devtype.to_string(),
                expected: "cdrom or disk",
            })
        }
    }
    Ok(true)
}

/// The rules of the scanner, in the order flex prefers them on equal match lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    RxenBps,
    RxenIops,
    Format,
    Cdrom,
    DevtypeCdrom,
    DevtypeDisk,
    DevtypeOther,
    Access,
    Backend,
    BackendType,
    Specification,
    Vdev,
    Script,
    DirectIoSafe,
    Discard,
    NoDiscard,
    Colo,
    NoColo,
    ColoHost,
    ColoPort,
    ColoExport,
    ActiveDisk,
    HiddenDisk,
    Trusted,
    Untrusted,
    GrantUsage1,
    GrantUsage0,
    Target,
    UnknownParam,
    FormatPrefix,
    ScriptPrefix,
    IgnoredPrefix,
    UnknownPrefix,
    Positional,
}

/// `word` then an optional `,` (flags like `cdrom,?`).
fn flag_len(rest: &str, word: &str) -> Option<usize> {
    let after = rest.strip_prefix(word)?;
    Some(word.len() + usize::from(after.starts_with(',')))
}

/// `word` then `[^,]*,?` (settings like `format=[^,]*,?`).
fn setting_len(rest: &str, word: &str) -> Option<usize> {
    let after = rest.strip_prefix(word)?;
    let value = after.find(',').map_or(after.len(), |i| i + 1);
    Some(word.len() + value)
}

/// A `[a-z][a-z0-9]*:` prefix at the start of `rest`: returns the word.
fn prefix_word(rest: &str) -> Option<&str> {
    let b = rest.as_bytes();
    if !b.first()?.is_ascii_lowercase() {
        return None;
    }
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .count();
    if b.get(n) == Some(&b':') {
        rest.get(..n)
    } else {
        None
    }
}

/// The longest-matching rule at the start of `rest` and its length (ties go to the earlier rule).
fn best_rule(rest: &str) -> Option<(Rule, usize)> {
    let mut cands: Vec<(Rule, usize)> = Vec::new();
    let mut push = |r: Rule, l: Option<usize>| {
        if let Some(l) = l {
            cands.push((r, l));
        }
    };
    push(Rule::Format, setting_len(rest, "format="));
    push(Rule::Cdrom, flag_len(rest, "cdrom"));
    push(Rule::DevtypeCdrom, flag_len(rest, "devtype=cdrom"));
    push(Rule::DevtypeDisk, flag_len(rest, "devtype=disk"));
    push(Rule::DevtypeOther, setting_len(rest, "devtype="));
    push(Rule::Access, setting_len(rest, "access="));
    push(Rule::Backend, setting_len(rest, "backend="));
    push(Rule::BackendType, setting_len(rest, "backendtype="));
    push(Rule::Specification, setting_len(rest, "specification="));
    push(Rule::Vdev, setting_len(rest, "vdev="));
    push(Rule::Script, setting_len(rest, "script="));
    push(Rule::DirectIoSafe, flag_len(rest, "direct-io-safe"));
    push(Rule::Discard, flag_len(rest, "discard"));
    push(Rule::RxenBps, setting_len(rest, "rxen-bps="));
    push(Rule::RxenIops, setting_len(rest, "rxen-iops="));
    push(Rule::NoDiscard, flag_len(rest, "no-discard"));
    push(Rule::Colo, flag_len(rest, "colo"));
    push(Rule::NoColo, flag_len(rest, "no-colo"));
    push(Rule::ColoHost, setting_len(rest, "colo-host="));
    push(Rule::ColoPort, setting_len(rest, "colo-port="));
    push(Rule::ColoExport, setting_len(rest, "colo-export="));
    push(Rule::ActiveDisk, setting_len(rest, "active-disk="));
    push(Rule::HiddenDisk, setting_len(rest, "hidden-disk="));
    push(Rule::Trusted, flag_len(rest, "trusted"));
    push(Rule::Untrusted, flag_len(rest, "untrusted"));
    push(Rule::GrantUsage1, flag_len(rest, "grant_usage=1"));
    push(Rule::GrantUsage0, flag_len(rest, "grant_usage=0"));
    push(
        Rule::Target,
        rest.strip_prefix("target=").map(|_| rest.len()),
    );
    // [a-z][-a-z0-9]*=[^,],?
    {
        let b = rest.as_bytes();
        if b.first().is_some_and(|c| c.is_ascii_lowercase()) {
            let n = b
                .iter()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || **c == b'-')
                .count();
            if b.get(n) == Some(&b'=') {
                if let Some(&c) = b.get(n + 1) {
                    if c != b',' {
                        // one (possibly multi-byte) character, then an optional comma
                        let ch_len = rest
                            .get(n + 1..)
                            .and_then(|s| s.chars().next())
                            .map_or(1, char::len_utf8);
                        let end = n + 1 + ch_len;
                        push(
                            Rule::UnknownParam,
                            Some(end + usize::from(b.get(end) == Some(&b','))),
                        );
                    }
                }
            }
        }
    }
    if let Some(word) = prefix_word(rest) {
        let rule = match word {
            "raw" | "qcow" | "qcow2" | "vhd" => Some(Rule::FormatPrefix),
            "iscsi" | "nbd" | "enbd" | "drbd" => Some(Rule::ScriptPrefix),
            "tapdisk" | "tap" | "tap2" | "aio" | "ioemu" | "file" | "phy" => {
                Some(Rule::IgnoredPrefix)
            }
            _ => None,
        };
        if let Some(rule) = rule {
            push(rule, Some(rest.len()));
        }
        // [a-z][a-z0-9]*:/([^a-z0-9].*)?
        let after = rest.as_bytes().get(word.len() + 1);
        if after.is_none_or(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit())) {
            push(Rule::UnknownPrefix, Some(rest.len()));
        }
    }
    // [^=,]*,|[^=,]+,?
    {
        let n = rest.find(['=', ',']).unwrap_or(rest.len());
        let comma = rest.as_bytes().get(n) == Some(&b',');
        if n > 0 || comma {
            push(Rule::Positional, Some(n + usize::from(comma)));
        }
    }
    let mut best: Option<(Rule, usize)> = None;
    for (r, l) in cands {
        if best.is_none_or(|(_, bl)| l > bl) {
            best = Some((r, l));
        }
    }
    best
}

/// A limit: a positive number, with `K`, `M` or `G` (powers of 1024) after it.
fn rate_value(what: &'static str, value: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::BadDiskValue {
        what,
        value: value.to_string(),
        expected: "a positive number, optionally with K, M or G",
    };
    let v = value.trim();
    let (num, shift) = match v.char_indices().last() {
        Some((i, 'K' | 'k')) => (&v[..i], 10),
        Some((i, 'M' | 'm')) => (&v[..i], 20),
        Some((i, 'G' | 'g')) => (&v[..i], 30),
        _ => (v, 0),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift)
        .filter(|&n| n > 0)
        .ok_or_else(bad)
}

/// The value after the first `=` of a matched setting, without a trailing comma.
fn value_of(text: &str) -> &str {
    let v = text.split_once('=').map_or("", |(_, v)| v);
    v.strip_suffix(',').unwrap_or(v)
}

fn positional(ctx: &mut Ctx, text: &str) -> Result<(), SpecError> {
    if ctx.target.is_none() {
        save(&mut ctx.target, "target", text)
    } else if !ctx.had_depr_prefix && ctx.format.is_none() {
        let empty_target = ctx.target.as_deref() == Some("");
        if empty_target && vdev_and_devtype(ctx, text)? {
            ctx.format = Some(DiskFormat::Empty);
            Ok(())
        } else {
            set_format(ctx, text)
        }
    } else if ctx.vdev.is_none() {
        if !vdev_and_devtype(ctx, text)? {
            save(&mut ctx.vdev, "vdev", text)?;
        }
        Ok(())
    } else if !ctx.access_set {
        ctx.access_set = true;
        set_access(ctx, text)
    } else {
        Err(SpecError::TooManyPositional(text.to_string()))
    }
}

fn apply(ctx: &mut Ctx, rule: Rule, text: &str) -> Result<(), SpecError> {
    let value = value_of(text);
    match rule {
        Rule::Format => set_format(ctx, value)?,
        Rule::Cdrom | Rule::DevtypeCdrom => ctx.is_cdrom = true,
        Rule::DevtypeDisk => ctx.is_cdrom = false,
        Rule::DevtypeOther => {
            return Err(SpecError::BadDiskValue {
                what: "devtype",
                value: value.to_string(),
                expected: "cdrom or disk",
            })
        }
        Rule::Access => set_access(ctx, value)?,
        Rule::Backend => save(&mut ctx.backend, "backend", value)?,
        Rule::BackendType => set_backend_type(ctx, value)?,
        Rule::Specification => match value {
            "xen" | "virtio" => {
                let v = value.to_string();
                match &ctx.specification {
                    Some(old) if *old != v => {
                        return Err(SpecError::Respecified {
                            what: "specification",
                            value: v,
                        })
                    }
                    _ => ctx.specification = Some(v),
                }
            }
            _ => {
                return Err(SpecError::BadDiskValue {
                    what: "specification",
                    value: value.to_string(),
                    expected: "xen or virtio",
                })
            }
        },
        Rule::Vdev => save(&mut ctx.vdev, "vdev", value)?,
        Rule::Script => save(&mut ctx.script, "script", value)?,
        Rule::DirectIoSafe => ctx.direct_io_safe = true,
        Rule::Discard => ctx.discard = Some(true),
        Rule::RxenBps => ctx.rxen_bps = Some(rate_value("rxen-bps", value)?),
        Rule::RxenIops => ctx.rxen_iops = Some(rate_value("rxen-iops", value)?),
        Rule::NoDiscard => ctx.discard = Some(false),
        Rule::Colo => {
            ctx.colo.insert("colo".into(), "1".into());
        }
        Rule::NoColo => {
            ctx.colo.insert("colo".into(), "0".into());
        }
        Rule::ColoPort => {
            let port: u32 = value.trim().parse().unwrap_or(0);
            if port == 0 {
                return Err(SpecError::BadDiskValue {
                    what: "colo-port",
                    value: value.to_string(),
                    expected: "a port number",
                });
            }
            ctx.colo.insert("colo-port".into(), port.to_string());
        }
        Rule::ColoHost | Rule::ColoExport | Rule::ActiveDisk | Rule::HiddenDisk => {
            let key = text.split_once('=').map_or(text, |(k, _)| k);
            ctx.colo.insert(key.to_string(), value.to_string());
        }
        Rule::Trusted => ctx.trusted = Some(true),
        Rule::Untrusted => ctx.trusted = Some(false),
        Rule::GrantUsage1 => ctx.grant_usage = Some(true),
        Rule::GrantUsage0 => ctx.grant_usage = Some(false),
        Rule::Target => {
            let v = text.strip_prefix("target=").unwrap_or("");
            let v = v.strip_suffix(',').unwrap_or(v);
            save(&mut ctx.target, "target", v)?
        }
        Rule::UnknownParam => {
            return Err(SpecError::UnknownDiskParameter(
                text.strip_suffix(',').unwrap_or(text).to_string(),
            ))
        }
        // prefixes are handled by parse_disk_spec itself
        Rule::FormatPrefix | Rule::ScriptPrefix | Rule::IgnoredPrefix | Rule::UnknownPrefix => {}
        Rule::Positional => positional(ctx, text.strip_suffix(',').unwrap_or(text))?,
    }
    Ok(())
}

/// Parses one xl disk spec (`[target],[format],[vdev],[access]`, `key=value` items, deprecated
/// prefixes) as xl does; also used by `rxl block-attach` with its arguments joined by `,`.
pub fn parse_disk_spec(spec: &str) -> Result<DiskSpec, SpecError> {
    let mut ctx = Ctx::default();
    let mut pos = 0usize;
    while let Some(rest) = spec.get(pos..) {
        if rest.is_empty() {
            break;
        }
        let ws = rest
            .bytes()
            .take_while(|c| matches!(c, b' ' | b'\t' | b'\n'))
            .count();
        if ws > 0 {
            pos += ws;
            continue;
        }
        let Some((rule, len)) = best_rule(rest) else {
            return Err(SpecError::BadDiskSyntax(rest.to_string()));
        };
        match rule {
            Rule::FormatPrefix | Rule::ScriptPrefix | Rule::IgnoredPrefix => {
                let word = prefix_word(rest).unwrap_or_default();
                ctx.had_depr_prefix = true;
                match rule {
                    Rule::FormatPrefix => set_format(&mut ctx, word)?,
                    Rule::ScriptPrefix => {
                        save(&mut ctx.script, "script", &format!("block-{word}"))?
                    }
                    _ => {}
                }
                // flex's trailing context: only the prefix is consumed, the rest is rescanned
                pos += word.len() + 1;
            }
            Rule::UnknownPrefix => {
                let word = prefix_word(rest).unwrap_or_default();
                return Err(SpecError::UnknownDiskPrefix(format!("{word}:")));
            }
            _ => {
                let text = rest.get(..len).unwrap_or(rest);
                apply(&mut ctx, rule, text)?;
                pos += len;
            }
        }
    }
    finish(ctx)
}

/// xlu_disk_parse()'s checks after scanning, plus rxen's `/dev/` and vdev rules.
fn finish(ctx: Ctx) -> Result<DiskSpec, SpecError> {
    let mut format = ctx.format.unwrap_or(DiskFormat::Raw);
    let mut access = ctx.access.unwrap_or(DiskAccess::ReadWrite);
    let no_target = ctx.target.as_deref().is_none_or(str::is_empty);
    if ctx.is_cdrom {
        access = DiskAccess::ReadOnly;
        if no_target {
            format = DiskFormat::Empty;
        }
    }
    let Some(vdev) = ctx.vdev else {
        return Err(SpecError::NoVdev);
    };
    if !valid_vdev(&vdev) {
        return Err(SpecError::BadVdev(vdev));
    }
    if no_target && !ctx.is_cdrom {
        return Err(SpecError::NoTarget);
    }
    let target = match ctx.target {
        Some(t) if !t.is_empty() && !t.starts_with('/') && ctx.script.is_none() => {
            Some(format!("/dev/{t}"))
        }
        t => t,
    };
    Ok(DiskSpec {
        target,
        format,
        vdev,
        access,
        is_cdrom: ctx.is_cdrom,
        backend: ctx.backend,
        backend_type: ctx.backend_type,
        script: ctx.script,
        specification: ctx.specification,
        direct_io_safe: ctx.direct_io_safe,
        discard: ctx.discard,
        rxen_bps: ctx.rxen_bps,
        rxen_iops: ctx.rxen_iops,
        trusted: ctx.trusted,
        grant_usage: ctx.grant_usage,
        colo: ctx.colo,
    })
}

/// A virtual device name: lower-case letters then optional digits (xvda, hdc, xvdaa, xvda1),
/// or Xen's numeric `dN`/`dNpM` form.
fn valid_vdev(v: &str) -> bool {
    let letters = v.bytes().take_while(u8::is_ascii_lowercase).count();
    let rest = v.get(letters..).unwrap_or("");
    if letters == 0 || v.len() > 32 {
        return false;
    }
    if rest.bytes().all(|c| c.is_ascii_digit()) {
        return true;
    }
    // dNpM
    v.starts_with('d')
        && letters == 1
        && rest
            .split_once('p')
            .is_some_and(|(a, b)| is_digits(a) && is_digits(b))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> DiskSpec {
        parse_disk_spec(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn positional_forms() {
        let d = ok("/dev/vg/guest-volume,raw,xvda,rw");
        assert_eq!(d.target.as_deref(), Some("/dev/vg/guest-volume"));
        assert_eq!(d.format, DiskFormat::Raw);
        assert_eq!(d.vdev, "xvda");
        assert_eq!(d.access, DiskAccess::ReadWrite);
        let d = ok("phy:/dev/vg/root,xvda1,w");
        assert_eq!(d.target.as_deref(), Some("/dev/vg/root"));
        assert_eq!(d.vdev, "xvda1");
        let d = ok("file:/srv/xen/web.img,xvda2,r");
        assert_eq!(d.target.as_deref(), Some("/srv/xen/web.img"));
        assert_eq!(d.access, DiskAccess::ReadOnly);
    }

    #[test]
    fn relative_phy_paths_live_under_dev() {
        assert_eq!(
            ok("phy:vg0/web,xvda,w").target.as_deref(),
            Some("/dev/vg0/web")
        );
        assert_eq!(ok("sdb1,,xvdb").target.as_deref(), Some("/dev/sdb1"));
        // with a script the target is the script's business
        assert_eq!(
            ok("nbd:host:1234,xvda,w").target.as_deref(),
            Some("host:1234")
        );
    }

    #[test]
    fn tap_prefixes() {
        let d = ok("tap:aio:/srv/img/a.img,xvda,w");
        assert_eq!(d.target.as_deref(), Some("/srv/img/a.img"));
        assert_eq!(d.format, DiskFormat::Raw);
        let d = ok("tap:qcow2:/srv/img/a.qcow2,xvda,w");
        assert_eq!(d.format, DiskFormat::Qcow2);
        assert_eq!(d.target.as_deref(), Some("/srv/img/a.qcow2"));
    }

    #[test]
    fn shared_write() {
        assert_eq!(
            ok("phy:/dev/sdc,xvdc,w!").access,
            DiskAccess::ReadWriteShared
        );
        assert_eq!(
            ok("access=rw!,vdev=xvdc,target=/dev/sdc").access,
            DiskAccess::ReadWriteShared
        );
    }

    #[test]
    fn errors() {
        assert_eq!(parse_disk_spec("foo"), Err(SpecError::NoVdev));
        assert!(matches!(
            parse_disk_spec("foo:/x,xvda"),
            Err(SpecError::UnknownDiskPrefix(_))
        ));
        assert!(matches!(
            parse_disk_spec("/x,raw,xvda,w,w"),
            Err(SpecError::TooManyPositional(_))
        ));
        assert!(matches!(
            parse_disk_spec("/x,vmdk,xvda"),
            Err(SpecError::BadDiskValue { what: "format", .. })
        ));
        assert!(matches!(
            parse_disk_spec("/x,,xvda,rx"),
            Err(SpecError::BadDiskValue { what: "access", .. })
        ));
        assert!(matches!(
            parse_disk_spec("bogus=1,/x,,xvda"),
            Err(SpecError::UnknownDiskParameter(_))
        ));
        assert!(matches!(
            parse_disk_spec("vdev=xvda,vdev=xvdb,target=/x"),
            Err(SpecError::Respecified { .. })
        ));
        assert!(matches!(
            parse_disk_spec("/x,,xv da"),
            Err(SpecError::BadVdev(_))
        ));
        assert_eq!(parse_disk_spec(",,xvda"), Err(SpecError::NoTarget));
        assert_eq!(parse_disk_spec(""), Err(SpecError::NoVdev));
        assert!(matches!(
            parse_disk_spec("=x,xvda"),
            Err(SpecError::BadDiskSyntax(_))
        ));
        assert!(matches!(
            parse_disk_spec("/x,,xvda:floppy"),
            Err(SpecError::BadDiskValue { .. })
        ));
    }

    #[test]
    fn flags_and_keys() {
        let d = ok("/x,,xvda,backend=drv,backendtype=qdisk,specification=virtio,direct-io-safe,discard,untrusted,grant_usage=1,colo,colo-port=7000");
        assert_eq!(d.backend.as_deref(), Some("drv"));
        assert_eq!(d.backend_type, Some(DiskBackendType::Qdisk));
        assert_eq!(d.specification.as_deref(), Some("virtio"));
        assert!(d.direct_io_safe);
        assert_eq!(
            (d.discard, d.trusted, d.grant_usage),
            (Some(true), Some(false), Some(true))
        );
        assert_eq!(d.colo.get("colo-port").map(String::as_str), Some("7000"));
        // devtype=disk undoes cdrom; a cdrom is read-only whatever the access says
        assert!(!ok("cdrom,devtype=disk,/x,,xvda").is_cdrom);
        let c = ok("/x.iso,,hdc,w,cdrom");
        assert_eq!((c.access, c.removable()), (DiskAccess::ReadOnly, true));
        assert!(matches!(
            parse_disk_spec("/x,,xvda,backendtype=nvme"),
            Err(SpecError::BadDiskValue { .. })
        ));
        assert!(matches!(
            parse_disk_spec("/x,,xvda,devtype=floppy"),
            Err(SpecError::BadDiskValue { .. })
        ));
        assert!(matches!(
            parse_disk_spec("/x,raw,xvda,format=qcow2"),
            Err(SpecError::Respecified { .. })
        ));
    }
}

#[cfg(test)]
mod rxen_limits {
    use super::*;

    #[test]
    fn rxen_bps_and_iops_take_numbers_with_suffixes() {
        let d = parse_disk_spec("file:/a.img,xvda,w,rxen-bps=10M,rxen-iops=500").expect("spec");
        assert_eq!(d.rxen_bps, Some(10 << 20));
        assert_eq!(d.rxen_iops, Some(500));
        assert_eq!(d.vdev, "xvda");
        for bad in [
            "rxen-bps=0",
            "rxen-bps=fast",
            "rxen-iops=-3",
            "rxen-bps=99999999999G",
        ] {
            let e = parse_disk_spec(&format!("file:/a.img,xvda,w,{bad}")).expect_err(bad);
            assert!(e.to_string().contains("rxen-"), "{bad}: {e}");
        }
    }
}
