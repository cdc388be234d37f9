//! The pool's keeper thread: it registers this host under a lease, renews the lease and the
//! host's figures every interval, and publishes this host's domains as they change. When etcd
//! cannot be reached it says so once (and once a minute after that), keeps trying, and when
//! etcd answers again registers anew and rewrites every domain; the domains run on meanwhile.
//! Each renewal is reported to the fence (`fence.rs`); at each renewal the keeper also stands
//! for the pool's leadership (`leader.rs`) and, while leading, restarts the `ha = 1` domains of
//! dead hosts (`ha.rs`). Registering again, it destroys the local domains the pool moved to
//! another host meanwhile, and restarts here the fenced ones nobody moved.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::etcd::{EtcdError, Expect};
use super::schema::{DomainRecord, DomainState};
use super::{ha, leader, Pool};
use crate::daemon::Daemon;

/// How often "etcd is still unreachable" is repeated in the log.
const REPEAT_WARNING: Duration = Duration::from_secs(60);

/// The longest the keeper sleeps between two looks at the domain table.
const POLL: Duration = Duration::from_secs(1);

/// The shortest pause between two rounds.
const MIN_PAUSE: Duration = Duration::from_millis(100);

/// A domain's key as this host last wrote it.
struct Published {
    /// The key's modification revision after our write.
    revision: i64,
    /// What was written, without the CPU time.
    shape: Vec<u8>,
    /// What was written.
    full: Vec<u8>,
}

/// The keeper's state between rounds.
struct Keeper {
    pool: Arc<Pool>,
    daemon: Arc<Daemon>,
    /// The lease (0: not registered).
    lease: i64,
    /// When the lease was last renewed.
    renewed: Instant,
    /// When this host last registered (it stands for leader only an interval later).
    registered: Instant,
    published: BTreeMap<String, Published>,
    /// Local domains whose key another host holds (the target of a migration took it over).
    foreign: BTreeSet<String>,
    /// Since when etcd has been unreachable, and when that was last logged.
    down_since: Option<(Instant, Instant)>,
}

/// Runs the keeper for `pool` until rxend ends.
pub fn run(pool: Arc<Pool>, daemon: Arc<Daemon>) {
    let mut k = Keeper {
        pool,
        daemon,
        lease: 0,
        renewed: Instant::now(),
        registered: Instant::now(),
        published: BTreeMap::new(),
        foreign: BTreeSet::new(),
        down_since: None,
    };
    loop {
        let interval = k.pool.interval();
        let pause = match k.round() {
            Ok(()) => {
                k.reachable();
                // Until the next renewal, looking at the domain table every second.
                interval
                    .saturating_sub(k.renewed.elapsed())
                    .clamp(MIN_PAUSE, POLL)
            }
            Err(e) => {
                k.unreachable(&e);
                // The next try in an interval (a change to the domain table brings it
                // forward): never a tight loop against an etcd that refuses at once.
                interval
            }
        };
        k.pool.wait(pause);
    }
}

impl Keeper {
    fn reachable(&mut self) {
        if let Some((since, _)) = self.down_since.take() {
            self.daemon.log.info(format!(
                "pool {}: etcd answers again after {:.0} s",
                self.pool.name,
                since.elapsed().as_secs_f64()
            ));
        }
    }

    fn unreachable(&mut self, e: &EtcdError) {
        let now = Instant::now();
        match self.down_since {
            None => {
                self.daemon.log.error(format!(
                    "pool {}: {e}; domains keep running, retrying every {:.1} s",
                    self.pool.name,
                    self.pool.interval().as_secs_f64()
                ));
                self.down_since = Some((now, now));
            }
            Some((since, logged)) if logged.elapsed() >= REPEAT_WARNING => {
                self.daemon.log.warn(format!(
                    "pool {}: etcd still unreachable after {:.0} s: {e}",
                    self.pool.name,
                    since.elapsed().as_secs_f64()
                ));
                self.down_since = Some((since, now));
            }
            Some(_) => {}
        }
    }

    /// One round: register or renew when due, then publish what changed.
    fn round(&mut self) -> Result<(), EtcdError> {
        let due = self.lease == 0 || self.renewed.elapsed() >= self.pool.interval();
        if self.lease != 0 && due {
            let sent = Instant::now();
            if self.pool.etcd.keep_alive(self.lease)? {
                self.renewed = sent;
                self.pool.fence.renewed(self.lease, sent);
                self.daemon.pool_arm_fences();
                self.write_host(self.lease)?;
                self.recover_fenced()?;
            } else {
                self.daemon.log.warn(format!(
                    "pool {}: lease {:x} of host {} expired; registering again",
                    self.pool.name, self.lease, self.pool.host
                ));
                self.lease = 0;
            }
        }
        if self.lease == 0 {
            self.register()?;
            self.recover_fenced()?;
        }
        self.publish(due)?;
        if due {
            self.lead()?;
        }
        Ok(())
    }

