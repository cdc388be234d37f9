//! xl fidelity: what a Xen administrator's hands and scripts do with `rxl`, checked against
//! xl's argument orders, messages and exit codes (Xen's tools/xl/).

use std::process::Output;
use std::time::Duration;

use rxen_e2e::{wait_until, Host};

const BOOT: Duration = Duration::from_secs(30);

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn restore_takes_the_config_file_before_the_checkpoint_file() {
    let host = Host::start();
    let con = host.create_guest("xlsave", 1, 12, "");
    let file = host.dir.path().join("xlsave.sav");
    let f = file.to_str().expect("utf-8");
    host.rxl_ok(&["save", "xlsave", f]);
    drop(con);
    // xl restore [options] [ConfigFile] CheckpointFile: the config renames the domain.
    let cfg = host.config(
        "xlsave2.cfg",
        "name = \"xlsave2\"\nkernel = \"builtin:testguest\"\nmemory = 12\nvcpus = 1\n",
    );
    host.rxl_ok(&["restore", "-p", cfg.to_str().expect("utf-8"), f]);
    let row = host
        .list_row("xlsave2")
        .expect("restored under the config's name");
    assert_eq!(row[4], "--p---", "-p before the files was not honoured");
    host.rxl_ok(&["destroy", "xlsave2"]);
    wait_until(BOOT, "xlsave2 is gone", || {
        host.list_row("xlsave2").is_none()
    });
    // The save file alone restores the domain with its own config.
    host.rxl_ok(&["restore", f]);
    assert!(
        host.list_row("xlsave").is_some(),
        "restore FILE did not restore"
    );
    // Three names are not xl's usage: its help, and failure.
    let out = host.rxl(&["restore", "a", "b", f]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("Usage: rxl "), "{}", stdout(&out));
}

