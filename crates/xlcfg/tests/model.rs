//! Every key of the domain model, its default, and every semantic error kind.

use xlcfg::{
    parse, Action, ConfigError, ConfigErrorKind, CpuAffinity, DiagnosticKind, DiskAccess,
    DiskFormat, DomainType, MacAddr, Parsed, Rate, SpecError,
};

const BASE: &str = "name = \"t\"\nkernel = \"/boot/vmlinuz\"\n";

fn ok(extra: &str) -> Parsed {
    let text = format!("{BASE}{extra}");
    parse(&text, "t.cfg", &[]).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn err(extra: &str) -> ConfigError {
    let text = format!("{BASE}{extra}");
    match parse(&text, "t.cfg", &[]) {
        Ok(p) => panic!("{text:?} parsed: {:?}", p.config),
        Err(e) => e,
    }
}

fn kinds(p: &Parsed, key: &str) -> Vec<DiagnosticKind> {
    p.diagnostics
        .iter()
        .filter(|d| d.key == key)
        .map(|d| d.kind)
        .collect()
}

#[test]
fn defaults_are_xens() {
    let p = ok("");
    let c = &p.config;
    assert_eq!(c.name, "t");
    assert_eq!(c.uuid, None);
    assert_eq!(c.domain_type, DomainType::Pv);
    assert_eq!((c.memory_mib, c.maxmem_mib), (32, 32));
    assert_eq!((c.vcpus, c.maxvcpus), (1, 1));
    assert_eq!(c.cpus, None);
    assert_eq!((c.cpu_weight, c.cap), (256, 0));
    assert_eq!(c.kernel.as_deref(), Some("/boot/vmlinuz"));
    assert_eq!(
        (
            c.ramdisk.as_deref(),
            c.cmdline.as_deref(),
            c.bootloader.as_deref()
        ),
        (None, None, None)
    );
    assert!(c.disks.is_empty() && c.vifs.is_empty() && c.xen_shell.is_empty());
    assert_eq!(
        (
            c.on_poweroff,
            c.on_reboot,
            c.on_watchdog,
            c.on_crash,
            c.on_soft_reset
        ),
        (
            Action::Destroy,
            Action::Restart,
            Action::Destroy,
            Action::Destroy,
            Action::SoftReset
        )
    );
    assert!(!c.vnc && !c.sdl && c.vfb.is_empty() && c.serial.is_empty());
    assert!(c.other_keys.is_empty());
    assert!(p.diagnostics.is_empty());
}

#[test]
fn builtin_test_guest_kernel_is_kept() {
    let p = parse("name='g'\nkernel='builtin:testguest'\n", "g.cfg", &[]).expect("valid");
    assert_eq!(p.config.kernel.as_deref(), Some("builtin:testguest"));
}

#[test]
fn name_rules() {
    for (name, bad) in [
        ("web-1", false),
        ("a.b_c", false),
        ("", true),
        ("42", true),
        ("a/b", true),
        ("a b", true),
        ("Domain-0", true),
        ("x--incoming", true),
        ("tab\there", true),
        ("-rf", true),
        (".", true),
        ("..", true),
        ("a..b", false),
        ("zero\u{200b}width", true),
        ("rtl\u{202e}gnp", true),
        ("caf\u{e9}", false),
    ] {
        // ASCII escapes the xl syntax knows; other characters as they are.
        let quoted: String = name
            .chars()
            .map(|c| {
                if c.is_ascii() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        let r = parse(&format!("name = \"{quoted}\"\nkernel='/k'\n"), "n.cfg", &[]);
        assert_eq!(r.is_err(), bad, "{name:?}: {r:?}");
        if let Err(e) = r {
            assert!(matches!(e.kind, ConfigErrorKind::BadName { .. }), "{e}");
            assert_eq!((e.line, e.column), (1, 8));
        }
    }
    let e = parse("kernel = '/k'\n", "n.cfg", &[]).expect_err("no name");
    assert_eq!(e.kind, ConfigErrorKind::MissingName);
    assert_eq!(
        e.to_string(),
        "n.cfg:1:1: error: Domain name must be specified: expected name = \"...\""
    );
    let e = parse("name = ['a']\nkernel = '/k'\n", "n.cfg", &[]).expect_err("list name");
    assert!(matches!(
        e.kind,
        ConfigErrorKind::ExpectedSingleValue { .. }
    ));
}

#[test]
fn uuid() {
    let p = ok("uuid = '3F2504E0-4F89-11D3-9A0C-0305E82C3301'\n");
    assert_eq!(
        p.config.uuid.as_deref(),
        Some("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
    );
    let e = err("uuid = '3f2504e0-4f89-11d3-9a0c'\n");
    assert!(matches!(e.kind, ConfigErrorKind::BadUuid { .. }));
    assert_eq!((e.line, e.column), (3, 8));
}

#[test]
fn type_and_builder() {
    assert_eq!(ok("type = 'pvh'").config.domain_type, DomainType::Pvh);
    assert_eq!(ok("type = 'pv'").config.domain_type, DomainType::Pv);
    let p = ok("type = 'hvm'");
    assert_eq!(p.config.domain_type, DomainType::Hvm);
    assert_eq!(kinds(&p, "type"), vec![DiagnosticKind::Unsupported]);
    // xl's strncmp prefix rule, checked in the order hvm, pv, pvh
    let p = ok("type = 'p'");
    assert_eq!(p.config.domain_type, DomainType::Pv);
    assert_eq!(kinds(&p, "type"), vec![DiagnosticKind::Warning]);
    assert!(matches!(
        err("type = 'xen'").kind,
        ConfigErrorKind::BadValue { .. }
    ));
    assert!(matches!(
        err("type = ''").kind,
        ConfigErrorKind::BadValue { .. }
    ));
    let p = ok("builder = 'generic'");
    assert_eq!(p.config.domain_type, DomainType::Pv);
    assert_eq!(kinds(&p, "builder"), vec![DiagnosticKind::Deprecated]);
    assert!(!p.config.other_keys.contains_key("builder"));
    let e = err("type = 'pv'\nbuilder = 'hvm'");
    assert!(matches!(
        e.kind,
        ConfigErrorKind::BuilderTypeConflict { .. }
    ));
    assert_eq!((e.line, e.column), (4, 11));
    let p = ok("pvh = 1");
    assert_eq!(p.config.domain_type, DomainType::Pvh);
    assert_eq!(kinds(&p, "pvh"), vec![DiagnosticKind::Deprecated]);
    // an HVM guest needs no kernel; a PV or PVH guest does
    assert!(parse("name='h'\ntype='hvm'\n", "h.cfg", &[]).is_ok());
    let e = parse("name='p'\ntype='pvh'\n", "p.cfg", &[]).expect_err("no kernel");
    assert_eq!(e.kind, ConfigErrorKind::NoKernel { domain_type: "pvh" });
    assert!(parse("name='p'\nbootloader='pygrub'\n", "p.cfg", &[]).is_ok());
}

#[test]
fn memory_and_maxmem() {
    let c = ok("memory = 512").config;
    assert_eq!((c.memory_mib, c.maxmem_mib), (512, 512));
    let c = ok("maxmem = 1024").config;
    assert_eq!((c.memory_mib, c.maxmem_mib), (1024, 1024));
    let c = ok("memory = 512\nmaxmem = 1024").config;
    assert_eq!((c.memory_mib, c.maxmem_mib), (512, 1024));
    let e = err("memory = 'lots'");
    assert!(matches!(e.kind, ConfigErrorKind::NotANumber { .. }), "{e}");
    assert_eq!((e.line, e.column), (3, 10));
    assert!(
        e.to_string().contains("`memory` must be a number of MiB"),
        "{e}"
    );
    assert!(matches!(
        err("memory = 0").kind,
        ConfigErrorKind::OutOfRange { .. }
    ));
    assert!(matches!(
        err("memory = '-5'").kind,
        ConfigErrorKind::OutOfRange { .. }
    ));
    assert!(matches!(
        err("memory = 08").kind,
        ConfigErrorKind::NotANumber { .. }
    ));
    assert!(matches!(
        err("memory = [512]").kind,
        ConfigErrorKind::ExpectedSingleValue { .. }
    ));
    let e = err("memory = 1024\nmaxmem = 512");
    assert_eq!(
        e.kind,
        ConfigErrorKind::MaxmemBelowMemory {
            memory: 1024,
            maxmem: 512
        }
    );
    assert_eq!(e.line, 4);
}

#[test]
fn vcpus_and_maxvcpus() {
    let c = ok("vcpus = 4").config;
    assert_eq!((c.vcpus, c.maxvcpus), (4, 4));
    let c = ok("vcpus = 2\nmaxvcpus = 8").config;
    assert_eq!((c.vcpus, c.maxvcpus), (2, 8));
    let p = ok("vcpus = 0");
    assert_eq!(p.config.vcpus, 1);
    assert_eq!(kinds(&p, "vcpus"), vec![DiagnosticKind::Warning]);
    let e = err("vcpus = 4\nmaxvcpus = 2");
    assert_eq!(
        e.kind,
        ConfigErrorKind::MaxvcpusBelowVcpus {
            vcpus: 4,
            maxvcpus: 2
        }
    );
    assert!(e.to_string().contains("maxvcpus < vcpus"));
    assert!(matches!(
        err("vcpus = 100000").kind,
        ConfigErrorKind::OutOfRange { .. }
    ));
}

#[test]
fn cpus_forms() {
    assert_eq!(
        ok("cpus = '3,5-8,^6'").config.cpus,
        Some(CpuAffinity::Set(vec![3, 5, 7, 8]))
    );
    assert_eq!(ok("cpus = 'all'").config.cpus, Some(CpuAffinity::All));
    assert_eq!(
        ok("cpus = '2,1,2'").config.cpus,
        Some(CpuAffinity::Set(vec![1, 2]))
    );
    assert_eq!(ok("cpus = 3").config.cpus, Some(CpuAffinity::Set(vec![3])));
    let c = ok("vcpus = 2\ncpus = [0, 2]").config;
    assert_eq!(c.cpus, Some(CpuAffinity::PerVcpu(vec![vec![0], vec![2]])));
    let c = ok("vcpus = 2\ncpus = ['2', '3-8,^5']").config;
    assert_eq!(
        c.cpus,
        Some(CpuAffinity::PerVcpu(vec![vec![2], vec![3, 4, 6, 7, 8]]))
    );
    // nodes and "all,^N" are refused as unsupported, and kept
    for spec in ["nodes:0-1", "all,^7", "node:0"] {
        let p = ok(&format!("cpus = '{spec}'"));
        assert_eq!(p.config.cpus, None, "{spec}");
        assert_eq!(
            kinds(&p, "cpus"),
            vec![DiagnosticKind::Unsupported],
            "{spec}"
        );
        assert_eq!(p.config.other_keys["cpus"], serde_json::json!(spec));
        assert_eq!(p.unsupported().count(), 1);
    }
    let e = err("cpus = '8-5'");
    assert_eq!(
        e.kind,
        ConfigErrorKind::Cpus {
            spec: "8-5".into(),
            source: SpecError::CpuRangeBackwards { from: 8, to: 5 }
        }
    );
    assert_eq!((e.line, e.column), (3, 8));
    assert!(e.to_string().contains("runs backwards"), "{e}");
    assert!(matches!(
        err("cpus = '^all'").kind,
        ConfigErrorKind::Cpus {
            source: SpecError::CaretAll,
            ..
        }
    ));
    assert!(matches!(
        err("cpus = 'foo'").kind,
        ConfigErrorKind::Cpus { .. }
    ));
    assert!(matches!(
        err("cpus = '^3'").kind,
        ConfigErrorKind::Cpus {
            source: SpecError::EmptyCpuList,
            ..
        }
    ));
    let e = err("cpus = ['1', '4-2']");
    assert_eq!((e.line, e.column), (3, 14));
}

#[test]
fn weight_and_cap() {
    let c = ok("cpu_weight = 512\ncap = 150\nvcpus = 2").config;
    assert_eq!((c.cpu_weight, c.cap), (512, 150));
    assert!(matches!(
        err("cpu_weight = 0").kind,
        ConfigErrorKind::OutOfRange { .. }
    ));
    assert!(matches!(
        err("cpu_weight = 65536").kind,
        ConfigErrorKind::OutOfRange { .. }
    ));
    assert!(matches!(
        err("cap = 101").kind,
        ConfigErrorKind::OutOfRange { .. }
    ));
    assert!(matches!(
        err("cap = -1").kind,
        ConfigErrorKind::Expected { .. } | ConfigErrorKind::UnexpectedChar { .. }
    ));
}

#[test]
fn cmdline_root_extra() {
    assert_eq!(
        ok("root = '/dev/xvda1 ro'\nextra = 'console=hvc0'")
            .config
            .cmdline
            .as_deref(),
        Some("root=/dev/xvda1 ro console=hvc0")
    );
    assert_eq!(
        ok("root = '/dev/xvda1'").config.cmdline.as_deref(),
        Some("root=/dev/xvda1")
    );
    assert_eq!(
        ok("extra = 'quiet'").config.cmdline.as_deref(),
        Some("quiet")
    );
    let p = ok("cmdline = 'a b'\nroot = '/dev/xvda1'\nextra = 'c'");
    assert_eq!(p.config.cmdline.as_deref(), Some("a b"));
    let d: Vec<_> = p
        .diagnostics
        .iter()
        .filter(|d| d.key == "cmdline")
        .collect();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].message,
        "ignoring root= and extra= in favour of cmdline="
    );
    assert_eq!(
        d[0].to_string(),
        "t.cfg:3:11: warning: ignoring root= and extra= in favour of cmdline="
    );
    assert!(p.config.other_keys.is_empty());
}

#[test]
fn kernel_ramdisk_bootloader() {
    let p = ok("ramdisk = '/boot/initrd.img'");
    assert_eq!(p.config.ramdisk.as_deref(), Some("/boot/initrd.img"));
    let p = ok("bootloader = 'pygrub'\nbootloader_args = ['-q', '--entry=2']");
    assert_eq!(p.config.bootloader.as_deref(), Some("pygrub"));
    assert_eq!(p.config.bootloader_args, vec!["-q", "--entry=2"]);
    assert_eq!(p.unsupported().count(), 0, "rxen carries out pygrub itself");
    assert_eq!(
        xlcfg::model::pygrub_entry(&p.config.bootloader_args),
        Some(Some(2))
    );
    let p = ok("bootloader = '/usr/lib/xen/bin/pygrub'\nbootloader_args = ['--kernel=/x']");
    let u: Vec<_> = p.unsupported().collect();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].key, "bootloader_args");
    let p = ok("bootloader = 'pvgrub'");
    let u: Vec<_> = p.unsupported().collect();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].key, "bootloader");
    assert_eq!((u[0].line, u[0].column), (3, 14));
    assert!(
        u[0].to_string()
            .starts_with("t.cfg:3:14: unsupported: bootloader = \"pvgrub\""),
        "{}",
        u[0]
    );
}

