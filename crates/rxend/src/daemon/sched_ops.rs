//! The daemon's scheduling and accounting operations: credit weights and
//! caps on cgroups (`rxl sched-credit`), vCPU lists and pinning, and the
//! counters behind `rxl top` and the metrics listener.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rxen_proto::api::{Counters, DomainCounters, HostCounters, SchedEntry, VcpuInfo};
use rxen_proto::vmctl::{DiskStats, NicStats, VmRequest, VmResponse};
use xlcfg::DomainConfig;

use super::{state_string, vcpu_cpu_ns, Daemon, DaemonError, Table};
use crate::auth::Caller;
use crate::cgroup::Cgroups;
use crate::hostinfo;
use crate::log::Log;
use crate::procfs;
use crate::record::{DomainRecord, DomainState};
use crate::sched::{self, vcpu_threads};
use crate::vmm;

/// Domain-0's default credit weight: four times a guest's default (256), so
/// that the host's own work (rxend, device threads) wins under contention,
/// as Xen's tuning advice has it for dom0.
pub const DEFAULT_DOM0_WEIGHT: u32 = 1024;

/// Xen's weight limits.
const WEIGHT_RANGE: std::ops::RangeInclusive<u32> = 1..=65535;

/// How rxend sets up scheduling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedOptions {
    /// Name of rxend's top cgroup (`rxen`); `None` turns cgroups off.
    pub cgroup: Option<String>,
    /// Domain-0's credit weight.
    pub dom0_weight: u32,
}

impl Default for SchedOptions {
    fn default() -> Self {
        SchedOptions {
            cgroup: Some("rxen".into()),
            dom0_weight: DEFAULT_DOM0_WEIGHT,
        }
    }
}

/// Detects the cgroups and moves rxend into Domain-0's group; `None` (logged) when that fails.
pub(super) fn open_cgroups(opts: &SchedOptions, log: &Log) -> Option<Cgroups> {
    let name = opts.cgroup.as_ref()?;
    let mut cg = match Cgroups::detect(name) {
        Ok(cg) => cg,
        Err(e) => {
            log.warn(format!("weights and caps are not enforced: {e}"));
            return None;
        }
    };
    match cg.setup_dom0(opts.dom0_weight) {
        Ok(()) => {
            log.info(format!(
                "CPU cgroups: {:?} at {}, Domain-0 weight {}",
                cg.version(),
                cg.base().display(),
                opts.dom0_weight
            ));
            Some(cg)
        }
        Err(e) => {
            log.warn(format!("weights and caps are not enforced: {e}"));
            None
        }
    }
}

/// Whether a hard affinity is `all` (every host CPU: the pool's, within its cpuset).
fn hard_all(text: &str) -> bool {
    text.trim() == "all"
}

/// vCPU `v`'s soft affinity as xl prints it (`all` unless `rxl vcpu-pin` set one).
fn soft_text(rec: &DomainRecord, v: u32, host: u32) -> String {
    rec.soft_affinity
        .get(&v)
        .map_or_else(|| "all".into(), |c| sched::bitmap_text(c, host))
}

fn host_cpus() -> u32 {
    hostinfo::nr_cpus()
}

/// A running VMM's device counters; `None` when it does not answer.
fn device_stats(run_dir: &Path) -> Option<(Vec<DiskStats>, Vec<NicStats>)> {
    match vmm::request(run_dir, &VmRequest::Stats) {
        Ok(VmResponse::Stats(s)) => Some((s.disks, s.nics)),
        _ => None,
    }
}

/// Bytes sent and received by the guest over these NICs.
fn net_bytes(nics: &[NicStats]) -> (u64, u64) {
    nics.iter()
        .fold((0, 0), |(t, r), n| (t + n.tx_bytes, r + n.rx_bytes))
}

impl Daemon {
    /// The domain IDs `caller` may see among `refs` (all when empty), Domain-0 first for root.
    fn visible_ids(
        &self,
        t: &Table,
        caller: &Caller,
        refs: &[String],
    ) -> Result<Vec<u32>, DaemonError> {
        if refs.is_empty() {
            let mut v = Vec::new();
            if caller.is_root() {
                v.push(0);
            }
            v.extend(
                t.domains
                    .values()
                    .filter(|e| caller.may_manage(&e.rec))
                    .map(|e| e.rec.domid),
            );
            Ok(v)
        } else {
            refs.iter().map(|r| self.resolve(t, caller, r)).collect()
        }
    }

