//! Acting on another host of the pool: creating or restoring a domain there (`rxl create
//! --pool`, `rxl restore --pool`, and the HA restart to come) and emptying it (`rxl
//! host-evacuate` run elsewhere). The request goes to that host's relocation server, which
//! guards it exactly as a migration: `hosts-allow`, then the shared key proved both ways by
//! HMAC ([`crate::relocation`]); the source says `"purpose":"pool"` in its step of the
//! handshake, then sends one [`RemoteRequest`] line and reads one [`RemoteReply`] line.
//!
//! etcd only tells where things are: no write to etcd makes a host start a domain, so etcd's
//! credentials do not give root on the pool's hosts (see docs/pools.md, "Trust").
//!
//! Placement's ledger is here too: memory promised to a host by a placement under way, until
//! the host's own figures show it.

use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rxen_proto::api::ConfigText;
use serde::{Deserialize, Serialize};

use super::placement::{choose_host, Candidate, Need};
use super::schema::HostRecord;
use super::{Pool, PoolError};
use crate::auth::Caller;
use crate::daemon::Daemon;
use crate::migration::handshake;

/// The handshake's `purpose` of a pool request.
pub const PURPOSE: &str = "pool";

/// How long connecting to another host may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server waits for the request once authenticated.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a create or restore may take there (a restore reads the whole save file).
const CREATE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a domain's evacuation may take there (a live migration of all its memory).
const EVACUATE_TIMEOUT: Duration = Duration::from_secs(1800);

/// A domain to create from config text (the file's path is the source host's, remembered
/// for `rxl boot` and shown in `rxl list --pool`'s records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSpec {
    /// The config file's path where it was read.
    pub path: String,
    /// The file's text.
    pub text: String,
    /// Trailing `KEY=VALUE` overrides.
    pub overrides: Vec<String>,
    /// Leave the vCPUs paused.
    pub paused: bool,
    /// Start even if the config has keys rxen does not support.
    pub ignore_unsupported: bool,
}

/// What one host asks another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RemoteRequest {
    /// Create a domain there.
    Create(CreateSpec),
    /// Restore a domain there from a save file both hosts see.
    Restore {
        /// The save file's path (the same on both hosts).
        path: String,
        /// A config to use instead of the one in the file.
        config: Option<ConfigText>,
        /// Leave it paused.
        paused: bool,
    },
    /// Live-migrate one of its domains to a host placement chooses, not itself.
    Evacuate {
        /// The domain's name.
        domain: String,
    },
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RemoteReply {
    /// Created or restored.
    Created {
        /// Its ID there.
        domid: u32,
        /// Its name.
        name: String,
        /// Warnings for the user.
        warnings: Vec<String>,
    },
    /// Migrated away.
    Moved {
        /// The host it runs on now.
        host: String,
    },
    /// Refused or failed: one line for the user.
    Error {
        /// Why.
        message: String,
    },
}

/// A domain placed on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The host.
    pub host: String,
    /// The domain's ID there.
    pub domid: u32,
    /// Its name.
    pub name: String,
    /// Warnings for the user.
    pub warnings: Vec<String>,
}

/// Memory promised to a host by a placement under way.
#[derive(Debug, Clone)]
pub struct PendingPlacement {
    id: u64,
    host: String,
    memory_mib: u64,
    group: Option<String>,
}

/// A promise in the ledger; dropping it (the placement ended) takes it out.
pub struct Promise<'a> {
    pool: &'a Pool,
    id: u64,
}

impl Drop for Promise<'_> {
    fn drop(&mut self) {
        self.pool
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p.id != self.id);
    }
}

/// The caller a request from another host acts as: root, as a migration does.
fn peer_caller(peer: &str) -> Caller {
    Caller {
        uid: 0,
        user: Some(format!("pool host {peer}")),
    }
}

/// `HOST:PORT` (or `[V6]:PORT`) split.
pub fn split_address(addr: &str) -> Option<(String, u16)> {
    let (h, p) = addr.rsplit_once(':')?;
    let port = p.parse().ok()?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    (!h.is_empty()).then(|| (h.to_string(), port))
}

