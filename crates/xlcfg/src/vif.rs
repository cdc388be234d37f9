//! vif specs as xl-network-configuration(5), xl's parse_nic_config and libxlu_vif.c read them.

use crate::spec::SpecError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = SpecError;
    /// Six hex bytes of one or two digits joined by `:` (or `-`); multicast addresses are refused.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = |why| SpecError::BadMac {
            value: s.to_string(),
            why,
        };
        let mut out = [0u8; 6];
        let mut n = 0usize;
        // xl skips any one character between bytes; `:` and `-` are the ones people write
        for part in s.split([':', '-']) {
            let slot = out.get_mut(n).ok_or_else(|| bad("more than six bytes"))?;
            if part.is_empty() || part.len() > 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad("each byte must be one or two hex digits"));
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad("not hex"))?;
            n += 1;
        }
        if n != 6 {
            return Err(bad("fewer than six bytes"));
        }
        if out[0] & 1 == 1 {
            return Err(bad(
                "a multicast address (odd first byte) cannot be a NIC's address",
            ));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A vif rate limit: `bytes_per_interval` bytes of credit every `interval_us` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Credit per interval, in bytes.
    pub bytes_per_interval: u64,
    /// The replenish interval, in microseconds.
    pub interval_us: u64,
}

/// One parsed `vif=[...]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VifSpec {
    /// `mac=`; `None` = generated under 00:16:3e.
    pub mac: Option<MacAddr>,
    /// `bridge=`; `None` = xenbr0.
    pub bridge: Option<String>,
    /// `ip=`: the guest's addresses (space-separated in xl.cfg).
    pub ip: Vec<String>,
    /// `script=`; `None` = vif-bridge.
    pub script: Option<String>,
    /// `vifname=`: the host-side interface name.
    pub vifname: Option<String>,
    /// `rate=`.
    pub rate: Option<Rate>,
    /// `model=` (HVM emulated NIC model).
    pub model: Option<String>,
    /// `type=` (`vif` or `ioemu`).
    pub vif_type: Option<String>,
    /// `backend=`: the domain that serves the NIC.
    pub backend: Option<String>,
    /// `mtu=`.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// `devid=`.
    #[serde(default)]
    pub devid: Option<u32>,
    /// `gatewaydev=` (or the deprecated `netdev=`).
    #[serde(default)]
    pub gatewaydev: Option<String>,
    /// `vlan=`.
    #[serde(default)]
    pub vlan: Option<String>,
    /// `accel=` (xl only warns that it is not supported).
    #[serde(default)]
    pub accel: Option<String>,
    /// `trusted` / `untrusted`; `None` = default.
    #[serde(default)]
    pub trusted: Option<bool>,
    /// Other keys xl accepts but rxen does not model (`forwarddev`, `colo_*`).
    #[serde(default)]
    pub other: BTreeMap<String, String>,
}

/// strtoull(s, &end, 0) on a leading run of digits: (value, bytes consumed); value saturates.
fn c_strtoull_digits(s: &str) -> (u64, usize) {
    let b = s.as_bytes();
    let (radix, start) = if b.len() > 1 && b[0] == b'0' {
        (8u32, 1)
    } else {
        (10, 0)
    };
    let mut v: u64 = 0;
    let mut n = start;
    for &c in b.get(start..).unwrap_or(&[]) {
        let Some(d) = char::from(c).to_digit(radix) else {
            break;
        };
        v = v
            .saturating_mul(u64::from(radix))
            .saturating_add(u64::from(d));
        n += 1;
    }
    (v, n)
}

/// `^[0-9]+[GMK]?[Bb]/s$`
fn matches_rate_re(s: &str) -> bool {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let rest = s.get(digits..).unwrap_or("");
    let rest = rest.strip_prefix(['G', 'M', 'K']).unwrap_or(rest);
    matches!(rest, "B/s" | "b/s")
}

/// `^[0-9]+[mu]?s?$`
fn matches_interval_re(s: &str) -> bool {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let rest = s.get(digits..).unwrap_or("");
    let rest = rest.strip_prefix(['m', 'u']).unwrap_or(rest);
    matches!(rest, "" | "s")
}

const U32_MAX: u64 = u32::MAX as u64;