    /// Re-applies cgroups to every domain adopted at startup (pins stay on the threads).
    pub(super) fn adopt_sched(&self) {
        let running: Vec<(u32, i32, DomainConfig)> = self
            .table()
            .domains
            .values()
            .filter_map(|e| match e.rec.state {
                DomainState::Running { pid, .. } => Some((e.rec.domid, pid, e.rec.config.clone())),
                DomainState::Starting { .. } | DomainState::Shutdown { .. } => None,
            })
            .collect();
        for (id, pid, config) in running {
            for w in self.apply_sched(id, pid, &config, false) {
                self.log.warn(format!("domain {id}: {w}"));
            }
        }
    }

    /// Puts a domain's vCPU threads in its cgroup with its weight and cap,
    /// and (when `pin`) applies `cpus=`. Returns warnings for the user.
    pub(super) fn apply_sched(
        &self,
        domid: u32,
        pid: i32,
        config: &DomainConfig,
        pin: bool,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        let pool_cpus = self.place_in_pool(domid, pid, config);
        let threads = vcpu_threads(pid);
        if let Some(cg) = &self.cgroups {
            let tids: Vec<i32> = threads.iter().map(|t| t.thread.tid).collect();
            if let Err(e) = cg.place_domain(domid, pid, &tids, config.cpu_weight, config.cap) {
                warnings.push(format!("cpu_weight and cap are not enforced: {e}"));
            }
        } else if config.cpu_weight != 256 || config.cap != 0 {
            warnings
                .push("cpu_weight and cap are not enforced: no CPU cgroups on this host".into());
        }
        warnings.extend(self.apply_io(domid, pid, config.cpu_weight));
        if let (true, Some(aff)) = (pin, &config.cpus) {
            let host = host_cpus();
            for t in &threads {
                let Some(cpus) = sched::config_cpus(aff, t.index, host) else {
                    continue;
                };
                // Hard affinity stays within the domain's CPU pool.
                let cpus: Vec<u32> = cpus
                    .into_iter()
                    .filter(|&c| c < host && pool_cpus.contains(&c))
                    .collect();
                if cpus.is_empty() {
                    warnings.push(format!(
                        "cpus: vCPU {}: none of its CPUs is in its cpupool ({}); it runs on the pool's CPUs",
                        t.index,
                        crate::cpuset::cpus_text(&pool_cpus)
                    ));
                    continue;
                }
                if let Err(e) = sched::set_affinity(t.thread.tid, &cpus) {
                    warnings.push(format!("cpus: vCPU {}: {e}", t.index));
                }
            }
        }
        for w in &warnings {
            self.log.warn(format!("domain {domid}: {w}"));
        }
        warnings
    }

    /// rxend is stopping (SIGTERM, SIGINT): domains keep running and are adopted at the next
    /// start; rxend leaves Domain-0's cgroup and removes it when nothing else is in it.
    pub fn stop(&self, signal: &str) {
        self.log.info(format!(
            "rxend stopping on {signal}; running domains keep running and are adopted at the next start"
        ));
        self.pool_stop();
        if let Some(cg) = &self.cgroups {
            match cg.leave_dom0() {
                Ok(true) => self.log.info("removed Domain-0's cgroup".to_string()),
                Ok(false) => {}
                Err(e) => self
                    .log
                    .warn(format!("cannot leave Domain-0's cgroup: {e}")),
            }
        }
    }

    /// Removes a domain's cgroup once its VMM is gone.
    pub(super) fn remove_sched(&self, domid: u32) {
        self.remove_cpuset(domid);
        self.remove_io(domid);
        if let Some(cg) = &self.cgroups {
            if let Err(e) = cg.remove_domain(domid, Duration::from_secs(2)) {
                self.log
                    .warn(format!("domain {domid}: cannot remove its cgroup: {e}"));
            }
        }
    }

