//! The daemon's CPU pools (`rxl cpupool-*`, the `pool` config key): the definitions in
//! [`crate::cpupools`], each domain's VMM confined to its pool's CPUs by its cpuset
//! ([`crate::cpuset`]), and vCPU pinning kept inside the pool.

use std::fs::File;
use std::time::Duration;

use rxen_proto::api::{CpupoolCreated, CpupoolInfo};
use xlcfg::DomainConfig;

use super::{Daemon, DaemonError};
use crate::auth::Caller;
use crate::cpupools::{PoolError, PoolTable, PoolView};
use crate::cpuset::Cpusets;
use crate::log::Log;
use crate::record::DomainState;

impl From<PoolError> for DaemonError {
    fn from(e: PoolError) -> Self {
        DaemonError::Config(e.to_string())
    }
}

/// The host's online CPUs (`/sys/devices/system/cpu/online`), else 0..the CPU count.
pub(crate) fn host_cpus() -> Vec<u32> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| xlcfg::parse_cpu_list(t.trim(), xlcfg::MAX_CPUS).ok())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| (0..crate::hostinfo::nr_cpus()).collect())
}

/// The CPUs of NUMA node `node` (`/sys/devices/system/node/nodeN/cpulist`).
fn node_cpus(node: u32) -> Option<Vec<u32>> {
    let text =
        std::fs::read_to_string(format!("/sys/devices/system/node/node{node}/cpulist")).ok()?;
    xlcfg::parse_cpu_list(text.trim(), xlcfg::MAX_CPUS).ok()
}

/// The NUMA nodes and their CPUs, by node; one node 0 with every CPU where sysfs has none.
fn numa_nodes(host: &[u32]) -> Vec<(u32, Vec<u32>)> {
    let mut nodes: Vec<(u32, Vec<u32>)> = std::fs::read_dir("/sys/devices/system/node")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let n: u32 = e.file_name().to_str()?.strip_prefix("node")?.parse().ok()?;
                    let cpus: Vec<u32> = node_cpus(n)?
                        .into_iter()
                        .filter(|c| host.contains(c))
                        .collect();
                    (!cpus.is_empty()).then_some((n, cpus))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    if nodes.is_empty() {
        nodes.push((0, host.to_vec()));
    }
    nodes
}

/// CPUs as `cpupool-cpu-add`/`-remove` take them: a CPU list (`1`, `2-3`) or `node:N`.
fn parse_cpus(spec: &str, host: &[u32]) -> Result<Vec<u32>, DaemonError> {
    let limit = host.iter().max().map_or(1, |m| m + 1);
    if let Some(n) = spec
        .strip_prefix("node:")
        .or_else(|| spec.strip_prefix("nodes:"))
    {
        let node: u32 = n
            .parse()
            .map_err(|_| DaemonError::Config(format!("Invalid argument \"{spec}\"")))?;
        return node_cpus(node)
            .ok_or_else(|| DaemonError::Config(format!("node {node} does not exist")));
    }
    let cpus = xlcfg::parse_cpu_list(spec, limit)
        .map_err(|e| DaemonError::Config(format!("Invalid argument \"{spec}\": {e}")))?;
    if cpus.is_empty() {
        return Err(DaemonError::Config(format!(
            "Invalid argument \"{spec}\": no CPU"
        )));
    }
    Ok(cpus)
}

/// Loads the pool definitions; a file that cannot be read is set aside (logged) so that
/// nothing overwrites it.
pub(super) fn open_pools(path: &std::path::Path, log: &Log) -> PoolTable {
    match PoolTable::load(path) {
        Ok(t) => t,
        Err(e) => {
            let aside = path.with_extension("json.unreadable");
            let _ = std::fs::rename(path, &aside);
            log.error(format!(
                "{e}; starting with Pool-0 alone (the file is kept as {})",
                aside.display()
            ));
            PoolTable::default()
        }
    }
}

