//! Network interfaces as rxend plumbs them: a TAP per vif (`vif<domid>.<devid>` or `vifname=`),
//! attached to its bridge (`vif-bridge`, the default), routed (`vif-route`: a host route to each
//! `ip=` address and proxy ARP), or handed to a hotplug script called as Xen calls it; MACs
//! generated stably under Xen's 00:16:3e prefix; and everything undone when the domain ends.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use rxen_proto::vmspec::{NicDevice, NicRate};
use serde::{Deserialize, Serialize};
use xlcfg::VifSpec;

/// The bridge a vif joins when its spec names none.
pub const DEFAULT_BRIDGE: &str = "xenbr0";
/// Where Xen keeps its hotplug scripts; a `script=` without a `/` is looked up here.
pub const SCRIPT_DIR: &str = "/etc/xen/scripts";
/// Default `rate=` interval (Xen's 50 ms).
pub const DEFAULT_RATE_INTERVAL_US: u64 = 50_000;
/// File in the run directory listing the plugged vifs, so that they can be unplugged by a
/// later rxend too.
pub const VIFS_FILE: &str = "vifs.json";

/// Why a vif cannot be plugged.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The bridge does not exist.
    #[error("vif {devid}: bridge {bridge} does not exist (create it with `ip link add {bridge} type bridge && ip link set {bridge} up`; see docs/networking.md)")]
    NoBridge {
        /// The vif's device ID.
        devid: u32,
        /// The bridge.
        bridge: String,
    },
    /// The named interface is not a bridge.
    #[error("vif {devid}: {bridge} is not a Linux bridge")]
    NotABridge {
        /// The vif's device ID.
        devid: u32,
        /// The interface.
        bridge: String,
    },
    /// The TAP name is unusable or taken.
    #[error("vif {devid}: interface name {name:?}: {reason}")]
    Name {
        /// The vif's device ID.
        devid: u32,
        /// The name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An `ip=` entry that is not an IPv4 address.
    #[error("vif {devid}: ip={ip:?} is not an IPv4 address")]
    BadIp {
        /// The vif's device ID.
        devid: u32,
        /// The entry.
        ip: String,
    },
    /// `vif-route` without `ip=`.
    #[error("vif {0}: script vif-route needs ip= (the addresses to route to the guest)")]
    RouteWithoutIp(u32),
    /// The hotplug script is missing.
    #[error("vif {devid}: hotplug script {script} not found")]
    NoScript {
        /// The vif's device ID.
        devid: u32,
        /// The script path.
        script: String,
    },
    /// A command failed.
    #[error("vif {devid}: `{command}` failed: {output}")]
    Command {
        /// The vif's device ID.
        devid: u32,
        /// The command line.
        command: String,
        /// Its stderr (or the spawn error).
        output: String,
    },
    /// Two vifs with one device ID.
    #[error("vif {0}: device ID already in use by another vif of this domain")]
    Duplicate(u32),
}

/// How a vif's host side is wired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Wiring {
    /// Built-in vif-bridge: the TAP is a port of `bridge`.
    Bridge {
        /// The bridge.
        bridge: String,
    },
    /// Built-in vif-route: host routes to the guest's addresses, proxy ARP on the TAP.
    Route,
    /// An external script, called with `online` and `offline`.
    Script {
        /// Its path.
        path: PathBuf,
        /// The bridge passed in its environment.
        bridge: String,
    },
}

/// A plugged vif, as recorded in [`VIFS_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluggedVif {
    /// What the VMM opens.
    pub nic: NicDevice,
    /// The domain.
    pub domid: u32,
    /// How the host side is wired.
    pub wiring: Wiring,
}

impl PluggedVif {
    /// The bridge column of `network-list` and the `bridge` variable of scripts.
    pub fn bridge(&self) -> &str {
        match &self.wiring {
            Wiring::Bridge { bridge } | Wiring::Script { bridge, .. } => bridge,
            Wiring::Route => "",
        }
    }

    /// The script, as xl shows it.
    pub fn script(&self) -> String {
        match &self.wiring {
            Wiring::Bridge { .. } => format!("{SCRIPT_DIR}/vif-bridge"),
            Wiring::Route => format!("{SCRIPT_DIR}/vif-route"),
            Wiring::Script { path, .. } => path.display().to_string(),
        }
    }
}

/// A MAC under 00:16:3e derived from the domain's UUID and the vif's device ID (stable across
/// restarts of the same domain); the top bit of the fourth byte is clear, as in Xen.
pub fn generate_mac(uuid: &str, devid: u32) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uuid.bytes().chain(devid.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    format!("00:16:3e:{:02x}:{:02x}:{:02x}", b[0] & 0x7f, b[1], b[2])
}