    /// `rxl sched-credit`: reads, or (with `weight`/`cap`) changes, credit parameters.
    pub fn sched_credit(
        &self,
        caller: &Caller,
        domain: Option<&str>,
        weight: Option<u32>,
        cap: Option<u32>,
    ) -> Result<Vec<SchedEntry>, DaemonError> {
        let changing = weight.is_some() || cap.is_some();
        if changing && !caller.is_root() {
            return Err(DaemonError::Denied(
                "only root may change scheduling parameters".into(),
            ));
        }
        if let Some(w) = weight {
            if !WEIGHT_RANGE.contains(&w) {
                return Err(DaemonError::Config(format!(
                    "weight {w} is out of range (1-65535)"
                )));
            }
        }
        if let Some(c) = cap {
            let max = 100 * host_cpus();
            if c > max {
                return Err(DaemonError::Config(format!(
                    "cap {c} is out of range (0-{max}: 100 per host CPU)"
                )));
            }
        }
        let refs: Vec<String> = domain.map(|d| vec![d.to_string()]).unwrap_or_default();
        if changing && refs.is_empty() {
            return Err(DaemonError::Config("Must specify a domain.".into()));
        }
        let ids = {
            let t = self.table();
            self.visible_ids(&t, caller, &refs)?
        };
        if changing {
            if let Some(&id) = ids.first() {
                self.set_credit(id, weight, cap)?;
            }
        }
        let pool_of = self.pool_id_of();
        let t = self.table();
        Ok(ids
            .into_iter()
            .filter_map(|id| {
                if id == 0 {
                    return Some(SchedEntry {
                        name: "Domain-0".into(),
                        domid: 0,
                        weight: self.dom0_weight.load(Ordering::Relaxed),
                        cap: 0,
                        pool: 0,
                        io: None,
                    });
                }
                t.domains.get(&id).map(|e| SchedEntry {
                    name: e.rec.name.clone(),
                    domid: id,
                    weight: e.rec.config.cpu_weight,
                    cap: e.rec.config.cap,
                    pool: pool_of(&e.rec.config),
                    io: match e.rec.state {
                        DomainState::Running { pid, .. } => Some(self.io_info(id, pid)),
                        _ => None,
                    },
                })
            })
            .collect())
    }

    fn set_credit(
        &self,
        id: u32,
        weight: Option<u32>,
        cap: Option<u32>,
    ) -> Result<(), DaemonError> {
        let cg_err = |e: crate::cgroup::CgroupError| DaemonError::Config(e.to_string());
        if id == 0 {
            if cap.is_some_and(|c| c > 0) {
                return Err(DaemonError::Dom0("capped"));
            }
            if let Some(w) = weight {
                if let Some(cg) = &self.cgroups {
                    cg.set_weight(0, w).map_err(cg_err)?;
                }
                self.dom0_weight.store(w, Ordering::Relaxed);
                self.log.info(format!("Domain-0 weight set to {w}"));
            }
            return Ok(());
        }
        let (rec, running) = {
            let mut t = self.table();
            let Some(e) = t.domains.get_mut(&id) else {
                return Err(DaemonError::NoSuchDomain(id.to_string()));
            };
            if let Some(w) = weight {
                e.rec.config.cpu_weight = w;
            }
            if let Some(c) = cap {
                e.rec.config.cap = c;
            }
            let running = match e.rec.state {
                DomainState::Running { pid, .. } if e.busy.is_none() => Some(pid),
                _ => None,
            };
            (e.rec.clone(), running)
        };
        self.save(&rec)?;
        if let Some(pid) = running {
            if let Some(cg) = &self.cgroups {
                cg.set_weight(id, rec.config.cpu_weight).map_err(cg_err)?;
                cg.set_cap(id, rec.config.cap).map_err(cg_err)?;
            }
            if weight.is_some() {
                for w in self.apply_io(id, pid, rec.config.cpu_weight) {
                    self.log.warn(format!("domain {id}: {w}"));
                }
            }
        }
        self.log.info(format!(
            "domain {id} ({}): weight {}, cap {}",
            rec.name, rec.config.cpu_weight, rec.config.cap
        ));
        Ok(())
    }