/// Finds the cpuset controller (when cgroups are on); `None` (logged) when there is none.
pub(super) fn open_cpusets(name: Option<&str>, log: &Log) -> Option<Cpusets> {
    match Cpusets::detect(name?) {
        Ok(c) => {
            log.info(format!(
                "cpusets for CPU pools: {:?} at {}",
                c.version(),
                c.base().display()
            ));
            Some(c)
        }
        Err(e) => {
            log.warn(format!("CPU pools cannot confine domains: {e}"));
            None
        }
    }
}

impl Daemon {
    fn pools(&self) -> std::sync::MutexGuard<'_, PoolTable> {
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn store_pools(&self, t: &PoolTable) -> Result<(), DaemonError> {
        Ok(t.store(&self.paths.cpupools_file())?)
    }

    fn need_cpusets(&self) -> Result<&Cpusets, DaemonError> {
        self.cpusets.as_ref().ok_or_else(|| {
            DaemonError::Config(
                "CPU pools need the cgroup cpuset controller, which this rxend does not have (no cpuset mounted, or --no-cgroups)".into(),
            )
        })
    }

    /// The pool a domain config names (Pool-0 when none).
    pub(crate) fn config_pool(&self, config: &DomainConfig) -> Result<PoolView, DaemonError> {
        let host = host_cpus();
        let t = self.pools();
        match &config.pool {
            None => Ok(t.views(&host).swap_remove(0)),
            Some(name) => Ok(t.find(&host, name)?),
        }
    }

    /// A function giving the ID of the pool a config names (0 when it names none or an unknown
    /// one), from the pools as they are now; it holds no lock, so it may be used under the table.
    pub(super) fn pool_id_of(&self) -> impl Fn(&DomainConfig) -> u32 {
        let host = host_cpus();
        let t = self.pools().clone();
        move |c: &DomainConfig| match &c.pool {
            None => 0,
            Some(n) => t.find(&host, n).map_or(0, |v| v.id),
        }
    }

    /// Checks a new domain's pool and prepares its cpuset: the `cgroup.procs` its VMM joins.
    pub(super) fn prepare_pool(
        &self,
        domid: u32,
        config: &DomainConfig,
    ) -> Result<Option<File>, DaemonError> {
        let pool = self.config_pool(config)?;
        if pool.cpus.is_empty() {
            return Err(DaemonError::Config(format!(
                "cpupool '{}' has no CPUs: add some with cpupool-cpu-add",
                pool.name
            )));
        }
        let Some(cs) = &self.cpusets else {
            if pool.id != 0 {
                self.need_cpusets()?;
            }
            return Ok(None);
        };
        match cs.prepare(domid, &pool.cpus) {
            Ok(f) => Ok(Some(f)),
            Err(e) if pool.id == 0 => {
                self.log
                    .warn(format!("domain {domid}: no cpuset for Pool-0: {e}"));
                Ok(None)
            }
            Err(e) => Err(DaemonError::Config(format!(
                "cannot confine the domain to cpupool '{}': {e}",
                pool.name
            ))),
        }
    }

    /// Puts a running domain's VMM (every thread) in its pool's cpuset; returns its CPUs.
    pub(super) fn place_in_pool(&self, domid: u32, pid: i32, config: &DomainConfig) -> Vec<u32> {
        let pool = match self.config_pool(config) {
            Ok(p) => p,
            Err(e) => {
                self.log.warn(format!("domain {domid}: {e}"));
                return host_cpus();
            }
        };
        if let Some(cs) = &self.cpusets {
            if let Err(e) = cs.place(domid, pid, &pool.cpus) {
                self.log.warn(format!(
                    "domain {domid}: cannot confine it to cpupool '{}': {e}",
                    pool.name
                ));
            }
        }
        pool.cpus
    }

