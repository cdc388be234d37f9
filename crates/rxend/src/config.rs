//! rxend's config file, `/etc/rxen/rxend.toml` (`--config`): all its sections and their
//! defaults, and nothing else (the code that acts on a section imports it from here).

use serde::{Deserialize, Serialize};

/// The relocation port xend used.
pub const DEFAULT_RELOCATION_PORT: u16 = 8002;

/// rxend's config file (`--config`, TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RxendConfig {
    /// The relocation server.
    #[serde(default)]
    pub relocation: RelocationConfig,
    /// How VMMs are confined.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Where domains go when the host shuts down, and which start with it.
    #[serde(default)]
    pub domains: DomainsConfig,
    /// What this host admits.
    #[serde(default)]
    pub host: HostConfig,
    /// The pool this host joins (none: a host on its own).
    #[serde(default)]
    pub pool: Option<PoolConfig>,
}

/// `[relocation]` in rxend's config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RelocationConfig {
    /// Listen for migrations (xend-relocation-server).
    #[serde(default)]
    pub server: bool,
    /// TCP port (xend-relocation-port).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Address to bind; empty = every interface (xend-relocation-address).
    #[serde(default)]
    pub address: String,
    /// Regular expressions on the peer's address or name; empty = allow all (xend-relocation-hosts-allow).
    #[serde(default)]
    pub hosts_allow: Vec<String>,
    /// The shared key; both sides need the same.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// Where a storage migration (`rxl migrate --copy-storage`) to this host creates the
    /// domain's disks (`<domain>-<vdev>.raw` or `.qcow2`).
    #[serde(default = "default_storage_dir")]
    pub storage_dir: std::path::PathBuf,
}

fn default_storage_dir() -> std::path::PathBuf {
    crate::migration::storage::DEFAULT_STORAGE_DIR.into()
}

fn default_port() -> u16 {
    DEFAULT_RELOCATION_PORT
}

impl Default for RelocationConfig {
    fn default() -> Self {
        Self {
            server: false,
            port: DEFAULT_RELOCATION_PORT,
            address: String::new(),
            hosts_allow: Vec::new(),
            key_file: None,
            storage_dir: default_storage_dir(),
        }
    }
}

/// The `[pool]` section: the etcd that holds the pool, and this host's place in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PoolConfig {
    /// etcd's client URLs (`http://HOST:PORT` or `https://HOST:PORT`), tried in order.
    pub endpoints: Vec<String>,
    /// The pool's name: its keys are under `/rxen/pools/NAME/`.
    pub name: String,
    /// This host's name in the pool (default: the hostname).
    #[serde(default)]
    pub host: Option<String>,
    /// Where the other hosts reach this host's relocation server (`HOST:PORT`).
    #[serde(default)]
    pub relocation_address: Option<String>,
    /// PEM file of the CA that signed etcd's certificate.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for etcd (with `key-file`).
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's key.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// etcd user (with `password-file`).
    #[serde(default)]
    pub user: Option<String>,
    /// File whose first line is the etcd user's password.
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// Seconds the host's lease lasts without renewal; it is renewed every third of that.
    #[serde(default = "default_pool_ttl")]
    pub ttl: u64,
}

fn default_pool_ttl() -> u64 {
    10
}

/// Whether `s` can be one path element of an etcd key: not empty, printable, no `/`.
fn key_element(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '/')
}

impl PoolConfig {
    /// This host's name: `host`, else the hostname.
    pub fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        })
    }

    /// Checks the section: endpoints given and URLs, names usable in keys, a sane TTL.
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("[pool] endpoints names no etcd".into());
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!(
                    "[pool] endpoint {e:?} is not an http:// or https:// URL"
                ));
            }
        }
        if !key_element(&self.name) {
            return Err(format!(
                "[pool] name {:?} must be 1 to 128 printable characters without '/' or spaces",
                self.name
            ));
        }
        let host = self.host_name();
        if !key_element(&host) {
            return Err(format!(
                "[pool] host {host:?} must be 1 to 128 printable characters without '/' or spaces"
            ));
        }
        if !(2..=3600).contains(&self.ttl) {
            return Err(format!(
                "[pool] ttl = {} is out of range (2 to 3600 seconds)",
                self.ttl
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("[pool] cert-file and key-file go together".into());
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Err("[pool] user and password-file go together".into());
        }
        Ok(())
    }
}

/// The `[host]` section: admission control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HostConfig {
    /// The memory all domains together may be given, in percent of the host's RAM
    /// (`MemTotal`); 100, the default, allows no overcommit.
    #[serde(default = "default_overcommit")]
    pub memory_overcommit_percent: u32,
}

fn default_overcommit() -> u32 {
    100
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            memory_overcommit_percent: default_overcommit(),
        }
    }
}

impl RxendConfig {
    /// Parses the config file text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// The `[sandbox]` section: the uids VMMs run as. Each running domain's VMM gets one of its
/// own (with the gid of the same number); no host user should own any of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SandboxConfig {
    /// The first uid of the range.
    #[serde(default = "default_first_uid")]
    pub first_uid: u32,
    /// How many uids the range holds: the most domains that can run at once.
    #[serde(default = "default_uid_count")]
    pub uid_count: u32,
}

/// Far above the ids distributions give users and system services, and below the range that
/// `/etc/subuid` usually hands to containers.
fn default_first_uid() -> u32 {
    64_000_000
}

fn default_uid_count() -> u32 {
    65_536
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            first_uid: default_first_uid(),
            uid_count: default_uid_count(),
        }
    }
}