    /// `rxl vcpu-list`: one entry per vCPU of each domain.
    pub fn vcpu_list(
        &self,
        caller: &Caller,
        refs: &[String],
    ) -> Result<Vec<VcpuInfo>, DaemonError> {
        let t = self.table();
        let ids = self.visible_ids(&t, caller, refs)?;
        let host = host_cpus();
        let ticks = procfs::clock_ticks().max(1);
        let mut out = Vec::new();
        for id in ids {
            if id == 0 {
                for (i, ns) in hostinfo::per_cpu_busy_ns().into_iter().enumerate() {
                    out.push(VcpuInfo {
                        name: "Domain-0".into(),
                        domid: 0,
                        vcpu: i as u32,
                        cpu: Some(i as u32),
                        online: true,
                        running: true,
                        blocked: false,
                        time_s: ns as f64 / 1e9,
                        hard: "all".into(),
                        soft: "all".into(),
                    });
                }
                continue;
            }
            let Some(e) = t.domains.get(&id) else {
                continue;
            };
            let DomainState::Running { pid, paused, .. } = e.rec.state else {
                continue;
            };
            let threads = vcpu_threads(pid);
            let online_n = e.rec.online_vcpus.unwrap_or(e.rec.config.vcpus);
            for th in threads.iter().filter(|t| t.index < online_n) {
                let st = th.thread.stat;
                let hard = sched::affinity(th.thread.tid)
                    .map(|c| sched::bitmap_text(&c, host))
                    .unwrap_or_else(|_| "-".into());
                out.push(VcpuInfo {
                    name: e.rec.name.clone(),
                    domid: id,
                    vcpu: th.index,
                    cpu: Some(st.processor),
                    online: true,
                    running: !paused && st.state == 'R',
                    blocked: !paused && st.state != 'R',
                    time_s: ((st.utime + st.stime) * 1_000_000_000 / ticks) as f64 / 1e9,
                    hard,
                    soft: soft_text(&e.rec, th.index, host),
                });
            }
            // vCPUs up to maxvcpus that are not online.
            let online = online_n.min(threads.len() as u32);
            for v in online..e.rec.config.maxvcpus.max(online) {
                let hard = e
                    .rec
                    .config
                    .cpus
                    .as_ref()
                    .and_then(|a| sched::config_cpus(a, v, host))
                    .map_or_else(|| "all".to_string(), |c| sched::bitmap_text(&c, host));
                out.push(VcpuInfo {
                    name: e.rec.name.clone(),
                    domid: id,
                    vcpu: v,
                    cpu: None,
                    online: false,
                    running: false,
                    blocked: false,
                    time_s: 0.0,
                    hard,
                    soft: soft_text(&e.rec, v, host),
                });
            }
        }
        Ok(out)
    }

    /// `rxl vcpu-set`: asks the guest to have `count` vCPUs online (1..=maxvcpus).
    pub fn vcpu_set(&self, caller: &Caller, domain: &str, count: u32) -> Result<(), DaemonError> {
        if !caller.is_root() {
            return Err(DaemonError::Denied("only root may change vCPUs".into()));
        }
        let (id, dir) = self.running_guest(caller, domain, "given vCPUs")?;
        let max = {
            let t = self.table();
            t.domains
                .get(&id)
                .map(|e| e.rec.config.maxvcpus.max(e.rec.config.vcpus))
                .unwrap_or(0)
        };
        if count == 0 || count > max {
            return Err(DaemonError::Config(format!(
                "cannot set {count} vCPUs: domain {domain} has 1 to {max} (maxvcpus)"
            )));
        }
        vmm::command(&dir, &VmRequest::SetVcpus { online: count })?;
        let rec = {
            let mut t = self.table();
            let Some(e) = t.domains.get_mut(&id) else {
                return Err(DaemonError::NoSuchDomain(domain.to_string()));
            };
            e.rec.online_vcpus = Some(count);
            e.rec.clone()
        };
        self.save(&rec)?;
        self.log.info(format!(
            "domain {id} ({}): {count} vCPUs online, set by {}",
            rec.name,
            caller.describe()
        ));
        Ok(())
    }