    /// Removes a domain's cpuset once its VMM is gone.
    pub(super) fn remove_cpuset(&self, domid: u32) {
        if let Some(cs) = &self.cpusets {
            if let Err(e) = cs.remove_domain(domid, Duration::from_secs(2)) {
                self.log
                    .warn(format!("domain {domid}: cannot remove its cpuset: {e}"));
            }
        }
    }

    /// Gives every running domain's cpuset its pool's CPUs now (after the pools changed).
    fn apply_pools(&self) {
        let Some(cs) = &self.cpusets else {
            return;
        };
        let running: Vec<(u32, DomainConfig)> = self
            .table()
            .domains
            .values()
            .filter(|e| matches!(e.rec.state, DomainState::Running { .. }))
            .map(|e| (e.rec.domid, e.rec.config.clone()))
            .collect();
        for (id, config) in running {
            match self.config_pool(&config) {
                Ok(p) => {
                    if let Err(e) = cs.set_cpus(id, &p.cpus) {
                        self.log.warn(format!(
                            "domain {id}: cannot give it cpupool '{}''s CPUs: {e}",
                            p.name
                        ));
                    }
                }
                Err(e) => self.log.warn(format!("domain {id}: {e}")),
            }
        }
    }

    /// The names of the domains in pool `id`.
    fn cpupool_domains(&self, t: &PoolTable, id: u32) -> Vec<String> {
        self.pool_domains_seen(t, id, None)
    }

    /// The names of the domains in pool `id` that `caller` may see (all without one).
    fn pool_domains_seen(&self, t: &PoolTable, id: u32, caller: Option<&Caller>) -> Vec<String> {
        let host = host_cpus();
        self.table()
            .domains
            .values()
            .filter(|e| caller.is_none_or(|c| c.may_manage(&e.rec)))
            .filter(|e| {
                let pid = match &e.rec.config.pool {
                    None => Some(0),
                    Some(n) => t.find(&host, n).ok().map(|v| v.id),
                };
                pid == Some(id)
            })
            .map(|e| e.rec.name.clone())
            .collect()
    }

    /// `rxl cpupool-list`: every pool with its CPUs and the number of domains in it that
    /// `caller` may see (Domain-0 for root).
    pub fn cpupool_list(&self, caller: &Caller) -> Vec<CpupoolInfo> {
        let host = host_cpus();
        let t = self.pools();
        t.views(&host)
            .into_iter()
            .map(|v| {
                let dom0 = u32::from(v.id == 0 && caller.is_root());
                CpupoolInfo {
                    domains: self.pool_domains_seen(&t, v.id, Some(caller)).len() as u32 + dom0,
                    id: v.id,
                    name: v.name,
                    sched: v.sched,
                    cpus: v.cpus,
                }
            })
            .collect()
    }

    /// `rxl cpupool-create`.
    pub fn cpupool_create(
        &self,
        caller: &Caller,
        name: &str,
        sched: Option<&str>,
        cpus: &[u32],
        dry_run: bool,
    ) -> Result<CpupoolCreated, DaemonError> {
        self.only_root(caller, "create CPU pools")?;
        self.need_cpusets()?;
        let host = host_cpus();
        let mut t = self.pools();
        let sched = sched.map_or_else(|| t.pool0_sched.clone(), str::to_string);
        let mut next = t.clone();
        let id = next.create(&host, name, &sched, cpus)?;
        let created = CpupoolCreated {
            name: name.to_string(),
            sched,
            cpus: cpus.len() as u32,
        };
        if dry_run {
            return Ok(created);
        }
        self.store_pools(&next)?;
        *t = next;
        drop(t);
        self.apply_pools();
        self.log.info(format!(
            "cpupool {id} ({name}) created with CPUs {} by {}",
            crate::cpuset::cpus_text(cpus),
            caller.describe()
        ));
        Ok(created)
    }