#[test]
fn capital_v_asks_for_a_vnc_viewer_and_is_refused() {
    let host = Host::start();
    let cfg = host.config(
        "vnc.cfg",
        "name = \"vnc\"\nkernel = \"builtin:testguest\"\nmemory = 12\n",
    );
    let cfg = cfg.to_str().expect("utf-8");
    for args in [
        &["create", "-V", cfg][..],
        &["create", cfg, "--vncviewer"],
        &["restore", "-A", "/nonexistent.sav"],
    ] {
        let out = host.rxl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("no VNC display"), "{}", stderr(&out));
        assert!(!stdout(&out).contains(env!("CARGO_PKG_VERSION")));
    }
    assert!(
        host.list_row("vnc").is_none(),
        "create -V created the domain"
    );
    let out = host.rxl_ok(&["--version"]);
    assert_eq!(out, format!("rxl {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn global_options_abbreviations_and_xl_exit_codes() {
    let host = Host::start();
    // Options before the command, and a prefix of `list`.
    let list = host.rxl_ok(&["-v", "-t", "-T", "-f", "li"]);
    assert!(list.contains("\nDomain-0 "), "{list}");
    // -N is create's dry run: the config as JSON, and no domain.
    let cfg = host.config(
        "dry.cfg",
        "name = \"dry\"\nkernel = \"builtin:testguest\"\nmemory = 12\n",
    );
    let json = host.rxl_ok(&["-N", "cr", cfg.to_str().expect("utf-8")]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("dry run prints JSON");
    assert_eq!(v["c_info"]["name"], "dry");
    assert!(host.list_row("dry").is_none(), "-N created the domain");
    let out = host.rxl(&["-N", "destroy", "dry"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "command does not implement -N (dryrun) option\n"
    );
    let out = host.rxl(&["-q", "list"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("unknown global option\n", Some(1))
    );
    let out = host.rxl(&["frobnicate"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("command not implemented\n", Some(1))
    );
    let out = host.rxl(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("Usage rxl [-vfNtT] <subcommand> [args]\n"));
    assert!(
        stdout(&out).contains("\n list                List domains"),
        "{}",
        stdout(&out)
    );
    let out = host.rxl(&["list", "-y"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("option `y' not supported.\n", Some(2))
    );
    let out = host.rxl(&["pause"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "'rxl pause' requires at least 1 argument.\n\n"
    );
}

#[test]
fn domid_takes_a_name_domname_an_id_and_domain_0_is_not_destroyed() {
    let host = Host::start();
    let _con = host.create_guest("ids", 1, 12, "");
    let id = host.rxl_ok(&["domid", "ids"]).trim().to_string();
    assert_eq!(host.rxl_ok(&["domname", &id]), "ids\n");
    // An ID is not a name to domid, nor a name an ID to domname.
    let out = host.rxl(&["domid", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("Can't get domid of domain name '{id}', maybe this domain does not exist.\n")
    );
    let out = host.rxl(&["domname", "ids"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("Invalid domain id.\n\n", Some(1))
    );
    let out = host.rxl(&["domname", "4242"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "Can't get domain name of domain id '4242', maybe this domain does not exist.\n"
    );
    for args in [&["destroy", "0"][..], &["destroy", "Domain-0"]] {
        let out = host.rxl(args);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).starts_with("Not destroying domain 0; use -f to force.\n"),
            "{}",
            stderr(&out)
        );
    }
    let out = host.rxl(&["destroy", "-f", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Domain-0 is the host"),
        "{}",
        stderr(&out)
    );
    host.rxl_ok(&["destroy", &id]);
    wait_until(BOOT, "ids is gone", || host.list_row("ids").is_none());
}

#[test]
fn shutdown_and_reboot_wait_print_xl_reason_codes() {
    let host = Host::start();
    let _a = host.create_guest("sdw", 1, 12, "");
    let _b = host.create_guest("rbw", 1, 12, "");
    let a = host.rxl_ok(&["domid", "sdw"]).trim().to_string();
    let b = host.rxl_ok(&["domid", "rbw"]).trim().to_string();
    let out = host.rxl(&["shutdown", "-F", "-w", "sdw"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "Shutting down domain {a}\nWaiting for 1 domains\nDomain {a} has been shut down, reason code 0\n"
        )
    );
    let out = host.rxl(&["reboot", "-ww", "rbw"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "Rebooting domain {b}\nWaiting for 1 domains\nDomain {b} has been shut down, reason code 1\nDomain {b} continue waiting for death\nDomain {b} has been destroyed\n"
        )
    );
    // on_reboot = "restart": back under a new ID.
    wait_until(BOOT, "rbw is back", || host.list_row("rbw").is_some());
    let out = host.rxl(&["shutdown"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "You must specify -a or a domain id.\n\n");
}

#[test]
fn missing_devices_and_unknown_domains_get_xl_messages() {
    let host = Host::start();
    let _con = host.create_guest("devs", 1, 12, "");
    let out = host.rxl(&["block-detach", "devs", "xvdz"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("Error: Device xvdz not connected.\n", Some(1))
    );
    let out = host.rxl(&["network-detach", "devs", "5"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("Unknown device 5.\n", Some(1))
    );
    let out = host.rxl(&["network-detach", "devs", "00:16:3e:00:00:99"]);
    assert_eq!(stderr(&out), "Unknown device 00:16:3e:00:00:99.\n");
    // block-list names an unknown domain and goes on, with status 0, as xl does.
    let out = host.rxl(&["block-list", "nosuch", "devs"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "nosuch is an invalid domain identifier\n");
    assert!(stdout(&out).starts_with("Vdev  BE  handle state evt-ch ring-ref BE-path"));
    // network-list stops at it, with xl's find_domain message and status 1.
    let out = host.rxl(&["network-list", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "nosuch is an invalid domain identifier (rc=-6)\n"
    );
}

#[test]
fn short_uptime_pads_hours_and_uses_local_time() {
    let host = Host::start();
    let _con = host.create_guest("upt", 1, 12, "");
    let id = host.rxl_ok(&["domid", "upt"]).trim().to_string();
    // UTC+14 (POSIX TZ strings count west of Greenwich as positive).
    let utc_hour = || {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        (secs / 3600 + 14) % 24
    };
    let before = utc_hour();
    let out = host
        .rxl_command()
        .env("TZ", "XYZ-14")
        .args(["uptime", "-s", "upt"])
        .output()
        .expect("rxl");
    let after = utc_hour();
    let line = stdout(&out);
    assert!(
        line.ends_with(&format!(" up  0:00, upt ({id})\n")),
        "hours not padded as %2d: {line:?}"
    );
    let hour: u64 = line[1..3].parse().expect("hour");
    assert!(
        hour == before || hour == after,
        "{line:?} is not the time at UTC+14"
    );
    assert_eq!(&line[3..4], ":");
}

#[test]
fn info_has_hw_and_virt_caps_and_filters_as_xl() {
    let host = Host::start();
    let info = host.rxl_ok(&["info"]);
    let hw = info
        .lines()
        .find_map(|l| l.strip_prefix("hw_caps                : "))
        .expect("hw_caps line");
    assert_eq!(hw.len(), 8 * 8 + 7, "{hw}");
    assert!(
        hw.split(':').all(|w| u32::from_str_radix(w, 16).is_ok()),
        "{hw}"
    );
    let virt = host.rxl_ok(&["info", "virt_caps"]);
    assert!(
        virt == "hvm hap\n" || virt == "hvm shadow\n",
        "virt_caps {virt:?}"
    );
    // xl's "%d.%d%s": major, minor, extra.
    let v: Vec<String> = ["xen_major", "xen_minor", "xen_extra", "xen_version"]
        .iter()
        .map(|f| host.rxl_ok(&["info", f]).trim_end().to_string())
        .collect();
    assert_eq!(v[3], format!("{}.{}{}", v[0], v[1], v[2]));
    // Every line FIELD starts; nothing, and success, when none does.
    let xen_m = host.rxl_ok(&["info", "xen_m"]);
    assert_eq!(xen_m, format!("{}\n{}\n", v[0], v[1]));
    assert_eq!(host.rxl_ok(&["info", "nosuchfield"]), "");
    let x = host.rxl_ok(&["info", "-x"]);
    assert!(
        x.contains("xenstore_features      : 0x00000000\nxend_config_format     : 4\n"),
        "{x}"
    );
}

#[test]
fn create_dry_run_and_list_long_print_libxl_json() {
    let host = Host::start();
    let cfg = host.config(
        "lj.cfg",
        "name = \"lj\"\nkernel = \"builtin:testguest\"\nmemory = 12\nvcpus = 2\ncpus = \"0\"\n\
         on_reboot = \"rename-restart\"\nxen_shell = \"alice\"\n",
    );
    let cfg = cfg.to_str().expect("utf-8");
    // xl create -n: libxl_domain_config_to_json, nothing wrapped around it.
    let dry: serde_json::Value =
        serde_json::from_str(&host.rxl_ok(&["create", "-n", cfg])).expect("JSON");
    assert_eq!(dry["c_info"]["name"], "lj");
    assert_eq!(dry["c_info"]["type"], "pv");
    assert_eq!(dry["b_info"]["max_vcpus"], 2);
    assert_eq!(dry["b_info"]["target_memkb"], 12 * 1024);
    assert_eq!(
        dry["b_info"]["vcpu_hard_affinity"],
        serde_json::json!([[0], [0]])
    );
    assert_eq!(dry["b_info"]["type.pv"], serde_json::json!({}));
    assert_eq!(dry["on_reboot"], "restart_rename");
    assert_eq!(dry["rxen"]["xen_shell"], serde_json::json!(["alice"]));
    assert!(
        dry.get("name").is_none(),
        "rxen's own model at the top level"
    );
    let _con = host.create_guest("lj2", 1, 12, "");
    let id: u64 = host.rxl_ok(&["domid", "lj2"]).trim().parse().expect("id");
    // xl list -l: [{"domid": N, "config": {...}}], Domain-0 left out.
    let all: serde_json::Value = serde_json::from_str(&host.rxl_ok(&["list", "-l"])).expect("JSON");
    let all = all.as_array().expect("an array");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["domid"], id);
    let c = &all[0]["config"];
    assert_eq!(c["c_info"]["name"], "lj2");
    let uuid = c["c_info"]["uuid"]
        .as_str()
        .expect("the running domain's UUID");
    assert!(host.rxl_ok(&["list", "-v"]).contains(uuid));
    assert_eq!(c["b_info"]["max_memkb"], 12 * 1024);
    assert!(c["rxen"]["config_path"].as_str().is_some(), "{c}");
    let zero: serde_json::Value =
        serde_json::from_str(&host.rxl_ok(&["list", "-l", "0"])).expect("JSON");
    assert_eq!(zero, serde_json::json!([]));
}

#[test]
fn save_prints_xl_saving_line_and_refuses_minus_capital_d() {
    let host = Host::start();
    let _con = host.create_guest("svl", 1, 12, "");
    let file = host.dir.path().join("svl.sav");
    let f = file.to_str().expect("utf-8");
    // -D would keep the domain ID in the file: refused before anything is saved.
    let out = host.rxl(&["save", "-D", "svl", f]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("-D"), "{}", stderr(&out));
    assert!(!file.exists(), "save -D wrote a file");
    assert!(host.list_row("svl").is_some(), "save -D stopped the domain");
    let out = host.rxl(&["save", "-c", "svl", f]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("Saving to "))
        .unwrap_or_else(|| panic!("no Saving line: {err}"));
    let prefix = format!("Saving to {f} new rxl format (info 0x0/0x0/");
    let len: u64 = line
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line:?} is not xl's line"))
        .parse()
        .expect("the config's length");
    assert!(len > 50, "{line}");
}

#[test]
fn console_takes_type_number_and_escape_as_xl() {
    let host = Host::start();
    let _con = host.create_guest("cons", 1, 12, "");
    // The serial console 0 is the domain's console; -e names the byte that detaches.
    let mut con = rxen_e2e::Console::spawn(
        host.rxl_command()
            .args(["console", "-t", "serial", "-n", "0", "-e", "^a", "cons"]),
    );
    con.sync();
    con.send("\u{1}");
    let status = con.wait_closed(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(host.list_row("cons").is_some());
    let out = host.rxl(&["console", "-t", "vga", "cons"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("console type supported are: pv, serial, vuart\n", Some(1))
    );
    for args in [
        &["console", "-t", "pv", "cons"][..],
        &["console", "-t", "serial", "-n", "1", "cons"],
    ] {
        let out = host.rxl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).ends_with("\nUnable to attach console\n"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = host.rxl(&["console", "-e", "xy", "cons"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("Invalid escape argument\n", Some(1))
    );
}

#[test]
fn vcpu_pin_sets_soft_affinity_and_takes_force_as_xl() {
    let host = Host::start();
    let _con = host.create_guest("soft", 2, 12, "");
    let row = |vcpu: usize| {
        let out = host.rxl_ok(&["vcpu-list", "soft"]);
        out.lines()
            .nth(1 + vcpu)
            .unwrap_or_else(|| panic!("no vCPU {vcpu}: {out}"))
            .to_string()
    };
    // `xl vcpu-pin d 0 - 0`: the hard affinity unchanged, the soft one CPU 0, for vCPU 0 only.
    host.rxl_ok(&["vcpu-pin", "soft", "0", "-", "0"]);
    assert!(row(0).ends_with("  all / 0"), "{}", row(0));
    assert!(row(1).ends_with("  all / all"), "{}", row(1));
    // Both at once, -f for one vCPU; the soft affinity stays when only the hard one changes.
    host.rxl_ok(&["vcpu-pin", "-f", "soft", "1", "0", "0"]);
    assert!(row(1).ends_with("  0 / 0"), "{}", row(1));
    host.rxl_ok(&["vcpu-pin", "soft", "1", "all"]);
    assert!(row(1).ends_with("  all / 0"), "{}", row(1));
    host.rxl_ok(&["vcpu-pin", "soft", "all", "-", "all"]);
    assert!(row(0).ends_with("  all / all"), "{}", row(0));
    assert!(row(1).ends_with("  all / all"), "{}", row(1));
    let out = host.rxl(&["vcpu-pin", "-f", "soft", "all", "0"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("Error: --force and 'all' as VCPU not allowed.\n", Some(1))
    );
    let out = host.rxl(&["vcpu-pin", "soft", "first", "0"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("Error: Invalid argument first as VCPU.\n", Some(1))
    );
    assert!(!host
        .rxl(&["vcpu-pin", "soft", "0", "-", "99"])
        .status
        .success());
}

#[test]
fn sched_credit_pool_parameters_and_credit2_share_the_weights() {
    let host = Host::start();
    let _con = host.create_guest("cr2", 1, 12, "cpu_weight = 300\ncap = 20");
    let id = host.rxl_ok(&["domid", "cr2"]).trim().to_string();
    // -s: xl's pool line, from CFS: the cap period rxen uses, the kernel's bandwidth slice.
    let slice: u64 = std::fs::read_to_string("/proc/sys/kernel/sched_cfs_bandwidth_slice_us")
        .expect("bandwidth slice")
        .trim()
        .parse()
        .expect("a number");
    let pool = host.rxl_ok(&["sched-credit", "-s"]);
    let want = format!("Cpupool Pool-0: tslice=100ms ratelimit={slice}us migration-delay=");
    assert!(
        pool.starts_with(&want) && pool.ends_with("us\n") && pool.lines().count() == 1,
        "{pool}"
    );
    assert_eq!(host.rxl_ok(&["sched-credit", "-s", "-p", "Pool-0"]), pool);
    assert_eq!(
        host.rxl_ok(&["sched-credit2", "-s"]),
        format!("Cpupool Pool-0: ratelimit={slice}us\n")
    );
    // sched-credit2 lists and changes the same weights and caps.
    let row = format!("{:<33} {:>4} {:>6} {:>4}", "cr2", id, 300, 20);
    let all = host.rxl_ok(&["sched-credit2", "-p", "Pool-0"]);
    assert!(
        all.starts_with(&format!("Cpupool Pool-0: ratelimit={slice}us\nName "))
            && all.contains(&row),
        "{all}"
    );
    host.rxl_ok(&["sched-credit2", "-d", "cr2", "-w", "512"]);
    let one = host.rxl_ok(&["sched-credit", "-d", "cr2"]);
    assert!(
        one.ends_with(&format!("{:<33} {:>4} {:>6} {:>4}\n", "cr2", id, 512, 20)),
        "{one}"
    );
    // xl's refusals.
    for (args, msg) in [
        (
            &["sched-credit", "-s", "-d", "cr2"][..],
            "Specifying a cpupool or schedparam is not allowed with domain options.\n",
        ),
        (
            &["sched-credit2", "-p", "Pool-0", "-d", "cr2"],
            "Specifying a cpupool is not allowed with other options.\n",
        ),
        (
            &["sched-credit", "-t", "30"],
            "Must specify schedparam to set schedule parameter values.\n",
        ),
        (
            &["sched-credit", "-p", "Pool-1"],
            "unknown cpupool 'Pool-1'\n",
        ),
    ] {
        let out = host.rxl(args);
        assert_eq!(
            (stderr(&out).as_str(), out.status.code()),
            (msg, Some(1)),
            "{args:?}"
        );
    }
    let out = host.rxl(&["sched-credit", "-s", "-t", "30"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot be set"), "{}", stderr(&out));
}

#[test]
fn pci_passthrough_commands_say_it_needs_vfio() {
    let host = Host::start();
    for args in [
        &["pci-attach", "Domain-0", "0000:00:1f.0"][..],
        &["pci-detach", "Domain-0", "0000:00:1f.0"],
        &["pci-list", "Domain-0"],
        &["pci-assignable-add", "-n", "nic", "0000:00:1f.0"],
        &["pci-assignable-remove", "-r", "0000:00:1f.0"],
        &["pci-assignable-list", "-n"],
    ] {
        let out = host.rxl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.starts_with(&format!("{}: PCI passthrough is not supported", args[0]))
                && err.contains("VFIO"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn config_update_is_used_at_the_next_reboot_and_vm_list_prints_xl_columns() {
    let host = Host::start();
    let _con = host.create_guest("cfgup", 1, 12, "");
    let old_id = host.rxl_ok(&["domid", "cfgup"]).trim().to_string();
    let new = host.config(
        "cfgup-new.cfg",
        "name = \"cfgup\"\nkernel = \"builtin:testguest\"\nmemory = 16\nvcpus = 1\n",
    );
    let new = new.to_str().expect("utf-8");
    let out = host.rxl(&["config-update", "cfgup", new, "vcpus=2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("setting dom{old_id} configuration\n"));
    // Nothing changes until the domain is created again.
    let row = host.list_row("cfgup").expect("cfgup");
    assert_eq!((row[2].as_str(), row[3].as_str()), ("12", "1"), "{row:?}");
    host.rxl_ok(&["reboot", "cfgup"]);
    wait_until(BOOT, "cfgup is back under a new ID", || {
        host.list_row("cfgup").is_some_and(|r| r[1] != old_id)
    });
    let row = host.list_row("cfgup").expect("cfgup");
    assert_eq!(
        (row[2].as_str(), row[3].as_str()),
        ("16", "2"),
        "the restart did not use the updated config: {row:?}"
    );
    // xl's messages for a missing file and an unknown domain.
    let out = host.rxl(&["config-update", "cfgup"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("Config file not specified\n", Some(1))
    );
    let out = host.rxl(&["config-update", "nosuch", new]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("nosuch is an invalid domain identifier (rc=-6)\n", Some(1))
    );
    // vm-list: UUID, ID and name, as xl prints them.
    let id = host.rxl_ok(&["domid", "cfgup"]).trim().to_string();
    let uuid = host.rxl_ok(&["list", "-v", "cfgup"]);
    let uuid = uuid
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(6))
        .expect("uuid column")
        .to_string();
    let out = host.rxl_ok(&["vm-list"]);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("UUID                                  ID    name")
    );
    assert!(
        out.contains(&format!("\n{uuid}  {id}    cfgup{}\n", " ".repeat(25))),
        "{out}"
    );
}

#[test]
fn generated_manual_pages_and_bash_completion_know_the_commands_and_domains() {
    let host = Host::start();
    let _con = host.create_guest("complme", 1, 12, "");
    let dir = host.dir.path().join("gen");
    let out = std::process::Command::new(rxen_e2e::bin("rxl-gen-man"))
        .arg(&dir)
        .output()
        .expect("run rxl-gen-man");
    assert!(out.status.success(), "{}", stderr(&out));
    let rxl1 = std::fs::read_to_string(dir.join("man1/rxl.1")).expect("rxl.1");
    for cmd in [
        "host\\-shutdown",
        "sched\\-credit2",
        "config\\-update",
        "vm\\-list",
    ] {
        assert!(rxl1.contains(cmd), "rxl.1 lacks {cmd}");
    }
    assert!(dir.join("man1/rxl-sched-credit2.1").exists());
    assert!(std::fs::read_to_string(dir.join("man5/rxl.cfg.5"))
        .expect("rxl.cfg.5")
        .contains("\\fBon_crash\\fR (default: destroy)"));
    assert!(std::fs::read_to_string(dir.join("man8/rxend.8"))
        .expect("rxend.8")
        .contains(".TH rxend 8"));
    assert!(std::fs::read_to_string(dir.join("man1/rxen-shell.1"))
        .expect("rxen-shell.1")
        .contains(".SH COMMANDS"));
    // bash, with the completion sourced, completes a command, an option and a running
    // domain's name (from `rxl list` against this host).
    let rxl = rxen_e2e::bin("rxl");
    let path = format!(
        "{}:{}",
        rxl.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!(
        "source {}\n\
         c() {{ COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); \
         _rxl_with_domains rxl \"${{@: -1}}\" \"${{@: -2:1}}\"; echo \"${{COMPREPLY[*]}}\"; }}\n\
         c rxl host-sh\nc rxl sched-credit2 --we\nc rxl destroy compl\n",
        dir.join("bash-completion/rxl").display()
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("PATH", path)
        .env("RXEN_SOCKET", host.socket())
        .output()
        .expect("run bash");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "host-shutdown\n--weight\ncomplme\n",
        "{}",
        stderr(&out)
    );
}

#[test]
fn trigger_reset_restarts_at_once_and_power_presses_the_button() {
    let host = Host::start();
    let _con = host.create_guest("trig", 1, 12, "");
    let old_id = host.rxl_ok(&["domid", "trig"]).trim().to_string();
    // Paused, the guest cannot answer a reboot request: a reset does not ask it.
    host.rxl_ok(&["pause", "trig"]);
    host.rxl_ok(&["trigger", "trig", "reset"]);
    wait_until(BOOT, "trig is back under a new ID", || {
        host.list_row("trig").is_some_and(|r| r[1] != old_id)
    });
    // While rxend starts it, the new domain shows `--p---`, as xl's does while it is built;
    // then it runs, not paused as the old one was.
    wait_until(BOOT, "the reset domain runs unpaused", || {
        host.list_row("trig").is_some_and(|r| !r[4].contains('p'))
    });
    let out = host.rxl(&["trigger", "trig", "init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("trigger init is not supported: "),
        "{}",
        stderr(&out)
    );
    let out = host.rxl(&["trigger", "trig", "kick"]);
    assert_eq!(
        (stderr(&out).as_str(), out.status.code()),
        ("Invalid trigger \"kick\"\n", Some(1))
    );
    let out = host.rxl(&["trigger", "nosuch", "power"]);
    assert_eq!(
        stderr(&out),
        "nosuch is an invalid domain identifier (rc=-6)\n"
    );
    // power: the guest's power button; on_poweroff = destroy.
    let _con = host.console("trig");
    host.rxl_ok(&["trigger", "trig", "power"]);
    wait_until(BOOT, "trig powered off", || host.list_row("trig").is_none());
}

#[test]
fn trigger_nmi_reaches_the_chosen_vcpu_and_the_guest_runs_on() {
    let host = Host::start();
    let mut con = host.create_guest("nmi", 2, 12, "");
    let nmis = |con: &rxen_e2e::Console, cpu: u32| {
        con.output().matches(&format!("nmi: cpu {cpu}")).count()
    };
    assert_eq!((nmis(&con, 0), nmis(&con, 1)), (0, 0));
    let before = con.heartbeat();
    // xl's default vCPU is 0; the guest's NMI handler counts it and vCPU 0 reports it.
    host.rxl_ok(&["trigger", "nmi", "nmi"]);
    assert_eq!(con.wait_for("nmi: cpu ", BOOT), "nmi: cpu 0");
    // The handler returned (iretq): the guest runs on and answers.
    wait_until(BOOT, "the heartbeat goes on after the NMI", || {
        con.heartbeat() > before
    });
    host.rxl_ok(&["trigger", "nmi", "nmi", "1"]);
    assert_eq!(con.wait_for("nmi: cpu ", BOOT), "nmi: cpu 1");
    // A vCPU the domain does not have, and one no domain has.
    let out = host.rxl(&["trigger", "nmi", "nmi", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no vCPU 5: this domain has 2 (0 to 1)"),
        "{}",
        stderr(&out)
    );
    let out = host.rxl(&["trigger", "nmi", "nmi", "4294967296"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("vCPU 4294967296 is out of range"),
        "{}",
        stderr(&out)
    );
    // A paused domain takes its NMI when it runs again.
    host.rxl_ok(&["pause", "nmi"]);
    host.rxl_ok(&["trigger", "nmi", "nmi", "1"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(nmis(&con, 1), 1, "an NMI reached a paused guest");
    host.rxl_ok(&["unpause", "nmi"]);
    assert_eq!(con.wait_for("nmi: cpu ", BOOT), "nmi: cpu 1");
    assert_eq!((nmis(&con, 0), nmis(&con, 1)), (1, 2));
    // NMIs that land at any instruction of a busy vCPU (not only in its `hlt`): it takes
    // them all (back-to-back ones may merge, as on hardware) and finishes its work.
    con.sync();
    con.send("burn 1 1");
    con.wait_for("burning vcpu 1 for 1 s", BOOT);
    for _ in 0..20 {
        host.rxl_ok(&["trigger", "nmi", "nmi", "1"]);
    }
    con.wait_for("burn done on vcpu 1", BOOT);
    std::thread::sleep(Duration::from_millis(300));
    let busy = nmis(&con, 1) - 2;
    assert!((1..=20).contains(&busy), "{busy} NMIs reported for 20");
    let before = con.heartbeat();
    wait_until(BOOT, "the heartbeat goes on after the unpause", || {
        con.heartbeat() > before
    });
}

/// What /sys says of each online CPU: (cpu, core, socket, node), the node from the CPU's
/// `nodeN` link (rxend reads the nodes' cpulists).
fn sys_cpus() -> Vec<(u32, u32, u32, u32)> {
    let dir = std::path::Path::new("/sys/devices/system/cpu");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)
        .expect("/sys/devices/system/cpu")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(cpu) = name.strip_prefix("cpu").and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let read = |f: &str| {
            std::fs::read_to_string(e.path().join("topology").join(f))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
        };
        let (Some(core), Some(socket)) = (read("core_id"), read("physical_package_id")) else {
            continue;
        };
        let node = std::fs::read_dir(e.path())
            .expect("cpu dir")
            .flatten()
            .find_map(|n| {
                n.file_name()
                    .to_string_lossy()
                    .strip_prefix("node")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        out.push((cpu, core, socket, node));
    }
    out.sort_unstable();
    out
}

#[test]
fn info_n_prints_the_hosts_cpu_topology_and_numa_nodes_from_sys() {
    let host = Host::start();
    let text = host.rxl_ok(&["info", "-n"]);
    let lines: Vec<&str> = text.lines().collect();
    let pos = |l: &str| {
        lines
            .iter()
            .position(|x| *x == l)
            .unwrap_or_else(|| panic!("no line {l:?} in:\n{text}"))
    };
    let topo = pos("cpu_topology           :");
    assert_eq!(lines[topo + 1], "cpu:    core    socket     node");
    assert!(lines[topo - 1].starts_with("free_cpus "), "{text}");
    let cpus = sys_cpus();
    assert!(!cpus.is_empty());
    for (i, (cpu, core, socket, node)) in cpus.iter().enumerate() {
        assert_eq!(
            lines[topo + 2 + i],
            format!("{cpu:3}:    {core:4}     {socket:4}     {node:4}"),
            "{text}"
        );
    }
    let dev = pos("device topology        :");
    assert_eq!(dev, topo + 2 + cpus.len(), "{text}");
    assert_eq!(lines[dev + 1], "device           node");
    let numa = pos("numa_info              :");
    assert_eq!(lines[numa + 1], "node:    memsize    memfree    distances");
    // Each node's line: its memory (MiB) and distances as /sys has them.
    let node_dir = std::path::Path::new("/sys/devices/system/node");
    let mut nodes = 0;
    for row in &lines[numa + 2..] {
        let Some((id, rest)) = row.split_once(':') else {
            break;
        };
        let Ok(id) = id.trim().parse::<u32>() else {
            break;
        };
        nodes += 1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        assert_eq!(f.len(), 3, "{row}");
        let size: u64 = f[0].parse().expect("memsize");
        let free: u64 = f[1].parse().expect("memfree");
        assert!(free <= size, "{row}");
        if node_dir.exists() {
            let dir = node_dir.join(format!("node{id}"));
            let meminfo = std::fs::read_to_string(dir.join("meminfo")).expect("meminfo");
            let total_kb: u64 = meminfo
                .lines()
                .find(|l| l.contains("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
                .expect("MemTotal");
            assert_eq!(size, total_kb >> 10, "{row}");
            let dist = std::fs::read_to_string(dir.join("distance")).expect("distance");
            assert_eq!(
                f[2],
                dist.split_whitespace().collect::<Vec<_>>().join(","),
                "{row}"
            );
        }
        assert!(
            row.starts_with(&format!("{id:4}:    {size:6}     {free:6}      ")),
            "{row:?}"
        );
    }
    assert!(nodes >= 1, "{text}");
    assert_eq!(
        lines[numa + 2 + nodes].split(':').next(),
        Some("xen_major              ")
    );
    let nr_nodes = host.rxl_ok(&["info", "nr_nodes"]);
    assert_eq!(nr_nodes.trim(), nodes.to_string());
    // As xl: with -n, a FIELD is ignored.
    assert!(host
        .rxl_ok(&["info", "-n", "xen_major"])
        .contains("numa_info"));
}
