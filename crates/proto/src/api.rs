//! The rxl/rxend API: a client sends one [`Request`] per line on rxend's
//! Unix socket and reads one [`Response`] per line. rxend learns who the
//! caller is from the socket's peer credentials, never from the message.

use serde::{Deserialize, Serialize};

/// A domain named by the user: a name or a numeric ID, resolved by rxend.
pub type DomainRef = String;

/// One request from a client to rxend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create a domain from a config file (`rxl create`).
    Create {
        /// Absolute path of the config file, remembered with the domain.
        path: String,
        /// The file's text as the client read it.
        text: String,
        /// Trailing `KEY=VALUE` overrides, applied after the file.
        overrides: Vec<String>,
        /// Leave the vCPUs paused (`-p`).
        paused: bool,
        /// Start even if the config has keys rxen does not support.
        ignore_unsupported: bool,
    },
    /// List domains (`rxl list`); empty means all.
    List {
        /// Domains to show; all when empty.
        domains: Vec<DomainRef>,
    },
    /// Host information (`rxl info`).
    Info,
    /// Destroy a domain at once.
    Destroy {
        /// The domain.
        domain: DomainRef,
    },
    /// Ask the guest to power off.
    Shutdown {
        /// The domain.
        domain: DomainRef,
    },
    /// Ask the guest to reboot.
    Reboot {
        /// The domain.
        domain: DomainRef,
    },
    /// Pause a domain's vCPUs.
    Pause {
        /// The domain.
        domain: DomainRef,
    },
    /// Unpause a domain's vCPUs.
    Unpause {
        /// The domain.
        domain: DomainRef,
    },
    /// Rename a domain.
    Rename {
        /// The domain.
        domain: DomainRef,
        /// Its new name.
        new_name: String,
    },
    /// Resolve a name or ID to the domain's ID and name.
    Lookup {
        /// The domain.
        domain: DomainRef,
    },
    /// rxend's log (`rxl dmesg`).
    Dmesg {
        /// Clear the log after reading it.
        clear: bool,
    },
    /// Attach to a domain's console: on success rxend sends the console
    /// connection's file descriptor with the response (SCM_RIGHTS).
    Console {
        /// The domain.
        domain: DomainRef,
    },
    /// Ask rxend to exit (running domains keep running).
    Quit,
    /// Hot-plug a disk (`rxl block-attach`); `spec` is an xl disk spec.
    BlockAttach {
        /// The domain.
        domain: DomainRef,
        /// The disk spec, e.g. `file:/img,xvdb,w`.
        spec: String,
    },
    /// Hot-unplug a disk (`rxl block-detach`) by vdev name or device ID.
    BlockDetach {
        /// The domain.
        domain: DomainRef,
        /// `xvdb` or `51728`.
        vdev: String,
    },
    /// Hot-plug a NIC (`rxl network-attach`); `spec` is an xl vif spec.
    NetworkAttach {
        /// The domain.
        domain: DomainRef,
        /// The vif spec, e.g. `bridge=xenbr0,mac=00:16:3e:00:00:01`.
        spec: String,
    },
    /// Hot-unplug a NIC (`rxl network-detach`) by device ID or MAC.
    NetworkDetach {
        /// The domain.
        domain: DomainRef,
        /// `1` or `00:16:3e:00:00:01`.
        device: String,
    },
    /// The disks and NICs of a running domain with their counters.
    DeviceList {
        /// The domain.
        domain: DomainRef,
    },
    /// Save a domain to a file (`rxl save`).
    Save {
        /// The domain.
        domain: DomainRef,
        /// Absolute path of the save file.
        path: String,
        /// Keep the domain running afterwards (`-c`).
        checkpoint: bool,
        /// Leave the domain paused afterwards (`-p`).
        paused: bool,
        /// A config to store instead of the domain's own.
        #[serde(default)]
        config: Option<ConfigText>,
    },
    /// Restore a domain from a save file (`rxl restore`).
    Restore {
        /// Absolute path of the save file.
        path: String,
        /// A config to use instead of the one in the file.
        #[serde(default)]
        config: Option<ConfigText>,
        /// Leave the restored domain paused (`-p`).
        paused: bool,
    },
    /// Move a domain to another host (`rxl migrate`). With `ssh`, the
    /// connection to the receiver comes with this request (SCM_RIGHTS);
    /// otherwise rxend connects to `host`'s relocation server.
    Migrate {
        /// The domain.
        domain: DomainRef,
        /// The target host (name or address).
        host: String,
        /// The relocation server's port.
        port: u16,
        /// The shared key file (default: rxend's configured key).
        #[serde(default)]
        key_file: Option<String>,
        /// Pre-copy while the domain runs (else pause, copy, resume there).
        live: bool,
        /// Most pre-copy rounds.
        max_rounds: u32,
        /// Downtime target in milliseconds.
        downtime_ms: u64,
        /// Leave the domain paused on the target.
        paused: bool,
        /// The connection to the receiver is passed with the request (ssh transport).
        #[serde(default)]
        ssh: bool,
    },
    /// Receive a domain on the connection passed with this request (SCM_RIGHTS):
    /// `rxl migrate-receive`, run by ssh on the target.
    MigrateReceive {
        /// Leave the received domain paused.
        paused: bool,
    },
}