    /// `rxl cpupool-destroy`: refused while domains are in the pool.
    pub fn cpupool_destroy(&self, caller: &Caller, pool: &str) -> Result<(), DaemonError> {
        self.only_root(caller, "destroy CPU pools")?;
        let host = host_cpus();
        let mut t = self.pools();
        let view = t.find(&host, pool)?;
        if view.id == 0 {
            return Err(PoolError::Pool0(view.name).into());
        }
        let domains = self.cpupool_domains(&t, view.id);
        if !domains.is_empty() {
            return Err(PoolError::HasDomains {
                pool: view.name,
                domains: domains.join(", "),
            }
            .into());
        }
        let mut next = t.clone();
        next.destroy(view.id)?;
        self.store_pools(&next)?;
        *t = next;
        self.log.info(format!(
            "cpupool {} ({}) destroyed by {}",
            view.id,
            view.name,
            caller.describe()
        ));
        Ok(())
    }

    /// `rxl cpupool-rename`: the domains in it follow (their configs name the new name).
    pub fn cpupool_rename(
        &self,
        caller: &Caller,
        pool: &str,
        new_name: &str,
    ) -> Result<(), DaemonError> {
        self.only_root(caller, "rename CPU pools")?;
        let host = host_cpus();
        let mut t = self.pools();
        let view = t.find(&host, pool)?;
        let mut next = t.clone();
        next.rename(view.id, new_name)?;
        self.store_pools(&next)?;
        *t = next;
        drop(t);
        let recs: Vec<_> = {
            let mut tab = self.table();
            tab.domains
                .values_mut()
                .filter(|e| e.rec.config.pool.as_deref() == Some(view.name.as_str()))
                .map(|e| {
                    e.rec.config.pool = Some(new_name.to_string());
                    e.rec.clone()
                })
                .collect()
        };
        for rec in &recs {
            self.save(rec)?;
        }
        self.log.info(format!(
            "cpupool {} renamed from {} to {new_name} by {}",
            view.id,
            view.name,
            caller.describe()
        ));
        Ok(())
    }

    /// `rxl cpupool-cpu-add` (`add`) and `cpupool-cpu-remove`: the running domains of the pools
    /// concerned get their new CPUs at once.
    pub fn cpupool_cpus(
        &self,
        caller: &Caller,
        pool: &str,
        cpus: &str,
        add: bool,
    ) -> Result<(), DaemonError> {
        self.only_root(caller, "change CPU pools")?;
        self.need_cpusets()?;
        let host = host_cpus();
        let mut t = self.pools();
        let view = t.find(&host, pool)?;
        let list = parse_cpus(cpus, &host)?;
        let mut next = t.clone();
        if add {
            next.cpu_add(&host, view.id, &list)
        } else {
            let has_domains = view.id == 0 || !self.cpupool_domains(&t, view.id).is_empty();
            next.cpu_remove(&host, view.id, &list, has_domains)
        }
        .map_err(|e| {
            DaemonError::Config(if add {
                format!("some cpus may not have been added to {pool}: {e}")
            } else {
                format!("Some cpus may have not or only partially been removed from '{pool}': {e}")
            })
        })?;
        self.store_pools(&next)?;
        *t = next;
        drop(t);
        self.apply_pools();
        self.log.info(format!(
            "cpupool {} ({}): CPUs {} {} by {}",
            view.id,
            view.name,
            crate::cpuset::cpus_text(&list),
            if add { "added" } else { "removed" },
            caller.describe()
        ));
        Ok(())
    }

