//! HA restart: the pool's leader (`leader.rs`) looks, at every keeper round, for domains
//! recorded on hosts whose lease expired (their `hosts/HOST` key is gone). A domain with
//! `ha = 1` is restarted from its recorded configuration on a surviving host and recorded
//! there; any other is marked `lost`. A restart is claimed first by rewriting the domain's key
//! with a compare-and-swap on its modification revision, so each is restarted exactly once
//! even when the leader changes half-way: the next leader finds the key naming the host that
//! claimed it, and restarts it again only if that host's lease expired in turn (its copy is
//! gone, or fenced).
//!
//! Where a domain goes is decided by [`restart_target`] and done by [`restart_on`]: for now
//! the leader itself, through the daemon's normal create path (admission control included).
//! Placement on the best host and creation on a remote host replace these two functions.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::etcd::{EtcdError, Expect, KeyValue};
use super::schema::{DomainRecord, DomainState, KeyKind};
use super::Pool;
use crate::daemon::Daemon;

/// One look at the pool (the leader's): restarts or marks lost the domains of dead hosts.
pub fn scan(pool: &Pool, daemon: &Arc<Daemon>) -> Result<(), EtcdError> {
    let mut alive = BTreeSet::new();
    let mut domains = Vec::new();
    for kv in pool.etcd.get_prefix(pool.keys.prefix())? {
        match pool.keys.kind(&kv.key) {
            KeyKind::Alive(h) => {
                alive.insert(h.to_string());
            }
            KeyKind::Domain(_) => domains.push(kv),
            _ => {}
        }
    }
    for kv in domains {
        let Ok(rec) = serde_json::from_slice::<DomainRecord>(&kv.value) else {
            continue;
        };
        if alive.contains(&rec.host) || rec.state == DomainState::Lost {
            continue;
        }
        if rec.config.ha {
            let Some(target) = restart_target(pool, &rec, &alive) else {
                mark_lost(pool, daemon, &kv, &rec, "no host can take it")?;
                continue;
            };
            daemon.log.info(format!(
                "pool {}: host {}'s lease expired; restarting ha domain {} on host {target}",
                pool.name, rec.host, rec.name
            ));
            restart(pool, daemon, &kv, &rec, &target)?;
        } else {
            mark_lost(pool, daemon, &kv, &rec, "its host's lease expired")?;
        }
    }
    Ok(())
}

/// Claims the restart of the domain whose key is `kv` (its record `rec`) for `target` with a
/// compare-and-swap on the key's revision, then starts it there; whether it was claimed (a
/// `false`: someone else changed the key first, and it is theirs). A restart that fails marks
/// the domain `lost`.
pub fn restart(
    pool: &Pool,
    daemon: &Arc<Daemon>,
    kv: &KeyValue,
    rec: &DomainRecord,
    target: &str,
) -> Result<bool, EtcdError> {
    let claimed = DomainRecord {
        host: target.to_string(),
        domid: 0,
        state: DomainState::Starting,
        cpu_time_s: 0.0,
        ..rec.clone()
    };
    let value = serde_json::to_vec(&claimed).unwrap_or_default();
    let revision = match pool
        .etcd
        .put_if(&kv.key, &value, Expect::ModRevision(kv.mod_revision))?
    {
        Ok(rev) => rev,
        Err(_) => return Ok(false),
    };
    match restart_on(pool, daemon, target, rec) {
        Ok(domid) => {
            daemon.log.info(format!(
                "pool {}: ha domain {} restarted on host {target} (ID {domid}) from its \
                 configuration",
                pool.name, rec.name
            ));
        }
        Err(why) => {
            let claimed_kv = KeyValue {
                mod_revision: revision,
                value,
                ..kv.clone()
            };
            mark_lost(
                pool,
                daemon,
                &claimed_kv,
                rec,
                &format!("its restart on host {target} failed: {why}"),
            )?;
        }
    }
    Ok(true)
}

/// The host an `ha = 1` domain of a dead host is restarted on; `None` when none can take it.
/// For now the leader itself (this host), while it is alive in etcd.
pub fn restart_target(
    pool: &Pool,
    _rec: &DomainRecord,
    alive: &BTreeSet<String>,
) -> Option<String> {
    alive.contains(&pool.host).then(|| pool.host.clone())
}

/// Starts `rec`'s domain from its recorded configuration on `host`, its ID there. For now
/// only this host can be asked (the daemon's normal create path, admission control
/// included); another host is refused.
pub fn restart_on(
    pool: &Pool,
    daemon: &Arc<Daemon>,
    host: &str,
    rec: &DomainRecord,
) -> Result<u32, String> {
    if host != pool.host {
        return Err(format!(
            "creating a domain on another host (here {}) is not built yet",
            pool.host
        ));
    }
    let mut config = rec.config.clone();
    if config.uuid.is_none() && !rec.uuid.is_empty() {
        config.uuid = Some(rec.uuid.clone());
    }
    daemon
        .pool_restart(config, rec.config_path.clone())
        .map_err(|e| e.to_string())
}

/// Marks the domain whose key is `kv` `lost` (kept on its host), unless the key changed since.
fn mark_lost(
    pool: &Pool,
    daemon: &Arc<Daemon>,
    kv: &KeyValue,
    rec: &DomainRecord,
    why: &str,
) -> Result<(), EtcdError> {
    let lost = DomainRecord {
        state: DomainState::Lost,
        ..rec.clone()
    };
    let value = serde_json::to_vec(&lost).unwrap_or_default();
    if pool
        .etcd
        .put_if(&kv.key, &value, Expect::ModRevision(kv.mod_revision))?
        .is_ok()
    {
        daemon.log.warn(format!(
            "pool {}: domain {} of host {} is lost: {why}{}",
            pool.name,
            rec.name,
            rec.host,
            if rec.config.ha {
                ""
            } else {
                " (it is not ha = 1)"
            }
        ));
    }
    Ok(())
}