    /// `rxl vcpu-pin`: sets the hard affinity of one vCPU thread, or of all, and records their
    /// soft affinity (`-` or `None`: unchanged).
    pub fn vcpu_pin(
        &self,
        caller: &Caller,
        domain: &str,
        vcpu: &str,
        hard: &str,
        soft: Option<&str>,
    ) -> Result<(), DaemonError> {
        let (id, _) = self.running_guest(caller, domain, "pinned")?;
        let host = host_cpus();
        let parse = |list: &str| {
            xlcfg::parse_cpu_list(list, host)
                .map_err(|e| DaemonError::Config(format!("invalid CPU list \"{list}\": {e}")))
        };
        let soft = soft.filter(|s| *s != "-").map(parse).transpose()?;
        let hard_text = hard;
        let hard = (hard != "-").then(|| parse(hard)).transpose()?;
        let (pid, maxvcpus) = {
            let t = self.table();
            match t.domains.get(&id).map(|e| (&e.rec.state, &e.rec.config)) {
                Some((DomainState::Running { pid, .. }, c)) => (*pid, c.maxvcpus.max(c.vcpus)),
                _ => return Err(DaemonError::NotRunning(domain.to_string())),
            }
        };
        // Hard affinity stays within the domain's CPU pool: CPUs outside it are refused (the
        // cpuset would not let the threads run there). `all` is every host CPU, as in Xen: the
        // threads run on all of the pool's CPUs, whichever pool that is later.
        let pool = {
            let t = self.table();
            let config = t.domains.get(&id).map(|e| e.rec.config.clone());
            drop(t);
            match config {
                Some(c) => self.config_pool(&c)?,
                None => return Err(DaemonError::NoSuchDomain(domain.to_string())),
            }
        };
        let outside: Vec<u32> = hard
            .iter()
            .flatten()
            .copied()
            .filter(|c| !hard_all(hard_text) && !pool.cpus.contains(c))
            .collect();
        if !outside.is_empty() {
            return Err(DaemonError::Config(format!(
                "CPU {} outside cpupool '{}' (CPUs {}) of domain {domain}: hard affinity must be within the domain's pool",
                crate::cpuset::cpus_text(&outside),
                pool.name,
                crate::cpuset::cpus_text(&pool.cpus)
            )));
        }
        if let Some(soft) = soft {
            let which: Vec<u32> = if vcpu == "all" {
                (0..maxvcpus).collect()
            } else {
                match vcpu.parse::<u32>() {
                    Ok(n) if n < maxvcpus => vec![n],
                    _ => {
                        return Err(DaemonError::Config(format!(
                            "vcpu {vcpu} of domain {domain} does not exist"
                        )))
                    }
                }
            };
            let all: Vec<u32> = (0..host).collect();
            let rec = {
                let mut t = self.table();
                let Some(e) = t.domains.get_mut(&id) else {
                    return Err(DaemonError::NoSuchDomain(domain.to_string()));
                };
                for v in which {
                    if soft == all {
                        e.rec.soft_affinity.remove(&v);
                    } else {
                        e.rec.soft_affinity.insert(v, soft.clone());
                    }
                }
                e.rec.clone()
            };
            self.save(&rec)?;
            self.log.info(format!(
                "domain {id}: vcpu {vcpu} soft affinity {} (recorded: Linux has no preferred CPUs) by {}",
                sched::bitmap_text(&soft, host),
                caller.describe()
            ));
        }
        let Some(cpus) = hard else {
            return Ok(());
        };
        let threads = vcpu_threads(pid);
        let chosen: Vec<_> = if vcpu == "all" {
            threads.iter().collect()
        } else {
            let n: u32 = vcpu
                .parse()
                .map_err(|_| DaemonError::Config(format!("invalid vcpu \"{vcpu}\"")))?;
            let found: Vec<_> = threads.iter().filter(|t| t.index == n).collect();
            if found.is_empty() {
                return Err(DaemonError::Config(format!(
                    "vcpu {n} of domain {domain} is not online"
                )));
            }
            found
        };
        for t in chosen {
            sched::set_affinity(t.thread.tid, &cpus)
                .map_err(|e| DaemonError::Config(format!("vcpu {}: {e}", t.index)))?;
        }
        self.log.info(format!(
            "domain {id}: vcpu {vcpu} pinned to {} by {}",
            sched::bitmap_text(&cpus, host),
            caller.describe()
        ));
        Ok(())
    }

    /// Samples the network counters of the records about to be saved (their
    /// VMMs run), so that the bytes survive an rxend restart with the CPU time.
    pub(super) fn account_devices(&self, recs: &mut [DomainRecord]) {
        for rec in recs {
            let Some((_, nics)) = device_stats(&self.paths.run_dir(rec.domid)) else {
                continue;
            };
            let (tx, rx) = net_bytes(&nics);
            rec.vmm_net_tx_bytes = tx;
            rec.vmm_net_rx_bytes = rx;
            if let Some(e) = self.table().domains.get_mut(&rec.domid) {
                e.rec.vmm_net_tx_bytes = tx;
                e.rec.vmm_net_rx_bytes = rx;
            }
        }
    }

