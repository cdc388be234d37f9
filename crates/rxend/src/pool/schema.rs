//! What a pool keeps in etcd: the keys under `/rxen/pools/NAME/` and their typed JSON values.
//!
//! | key | value | lease |
//! |---|---|---|
//! | `hosts/HOST` | [`HostRecord`]: the host's figures, refreshed every interval | the host's |
//! | `members/HOST` | [`HostRecord`]: the same, kept when the lease ends (so a dead host shows as down) | none |
//! | `disabled/HOST` | [`DisabledRecord`]: present while the host is disabled | none |
//! | `domains/DOMAIN` | [`DomainRecord`]: one per domain of the pool, written by its host | none |
//! | `leader` | [`LeaderRecord`]: the pool's elected leader (`leader.rs`) | the leader's |

use serde::{Deserialize, Serialize};

/// The root of every pool's keys.
pub const ROOT: &str = "/rxen/pools";

/// The keys of one pool.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// What a key under a pool's prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// `hosts/HOST` (leased: the host is up).
    Alive(&'a str),
    /// `members/HOST`.
    Member(&'a str),
    /// `disabled/HOST`.
    Disabled(&'a str),
    /// `domains/DOMAIN`.
    Domain(&'a str),
    /// Something else (a later version's key).
    Other,
}

impl Keys {
    /// The keys of pool `pool`.
    pub fn new(pool: &str) -> Keys {
        Keys {
            prefix: format!("{ROOT}/{pool}/"),
        }
    }

    /// Every key of the pool starts with this.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `hosts/HOST`.
    pub fn alive(&self, host: &str) -> String {
        format!("{}hosts/{host}", self.prefix)
    }

    /// `members/HOST`.
    pub fn member(&self, host: &str) -> String {
        format!("{}members/{host}", self.prefix)
    }

    /// `disabled/HOST`.
    pub fn disabled(&self, host: &str) -> String {
        format!("{}disabled/{host}", self.prefix)
    }

    /// `domains/` (the prefix of every domain's key).
    pub fn domains(&self) -> String {
        format!("{}domains/", self.prefix)
    }

    /// `domains/DOMAIN`.
    pub fn domain(&self, name: &str) -> String {
        format!("{}domains/{name}", self.prefix)
    }

    /// `leader`: the pool's leader, under its lease.
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// What `key` (a full key) is.
    pub fn kind<'a>(&self, key: &'a str) -> KeyKind<'a> {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
            return KeyKind::Other;
        };
        let Some((dir, name)) = rest.split_once('/') else {
            return KeyKind::Other;
        };
        if name.is_empty() || name.contains('/') {
            return KeyKind::Other;
        }
        match dir {
            "hosts" => KeyKind::Alive(name),
            "members" => KeyKind::Member(name),
            "disabled" => KeyKind::Disabled(name),
            "domains" => KeyKind::Domain(name),
            _ => KeyKind::Other,
        }
    }
}

/// A host of the pool, as it last said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host's name in the pool.
    pub name: String,
    /// Memory domains may still be given, in MiB (rxend's admission: `[host]
    /// memory-overcommit-percent` of RAM, less what running domains hold).
    pub mem_free_mib: u64,
    /// Memory all domains together may be given, in MiB.
    pub mem_total_mib: u64,
    /// Online CPUs.
    pub cpus: u32,
    /// The one-minute load average.
    pub load: f64,
    /// rxend's version.
    pub version: String,
    /// Where the other hosts reach this host's relocation server (`HOST:PORT`), if it has one.
    pub relocation_address: Option<String>,
    /// When this was written, seconds since the Unix epoch.
    pub updated: f64,
}

/// Why a host is disabled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisabledRecord {
    /// The host whose rxend disabled it (`rxl host-disable` was run there).
    pub by: String,
    /// When, seconds since the Unix epoch.
    pub at: f64,
}

/// Where a domain is in its life, as the pool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainState {
    /// Being created, restored or received.
    Starting,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Being saved or migrated away.
    Transferring,
    /// Stopped and preserved (`on_* = "preserve"`).
    Shutdown,
    /// Its host's lease expired and it is not `ha = 1` (or its HA restart failed): the pool's
    /// leader marked it so; the host rewrites it if it comes back with the domain running.
    Lost,
}

/// The pool's leader (the `leader` key, under the leader's lease).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The leading host.
    pub host: String,
    /// Since when, seconds since the Unix epoch.
    pub since: f64,
}

/// A domain of the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainRecord {
    /// Its name (unique in the pool).
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its ID on that host.
    pub domid: u32,
    /// Its UUID.
    pub uuid: String,
    /// Current memory, MiB.
    pub memory_mib: u64,
    /// Online vCPUs.
    pub vcpus: u32,
    /// Where it is in its life.
    pub state: DomainState,
    /// CPU time used, seconds (as of the host's last refresh).
    pub cpu_time_s: f64,
    /// The config file it was created from, on its host.
    pub config_path: Option<String>,
    /// Its resolved configuration.
    pub config: xlcfg::DomainConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_odd_keys_are_other() {
        let k = Keys::new("prod");
        assert_eq!(k.alive("h1"), "/rxen/pools/prod/hosts/h1");
        assert_eq!(k.kind(&k.alive("h1")), KeyKind::Alive("h1"));
        assert_eq!(k.kind(&k.member("h1")), KeyKind::Member("h1"));
        assert_eq!(k.kind(&k.disabled("h1")), KeyKind::Disabled("h1"));
        assert_eq!(k.kind(&k.domain("web")), KeyKind::Domain("web"));
        assert_eq!(k.kind("/rxen/pools/prod/domains/"), KeyKind::Other);
        assert_eq!(k.kind("/rxen/pools/prod/domains/a/b"), KeyKind::Other);
        assert_eq!(k.kind("/rxen/pools/prod/leader"), KeyKind::Other);
        assert_eq!(k.kind("/rxen/pools/other/hosts/h1"), KeyKind::Other);
    }
}
