//! Pools: hosts that run as one, on etcd (`[pool]` in rxend.toml).
//!
//! `etcd.rs` is the etcd client, `schema.rs` the keys and their values, `keeper.rs` the thread
//! that registers this host under a lease, keeps it alive and publishes this host's domains;
//! `leader.rs` elects the pool's leader, `ha.rs` is the leader's restart of `ha = 1` domains
//! of dead hosts, `fence.rs` stops this host's `ha = 1` domains when it cannot renew its lease;
//! this file holds the pool's handle and what clients ask of it (host list, pool-wide domain
//! list, enabling hosts, claiming names). `placement.rs` chooses a host for a domain,
//! `remote.rs` creates, restores or evacuates domains on another host of the pool through its
//! relocation server.

pub mod etcd;
pub mod fence;
pub mod ha;
pub mod keeper;
pub mod leader;
pub mod placement;
pub mod remote;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use rxen_proto::api::{PoolDomain, PoolHost, PoolHostState};

use crate::config::PoolConfig;
use etcd::{Etcd, EtcdError, EtcdOptions, Expect};
use schema::{DisabledRecord, DomainRecord, DomainState, HostRecord, KeyKind, Keys};

/// What can go wrong with the pool; each is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// etcd could not be used.
    #[error("pool {pool}: {source}")]
    Etcd {
        /// The pool.
        pool: String,
        /// Why.
        source: EtcdError,
    },
    /// The name could not be checked, so the domain was not created.
    #[error(
        "cannot check that domain name \"{name}\" is free in pool {pool}, so the domain was \
         not created: {source}"
    )]
    Unchecked {
        /// The name.
        name: String,
        /// The pool.
        pool: String,
        /// Why.
        source: EtcdError,
    },
    /// Another host of the pool has a domain of that name.
    #[error("domain name \"{name}\" is already in use in pool {pool}, on host {host}")]
    NameHeld {
        /// The name.
        name: String,
        /// The pool.
        pool: String,
        /// The host that has it.
        host: String,
    },
    /// No such host in the pool.
    #[error("pool {pool} has no host named {host}")]
    NoSuchHost {
        /// The pool.
        pool: String,
        /// The host asked for.
        host: String,
    },
    /// A key holds what this version cannot read.
    #[error("pool {pool}: etcd key {key} holds something that is not rxen's: {why}")]
    Garbled {
        /// The pool.
        pool: String,
        /// The key.
        key: String,
        /// Why it could not be read.
        why: String,
    },
    /// No host could be chosen.
    #[error("pool {pool}: {source}")]
    Placement {
        /// The pool.
        pool: String,
        /// Why.
        source: placement::PlacementError,
    },
    /// Another host of the pool could not be asked, or refused.
    #[error("pool {pool}: host {host}: {why}")]
    Remote {
        /// The pool.
        pool: String,
        /// The host asked.
        host: String,
        /// What went wrong.
        why: String,
    },
}

/// This host's handle on its pool.
pub struct Pool {
    /// The pool's name.
    pub name: String,
    /// This host's name in it.
    pub host: String,
    relocation_address: Option<String>,
    ttl: u64,
    keys: Keys,
    etcd: Etcd,
    /// Names being created here now: the keeper leaves their keys alone.
    claiming: Mutex<BTreeSet<String>>,
    /// Names whose claim ended: the keeper removes their keys if no domain came of them.
    released: Mutex<BTreeSet<String>>,
    /// Names received by migration: their keys are taken over from the source host.
    taking_over: Mutex<BTreeSet<String>>,
    /// Placements under way from this host (memory promised to a host before it shows).
    pending: Mutex<Vec<remote::PendingPlacement>>,
    /// Held while a placement chooses and promises.
    placing: Mutex<()>,
    /// Set when the domain table changed; the keeper waits on it.
    changed: Mutex<bool>,
    wake: Condvar,
    /// When the lease was last renewed, and the domains destroyed by fencing.
    pub fence: fence::Fence,
    /// Whether this host led the pool at the keeper's last look.
    leading: std::sync::atomic::AtomicBool,
}

/// A name being claimed; dropping it lets the keeper publish (or drop) the domain.
pub struct Claim<'a> {
    pool: &'a Pool,
    name: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.pool
            .claiming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
        self.pool
            .released
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.name.clone());
        self.pool.nudge();
    }
}

