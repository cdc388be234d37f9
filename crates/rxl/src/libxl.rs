//! libxl's JSON shape of a domain's configuration, as `xl create -n` prints it
//! (`libxl_domain_config_to_json`) and `xl list -l` wraps it (`[{"domid": N, "config": {...}}]`):
//! `c_info`, `b_info`, `disks`, `nics` and the `on_*` actions, under libxl's field names and
//! enum spellings (tools/libs/light/libxl_types.idl). What rxen keeps that libxl has no field
//! for goes in one object of its own, `rxen`, so that tools which parse xl's JSON find libxl's
//! fields where they expect them and nothing else in their way.
//!
//! Like libxl's generator, fields that hold nothing are left out (a string never set, an empty
//! list, a zero flag); unlike it, rxl writes the values rxen resolved (memory, vCPUs, weight,
//! cap and all five `on_*` actions) even where they are the defaults, because rxen applies its
//! defaults before anything is printed.

use std::collections::BTreeMap;

use serde::Serialize;
use xlcfg::{Action, CpuAffinity, DiskAccess, DiskSpec, DomainConfig, DomainType, VifSpec};

/// `libxl_domain_config`, as much of it as rxen has.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LibxlConfig {
    /// `libxl_domain_create_info`.
    pub c_info: CreateInfo,
    /// `libxl_domain_build_info`.
    pub b_info: BuildInfo,
    /// `libxl_device_disk` per `disk=` entry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// `libxl_device_nic` per `vif=` entry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    /// `on_poweroff`, in libxl's spelling (`destroy`, `restart_rename`, ...).
    pub on_poweroff: &'static str,
    /// `on_reboot`.
    pub on_reboot: &'static str,
    /// `on_watchdog`.
    pub on_watchdog: &'static str,
    /// `on_crash`.
    pub on_crash: &'static str,
    /// `on_soft_reset`.
    pub on_soft_reset: &'static str,
    /// What rxen keeps that libxl has no field for.
    pub rxen: RxenExtras,
}

/// One element of `xl list -l`'s array.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListEntry {
    /// The domain's ID.
    pub domid: u32,
    /// Its configuration.
    pub config: LibxlConfig,
}

/// `libxl_domain_create_info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateInfo {
    /// `type`: `pv`, `pvh` or `hvm`.
    #[serde(rename = "type")]
    pub domain_type: &'static str,
    /// `name`.
    pub name: String,
    /// `uuid`; absent until the domain exists when the config names none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// `pool_name` (`pool`); absent for Pool-0's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_name: Option<String>,
}

/// `libxl_domain_build_info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    /// `max_vcpus` (`maxvcpus`).
    pub max_vcpus: u32,
    /// `avail_vcpus`: the vCPUs online at boot, as a bitmap's set bits.
    pub avail_vcpus: Vec<u32>,
    /// `vcpu_hard_affinity`: one CPU list per vCPU (`cpus=`); absent when not pinned.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vcpu_hard_affinity: Vec<Vec<u32>>,
    /// `max_memkb` (`maxmem`).
    pub max_memkb: u64,
    /// `target_memkb` (`memory`).
    pub target_memkb: u64,
    /// `sched_params`.
    pub sched_params: SchedParams,
    /// `kernel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// `cmdline`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// `ramdisk`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramdisk: Option<String>,
    /// `bootloader`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<String>,
    /// `bootloader_args`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bootloader_args: Vec<String>,
    /// The keyed union `u`, written as libxl writes it: `"type.pv": {...}`.
    #[serde(flatten)]
    pub u: TypeInfo,
    /// `arch_arm` (always written by libxl; nothing in it applies here).
    pub arch_arm: Empty,
    /// `arch_x86`.
    pub arch_x86: Empty,
}

/// `libxl_domain_sched_params`: the credit scheduler's weight and cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SchedParams {
    /// `weight` (`cpu_weight`).
    pub weight: u32,
    /// `cap`, percent of one host CPU (0: none).
    pub cap: u32,
}