impl Pool {
    /// Every host of the pool as placement sees it: free memory is the least of what the host
    /// last said and what the domains recorded on it leave (their keys are written as soon as
    /// they are claimed, before the host's next renewal), less what placements from this host
    /// have promised it.
    pub fn candidates(&self) -> Result<Vec<Candidate>, PoolError> {
        let v = self.read_all()?;
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let names: std::collections::BTreeSet<&String> =
            v.members.keys().chain(v.alive.keys()).collect();
        Ok(names
            .into_iter()
            .filter_map(|name| {
                let alive = v.alive.get(name);
                let rec = alive.or_else(|| v.members.get(name))?;
                let on_it = v.domains.iter().filter(|d| &d.host == name);
                let held: u64 = on_it
                    .clone()
                    .map(|d| crate::record::ram_mib(&d.config))
                    .sum();
                let mut groups: Vec<String> = on_it
                    .filter_map(|d| d.config.pool_anti_affinity.clone())
                    .collect();
                let mut free = rec.mem_free_mib.min(rec.mem_total_mib.saturating_sub(held));
                for p in pending.iter().filter(|p| &p.host == name) {
                    free = free.saturating_sub(p.memory_mib);
                    groups.extend(p.group.clone());
                }
                Some(Candidate {
                    name: name.clone(),
                    alive: alive.is_some(),
                    enabled: !v.disabled.contains(name),
                    mem_free_mib: free,
                    load: rec.load,
                    groups,
                })
            })
            .collect())
    }

    /// Chooses a host for `need` and promises it the memory until the promise drops.
    pub fn place(&self, need: &Need) -> Result<(String, Promise<'_>), PoolError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        // One placement at a time from this host, so that two do not both count on the
        // same free memory.
        let _one = self.placing.lock().unwrap_or_else(|p| p.into_inner());
        let hosts = self.candidates()?;
        let host = choose_host(&hosts, need).map_err(|source| PoolError::Placement {
            pool: self.name.clone(),
            source,
        })?;
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(PendingPlacement {
                id,
                host: host.clone(),
                memory_mib: need.memory_mib,
                group: need.anti_affinity.clone(),
            });
        Ok((host, Promise { pool: self, id }))
    }

    /// Where `host`'s relocation server is (`HOST:PORT`), from its live record.
    pub fn relocation_address(&self, host: &str) -> Result<String, PoolError> {
        let err = |why: String| PoolError::Remote {
            pool: self.name.clone(),
            host: host.to_string(),
            why,
        };
        let kv = self
            .etcd
            .get(&self.keys.alive(host))
            .map_err(|e| self.etcd_err(e))?
            .ok_or_else(|| err("it is down (its lease expired) or not in the pool".into()))?;
        let rec: HostRecord =
            serde_json::from_slice(&kv.value).map_err(|e| PoolError::Garbled {
                pool: self.name.clone(),
                key: kv.key.clone(),
                why: e.to_string(),
            })?;
        rec.relocation_address.ok_or_else(|| {
            err("it has no relocation address (relocation-address in its [pool] section)".into())
        })
    }
}

/// Sends `req` to `host`'s relocation server and reads the answer.
fn ask(
    pool: &Pool,
    daemon: &Daemon,
    host: &str,
    req: &RemoteRequest,
    wait: Duration,
) -> Result<RemoteReply, PoolError> {
    let err = |why: String| PoolError::Remote {
        pool: pool.name.clone(),
        host: host.to_string(),
        why,
    };
    let addr_text = pool.relocation_address(host)?;
    let key_path = daemon.relocation_key_file().ok_or_else(|| {
        err("this host has no relocation key to prove itself with ([relocation] key-file in rxend.toml)".into())
    })?;
    let key = handshake::read_key(&key_path).map_err(|e| err(e.to_string()))?;
    let sock = handshake::connect(&addr_text, addr_text.as_str(), CONNECT_TIMEOUT)
        .map_err(|e| err(e.to_string()))?;
    handshake::client_authenticate(&sock, &key, Some(PURPOSE)).map_err(|e| err(e.to_string()))?;
    handshake::write_json(&sock, req).map_err(|e| err(e.to_string()))?;
    sock.set_read_timeout(Some(wait))
        .map_err(|e| err(e.to_string()))?;
    handshake::read_json(&sock).map_err(|e| err(format!("no answer: {e}")))
}

