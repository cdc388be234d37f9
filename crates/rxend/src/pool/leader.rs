//! The pool's leader: one host at a time, elected through the `leader` key bound to its
//! lease. A host becomes leader by creating the key where it does not exist (a transaction
//! that writes only if absent); the leader is whoever holds it, and it vanishes with the
//! holder's lease (a host that dies, or loses etcd, stops leading within the TTL) or when the
//! holder resigns (rxend stopping). The leader restarts the `ha = 1` domains of dead hosts
//! (`ha.rs`).

use super::etcd::{EtcdError, Expect};
use super::schema::LeaderRecord;
use super::{now_secs, Pool};

/// Who leads the pool, as etcd says now.
pub fn current(pool: &Pool) -> Result<Option<String>, EtcdError> {
    Ok(pool
        .etcd
        .get(&pool.keys.leader())?
        .and_then(|kv| serde_json::from_slice::<LeaderRecord>(&kv.value).ok())
        .map(|r| r.host))
}

/// Stands for leader with this host's `lease`: whether this host leads now (it held the key
/// already, or created it).
pub fn campaign(pool: &Pool, lease: i64) -> Result<bool, EtcdError> {
    let key = pool.keys.leader();
    if let Some(kv) = pool.etcd.get(&key)? {
        return Ok(kv.lease == lease && holder(&kv.value).as_deref() == Some(&pool.host));
    }
    let rec = LeaderRecord {
        host: pool.host.clone(),
        since: now_secs(),
    };
    let value = serde_json::to_vec(&rec).unwrap_or_default();
    match pool
        .etcd
        .put_if_leased(&key, &value, Expect::Absent, lease)?
    {
        Ok(_) => Ok(true),
        // Someone was quicker: it leads.
        Err(_) => Ok(false),
    }
}

/// Gives leadership up (rxend stopping): deletes the key if this host holds it, so that
/// another host takes over at its next round instead of when the lease runs out.
pub fn resign(pool: &Pool) -> Result<bool, EtcdError> {
    let key = pool.keys.leader();
    match pool.etcd.get(&key)? {
        Some(kv) if holder(&kv.value).as_deref() == Some(&pool.host) => {
            pool.etcd.delete_if_unchanged(&key, kv.mod_revision)
        }
        _ => Ok(false),
    }
}

fn holder(value: &[u8]) -> Option<String> {
    serde_json::from_slice::<LeaderRecord>(value)
        .ok()
        .map(|r| r.host)
}
