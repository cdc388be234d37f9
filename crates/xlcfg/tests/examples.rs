//! Example configs in the shapes Xen and common Xen guides publish: each parses to the
//! expected domain, and survives xl.cfg and JSON round trips.

use xlcfg::{
    parse, Action, CpuAffinity, DiagnosticKind, DiskAccess, DomainConfig, DomainType, MacAddr,
    Parsed, Rate,
};

fn load(name: &str) -> Parsed {
    let path = format!("{}/tests/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example config exists");
    parse(&text, &path, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn round_trip(c: &DomainConfig) {
    let text = c.to_xl_cfg();
    let again = parse(&text, "rendered.cfg", &[]).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(&again.config, c, "xl.cfg round trip:\n{text}");
    let json = serde_json::to_string_pretty(c).expect("serialise");
    let back: DomainConfig = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(&back, c, "JSON round trip");
}

#[test]
fn pv_guest_on_lvm() {
    let p = load("pv-lvm.cfg");
    let c = &p.config;
    assert_eq!(c.name, "web01");
    assert_eq!(c.domain_type, DomainType::Pv);
    assert_eq!((c.memory_mib, c.vcpus), (1024, 2));
    assert_eq!(c.kernel.as_deref(), Some("/boot/vmlinuz-6.1.0-18-amd64"));
    assert_eq!(
        c.ramdisk.as_deref(),
        Some("/boot/initrd.img-6.1.0-18-amd64")
    );
    assert_eq!(c.cmdline.as_deref(), Some("root=/dev/xvda2 ro"));
    assert_eq!(c.disks.len(), 2);
    assert_eq!(c.disks[0].target.as_deref(), Some("/dev/vg0/web01-disk"));
    assert_eq!(c.disks[1].vdev, "xvda1");
    assert_eq!(
        c.vifs[0].mac,
        Some(MacAddr([0x00, 0x16, 0x3e, 0x6b, 0x1c, 0x2d]))
    );
    assert_eq!(c.vifs[0].bridge.as_deref(), Some("xenbr0"));
    assert_eq!(
        (c.on_poweroff, c.on_reboot, c.on_crash),
        (Action::Destroy, Action::Restart, Action::Restart)
    );
    // xm's dhcp is accepted with a warning and kept
    let d: Vec<_> = p
        .diagnostics
        .iter()
        .map(|d| (d.key.as_str(), d.kind, d.line))
        .collect();
    assert_eq!(d, vec![("dhcp", DiagnosticKind::Deprecated, 20)]);
    assert_eq!(c.other_keys["dhcp"], serde_json::json!("dhcp"));
    round_trip(c);
}

#[test]
fn file_backed_pinned_pvh_guest() {
    let p = load("file-backed.cfg");
    let c = &p.config;
    assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
    assert_eq!(c.name, "db1");
    assert_eq!(
        c.uuid.as_deref(),
        Some("b3a4c5d6-1234-4abc-8def-0123456789ab")
    );
    assert_eq!(c.domain_type, DomainType::Pvh);
    assert_eq!(
        (c.memory_mib, c.maxmem_mib, c.vcpus, c.maxvcpus),
        (2048, 4096, 2, 4)
    );
    assert_eq!(c.cpus, Some(CpuAffinity::PerVcpu(vec![vec![2], vec![3]])));
    assert_eq!((c.cpu_weight, c.cap), (512, 150));
    assert_eq!(
        c.cmdline.as_deref(),
        Some("root=/dev/xvda1 console=hvc0 elevator=noop")
    );
    assert_eq!(
        c.disks[0].target.as_deref(),
        Some("/var/lib/xen/images/db1/disk.img")
    );
    assert_eq!(
        c.disks[1].target.as_deref(),
        Some("/var/lib/xen/images/db1/data.img")
    );
    assert_eq!(
        (c.disks[2].vdev.as_str(), c.disks[2].access),
        ("xvdc", DiskAccess::ReadOnly)
    );
    assert_eq!(
        c.vifs[0].rate,
        Some(Rate {
            bytes_per_interval: 625_000,
            interval_us: 50_000
        })
    );
    assert_eq!(c.vifs[0].vifname.as_deref(), Some("db1.0"));
    assert_eq!(
        c.vifs[1].rate,
        Some(Rate {
            bytes_per_interval: 1_000_000,
            interval_us: 100_000
        })
    );
    assert_eq!(
        (c.on_watchdog, c.on_crash),
        (Action::CoredumpRestart, Action::RenameRestart)
    );
    assert_eq!(c.xen_shell, vec!["alice", "bob"]);
    round_trip(c);
}

#[test]
fn old_xm_file() {
    let p = load("xm-old.cfg");
    let c = &p.config;
    assert_eq!(c.name, "legacy");
    assert_eq!(c.domain_type, DomainType::Pv);
    assert_eq!(c.disks[0].target.as_deref(), Some("/dev/vg/legacy-root"));
    assert_eq!(c.disks[1].target.as_deref(), Some("/dev/vg/legacy-swap"));
    assert_eq!(c.cpus, Some(CpuAffinity::Set(vec![0, 2, 3])));
    assert_eq!(
        c.cmdline.as_deref(),
        Some("root=/dev/sda1 ro console=hvc0 xencons=tty")
    );
    assert_eq!(c.vifs[0].ip, vec!["10.0.0.5"]);
    assert_eq!(c.on_crash, Action::Preserve);
    let d: Vec<_> = p
        .diagnostics
        .iter()
        .map(|d| (d.key.as_str(), d.kind))
        .collect();
    assert_eq!(
        d,
        vec![
            ("builder", DiagnosticKind::Deprecated),
            ("nics", DiagnosticKind::Deprecated)
        ]
    );
    assert_eq!(p.unsupported().count(), 0);
    round_trip(c);
}

#[test]
fn xen_examples() {
    let p = load("xlexample.pvlinux");
    let c = &p.config;
    assert!(p.diagnostics.is_empty());
    assert_eq!(
        (c.name.as_str(), c.memory_mib, c.vcpus),
        ("example.pvlinux", 128, 2)
    );
    assert_eq!(c.cmdline.as_deref(), Some("root=/dev/xvda1"));
    assert_eq!(c.vifs, vec![xlcfg::VifSpec::default()]);
    assert_eq!(c.disks[0].target.as_deref(), Some("/dev/vg/guest-volume"));
    round_trip(c);

    let p = load("xlexample.hvm");
    let c = &p.config;
    assert_eq!(c.domain_type, DomainType::Hvm);
    let u: Vec<_> = p.unsupported().map(|d| (d.key.as_str(), d.line)).collect();
    assert_eq!(u, vec![("type", 2), ("sdl", 12)]);
    round_trip(c);
}