    /// Every counter: host figures and one entry per visible domain, Domain-0 first.
    pub fn counters(&self, caller: &Caller) -> Counters {
        // Ask the running VMMs for their device counters without holding the table.
        let running: Vec<u32> = {
            let t = self.table();
            self.visible_ids(&t, caller, &[])
                .unwrap_or_default()
                .into_iter()
                .filter(|id| {
                    t.domains.get(id).is_some_and(|e| {
                        e.busy.is_none() && matches!(e.rec.state, DomainState::Running { .. })
                    })
                })
                .collect()
        };
        let mut devices: HashMap<u32, (Vec<DiskStats>, Vec<NicStats>)> = HashMap::new();
        for id in running {
            if let Some(d) = device_stats(&self.paths.run_dir(id)) {
                devices.insert(id, d);
            }
        }
        let mem = hostinfo::memory();
        let nr_cpus = host_cpus();
        let host = HostCounters {
            total_kib: mem.total_kib,
            free_kib: mem.free_kib,
            nr_cpus,
            cpu_mhz: hostinfo::cpu_mhz(),
        };
        let mut t = self.table();
        let ids = self.visible_ids(&t, caller, &[]).unwrap_or_default();
        let ticks = procfs::clock_ticks().max(1);
        let mut domains = Vec::new();
        for id in ids {
            if id == 0 {
                domains.push(DomainCounters {
                    domid: 0,
                    name: "Domain-0".into(),
                    state: "r-----".into(),
                    cpu_ns: (hostinfo::busy_seconds() * 1e9) as u64,
                    mem_kib: mem.total_kib.saturating_sub(mem.free_kib),
                    maxmem_kib: None,
                    vcpus: nr_cpus,
                    vcpu_ns: hostinfo::per_cpu_busy_ns(),
                    weight: self.dom0_weight.load(Ordering::Relaxed),
                    cap: 0,
                    nets: 0,
                    net_tx_bytes: 0,
                    net_rx_bytes: 0,
                    vbds: 0,
                    vbd_oo: 0,
                    vbd_rd: 0,
                    vbd_wr: 0,
                    vbd_rsect: 0,
                    vbd_wsect: 0,
                    nics: Vec::new(),
                    disks: Vec::new(),
                });
                continue;
            }
            let Some(e) = t.domains.get_mut(&id) else {
                continue;
            };
            let (disks, nics) = devices.remove(&id).unwrap_or_default();
            if !nics.is_empty() {
                let (tx, rx) = net_bytes(&nics);
                e.rec.vmm_net_tx_bytes = tx;
                e.rec.vmm_net_rx_bytes = rx;
            }
            let (live, vcpu_ns, vcpus) = match e.rec.state {
                DomainState::Running { pid, .. } if e.busy.is_none() => {
                    let threads = vcpu_threads(pid);
                    let ns: Vec<u64> = threads
                        .iter()
                        .map(|t| {
                            (t.thread.stat.utime + t.thread.stat.stime) * 1_000_000_000 / ticks
                        })
                        .collect();
                    let online = e.rec.online_vcpus.unwrap_or(e.rec.config.vcpus);
                    (
                        vcpu_cpu_ns(pid, ticks),
                        ns,
                        online.min(threads.len() as u32),
                    )
                }
                // As `rxl list` (and xentop) show it: a stopped domain keeps its vCPUs.
                _ => (
                    e.live_cpu_ns,
                    Vec::new(),
                    e.rec.online_vcpus.unwrap_or(e.rec.config.vcpus),
                ),
            };
            let c = &e.rec.config;
            domains.push(DomainCounters {
                domid: id,
                name: e.rec.name.clone(),
                state: state_string(e),
                cpu_ns: e.rec.cpu_time_ns + live,
                mem_kib: e.rec.current_mib() * 1024,
                maxmem_kib: Some(e.rec.max_mib() * 1024),
                vcpus,
                vcpu_ns,
                weight: c.cpu_weight,
                cap: c.cap,
                nets: nics.len() as u32,
                net_tx_bytes: e.rec.net_tx_bytes + e.rec.vmm_net_tx_bytes,
                net_rx_bytes: e.rec.net_rx_bytes + e.rec.vmm_net_rx_bytes,
                vbds: disks.len() as u32,
                vbd_oo: 0,
                vbd_rd: disks.iter().map(|d| d.read_reqs).sum(),
                vbd_wr: disks.iter().map(|d| d.write_reqs).sum(),
                vbd_rsect: disks.iter().map(|d| d.read_sectors).sum(),
                vbd_wsect: disks.iter().map(|d| d.write_sectors).sum(),
                nics,
                disks,
            });
        }
        Counters { host, domains }
    }
}
