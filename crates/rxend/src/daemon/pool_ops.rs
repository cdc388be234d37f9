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

fn pool_ttl_text(pool: &Pool) -> String {
    format!("{:.0}", pool.interval().as_secs_f64() * 3.0)
}
