//! Writing a [`DomainConfig`] back as xl.cfg text that parses to the same config.

use crate::cpus::CpuAffinity;
use crate::disk::{DiskAccess, DiskSpec};
use crate::model::{Action, DomainConfig};
use crate::vif::{Rate, VifSpec};
use std::fmt::Write as _;

/// A double-quoted xl.cfg string with the escapes the lexer reads.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list<I: IntoIterator<Item = String>>(items: I) -> String {
    let items: Vec<String> = items.into_iter().collect();
    if items.is_empty() {
        "[]".into()
    } else {
        format!("[ {} ]", items.join(", "))
    }
}

/// A CPU set as ranges: "0-3,5".
pub fn cpu_ranges(cpus: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = cpus.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&end.saturating_add(1)) {
            end = end.saturating_add(1);
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// A rate as `rate=` text that reads back as the same bytes and interval.
pub fn rate_text(r: &Rate) -> String {
    let interval = r.interval_us.max(1);
    let per_sec = (u128::from(r.bytes_per_interval) * 1_000_000).div_ceil(u128::from(interval));
    format!("{}B/s@{}us", per_sec.max(1), interval)
}

/// A disk spec in xl's `key=value` form, `target=` last.
pub fn disk_spec_text(d: &DiskSpec) -> String {
    let mut parts = vec![
        format!("format={}", d.format),
        format!("vdev={}", d.vdev),
        format!(
            "access={}",
            match d.access {
                DiskAccess::ReadOnly => "r",
                DiskAccess::ReadWrite => "w",
                DiskAccess::ReadWriteShared => "w!",
            }
        ),
    ];
    if d.is_cdrom {
        parts.push("devtype=cdrom".into());
    }
    if let Some(b) = &d.backend {
        parts.push(format!("backend={b}"));
    }
    if let Some(b) = d.backend_type {
        parts.push(format!("backendtype={}", b.as_str()));
    }
    if let Some(s) = &d.script {
        parts.push(format!("script={s}"));
    }
    if let Some(s) = &d.specification {
        parts.push(format!("specification={s}"));
    }
    if d.direct_io_safe {
        parts.push("direct-io-safe".into());
    }
    match d.discard {
        Some(true) => parts.push("discard".into()),
        Some(false) => parts.push("no-discard".into()),
        None => {}
    }
    match d.trusted {
        Some(true) => parts.push("trusted".into()),
        Some(false) => parts.push("untrusted".into()),
        None => {}
    }
    if let Some(g) = d.grant_usage {
        parts.push(format!("grant_usage={}", u8::from(g)));
    }
    for (k, v) in &d.colo {
        match (k.as_str(), v.as_str()) {
            ("colo", "1") => parts.push("colo".into()),
            ("colo", _) => parts.push("no-colo".into()),
            _ => parts.push(format!("{k}={v}")),
        }
    }
    if let Some(t) = &d.target {
        parts.push(format!("target={t}"));
    }
    parts.join(",")
}

/// A vif spec as comma-separated `key=value` items.
pub fn vif_spec_text(v: &VifSpec) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut kv = |k: &str, val: &Option<String>| {
        if let Some(val) = val {
            parts.push(format!("{k}={val}"));
        }
    };
    kv("mac", &v.mac.map(|m| m.to_string()));
    kv("bridge", &v.bridge);
    kv("ip", &(!v.ip.is_empty()).then(|| v.ip.join(" ")));
    kv("script", &v.script);
    kv("vifname", &v.vifname);
    kv("rate", &v.rate.as_ref().map(rate_text));
    kv("model", &v.model);
    kv("type", &v.vif_type);
    kv("backend", &v.backend);
    kv("mtu", &v.mtu.map(|m| m.to_string()));
    kv("devid", &v.devid.map(|m| m.to_string()));
    kv("gatewaydev", &v.gatewaydev);
    kv("vlan", &v.vlan);
    kv("accel", &v.accel);
    for (k, val) in &v.other {
        parts.push(format!("{k}={val}"));
    }
    match v.trusted {
        Some(true) => parts.push("trusted".into()),
        Some(false) => parts.push("untrusted".into()),
        None => {}
    }
    parts.join(",")
}

