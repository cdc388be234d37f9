//! HA restart: the pool's leader (`leader.rs`) looks, at every keeper round, for domains
//! recorded on hosts whose lease expired (their `hosts/HOST` key is gone). A domain with
//! `ha = 1` is restarted from its recorded configuration on a surviving host and recorded
//! there; any other is marked `lost`. A restart is claimed first by rewriting the domain's key
//! with a compare-and-swap on its modification revision, so each is restarted exactly once
//! even when the leader changes half-way: the next leader finds the key naming the host that
//! claimed it, and restarts it again only if that host's lease expired in turn (its copy is
//! gone, or fenced).
//!
//! Where a domain goes is decided by placement (`placement.rs`, through [`Pool::place`]: a
//! live, enabled host with the memory, its `pool_host` and anti-affinity honoured, the dead
//! host excluded) and done by [`restart_on`]: the daemon's normal create path on this host,
//! or the chosen host's rxend through its relocation server (`remote.rs`).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::etcd::{EtcdError, Expect, KeyValue};
use super::placement::Need;
use super::remote::{create_on, CreateSpec};
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
            // The memory placement promises stays counted until the restart is done.
            let (target, _promise) = match pool.place(&restart_need(&rec)) {
                Ok(p) => p,
                Err(e) => {
                    mark_lost(
                        pool,
                        daemon,
                        &kv,
                        &rec,
                        &format!("no host can take it: {e}"),
                    )?;
                    continue;
                }
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

/// What placement must find for the restart of `rec`'s domain: its memory, its own placement
/// keys, and any host but the one it was on.
pub fn restart_need(rec: &DomainRecord) -> Need {
    Need {
        name: rec.name.clone(),
        memory_mib: crate::record::ram_mib(&rec.config),
        pool_host: rec.config.pool_host.clone(),
        anti_affinity: rec.config.pool_anti_affinity.clone(),
        exclude: vec![rec.host.clone()],
    }
}

/// Starts `rec`'s domain from its recorded configuration on `host`, its ID there: through the
/// daemon's normal create path here (admission control included), or through `host`'s rxend
/// (its relocation server, the relocation key and hosts-allow as for a migration), which
/// accepts the name because the restart's claim already records it there.
pub fn restart_on(
    pool: &Pool,
    daemon: &Arc<Daemon>,
    host: &str,
    rec: &DomainRecord,
) -> Result<u32, String> {
    let mut config = rec.config.clone();
    if config.uuid.is_none() && !rec.uuid.is_empty() {
        config.uuid = Some(rec.uuid.clone());
    }
    if host == pool.host {
        return daemon
            .pool_restart(config, rec.config_path.clone())
            .map_err(|e| e.to_string());
    }
    let spec = CreateSpec {
        path: rec
            .config_path
            .clone()
            .unwrap_or_else(|| format!("{}.cfg", rec.name)),
        text: config.to_xl_cfg(),
        overrides: Vec::new(),
        paused: false,
        ignore_unsupported: false,
    };
    create_on(pool, daemon, host, &spec)
        .map(|p| p.domid)
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