/// `b_info.u`, keyed by the domain's type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TypeInfo {
    /// `"type.pv"`.
    #[serde(rename = "type.pv")]
    Pv(Empty),
    /// `"type.pvh"`.
    #[serde(rename = "type.pvh")]
    Pvh(Empty),
    /// `"type.hvm"`.
    #[serde(rename = "type.hvm")]
    Hvm(HvmInfo),
}

/// An object with nothing rxen sets in it (`{}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Empty {}

/// `b_info.u.hvm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HvmInfo {
    /// `serial_list` (`serial=`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub serial_list: Vec<String>,
}

/// `libxl_device_disk`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disk {
    /// `backend_domname` (`backend=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_domname: Option<String>,
    /// `pdev_path`: the image or device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdev_path: Option<String>,
    /// `vdev`.
    pub vdev: String,
    /// `backend` (`backendtype=`): `phy`, `tap`, `qdisk`, `standalone`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'static str>,
    /// `format`: `raw`, `qcow2`, `empty`, ...
    pub format: &'static str,
    /// `script`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// `removable`: 1 for a cdrom.
    #[serde(skip_serializing_if = "is_zero")]
    pub removable: u8,
    /// `readwrite`: 1 when the guest may write.
    #[serde(skip_serializing_if = "is_zero")]
    pub readwrite: u8,
    /// `is_cdrom`.
    #[serde(skip_serializing_if = "is_zero")]
    pub is_cdrom: u8,
    /// `direct_io_safe`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub direct_io_safe: bool,
    /// `discard_enable`, a libxl defbool (`"True"`/`"False"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discard_enable: Option<&'static str>,
    /// `specification`: `xen` or `virtio`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub specification: Option<String>,
    /// `colo_enable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colo_enable: Option<&'static str>,
    /// `colo_host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colo_host: Option<String>,
    /// `colo_port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colo_port: Option<i64>,
    /// `colo_export`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colo_export: Option<String>,
    /// `active_disk`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_disk: Option<String>,
    /// `hidden_disk`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_disk: Option<String>,
    /// `trusted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted: Option<&'static str>,
    /// `grant_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_usage: Option<&'static str>,
}

/// `libxl_device_nic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    /// `backend_domname` (`backend=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_domname: Option<String>,
    /// `devid`: `devid=`, else the entry's position, as xl numbers them.
    pub devid: u32,
    /// `mtu`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// `vlan`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<String>,
    /// `model`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `mac`, `00:16:3e:..`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// `ip`: the addresses, space-separated as in xl.cfg.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// `bridge`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// `ifname` (`vifname=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// `script`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// `nictype`: `vif` or `vif_ioemu` (`type=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nictype: Option<&'static str>,
    /// `rate_bytes_per_interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_bytes_per_interval: Option<u64>,
    /// `rate_interval_usecs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_interval_usecs: Option<u64>,
    /// `gatewaydev`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gatewaydev: Option<String>,
    /// `coloft_forwarddev` (`forwarddev=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coloft_forwarddev: Option<String>,
}

/// rxen's own fields, which libxl's structures have no place for.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RxenExtras {
    /// The config file the domain was created from (`list -l`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_path: Option<String>,
    /// `xen_shell`: the users who may manage the domain.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub xen_shell: Vec<String>,
    /// The vdevs opened `w!` (writable even while another domain has them; libxl has only
    /// `readwrite`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared_write_disks: Vec<String>,
    /// `serial=` of a domain that is not HVM (libxl keeps it for HVM only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub serial: Vec<String>,
    /// `vnc=1` (rxen has no VNC display and refuses it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub vnc: bool,
    /// `sdl=1` (refused likewise).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sdl: bool,
    /// `vfb=` entries as written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vfb: Vec<String>,
    /// Keys rxen does not model, as written (see docs/config.md).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub other_keys: BTreeMap<String, serde_json::Value>,
    /// What `bootloader = "pygrub"` chose on the first disk (`create -n` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pygrub: Option<crate::bootloader::PygrubChoice>,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// An `on_*` action in libxl's spelling (`libxl_action_on_shutdown`, lower case).
pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Destroy => "destroy",
        Action::Restart => "restart",
        Action::RenameRestart => "restart_rename",
        Action::Preserve => "preserve",
        Action::CoredumpDestroy => "coredump_destroy",
        Action::CoredumpRestart => "coredump_restart",
        Action::SoftReset => "soft_reset",
    }
}

