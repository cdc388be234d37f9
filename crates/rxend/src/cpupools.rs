//! CPU pools: their definitions (`STATE_DIR/cpupools.json`, written atomically) and how the
//! host's CPUs are partitioned between them. Pool-0 (ID 0) holds every CPU that no other
//! pool holds and that is not free; Domain-0 is always in it.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::write_atomic;

/// Pool-0's name unless renamed.
pub const POOL0: &str = "Pool-0";

/// The schedulers a pool may name: both are Linux's CFS with credit weights and caps.
pub const SCHEDULERS: &[&str] = &["credit", "credit2"];

/// Schedulers Xen has that rxen does not.
const XEN_ONLY_SCHEDULERS: &[&str] = &["rtds", "arinc653", "null", "sedf"];

/// Errors of pool operations, in xl's words where xl has some.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No pool by that name or ID.
    #[error("unknown cpupool '{0}'")]
    Unknown(String),
    /// The name is taken.
    #[error("Pool name \"{0}\" already exists")]
    NameTaken(String),
    /// A name that cannot be a pool's.
    #[error("invalid cpupool name \"{0}\": {1}")]
    BadName(String, &'static str),
    /// A scheduler xl does not know.
    #[error("Unknown scheduler \"{0}\" (rxen's pools use credit or credit2)")]
    UnknownScheduler(String),
    /// A scheduler of Xen's that rxen does not have.
    #[error("scheduler {0} is not available: rxen's pools are scheduled by Linux's CFS with credit weights and caps (credit or credit2)")]
    SchedulerUnavailable(String),
    /// A CPU that is neither free nor Pool-0's, or not on the host.
    #[error("cpu {0} illegal or not free")]
    NotFree(u32),
    /// A CPU the pool does not hold.
    #[error("cpu {cpu} is not in cpupool '{pool}'")]
    NotInPool {
        /// The CPU.
        cpu: u32,
        /// The pool.
        pool: String,
    },
    /// The pool would be left without CPUs while domains are in it.
    #[error("cpupool '{0}' would have no CPU left while domains are in it")]
    LastCpu(String),
    /// Pool-0 cannot go.
    #[error("cpupool '{0}' is Pool-0, where Domain-0 is: it cannot be destroyed")]
    Pool0(String),
    /// The pool still has domains.
    #[error("Can't destroy cpupool '{pool}': domains are in it ({domains}); move them with cpupool-migrate first")]
    HasDomains {
        /// The pool.
        pool: String,
        /// Their names.
        domains: String,
    },
    /// `cpupool-numa-split` with pools already made.
    #[error("splitting not possible, already cpupools in use")]
    AlreadySplit,
    /// The definitions could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The definitions file is not what rxend writes.
    #[error("{path}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// One pool other than Pool-0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Its ID (1 and up).
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Its scheduler.
    pub sched: String,
    /// Its CPUs, ascending.
    pub cpus: Vec<u32>,
}

/// Every pool definition of one rxend, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolTable {
    /// Pool-0's name (`cpupool-rename` and `cpupool-numa-split` change it).
    pub pool0_name: String,
    /// Pool-0's scheduler.
    pub pool0_sched: String,
    /// CPUs in no pool (taken out with `cpupool-cpu-remove` or left by `cpupool-destroy`).
    #[serde(default)]
    pub free: Vec<u32>,
    /// The other pools, by ID.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// The next ID to give.
    pub next_id: u32,
}

impl Default for PoolTable {
    fn default() -> Self {
        PoolTable {
            pool0_name: POOL0.into(),
            pool0_sched: "credit".into(),
            free: Vec::new(),
            pools: Vec::new(),
            next_id: 1,
        }
    }
}

/// A pool as it is now: ID, name, scheduler, CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    /// Its ID.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Its scheduler.
    pub sched: String,
    /// Its CPUs.
    pub cpus: Vec<u32>,
}

/// Checks a pool name: printable, not empty, not a number (xl takes numbers as pool IDs).
pub fn check_name(name: &str) -> Result<(), PoolError> {
    let bad = |why| Err(PoolError::BadName(name.to_string(), why));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 64 {
        return bad("it is longer than 64 bytes");
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("it has spaces or control characters");
    }
    if name.parse::<u64>().is_ok() {
        return bad("a number would be read as a pool ID");
    }
    Ok(())
}

