//! Fencing: a host that cannot renew its lease stops its `ha = 1` domains before etcd could
//! let the lease expire (and the pool's leader restart them elsewhere), so that a domain never
//! runs on two hosts at once.
//!
//! The keeper tells [`Fence`] when each successful keep-alive (or grant) was *sent*: etcd
//! counts the TTL from when it received it, which is later. A thread of its own ([`run`])
//! checks every 100 ms; once two thirds of the TTL (two renewal intervals) have passed since
//! then, it destroys every local `ha = 1` domain, logging why, and keeps doing
//! so while no renewal succeeds. The fenced domains' keys are left as they are (the keeper does
//! not delete them): when etcd answers again, a fenced domain whose key still names this host
//! (nobody restarted it elsewhere) is restarted here, claimed with the same compare-and-swap
//! the leader uses (`ha::restart`), and one the pool moved is dropped.
//!
//! The VMMs of `ha = 1` domains guard themselves too: at every renewal each is sent a deadline
//! ([`vmm_deadline`], half a second after this fence's), past which it destroys its domain
//! itself (`crates/vmm/src/fence.rs`). So a domain whose rxend died, or was stopped and not
//! started again, stops before its host's lease expires, as it would with rxend alive.
//!
//! The lease and the wall-clock time of its last renewal are kept in the state directory
//! (`pool-lease`): a restarted rxend renews the same lease if it is still alive (a quick restart
//! does not make the pool think the host died), and knows how long ago it was renewed, so
//! adopted `ha = 1` domains are fenced on time even when etcd cannot be reached at start. The
//! fenced domains not yet settled are kept beside it (`pool-fenced`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Pool;
use crate::daemon::Daemon;

/// How often the fence looks at the clock.
const TICK: Duration = Duration::from_millis(100);

/// How often a domain the fence cannot destroy is reported again.
const REPEAT_FAILURE: Duration = Duration::from_secs(10);

/// What is kept in `pool-lease`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    /// The lease's ID.
    lease: i64,
    /// When its last renewal was sent, seconds since the Unix epoch.
    renewed: f64,
}

/// What the fence knows.
#[derive(Default)]
struct State {
    /// When the last successful renewal was sent; `None` before the first look.
    renewed: Option<Instant>,
    /// The file the lease is kept in.
    file: Option<PathBuf>,
    /// A lease saved by an earlier rxend, to renew instead of granting one.
    saved_lease: Option<i64>,
    /// Domains destroyed by fencing, not yet restarted here or found moved: name -> reason.
    fenced: BTreeMap<String, String>,
}

/// The fence's state, shared by the keeper and the fence thread.
#[derive(Default)]
pub struct Fence {
    state: Mutex<State>,
    /// Held while a deadline is read and sent to VMMs ([`Fence::arming`]).
    arming: Mutex<()>,
}

/// How long after the last renewal was sent the host's `ha = 1` domains are stopped: two
/// thirds of the TTL. From a TTL of 6 s up that is the TTL less the larger of 2 s and a third
/// of it; below, a margin of 2 s would come before the next renewal is even due (a renewal is
/// due every third of the TTL), so the margin is a third of the TTL there too: fencing always
/// waits for one renewal to be missed and the next to be late.
pub fn fence_after(ttl: u64) -> Duration {
    Duration::from_millis(ttl.saturating_mul(2000) / 3)
}

/// How much later than rxend's own fence a VMM destroys its domain itself: rxend, when alive,
/// acts first (and knows to restart the domain here should nobody move it).
const VMM_GRACE: Duration = Duration::from_millis(500);

