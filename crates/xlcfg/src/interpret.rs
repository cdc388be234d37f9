//! From settings to a [`DomainConfig`]: types, defaults and checks as xl's parse_config_data.

use crate::cpus::{
    check_cpu_list_syntax, parse_cpu_list_host_free, CpuAffinity, HostFree, MAX_CPUS,
};
use crate::diag::{Diagnostic, DiagnosticKind};
use crate::disk::{parse_disk_spec, DiskFormat, DiskSpec};
use crate::error::{ConfigError, ConfigErrorKind};
use crate::keys::{classify, suggest, Class};
use crate::lexer::Pos;
use crate::model::{Action, DomainConfig, DomainType, DEFAULT_CPU_WEIGHT, DEFAULT_MEMORY_MIB};
use crate::number::parse_c_long;
use crate::spec::SpecError;
use crate::syntax::{Settings, Spanned, Value};
use crate::vif::{parse_vif_spec, MacAddr, VifSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The largest `memory`/`maxmem` rxen accepts, MiB (16 TiB).
pub const MAX_MEMORY_MIB: u64 = 16 * 1024 * 1024;

struct Cx<'a> {
    settings: &'a Settings,
    files: &'a [String],
    used: BTreeSet<String>,
    keep: BTreeSet<String>,
    diags: Vec<Diagnostic>,
}

type R<T> = Result<T, ConfigError>;

/// Strings with their positions, and the position of the whole value.
type Located = (Vec<(String, Pos)>, Pos);

fn found(v: &Value) -> String {
    match v {
        Value::Atom { text, quoted: true } => format!("string \"{}\"", text.escape_debug()),
        Value::Atom {
            text,
            quoted: false,
        } => format!("`{text}`"),
        Value::List(_) => "a list".into(),
    }
}

impl Cx<'_> {
    fn file(&self, pos: Pos) -> String {
        self.files.get(pos.src).cloned().unwrap_or_default()
    }

    fn err(&self, pos: Pos, kind: ConfigErrorKind) -> ConfigError {
        ConfigError {
            file: self.file(pos),
            line: pos.line,
            column: pos.col,
            kind,
        }
    }

    fn diag(&mut self, pos: Pos, kind: DiagnosticKind, key: &str, message: String) {
        self.diags.push(Diagnostic {
            file: self.file(pos),
            line: pos.line,
            column: pos.col,
            kind,
            key: key.to_string(),
            message,
        });
    }

    /// The value of `key`, marking it as read.
    fn take(&mut self, key: &str) -> Option<Spanned> {
        let s = self.settings.get(key)?;
        self.used.insert(key.to_string());
        Some(s.value.clone())
    }

    fn key_pos(&self, key: &str) -> Option<Pos> {
        self.settings.get(key).map(|s| s.key_pos)
    }

    /// A single value read as text.
    fn string(&mut self, key: &str, expected: &'static str) -> R<Option<(String, Pos)>> {
        let Some(v) = self.take(key) else {
            return Ok(None);
        };
        match v.value {
            Value::Atom { text, .. } => Ok(Some((text, v.pos))),
            Value::List(_) => Err(self.err(
                v.pos,
                ConfigErrorKind::ExpectedSingleValue {
                    key: key.into(),
                    expected,
                },
            )),
        }
    }

    /// A single value read as a C long (a quoted "512" is a number too, as in xl).
    fn long(&mut self, key: &str, expected: &'static str) -> R<Option<(i64, Pos)>> {
        let Some(v) = self.take(key) else {
            return Ok(None);
        };
        match &v.value {
            Value::Atom { text, .. } => match parse_c_long(text) {
                Ok(n) => Ok(Some((n, v.pos))),
                Err(_) => Err(self.err(
                    v.pos,
                    ConfigErrorKind::NotANumber {
                        key: key.into(),
                        expected,
                        found: found(&v.value),
                    },
                )),
            },
            Value::List(_) => Err(self.err(
                v.pos,
                ConfigErrorKind::ExpectedSingleValue {
                    key: key.into(),
                    expected,
                },
            )),
        }
    }

    /// A number in `lo..=hi`.
    fn ranged(
        &mut self,
        key: &str,
        expected: &'static str,
        lo: i64,
        hi: i64,
    ) -> R<Option<(i64, Pos)>> {
        match self.long(key, expected)? {
            Some((n, pos)) if n < lo || n > hi => Err(self.err(
                pos,
                ConfigErrorKind::OutOfRange {
                    key: key.into(),
                    value: n,
                    expected: format!("{expected} between {lo} and {hi}"),
                },
            )),
            other => Ok(other),
        }
    }

    fn boolean(&mut self, key: &str) -> R<Option<(bool, Pos)>> {
        Ok(self.long(key, "0 or 1")?.map(|(n, p)| (n != 0, p)))
    }

    /// A list of single values (or, with `single_ok`, one value), each with its position.
    fn strings(
        &mut self,
        key: &str,
        expected: &'static str,
        single_ok: bool,
    ) -> R<Option<Located>> {
        let Some(v) = self.take(key) else {
            return Ok(None);
        };
        match v.value {
            Value::Atom { text, .. } if single_ok => Ok(Some((vec![(text, v.pos)], v.pos))),
            Value::List(items) => {
                let mut out = Vec::new();
                for it in items {
                    match it.value {
                        Value::Atom { text, .. } => out.push((text, it.pos)),
                        other => {
                            return Err(self.err(
                                it.pos,
                                ConfigErrorKind::ExpectedList {
                                    key: key.into(),
                                    expected,
                                    found: format!("{} inside the list", found(&other)),
                                },
                            ))
                        }
                    }
                }
                Ok(Some((out, v.pos)))
            }
            other => Err(self.err(
                v.pos,
                ConfigErrorKind::ExpectedList {
                    key: key.into(),
                    expected,
                    found: found(&other),
                },
            )),
        }
    }

    fn action(&mut self, key: &str, default: Action) -> R<Action> {
        match self.string(key, "an action such as destroy or restart")? {
            None => Ok(default),
            Some((s, pos)) => s.parse().map_err(|_| {
                self.err(
                    pos,
                    ConfigErrorKind::UnknownAction {
                        key: key.into(),
                        value: s,
                    },
                )
            }),
        }
    }
}