/// Checks a scheduler name.
pub fn check_sched(sched: &str) -> Result<(), PoolError> {
    if SCHEDULERS.contains(&sched) {
        Ok(())
    } else if XEN_ONLY_SCHEDULERS.contains(&sched) {
        Err(PoolError::SchedulerUnavailable(sched.to_string()))
    } else {
        Err(PoolError::UnknownScheduler(sched.to_string()))
    }
}

impl PoolTable {
    /// Reads the definitions (the defaults when the file does not exist).
    pub fn load(path: &Path) -> Result<PoolTable, PoolError> {
        match fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| PoolError::Corrupt {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(PoolTable::default()),
            Err(source) => Err(PoolError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the definitions atomically.
    pub fn store(&self, path: &Path) -> Result<(), PoolError> {
        let data = serde_json::to_vec_pretty(self).map_err(|source| PoolError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
        write_atomic(path, &data).map_err(|source| PoolError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Every pool, Pool-0 first, with its CPUs among `host` (the host's CPUs).
    pub fn views(&self, host: &[u32]) -> Vec<PoolView> {
        let taken: BTreeSet<u32> = self
            .pools
            .iter()
            .flat_map(|p| p.cpus.iter().copied())
            .chain(self.free.iter().copied())
            .collect();
        let mut out = vec![PoolView {
            id: 0,
            name: self.pool0_name.clone(),
            sched: self.pool0_sched.clone(),
            cpus: host
                .iter()
                .copied()
                .filter(|c| !taken.contains(c))
                .collect(),
        }];
        out.extend(self.pools.iter().map(|p| {
            PoolView {
                id: p.id,
                name: p.name.clone(),
                sched: p.sched.clone(),
                cpus: p
                    .cpus
                    .iter()
                    .copied()
                    .filter(|c| host.contains(c))
                    .collect(),
            }
        }));
        out
    }

    /// Finds a pool by name, or by ID written as a number (as xl's qualifiers).
    pub fn find(&self, host: &[u32], qualifier: &str) -> Result<PoolView, PoolError> {
        let views = self.views(host);
        views
            .iter()
            .find(|v| v.name == qualifier)
            .or_else(|| {
                let id: u32 = qualifier.parse().ok()?;
                views.iter().find(|v| v.id == id)
            })
            .cloned()
            .ok_or_else(|| PoolError::Unknown(qualifier.to_string()))
    }

    fn name_taken(&self, name: &str) -> bool {
        self.pool0_name == name || self.pools.iter().any(|p| p.name == name)
    }

    /// The pool `cpus` may come from: free, or Pool-0's while Pool-0 keeps one CPU.
    fn check_takeable(&self, host: &[u32], cpus: &[u32]) -> Result<(), PoolError> {
        let pool0 = &self.views(host)[0];
        for &c in cpus {
            if !self.free.contains(&c) && !pool0.cpus.contains(&c) {
                return Err(PoolError::NotFree(c));
            }
        }
        if !pool0.cpus.is_empty() && pool0.cpus.iter().all(|c| cpus.contains(c)) {
            return Err(PoolError::LastCpu(self.pool0_name.clone()));
        }
        Ok(())
    }

    /// Adds a pool with `cpus` (free CPUs or Pool-0's); returns its ID.
    pub fn create(
        &mut self,
        host: &[u32],
        name: &str,
        sched: &str,
        cpus: &[u32],
    ) -> Result<u32, PoolError> {
        check_name(name)?;
        if self.name_taken(name) {
            return Err(PoolError::NameTaken(name.to_string()));
        }
        check_sched(sched)?;
        self.check_takeable(host, cpus)?;
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        self.free.retain(|c| !cpus.contains(c));
        let mut cpus = cpus.to_vec();
        cpus.sort_unstable();
        cpus.dedup();
        self.pools.push(Pool {
            id,
            name: name.to_string(),
            sched: sched.to_string(),
            cpus,
        });
        Ok(id)
    }

    /// Removes pool `id` (not Pool-0); its CPUs become free.
    pub fn destroy(&mut self, id: u32) -> Result<(), PoolError> {
        if id == 0 {
            return Err(PoolError::Pool0(self.pool0_name.clone()));
        }
        let Some(i) = self.pools.iter().position(|p| p.id == id) else {
            return Err(PoolError::Unknown(id.to_string()));
        };
        let p = self.pools.remove(i);
        self.free.extend(p.cpus);
        self.free.sort_unstable();
        self.free.dedup();
        Ok(())
    }

    /// Renames pool `id`.
    pub fn rename(&mut self, id: u32, new_name: &str) -> Result<(), PoolError> {
        check_name(new_name)?;
        if self.name_taken(new_name) {
            return Err(PoolError::NameTaken(new_name.to_string()));
        }
        if id == 0 {
            self.pool0_name = new_name.to_string();
            return Ok(());
        }
        let p = self
            .pools
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| PoolError::Unknown(id.to_string()))?;
        p.name = new_name.to_string();
        Ok(())
    }

    /// Adds `cpus` (free, or Pool-0's when `id` is another pool) to pool `id`.
    pub fn cpu_add(&mut self, host: &[u32], id: u32, cpus: &[u32]) -> Result<(), PoolError> {
        if id == 0 {
            for &c in cpus {
                if !self.free.contains(&c) && !self.views(host)[0].cpus.contains(&c) {
                    return Err(PoolError::NotFree(c));
                }
            }
            self.free.retain(|c| !cpus.contains(c));
            return Ok(());
        }
        self.check_takeable(host, cpus)?;
        let p = self
            .pools
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| PoolError::Unknown(id.to_string()))?;
        p.cpus.extend_from_slice(cpus);
        p.cpus.sort_unstable();
        p.cpus.dedup();
        self.free.retain(|c| !cpus.contains(c));
        Ok(())
    }

    /// Takes `cpus` out of pool `id`: they become free. `has_domains` says whether domains
    /// are in it (then it keeps at least one CPU; Pool-0 always does).
    pub fn cpu_remove(
        &mut self,
        host: &[u32],
        id: u32,
        cpus: &[u32],
        has_domains: bool,
    ) -> Result<(), PoolError> {
        let view = self
            .views(host)
            .into_iter()
            .find(|v| v.id == id)
            .ok_or_else(|| PoolError::Unknown(id.to_string()))?;
        for &c in cpus {
            if !view.cpus.contains(&c) {
                return Err(PoolError::NotInPool {
                    cpu: c,
                    pool: view.name.clone(),
                });
            }
        }
        if (has_domains || id == 0) && view.cpus.iter().all(|c| cpus.contains(c)) {
            return Err(PoolError::LastCpu(view.name));
        }
        if let Some(p) = self.pools.iter_mut().find(|p| p.id == id) {
            p.cpus.retain(|c| !cpus.contains(c));
        }
        self.free.extend_from_slice(cpus);
        self.free.sort_unstable();
        self.free.dedup();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_are_partitioned_between_pools() {
        let host = [0, 1, 2, 3];
        let mut t = PoolTable::default();
        assert_eq!(t.views(&host)[0].cpus, vec![0, 1, 2, 3]);
        let id = t.create(&host, "p1", "credit", &[2, 3]).unwrap();
        assert_eq!(id, 1);
        assert_eq!(t.views(&host)[0].cpus, vec![0, 1]);
        assert!(matches!(
            t.create(&host, "p2", "credit", &[3]),
            Err(PoolError::NotFree(3))
        ));
        assert!(matches!(
            t.create(&host, "p2", "credit", &[0, 1]),
            Err(PoolError::LastCpu(_))
        ));
        assert!(matches!(
            t.create(&host, "p1", "credit", &[]),
            Err(PoolError::NameTaken(_))
        ));
        assert!(matches!(
            t.create(&host, "p3", "rtds", &[]),
            Err(PoolError::SchedulerUnavailable(_))
        ));
        // Removed CPUs are free; free CPUs are in no pool until added.
        t.cpu_remove(&host, 1, &[3], true).unwrap();
        assert_eq!(t.free, vec![3]);
        assert_eq!(t.views(&host)[0].cpus, vec![0, 1]);
        assert!(matches!(
            t.cpu_remove(&host, 1, &[2], true),
            Err(PoolError::LastCpu(_))
        ));
        t.cpu_add(&host, 0, &[3]).unwrap();
        assert_eq!(t.views(&host)[0].cpus, vec![0, 1, 3]);
        t.cpu_add(&host, 1, &[1]).unwrap();
        assert_eq!(t.find(&host, "p1").unwrap().cpus, vec![1, 2]);
        assert_eq!(t.find(&host, "1").unwrap().name, "p1");
        t.rename(1, "web").unwrap();
        assert!(t.find(&host, "p1").is_err());
        t.destroy(1).unwrap();
        assert_eq!(t.free, vec![1, 2]);
        assert!(matches!(t.destroy(0), Err(PoolError::Pool0(_))));
        assert!(check_name("7").is_err());
    }
}