/// Parses a vif `rate=` value (`RATE/s[@INTERVAL]`) exactly as libxlu's xlu_vif_parse_rate does.
pub fn parse_rate(rate: &str) -> Result<Rate, SpecError> {
    let bad = |why| SpecError::BadRate {
        value: rate.to_string(),
        why,
    };
    let (r, interval) = match rate.split_once('@') {
        Some((r, i)) => (r, Some(i)),
        None => (rate, None),
    };
    if r.is_empty() {
        return Err(bad("no rate specified; expected e.g. 10Mb/s or 1MB/s@20ms"));
    }
    if !matches_rate_re(r) {
        return Err(bad(
            "expected NUMBER[K|M|G]B/s (bytes) or NUMBER[K|M|G]b/s (bits)",
        ));
    }
    let (mut bytes_per_sec, n) = c_strtoull_digits(r);
    if bytes_per_sec == 0 || bytes_per_sec > U32_MAX {
        return Err(bad("the number must be between 1 and 4294967295"));
    }
    let b = r.as_bytes();
    let p = b.get(n).copied();
    match p {
        Some(b'G') => bytes_per_sec *= 1_000_000_000,
        Some(b'M') => bytes_per_sec *= 1_000_000,
        Some(b'K') => bytes_per_sec *= 1_000,
        _ => {}
    }
    if p == Some(b'b') || b.get(n + 1) == Some(&b'b') {
        bytes_per_sec /= 8;
    }
    let mut interval_us: u64 = 50_000;
    if let Some(i) = interval {
        if !matches_interval_re(i) {
            return Err(bad("invalid interval; expected NUMBER[s|ms|us] after @"));
        }
        let (mut v, n) = c_strtoull_digits(i);
        if v == 0 || v > U32_MAX {
            return Err(bad(
                "invalid interval; it must be between 1 and 4294967295 units",
            ));
        }
        match i.as_bytes().get(n) {
            Some(b's') | None => v = v.saturating_mul(1_000_000),
            Some(b'm') => v = v.saturating_mul(1_000),
            _ => {}
        }
        if v > U32_MAX {
            return Err(bad(
                "interval overflow; the interval must be below 4294967296 us",
            ));
        }
        interval_us = v;
    }
    if bytes_per_sec > u64::MAX / interval_us {
        return Err(bad("rate overflow"));
    }
    Ok(Rate {
        bytes_per_interval: bytes_per_sec * interval_us / 1_000_000,
        interval_us,
    })
}

fn number(key: &'static str, v: &str) -> Result<u32, SpecError> {
    crate::number::parse_c_long(v)
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| SpecError::BadVifValue {
            key,
            value: v.to_string(),
            expected: "a non-negative number",
        })
}