fn created(pool: &Pool, host: &str, reply: RemoteReply) -> Result<Placed, PoolError> {
    match reply {
        RemoteReply::Created {
            domid,
            name,
            warnings,
        } => Ok(Placed {
            host: host.to_string(),
            domid,
            name,
            warnings,
        }),
        other => Err(refused(pool, host, other)),
    }
}

/// `host`'s answer when it is not the one asked for: its error, or the odd answer.
fn refused(pool: &Pool, host: &str, reply: RemoteReply) -> PoolError {
    PoolError::Remote {
        pool: pool.name.clone(),
        host: host.to_string(),
        why: match reply {
            RemoteReply::Error { message } => message,
            other => format!("unexpected answer {other:?}"),
        },
    }
}

fn local_err(pool: &Pool, e: crate::daemon::DaemonError) -> PoolError {
    PoolError::Remote {
        pool: pool.name.clone(),
        host: pool.host.clone(),
        why: e.to_string(),
    }
}

/// Creates a domain on `host` of the pool: through its rxend's relocation server, or here
/// when `host` is this host.
pub fn create_on(
    pool: &Pool,
    daemon: &Daemon,
    host: &str,
    spec: &CreateSpec,
) -> Result<Placed, PoolError> {
    if host == pool.host {
        let c = daemon
            .create(
                &peer_caller("itself"),
                &spec.path,
                &spec.text,
                &spec.overrides,
                spec.paused,
                spec.ignore_unsupported,
            )
            .map_err(|e| local_err(pool, e))?;
        return Ok(Placed {
            host: host.to_string(),
            domid: c.domid,
            name: c.name,
            warnings: c.warnings,
        });
    }
    let reply = ask(
        pool,
        daemon,
        host,
        &RemoteRequest::Create(spec.clone()),
        CREATE_TIMEOUT,
    )?;
    created(pool, host, reply)
}

/// Restores a domain on `host` from `path` (a save file that host sees at the same path).
pub fn restore_on(
    pool: &Pool,
    daemon: &Daemon,
    host: &str,
    path: &str,
    config: Option<&ConfigText>,
    paused: bool,
) -> Result<Placed, PoolError> {
    if host == pool.host {
        let c = daemon
            .restore_domain(&peer_caller("itself"), path, config, paused)
            .map_err(|e| local_err(pool, e))?;
        return Ok(Placed {
            host: host.to_string(),
            domid: c.domid,
            name: c.name,
            warnings: c.warnings,
        });
    }
    let req = RemoteRequest::Restore {
        path: path.to_string(),
        config: config.cloned(),
        paused,
    };
    let reply = ask(pool, daemon, host, &req, CREATE_TIMEOUT)?;
    created(pool, host, reply)
}

/// Asks `host` (another host) to live-migrate its domain `domain` to a host of its choosing;
/// the host it went to.
pub fn evacuate_on(
    pool: &Pool,
    daemon: &Daemon,
    host: &str,
    domain: &str,
) -> Result<String, PoolError> {
    let req = RemoteRequest::Evacuate {
        domain: domain.to_string(),
    };
    match ask(pool, daemon, host, &req, EVACUATE_TIMEOUT)? {
        RemoteReply::Moved { host: to } => Ok(to),
        other => Err(refused(pool, host, other)),
    }
}