/// A libxl defbool as its JSON has it.
fn defbool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// `cpus=` as xl stores it: a single list is copied to every vCPU up to `max_vcpus`; a list of
/// lists gives vCPU i entry i (entries past `max_vcpus` are dropped); `all` pins nothing.
fn hard_affinity(cpus: Option<&CpuAffinity>, max_vcpus: u32) -> Vec<Vec<u32>> {
    match cpus {
        None | Some(CpuAffinity::All) => Vec::new(),
        Some(CpuAffinity::Set(set)) => vec![set.clone(); max_vcpus as usize],
        Some(CpuAffinity::PerVcpu(each)) => each.iter().take(max_vcpus as usize).cloned().collect(),
    }
}

fn disk(d: &DiskSpec) -> Disk {
    let colo = |k: &str| d.colo.get(k).cloned();
    Disk {
        backend_domname: d.backend.clone(),
        pdev_path: d.target.clone(),
        vdev: d.vdev.clone(),
        backend: d.backend_type.map(|b| b.as_str()),
        format: d.format.as_str(),
        script: d.script.clone(),
        removable: u8::from(d.removable()),
        readwrite: u8::from(d.access.is_writable()),
        is_cdrom: u8::from(d.is_cdrom),
        direct_io_safe: d.direct_io_safe,
        discard_enable: d.discard.map(defbool),
        specification: d.specification.clone(),
        colo_enable: d.colo.contains_key("colo").then_some("True"),
        colo_host: colo("colo-host"),
        colo_port: colo("colo-port").and_then(|p| p.parse().ok()),
        colo_export: colo("colo-export"),
        active_disk: colo("active-disk"),
        hidden_disk: colo("hidden-disk"),
        trusted: d.trusted.map(defbool),
        grant_usage: d.grant_usage.map(defbool),
    }
}

fn nic(index: usize, v: &VifSpec) -> Nic {
    Nic {
        backend_domname: v.backend.clone(),
        devid: v.devid.unwrap_or(index as u32),
        mtu: v.mtu,
        vlan: v.vlan.clone(),
        model: v.model.clone(),
        mac: v.mac.map(|m| m.to_string()),
        ip: (!v.ip.is_empty()).then(|| v.ip.join(" ")),
        bridge: v.bridge.clone(),
        ifname: v.vifname.clone(),
        script: v.script.clone(),
        nictype: v.vif_type.as_deref().and_then(|t| match t {
            "vif" => Some("vif"),
            "ioemu" => Some("vif_ioemu"),
            _ => None,
        }),
        rate_bytes_per_interval: v.rate.map(|r| r.bytes_per_interval),
        rate_interval_usecs: v.rate.map(|r| r.interval_us),
        gatewaydev: v.gatewaydev.clone(),
        coloft_forwarddev: v.other.get("forwarddev").cloned(),
    }
}