    /// Stands for the pool's leadership and, while leading, restarts or marks lost the domains
    /// of dead hosts.
    /// A host that just registered waits an interval first, so that the others, which
    /// campaign at every renewal, take over from a leader that resigned to restart.
    fn lead(&mut self) -> Result<(), EtcdError> {
        if self.registered.elapsed() < self.pool.interval() {
            return Ok(());
        }
        let leading = leader::campaign(&self.pool, self.lease)?;
        if self.pool.set_leading(leading) {
            if leading {
                self.daemon.log.info(format!(
                    "pool {}: host {} leads the pool",
                    self.pool.name, self.pool.host
                ));
            } else {
                self.daemon.log.info(format!(
                    "pool {}: host {} no longer leads the pool",
                    self.pool.name, self.pool.host
                ));
            }
        }
        if leading {
            ha::scan(&self.pool, &self.daemon)?;
        }
        Ok(())
    }

    /// Domains destroyed by fencing, now that the lease is renewed: restarted here when their
    /// key still names this host (claimed as the leader would), dropped when the pool moved
    /// them or marked them lost.
    fn recover_fenced(&mut self) -> Result<(), EtcdError> {
        for name in self.pool.fence.fenced() {
            let key = self.pool.keys.domain(&name);
            let Some(kv) = self.pool.etcd.get(&key)? else {
                self.pool.fence.settle(&name);
                continue;
            };
            match serde_json::from_slice::<DomainRecord>(&kv.value) {
                Ok(rec) if rec.host == self.pool.host && rec.state != DomainState::Lost => {
                    self.daemon.log.info(format!(
                        "pool {}: ha domain {name} was stopped by fencing and nobody restarted \
                         it; restarting it here",
                        self.pool.name
                    ));
                    ha::restart(&self.pool, &self.daemon, &kv, &rec, &self.pool.host)?;
                }
                Ok(rec) => {
                    self.daemon.log.info(format!(
                        "pool {}: ha domain {name}, stopped here by fencing, is now on host {}                          ({:?}); not restarting it here",
                        self.pool.name, rec.host, rec.state
                    ));
                }
                Err(_) => {}
            }
            self.pool.fence.settle(&name);
        }
        Ok(())
    }