    /// `rxl cpupool-migrate`: moves a domain to another pool; a running one's threads follow
    /// at once (and lose any vcpu-pin, as Xen resets affinity on a pool move).
    pub fn cpupool_migrate(
        &self,
        caller: &Caller,
        domain: &str,
        pool: &str,
    ) -> Result<(), DaemonError> {
        self.only_root(caller, "move domains between CPU pools")?;
        let host = host_cpus();
        let view = self.pools().find(&host, pool)?;
        let id = {
            let t = self.table();
            self.resolve(&t, caller, domain).map_err(|e| match e {
                DaemonError::NoSuchDomain(_) => {
                    DaemonError::Config(format!("unknown domain '{domain}'"))
                }
                other => other,
            })?
        };
        if id == 0 {
            return Err(DaemonError::Config(
                "Domain-0 stays in Pool-0: it is the host".into(),
            ));
        }
        if view.cpus.is_empty() {
            return Err(DaemonError::Config(format!(
                "cpupool '{}' has no CPUs: add some with cpupool-cpu-add",
                view.name
            )));
        }
        if view.id != 0 {
            self.need_cpusets()?;
        }
        let (rec, running) = {
            let mut t = self.table();
            let e = t
                .domains
                .get_mut(&id)
                .ok_or_else(|| DaemonError::NoSuchDomain(domain.to_string()))?;
            e.rec.config.pool = (view.id != 0).then(|| view.name.clone());
            let running = matches!(e.rec.state, DomainState::Running { .. });
            (e.rec.clone(), running)
        };
        self.save(&rec)?;
        if let (true, Some(cs)) = (running, &self.cpusets) {
            cs.set_cpus(id, &view.cpus).map_err(|e| {
                DaemonError::Config(format!("cannot move its threads to the pool's CPUs: {e}"))
            })?;
            // As Xen resets a moved domain's hard affinity: every thread may use every CPU of
            // its new pool (a kernel that keeps the mask a pin asked for would keep old pins).
            if let DomainState::Running { pid, .. } = rec.state {
                let all = host_cpus();
                for t in crate::procfs::threads(pid, "") {
                    if let Err(e) = crate::sched::set_affinity(t.tid, &all) {
                        self.log.warn(format!("domain {id}: thread {}: {e}", t.tid));
                    }
                }
            }
        }
        self.log.info(format!(
            "domain {id} ({}) moved to cpupool {} ({}) by {}",
            rec.name,
            view.id,
            view.name,
            caller.describe()
        ));
        Ok(())
    }

    /// `rxl cpupool-numa-split`: Pool-0 becomes its first node's pool, each other node gets
    /// one; refused once other pools exist.
    pub fn cpupool_numa_split(&self, caller: &Caller) -> Result<(), DaemonError> {
        self.only_root(caller, "split CPU pools")?;
        self.need_cpusets()?;
        let host = host_cpus();
        let mut t = self.pools();
        if !t.pools.is_empty() {
            return Err(PoolError::AlreadySplit.into());
        }
        let nodes = numa_nodes(&host);
        let mut next = t.clone();
        let old = next.pool0_name.clone();
        // Pool-0 takes back its first node's free CPUs, and gives up the others' below.
        let first: Vec<u32> = nodes[0]
            .1
            .iter()
            .copied()
            .filter(|c| next.free.contains(c))
            .collect();
        next.cpu_add(&host, 0, &first)?;
        let pool0_name = format!("Pool-node{}", nodes[0].0);
        if pool0_name != old {
            next.rename(0, &pool0_name)?;
        }
        for (node, cpus) in &nodes[1..] {
            let sched = next.pool0_sched.clone();
            next.create(&host, &format!("Pool-node{node}"), &sched, cpus)?;
        }
        self.store_pools(&next)?;
        *t = next;
        drop(t);
        let recs: Vec<_> = {
            let mut tab = self.table();
            tab.domains
                .values_mut()
                .filter(|e| e.rec.config.pool.as_deref() == Some(old.as_str()))
                .map(|e| {
                    e.rec.config.pool = None;
                    e.rec.clone()
                })
                .collect()
        };
        for rec in &recs {
            self.save(rec)?;
        }
        self.apply_pools();
        self.log.info(format!(
            "cpupool-numa-split: {} node(s), by {}",
            nodes.len(),
            caller.describe()
        ));
        Ok(())
    }
}