impl LibxlConfig {
    /// libxl's shape of `cfg`; `config_path` is the file it came from, when known.
    pub fn from_config(cfg: &DomainConfig, config_path: Option<String>) -> LibxlConfig {
        let hvm = cfg.domain_type == DomainType::Hvm;
        let u = match cfg.domain_type {
            DomainType::Pv => TypeInfo::Pv(Empty {}),
            DomainType::Pvh => TypeInfo::Pvh(Empty {}),
            DomainType::Hvm => TypeInfo::Hvm(HvmInfo {
                serial_list: cfg.serial.clone(),
            }),
        };
        LibxlConfig {
            c_info: CreateInfo {
                domain_type: cfg.domain_type.as_str(),
                name: cfg.name.clone(),
                uuid: cfg.uuid.clone(),
                pool_name: cfg.pool.clone(),
            },
            b_info: BuildInfo {
                max_vcpus: cfg.maxvcpus,
                avail_vcpus: (0..cfg.vcpus).collect(),
                vcpu_hard_affinity: hard_affinity(cfg.cpus.as_ref(), cfg.maxvcpus),
                max_memkb: cfg.maxmem_mib.saturating_mul(1024),
                target_memkb: cfg.memory_mib.saturating_mul(1024),
                sched_params: SchedParams {
                    weight: cfg.cpu_weight,
                    cap: cfg.cap,
                },
                kernel: cfg.kernel.clone(),
                cmdline: cfg.cmdline.clone(),
                ramdisk: cfg.ramdisk.clone(),
                bootloader: cfg.bootloader.clone(),
                bootloader_args: cfg.bootloader_args.clone(),
                u,
                arch_arm: Empty {},
                arch_x86: Empty {},
            },
            disks: cfg.disks.iter().map(disk).collect(),
            nics: cfg
                .vifs
                .iter()
                .enumerate()
                .map(|(i, v)| nic(i, v))
                .collect(),
            on_poweroff: action_name(cfg.on_poweroff),
            on_reboot: action_name(cfg.on_reboot),
            on_watchdog: action_name(cfg.on_watchdog),
            on_crash: action_name(cfg.on_crash),
            on_soft_reset: action_name(cfg.on_soft_reset),
            rxen: RxenExtras {
                config_path,
                xen_shell: cfg.xen_shell.clone(),
                shared_write_disks: cfg
                    .disks
                    .iter()
                    .filter(|d| d.access == DiskAccess::ReadWriteShared)
                    .map(|d| d.vdev.clone())
                    .collect(),
                serial: if hvm { Vec::new() } else { cfg.serial.clone() },
                vnc: cfg.vnc,
                sdl: cfg.sdl,
                vfb: cfg.vfb.clone(),
                other_keys: cfg.other_keys.clone(),
                pygrub: None,
            },
        }
    }
}

