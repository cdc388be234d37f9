//! `rxend`: the rxen host daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rxend::cli::Args;
use rxend::config::RxendConfig;
use rxend::daemon::{Daemon, SchedOptions};
use rxend::migration::relocation;
use rxend::paths::Paths;
use rxend::{metrics, server};

/// The config file rxend reads when none is named.
const DEFAULT_CONFIG: &str = "/etc/rxen/rxend.toml";

/// Marks every descriptor above stderr close-on-exec.
fn close_inherited_on_exec() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes the flags of this process's descriptors; no memory
    // is passed.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        return;
    }
    // Kernels before 5.11: each open descriptor by hand.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .filter(|&fd| fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number touches no memory; a closed one fails harmlessly.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

fn main() -> ExitCode {
    // Everything rxend and its VMMs create is private (files 0600, directories 0700) unless
    // it says otherwise: guests' consoles, records and launch specs are nobody else's business.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Descriptors inherited from whoever started rxend (a shell's pipe, a service manager's
    // socket) are not for the VMMs it spawns: close them across exec.
    close_inherited_on_exec();
    // SIGTERM and SIGINT are taken by one thread (below), which stops rxend tidily; blocked
    // here, before any thread exists, so that every thread inherits the mask. (VMMs start with
    // an empty mask: std resets it in the child.)
    let stop_signals = {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        let _ = set.thread_block();
        set
    };
    let args = Args::parse();
    let config_path = args.config.clone().or_else(|| {
        let p = PathBuf::from(DEFAULT_CONFIG);
        p.exists().then_some(p)
    });
    let config = match &config_path {
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| RxendConfig::parse(&t))
            .and_then(|c| c.sandbox.validate().map(|()| c))
            .and_then(|c| match &c.pool {
                Some(p) => p.validate().map(|()| c),
                None => Ok(c),
            }) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("rxend: config file {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        None => RxendConfig::default(),
    };
    let paths = Paths {
        socket: args.socket,
        state_dir: args.state_dir,
    };
    let sched = SchedOptions {
        cgroup: (!args.no_cgroups).then_some(args.cgroup),
        dom0_weight: args.dom0_weight,
    };
    let daemon = match Daemon::open_with(paths.clone(), sched) {
        Ok(d) => Arc::new(d),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            eprintln!("rxend: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!(
                "rxend: cannot open state directory {}: {e}",
                paths.state_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let group = match args.socket_group.as_deref().map(socket_group) {
        None => None,
        Some(Ok(gid)) => Some(gid),
        Some(Err(msg)) => {
            eprintln!("rxend: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match server::bind(&paths.socket, group) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rxend: {e}");
            return ExitCode::FAILURE;
        }
    };
    daemon.log.info(format!(
        "rxend {} listening on {} (state in {})",
        env!("CARGO_PKG_VERSION"),
        paths.socket.display(),
        paths.state_dir.display()
    ));
    if let Some(g) = &args.socket_group {
        daemon
            .log
            .info(format!("the socket is open to group {g} (mode 0660)"));
    }
    if let Some(addr) = &args.metrics_listen {
        match metrics::bind(addr) {
            Ok(l) => {
                daemon.log.info(format!("metrics at http://{addr}/metrics"));
                let d = Arc::clone(&daemon);
                std::thread::spawn(move || metrics::serve(d, l));
            }
            Err(e) => {
                eprintln!("rxend: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if args.no_sandbox {
        daemon.set_sandbox(false);
        let msg = "--no-sandbox: VMMs run UNCONFINED (no seccomp filters, every capability): \
                   a guest that breaks its VMM owns this host; use only for debugging";
        daemon.log.warn(msg);
        eprintln!("rxend: WARNING: {msg}");
    }
    daemon.set_relocation_key_file(config.relocation.key_file.clone());
    daemon.set_storage_dir(config.relocation.storage_dir.clone());
    daemon.set_memory_overcommit_percent(config.host.memory_overcommit_percent);
    daemon.set_sandbox_uids(config.sandbox.uids());
    daemon.set_domains_config(config.domains.clone());
    if config.relocation.server {
        if let Err(e) = relocation::serve(Arc::clone(&daemon), &config.relocation) {
            daemon.log.error(format!("relocation server: {e}"));
            eprintln!("rxend: relocation server: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(p) = &config.pool {
        match rxend::pool::Pool::new(p) {
            Ok(pool) => daemon.join_pool(pool),
            Err(e) => {
                daemon.log.error(format!("[pool]: {e}"));
                eprintln!("rxend: [pool]: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let stopper = Arc::clone(&daemon);
    std::thread::spawn(move || {
        if let Ok(sig) = stop_signals.wait() {
            stopper.stop(sig.as_str());
            std::process::exit(0);
        }
    });
    let sup = Arc::clone(&daemon);
    std::thread::spawn(move || loop {
        sup.supervise();
        std::thread::sleep(Duration::from_millis(100));
    });
    server::serve(daemon, listener);
    ExitCode::SUCCESS
}

/// The group ID of `--socket-group`: a group name, or a number.
fn socket_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("--socket-group: no group named {name}")),
        Err(e) => Err(format!("--socket-group {name}: {e}")),
    }
}