#[test]
fn actions() {
    let c = ok("on_poweroff = 'preserve'\non_reboot = 'rename-restart'\non_watchdog = 'coredump-destroy'\non_crash = 'coredump-restart'\non_soft_reset = 'destroy'").config;
    assert_eq!(
        (
            c.on_poweroff,
            c.on_reboot,
            c.on_watchdog,
            c.on_crash,
            c.on_soft_reset
        ),
        (
            Action::Preserve,
            Action::RenameRestart,
            Action::CoredumpDestroy,
            Action::CoredumpRestart,
            Action::Destroy
        )
    );
    assert_eq!(
        ok("on_crash = 'soft-reset'").config.on_crash,
        Action::SoftReset
    );
    assert_eq!(ok("on_crash = 'restart'").config.on_crash, Action::Restart);
    let e = err("on_crash = 'Restart'");
    assert_eq!(
        e.kind,
        ConfigErrorKind::UnknownAction {
            key: "on_crash".into(),
            value: "Restart".into()
        }
    );
    assert_eq!((e.line, e.column), (3, 12));
    assert!(e
        .to_string()
        .contains("Unknown on_crash action \"Restart\" specified"));
    assert!(matches!(
        err("on_crash = 'rename_restart'").kind,
        ConfigErrorKind::UnknownAction { .. }
    ));
    for a in Action::ALL {
        assert_eq!(a.to_string().parse::<Action>(), Ok(a));
        assert_eq!(
            serde_json::to_value(a).expect("json"),
            serde_json::json!(a.to_string())
        );
    }
}