fn run(
    devid: u32,
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
) -> Result<(), NetworkError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .map_err(|e| NetworkError::Command {
            devid,
            command: command.clone(),
            output: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Command {
            devid,
            command,
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ip(devid: u32, args: &[&str]) -> Result<(), NetworkError> {
    run(devid, "ip", args, &[])
}

fn iface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn check_bridge(devid: u32, bridge: &str) -> Result<(), NetworkError> {
    let dir = Path::new("/sys/class/net").join(bridge);
    if bridge.contains('/') || !dir.exists() {
        return Err(NetworkError::NoBridge {
            devid,
            bridge: bridge.to_string(),
        });
    }
    if !dir.join("bridge").exists() {
        return Err(NetworkError::NotABridge {
            devid,
            bridge: bridge.to_string(),
        });
    }
    Ok(())
}

/// Which wiring a `script=` value asks for.
fn wiring_for(devid: u32, vif: &VifSpec) -> Result<Wiring, NetworkError> {
    let bridge = vif
        .bridge
        .clone()
        .unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
    let Some(script) = vif.script.as_deref() else {
        return Ok(Wiring::Bridge { bridge });
    };
    let base = script.rsplit('/').next().unwrap_or(script);
    let in_xen_dir = !script.contains('/') || script.starts_with(SCRIPT_DIR);
    if in_xen_dir && base == "vif-bridge" {
        return Ok(Wiring::Bridge { bridge });
    }
    if in_xen_dir && base == "vif-route" {
        return Ok(Wiring::Route);
    }
    let path = if script.contains('/') {
        PathBuf::from(script)
    } else {
        Path::new(SCRIPT_DIR).join(script)
    };
    if !path.is_file() {
        return Err(NetworkError::NoScript {
            devid,
            script: path.display().to_string(),
        });
    }
    Ok(Wiring::Script { path, bridge })
}

/// Turns a `vif =` entry into the NIC the VMM opens and how its host side is to be wired;
/// checks everything that can be checked before anything is created.
pub fn describe_vif(
    vif: &VifSpec,
    domid: u32,
    devid: u32,
    uuid: &str,
) -> Result<PluggedVif, NetworkError> {
    let devid = vif.devid.unwrap_or(devid);
    let tap = vif
        .vifname
        .clone()
        .unwrap_or_else(|| format!("vif{domid}.{devid}"));
    if tap.is_empty() || tap.len() > 15 || tap.contains(['/', ' ', ':']) {
        return Err(NetworkError::Name {
            devid,
            name: tap,
            reason: "not a valid interface name (1 to 15 characters, no '/', ':' or space)".into(),
        });
    }
    let allowed_ips = vif
        .ip
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(|s| {
            s.split('/')
                .next()
                .unwrap_or(s)
                .parse::<Ipv4Addr>()
                .map_err(|_| NetworkError::BadIp {
                    devid,
                    ip: s.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let wiring = wiring_for(devid, vif)?;
    match &wiring {
        Wiring::Bridge { bridge } => check_bridge(devid, bridge)?,
        Wiring::Route if allowed_ips.is_empty() => return Err(NetworkError::RouteWithoutIp(devid)),
        _ => {}
    }
    let mac = vif
        .mac
        .map(|m| m.to_string())
        .unwrap_or_else(|| generate_mac(uuid, devid));
    let rate = vif.rate.map(|r| NicRate {
        bytes: r.bytes_per_interval,
        interval_us: if r.interval_us == 0 {
            DEFAULT_RATE_INTERVAL_US
        } else {
            r.interval_us
        },
    });
    Ok(PluggedVif {
        nic: NicDevice {
            devid,
            mac,
            tap,
            rate,
            allowed_ips,
        },
        domid,
        wiring,
    })
}

fn script_env(v: &PluggedVif) -> Vec<(&'static str, String)> {
    let ips: Vec<String> = v.nic.allowed_ips.iter().map(|a| a.to_string()).collect();
    vec![
        ("script", v.script()),
        ("vif", v.nic.tap.clone()),
        ("bridge", v.bridge().to_string()),
        ("ip", ips.join(" ")),
        ("mac", v.nic.mac.clone()),
        ("domid", v.domid.to_string()),
        ("devid", v.nic.devid.to_string()),
        (
            "XENBUS_PATH",
            format!("backend/vif/{}/{}", v.domid, v.nic.devid),
        ),
    ]
}

/// Opens a queue of the existing TAP `name` for a running VMM (a hot-plug: the
/// VMM opens no path once its guest runs), exactly as the VMM opens one at start-up.
pub fn open_tap(name: &str) -> Result<std::os::fd::OwnedFd, rxen_virtio::net::TapError> {
    rxen_virtio::Tap::open(name).map(|t| t.into_file().into())
}

/// Creates the TAP and wires it; on failure removes what it created.
pub fn plug(v: &PluggedVif) -> Result<(), NetworkError> {
    let devid = v.nic.devid;
    let tap = v.nic.tap.as_str();
    if iface_exists(tap) {
        return Err(NetworkError::Name {
            devid,
            name: tap.to_string(),
            reason: "an interface with this name already exists".into(),
        });
    }
    ip(devid, &["tuntap", "add", "dev", tap, "mode", "tap"])?;
    let wired = (|| {
        match &v.wiring {
            Wiring::Bridge { bridge } => {
                ip(devid, &["link", "set", "dev", tap, "master", bridge])?;
                ip(devid, &["link", "set", "dev", tap, "up"])?;
            }
            Wiring::Route => {
                ip(devid, &["link", "set", "dev", tap, "up"])?;
                let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{tap}/proxy_arp"), "1");
                let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
                for a in &v.nic.allowed_ips {
                    let dst = format!("{a}/32");
                    ip(devid, &["route", "replace", &dst, "dev", tap])?;
                }
            }
            Wiring::Script { path, .. } => {
                let p = path.display().to_string();
                run(devid, &p, &["online"], &script_env(v))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = wired {
        let _ = ip(devid, &["link", "del", "dev", tap]);
        return Err(e);
    }
    Ok(())
}

/// Undoes [`plug`]: runs a script with `offline`, then deletes the TAP (its routes go with it).
/// Returns the problems met, for the log.
pub fn unplug(v: &PluggedVif) -> Vec<String> {
    let mut problems = Vec::new();
    let devid = v.nic.devid;
    if let Wiring::Script { path, .. } = &v.wiring {
        let p = path.display().to_string();
        if let Err(e) = run(devid, &p, &["offline"], &script_env(v)) {
            problems.push(e.to_string());
        }
    }
    if iface_exists(&v.nic.tap) {
        if let Err(e) = ip(devid, &["link", "del", "dev", &v.nic.tap]) {
            problems.push(e.to_string());
        }
    }
    problems
}

/// Reads the vifs recorded in a run directory.
pub fn load_vifs(run_dir: &Path) -> Vec<PluggedVif> {
    std::fs::read(run_dir.join(VIFS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Records the vifs of a run directory.
pub fn save_vifs(run_dir: &Path, vifs: &[PluggedVif]) -> std::io::Result<()> {
    let data = serde_json::to_vec_pretty(vifs).map_err(std::io::Error::other)?;
    crate::record::write_atomic(&run_dir.join(VIFS_FILE), &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_stable_and_xen_prefixed() {
        let a = generate_mac("1234", 0);
        assert_eq!(a, generate_mac("1234", 0));
        assert_ne!(a, generate_mac("1234", 1));
        assert!(a.starts_with("00:16:3e:"));
        let fourth = u8::from_str_radix(&a[9..11], 16).expect("hex");
        assert!(fourth < 0x80);
    }

    #[test]
    fn description() {
        let vif =
            xlcfg::parse_vif_spec("mac=00:16:3e:00:00:01,ip=10.1.0.2,rate=10Mb/s,script=vif-route")
                .expect("vif");
        let v = describe_vif(&vif, 7, 0, "u").expect("describe");
        assert_eq!(v.nic.tap, "vif7.0");
        assert_eq!(v.nic.mac, "00:16:3e:00:00:01");
        assert_eq!(v.nic.allowed_ips, vec![Ipv4Addr::new(10, 1, 0, 2)]);
        assert_eq!(v.wiring, Wiring::Route);
        let rate = v.nic.rate.expect("rate");
        assert_eq!(rate.interval_us, 50_000);
        assert_eq!(rate.bytes, 10_000_000 / 8 / 20);
        let missing = xlcfg::parse_vif_spec("bridge=rxnobr0").expect("vif");
        let e = describe_vif(&missing, 7, 0, "u").expect_err("no bridge");
        assert!(
            e.to_string().contains("bridge rxnobr0 does not exist"),
            "{e}"
        );
        let route = xlcfg::parse_vif_spec("script=vif-route").expect("vif");
        assert!(matches!(
            describe_vif(&route, 7, 0, "u"),
            Err(NetworkError::RouteWithoutIp(0))
        ));
        let long = xlcfg::parse_vif_spec("vifname=abcdefghijklmnop,script=vif-route,ip=1.2.3.4")
            .expect("vif");
        assert!(matches!(
            describe_vif(&long, 7, 0, "u"),
            Err(NetworkError::Name { .. })
        ));
    }
}