pub(crate) fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Pool {
    /// The pool of `[pool]`; reads the TLS and password files now, but does not reach etcd
    /// yet (the keeper does, and keeps trying).
    pub fn new(cfg: &PoolConfig) -> Result<Pool, EtcdError> {
        let etcd = Etcd::new(&EtcdOptions {
            endpoints: cfg.endpoints.clone(),
            ca_file: cfg.ca_file.clone(),
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
            user: cfg.user.clone(),
            password_file: cfg.password_file.clone(),
        })?;
        Ok(Pool {
            name: cfg.name.clone(),
            host: cfg.host_name(),
            relocation_address: cfg.relocation_address.clone(),
            ttl: cfg.ttl,
            keys: Keys::new(&cfg.name),
            etcd,
            claiming: Mutex::new(BTreeSet::new()),
            released: Mutex::new(BTreeSet::new()),
            taking_over: Mutex::new(BTreeSet::new()),
            pending: Mutex::new(Vec::new()),
            placing: Mutex::new(()),
            changed: Mutex::new(false),
            wake: Condvar::new(),
            fence: fence::Fence::default(),
            leading: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The lease's TTL, seconds.
    pub fn ttl(&self) -> u64 {
        self.ttl
    }

    /// How often the lease is renewed and the host's figures written: a third of the TTL.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.ttl.saturating_mul(1000) / 3).max(Duration::from_millis(500))
    }

    fn etcd_err(&self, source: EtcdError) -> PoolError {
        PoolError::Etcd {
            pool: self.name.clone(),
            source,
        }
    }

    /// Tells the keeper that the domain table changed.
    pub fn nudge(&self) {
        *self.changed.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Waits until nudged or `timeout` passed.
    fn wait(&self, timeout: Duration) {
        let g = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        let (mut g, _) = self
            .wake
            .wait_timeout_while(g, timeout, |changed| !*changed)
            .unwrap_or_else(|p| p.into_inner());
        *g = false;
    }

    /// Claims `config`'s name in the pool for a domain created here: refused when another
    /// host has a domain of that name, or when etcd cannot say.
    pub fn claim(&self, config: &xlcfg::DomainConfig) -> Result<Claim<'_>, PoolError> {
        let name = config.name.clone();
        self.claiming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        let claim = Claim {
            pool: self,
            name: name.clone(),
        };
        let rec = DomainRecord {
            name: name.clone(),
            host: self.host.clone(),
            domid: 0,
            uuid: config.uuid.clone().unwrap_or_default(),
            memory_mib: config.memory_mib,
            vcpus: config.vcpus,
            state: DomainState::Starting,
            cpu_time_s: 0.0,
            config_path: None,
            config: config.clone(),
        };
        let value = serde_json::to_vec(&rec).unwrap_or_default();
        let key = self.keys.domain(&name);
        let held = self
            .etcd
            .put_if(&key, &value, Expect::Absent)
            .map_err(|source| PoolError::Unchecked {
                name: name.clone(),
                pool: self.name.clone(),
                source,
            })?;
        match held {
            Ok(_) => Ok(claim),
            Err(None) => Ok(claim), // gone meanwhile: the keeper writes it
            Err(Some(kv)) => match serde_json::from_slice::<DomainRecord>(&kv.value) {
                Ok(r) if r.host == self.host => Ok(claim),
                Ok(r) => Err(PoolError::NameHeld {
                    name,
                    pool: self.name.clone(),
                    host: r.host,
                }),
                Err(e) => Err(PoolError::Garbled {
                    pool: self.name.clone(),
                    key,
                    why: e.to_string(),
                }),
            },
        }
    }

    /// Whether this host led the pool at the keeper's last look.
    pub fn leading(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records whether this host leads; whether that changed.
    fn set_leading(&self, now: bool) -> bool {
        self.leading.swap(now, std::sync::atomic::Ordering::Relaxed) != now
    }

    /// Gives leadership up if this host holds it (rxend stopping): another host takes over
    /// at its next round. Its lease is left to run: its domains run on, and a restarted rxend
    /// renews it.
    pub fn resign(&self) -> Result<bool, PoolError> {
        self.set_leading(false);
        leader::resign(self).map_err(|e| self.etcd_err(e))
    }

    /// Marks `name` as received by migration: this host takes its key over from the source.
    pub fn take_over(&self, name: &str) {
        self.taking_over
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        self.nudge();
    }

    /// Every key of the pool, sorted out.
    fn read_all(&self) -> Result<PoolView, PoolError> {
        let kvs = self
            .etcd
            .get_prefix(self.keys.prefix())
            .map_err(|e| self.etcd_err(e))?;
        let mut v = PoolView::default();
        for kv in kvs {
            let garbled = |why: serde_json::Error| PoolError::Garbled {
                pool: self.name.clone(),
                key: kv.key.clone(),
                why: why.to_string(),
            };
            match self.keys.kind(&kv.key) {
                KeyKind::Alive(h) => {
                    let r: HostRecord = serde_json::from_slice(&kv.value).map_err(garbled)?;
                    v.alive.insert(h.to_string(), r);
                }
                KeyKind::Member(h) => {
                    let r: HostRecord = serde_json::from_slice(&kv.value).map_err(garbled)?;
                    v.members.insert(h.to_string(), r);
                }
                KeyKind::Disabled(h) => {
                    v.disabled.insert(h.to_string());
                }
                KeyKind::Domain(_) => {
                    let r: DomainRecord = serde_json::from_slice(&kv.value).map_err(garbled)?;
                    v.domains.push(r);
                }
                KeyKind::Other => {}
            }
        }
        Ok(v)
    }

    /// The pool's hosts, by name.
    pub fn hosts(&self) -> Result<Vec<PoolHost>, PoolError> {
        let v = self.read_all()?;
        let leader = leader::current(self).map_err(|e| self.etcd_err(e))?;
        let names: BTreeSet<&String> = v.members.keys().chain(v.alive.keys()).collect();
        Ok(names
            .into_iter()
            .filter_map(|name| {
                let alive = v.alive.get(name);
                let rec = alive.or_else(|| v.members.get(name))?;
                let disabled = v.disabled.contains(name);
                let state = match (alive, disabled) {
                    (None, _) => PoolHostState::DownLeaseExpired,
                    (Some(_), true) => PoolHostState::Disabled,
                    (Some(_), false) => PoolHostState::Up,
                };
                Some(PoolHost {
                    name: name.clone(),
                    state,
                    disabled,
                    mem_free_mib: rec.mem_free_mib,
                    mem_total_mib: rec.mem_total_mib,
                    cpus: rec.cpus,
                    load: rec.load,
                    domains: v.domains.iter().filter(|d| &d.host == name).count() as u32,
                    version: rec.version.clone(),
                    relocation_address: rec.relocation_address.clone(),
                    updated: rec.updated,
                    leader: leader.as_deref() == Some(name.as_str()),
                })
            })
            .collect())
    }

    /// Every domain of the pool, by host then name.
    pub fn domains(&self) -> Result<Vec<PoolDomain>, PoolError> {
        let mut v = self.read_all()?;
        v.domains
            .sort_by(|a, b| (&a.host, &a.name).cmp(&(&b.host, &b.name)));
        Ok(v.domains
            .into_iter()
            .map(|d| PoolDomain {
                state: match d.state {
                    DomainState::Running => "r-----",
                    DomainState::Paused | DomainState::Starting => "--p---",
                    DomainState::Shutdown => "---s--",
                    DomainState::Transferring => "-----d",
                    DomainState::Lost => "lost",
                }
                .to_string(),
                name: d.name,
                host: d.host,
                domid: d.domid,
                memory_mib: d.memory_mib,
                vcpus: d.vcpus,
                cpu_time_s: d.cpu_time_s,
            })
            .collect())
    }

    /// Disables (`enabled = false`) or enables a host of the pool.
    pub fn set_enabled(&self, host: &str, enabled: bool) -> Result<(), PoolError> {
        let member = self
            .etcd
            .get(&self.keys.member(host))
            .map_err(|e| self.etcd_err(e))?;
        if member.is_none() {
            return Err(PoolError::NoSuchHost {
                pool: self.name.clone(),
                host: host.to_string(),
            });
        }
        let key = self.keys.disabled(host);
        let r = if enabled {
            self.etcd.delete(&key)
        } else {
            let rec = DisabledRecord {
                by: self.host.clone(),
                at: now_secs(),
            };
            self.etcd
                .put(&key, &serde_json::to_vec(&rec).unwrap_or_default(), 0)
        };
        r.map_err(|e| self.etcd_err(e))
    }

    /// This host's record now.
    fn host_record(&self, mem_free_mib: u64, mem_total_mib: u64) -> HostRecord {
        HostRecord {
            name: self.host.clone(),
            mem_free_mib,
            mem_total_mib,
            cpus: crate::hostinfo::nr_cpus(),
            load: load_average(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            relocation_address: self.relocation_address.clone(),
            updated: now_secs(),
        }
    }
}

/// The pool's keys, read at once.
#[derive(Default)]
struct PoolView {
    alive: BTreeMap<String, HostRecord>,
    members: BTreeMap<String, HostRecord>,
    disabled: BTreeSet<String>,
    domains: Vec<DomainRecord>,
}

/// The one-minute load average (`/proc/loadavg`), 0 when unreadable.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|w| w.parse().ok()))
        .unwrap_or(0.0)
}