/// Value → JSON for `other_keys`: unquoted numbers become numbers, everything else strings.
fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Atom {
            text,
            quoted: false,
        } => match parse_c_long(text) {
            Ok(n) => serde_json::Value::from(n),
            Err(_) => serde_json::Value::from(text.clone()),
        },
        Value::Atom { text, .. } => serde_json::Value::from(text.clone()),
        Value::List(items) => items.iter().map(|i| to_json(&i.value)).collect(),
    }
}

/// The value as text for comparing with benign values: lists as `[]` when empty.
fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Atom { text, quoted } => Some(if *quoted {
            text.clone()
        } else {
            parse_c_long(text).map_or(text.clone(), |n| n.to_string())
        }),
        Value::List(items) if items.is_empty() => Some("[]".into()),
        Value::List(_) => None,
    }
}

/// Checks a domain config that did not come through the parser (a save file's or a
/// migration stream's JSON): the same ranges the parser enforces.
pub fn check_config(c: &crate::DomainConfig) -> Result<(), String> {
    check_name(&c.name).map_err(|why| format!("name \"{}\": {why}", c.name.escape_debug()))?;
    let bad = |what: &str, v: u64, lo: u64, hi: u64| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(format!("{what} {v} is outside {lo}..={hi}"))
        }
    };
    bad("memory", c.memory_mib, 1, MAX_MEMORY_MIB)?;
    bad("maxmem", c.maxmem_mib, 1, MAX_MEMORY_MIB)?;
    bad("maxvcpus", c.maxvcpus.into(), 1, crate::MAX_CPUS.into())?;
    bad("vcpus", c.vcpus.into(), 1, c.maxvcpus.into())?;
    bad("cpu_weight", c.cpu_weight.into(), 1, 65535)?;
    bad("cap", c.cap.into(), 0, u64::from(c.maxvcpus) * 100)?;
    Ok(())
}

/// A host or group name of a pool key (`pool_host`, `pool_anti_affinity`): one word of at
/// most 64 bytes, without `/`, white space or control characters (it becomes part of etcd keys
/// and of `rxl host-list`'s columns).
fn pool_word(cx: &mut Cx<'_>, key: &str, expected: &'static str) -> R<Option<String>> {
    let Some((v, pos)) = cx.string(key, expected)? else {
        return Ok(None);
    };
    let ok = !v.is_empty()
        && v.len() <= 64
        && !v.contains('/')
        && !v.chars().any(|c| c.is_control() || c.is_whitespace());
    if !ok {
        return Err(cx.err(
            pos,
            ConfigErrorKind::BadValue {
                key: key.into(),
                value: v,
                expected: format!(
                    "{expected}: 1 to 64 bytes, without `/`, white space or control characters"
                ),
            },
        ));
    }
    Ok(Some(v))
}

