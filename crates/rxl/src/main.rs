//! `rxl`: the xl-compatible command line of rxen.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgAction, Parser, Subcommand};
use rxen_proto::api::{ConfigText, DomainInfo, Request, Response};
use rxl::client::{Client, ClientError, DEFAULT_SOCKET};
use rxl::transfer::{self, Progress};
use rxl::{console, format, sched, top};

/// xl-compatible management of rxen domains.
#[derive(Parser, Debug)]
#[command(name = "rxl", version, about, propagate_version = true)]
struct Cli {
    /// rxend's socket.
    #[arg(long, global = true, env = "RXEN_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a domain from a config file.
    Create {
        /// Attach to the console after creating the domain.
        #[arg(short = 'c')]
        console: bool,
        /// Leave the domain paused after creating it.
        #[arg(short = 'p')]
        paused: bool,
        /// Dry run: print the resolved configuration as JSON and create nothing.
        #[arg(short = 'n', long = "dryrun")]
        dry_run: bool,
        /// Quiet: print no "Parsing config" line.
        #[arg(short = 'q')]
        quiet: bool,
        /// Start the domain even if its config uses keys rxen does not support (they are ignored).
        #[arg(long)]
        ignore_unsupported: bool,
        /// The config file (looked up in /etc/xen/ if it has no slash and is not here).
        file: String,
        /// KEY=VALUE settings that override the file, as extra config lines.
        overrides: Vec<String>,
    },
    /// Create a domain again from the config file rxend remembers for it (rxen).
    Boot {
        /// Attach to the console after booting the domain.
        #[arg(short = 'c')]
        console: bool,
        /// The domain's name.
        domain: String,
    },
    /// List domains in xl's format.
    List {
        /// Print the full configuration as JSON.
        #[arg(short = 'l', long = "long")]
        long: bool,
        /// Add UUID, reason code and security label columns.
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
        /// Domains to show (all when none).
        domains: Vec<String>,
    },
    /// Attach to a domain's console (Ctrl-] detaches).
    Console {
        /// The domain (name or ID).
        domain: String,
    },
    /// Ask a domain to shut down.
    Shutdown {
        /// Wait for the domain to finish shutting down.
        #[arg(short = 'w', long = "wait", action = ArgAction::Count)]
        wait: u8,
        /// Shut down every domain.
        #[arg(short = 'a', long = "all")]
        all: bool,
        /// The domain (name or ID).
        domain: Option<String>,
    },
    /// Ask a domain to reboot.
    Reboot {
        /// Wait for the domain to finish rebooting.
        #[arg(short = 'w', long = "wait", action = ArgAction::Count)]
        wait: u8,
        /// Reboot every domain.
        #[arg(short = 'a', long = "all")]
        all: bool,
        /// The domain (name or ID).
        domain: Option<String>,
    },
    /// Destroy a domain at once.
    Destroy {
        /// The domain (name or ID).
        domain: String,
    },
    /// Pause a domain.
    Pause {
        /// The domain (name or ID).
        domain: String,
    },
    /// Unpause a domain.
    Unpause {
        /// The domain (name or ID).
        domain: String,
    },
    /// Rename a domain.
    Rename {
        /// The domain (name or ID).
        domain: String,
        /// The new name.
        new_name: String,
    },
    /// Print a domain's ID.
    Domid {
        /// The domain's name.
        name: String,
    },
    /// Print a domain's name.
    Domname {
        /// The domain's ID.
        id: String,
    },
    /// Print how long domains have been up.
    Uptime {
        /// Short form, like uptime(1).
        #[arg(short = 's')]
        short: bool,
        /// Domains to show (all when none).
        domains: Vec<String>,
    },
    /// Print information about the host.
    Info {
        /// Print only this field's value.
        field: Option<String>,
    },
    /// Show or set credit-scheduler weights and caps.
    #[command(name = "sched-credit")]
    SchedCredit {
        /// The domain (name or ID); all domains when absent.
        #[arg(short = 'd', long = "domain")]
        domain: Option<String>,
        /// New weight (1-65535; 256 is the default).
        #[arg(short = 'w', long = "weight")]
        weight: Option<u32>,
        /// New cap in percent of one host CPU (0: no cap).
        #[arg(short = 'c', long = "cap")]
        cap: Option<u32>,
    },
    /// List the vCPUs of domains.
    #[command(name = "vcpu-list")]
    VcpuList {
        /// Domains to show (all when none).
        domains: Vec<String>,
    },
    /// Set the hard affinity of a domain's vCPUs.
    #[command(name = "vcpu-pin")]
    VcpuPin {
        /// The domain (name or ID).
        domain: String,
        /// A vCPU number, or `all`.
        vcpu: String,
        /// Host CPUs: a list like `3,5-8,^6`, `all`, or `-` for unchanged.
        hard: String,
        /// Soft affinity: accepted for xl compatibility; rxen has none (only `all` or `-`).
        soft: Option<String>,
    },
    /// Set how many vCPUs a domain has online (up to maxvcpus).
    #[command(name = "vcpu-set")]
    VcpuSet {
        /// Allow more vCPUs than the host has CPUs.
        #[arg(short = 'i', long = "ignore-host")]
        ignore_host: bool,
        /// The domain (name or ID).
        domain: String,
        /// vCPUs to have online.
        count: u32,
    },
    /// Set a domain's memory through its balloon.
    #[command(name = "mem-set")]
    MemSet {
        /// The domain (name or ID).
        domain: String,
        /// The new size: a number of MiB, or with a suffix b, k, m, g or t.
        size: String,
    },
    /// Set a domain's maximum memory.
    #[command(name = "mem-max")]
    MemMax {
        /// The domain (name or ID).
        domain: String,
        /// The new maximum: a number of MiB, or with a suffix b, k, m, g or t.
        size: String,
    },
    /// Show domains and their use of CPU, memory, network and disks, as xentop does.
    Top {
        /// Seconds between refreshes.
        #[arg(short = 'd', long = "delay", default_value_t = 3.0)]
        delay: f64,
        /// Batch mode: print plain lines for scripts instead of the screen.
        #[arg(short = 'b', long = "batch")]
        batch: bool,
        /// Stop after this many refreshes.
        #[arg(short = 'i', long = "iterations")]
        iterations: Option<u64>,
        /// Show full domain names.
        #[arg(short = 'f', long = "full-name")]
        full_name: bool,
        /// Show Domain-0 first.
        #[arg(short = 'z', long = "dom0-first")]
        dom0_first: bool,
        /// Show each NIC's counters under its domain.
        #[arg(short = 'n', long = "networks")]
        networks: bool,
        /// Show each virtual block device's counters under its domain.
        #[arg(short = 'x', long = "vbds")]
        vbds: bool,
        /// Show each vCPU's CPU seconds under its domain.
        #[arg(short = 'v', long = "vcpus")]
        vcpus: bool,
        /// Repeat the column header before every domain.
        #[arg(short = 'r', long = "repeat-header")]
        repeat_header: bool,
    },
    /// Save a domain to a file (it stops, unless -c or -p).
    Save {
        /// Checkpoint: leave the domain running after saving it.
        #[arg(short = 'c')]
        checkpoint: bool,
        /// Leave the domain paused after saving it.
        #[arg(short = 'p')]
        paused: bool,
        /// Also print where the downtime went, phase by phase.
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
        /// The domain (name or ID).
        domain: String,
        /// The save file.
        file: PathBuf,
        /// A config file to store instead of the domain's own.
        config: Option<String>,
    },
    /// Restore a domain from a save file.
    Restore {
        /// Leave the restored domain paused.
        #[arg(short = 'p')]
        paused: bool,
        /// Do not wait in the background for the death of the domain (accepted for xl compatibility).
        #[arg(short = 'e')]
        no_wait: bool,
        /// Attach to the console after restoring.
        #[arg(short = 'c')]
        console: bool,
        /// The save file.
        file: PathBuf,
        /// A config file to use instead of the one in the save file.
        config: Option<String>,
    },
    /// Move a domain to another host: live by default. Over ssh as xl does
    /// (`ssh HOST rxl migrate-receive`), or to HOST's relocation server
    /// (rxend, TCP port 8002) with --relocation, --port or --key.
    Migrate {
        /// Use this command instead of ssh; with '', run HOST itself as the command (as xl).
        #[arg(short = 's')]
        ssh: Option<String>,
        /// Do not wait in the background for the death of the domain on the target (xl compatibility).
        #[arg(short = 'e')]
        no_wait: bool,
        /// Leave the domain paused on the target.
        #[arg(short = 'p')]
        paused: bool,
        /// Live migration (the default).
        #[arg(long, conflicts_with = "non_live")]
        live: bool,
        /// Pause the domain, copy it, resume it on the target (as xm migrate without --live).
        #[arg(long = "non-live")]
        non_live: bool,
        /// Use HOST's relocation server (rxend) instead of ssh.
        #[arg(long)]
        relocation: bool,
        /// The relocation server's port (implies --relocation).
        #[arg(long)]
        port: Option<u16>,
        /// The relocation key file (implies --relocation; default: rxend's configured key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Most pre-copy rounds before stop-and-copy.
        #[arg(long, default_value_t = 30)]
        max_rounds: u32,
        /// Stop-and-copy once the dirty pages can be sent within this many milliseconds.
        #[arg(long, default_value_t = 20)]
        downtime_ms: u64,
        /// Also print where the downtime went, phase by phase.
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
        /// The domain (name or ID).
        domain: String,
        /// The target host.
        host: String,
    },
    /// Receive a migrating domain on stdin/stdout (run by `rxl migrate` through ssh).
    MigrateReceive {
        /// Leave the received domain paused.
        #[arg(short = 'p')]
        paused: bool,
        /// Accepted for xl compatibility.
        #[arg(short = 'e')]
        no_wait: bool,
        /// Accepted for xl compatibility (debug).
        #[arg(short = 'd')]
        debug: bool,
    },
    /// Attach a disk to a running domain.
    #[command(name = "block-attach")]
    BlockAttach {
        /// The domain (name or ID).
        domain: String,
        /// The disk spec (its parts may be given as separate arguments, as with xl).
        #[arg(required = true)]
        spec: Vec<String>,
    },
    /// Detach a disk from a running domain.
    #[command(name = "block-detach")]
    BlockDetach {
        /// Accepted for xl compatibility (a device the guest holds is removed after 5 s anyway).
        #[arg(short = 'f', long = "force")]
        force: bool,
        /// The domain (name or ID).
        domain: String,
        /// The virtual device (xvdb) or its device ID.
        vdev: String,
    },
    /// List a domain's disks.
    #[command(name = "block-list")]
    BlockList {
        /// The domains (name or ID).
        #[arg(required = true)]
        domains: Vec<String>,
    },
    /// Attach a network interface to a running domain.
    #[command(name = "network-attach")]
    NetworkAttach {
        /// The domain (name or ID).
        domain: String,
        /// vif settings as key=value (mac=, bridge=, ip=, script=, vifname=, rate=, ...).
        settings: Vec<String>,
    },
    /// Detach a network interface from a running domain.
    #[command(name = "network-detach")]
    NetworkDetach {
        /// The domain (name or ID).
        domain: String,
        /// The device ID or MAC address.
        device: String,
    },
    /// List a domain's network interfaces.
    #[command(name = "network-list")]
    NetworkList {
        /// The domains (name or ID).
        #[arg(required = true)]
        domains: Vec<String>,
    },
    /// Print rxend's log.
    Dmesg {
        /// Clear the log after printing it.
        #[arg(short = 'c', long = "clear")]
        clear: bool,
    },
}