#[test]
fn disks() {
    let c = ok("disk = [ 'phy:/dev/vg0/web-root,xvda1,w', 'file:/srv/xen/web-swap.img,xvda2,w', 'tap:aio:/srv/xen/data.img,xvdb,r', 'format=raw, vdev=xvdc, access=w, target=/dev/sdc' ]").config;
    let d = &c.disks;
    assert_eq!(d.len(), 4);
    assert_eq!(
        (d[0].target.as_deref(), d[0].vdev.as_str(), d[0].access),
        (Some("/dev/vg0/web-root"), "xvda1", DiskAccess::ReadWrite)
    );
    assert_eq!(d[1].target.as_deref(), Some("/srv/xen/web-swap.img"));
    assert_eq!(
        (d[2].target.as_deref(), d[2].access),
        (Some("/srv/xen/data.img"), DiskAccess::ReadOnly)
    );
    assert_eq!(
        (d[3].target.as_deref(), d[3].format),
        (Some("/dev/sdc"), DiskFormat::Raw)
    );
    // duplicate vdev
    let e = err("disk = [ 'phy:/dev/vg/a,xvda,w',\n 'phy:/dev/vg/b,xvda,w' ]");
    assert_eq!(
        e.kind,
        ConfigErrorKind::DuplicateVdev {
            vdev: "xvda".into(),
            index: 2,
            first: 1
        }
    );
    assert_eq!((e.line, e.column), (4, 2));
    // a bad spec names the entry and the spec error
    let e = err("disk = [ 'phy:/dev/vg/a,xvda,w', '/dev/vg/b' ]");
    assert!(
        matches!(
            e.kind,
            ConfigErrorKind::Disk {
                index: 2,
                source: SpecError::NoVdev,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!((e.line, e.column), (3, 34));
    // a string instead of a list
    assert!(matches!(
        err("disk = 'phy:/dev/vg/a,xvda,w'").kind,
        ConfigErrorKind::ExpectedList { .. }
    ));
    // what rxen lacks is reported, not dropped
    let p = ok("disk = [ 'tap:qcow2:/srv/a.qcow2,xvda,w', '/root/x.iso,,hdc,cdrom', 'iscsi:iqn.2001-05.com.example:t1,xvdb,w', 'tap:vhd:/srv/b.vhd,xvdc,w' ]");
    assert_eq!(p.config.disks.len(), 4);
    // vhd and the iscsi script; qcow2 is served; a cdrom with an image is a read-only disk.
    assert_eq!(p.unsupported().count(), 2);
    assert!(p.unsupported().all(|d| d.key == "disk"));
}

#[test]
fn vifs() {
    let c = ok("vif = [ 'mac=00:16:3e:00:00:01,bridge=xenbr0,ip=192.0.2.10,vifname=web0,rate=10Mb/s@20ms', '', 'bridge=br1,mac=00:16:3E:AA:BB:CC,script=vif-bridge' ]").config;
    let v = &c.vifs;
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].mac, Some(MacAddr([0, 0x16, 0x3e, 0, 0, 1])));
    assert_eq!(v[0].bridge.as_deref(), Some("xenbr0"));
    assert_eq!(v[0].ip, vec!["192.0.2.10"]);
    assert_eq!(v[0].vifname.as_deref(), Some("web0"));
    assert_eq!(
        v[0].rate,
        Some(Rate {
            bytes_per_interval: 25_000,
            interval_us: 20_000
        })
    );
    assert_eq!(v[1], xlcfg::VifSpec::default());
    assert_eq!(
        v[2].mac.map(|m| m.to_string()).as_deref(),
        Some("00:16:3e:aa:bb:cc")
    );
    let e = err("vif = [ 'mac=00:16:3e:00:00' ]");
    assert!(
        matches!(
            e.kind,
            ConfigErrorKind::Vif {
                index: 1,
                source: SpecError::BadMac { .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!((e.line, e.column), (3, 9));
    assert!(e.to_string().contains("invalid MAC address"));
    assert!(matches!(
        err("vif = [ 'rate=10MB' ]").kind,
        ConfigErrorKind::Vif {
            source: SpecError::BadRate { .. },
            ..
        }
    ));
    assert!(matches!(
        err("vif = [ 'colour=blue' ]").kind,
        ConfigErrorKind::Vif {
            source: SpecError::UnknownVifArgument(_),
            ..
        }
    ));
    // vif-route and other hotplug scripts are rxend's to run.
    let p = ok("vif = [ 'script=vif-route,bridge=br0', 'backend=netdom', 'model=e1000' ]");
    assert_eq!(p.unsupported().count(), 1);
    assert_eq!(
        kinds(&p, "vif"),
        vec![DiagnosticKind::Unsupported, DiagnosticKind::Warning]
    );
}

#[test]
fn display_and_serial() {
    let p = ok("vnc = 0\nsdl = 0\nserial = 'pty'\nvfb = []");
    assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
    assert_eq!(p.config.serial, vec!["pty"]);
    let p = ok("vnc = 1\nsdl = 1\nvfb = [ 'vnc=1,vnclisten=0.0.0.0' ]\nserial = [ 'file:/tmp/x' ]\nvnclisten = '0.0.0.0'");
    assert!(p.config.vnc && p.config.sdl);
    assert_eq!(p.config.vfb, vec!["vnc=1,vnclisten=0.0.0.0"]);
    let keys: Vec<&str> = p.unsupported().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, vec!["vnc", "sdl", "vfb", "serial"]);
    assert_eq!(kinds(&p, "vnclisten"), vec![DiagnosticKind::Warning]);
    assert!(p.config.other_keys.contains_key("vnclisten"));
}

#[test]
fn xen_shell_users() {
    assert_eq!(
        ok("xen_shell = 'alice, bob'").config.xen_shell,
        vec!["alice", "bob"]
    );
    let e = err("xen_shell = 'Alice'");
    assert!(matches!(e.kind, ConfigErrorKind::BadValue { .. }));
    assert_eq!((e.line, e.column), (3, 13));
}

#[test]
fn unknown_unsupported_and_deprecated_keys_are_kept_and_reported() {
    let p = ok("frobnicate = 1\npci = [ '0000:01:00.0' ]\nnics = 1\nmax_grant_frames = 64\nacpi = 1\nlocaltime = 1\nvtpm = []\non_xend_start = 'ignore'\n");
    let k = |key: &str| kinds(&p, key);
    assert_eq!(k("frobnicate"), vec![DiagnosticKind::Unknown]);
    assert_eq!(k("pci"), vec![DiagnosticKind::Unsupported]);
    assert_eq!(k("nics"), vec![DiagnosticKind::Deprecated]);
    assert_eq!(k("max_grant_frames"), vec![DiagnosticKind::Warning]);
    assert_eq!(k("acpi"), vec![DiagnosticKind::Warning]); // acpi = 1 is the harmless value
    assert_eq!(k("localtime"), vec![DiagnosticKind::Unsupported]);
    assert_eq!(k("vtpm"), vec![DiagnosticKind::Warning]);
    assert_eq!(k("on_xend_start"), vec![DiagnosticKind::Deprecated]);
    for key in [
        "frobnicate",
        "pci",
        "nics",
        "max_grant_frames",
        "acpi",
        "localtime",
        "vtpm",
        "on_xend_start",
    ] {
        assert!(p.config.other_keys.contains_key(key), "{key} kept");
    }
    assert_eq!(
        p.config.other_keys["pci"],
        serde_json::json!(["0000:01:00.0"])
    );
    assert_eq!(p.config.other_keys["frobnicate"], serde_json::json!(1));
    // diagnostics are in file order with the key's position
    let lines: Vec<u32> = p.diagnostics.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![3, 4, 5, 6, 7, 8, 9, 10]);
    let f = &p.diagnostics[0];
    assert_eq!(
        f.to_string(),
        "t.cfg:3:1: warning: unknown key `frobnicate` is kept but not used"
    );
}

#[test]
fn config_round_trips_through_json() {
    let p = ok("uuid='3f2504e0-4f89-11d3-9a0c-0305e82c3301'\nmemory=256\ncpus=[0,1]\nvcpus=2\ndisk=['phy:/dev/vg/a,xvda,w']\nvif=['mac=00:16:3e:00:00:01,rate=1MB/s']\nfoo=['x']\nxen_shell='alice'\n");
    let json = serde_json::to_string(&p.config).expect("serialise");
    let back: xlcfg::DomainConfig = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, p.config);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["domain_type"], "pv");
    assert_eq!(v["on_reboot"], "restart");
    assert_eq!(v["vifs"][0]["mac"], "00:16:3e:00:00:01");
    assert_eq!(v["disks"][0]["access"], "w");
}

#[test]
fn cpus_entries_past_maxvcpus_are_ignored() {
    let p = ok("vcpus = 1\ncpus = [0, 1, 'nodes:1']");
    assert_eq!(p.config.cpus, Some(CpuAffinity::PerVcpu(vec![vec![0]])));
    assert_eq!(kinds(&p, "cpus"), vec![DiagnosticKind::Warning]);
    // but they must still be CPU lists
    assert!(matches!(
        err("vcpus = 1\ncpus = [0, 'junk']").kind,
        ConfigErrorKind::Cpus { .. }
    ));
}

#[test]
fn long_device_lists_parse_in_linear_time() {
    let disks: Vec<String> = (0..20_000)
        .map(|i| format!("'/dev/vg/d{i},,xvda{i}'"))
        .collect();
    let vifs: Vec<String> = (0..20_000)
        .map(|i| format!("'mac=00:16:3e:00:{:02x}:{:02x}'", i / 256, i % 256))
        .collect();
    let p = ok(&format!(
        "disk = [{}]\nvif = [{}]\n",
        disks.join(","),
        vifs.join(",")
    ));
    assert_eq!(
        (p.config.disks.len(), p.config.vifs.len()),
        (20_000, 20_000)
    );
    // the duplicate is still found at the end of a long list
    let mut dup = disks.clone();
    dup.push("'/dev/vg/x,,xvda7'".into());
    let e = err(&format!("disk = [{}]\n", dup.join(",")));
    assert!(
        matches!(
            e.kind,
            ConfigErrorKind::DuplicateVdev {
                index: 20_001,
                first: 8,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn typos_in_keys_get_a_suggestion() {
    let p = ok("memroy = 512");
    assert_eq!(p.config.memory_mib, 32);
    let d = &p.diagnostics[0];
    assert_eq!(d.kind, DiagnosticKind::Unknown);
    assert_eq!(
        d.to_string(),
        "t.cfg:3:1: warning: unknown key `memroy` is kept but not used (did you mean `memory`?)"
    );
}

#[test]
fn every_class_of_unmodeled_key() {
    use DiagnosticKind::*;
    let cases: &[(&str, &str, DiagnosticKind)] = &[
        ("pci", "['01:00.0']", Unsupported),
        ("pci", "[]", Warning),
        ("gfx_passthru", "1", Unsupported),
        ("pci_permissive", "1", Warning),
        ("usbctrl", "['version=2']", Unsupported),
        ("usb", "0", Warning),
        ("usb", "1", Unsupported),
        ("vtpm", "['backend=0']", Unsupported),
        ("p9", "[]", Warning),
        ("channel", "['name=x']", Unsupported),
        ("acpi", "0", Unsupported),
        ("apic", "1", Warning),
        ("viridian", "1", Unsupported),
        ("tsc_mode", "'native'", Unsupported),
        ("tsc_mode", "'default'", Warning),
        ("firmware", "'ovmf'", Unsupported),
        ("boot", "'c'", Warning),
        ("keymap", "'de'", Warning),
        ("spicehost", "'0.0.0.0'", Unsupported),
        ("device_model_version", "'qemu-xen'", Unsupported),
        ("cpus_soft", "'0-3'", Unsupported),
        ("seclabel", "'system_u:system_r:domU_t'", Unsupported),
        ("nomigrate", "1", Unsupported),
        ("pvshim", "1", Unsupported),
        ("vuart", "'sbsa_uart'", Unsupported),
        ("max_grant_frames", "64", Warning),
        ("shadow_memory", "8", Warning),
        ("nics", "2", Deprecated),
        ("on_xend_stop", "'shutdown'", Deprecated),
        ("vncconsole", "1", Deprecated),
        ("netmask", "'255.255.255.0'", Deprecated),
        ("restart", "'onreboot'", Deprecated),
        ("bootargs", "'--entry=xvda1:/vmlinuz'", Deprecated),
        ("blkif", "1", Deprecated),
        ("totally_new_key", "1", Unknown),
    ];
    for (key, value, kind) in cases {
        let p = ok(&format!("{key} = {value}"));
        assert_eq!(kinds(&p, key), vec![*kind], "{key} = {value}");
        assert!(p.config.other_keys.contains_key(*key), "{key} kept");
        let d = &p.diagnostics[0];
        assert_eq!((d.line, d.column), (3, 1), "{key}");
    }
}

#[test]
fn configs_from_json_are_held_to_the_parser_ranges() {
    let good = parse(BASE, "t.cfg", &[]).expect("valid").config;
    assert_eq!(xlcfg::check_config(&good), Ok(()));
    type Spoil = fn(&mut xlcfg::DomainConfig);
    let cases: [(&str, Spoil); 7] = [
        ("cpu_weight", |c| c.cpu_weight = 0),
        ("cpu_weight", |c| c.cpu_weight = 70_000),
        ("cap", |c| c.cap = 100 * c.maxvcpus + 1),
        ("vcpus", |c| c.vcpus = c.maxvcpus + 1),
        ("vcpus", |c| c.vcpus = 0),
        ("memory", |c| c.memory_mib = 0),
        ("name", |c| c.name = "../x".into()),
    ];
    for (what, spoil) in cases {
        let mut c = good.clone();
        spoil(&mut c);
        let e = xlcfg::check_config(&c).expect_err(what);
        assert!(e.contains(what), "{what}: {e}");
    }
}

#[test]
fn pool_names_the_cpu_pool_and_renders_back() {
    let p = ok("pool = 'fast'");
    assert_eq!(p.config.pool.as_deref(), Some("fast"));
    assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
    assert!(!p.config.other_keys.contains_key("pool"));
    let again = xlcfg::parse(&p.config.to_xl_cfg(), "again.cfg", &[]).expect("reparse");
    assert_eq!(again.config.pool.as_deref(), Some("fast"));
    assert_eq!(ok("").config.pool, None);
}

#[test]
fn pool_placement_keys_are_read_checked_and_render_back() {
    let p = ok("pool_host = 'h2'\npool_anti_affinity = \"web\"");
    assert_eq!(p.config.pool_host.as_deref(), Some("h2"));
    assert_eq!(p.config.pool_anti_affinity.as_deref(), Some("web"));
    assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
    assert!(p.config.other_keys.is_empty());
    let again = xlcfg::parse(&p.config.to_xl_cfg(), "again.cfg", &[]).expect("reparse");
    assert_eq!(again.config.pool_host.as_deref(), Some("h2"));
    assert_eq!(again.config.pool_anti_affinity.as_deref(), Some("web"));
    let none = ok("");
    assert_eq!(
        (none.config.pool_host, none.config.pool_anti_affinity),
        (None, None)
    );
    for bad in [
        "pool_host = ''",
        "pool_host = 'a b'",
        "pool_host = 'a/b'",
        "pool_anti_affinity = ['a', 'b']",
        "pool_anti_affinity = 'tab\there'",
    ] {
        let e = err(bad);
        assert!(
            matches!(
                e.kind,
                ConfigErrorKind::BadValue { .. } | ConfigErrorKind::ExpectedSingleValue { .. }
            ),
            "{bad}: {e}"
        );
    }
    // A config of an older rxen (JSON without the keys) still reads.
    let mut json = serde_json::to_value(&ok("").config).expect("json");
    json.as_object_mut().expect("object").remove("pool_host");
    let back: xlcfg::DomainConfig = serde_json::from_value(json).expect("old json");
    assert_eq!(back.pool_host, None);
}