fn json_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) if i >= 0 => i.to_string(),
            _ => quote(&n.to_string()),
        },
        serde_json::Value::String(s) => quote(s),
        serde_json::Value::Array(items) => list(items.iter().map(json_value)),
        serde_json::Value::Bool(b) => u8::from(*b).to_string(),
        other => quote(&other.to_string()),
    }
}

impl DomainConfig {
    /// This configuration as xl.cfg text; parsing it gives this configuration back.
    pub fn to_xl_cfg(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| {
            let _ = writeln!(out, "{k} = {v}");
        };
        line("name", quote(&self.name));
        if let Some(u) = &self.uuid {
            line("uuid", quote(u));
        }
        line("type", quote(self.domain_type.as_str()));
        line("memory", self.memory_mib.to_string());
        line("maxmem", self.maxmem_mib.to_string());
        line("vcpus", self.vcpus.to_string());
        line("maxvcpus", self.maxvcpus.to_string());
        match &self.cpus {
            Some(CpuAffinity::All) => line("cpus", quote("all")),
            Some(CpuAffinity::Set(s)) => line("cpus", quote(&cpu_ranges(s))),
            Some(CpuAffinity::PerVcpu(p)) => {
                line("cpus", list(p.iter().map(|s| quote(&cpu_ranges(s)))))
            }
            None => {}
        }
        line("cpu_weight", self.cpu_weight.to_string());
        line("cap", self.cap.to_string());
        if let Some(p) = &self.pool {
            line("pool", quote(p));
        }
        let opt = |v: &Option<String>| v.as_deref().map(quote);
        for (k, v) in [
            ("kernel", opt(&self.kernel)),
            ("ramdisk", opt(&self.ramdisk)),
            ("cmdline", opt(&self.cmdline)),
            ("bootloader", opt(&self.bootloader)),
        ] {
            if let Some(v) = v {
                line(k, v);
            }
        }
        if !self.bootloader_args.is_empty() {
            line(
                "bootloader_args",
                list(self.bootloader_args.iter().map(|s| quote(s))),
            );
        }
        if !self.disks.is_empty() {
            line(
                "disk",
                list(self.disks.iter().map(|d| quote(&disk_spec_text(d)))),
            );
        }
        if !self.vifs.is_empty() {
            line(
                "vif",
                list(self.vifs.iter().map(|v| quote(&vif_spec_text(v)))),
            );
        }
        let act = |a: Action| quote(a.as_str());
        line("on_poweroff", act(self.on_poweroff));
        line("on_reboot", act(self.on_reboot));
        line("on_watchdog", act(self.on_watchdog));
        line("on_crash", act(self.on_crash));
        line("on_soft_reset", act(self.on_soft_reset));
        if self.vnc {
            line("vnc", "1".into());
        }
        if self.sdl {
            line("sdl", "1".into());
        }
        if !self.vfb.is_empty() {
            line("vfb", list(self.vfb.iter().map(|s| quote(s))));
        }
        if !self.serial.is_empty() {
            line("serial", list(self.serial.iter().map(|s| quote(s))));
        }
        if self.ha {
            line("ha", "1".into());
        }
        if !self.xen_shell.is_empty() {
            line("xen_shell", list(self.xen_shell.iter().map(|s| quote(s))));
        }
        if let Some(h) = &self.pool_host {
            line("pool_host", quote(h));
        }
        if let Some(g) = &self.pool_anti_affinity {
            line("pool_anti_affinity", quote(g));
        }
        for (k, v) in &self.other_keys {
            line(k, json_value(v));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(cpu_ranges(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8");
        assert_eq!(cpu_ranges(&[]), "");
    }

    #[test]
    fn rates_read_back() {
        for spec in [
            "10Mb/s@20ms",
            "1B/s@1us",
            "8Gb/s",
            "1B/s@4294s",
            "3B/s@7us",
            "100Mb/s",
        ] {
            let r = crate::vif::parse_rate(spec).expect("valid");
            assert_eq!(crate::vif::parse_rate(&rate_text(&r)), Ok(r), "{spec}");
        }
    }

    #[test]
    fn quoting_reads_back() {
        let s = "a\"b\\c\nd\te\u{1}f café";
        let text = format!("name = 'x'\nkernel = 'k'\nextra = {}\n", quote(s));
        let p = crate::parse(&text, "q", &[]).expect("parses");
        assert_eq!(p.config.cmdline.as_deref(), Some(s));
    }
}