/// A failure to report: one line on stderr and exit status 1.
struct Failure(String);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure(e.to_string())
    }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Outcome {
    let socket = cli.socket;
    let connect = || Client::connect_or_start(&socket).map_err(Failure::from);
    match cli.cmd {
        Cmd::Create {
            console,
            paused,
            dry_run,
            quiet,
            ignore_unsupported,
            file,
            overrides,
        } => {
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
            let resp = c.call(&Request::Create {
                path: abs.display().to_string(),
                text,
                overrides,
                paused,
                ignore_unsupported,
            })?;
            started(&mut c, resp, console)
        }
        Cmd::List {
            long,
            verbose,
            domains,
        } => {
            let list = list(&mut connect()?, domains)?;
            if long {
                let out: Vec<serde_json::Value> = list
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "domid": d.domid,
                            "config": d.config.clone().unwrap_or_else(|| serde_json::json!({"name": d.name})),
                        })
                    })
                    .collect();
                let text =
                    serde_json::to_string_pretty(&out).map_err(|e| Failure(e.to_string()))?;
                println!("{text}");
            } else {
                print!("{}", format::list_table(&list, verbose));
            }
            Ok(())
        }
        Cmd::Boot { console, domain } => {
            let mut c = connect()?;
            let resp = c.call(&Request::Boot { domain })?;
            started(&mut c, resp, console)
        }
        Cmd::Console { domain } => attach(&mut connect()?, &domain),
        Cmd::Shutdown { wait, all, domain } => power(&mut connect()?, wait, all, domain, false),
        Cmd::Reboot { wait, all, domain } => power(&mut connect()?, wait, all, domain, true),
        Cmd::Destroy { domain } => Ok(connect()?.call_ok(&Request::Destroy { domain })?),
        Cmd::Pause { domain } => Ok(connect()?.call_ok(&Request::Pause { domain })?),
        Cmd::Unpause { domain } => Ok(connect()?.call_ok(&Request::Unpause { domain })?),
        Cmd::Rename { domain, new_name } => {
            Ok(connect()?.call_ok(&Request::Rename { domain, new_name })?)
        }
        Cmd::Save {
            checkpoint,
            paused,
            verbose,
            domain,
            file,
            config,
        } => {
            let abs = std::path::absolute(&file).unwrap_or(file);
            let config = config.map(|c| read_config(&c)).transpose()?;
            let mut c = connect()?;
            eprintln!("Saving to {} new rxl format", abs.display());
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
                    eprintln!("Saved domain {name}: {}", transfer::figures(&stats));
                    if verbose {
                        eprint!("{}", transfer::breakdown(&stats));
                    }
                    Ok(())
                }
                other => Err(Failure(format!("unexpected answer: {other:?}"))),
            }
        }
        Cmd::Restore {
            paused,
            no_wait: _,
            console,
            file,
            config,
        } => {
            let abs = std::path::absolute(&file).unwrap_or(file);
            let config = config.map(|c| read_config(&c)).transpose()?;
            let mut c = connect()?;
            eprintln!("Loading new save file {} (new rxl fmt)", abs.display());
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
                let (mut child, channel) =
                    transfer::spawn_ssh(&cmd, &host, paused).map_err(|e| Failure(e.to_string()))?;
                let r = c.call_with_fd(&req, &channel);
                drop(channel);
                let _ = child.wait();
                r
            };
            p.finish();
            match r? {
                Response::Transferred { name, stats } => {
                    eprintln!("Migration successful.");
                    println!("migrated {name} to {host}: {}", transfer::figures(&stats));
                    if verbose {
                        print!("{}", transfer::breakdown(&stats));
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
            let (channel, out) = transfer::stdio_channel().map_err(|e| Failure(e.to_string()))?;
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
        Cmd::Domid { name } => {
            let (id, _) = lookup(&mut connect()?, &name)?;
            println!("{id}");
            Ok(())
        }
        Cmd::Domname { id } => {
            let (_, name) = lookup(&mut connect()?, &id)?;
            println!("{name}");
            Ok(())
        }
        Cmd::Uptime { short, domains } => {
            let list = list(&mut connect()?, domains)?;
            if short {
                for d in &list {
                    println!("{}", short_uptime(d));
                }
            } else {
                print!("{}", format::uptime_table(&list));
            }
            Ok(())
        }
        Cmd::Info { field } => {
            let resp = connect()?.call(&Request::Info)?;
            let Response::Host(host) = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            match field {
                Some(f) => match format::info_field(&host.fields, &f) {
                    Some(v) => println!("{v}"),
                    None => return Err(Failure(format!("no field {f} in rxl info"))),
                },
                None => print!("{}", format::info_lines(&host.fields)),
            }
            Ok(())
        }
        Cmd::SchedCredit {
            domain,
            weight,
            cap,
        } => {
            if domain.is_none() && (weight.is_some() || cap.is_some()) {
                return Err(Failure("Must specify a domain.".into()));
            }
            let named = domain.is_some();
            let changing = weight.is_some() || cap.is_some();
            let resp = connect()?.call(&Request::SchedCredit {
                domain,
                weight,
                cap,
            })?;
            let Response::Sched { entries } = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            if !changing {
                print!("{}", sched::sched_table(&entries, !named));
            }
            Ok(())
        }
        Cmd::VcpuList { domains } => {
            let resp = connect()?.call(&Request::VcpuList { domains })?;
            let Response::Vcpus { vcpus } = resp else {
                return Err(Failure(format!("unexpected answer: {resp:?}")));
            };
            print!("{}", sched::vcpu_table(&vcpus));
            Ok(())
        }
        Cmd::VcpuPin {
            domain,
            vcpu,
            hard,
            soft,
        } => {
            if let Some(s) = soft.as_deref() {
                if s != "all" && s != "-" {
                    return Err(Failure(
                        "soft affinity is not supported by rxen (only \"all\" or \"-\")".into(),
                    ));
                }
            }
            Ok(connect()?.call_ok(&Request::VcpuPin { domain, vcpu, hard })?)
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
    let json = serde_json::to_string_pretty(&parsed.config).map_err(|e| Failure(e.to_string()))?;
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
    let fd = c.call_fd(&Request::Console {
        domain: domain.to_string(),
    })?;
    console::attach(fd).map_err(|e| Failure(format!("console: {e}")))?;
    Ok(())
}

/// `shutdown`/`reboot` with xl's `-a` and `-w`.
fn power(c: &mut Client, wait: u8, all: bool, domain: Option<String>, reboot: bool) -> Outcome {
    let targets: Vec<(u32, String)> = if all {
        list(c, Vec::new())?
            .into_iter()
            .filter(|d| d.domid != 0 && d.state.as_bytes().get(3) != Some(&b's'))
            .map(|d| (d.domid, d.name))
            .collect()
    } else {
        let Some(d) = domain else {
            return Err(Failure("a domain is required (or -a for all)".into()));
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
    if wait == 0 || targets.is_empty() {
        return Ok(());
    }
    eprintln!("Waiting for {} domains", targets.len());
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut pending = targets;
    while !pending.is_empty() {
        let now = list(c, Vec::new())?;
        pending.retain(|(id, _)| {
            let done = match now.iter().find(|d| d.domid == *id) {
                None => true,
                // One -w also returns when the domain is shut down but kept; -ww waits for death.
                Some(d) => wait < 2 && d.state.as_bytes().get(3) == Some(&b's'),
            };
            if done {
                eprintln!("Domain {id} has been shut down");
            }
            !done
        });
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Failure("timed out waiting for the domains".into()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// `xl uptime -s`: ` HH:MM:SS up <d days, H:MM>, <name> (<id>)`.
fn short_uptime(d: &DomainInfo) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|x| x.as_secs())
        .unwrap_or(0);
    let clock = now % 86400;
    let up = d.uptime_s as u64;
    let days = up / 86400;
    let hm = format!("{}:{:02}", (up / 3600) % 24, (up / 60) % 60);
    let up_text = match days {
        0 => hm,
        1 => format!("1 day, {hm}"),
        n => format!("{n} days, {hm}"),
    };
    format!(
        " {:02}:{:02}:{:02} up {up_text}, {} ({})",
        clock / 3600,
        (clock / 60) % 60,
        clock % 60,
        d.name,
        d.domid
    )
}