/// JSON as libxl's generator lays it out (yajl, four-space indent).
pub fn to_json<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    value.serialize(&mut ser)?;
    // serde_json writes only UTF-8.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> DomainConfig {
        let text = format!("kernel = \"builtin:testguest\"\n{text}");
        xlcfg::parse(&text, "t.cfg", &[]).expect("config").config
    }

    fn json(cfg: &DomainConfig) -> serde_json::Value {
        let text = to_json(&LibxlConfig::from_config(cfg, None)).expect("json");
        serde_json::from_str(&text).expect("valid JSON")
    }

    #[test]
    fn a_config_in_libxl_field_names() {
        let cfg = parse(
            "name = \"web\"\ntype = \"pvh\"\nkernel = \"/boot/vmlinuz\"\nextra = \"console=hvc0\"\n\
             memory = 256\nmaxmem = 512\nvcpus = 2\nmaxvcpus = 3\ncpus = \"0-1\"\ncap = 50\n\
             disk = [ 'file:/img/web.img,xvda,w', 'vdev=xvdc,devtype=cdrom,access=r,target=/img/cd.iso', 'format=raw,vdev=xvdb,access=w!,backendtype=phy,target=/dev/vg/s' ]\n\
             vif = [ 'mac=00:16:3e:01:02:03,bridge=br0,ip=10.0.0.2 10.0.0.3,rate=10Mb/s', 'type=ioemu' ]\n\
             on_reboot = \"rename-restart\"\nxen_shell = \"alice\"\n",
        );
        let v = json(&cfg);
        assert_eq!(v["c_info"]["type"], "pvh");
        assert_eq!(v["c_info"]["name"], "web");
        assert!(v["c_info"].get("uuid").is_none());
        assert!(v["c_info"].get("pool_name").is_none());
        let pooled = json(&parse("name = \"p\"\npool = \"batch\"\n"));
        assert_eq!(pooled["c_info"]["pool_name"], "batch");
        let b = &v["b_info"];
        assert_eq!(b["max_vcpus"], 3);
        assert_eq!(b["avail_vcpus"], serde_json::json!([0, 1]));
        assert_eq!(
            b["vcpu_hard_affinity"],
            serde_json::json!([[0, 1], [0, 1], [0, 1]])
        );
        assert_eq!(b["max_memkb"], 512 * 1024);
        assert_eq!(b["target_memkb"], 256 * 1024);
        assert_eq!(
            b["sched_params"],
            serde_json::json!({"weight": 256, "cap": 50})
        );
        assert_eq!(b["kernel"], "/boot/vmlinuz");
        assert_eq!(b["cmdline"], "console=hvc0");
        assert_eq!(b["type.pvh"], serde_json::json!({}));
        assert_eq!(b["arch_x86"], serde_json::json!({}));
        let d = &v["disks"];
        assert_eq!(d[0]["pdev_path"], "/img/web.img");
        assert_eq!(d[0]["vdev"], "xvda");
        assert_eq!(d[0]["format"], "raw");
        assert_eq!(d[0]["readwrite"], 1);
        assert!(d[0].get("is_cdrom").is_none());
        assert_eq!(d[1]["is_cdrom"], 1);
        assert_eq!(d[1]["removable"], 1);
        assert!(d[1].get("readwrite").is_none());
        assert_eq!(d[2]["backend"], "phy");
        let n = &v["nics"];
        assert_eq!(n[0]["devid"], 0);
        assert_eq!(n[0]["mac"], "00:16:3e:01:02:03");
        assert_eq!(n[0]["bridge"], "br0");
        assert_eq!(n[0]["ip"], "10.0.0.2 10.0.0.3");
        assert!(n[0]["rate_bytes_per_interval"].as_u64().is_some());
        assert_eq!(n[0]["rate_interval_usecs"], 50000);
        assert_eq!(n[1]["devid"], 1);
        assert_eq!(n[1]["nictype"], "vif_ioemu");
        assert_eq!(v["on_poweroff"], "destroy");
        assert_eq!(v["on_reboot"], "restart_rename");
        assert_eq!(v["on_soft_reset"], "soft_reset");
        assert_eq!(v["rxen"]["xen_shell"], serde_json::json!(["alice"]));
        assert_eq!(v["rxen"]["shared_write_disks"], serde_json::json!(["xvdb"]));
        // Nothing of rxen's own model leaks outside `rxen`.
        for key in ["name", "memory_mib", "vifs", "domain_type", "other_keys"] {
            assert!(v.get(key).is_none(), "{key} at the top level");
        }
    }

    #[test]
    fn unpinned_and_per_vcpu_affinity_and_hvm_serial() {
        let v = json(&parse("name = \"a\"\ncpus = \"all\"\n"));
        assert!(v["b_info"].get("vcpu_hard_affinity").is_none());
        assert_eq!(v["b_info"]["type.pv"], serde_json::json!({}));
        assert!(v.get("disks").is_none() && v.get("nics").is_none());
        let v = json(&parse(
            "name = \"a\"\ntype = \"hvm\"\nvcpus = 2\ncpus = [\"2\", \"3\", \"4\"]\nserial = \"pty\"\n",
        ));
        assert_eq!(
            v["b_info"]["vcpu_hard_affinity"],
            serde_json::json!([[2], [3]])
        );
        assert_eq!(
            v["b_info"]["type.hvm"],
            serde_json::json!({"serial_list": ["pty"]})
        );
        assert!(v["rxen"].get("serial").is_none());
    }

    #[test]
    fn every_action_in_libxl_spelling() {
        let names: Vec<&str> = Action::ALL.into_iter().map(action_name).collect();
        assert_eq!(
            names,
            [
                "destroy",
                "restart",
                "restart_rename",
                "preserve",
                "coredump_destroy",
                "coredump_restart",
                "soft_reset"
            ]
        );
    }

    #[test]
    fn list_entries_wrap_the_config_with_the_domid() {
        let cfg = parse("name = \"a\"\n");
        let entry = ListEntry {
            domid: 7,
            config: LibxlConfig::from_config(&cfg, Some("/etc/xen/a.cfg".into())),
        };
        let v: serde_json::Value =
            serde_json::from_str(&to_json(&vec![entry]).expect("json")).expect("valid");
        assert_eq!(v[0]["domid"], 7);
        assert_eq!(v[0]["config"]["c_info"]["name"], "a");
        assert_eq!(v[0]["config"]["rxen"]["config_path"], "/etc/xen/a.cfg");
        // libxl's generator indents by four spaces.
        assert!(to_json(&Empty {}).is_ok());
        assert!(to_json(&vec![1]).expect("json").contains("\n    1\n"));
    }
}
