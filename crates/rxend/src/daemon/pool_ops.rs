//! The daemon's side of pools: joining one, what the keeper publishes of the domain table and
//! the host's memory, and the pool requests of clients (`rxl host-list`, `rxl list --pool`,
//! `rxl host-disable`/`host-enable`), and what HA and fencing ask of the daemon (restarting a
//! domain of a dead host here, destroying a fenced one, giving leadership up when stopping).

use std::sync::Arc;

use rxen_proto::api::{PoolDomain, PoolHost};

use super::{Busy, Daemon, DaemonError};
use crate::auth::Caller;
use crate::pool::schema::{DomainRecord as PoolRecord, DomainState as PoolState};
use crate::pool::{fence, keeper, Pool};
use crate::record::DomainState;

impl Daemon {
    /// Joins `pool`: starts its keeper thread, which registers this host and publishes its
    /// domains. Once only; later calls are ignored.
    pub fn join_pool(self: &Arc<Self>, pool: Pool) {
        let pool = Arc::new(pool);
        if self.pool.set(Arc::clone(&pool)).is_err() {
            return;
        }
        self.log.info(format!(
            "joining pool {} as host {} (etcd lease {} s)",
            pool.name,
            pool.host,
            pool_ttl_text(&pool)
        ));
        pool.fence.load(self.paths.state_dir.join("pool-lease"));
        let daemon = Arc::clone(self);
        let fenced = Arc::clone(&pool);
        std::thread::spawn(move || keeper::run(pool, daemon));
        let daemon = Arc::clone(self);
        std::thread::spawn(move || fence::run(fenced, daemon));
    }

    /// rxend is stopping: gives the pool's leadership up, if this host holds it, so that
    /// another host leads at once (the lease is left to run: the domains run on).
    pub fn pool_stop(&self) {
        let Some(pool) = self.pool.get() else {
            return;
        };
        match pool.resign() {
            Ok(true) => self
                .log
                .info(format!("pool {}: gave the pool's leadership up", pool.name)),
            Ok(false) => {}
            Err(e) => self.log.warn(format!(
                "cannot give the pool's leadership up ({e}); it passes when the lease ends"
            )),
        }
    }

    /// HA: starts a domain of a dead host here, from its recorded configuration (the normal
    /// create path: the name is claimed in the pool, memory admitted); its ID.
    pub fn pool_restart(
        &self,
        config: xlcfg::DomainConfig,
        config_path: Option<String>,
    ) -> Result<u32, DaemonError> {
        Ok(self.start(config, config_path, false)?.domid)
    }

    /// Fencing: gives the VMM of `ha = 1` domain `name` (just started) the deadline of the
    /// host's last renewal, so that it never runs unguarded until the next.
    pub(super) fn pool_arm_fence(&self, name: &str, run_dir: &std::path::Path) {
        let Some(pool) = self.pool.get() else {
            return;
        };
        // Under the arming lock: a renewal between reading the deadline and sending it would
        // otherwise send the newer deadline first, and this older one would replace it.
        let _arming = pool.fence.arming();
        if let Err(e) = fence_request(run_dir, pool.fence.vmm_deadline_now(pool.ttl())) {
            self.log.warn(format!(
                "domain {name}: cannot give its VMM a fence deadline: {e}"
            ));
        }
    }

    /// Fencing: gives the VMM of every running `ha = 1` domain the deadline of the lease's
    /// last renewal ([`fence::vmm_deadline`]), past which it destroys its domain itself (sent
    /// at every renewal of the lease).
    pub fn pool_arm_fences(&self) {
        let Some(pool) = self.pool.get() else {
            return;
        };
        // Deadlines are read and sent under one lock, so that they reach each VMM in the order
        // of the renewals they come from (see `pool_arm_fence`).
        let _arming = pool.fence.arming();
        let dirs: Vec<(String, std::path::PathBuf)> = self
            .table()
            .domains
            .values()
            .filter(|e| {
                // A VMM busy saving or migrating answers only when done: its deadline is not
                // renewed meanwhile (if that outlasts it and the domain stays, it is fenced,
                // and restarted here at the next renewal when nobody moved it).
                e.rec.config.ha
                    && matches!(e.rec.state, DomainState::Running { .. })
                    && e.busy.is_none()
            })
            .map(|e| (e.rec.name.clone(), self.paths.run_dir(e.rec.domid)))
            .collect();
        for (name, dir) in dirs {
            // Read for each: the deadline is relative, and the requests before took time.
            if let Err(e) = fence_request(&dir, pool.fence.vmm_deadline_now(pool.ttl())) {
                self.log.warn(format!(
                    "domain {name}: cannot renew its VMM's fence deadline: {e}"
                ));
            }
        }
    }

