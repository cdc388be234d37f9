//! `rxl`: the xl-compatible command line of rxen.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rxen_proto::api::{ConfigText, DomainInfo, Request, Response};
use rxl::cli::front::{self, Globals, Invocation};
use rxl::cli::{Cli, Cmd};
use rxl::client::{Client, ClientError};
use rxl::migration::{self, Progress};
use rxl::{console, domains, format, libxl, power, sched, top};

/// A failure to report: one line on stderr and exit status 1.
struct Failure(String);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure(e.to_string())
    }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let (globals, cli) = match front::parse(std::env::args_os()) {
        Invocation::Run { globals, cli } => (globals, cli),
        Invocation::Exit(exit) => {
            print!("{}", exit.stdout);
            eprint!("{}", exit.stderr);
            return ExitCode::from(exit.code);
        }
    };
    match run(globals, cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            if !msg.is_empty() {
                eprintln!("{msg}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(globals: Globals, cli: Cli) -> Outcome {
    let socket = cli.socket;
    let connect = || Client::connect_or_start(&socket).map_err(Failure::from);
    match cli.cmd {
        Cmd::Create {
            console,
            paused,
            dry_run,
            quiet,
            ignore_unsupported,
            pool,
            vnc,
            file,
            overrides,
        } => {
            if let Some(why) = vnc.refusal() {
                return Err(Failure(why.into()));
            }
            let dry_run = dry_run || globals.dry_run;
            let path = config_path(&file);
            let text = read_config_file(&path)?;
            if !quiet {
                eprintln!("Parsing config from {}", path.display());
            }
            if dry_run {
                return dry_run_create(&path, &text, &overrides);
            }
            let abs = std::path::absolute(&path).unwrap_or(path);
            let mut c = connect()?;
            if pool {
                let p = Progress::start(format!("placing {} in the pool", abs.display()));
                let r = c.call(&Request::PoolCreate {
                    path: abs.display().to_string(),
                    text,
                    overrides,
                    paused,
                    ignore_unsupported,
                });
                p.finish();
                return placed(r?, "created");
            }
            let resp = c.call(&Request::Create {
                path: abs.display().to_string(),
                text,
                overrides,
                paused,
                ignore_unsupported,
            })?;
            started(&mut c, resp, console)
        }
        Cmd::List { pool: true, .. } => {
            let resp = connect()?.call(&Request::PoolDomains)?;
            let Response::PoolDomains { domains, .. } = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            print!("{}", rxl::pool::domain_table(&domains));
            Ok(())
        }
        Cmd::HostList => {
            let resp = connect()?.call(&Request::PoolHosts)?;
            let Response::PoolHosts { hosts, .. } = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            print!("{}", rxl::pool::host_table(&hosts));
            Ok(())
        }
        Cmd::HostDisable { host } => {
            connect()?.call_ok(&Request::PoolHostEnable {
                host,
                enabled: false,
            })?;
            Ok(())
        }
        Cmd::HostEvacuate { parallel, host } => evacuate(&socket, &host, parallel),
        Cmd::HostEnable { host } => {
            connect()?.call_ok(&Request::PoolHostEnable {
                host,
                enabled: true,
            })?;
            Ok(())
        }
        Cmd::List {
            long,
            verbose,
            domains,
            ..
        } => {
            let list = list(&mut connect()?, domains)?;
            if long {
                // xl skips the domains whose configuration it cannot retrieve: Domain-0 among them.
                let out: Vec<libxl::ListEntry> = list
                    .iter()
                    .filter_map(|d| {
                        let cfg: xlcfg::DomainConfig =
                            serde_json::from_value(d.config.clone()?).ok()?;
                        let mut config =
                            libxl::LibxlConfig::from_config(&cfg, d.config_path.clone());
                        // The UUID the domain runs with, generated when the config had none.
                        if !d.uuid.is_empty() {
                            config.c_info.uuid = Some(d.uuid.clone());
                        }
                        Some(libxl::ListEntry {
                            domid: d.domid,
                            config,
                        })
                    })
                    .collect();
                let text = libxl::to_json(&out).map_err(|e| Failure(e.to_string()))?;
                println!("{text}");
            } else {
                print!("{}", format::list_table(&list, verbose));
            }
            Ok(())
        }
        Cmd::ConfigUpdate {
            defconfig,
            debug,
            ignore_unsupported,
            domain,
            args,
        } => {
            let (file, overrides) = match rxl::cli::config_update_args(defconfig.as_deref(), &args)
            {
                Ok(x) => x,
                Err(_) => {
                    print!(
                        "{}",
                        front::help(
                            &<Cli as clap::CommandFactory>::command(),
                            Some("config-update")
                        )
                    );
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    std::process::exit(2);
                }
            };
            let Some(file) = file else {
                return Err(Failure("Config file not specified".into()));
            };
            let path = config_path(&file);
            let text = read_config_file(&path)
                .map_err(|_| Failure(format!("Failed to read config file: {file}")))?;
            if debug || globals.dry_run {
                dry_run_create(&path, &text, &overrides)?;
            }
            if globals.dry_run {
                return Ok(());
            }
            let abs = std::path::absolute(&path).unwrap_or(path);
            let mut c = connect()?;
            let (domid, _) = lookup(&mut c, &domain)?;
            eprintln!("setting dom{domid} configuration");
            let resp = c.call(&Request::ConfigUpdate {
                domain: domid.to_string(),
                path: abs.display().to_string(),
                text,
                overrides,
                ignore_unsupported,
            })?;
            let Response::Domain { warnings, .. } = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            for w in warnings {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        Cmd::VmList => {
            print!("{}", format::vm_list(&list(&mut connect()?, Vec::new())?));
            Ok(())
        }
        Cmd::Boot { console, domain } => {
            let mut c = connect()?;
            let resp = c.call(&Request::Boot { domain })?;
            started(&mut c, resp, console)
        }
        Cmd::Console {
            kind,
            number,
            escape,
            domain,
        } => {
            let fail = |e: console::ConsoleChoiceError| Failure(e.to_string());
            console::choose(kind.as_deref(), number.as_deref()).map_err(fail)?;
            let escape = escape
                .as_deref()
                .map_or(Ok(console::ESCAPE), console::escape_byte)
                .map_err(fail)?;
            attach_with(&mut connect()?, &domain, escape)
        }
        Cmd::Shutdown {
            wait, all, domain, ..
        } => power(&mut connect()?, wait, all, domain, false),
        Cmd::Reboot {
            wait, all, domain, ..
        } => power(&mut connect()?, wait, all, domain, true),
        Cmd::Destroy { force, domain } => {
            let mut c = connect()?;
            let (domid, _) = lookup(&mut c, &domain)?;
            domains::may_destroy(domid, force).map_err(|e| Failure(e.to_string()))?;
            Ok(c.call_ok(&Request::Destroy {
                domain: domid.to_string(),
            })?)
        }
        Cmd::Pause { domain } => Ok(connect()?.call_ok(&Request::Pause { domain })?),
        Cmd::Unpause { domain } => Ok(connect()?.call_ok(&Request::Unpause { domain })?),
        Cmd::Rename { domain, new_name } => {
            Ok(connect()?.call_ok(&Request::Rename { domain, new_name })?)
        }
        Cmd::Save {
            checkpoint,
            paused,
            keep_domid,
            verbose,
            domain,
            file,
            config,
        } => {
            if keep_domid {
                return Err(Failure(migration::KEEP_DOMID_REFUSAL.into()));
            }
            let abs = std::path::absolute(&file).unwrap_or(file);
            let config = config.map(|c| read_config(&c)).transpose()?;
            let mut c = connect()?;
            let p = follow(&socket, format!("saving {domain}"), &domain);
            let r = c.call(&Request::Save {
                domain,
                path: abs.display().to_string(),
                checkpoint,
                paused,
                config,
            });
            p.finish();
            match r? {
                Response::Transferred { name, stats } => {
                    // xl prints this once the header is written; rxl once the VMM wrote the
                    // stream, whose header and config record it reads back.
                    match migration::SaveFileInfo::of_file(&abs) {
                        Ok(info) => eprintln!("{}", migration::saving_line(&abs, &info)),
                        Err(e) => eprintln!("Saving to {} new rxl format ({e})", abs.display()),
                    }
                    eprintln!("Saved domain {name}: {}", migration::figures(&stats));
                    if verbose || globals.verbose > 0 {
                        eprint!("{}", migration::breakdown(&stats));
                    }
                    Ok(())
                }
                other => Err(Failure(format!("unexpected answer: {other:?}"))),
            }
        }
        Cmd::Restore {
            paused,
            pool,
            no_wait: _,
            console,
            vnc,
            files,
        } => {
            if let Some(why) = vnc.refusal() {
                return Err(Failure(why.into()));
            }
            // xl: `restore [ConfigFile] CheckpointFile`.
            let Some((config, file)) = rxl::cli::restore_files(&files) else {
                let cmd = <Cli as clap::CommandFactory>::command();
                print!("{}", front::help(&cmd, Some("restore")));
                return Err(Failure(String::new()));
            };
            let (config, file) = (config.map(str::to_string), PathBuf::from(file));
            let abs = std::path::absolute(&file).unwrap_or(file);
            let config = config.map(|c| read_config(&c)).transpose()?;
            let mut c = connect()?;
            eprintln!("Loading new save file {} (new rxl fmt)", abs.display());
            if pool {
                let p = Progress::start(format!("restoring {} in the pool", abs.display()));
                let r = c.call(&Request::PoolRestore {
                    path: abs.display().to_string(),
                    config,
                    paused,
                });
                p.finish();
                return placed(r?, "restored");
            }
            let p = Progress::start(format!("restoring {}", abs.display()));
            let r = c.call(&Request::Restore {
                path: abs.display().to_string(),
                config,
                paused,
            });
            p.finish();
            let Response::Domain { name, warnings, .. } = r? else {
                return Err(Failure("unexpected answer from rxend".into()));
            };
            for w in warnings {
                eprintln!("warning: {w}");
            }
            if console {
                attach(&mut c, &name)?;
            }
            Ok(())
        }
        Cmd::Migrate {
            ssh,
            no_wait: _,
            paused,
            live: _,
            non_live,
            relocation,
            port,
            key,
            max_rounds,
            downtime_ms,
            verbose,
            copy_storage,
            domain,
            host,
        } => {
            let tcp = relocation || port.is_some() || key.is_some();
            let mut req = Request::Migrate {
                domain: domain.clone(),
                host: host.clone(),
                port: port.unwrap_or(8002),
                key_file: key.map(|k| std::path::absolute(&k).unwrap_or(k).display().to_string()),
                live: !non_live,
                max_rounds,
                downtime_ms,
                paused,
                ssh: false,
                copy_storage,
            };
            let mut c = connect()?;
            let p = follow(&socket, format!("migrating {domain} to {host}"), &domain);
            let r = if tcp {
                c.call(&req)
            } else {
                if let Request::Migrate { ssh, .. } = &mut req {
                    *ssh = true;
                }
                let cmd = ssh.unwrap_or_else(|| "ssh".into());
                let (mut child, channel) = migration::spawn_ssh(&cmd, &host, paused)
                    .map_err(|e| Failure(e.to_string()))?;
                let r = c.call_with_fd(&req, &channel);
                drop(channel);
                let _ = child.wait();
                r
            };
            p.finish();
            match r? {
                Response::Transferred { name, stats } => {
                    eprintln!("Migration successful.");
                    println!("migrated {name} to {host}: {}", migration::figures(&stats));
                    if verbose || globals.verbose > 0 {
                        print!("{}", migration::breakdown(&stats));
                    }
                    Ok(())
                }
                other => Err(Failure(format!("unexpected answer: {other:?}"))),
            }
        }
        Cmd::MigrateReceive {
            paused,
            no_wait: _,
            debug: _,
        } => {
            let (channel, out) = migration::stdio_channel().map_err(|e| Failure(e.to_string()))?;
            let mut c = connect()?;
            let r = c.call_with_fd(&Request::MigrateReceive { paused }, &channel);
            drop(channel);
            // Let the last words to the sender ("resumed") reach stdout.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !out.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            r?;
            eprintln!("migration target: domain received and running");
            Ok(())
        }
        Cmd::Trigger {
            domain,
            trigger,
            vcpu,
        } => {
            use rxl::trigger::Trigger;
            let fail = |e: rxl::trigger::TriggerError| Failure(e.to_string());
            // As xl: the domain first, then the trigger.
            let mut c = connect()?;
            let (domid, _) = lookup(&mut c, &domain)?;
            let t = Trigger::parse(&trigger).map_err(fail)?;
            let mut vcpu_value = 0;
            if let Some(v) = vcpu {
                // xl reads it with strtol and falls back to vCPU 0 on garbage.
                let (value, read) = rxl::trigger::parse_vcpu(&v);
                if !read {
                    eprint!("Invalid vcpuid, using default vcpuid=0.\n\n");
                }
                vcpu_value = value;
            }
            let t = t.supported().map_err(fail)?;
            let domain = domid.to_string();
            Ok(c.call_ok(&match t {
                Trigger::Reset => Request::Reset { domain },
                Trigger::Nmi => Request::Nmi {
                    domain,
                    vcpu: rxl::trigger::nmi_vcpu(vcpu_value).map_err(Failure)?,
                },
                _ => Request::Shutdown { domain },
            })?)
        }
        Cmd::Sysrq { domain, letter } => {
            // As xl: the domain first, then exactly one character.
            let mut c = connect()?;
            let (domid, _) = lookup(&mut c, &domain)?;
            let &[key] = letter.as_bytes() else {
                eprint!("Invalid sysrq.\n\n");
                print!(
                    "{}",
                    front::command_help(&<Cli as clap::CommandFactory>::command(), "sysrq")
                );
                return Err(Failure(String::new()));
            };
            Ok(c.call_ok(&Request::Sysrq {
                domain: domid.to_string(),
                key,
            })?)
        }
        Cmd::CdInsert { domain, vdev, path } => {
            let mut c = connect()?;
            let (domid, _) = lookup(&mut c, &domain)?;
            // As xl: the file must be there.
            if std::fs::metadata(&path).is_err() {
                return Err(Failure(format!("Cannot stat file: {}", path.display())));
            }
            let abs = std::path::absolute(&path).unwrap_or(path);
            Ok(c.call_ok(&Request::ChangeCdrom {
                domain: domid.to_string(),
                vdev,
                target: Some(abs.display().to_string()),
            })?)
        }
        Cmd::CdEject { domain, vdev } => {
            let mut c = connect()?;
            let (domid, _) = lookup(&mut c, &domain)?;
            Ok(c.call_ok(&Request::ChangeCdrom {
                domain: domid.to_string(),
                vdev,
                target: None,
            })?)
        }
        Cmd::DumpCore { domain, filename } => {
            let mut c = connect()?;
            let (domid, _) = lookup(&mut c, &domain)?;
            let abs = std::path::absolute(&filename).unwrap_or(filename);
            c.call_ok(&Request::DumpCore {
                domain: domid.to_string(),
                path: abs.display().to_string(),
            })
            .map_err(|e| Failure(format!("{e}\ncore dump failed (rc=-3)")))
        }
        Cmd::Domid { name } => {
            let all = list(&mut connect()?, Vec::new())?;
            let id = domains::domid_of(&all, &name).map_err(|e| Failure(e.to_string()))?;
            println!("{id}");
            Ok(())
        }
        Cmd::Domname { id } => {
            // An ID without digits is refused before rxend is asked, as xl does.
            domains::parse_domid(&id).map_err(|e| Failure(e.to_string()))?;
            let all = list(&mut connect()?, Vec::new())?;
            let name = domains::name_of(&all, &id).map_err(|e| Failure(e.to_string()))?;
            println!("{name}");
            Ok(())
        }
        Cmd::Backup {
            incremental,
            domain,
            dir,
        } => {
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            let resp = connect()?.call(&Request::Backup {
                domain,
                dir: dir.display().to_string(),
                incremental,
            })?;
            let Response::BackedUp {
                dir,
                paused_ms,
                disks,
                state_bytes,
            } = resp
            else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            println!(
                "{}",
                format::backup_line(&dir, paused_ms, state_bytes, &disks)
            );
            Ok(())
        }
        Cmd::BackupRestore { dir, name } => {
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            let resp = connect()?.call(&Request::BackupRestore {
                dir: dir.display().to_string(),
                name,
            })?;
            let Response::Domain { domid, name, .. } = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            println!("Restored domain {name} (id {domid}) from {}", dir.display());
            Ok(())
        }
        cmd @ (Cmd::HostShutdown | Cmd::HostStart) => {
            let req = if matches!(cmd, Cmd::HostShutdown) {
                Request::HostShutdown
            } else {
                Request::HostStart
            };
            let resp = connect()?.call(&req)?;
            let Response::HostDomains { domains: outcomes } = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            for o in &outcomes {
                println!("{}", format::host_domain_line(o));
            }
            let failed = outcomes.iter().filter(|o| !o.action.is_success()).count();
            if failed > 0 {
                return Err(Failure(format!(
                    "{failed} of {} domain(s) did not go as planned",
                    outcomes.len()
                )));
            }
            Ok(())
        }
        Cmd::Uptime { short, domains } => {
            let list = list(&mut connect()?, domains)?;
            if short {
                // xl: the local time of day, as strftime's %H:%M:%S.
                let clock = chrono::Local::now().format("%H:%M:%S").to_string();
                for d in &list {
                    println!("{}", format::short_uptime_line(&clock, d));
                }
            } else {
                print!("{}", format::uptime_table(&list));
            }
            Ok(())
        }
        Cmd::Info {
            numa,
            xenstore,
            field,
        } => {
            let resp = connect()?.call(&Request::Info)?;
            let Response::Host(mut host) = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            if xenstore {
                format::with_xenstore_features(&mut host.fields);
            }
            // As xl: with -n, a FIELD argument is ignored.
            match field {
                _ if numa => print!(
                    "{}",
                    format::info_with_topology(&host.fields, &host.topology)
                ),
                Some(f) => print!("{}", format::info_matching(&host.fields, &f)),
                None => print!("{}", format::info_lines(&host.fields)),
            }
            Ok(())
        }
        Cmd::SchedCredit {
            domain,
            weight,
            cap,
            schedparam,
            tslice,
            ratelimit,
            migration_delay,
            cpupool,
            verbose,
        } => {
            let setting_params =
                tslice.is_some() || ratelimit.is_some() || migration_delay.is_some();
            sched_credit(
                &mut || connect(),
                sched::Credit::One,
                domain,
                weight,
                cap,
                schedparam,
                setting_params,
                cpupool,
                verbose,
            )
        }
        Cmd::SchedCredit2 {
            domain,
            weight,
            cap,
            schedparam,
            ratelimit,
            cpupool,
        } => sched_credit(
            &mut || connect(),
            sched::Credit::Two,
            domain,
            weight,
            cap,
            schedparam,
            ratelimit.is_some(),
            cpupool,
            false,
        ),
        c @ (Cmd::CpupoolCreate { .. }
        | Cmd::CpupoolList { .. }
        | Cmd::CpupoolDestroy { .. }
        | Cmd::CpupoolRename { .. }
        | Cmd::CpupoolCpuAdd { .. }
        | Cmd::CpupoolCpuRemove { .. }
        | Cmd::CpupoolMigrate { .. }
        | Cmd::CpupoolNumaSplit) => cpupool_cmd(c, globals.dry_run, &socket),
        Cmd::VcpuList { domains } => {
            let resp = connect()?.call(&Request::VcpuList { domains })?;
            let Response::Vcpus { vcpus } = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            print!("{}", sched::vcpu_table(&vcpus));
            Ok(())
        }
        Cmd::VcpuPin {
            force,
            ignore_masks: _,
            domain,
            vcpu,
            hard,
            soft,
        } => {
            let vcpu = sched::pin_target(&vcpu, force).map_err(|e| Failure(e.to_string()))?;
            Ok(connect()?.call_ok(&Request::VcpuPin {
                domain,
                vcpu,
                hard,
                soft,
            })?)
        }
        Cmd::VcpuSet {
            ignore_host,
            domain,
            count,
        } => {
            let host = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            if count > host && !ignore_host {
                return Err(Failure(format!(
                    "You are overcommmitting! You have {host} physical CPUs and want {count} vCPUs! Aborting, use --ignore-host to continue"
                )));
            }
            Ok(connect()?.call_ok(&Request::VcpuSet { domain, count })?)
        }
        Cmd::MemSet { domain, size } => {
            let mib = sched::parse_mem_size_mib(&size)
                .ok_or_else(|| Failure(format!("invalid memory size: {size}")))?;
            Ok(connect()?.call_ok(&Request::MemSet { domain, mib })?)
        }
        Cmd::MemMax { domain, size } => {
            let mib = sched::parse_mem_size_mib(&size)
                .ok_or_else(|| Failure(format!("invalid memory size: {size}")))?;
            Ok(connect()?.call_ok(&Request::MemMax { domain, mib })?)
        }
        Cmd::Top {
            delay,
            batch,
            iterations,
            full_name,
            dom0_first,
            networks,
            vbds,
            vcpus,
            repeat_header,
        } => {
            if !(delay.is_finite() && delay > 0.0) {
                return Err(Failure(format!("invalid delay {delay}")));
            }
            let opts = top::TopOptions {
                delay: Duration::from_secs_f64(delay),
                iterations,
                full_name,
                dom0_first,
                show: top::Show {
                    vcpus,
                    networks,
                    vbds,
                },
                repeat_header,
            };
            let mut c = connect()?;
            let fetch = move || match c.call(&Request::Counters) {
                Ok(Response::Counters(counters)) => Ok(counters),
                Ok(other) => Err(format!("unexpected answer: {other:?}")),
                Err(e) => Err(e.to_string()),
            };
            let r = if batch {
                top::batch(fetch, opts, &mut std::io::stdout().lock())
            } else {
                use std::io::IsTerminal;
                if !std::io::stdout().is_terminal() {
                    return Err(Failure(
                        "rxl top needs a terminal; use -b for batch mode".into(),
                    ));
                }
                top::interactive(fetch, opts)
            };
            r.map_err(|e| Failure(e.to_string()))
        }
        Cmd::BlockAttach { domain, spec } => Ok(connect()?.call_ok(&Request::BlockAttach {
            domain,
            spec: spec.join(","),
        })?),
        Cmd::BlockDetach { domain, vdev, .. } => {
            Ok(connect()?.call_ok(&Request::BlockDetach { domain, vdev })?)
        }
        Cmd::NetworkAttach { domain, settings } => {
            Ok(connect()?.call_ok(&Request::NetworkAttach {
                domain,
                spec: settings.join(","),
            })?)
        }
        Cmd::NetworkDetach { domain, device } => {
            Ok(connect()?.call_ok(&Request::NetworkDetach { domain, device })?)
        }
        Cmd::BlockList { domains } => device_lists(&mut connect()?, &domains, true),
        Cmd::NetworkList { domains } => device_lists(&mut connect()?, &domains, false),
        Cmd::PciAttach { .. } => no_passthrough("pci-attach"),
        Cmd::PciDetach { .. } => no_passthrough("pci-detach"),
        Cmd::PciList { .. } => no_passthrough("pci-list"),
        Cmd::PciAssignableAdd { .. } => no_passthrough("pci-assignable-add"),
        Cmd::PciAssignableRemove { .. } => no_passthrough("pci-assignable-remove"),
        Cmd::PciAssignableList { .. } => no_passthrough("pci-assignable-list"),
        Cmd::Dmesg { clear } => {
            let resp = connect()?.call(&Request::Dmesg { clear })?;
            let Response::Log { text } = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            print!("{text}");
            Ok(())
        }
    }
}

/// The PCI passthrough commands: refused, with why.
fn no_passthrough(command: &'static str) -> Outcome {
    Err(Failure(rxl::pci::NoPassthrough { command }.to_string()))
}

/// `rxl sched-credit` and `sched-credit2`: the same weights and caps, each with its pool line.
#[allow(clippy::too_many_arguments)]
fn sched_credit(
    connect: &mut dyn FnMut() -> Result<Client, Failure>,
    which: sched::Credit,
    domain: Option<String>,
    weight: Option<u32>,
    cap: Option<u32>,
    schedparam: bool,
    setting_params: bool,
    cpupool: Option<String>,
    verbose: bool,
) -> Outcome {
    let args = sched::SchedArgs {
        domain: domain.clone(),
        changing: weight.is_some() || cap.is_some(),
        schedparam,
        setting_params,
        cpupool,
    };
    let action = sched::sched_action(which, &args).map_err(|e| Failure(e.to_string()))?;
    let mut c = connect()?;
    let pools = match c.call(&Request::CpupoolList)? {
        Response::Cpupools { pools } => pools,
        other => return Err(Failure(format!("unexpected answer: {other:?}"))),
    };
    let only = args
        .cpupool
        .as_deref()
        .map(|q| sched::find_pool(&pools, q).map(|p| p.id))
        .transpose()
        .map_err(|e| Failure(e.to_string()))?;
    let params = match c.call(&Request::SchedPool)? {
        Response::SchedPool(p) => p,
        other => return Err(Failure(format!("unexpected answer: {other:?}"))),
    };
    if action == sched::SchedAction::PoolParams {
        // xl: the pool -p names, else Pool-0.
        let id = only.unwrap_or(0);
        let name = pools
            .iter()
            .find(|p| p.id == id)
            .map_or(sched::POOL, |p| p.name.as_str());
        println!("{}", sched::pool_line(which, &params, name));
        return Ok(());
    }
    let resp = c.call(&Request::SchedCredit {
        domain,
        weight,
        cap,
    })?;
    let Response::Sched { entries } = resp else {
        return Err(Failure(format!("unexpected answer: {resp:?}")));
    };
    match action {
        sched::SchedAction::All => {
            print!(
                "{}",
                sched::pools_table(which, &params, &pools, &entries, only)
            );
        }
        sched::SchedAction::Show => print!("{}", sched::sched_table(&entries, None)),
        sched::SchedAction::Set | sched::SchedAction::PoolParams => return Ok(()),
    }
    if verbose {
        print!("\n{}", sched::io_table(&entries));
    }
    Ok(())
}

/// `rxl block-list` / `network-list`: the header once, then each domain's devices.
fn device_lists(c: &mut Client, domains: &[String], disks: bool) -> Outcome {
    println!(
        "{}",
        if disks {
            format::block_list_header()
        } else {
            format::network_list_header()
        }
    );
    for d in domains {
        // xl's block-list names an unknown domain and goes on to the next (status 0);
        // its network-list stops with the usual "(rc=-6)" message, as rxend's answer has it.
        if disks && lookup(c, d).is_err() {
            eprintln!("{d} is an invalid domain identifier");
            continue;
        }
        let resp = c.call(&Request::DeviceList { domain: d.clone() })?;
        let Response::Devices {
            domid,
            disks: ds,
            nics,
        } = resp
        else {
            return Err(Failure(format!("unexpected answer: {resp:?}")));
        };
        if disks {
            for disk in ds {
                println!("{}", format::block_list_row(domid, disk.devid));
            }
        } else {
            for nic in nics {
                println!("{}", format::network_list_row(domid, nic.devid, &nic.mac));
            }
        }
    }
    Ok(())
}

/// The largest config file rxl reads (xl's own configs are a few KiB).
const CONFIG_MAX_BYTES: u64 = 1 << 20;

/// Reads a config file: a regular file of at most [`CONFIG_MAX_BYTES`]. It is opened without
/// blocking, so a FIFO or a device is refused instead of hanging.
/// The `cpupool-*` commands.
fn cpupool_cmd(cmd: Cmd, global_dry_run: bool, socket: &Path) -> Outcome {
    use rxl::cpupool;
    let connect = || Client::connect_or_start(socket).map_err(Failure::from);
    let req = match cmd {
        Cmd::CpupoolCreate {
            defconfig,
            dry_run,
            args,
        } => {
            let Ok((file, vars)) = rxl::cli::config_update_args(defconfig.as_deref(), &args) else {
                print!(
                    "{}",
                    front::help(
                        &<Cli as clap::CommandFactory>::command(),
                        Some("cpupool-create")
                    )
                );
                use std::io::Write;
                let _ = std::io::stdout().flush();
                std::process::exit(2);
            };
            let text = match &file {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(|e| Failure(format!("Failed to read config file: {f}: {e}")))?,
                None => String::new(),
            };
            let host = std::fs::read_to_string("/sys/devices/system/cpu/online")
                .ok()
                .and_then(|t| xlcfg::parse_cpu_list(t.trim(), xlcfg::MAX_CPUS).ok())
                .and_then(|v| v.last().map(|m| m + 1))
                .unwrap_or(1);
            let node_cpus = |n: u32| {
                let t =
                    std::fs::read_to_string(format!("/sys/devices/system/node/node{n}/cpulist"))
                        .ok()?;
                xlcfg::parse_cpu_list(t.trim(), xlcfg::MAX_CPUS).ok()
            };
            let r = cpupool::pool_request(&text, file.as_deref(), &vars, host, node_cpus)
                .map_err(|e| Failure(e.to_string()))?;
            for k in &r.ignored {
                eprintln!(
                    "warning: \"{k}\" is not a cpupool setting (name, sched, cpus, nodes); ignored"
                );
            }
            let resp = connect()?.call(&Request::CpupoolCreate {
                name: r.name,
                sched: r.sched,
                cpus: r.cpus,
                dry_run: dry_run || global_dry_run,
            })?;
            let Response::CpupoolCreated(c) = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            print!(
                "{}",
                cpupool::created_text(file.as_deref().unwrap_or("command line"), &c)
            );
            return Ok(());
        }
        Cmd::CpupoolList { cpus, pool } => {
            let resp = connect()?.call(&Request::CpupoolList)?;
            let Response::Cpupools { pools } = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            if let Some(p) = &pool {
                if !pools.iter().any(|x| &x.name == p) {
                    return Err(Failure(format!("Pool '{p}' does not exist")));
                }
            }
            print!("{}", cpupool::list_text(&pools, cpus, pool.as_deref()));
            return Ok(());
        }
        Cmd::CpupoolDestroy { pool } => Request::CpupoolDestroy { pool },
        Cmd::CpupoolRename { pool, new_name } => Request::CpupoolRename { pool, new_name },
        Cmd::CpupoolCpuAdd { pool, cpus } => Request::CpupoolCpuAdd { pool, cpus },
        Cmd::CpupoolCpuRemove { pool, cpus } => Request::CpupoolCpuRemove { pool, cpus },
        Cmd::CpupoolMigrate { domain, pool } => Request::CpupoolMigrate { domain, pool },
        Cmd::CpupoolNumaSplit => Request::CpupoolNumaSplit,
        other => return Err(Failure(format!("not a cpupool command: {other:?}"))),
    };
    match connect()?.call(&req)? {
        Response::Ok | Response::Cpupools { .. } => Ok(()),
        other => Err(Failure(format!("unexpected answer: {other:?}"))),
    }
}

fn read_config_file(path: &std::path::Path) -> Result<String, Failure> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |why: String| Failure(format!("cannot read config file {}: {why}", path.display()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > CONFIG_MAX_BYTES {
        return Err(fail(format!(
            "{} bytes, more than the {CONFIG_MAX_BYTES} a config may have",
            meta.len()
        )));
    }
    let mut text = String::new();
    file.take(CONFIG_MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    Ok(text)
}

/// Finds the config file as xl does: as given, else under /etc/xen/ when the name has no slash.
/// Reads a config file named on the command line, for save and restore.
fn read_config(file: &str) -> Result<ConfigText, Failure> {
    let path = config_path(file);
    let text = read_config_file(&path)?;
    eprintln!("Parsing config from {}", path.display());
    let abs = std::path::absolute(&path).unwrap_or(path);
    Ok(ConfigText {
        path: abs.display().to_string(),
        text,
    })
}

fn config_path(file: &str) -> PathBuf {
    let p = Path::new(file);
    if !file.contains('/') && !p.exists() {
        let etc = Path::new("/etc/xen").join(file);
        if etc.exists() {
            return etc;
        }
    }
    p.to_path_buf()
}

/// `rxl create -n`: parse locally and print the resolved configuration.
fn dry_run_create(path: &Path, text: &str, overrides: &[String]) -> Outcome {
    let parsed = xlcfg::parse(text, &path.display().to_string(), overrides)
        .map_err(|e| Failure(e.to_string()))?;
    for d in &parsed.diagnostics {
        eprintln!("{d}");
    }
    let mut shown = libxl::LibxlConfig::from_config(&parsed.config, None);
    // What pygrub will boot: a disk it cannot boot is an error, as the create would fail; a
    // disk this caller may not read is only a warning, as rxend reads it, not the caller.
    match rxl::bootloader::preview(&parsed.config) {
        Ok(choice) => shown.rxen.pygrub = choice,
        Err(e @ rxl::bootloader::PreviewError::Unreadable { .. }) => eprintln!("warning: {e}"),
        Err(e) => return Err(Failure(e.to_string())),
    }
    let json = libxl::to_json(&shown).map_err(|e| Failure(e.to_string()))?;
    println!("{json}");
    Ok(())
}

fn list(c: &mut Client, domains: Vec<String>) -> Result<Vec<DomainInfo>, Failure> {
    match c.call(&Request::List { domains })? {
        Response::Domains { domains } => Ok(domains),
        other => Err(Failure(format!("unexpected answer: {other:?}"))),
    }
}

fn lookup(c: &mut Client, domain: &str) -> Result<(u32, String), Failure> {
    match c.call(&Request::Lookup {
        domain: domain.to_string(),
    })? {
        Response::Domain { domid, name, .. } => Ok((domid, name)),
        other => Err(Failure(format!("unexpected answer: {other:?}"))),
    }
}

/// After `create` or `boot`: shows rxend's warnings and, with `-c`, attaches the console.
/// The answer to `create --pool` or `restore --pool`: warnings on stderr, then
/// `Domain NAME created on host HOST` on stdout.
fn placed(resp: Response, what: &str) -> Outcome {
    let Response::Placed {
        host,
        name,
        warnings,
        ..
    } = resp
    else {
        return Err(Failure(format!("unexpected answer: {resp:?}")));
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    println!("Domain {name} {what} on host {host}");
    Ok(())
}

/// `rxl host-evacuate`: disables `host`, then moves its domains off, `parallel` at a time,
/// each on a connection of its own; one line per domain on stdout as it ends (`NAME moved to
/// HOST`, `NAME could not move: WHY`). Domains that appear on the host meanwhile are moved
/// too; a domain that could not move is tried once only.
fn evacuate(socket: &Path, host: &str, parallel: u32) -> Outcome {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    let connect = || Client::connect_or_start(socket).map_err(Failure::from);
    connect()?.call_ok(&Request::PoolHostEnable {
        host: host.to_string(),
        enabled: false,
    })?;
    let mut tried: BTreeSet<String> = BTreeSet::new();
    let mut failed = 0usize;
    let p = Progress::start(format!("evacuating host {host}"));
    loop {
        let resp = connect()?.call(&Request::PoolDomains)?;
        let Response::PoolDomains { domains, .. } = resp else {
            p.finish();
            return Err(Failure(format!("unexpected answer: {resp:?}")));
        };
        let todo: Vec<String> = domains
            .into_iter()
            .filter(|d| d.host == host && !tried.contains(&d.name))
            .map(|d| d.name)
            .collect();
        if todo.is_empty() {
            break;
        }
        tried.extend(todo.iter().cloned());
        let total = tried.len();
        let queue = Arc::new(Mutex::new(todo));
        let failures = Arc::new(Mutex::new(0usize));
        let ended = Arc::new(Mutex::new(
            total - queue.lock().map(|q| q.len()).unwrap_or(0),
        ));
        let workers: Vec<_> = (0..parallel)
            .map(|_| {
                let (queue, failures) = (Arc::clone(&queue), Arc::clone(&failures));
                let (socket, host) = (socket.to_path_buf(), host.to_string());
                let (out, ended) = (p.printer(), Arc::clone(&ended));
                std::thread::spawn(move || loop {
                    let Some(domain) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                        return;
                    };
                    let r = Client::connect(&socket)
                        .map_err(|e| e.to_string())
                        .and_then(|mut c| {
                            c.call(&Request::PoolEvacuate {
                                host: host.clone(),
                                domain: domain.clone(),
                            })
                            .map_err(|e| e.to_string())
                        });
                    let line = match r {
                        Ok(Response::PoolMoved { host: to, .. }) => {
                            format!("{domain} moved to {to}")
                        }
                        Ok(other) => {
                            *failures.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                            format!("{domain} could not move: unexpected answer {other:?}")
                        }
                        Err(why) => {
                            *failures.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                            format!("{domain} could not move: {why}")
                        }
                    };
                    out.line(&line);
                    let mut n = ended.lock().unwrap_or_else(|e| e.into_inner());
                    *n += 1;
                    out.message(format!(
                        "evacuating host {host}: {n} of {total} domains done"
                    ));
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        failed += *failures.lock().unwrap_or_else(|e| e.into_inner());
    }
    p.finish();
    if failed > 0 {
        return Err(Failure(format!(
            "{failed} of {} domains could not move off host {host}; they run on there",
            tried.len()
        )));
    }
    Ok(())
}

fn started(c: &mut Client, resp: Response, console: bool) -> Outcome {
    let Response::Domain { name, warnings, .. } = resp else {
        return Err(Failure(format!("unexpected answer: {resp:?}")));
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    if console {
        attach(c, &name)?;
    }
    Ok(())
}

/// Progress for a save or migration of `domain`, polling rxend on a second connection.
fn follow(socket: &Path, message: String, domain: &str) -> Progress {
    let (socket, domain) = (socket.to_path_buf(), domain.to_string());
    Progress::follow(message, move || {
        let mut c = Client::connect(&socket).ok()?;
        match c.call(&Request::TransferProgress {
            domain: domain.clone(),
        }) {
            Ok(Response::Progress { progress }) => progress,
            _ => None,
        }
    })
}

fn attach(c: &mut Client, domain: &str) -> Outcome {
    attach_with(c, domain, console::ESCAPE)
}

fn attach_with(c: &mut Client, domain: &str, escape: u8) -> Outcome {
    let fd = c.call_fd(&Request::Console {
        domain: domain.to_string(),
    })?;
    console::attach_with(fd, escape).map_err(|e| Failure(format!("console: {e}")))?;
    Ok(())
}

/// `shutdown`/`reboot` with xl's `-a` and `-w` (`-ww`: until the domains are gone).
fn power(c: &mut Client, wait: u8, all: bool, domain: Option<String>, reboot: bool) -> Outcome {
    let targets: Vec<(u32, String)> = if all {
        list(c, Vec::new())?
            .into_iter()
            .filter(|d| d.domid != 0 && d.state.as_bytes().get(3) != Some(&b's'))
            .map(|d| (d.domid, d.name))
            .collect()
    } else {
        let Some(d) = domain else {
            return Err(Failure("You must specify -a or a domain id.\n".into()));
        };
        vec![lookup(c, &d)?]
    };
    for (id, _) in &targets {
        if reboot {
            eprintln!("Rebooting domain {id}");
            c.call_ok(&Request::Reboot {
                domain: id.to_string(),
            })?;
        } else {
            eprintln!("Shutting down domain {id}");
            c.call_ok(&Request::Shutdown {
                domain: id.to_string(),
            })?;
        }
    }
    if wait == 0 {
        return Ok(());
    }
    eprintln!("Waiting for {} domains", targets.len());
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut waiters: Vec<power::Waiter> = targets
        .iter()
        .map(|(id, _)| power::Waiter::new(*id, wait >= 2))
        .collect();
    loop {
        let now = list(c, Vec::new())?;
        for w in waiters.iter_mut() {
            let seen = match now.iter().find(|d| d.domid == w.domid) {
                Some(d) => power::Seen::Listed(d.state.clone()),
                None => match c.call(&Request::Ended { domid: w.domid })? {
                    Response::Ended { reason } => power::Seen::Gone(reason),
                    other => return Err(Failure(format!("unexpected answer: {other:?}"))),
                },
            };
            for line in w.observe(&seen) {
                eprintln!("{line}");
            }
        }
        waiters.retain(|w| !w.done());
        if waiters.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure("timed out waiting for the domains".into()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