    /// Grants a lease, writes the host's keys and takes stock of the domain keys in etcd. The
    /// host counts as registered only once all of that is done (a lease granted by a round
    /// that failed half-way just expires).
    fn register(&mut self) -> Result<(), EtcdError> {
        let ttl = i64::try_from(self.pool.ttl).unwrap_or(i64::MAX);
        // A lease an earlier rxend held is renewed if etcd still has it: a quick restart of
        // rxend is not a host failure.
        let sent = Instant::now();
        let saved = match self.pool.fence.saved_lease() {
            // Kept for the next try while etcd cannot be reached.
            Some(old) => match self.pool.etcd.keep_alive(old) {
                Ok(alive) => alive.then_some(old),
                Err(EtcdError::Refused { .. }) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        self.pool.fence.forget_saved_lease();
        let lease = match saved {
            Some(old) => old,
            None => self.pool.etcd.grant(ttl)?,
        };
        self.write_host(lease)?;
        // Whatever etcd holds for this host is rewritten (etcd may have lost it, or hold what
        // an earlier rxend wrote), and keys of domains that no longer run here go.
        self.published.clear();
        self.foreign.clear();
        let here = self.daemon.pool_domains(&self.pool.host);
        let local: BTreeSet<&str> = here.iter().map(|d| d.name.as_str()).collect();
        let transferring: BTreeSet<&str> = here
            .iter()
            .filter(|d| d.state == DomainState::Transferring)
            .map(|d| d.name.as_str())
            .collect();
        let claiming = self
            .pool
            .claiming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for kv in self.pool.etcd.get_prefix(&self.pool.keys.domains())? {
            let Ok(rec) = serde_json::from_slice::<DomainRecord>(&kv.value) else {
                continue;
            };
            if rec.host != self.pool.host {
                // Still running here, but the pool has it elsewhere (restarted there while
                // this host was cut off or its rxend down): this copy goes, never published.
                if local.contains(rec.name.as_str()) && !transferring.contains(rec.name.as_str()) {
                    self.daemon.log.warn(format!(
                        "pool {}: domain {} runs here but the pool has it on host {} now; \
                         destroying this copy",
                        self.pool.name, rec.name, rec.host
                    ));
                    if let Err(e) = self.daemon.pool_destroy(&rec.name, "moved by the pool") {
                        self.daemon.log.error(format!(
                            "pool {}: cannot destroy domain {}: {e}",
                            self.pool.name, rec.name
                        ));
                    }
                }
                continue;
            }
            if local.contains(rec.name.as_str()) {
                self.published.insert(
                    rec.name,
                    Published {
                        revision: kv.mod_revision,
                        shape: Vec::new(),
                        full: Vec::new(),
                    },
                );
            } else if !claiming.contains(&rec.name) && !self.pool.fence.is_fenced(&rec.name) {
                self.pool
                    .etcd
                    .delete_if_unchanged(&kv.key, kv.mod_revision)?;
            }
        }
        self.lease = lease;
        self.registered = Instant::now();
        self.renewed = sent;
        self.pool.fence.renewed(lease, sent);
        self.daemon.pool_arm_fences();
        self.daemon.log.info(format!(
            "pool {}: host {} registered (lease {lease:x}, {} s), {} domains",
            self.pool.name,
            self.pool.host,
            self.pool.ttl,
            local.len()
        ));
        Ok(())
    }

    /// Writes the host's figures: under the lease, and as a member (kept when the lease ends).
    fn write_host(&self, lease: i64) -> Result<(), EtcdError> {
        let (free, total) = self.daemon.pool_memory();
        let rec = self.pool.host_record(free, total);
        let value = serde_json::to_vec(&rec).unwrap_or_default();
        self.pool
            .etcd
            .put(&self.pool.keys.alive(&self.pool.host), &value, lease)?;
        self.pool
            .etcd
            .put(&self.pool.keys.member(&self.pool.host), &value, 0)
    }

    /// Writes the domains that changed (with their CPU time too when `refresh`), and deletes
    /// the keys of those that left this host.
    fn publish(&mut self, refresh: bool) -> Result<(), EtcdError> {
        let local = self.daemon.pool_domains(&self.pool.host);
        let taking_over: BTreeSet<String> = self
            .pool
            .taking_over
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let names: BTreeSet<String> = local.iter().map(|d| d.name.clone()).collect();
        if refresh {
            // Looked at again: the host that held them may have let them go.
            self.foreign.clear();
        }
        for d in local {
            let takeover = taking_over.contains(&d.name);
            if self.foreign.contains(&d.name) && !takeover {
                continue;
            }
            let full = serde_json::to_vec(&d).unwrap_or_default();
            let shape = serde_json::to_vec(&DomainRecord {
                cpu_time_s: 0.0,
                ..d.clone()
            })
            .unwrap_or_default();
            let expect = match self.published.get(&d.name) {
                Some(p) if p.shape == shape && (!refresh || p.full == full) && !takeover => {
                    continue
                }
                Some(p) if !takeover => Expect::ModRevision(p.revision),
                _ => {
                    let key = self.pool.keys.domain(&d.name);
                    match self.pool.etcd.get(&key)? {
                        None => Expect::Absent,
                        Some(kv) => {
                            let holder = serde_json::from_slice::<DomainRecord>(&kv.value)
                                .map(|r| r.host)
                                .unwrap_or_default();
                            if holder != self.pool.host && !takeover {
                                self.held_elsewhere(&d.name, &holder);
                                continue;
                            }
                            Expect::ModRevision(kv.mod_revision)
                        }
                    }
                }
            };
            let key = self.pool.keys.domain(&d.name);
            match self.pool.etcd.put_if(&key, &full, expect)? {
                Ok(revision) => {
                    self.published.insert(
                        d.name.clone(),
                        Published {
                            revision,
                            shape,
                            full,
                        },
                    );
                    self.foreign.remove(&d.name);
                    if takeover {
                        self.pool
                            .taking_over
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&d.name);
                    }
                }
                // Changed by someone else since: read it again next round.
                Err(_) => {
                    self.published.remove(&d.name);
                }
            }
        }
        // Domains that left this host: their keys go, unless someone else wrote them since
        // (a migration's target) or they are being created again.
        let claiming = self
            .pool
            .claiming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|n| {
                !names.contains(*n) && !claiming.contains(*n) && !self.pool.fence.is_fenced(n)
            })
            .cloned()
            .collect();
        for name in gone {
            if let Some(p) = self.published.get(&name) {
                let key = self.pool.keys.domain(&name);
                self.pool.etcd.delete_if_unchanged(&key, p.revision)?;
            }
            self.published.remove(&name);
        }
        self.foreign.retain(|n| names.contains(n));
        // Names claimed here whose domain did not start: their claim goes.
        let released =
            std::mem::take(&mut *self.pool.released.lock().unwrap_or_else(|p| p.into_inner()));
        for name in released {
            if names.contains(&name)
                || claiming.contains(&name)
                || self.published.contains_key(&name)
            {
                continue;
            }
            let key = self.pool.keys.domain(&name);
            let kv = match self.pool.etcd.get(&key) {
                Ok(kv) => kv,
                Err(e) => {
                    // Tried again next round.
                    self.pool
                        .released
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name);
                    return Err(e);
                }
            };
            if let Some(kv) = kv {
                let mine = serde_json::from_slice::<DomainRecord>(&kv.value)
                    .is_ok_and(|r| r.host == self.pool.host);
                if mine {
                    self.pool.etcd.delete_if_unchanged(&key, kv.mod_revision)?;
                }
            }
        }
        Ok(())
    }

    fn held_elsewhere(&mut self, name: &str, holder: &str) {
        if self.foreign.insert(name.to_string()) {
            self.daemon.log.info(format!(
                "pool {}: domain {name} is held by host {holder} in etcd; not publishing it \
                 from here",
                self.pool.name
            ));
        }
    }
}