/// A config file given on the command line: its absolute path and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigText {
    /// Absolute path.
    pub path: String,
    /// The file's text.
    pub text: String,
}

/// A domain as `rxl list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// Domain ID (0 is Domain-0, the host).
    pub domid: u32,
    /// Name.
    pub name: String,
    /// UUID as text.
    pub uuid: String,
    /// Current memory in MiB.
    pub memory_mib: u64,
    /// Maximum memory in MiB.
    pub maxmem_mib: u64,
    /// Online vCPUs.
    pub vcpus: u32,
    /// Six-letter xl state, e.g. `-b----`.
    pub state: String,
    /// CPU time used, in seconds.
    pub cpu_time_s: f64,
    /// Seconds since the domain was created.
    pub uptime_s: f64,
    /// The resolved configuration (JSON of `xlcfg::DomainConfig`), for `list -l`.
    pub config: Option<serde_json::Value>,
    /// Path of the config file the domain came from.
    pub config_path: Option<String>,
}

/// Host facts for `rxl info`, in xl's field names and order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `(field, value)` pairs in display order.
    pub fields: Vec<(String, String)>,
}

/// rxend's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// Done, nothing to report.
    Ok,
    /// A domain was created, or looked up.
    Domain {
        /// Its ID.
        domid: u32,
        /// Its name.
        name: String,
        /// Warnings to show the user (unsupported keys ignored, deprecated keys, ...).
        warnings: Vec<String>,
    },
    /// The answer to `List`.
    Domains {
        /// The domains, Domain-0 first.
        domains: Vec<DomainInfo>,
    },
    /// The answer to `Info`.
    Host(HostInfo),
    /// The answer to `Dmesg`.
    Log {
        /// The log text.
        text: String,
    },
    /// A save or migration finished, with its figures.
    Transferred {
        /// The domain's name.
        name: String,
        /// The figures.
        stats: crate::vmctl::TransferStats,
    },
    /// The answer to [`Request::DeviceList`].
    Devices {
        /// The domain's ID.
        domid: u32,
        /// Its disks.
        disks: Vec<crate::vmctl::DiskStats>,
        /// Its NICs.
        nics: Vec<crate::vmctl::NicStats>,
    },
    /// The request failed; `message` is one line for the user.
    Error {
        /// What went wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_op() {
        let json = serde_json::to_string(&Request::Pause {
            domain: "web".into(),
        })
        .expect("json");
        assert_eq!(json, r#"{"op":"pause","domain":"web"}"#);
        let back: Request = serde_json::from_str(&json).expect("parse");
        assert_eq!(
            back,
            Request::Pause {
                domain: "web".into()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
    }
}