impl SandboxConfig {
    /// Checks the range: not empty, no uid 0, no wrap past the last uid.
    pub fn validate(&self) -> Result<(), String> {
        if self.uid_count == 0 {
            return Err("[sandbox] uid-count must be at least 1".into());
        }
        if self.first_uid == 0 {
            return Err("[sandbox] first-uid must not be 0 (root)".into());
        }
        // u32::MAX is (uid_t)-1, which means "unchanged" to setresuid.
        if self.first_uid.checked_add(self.uid_count).is_none() {
            return Err("[sandbox] first-uid + uid-count goes past the last uid".into());
        }
        Ok(())
    }

    /// The uids of the range, in order.
    pub fn uids(&self) -> std::ops::Range<u32> {
        self.first_uid..self.first_uid.saturating_add(self.uid_count)
    }
}

/// The `[domains]` section: `rxl host-shutdown` and `rxl host-start` (Xen's `xendomains`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DomainsConfig {
    /// Where running domains are saved when the host goes down (default: `save/` in the state
    /// directory; Xen's `XENDOMAINS_SAVE`).
    #[serde(default)]
    pub save_dir: Option<std::path::PathBuf>,
    /// Configs (or links to them) of the domains that start with the host (Xen's
    /// `XENDOMAINS_AUTO`).
    #[serde(default = "default_auto_dir")]
    pub auto_dir: std::path::PathBuf,
    /// Domains saved or restored at once.
    #[serde(default = "default_parallel")]
    pub parallel: u32,
    /// How long a domain whose save failed has to shut down before it is destroyed.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_seconds: u64,
}

fn default_auto_dir() -> std::path::PathBuf {
    std::path::PathBuf::from("/etc/xen/auto")
}

fn default_parallel() -> u32 {
    4
}

fn default_shutdown_timeout() -> u64 {
    60
}

impl Default for DomainsConfig {
    fn default() -> Self {
        Self {
            save_dir: None,
            auto_dir: default_auto_dir(),
            parallel: default_parallel(),
            shutdown_timeout_seconds: default_shutdown_timeout(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocation_section_parses_with_defaults() {
        let c = RxendConfig::parse(
            "[relocation]\nserver = true\naddress = \"10.0.0.2\"\nhosts-allow = [\"^10\\\\.0\\\\.0\\\\.1$\"]\nkey-file = \"/etc/rxen/key\"\n",
        )
        .expect("parse");
        assert!(c.relocation.server);
        assert_eq!(c.relocation.port, 8002);
        assert_eq!(
            c.relocation.hosts_allow,
            vec!["^10\\.0\\.0\\.1$".to_string()]
        );
        assert!(RxendConfig::parse("[relocation]\nsrever = true\n").is_err());
        assert_eq!(
            RxendConfig::parse("").expect("empty"),
            RxendConfig::default()
        );
    }

    #[test]
    fn sandbox_section_parses_and_checks_its_range() {
        let c =
            RxendConfig::parse("[sandbox]\nfirst-uid = 500000\nuid-count = 10\n").expect("parse");
        assert_eq!(c.sandbox.uids(), 500_000..500_010);
        assert!(c.sandbox.validate().is_ok());
        let d = RxendConfig::parse("").expect("empty");
        assert_eq!(d.sandbox, SandboxConfig::default());
        for bad in [
            "[sandbox]\nfirst-uid = 0\n",
            "[sandbox]\nuid-count = 0\n",
            "[sandbox]\nfirst-uid = 4294967000\nuid-count = 1000\n",
        ] {
            let c = RxendConfig::parse(bad).expect("parse");
            assert!(c.sandbox.validate().is_err(), "{bad}");
        }
        assert!(RxendConfig::parse("[sandbox]\nuid = 5\n").is_err());
        assert_eq!(d.pool, None);
        let c = RxendConfig::parse("[domains]\nsave-dir = \"/srv/save\"\nparallel = 2\n")
            .expect("domains");
        assert_eq!(c.domains.parallel, 2);
        assert_eq!(
            c.domains.auto_dir,
            std::path::PathBuf::from("/etc/xen/auto")
        );
    }

    #[test]
    fn pool_section_parses_with_defaults_and_checks_names() {
        let c = RxendConfig::parse(
            "[pool]\nendpoints = [\"http://10.0.0.1:2379\"]\nname = \"prod\"\nhost = \"h1\"\n",
        )
        .expect("parse");
        let p = c.pool.expect("pool");
        assert_eq!(p.ttl, 10);
        assert_eq!(p.host_name(), "h1");
        assert!(p.validate().is_ok());
        for bad in [
            "endpoints = []\nname = \"p\"",
            "endpoints = [\"10.0.0.1:2379\"]\nname = \"p\"",
            "endpoints = [\"http://e\"]\nname = \"a/b\"",
            "endpoints = [\"http://e\"]\nname = \"p\"\nhost = \"\"",
            "endpoints = [\"http://e\"]\nname = \"p\"\nttl = 1",
            "endpoints = [\"http://e\"]\nname = \"p\"\nuser = \"u\"",
        ] {
            let c = RxendConfig::parse(&format!("[pool]\n{bad}\n")).expect(bad);
            assert!(c.pool.expect("pool").validate().is_err(), "{bad}");
        }
        assert!(RxendConfig::parse("[pool]\nname = \"p\"\n").is_err());
        assert!(RxendConfig::parse("[pool]\nendpoints = []\nname = \"p\"\nleader = 1\n").is_err());
    }
}