/// Parses one xl vif spec (comma-separated `key=value` items; `''` is a valid vif); also
/// used by `rxl network-attach` with its arguments joined by `,`.
pub fn parse_vif_spec(spec: &str) -> Result<VifSpec, SpecError> {
    let mut vif = VifSpec::default();
    for token in spec.split(',') {
        let token = token.trim_matches([' ', '\t']);
        if token.is_empty() {
            continue;
        }
        let Some((key, value)) = token.split_once('=') else {
            match token {
                "trusted" => vif.trusted = Some(true),
                "untrusted" => vif.trusted = Some(false),
                _ => return Err(SpecError::UnknownVifArgument(token.to_string())),
            }
            continue;
        };
        let s = Some(value.to_string());
        match key {
            "mac" => vif.mac = Some(value.parse()?),
            "bridge" => vif.bridge = s,
            "ip" => vif.ip = value.split_whitespace().map(str::to_string).collect(),
            "script" => vif.script = s,
            "vifname" => vif.vifname = s,
            "rate" => vif.rate = Some(parse_rate(value)?),
            "model" => vif.model = s,
            "type" => match value {
                "vif" | "ioemu" => vif.vif_type = s,
                _ => {
                    return Err(SpecError::BadVifValue {
                        key: "type",
                        value: value.to_string(),
                        expected: "vif or ioemu",
                    })
                }
            },
            "backend" => vif.backend = s,
            "mtu" => {
                let m = number("mtu", value)?;
                if !(68..=65535).contains(&m) {
                    return Err(SpecError::BadVifValue {
                        key: "mtu",
                        value: value.to_string(),
                        expected: "an MTU between 68 and 65535",
                    });
                }
                vif.mtu = Some(m)
            }
            "devid" => vif.devid = Some(number("devid", value)?),
            "gatewaydev" | "netdev" => vif.gatewaydev = s,
            "vlan" => vif.vlan = s,
            "accel" => vif.accel = s,
            k if k == "forwarddev" || k.starts_with("colo_") => {
                vif.other.insert(k.to_string(), value.to_string());
            }
            _ => return Err(SpecError::UnknownVifArgument(token.to_string())),
        }
    }
    Ok(vif)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_spec() {
        let v = parse_vif_spec(
            "mac=00:16:3E:01:02:0a, bridge=xenbr1, ip=10.0.0.2 10.0.0.3,script=vif-bridge,vifname=web0,rate=10Mb/s@20ms,model=e1000,type=ioemu,backend=netdom,mtu=9000,devid=3",
        )
        .expect("valid");
        assert_eq!(v.mac, Some(MacAddr([0, 0x16, 0x3e, 1, 2, 0x0a])));
        assert_eq!(
            v.mac.map(|m| m.to_string()).as_deref(),
            Some("00:16:3e:01:02:0a")
        );
        assert_eq!(v.bridge.as_deref(), Some("xenbr1"));
        assert_eq!(v.ip, vec!["10.0.0.2", "10.0.0.3"]);
        assert_eq!(v.vifname.as_deref(), Some("web0"));
        assert_eq!(
            v.rate,
            Some(Rate {
                bytes_per_interval: 25_000,
                interval_us: 20_000
            })
        );
        assert_eq!(v.model.as_deref(), Some("e1000"));
        assert_eq!(v.vif_type.as_deref(), Some("ioemu"));
        assert_eq!(v.backend.as_deref(), Some("netdom"));
        assert_eq!(v.mtu, Some(9000));
        assert_eq!(v.devid, Some(3));
        assert_eq!(parse_vif_spec(""), Ok(VifSpec::default()));
    }

    #[test]
    fn macs() {
        assert!("00:16:3e:aa:bb".parse::<MacAddr>().is_err());
        assert!("00:16:3e:aa:bb:cc:dd".parse::<MacAddr>().is_err());
        assert!("00:16:3e:aa:bb:xx".parse::<MacAddr>().is_err());
        assert!("01:16:3e:aa:bb:cc".parse::<MacAddr>().is_err());
        assert!("00:16:3e:aa:bb:1cc".parse::<MacAddr>().is_err());
        assert_eq!(
            "0:16:3e:a:b:c".parse::<MacAddr>(),
            Ok(MacAddr([0, 0x16, 0x3e, 10, 11, 12]))
        );
    }

    #[test]
    fn rates() {
        assert_eq!(
            parse_rate("1MB/s@20ms"),
            Ok(Rate {
                bytes_per_interval: 20_000,
                interval_us: 20_000
            })
        );
        assert_eq!(
            parse_rate("250KB/s"),
            Ok(Rate {
                bytes_per_interval: 12_500,
                interval_us: 50_000
            })
        );
        // strtoull base 0: a leading zero is octal
        assert_eq!(
            parse_rate("010B/s@1s"),
            Ok(Rate {
                bytes_per_interval: 8,
                interval_us: 1_000_000
            })
        );
        assert!(parse_rate("10Mb/s@").is_err());
        assert!(parse_rate("").is_err());
    }

    #[test]
    fn bad_values() {
        assert!(matches!(
            parse_vif_spec("type=tap"),
            Err(SpecError::BadVifValue { key: "type", .. })
        ));
        assert!(matches!(
            parse_vif_spec("mtu=big"),
            Err(SpecError::BadVifValue { key: "mtu", .. })
        ));
        assert!(matches!(
            parse_vif_spec("mtu=20"),
            Err(SpecError::BadVifValue { key: "mtu", .. })
        ));
        assert!(matches!(
            parse_vif_spec("devid=-1"),
            Err(SpecError::BadVifValue { key: "devid", .. })
        ));
        let v =
            parse_vif_spec("netdev=eth1,vlan=10p/20,accel=x,forwarddev=eth2,colo_sock_mirror_id=1")
                .expect("valid");
        assert_eq!(v.gatewaydev.as_deref(), Some("eth1"));
        assert_eq!(v.vlan.as_deref(), Some("10p/20"));
        assert_eq!(v.accel.as_deref(), Some("x"));
        assert_eq!(v.other.len(), 2);
    }
}