    /// Fencing: the VMM of domain `id` destroyed it itself, its deadline passed (rxend was
    /// down, or too late renewing): the pool's keeper restarts it here once the lease is
    /// renewed, should nobody have moved it meanwhile.
    pub(super) fn pool_vmm_fenced(&self, id: u32) {
        let Some(pool) = self.pool.get() else {
            return;
        };
        let name = self.name_of(id);
        self.log.warn(format!(
            "pool {}: the VMM of ha domain {name} destroyed it: its fence deadline passed",
            pool.name
        ));
        pool.fence.mark(&name, "its VMM's fence deadline passed");
        pool.nudge();
    }

    /// Fencing and HA: destroys domain `name` at once (`why` names who asked, for the log).
    pub fn pool_destroy(&self, name: &str, why: &str) -> Result<(), DaemonError> {
        let caller = Caller {
            uid: 0,
            user: Some(format!("rxend ({why})")),
        };
        self.destroy(&caller, name)
    }

    fn pool_or_err(&self, caller: &Caller, what: &str) -> Result<&Arc<Pool>, DaemonError> {
        self.only_root(caller, what)?;
        self.pool.get().ok_or(DaemonError::NoPool)
    }

    /// This host's domains as the pool records them.
    pub fn pool_domains(&self, host: &str) -> Vec<PoolRecord> {
        let t = self.table();
        t.domains
            .values()
            .map(|e| {
                let state = match (e.busy, &e.rec.state) {
                    (Some(Busy::Saving | Busy::Migrating), _) => PoolState::Transferring,
                    (Some(Busy::Starting), _) | (_, DomainState::Starting { .. }) => {
                        PoolState::Starting
                    }
                    (_, DomainState::Running { paused: true, .. }) => PoolState::Paused,
                    (_, DomainState::Running { .. }) => PoolState::Running,
                    (_, DomainState::Shutdown { .. }) => PoolState::Shutdown,
                };
                let cpu_ns = e.rec.cpu_time_ns.saturating_add(e.live_cpu_ns);
                PoolRecord {
                    name: e.rec.name.clone(),
                    host: host.to_string(),
                    domid: e.rec.domid,
                    uuid: e.rec.uuid.clone(),
                    memory_mib: e.rec.current_mib(),
                    vcpus: e.rec.online_vcpus.unwrap_or(e.rec.config.vcpus),
                    state,
                    // Tenths of a second: finer would rewrite every key at every refresh for
                    // nothing anyone reads.
                    cpu_time_s: (cpu_ns / 100_000_000) as f64 / 10.0,
                    config_path: e.rec.config_path.clone(),
                    config: e.rec.config.clone(),
                }
            })
            .collect()
    }

    /// Memory domains may still be given and may be given in all, MiB (the admission rule of
    /// `[host] memory-overcommit-percent`).
    pub fn pool_memory(&self) -> (u64, u64) {
        let host = crate::hostinfo::memory().total_kib / 1024;
        let percent = self
            .memory_percent
            .load(std::sync::atomic::Ordering::Relaxed);
        let allowed = host.saturating_mul(u64::from(percent)) / 100;
        let held: u64 = self
            .table()
            .domains
            .values()
            .map(|e| crate::record::ram_mib(&e.rec.config))
            .sum();
        (allowed.saturating_sub(held), allowed)
    }

    /// `rxl host-list`: the pool's name and hosts.
    pub fn pool_hosts(&self, caller: &Caller) -> Result<(String, Vec<PoolHost>), DaemonError> {
        let pool = self.pool_or_err(caller, "list the pool's hosts")?;
        Ok((pool.name.clone(), pool.hosts()?))
    }

    /// `rxl list --pool`: the pool's name and every domain in it.
    pub fn pool_domain_list(
        &self,
        caller: &Caller,
    ) -> Result<(String, Vec<PoolDomain>), DaemonError> {
        let pool = self.pool_or_err(caller, "list the pool's domains")?;
        Ok((pool.name.clone(), pool.domains()?))
    }

    /// `rxl host-disable` / `host-enable`.
    pub fn pool_host_enable(
        &self,
        caller: &Caller,
        host: &str,
        enabled: bool,
    ) -> Result<(), DaemonError> {
        let pool = self.pool_or_err(caller, "disable or enable hosts")?;
        pool.set_enabled(host, enabled)?;
        self.log.info(format!(
            "pool {}: host {host} {} by {}",
            pool.name,
            if enabled { "enabled" } else { "disabled" },
            caller.describe()
        ));
        Ok(())
    }
}

/// How long the keeper waits for a VMM to take its fence deadline: a hung VMM must not hold
/// up the renewals.
const FENCE_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends a VMM its fence deadline, `ms` from now.
fn fence_request(run_dir: &std::path::Path, ms: u64) -> Result<(), crate::vmm::VmmError> {
    let req = rxen_proto::vmctl::VmRequest::FenceDeadline { ms };
    match crate::vmm::request_with_fds(run_dir, &req, &[], FENCE_REQUEST_TIMEOUT)? {
        rxen_proto::vmctl::VmResponse::Error { message } => {
            Err(crate::vmm::VmmError::Control(message))
        }
        _ => Ok(()),
    }
}

fn pool_ttl_text(pool: &Pool) -> String {
    format!("{:.0}", pool.interval().as_secs_f64() * 3.0)
}