/// The deadline given to the VMMs of `ha = 1` domains after a renewal sent `since_sent` ago,
/// in milliseconds from now (at least 1: 0 would disarm it).
pub fn vmm_deadline(ttl: u64, since_sent: Duration) -> u64 {
    let left = (fence_after(ttl) + VMM_GRACE).saturating_sub(since_sent);
    u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Fence {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the lease an earlier rxend kept in `file` and starts the clock from its last
    /// renewal (or from now when there is none).
    pub fn load(&self, file: PathBuf) {
        let saved = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Saved>(&b).ok());
        let mut s = self.lock();
        s.renewed = Some(match &saved {
            Some(v) => {
                let ago = Duration::from_secs_f64((now_unix() - v.renewed).clamp(0.0, 1e9));
                Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
            }
            None => Instant::now(),
        });
        s.saved_lease = saved.map(|v| v.lease);
        let fenced_file = file.with_file_name("pool-fenced");
        s.fenced = std::fs::read(&fenced_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        s.file = Some(file);
    }

    /// Keeps the fenced domains in `pool-fenced` beside the lease's file, so that a restarted
    /// rxend still restarts them (best effort).
    fn save_fenced(s: &State) {
        let Some(file) = &s.file else {
            return;
        };
        let file = file.with_file_name("pool-fenced");
        let tmp = file.with_extension("tmp");
        if std::fs::write(&tmp, serde_json::to_vec(&s.fenced).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }

    /// The lease an earlier rxend held (the keeper tries to renew it before granting one).
    pub fn saved_lease(&self) -> Option<i64> {
        self.lock().saved_lease
    }

    /// The saved lease was renewed or found gone: not tried again.
    pub fn forget_saved_lease(&self) {
        self.lock().saved_lease = None;
    }

    /// A renewal of `lease` sent at `sent` succeeded.
    pub fn renewed(&self, lease: i64, sent: Instant) {
        let file = {
            let mut s = self.lock();
            s.renewed = Some(sent);
            s.file.clone()
        };
        if let Some(file) = file {
            let ago = sent.elapsed().as_secs_f64();
            let v = Saved {
                lease,
                renewed: now_unix() - ago,
            };
            // Best effort: without it a restarted rxend grants a new lease.
            let tmp = file.with_extension("tmp");
            if std::fs::write(&tmp, serde_json::to_vec(&v).unwrap_or_default()).is_ok() {
                let _ = std::fs::rename(&tmp, &file);
            }
        }
    }

    /// The deadline for VMMs now, from the last renewal ([`vmm_deadline`]).
    pub fn vmm_deadline_now(&self, ttl: u64) -> u64 {
        let since = self.lock().renewed.map_or(Duration::MAX, |r| r.elapsed());
        vmm_deadline(ttl, since)
    }

    /// Held while a VMM deadline is read ([`Fence::vmm_deadline_now`]) and sent: the VMM takes
    /// the last deadline it is sent, so one read before a renewal must not arrive after one
    /// read after it (a domain started while the lease is renewed would keep the older one,
    /// and stop itself a renewal early).
    pub fn arming(&self) -> std::sync::MutexGuard<'_, ()> {
        self.arming.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the deadline passed: the host may no longer run `ha = 1` domains.
    pub fn expired(&self, ttl: u64) -> bool {
        self.lock()
            .renewed
            .is_some_and(|r| r.elapsed() >= fence_after(ttl))
    }

    /// Whether `name` was destroyed by fencing and is waiting to be restarted or dropped.
    pub fn is_fenced(&self, name: &str) -> bool {
        self.lock().fenced.contains_key(name)
    }

    /// The domains destroyed by fencing.
    pub fn fenced(&self) -> Vec<String> {
        self.lock().fenced.keys().cloned().collect()
    }

    /// `name` was restarted here or found elsewhere: no longer fenced.
    pub fn settle(&self, name: &str) {
        let mut s = self.lock();
        if s.fenced.remove(name).is_some() {
            Self::save_fenced(&s);
        }
    }

    /// `name` was destroyed by fencing (`why`): its key is kept until it is settled.
    pub fn mark(&self, name: &str, why: &str) {
        let mut s = self.lock();
        s.fenced.insert(name.to_string(), why.to_string());
        Self::save_fenced(&s);
    }
}

/// Runs the fence for `pool` until rxend ends.
pub fn run(pool: Arc<Pool>, daemon: Arc<Daemon>) {
    // Domains that could not be destroyed, and when that was last logged (once in a while,
    // not at every tick).
    let mut failed: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        std::thread::sleep(TICK);
        if !pool.fence.expired(pool.ttl) {
            continue;
        }
        for d in daemon.pool_domains(&pool.host) {
            // One being saved or migrated cannot be destroyed until that ends (a migration's
            // target takes its key over, so the pool does not restart it meanwhile).
            if !d.config.ha
                || pool.fence.is_fenced(&d.name)
                || d.state == super::schema::DomainState::Transferring
            {
                continue;
            }
            let why = format!(
                "no renewal of this host's lease for {:.1} s (the lease lasts {} s)",
                fence_after(pool.ttl).as_secs_f64(),
                pool.ttl
            );
            let quiet = failed
                .get(&d.name)
                .is_some_and(|at| at.elapsed() < REPEAT_FAILURE);
            if !quiet {
                daemon.log.warn(format!(
                    "pool {}: fencing: destroying ha domain {} ({why}), so that it never runs \
                     on two hosts; the pool's leader restarts it elsewhere",
                    pool.name, d.name
                ));
            }
            match daemon.pool_destroy(&d.name, "fencing") {
                Ok(()) => {
                    failed.remove(&d.name);
                    pool.fence.mark(&d.name, &why);
                }
                Err(e) => {
                    if !quiet {
                        daemon.log.error(format!(
                            "pool {}: fencing: cannot destroy domain {}: {e}",
                            pool.name, d.name
                        ));
                        failed.insert(d.name.clone(), Instant::now());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_comes_before_the_lease_ends_with_a_margin() {
        assert_eq!(fence_after(6), Duration::from_secs(4));
        assert_eq!(fence_after(30), Duration::from_secs(20));
        assert_eq!(fence_after(3), Duration::from_secs(2));
        assert_eq!(fence_after(10), Duration::from_millis(6666));
        // Never before a renewal is missed: the keeper renews every third of the TTL.
        for ttl in 2..100 {
            assert!(fence_after(ttl) >= 2 * Duration::from_millis(ttl * 1000 / 3));
            assert!(fence_after(ttl) < Duration::from_secs(ttl));
        }
        assert_eq!(vmm_deadline(6, Duration::from_secs(1)), 3500);
        assert_eq!(vmm_deadline(6, Duration::from_secs(60)), 1);
    }

    #[test]
    fn a_saved_lease_is_renewed_once_and_its_age_counts() {
        let dir = std::env::temp_dir().join(format!("rxen-fence-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("pool-lease");
        let f = Fence::default();
        f.load(file.clone());
        assert_eq!(f.saved_lease(), None);
        assert!(!f.expired(6));
        f.renewed(0x42, Instant::now() - Duration::from_secs(5));
        let g = Fence::default();
        g.load(file);
        assert_eq!(g.saved_lease(), Some(0x42));
        g.forget_saved_lease();
        assert_eq!(g.saved_lease(), None);
        // Renewed five seconds ago: past the fence of a 6 s lease, not of a 30 s one.
        assert!(g.expired(6));
        assert!(!g.expired(30));
        // Fenced domains outlive a restart until settled.
        g.mark("web", "test");
        let h = Fence::default();
        h.load(dir.join("pool-lease"));
        assert!(h.is_fenced("web"));
        h.settle("web");
        let i = Fence::default();
        i.load(dir.join("pool-lease"));
        assert!(i.fenced().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
