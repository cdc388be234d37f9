//! rxend's command line: the options its manual page `rxend(8)` is generated from.

use std::path::PathBuf;

use clap::Parser;

use crate::daemon::DEFAULT_DOM0_WEIGHT;
use crate::paths::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};

/// The rxen host daemon: it runs and supervises domains for rxl and rxen-shell.
#[derive(Parser, Debug)]
#[command(name = "rxend", version)]
pub struct Args {
    /// Unix socket that clients connect to.
    #[arg(long, env = "RXEN_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Directory for domain records, run directories and the log.
    #[arg(long, env = "RXEN_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Group that owns the socket (mode 0660): its members may connect, as
    /// rxen-shell's customers must; rxend still decides every request.
    #[arg(long, env = "RXEN_SOCKET_GROUP")]
    pub socket_group: Option<String>,
    /// Name of rxend's top CPU cgroup; domains get `NAME/dom<ID>`, Domain-0 `NAME/dom0`.
    #[arg(long, env = "RXEN_CGROUP", default_value = "rxen")]
    pub cgroup: String,
    /// Do not use cgroups (weights and caps are then not enforced).
    #[arg(long)]
    pub no_cgroups: bool,
    /// Credit weight of Domain-0's own work (rxend, the VMMs' device threads).
    #[arg(long, default_value_t = DEFAULT_DOM0_WEIGHT, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub dom0_weight: u32,
    /// Serve every counter in Prometheus text format at http://ADDR:PORT/metrics (off by default).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Start VMMs unconfined (no seccomp filters, capabilities kept): for debugging only.
    #[arg(long)]
    pub no_sandbox: bool,
    /// rxend's config file (TOML: the relocation server); /etc/rxen/rxend.toml if it exists.
    #[arg(long, env = "RXEN_CONFIG")]
    pub config: Option<PathBuf>,
}
