//! The daemon's side of placement: `rxl create --pool`, `rxl restore --pool` and the steps of
//! `rxl host-evacuate` (one domain moved off a host at a time; rxl runs several at once).

use std::path::Path;
use std::sync::Arc;

use rxen_proto::api::ConfigText;
use xlcfg::DomainConfig;

use super::{Daemon, DaemonError};
use crate::auth::Caller;
use crate::migration::MigrateOptions;
use crate::pool::placement::Need;
use crate::pool::remote::{self, CreateSpec, Placed};
use crate::pool::{Pool, PoolError};
use crate::record::DomainState;

/// Pre-copy rounds and downtime target of an evacuation's migrations (`rxl migrate`'s
/// defaults).
const EVACUATE_MAX_ROUNDS: u32 = 30;
const EVACUATE_DOWNTIME_MS: u64 = 20;
/// Hosts an evacuation step tries before it reports the domain as not moved.
const EVACUATE_TRIES: usize = 3;

/// What placement needs to know of a domain of `config`.
fn need_of(config: &DomainConfig) -> Need {
    Need {
        name: config.name.clone(),
        memory_mib: crate::record::ram_mib(config),
        pool_host: config.pool_host.clone(),
        anti_affinity: config.pool_anti_affinity.clone(),
        exclude: Vec::new(),
    }
}

impl Daemon {
    /// This host's pool, if it is in one.
    pub fn pool_handle(&self) -> Option<&Arc<Pool>> {
        self.pool.get()
    }

    fn placing_pool(&self, caller: &Caller, what: &str) -> Result<&Arc<Pool>, DaemonError> {
        self.only_root(caller, what)?;
        self.pool.get().ok_or(DaemonError::NoPool)
    }

    /// `rxl create --pool`: creates the domain on the host placement chooses.
    pub fn pool_create(&self, caller: &Caller, spec: &CreateSpec) -> Result<Placed, DaemonError> {
        let pool = self.placing_pool(caller, "create domains in the pool")?;
        let parsed = xlcfg::parse(&spec.text, &spec.path, &spec.overrides)
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        let need = need_of(&parsed.config);
        let (host, _promise) = pool.place(&need)?;
        let placed = remote::create_on(pool, self, &host, spec)?;
        self.log.info(format!(
            "pool {}: domain {} created on host {host} for {}",
            pool.name,
            placed.name,
            caller.describe()
        ));
        Ok(placed)
    }

    /// `rxl restore --pool`: restores the domain on the host placement chooses (the save file
    /// must be where that host sees it too).
    pub fn pool_restore(
        &self,
        caller: &Caller,
        path: &str,
        config: Option<&ConfigText>,
        paused: bool,
    ) -> Result<Placed, DaemonError> {
        let pool = self.placing_pool(caller, "restore domains in the pool")?;
        let domain_config = match config {
            Some(c) => {
                xlcfg::parse(&c.text, &c.path, &[])
                    .map_err(|e| DaemonError::Config(e.to_string()))?
                    .config
            }
            None => {
                let inside = crate::migration::ops::config_of_save_file(Path::new(path))?;
                serde_json::from_value::<DomainConfig>(inside.config).map_err(|e| {
                    DaemonError::Config(format!("{path}: the config inside is unusable: {e}"))
                })?
            }
        };
        let need = need_of(&domain_config);
        let (host, _promise) = pool.place(&need)?;
        let placed = remote::restore_on(pool, self, &host, path, config, paused)?;
        self.log.info(format!(
            "pool {}: domain {} restored on host {host} from {path} for {}",
            pool.name,
            placed.name,
            caller.describe()
        ));
        Ok(placed)
    }

    /// A step of `rxl host-evacuate HOST`: live-migrates `domain` off `host` to the host
    /// placement chooses (never `host`); the host it went to. Asked of another host, passed
    /// on to `host`'s rxend, which drives the migration.
    pub fn pool_evacuate(
        &self,
        caller: &Caller,
        host: &str,
        domain: &str,
    ) -> Result<String, DaemonError> {
        let pool = self.placing_pool(caller, "evacuate hosts of the pool")?;
        if host == pool.host {
            return self.evacuate_here(caller, domain);
        }
        Ok(remote::evacuate_on(pool, self, host, domain)?)
    }

    /// Live-migrates this host's domain `domain` to the host placement chooses among the
    /// others; the host it went to. When a migration fails (the domain runs on here), the
    /// next host placement chooses is tried, up to [`EVACUATE_TRIES`] hosts.
    pub fn evacuate_here(&self, caller: &Caller, domain: &str) -> Result<String, DaemonError> {
        let pool = self.placing_pool(caller, "evacuate hosts of the pool")?;
        let (config, paused) = {
            let t = self.table();
            let e = t
                .domains
                .values()
                .find(|e| e.rec.name == domain && e.rec.domid != 0)
                .ok_or_else(|| DaemonError::NoSuchDomain(domain.to_string()))?;
            let paused = matches!(e.rec.state, DomainState::Running { paused: true, .. });
            (e.rec.config.clone(), paused)
        };
        let mut need = need_of(&config);
        need.exclude = vec![pool.host.clone()];
        let mut failed: Vec<String> = Vec::new();
        loop {
            let (target, _promise) = match pool.place(&need) {
                Ok(p) => p,
                Err(e) if failed.is_empty() => return Err(e.into()),
                Err(e) => {
                    return Err(DaemonError::Config(format!(
                        "{}; then {e}",
                        failed.join("; ")
                    )))
                }
            };
            match self.migrate_to(caller, pool, domain, &target, paused) {
                Ok(()) => {
                    self.log.info(format!(
                        "pool {}: domain {domain} evacuated to host {target} for {}",
                        pool.name,
                        caller.describe()
                    ));
                    return Ok(target);
                }
                Err(e) => {
                    // A failed migration leaves the domain running here: another host may
                    // take it. Only while it is still here, and a few hosts at most.
                    let here = self
                        .table()
                        .domains
                        .values()
                        .any(|e| e.rec.name == domain && e.busy.is_none());
                    if !here {
                        return Err(e);
                    }
                    self.log.warn(format!(
                        "pool {}: moving domain {domain} to host {target} failed: {e}",
                        pool.name
                    ));
                    failed.push(format!("migration to host {target} failed: {e}"));
                    need.exclude.push(target);
                    if failed.len() >= EVACUATE_TRIES {
                        return Err(DaemonError::Config(failed.join("; ")));
                    }
                }
            }
        }
    }

    /// Live-migrates `domain` to `target`'s relocation server (its address from the pool).
    fn migrate_to(
        &self,
        caller: &Caller,
        pool: &Pool,
        domain: &str,
        target: &str,
        paused: bool,
    ) -> Result<(), DaemonError> {
        let address = pool.relocation_address(target)?;
        let (addr, port) = remote::split_address(&address).ok_or_else(|| {
            DaemonError::Pool(PoolError::Remote {
                pool: pool.name.clone(),
                host: target.to_string(),
                why: format!("relocation address {address:?} is not HOST:PORT"),
            })
        })?;
        self.migrate_domain(
            caller,
            domain,
            MigrateOptions {
                host: addr,
                port,
                key_file: None,
                live: true,
                max_rounds: EVACUATE_MAX_ROUNDS,
                downtime_ms: EVACUATE_DOWNTIME_MS,
                paused,
                channel: None,
                // The pool's hosts share the storage.
                copy_storage: false,
            },
        )
        .map(|_| ())
    }
}
