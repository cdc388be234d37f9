//! `rxend`: the rxen host daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rxend::daemon::Daemon;
use rxend::paths::{Paths, DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use rxend::relocation::{self, RxendConfig};
use rxend::server;

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
    /// rxend's config file (TOML: the relocation server); /etc/rxen/rxend.toml if it exists.
    #[arg(long, env = "RXEN_CONFIG")]
    config: Option<PathBuf>,
}

/// The config file rxend reads when none is named.
const DEFAULT_CONFIG: &str = "/etc/rxen/rxend.toml";

fn main() -> ExitCode {
    let args = Args::parse();
    let config_path = args.config.clone().or_else(|| {
        let p = PathBuf::from(DEFAULT_CONFIG);
        p.exists().then_some(p)
    });
    let config = match &config_path {
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| RxendConfig::parse(&t))
        {
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
    let daemon = match Daemon::open(paths.clone()) {
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
    daemon.set_relocation_key_file(config.relocation.key_file.clone());
    if config.relocation.server {
        if let Err(e) = relocation::serve(Arc::clone(&daemon), &config.relocation) {
            daemon.log.error(format!("relocation server: {e}"));
            eprintln!("rxend: relocation server: {e}");
            return ExitCode::FAILURE;
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