/// Why a domain name is refused, if it is.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 64 {
        return Err("it is longer than 64 bytes");
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err("it is all digits, which reads as a domain ID");
    }
    if name.contains('/') {
        return Err("it contains `/`");
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("it contains white space or control characters");
    }
    // Invisible characters (zero-width, direction overrides, byte-order mark) make two names
    // look alike in `rxl list`.
    let invisible = |c: char| {
        matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
    };
    if name.chars().any(invisible) {
        return Err("it contains invisible characters");
    }
    if name.starts_with('-') {
        return Err("it starts with `-`, which reads as an option");
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` name directories");
    }
    if name == "Domain-0" {
        return Err("Domain-0 is the host's name");
    }
    if name.ends_with("--incoming") || name.ends_with("--migratedaway") {
        return Err("names ending in --incoming or --migratedaway are used during migration");
    }
    Ok(())
}

fn valid_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8usize, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// Parses `type`/`builder` prefixes as xl does: `strncmp(value, name, strlen(value))`.
fn type_prefix(
    value: &str,
    names: &[(&'static str, DomainType)],
) -> Option<(&'static str, DomainType)> {
    if value.is_empty() {
        return None;
    }
    names.iter().copied().find(|(n, _)| n.starts_with(value))
}

fn valid_user(u: &str) -> bool {
    let mut chars = u.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && u.len() <= 32
        && u.trim_end_matches('$')
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

/// Builds the domain config from the merged settings of every source.
pub(crate) fn interpret(
    settings: &Settings,
    files: &[String],
) -> Result<(DomainConfig, Vec<Diagnostic>), ConfigError> {
    let mut cx = Cx {
        settings,
        files,
        used: BTreeSet::new(),
        keep: BTreeSet::new(),
        diags: Vec::new(),
    };
    let start = Pos {
        src: 0,
        line: 1,
        col: 1,
    };

    // name
    let (name, name_pos) = cx
        .string("name", "the domain name")?
        .ok_or_else(|| cx.err(start, ConfigErrorKind::MissingName))?;
    if let Err(why) = check_name(&name) {
        return Err(cx.err(name_pos, ConfigErrorKind::BadName { name, why }));
    }

    // uuid
    let uuid = match cx.string("uuid", "a UUID")? {
        None => None,
        Some((u, pos)) => {
            if !valid_uuid(&u) {
                return Err(cx.err(pos, ConfigErrorKind::BadUuid { value: u }));
            }
            Some(u.to_ascii_lowercase())
        }
    };

    // type, builder, pvh
    let mut domain_type = None;
    if let Some((t, pos)) = cx.string("type", "pv, pvh or hvm")? {
        let names = [
            ("hvm", DomainType::Hvm),
            ("pv", DomainType::Pv),
            ("pvh", DomainType::Pvh),
        ];
        let Some((full, ty)) = type_prefix(&t, &names) else {
            return Err(cx.err(
                pos,
                ConfigErrorKind::BadValue {
                    key: "type".into(),
                    value: t,
                    expected: "pv, pvh or hvm".into(),
                },
            ));
        };
        if full != t {
            cx.diag(
                pos,
                DiagnosticKind::Warning,
                "type",
                format!(
                    "type \"{t}\" is read as \"{full}\" (xl accepts a prefix); write it in full"
                ),
            );
        }
        domain_type = Some(ty);
    }
    if let Some((b, pos)) = cx.string("builder", "generic or hvm")? {
        let names = [("hvm", DomainType::Hvm), ("generic", DomainType::Pv)];
        let Some((full, ty)) = type_prefix(&b, &names) else {
            return Err(cx.err(
                pos,
                ConfigErrorKind::BadValue {
                    key: "builder".into(),
                    value: b,
                    expected: "generic or hvm".into(),
                },
            ));
        };
        if let Some(t) = domain_type {
            if t != ty {
                return Err(cx.err(
                    pos,
                    ConfigErrorKind::BuilderTypeConflict {
                        builder: ty.as_str(),
                        domain_type: t.as_str(),
                    },
                ));
            }
        }
        let instead = if ty == DomainType::Hvm { "hvm" } else { "pv" };
        cx.diag(
            pos,
            DiagnosticKind::Deprecated,
            "builder",
            format!("builder = \"{full}\" is deprecated; use type = \"{instead}\""),
        );
        domain_type = Some(ty);
    }
    if let Some((on, pos)) = cx.boolean("pvh")? {
        cx.diag(
            pos,
            DiagnosticKind::Deprecated,
            "pvh",
            "pvh = 1 is deprecated; use type = \"pvh\"".into(),
        );
        if on {
            if domain_type.is_some_and(|t| t != DomainType::Pvh) {
                return Err(cx.err(
                    pos,
                    ConfigErrorKind::BadValue {
                        key: "pvh".into(),
                        value: "1".into(),
                        expected: "no pvh = 1 together with another type".into(),
                    },
                ));
            }
            domain_type = Some(DomainType::Pvh);
        }
    }
    let domain_type = domain_type.unwrap_or(DomainType::Pv);
    if domain_type == DomainType::Hvm {
        let pos = cx
            .key_pos("type")
            .or(cx.key_pos("builder"))
            .unwrap_or(start);
        cx.diag(pos, DiagnosticKind::Unsupported, "type", "HVM guests (firmware, emulated devices) are not supported; rxen boots PV/PVH guests from `kernel`".into());
    }

    // memory
    let mem_expected = "a number of MiB (plain integer, no suffix)";
    let memory = cx.ranged("memory", mem_expected, 1, MAX_MEMORY_MIB as i64)?;
    let maxmem = cx.ranged("maxmem", mem_expected, 1, MAX_MEMORY_MIB as i64)?;
    let (memory_mib, maxmem_mib) = match (memory, maxmem) {
        (None, None) => (DEFAULT_MEMORY_MIB, DEFAULT_MEMORY_MIB),
        (Some((m, _)), None) => (m as u64, m as u64),
        (None, Some((x, _))) => (x as u64, x as u64),
        (Some((m, _)), Some((x, pos))) => {
            if x < m {
                return Err(cx.err(
                    pos,
                    ConfigErrorKind::MaxmemBelowMemory {
                        memory: m as u64,
                        maxmem: x as u64,
                    },
                ));
            }
            (m as u64, x as u64)
        }
    };

    // vcpus
    let vcpus = match cx.long("vcpus", "a number of vCPUs")? {
        None => 1,
        Some((n, pos)) if n > i64::from(MAX_CPUS) => {
            return Err(cx.err(
                pos,
                ConfigErrorKind::OutOfRange {
                    key: "vcpus".into(),
                    value: n,
                    expected: format!("a number of vCPUs between 1 and {MAX_CPUS}"),
                },
            ))
        }
        Some((n, pos)) if n < 1 => {
            cx.diag(
                pos,
                DiagnosticKind::Warning,
                "vcpus",
                format!("vcpus = {n} is read as 1, as xl does"),
            );
            1
        }
        Some((n, _)) => n as u32,
    };
    let maxvcpus = match cx.ranged("maxvcpus", "a number of vCPUs", 1, i64::from(MAX_CPUS))? {
        None => vcpus,
        Some((n, pos)) => {
            let n = n as u32;
            if n < vcpus {
                return Err(cx.err(
                    pos,
                    ConfigErrorKind::MaxvcpusBelowVcpus { vcpus, maxvcpus: n },
                ));
            }
            n
        }
    };

    // cpus
    let cpus = read_cpus(&mut cx, maxvcpus)?;

    // scheduling
    let cpu_weight = cx
        .ranged("cpu_weight", "a weight", 1, 65535)?
        .map_or(DEFAULT_CPU_WEIGHT, |(n, _)| n as u32);
    let cap = cx
        .ranged(
            "cap",
            "a percentage of one CPU (0 = no cap)",
            0,
            i64::from(maxvcpus) * 100,
        )?
        .map_or(0, |(n, _)| n as u32);
    let pool = cx.string("pool", "a CPU pool name")?.map(|(s, _)| s);
    // pool placement (rxen's own keys)
    let pool_host = pool_word(&mut cx, "pool_host", "a host name of the pool")?;
    let pool_anti_affinity =
        pool_word(&mut cx, "pool_anti_affinity", "an anti-affinity group name")?;

    // boot
    let kernel = cx.string("kernel", "a kernel path")?.map(|(s, _)| s);
    let ramdisk = cx.string("ramdisk", "a ramdisk path")?.map(|(s, _)| s);
    let cmdline_v = cx.string("cmdline", "a kernel command line")?;
    let root = cx.string("root", "a root device")?;
    let extra = cx.string("extra", "extra kernel arguments")?;
    let cmdline = match cmdline_v {
        Some((c, pos)) => {
            if root.is_some() || extra.is_some() {
                cx.diag(
                    pos,
                    DiagnosticKind::Warning,
                    "cmdline",
                    "ignoring root= and extra= in favour of cmdline=".into(),
                );
            }
            Some(c)
        }
        None => match (root, extra) {
            (Some((r, _)), Some((e, _))) => Some(format!("root={r} {e}")),
            (Some((r, _)), None) => Some(format!("root={r}")),
            (None, Some((e, _))) => Some(e),
            (None, None) => None,
        },
    };
    let bootloader = cx.string("bootloader", "a bootloader path")?;
    if let Some((b, pos)) = &bootloader {
        if !crate::model::is_pygrub(b) {
            cx.diag(*pos, DiagnosticKind::Unsupported, "bootloader", format!("bootloader = \"{b}\" is not supported: rxen has its own pygrub (bootloader = \"pygrub\"), or boots `kernel` (with `ramdisk`) directly"));
        }
    }
    let bootloader = bootloader.map(|(b, _)| b);
    let bootloader_args: Vec<String> = cx
        .strings("bootloader_args", "a list of bootloader arguments", true)?
        .map(|(v, pos)| {
            if bootloader.is_none() {
                cx.diag(
                    pos,
                    DiagnosticKind::Warning,
                    "bootloader_args",
                    "bootloader_args without bootloader is ignored".into(),
                );
            }
            for (a, apos) in &v {
                if bootloader.is_some() && crate::model::pygrub_entry(std::slice::from_ref(a)).is_none() {
                    cx.diag(*apos, DiagnosticKind::Unsupported, "bootloader_args", format!("bootloader_args \"{a}\" is not supported: rxen's pygrub takes --entry=N alone"));
                }
            }
            v.into_iter().map(|(s, _)| s).collect()
        })
        .unwrap_or_default();
    if matches!(domain_type, DomainType::Pv | DomainType::Pvh)
        && kernel.is_none()
        && bootloader.is_none()
    {
        return Err(cx.err(
            start,
            ConfigErrorKind::NoKernel {
                domain_type: domain_type.as_str(),
            },
        ));
    }

    // devices
    let disks = read_disks(&mut cx)?;
    let vifs = read_vifs(&mut cx)?;

    // actions
    let on_poweroff = cx.action("on_poweroff", Action::Destroy)?;
    let on_reboot = cx.action("on_reboot", Action::Restart)?;
    let on_watchdog = cx.action("on_watchdog", Action::Destroy)?;
    let on_crash = cx.action("on_crash", Action::Destroy)?;
    let on_soft_reset = cx.action("on_soft_reset", Action::SoftReset)?;

    // display and serial
    let vnc = cx.boolean("vnc")?;
    if let Some((true, pos)) = vnc {
        cx.diag(
            pos,
            DiagnosticKind::Unsupported,
            "vnc",
            "vnc = 1 is not supported: rxen has no graphical console (use `rxl console`)".into(),
        );
    }
    let sdl = cx.boolean("sdl")?;
    let ha = cx.boolean("ha")?.is_some_and(|(v, _)| v);
    if let Some((true, pos)) = sdl {
        cx.diag(
            pos,
            DiagnosticKind::Unsupported,
            "sdl",
            "sdl = 1 is not supported: rxen has no graphical console (use `rxl console`)".into(),
        );
    }
    let vfb: Vec<String> = match cx.strings("vfb", "a list of framebuffer specs", false)? {
        None => Vec::new(),
        Some((v, pos)) => {
            if !v.is_empty() {
                cx.diag(pos, DiagnosticKind::Unsupported, "vfb", "vfb (virtual framebuffer) is not supported: rxen has no graphical console (use `rxl console`)".into());
            }
            v.into_iter().map(|(s, _)| s).collect()
        }
    };
    let serial: Vec<String> = match cx.strings(
        "serial",
        "a serial device or a list of them",
        true,
    )? {
        None => Vec::new(),
        Some((v, _)) => {
            for (s, pos) in &v {
                match s.as_str() {
                    "pty" => {}
                    "none" => cx.diag(*pos, DiagnosticKind::Warning, "serial", "serial = \"none\" is ignored: every rxen guest has one serial console".into()),
                    other => cx.diag(*pos, DiagnosticKind::Unsupported, "serial", format!("serial device \"{other}\" is not supported: the guest's serial port is a pty reached with `rxl console`; write serial = \"pty\"")),
                }
            }
            v.into_iter().map(|(s, _)| s).collect()
        }
    };

    // rxen-shell users
    let xen_shell: Vec<String> = match cx.strings(
        "xen_shell",
        "a user name or a list of user names",
        true,
    )? {
        None => Vec::new(),
        Some((v, _)) => {
            let mut users = Vec::new();
            for (s, pos) in v {
                for u in s
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|u| !u.is_empty())
                {
                    if !valid_user(u) {
                        return Err(cx.err(
                            pos,
                            ConfigErrorKind::BadValue {
                                key: "xen_shell".into(),
                                value: u.into(),
                                expected: "user names (lower-case letters, digits, `_`, `-`, `.`; at most 32 characters)".into(),
                            },
                        ));
                    }
                    if !users.iter().any(|x| x == u) {
                        users.push(u.to_string());
                    }
                }
            }
            users
        }
    };

    // everything else
    let mut unknown = 0usize;
    for s in &settings.list {
        if cx.used.contains(&s.key) {
            continue;
        }
        cx.keep.insert(s.key.clone());
        let text = value_text(&s.value.value);
        match classify(&s.key) {
            Some(Class::Unsupported { why, benign }) => {
                if text.as_deref().is_some_and(|t| benign.contains(&t)) {
                    cx.diag(
                        s.key_pos,
                        DiagnosticKind::Warning,
                        &s.key,
                        format!("`{}` is ignored (its value leaves the feature off)", s.key),
                    );
                } else {
                    cx.diag(
                        s.key_pos,
                        DiagnosticKind::Unsupported,
                        &s.key,
                        format!("`{}`: {why}", s.key),
                    );
                }
            }
            Some(Class::Ignored { why }) => {
                cx.diag(
                    s.key_pos,
                    DiagnosticKind::Warning,
                    &s.key,
                    format!("`{}` is ignored: {why}", s.key),
                );
            }
            Some(Class::Deprecated { instead }) => {
                cx.diag(
                    s.key_pos,
                    DiagnosticKind::Deprecated,
                    &s.key,
                    format!(
                        "`{}` is an old xm setting, accepted and ignored: {instead}",
                        s.key
                    ),
                );
            }
            None => {
                cx.diag(
                    s.key_pos,
                    DiagnosticKind::Unknown,
                    &s.key,
                    format!("unknown key `{}` is kept but not used{}", s.key, {
                        unknown += 1;
                        // suggestions are for typos, not for files full of unknown keys
                        (unknown <= 64)
                            .then(|| suggest(&s.key))
                            .flatten()
                            .map(|k| format!(" (did you mean `{k}`?)"))
                            .unwrap_or_default()
                    }),
                );
            }
        }
    }
    let other_keys: BTreeMap<String, serde_json::Value> = settings
        .list
        .iter()
        .filter(|s| cx.keep.contains(&s.key))
        .map(|s| (s.key.clone(), to_json(&s.value.value)))
        .collect();

    let mut diags = cx.diags;
    diags.sort_by(|a, b| {
        (
            a.file != files.first().cloned().unwrap_or_default(),
            a.line,
            a.column,
        )
            .cmp(&(
                b.file != files.first().cloned().unwrap_or_default(),
                b.line,
                b.column,
            ))
    });
    let config = DomainConfig {
        name,
        uuid,
        domain_type,
        memory_mib,
        maxmem_mib,
        vcpus,
        maxvcpus,
        cpus,
        cpu_weight,
        pool,
        cap,
        kernel,
        ramdisk,
        cmdline,
        bootloader,
        disks,
        vifs,
        on_poweroff,
        on_reboot,
        on_watchdog,
        on_crash,
        on_soft_reset,
        xen_shell,
        pool_host,
        pool_anti_affinity,
        bootloader_args,
        vnc: vnc.is_some_and(|(v, _)| v),
        sdl: sdl.is_some_and(|(v, _)| v),
        ha,
        vfb,
        serial,
        other_keys,
    };
    Ok((config, diags))
}

/// One `cpus` string: Ok(Some(set)), Ok(None) when it needs the host (reported), or an error.
fn cpu_item(cx: &mut Cx<'_>, spec: &str, pos: Pos) -> R<Option<HostFree>> {
    match parse_cpu_list_host_free(spec) {
        Ok(HostFree::NeedsHost) => {
            cx.diag(pos, DiagnosticKind::Unsupported, "cpus", format!("cpus \"{spec}\" removes CPUs from \"all\", which needs the host's CPU count; list the CPUs explicitly (e.g. \"0-6\")"));
            Ok(None)
        }
        Ok(HostFree::Set(v)) if v.is_empty() => Err(cx.err(
            pos,
            ConfigErrorKind::Cpus {
                spec: spec.into(),
                source: SpecError::EmptyCpuList,
            },
        )),
        Ok(h) => Ok(Some(h)),
        Err(e @ SpecError::NodesUnsupported(_)) => {
            cx.diag(
                pos,
                DiagnosticKind::Unsupported,
                "cpus",
                format!("cpus \"{spec}\": {e}"),
            );
            Ok(None)
        }
        Err(source) => Err(cx.err(
            pos,
            ConfigErrorKind::Cpus {
                spec: spec.into(),
                source,
            },
        )),
    }
}

fn read_cpus(cx: &mut Cx<'_>, maxvcpus: u32) -> R<Option<CpuAffinity>> {
    let Some(v) = cx.take("cpus") else {
        return Ok(None);
    };
    let result = match &v.value {
        Value::Atom { text, .. } => match cpu_item(cx, text, v.pos)? {
            None => None,
            Some(HostFree::All) => Some(CpuAffinity::All),
            Some(HostFree::Set(s)) => Some(CpuAffinity::Set(s)),
            Some(HostFree::NeedsHost) => None,
        },
        Value::List(items) => {
            if items.is_empty() {
                cx.diag(
                    v.pos,
                    DiagnosticKind::Warning,
                    "cpus",
                    "cpus = [] pins nothing and is ignored".into(),
                );
                return Ok(None);
            }
            let mut per = Vec::new();
            let mut refused = false;
            for (i, it) in items.iter().enumerate() {
                let Value::Atom { text, .. } = &it.value else {
                    return Err(cx.err(
                        it.pos,
                        ConfigErrorKind::ExpectedList {
                            key: "cpus".into(),
                            expected: "a CPU list or a list of CPU lists (one per vCPU)",
                            found: "a list inside the list".into(),
                        },
                    ));
                };
                if i >= maxvcpus as usize {
                    // entries for vCPUs the domain cannot have are checked, then ignored
                    check_cpu_list_syntax(text).map_err(|source| {
                        cx.err(
                            it.pos,
                            ConfigErrorKind::Cpus {
                                spec: text.clone(),
                                source,
                            },
                        )
                    })?;
                    continue;
                }
                match cpu_item(cx, text, it.pos)? {
                    Some(HostFree::Set(s)) => per.push(s),
                    Some(HostFree::All) => {
                        cx.diag(it.pos, DiagnosticKind::Unsupported, "cpus", "\"all\" inside a per-vCPU cpus list is not supported; leave the vCPU out of the list or list its CPUs".into());
                        refused = true;
                    }
                    _ => refused = true,
                }
            }
            if items.len() > maxvcpus as usize {
                cx.diag(v.pos, DiagnosticKind::Warning, "cpus", format!("cpus lists {} entries but the domain has at most {maxvcpus} vCPUs; the extra entries are ignored", items.len()));
            }
            if refused {
                None
            } else {
                Some(CpuAffinity::PerVcpu(per))
            }
        }
    };
    if result.is_none() {
        cx.keep.insert("cpus".into());
    }
    Ok(result)
}

fn read_disks(cx: &mut Cx<'_>) -> R<Vec<DiskSpec>> {
    let Some((specs, _)) = cx.strings(
        "disk",
        "a list of disk specs, e.g. disk = [ 'phy:/dev/vg/guest,xvda,w' ]",
        false,
    )?
    else {
        return Ok(Vec::new());
    };
    let mut disks: Vec<DiskSpec> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, (spec, pos)) in specs.into_iter().enumerate() {
        let d = parse_disk_spec(&spec).map_err(|source| {
            cx.err(
                pos,
                ConfigErrorKind::Disk {
                    index: i + 1,
                    spec: spec.clone(),
                    source,
                },
            )
        })?;
        if let Some(&first) = seen.get(&d.vdev) {
            return Err(cx.err(
                pos,
                ConfigErrorKind::DuplicateVdev {
                    vdev: d.vdev,
                    index: i + 1,
                    first: first + 1,
                },
            ));
        }
        seen.insert(d.vdev.clone(), i);
        let mut refuse = |what: String| {
            cx.diag(
                pos,
                DiagnosticKind::Unsupported,
                "disk",
                format!("disk entry {} ({}): {what}", i + 1, d.vdev),
            );
        };
        let empty = d.format == DiskFormat::Empty || d.target.as_deref().is_none_or(str::is_empty);
        // An empty cdrom drive starts with no medium; `rxl cd-insert` puts one in.
        let served = matches!(d.format, DiskFormat::Raw | DiskFormat::Qcow2);
        if !(served || d.is_cdrom && empty) {
            refuse(format!(
                "format {} is not supported: rxen serves raw and qcow2 images and block devices only",
                d.format
            ));
        }
        if let Some(s) = &d.script {
            refuse(format!(
                "hotplug script \"{s}\" is not supported: rxen opens the target path itself"
            ));
        }
        if let Some(b) = &d.backend {
            refuse(format!(
                "backend domain \"{b}\" is not supported: rxen serves every disk itself"
            ));
        }
        if !d.colo.is_empty() {
            refuse("COLO replication is not supported".into());
        }
        if let Some(t) = d.backend_type {
            cx.diag(
                pos,
                DiagnosticKind::Warning,
                "disk",
                format!(
                    "disk entry {} ({}): backendtype={} is ignored: rxen serves every disk itself",
                    i + 1,
                    d.vdev,
                    t.as_str()
                ),
            );
        }
        disks.push(d);
    }
    Ok(disks)
}

fn read_vifs(cx: &mut Cx<'_>) -> R<Vec<VifSpec>> {
    let Some((specs, _)) = cx.strings(
        "vif",
        "a list of vif specs, e.g. vif = [ 'bridge=xenbr0' ]",
        false,
    )?
    else {
        return Ok(Vec::new());
    };
    let mut vifs: Vec<VifSpec> = Vec::new();
    let mut macs: HashSet<MacAddr> = HashSet::new();
    for (i, (spec, pos)) in specs.into_iter().enumerate() {
        let v = parse_vif_spec(&spec).map_err(|source| {
            cx.err(
                pos,
                ConfigErrorKind::Vif {
                    index: i + 1,
                    spec: spec.clone(),
                    source,
                },
            )
        })?;
        let n = i + 1;
        let mut say = |kind, what: String| {
            cx.diag(pos, kind, "vif", format!("vif entry {n}: {what}"));
        };
        if let Some(m) = v.mac {
            if !macs.insert(m) {
                say(
                    DiagnosticKind::Warning,
                    format!("MAC {m} is also used by an earlier vif"),
                );
            }
        }
        if let Some(b) = &v.backend {
            say(
                DiagnosticKind::Unsupported,
                format!("backend domain \"{b}\" is not supported: rxen serves every vif itself"),
            );
        }
        if let Some(g) = &v.gatewaydev {
            say(
                DiagnosticKind::Unsupported,
                format!("gatewaydev \"{g}\" is not supported (routed/NAT networking)"),
            );
        }
        if let Some(vl) = &v.vlan {
            say(
                DiagnosticKind::Unsupported,
                format!("vlan \"{vl}\" is not supported"),
            );
        }
        for k in v.other.keys() {
            say(DiagnosticKind::Unsupported, format!("{k} is not supported"));
        }
        if v.accel.is_some() {
            say(
                DiagnosticKind::Warning,
                "the accel parameter for vifs is currently not supported".into(),
            );
        }
        if let Some(m) = &v.model {
            say(
                DiagnosticKind::Warning,
                format!("model \"{m}\" is ignored: rxen guests get a virtio network device"),
            );
        }
        vifs.push(v);
    }
    Ok(vifs)
}
