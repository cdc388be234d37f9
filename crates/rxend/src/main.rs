//! `rxend`: the rxen host daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rxend::daemon::{Daemon, SchedOptions, DEFAULT_DOM0_WEIGHT};
use rxend::paths::{Paths, DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use rxend::{metrics, server};

/// The rxen host daemon: it runs and supervises domains for rxl and rxen-shell.
#[derive(Parser, Debug)]
#[command(name = "rxend", version)]
struct Args {
    /// Unix socket that clients connect to.
    #[arg(long, env = "RXEN_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Directory for domain records, run directories and the log.
    #[arg(long, env = "RXEN_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Name of rxend's top CPU cgroup; domains get `NAME/dom<ID>`, Domain-0 `NAME/dom0`.
    #[arg(long, env = "RXEN_CGROUP", default_value = "rxen")]
    cgroup: String,
    /// Do not use cgroups (weights and caps are then not enforced).
    #[arg(long)]
    no_cgroups: bool,
    /// Credit weight of Domain-0's own work (rxend, the VMMs' device threads).
    #[arg(long, default_value_t = DEFAULT_DOM0_WEIGHT, value_parser = clap::value_parser!(u32).range(1..=65535))]
    dom0_weight: u32,
    /// Serve every counter in Prometheus text format at http://ADDR:PORT/metrics (off by default).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
        Err(e) => {
            eprintln!(
                "rxend: cannot open state directory {}: {e}",
                paths.state_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let listener = match server::bind(&paths.socket) {
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
    let sup = Arc::clone(&daemon);
    std::thread::spawn(move || loop {
        sup.supervise();
        std::thread::sleep(Duration::from_millis(100));
    });
    server::serve(daemon, listener);
    ExitCode::SUCCESS
}