/// The relocation server's side of a pool request (the peer is authenticated already).
pub fn serve(daemon: &Daemon, sock: TcpStream, peer: &str) {
    let answer = |reply: &RemoteReply| {
        if let Err(e) = handshake::write_json(&sock, reply) {
            daemon
                .log
                .warn(format!("pool request from {peer}: cannot answer: {e}"));
        }
    };
    let Some(pool) = daemon.pool_handle() else {
        daemon.log.warn(format!(
            "pool request from {peer} refused: this host is in no pool"
        ));
        answer(&RemoteReply::Error {
            message: "this host is in no pool ([pool] in rxend.toml)".into(),
        });
        return;
    };
    let req: RemoteRequest = match sock
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(handshake::RelocationError::from)
        .and_then(|()| handshake::read_json(&sock))
    {
        Ok(r) => r,
        Err(e) => {
            daemon
                .log
                .warn(format!("pool request from {peer}: unreadable: {e}"));
            answer(&RemoteReply::Error {
                message: format!("unreadable request: {e}"),
            });
            return;
        }
    };
    let caller = peer_caller(peer);
    let reply = match req {
        RemoteRequest::Create(spec) => {
            daemon.log.info(format!(
                "pool {}: {peer} asks to create a domain from {}",
                pool.name, spec.path
            ));
            created_reply(daemon.create(
                &caller,
                &spec.path,
                &spec.text,
                &spec.overrides,
                spec.paused,
                spec.ignore_unsupported,
            ))
        }
        RemoteRequest::Restore {
            path,
            config,
            paused,
        } => {
            daemon.log.info(format!(
                "pool {}: {peer} asks to restore a domain from {path}",
                pool.name
            ));
            created_reply(daemon.restore_domain(&caller, &path, config.as_ref(), paused))
        }
        RemoteRequest::Evacuate { domain } => {
            daemon.log.info(format!(
                "pool {}: {peer} asks to move domain {domain} off this host",
                pool.name
            ));
            match daemon.evacuate_here(&caller, &domain) {
                Ok(host) => RemoteReply::Moved { host },
                Err(e) => RemoteReply::Error {
                    message: e.to_string(),
                },
            }
        }
    };
    answer(&reply);
}

/// The reply to a create or restore request.
fn created_reply(r: Result<crate::daemon::Created, crate::daemon::DaemonError>) -> RemoteReply {
    match r {
        Ok(c) => RemoteReply::Created {
            domid: c.domid,
            name: c.name,
            warnings: c.warnings,
        },
        Err(e) => RemoteReply::Error {
            message: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split() {
        assert_eq!(
            split_address("10.0.0.1:8002"),
            Some(("10.0.0.1".into(), 8002))
        );
        assert_eq!(split_address("[fe80::1]:9"), Some(("fe80::1".into(), 9)));
        assert_eq!(split_address("host-a:1"), Some(("host-a".into(), 1)));
        assert_eq!(split_address("host-a"), None);
        assert_eq!(split_address(":8002"), None);
        assert_eq!(split_address("h:99999"), None);
    }

    #[test]
    fn requests_and_replies_are_tagged_lines() {
        let r = RemoteRequest::Evacuate {
            domain: "web".into(),
        };
        let j = serde_json::to_string(&r).expect("json");
        assert_eq!(j, r#"{"op":"evacuate","domain":"web"}"#);
        assert_eq!(serde_json::from_str::<RemoteRequest>(&j).expect("back"), r);
        let c = RemoteRequest::Create(CreateSpec {
            path: "/etc/rxen/web.cfg".into(),
            text: "name = \"web\"\n".into(),
            overrides: vec![],
            paused: false,
            ignore_unsupported: false,
        });
        let j = serde_json::to_string(&c).expect("json");
        assert!(j.starts_with(r#"{"op":"create","path":"#), "{j}");
        assert_eq!(serde_json::from_str::<RemoteRequest>(&j).expect("back"), c);
        assert!(serde_json::from_str::<RemoteRequest>(r#"{"op":"format"}"#).is_err());
        let m = RemoteReply::Moved { host: "b".into() };
        let j = serde_json::to_string(&m).expect("json");
        assert_eq!(j, r#"{"status":"moved","host":"b"}"#);
    }
}
