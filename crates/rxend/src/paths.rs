//! Where rxend keeps its socket, records, run directories and log.

use std::path::PathBuf;

/// Default path of rxend's client socket.
pub const DEFAULT_SOCKET: &str = "/run/rxen/rxend.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rxen";

/// The file-system locations of one rxend instance.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The Unix socket clients connect to.
    pub socket: PathBuf,
    /// The directory holding records, run directories and the log.
    pub state_dir: PathBuf,
}

impl Paths {
    /// Directory of the persisted domain records (`<domid>.json`).
    pub fn records_dir(&self) -> PathBuf {
        self.state_dir.join("domains")
    }

    /// Run directory of one domain (VMM sockets, console log, exit record).
    pub fn run_dir(&self, domid: u32) -> PathBuf {
        self.state_dir.join("dom").join(domid.to_string())
    }

    /// rxend's log file.
    pub fn log_file(&self) -> PathBuf {
        self.state_dir.join("rxend.log")
    }

    /// File holding the next domain ID to hand out.
    pub fn next_domid_file(&self) -> PathBuf {
        self.state_dir.join("next-domid")
    }

    /// The CPU pool definitions (`rxl cpupool-*`).
    pub fn cpupools_file(&self) -> PathBuf {
        self.state_dir.join("cpupools.json")
    }

    /// The registry of config files that domains were created from (for `boot`).
    pub fn known_configs_file(&self) -> PathBuf {
        self.state_dir.join("known-configs.json")
    }
}
