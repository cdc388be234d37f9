//! When the host goes down, its domains come back (Xen's `xendomains`): `rxl host-shutdown`
//! saves every running domain into the save directory, a few at a time, and shuts down (or, at
//! the last, destroys) those whose save fails; `rxl host-start` restores every saved domain,
//! removing its file, then creates the domains whose configs are in the auto-start directory
//! and do not run yet. Nothing is lost silently: every domain gets a line in the answer and in
//! rxend's log.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rxen_proto::api::{HostDomainAction, HostDomainOutcome};

use super::{Daemon, DaemonError};
use crate::auth::Caller;
use crate::config::DomainsConfig;

/// The ending of a save file in the save directory.
const SAVE_SUFFIX: &str = ".save";

fn outcome(
    name: &str,
    action: HostDomainAction,
    file: Option<&Path>,
    detail: Option<String>,
) -> HostDomainOutcome {
    HostDomainOutcome {
        name: name.to_string(),
        action,
        file: file.map(|f| f.display().to_string()),
        detail,
    }
}

/// Runs `work` on each item, at most `parallel` at once, and returns the results in order.
fn bounded<T: Sync, R: Send>(items: &[T], parallel: u32, work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let workers = (parallel.max(1) as usize).min(items.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = {
                    let mut n = next
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(item) = items.get(i) else { break };
                let r = work(item);
                if let Some(slot) = results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_mut(i)
                {
                    *slot = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .flatten()
        .collect()
}

impl Daemon {
    /// Sets `[domains]` from rxend.toml.
    pub fn set_domains_config(&self, c: crate::config::DomainsConfig) {
        *self
            .domains_config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = c;
    }

    fn domains_config(&self) -> DomainsConfig {
        self.domains_config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The save directory: `[domains] save-dir`, or `save/` in the state directory.
    fn save_dir(&self, c: &DomainsConfig) -> PathBuf {
        c.save_dir
            .clone()
            .unwrap_or_else(|| self.paths.state_dir.join("save"))
    }

    /// `rxl host-shutdown`: saves every running domain; one whose save fails is shut down, and
    /// destroyed if it does not go in time.
    pub fn host_shutdown(&self, caller: &Caller) -> Result<Vec<HostDomainOutcome>, DaemonError> {
        self.only_root(caller, "shut the host's domains down")?;
        let c = self.domains_config();
        let dir = self.save_dir(&c);
        create_private_dir(&dir)?;
        let names: Vec<String> = self
            .list(caller, &[])?
            .into_iter()
            .filter(|d| d.domid != 0 && d.state.as_bytes().get(3) != Some(&b's'))
            .map(|d| d.name)
            .collect();
        self.log.info(format!(
            "host shutdown: saving {} domain(s) into {}, {} at a time",
            names.len(),
            dir.display(),
            c.parallel
        ));
        let timeout = Duration::from_secs(c.shutdown_timeout_seconds);
        let results = bounded(&names, c.parallel, |name| {
            let path = dir.join(format!("{name}{SAVE_SUFFIX}"));
            let r = self.save_domain(
                caller,
                name,
                &path.display().to_string(),
                false,
                false,
                None,
            );
            match r {
                Ok(_) => outcome(name, HostDomainAction::Saved, Some(&path), None),
                Err(e) => {
                    self.log.error(format!(
                        "host shutdown: cannot save domain {name}: {e}; shutting it down"
                    ));
                    self.shut_down_or_destroy(caller, name, timeout, e.to_string())
                }
            }
        });
        self.log_outcomes("host shutdown", &results);
        Ok(results)
    }

    /// Asks `name` to shut down; destroys it when it is still there after `timeout`.
    fn shut_down_or_destroy(
        &self,
        caller: &Caller,
        name: &str,
        timeout: Duration,
        why: String,
    ) -> HostDomainOutcome {
        let gone = |d: &Daemon| {
            d.list(caller, &[])
                .map(|l| {
                    !l.iter()
                        .any(|i| i.name == name && i.state.as_bytes().get(3) != Some(&b's'))
                })
                .unwrap_or(false)
        };
        if self.request_shutdown(caller, name, false).is_ok() {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if gone(self) {
                    return outcome(
                        name,
                        HostDomainAction::ShutDown,
                        None,
                        Some(format!("save failed: {why}")),
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let destroyed = self.destroy(caller, name);
        outcome(
            name,
            HostDomainAction::Destroyed,
            None,
            Some(match destroyed {
                Ok(()) => format!(
                    "save failed: {why}; it did not shut down within {} s",
                    timeout.as_secs()
                ),
                Err(e) => format!("save failed: {why}; destroying it failed too: {e}"),
            }),
        )
    }

    /// `rxl host-start`: restores every saved domain (removing its file once it runs), then
    /// creates the auto-start domains that do not run.
    pub fn host_start(&self, caller: &Caller) -> Result<Vec<HostDomainOutcome>, DaemonError> {
        self.only_root(caller, "start the host's domains")?;
        let c = self.domains_config();
        let dir = self.save_dir(&c);
        let mut saves: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.ends_with(SAVE_SUFFIX) && !n.starts_with('.'))
                    })
                    .collect()
            })
            .unwrap_or_default();
        saves.sort();
        let mut results = bounded(&saves, c.parallel, |path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(SAVE_SUFFIX))
                .unwrap_or_default()
                .to_string();
            match self.restore_domain(caller, &path.display().to_string(), None, false) {
                Ok(created) => {
                    if let Err(e) = std::fs::remove_file(path) {
                        self.log.warn(format!(
                            "host start: domain {} restored, but {} stays: {e}",
                            created.name,
                            path.display()
                        ));
                    }
                    outcome(&created.name, HostDomainAction::Restored, Some(path), None)
                }
                Err(e) => outcome(
                    &name,
                    HostDomainAction::Failed,
                    Some(path),
                    Some(e.to_string()),
                ),
            }
        });
        let mut autos: Vec<PathBuf> = std::fs::read_dir(&c.auto_dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        autos.sort();
        for cfg in autos {
            results.push(self.auto_start(caller, &cfg));
        }
        self.log_outcomes("host start", &results);
        Ok(results)
    }

    /// One log line per domain of a host shutdown or start.
    fn log_outcomes(&self, what: &str, results: &[HostDomainOutcome]) {
        for r in results {
            self.log.info(format!(
                "{what}: domain {}: {:?}{}",
                r.name,
                r.action,
                r.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ));
        }
    }

    /// Creates the domain of auto-start config `cfg` unless one of its name runs.
    fn auto_start(&self, caller: &Caller, cfg: &Path) -> HostDomainOutcome {
        let shown = cfg.display().to_string();
        let failed =
            |name: &str, why: String| outcome(name, HostDomainAction::Failed, Some(cfg), Some(why));
        let (real, text) = match crate::cfgfile::read_root_only(cfg) {
            Ok(t) => t,
            Err(e) => return failed(&shown, e.to_string()),
        };
        let path = real.display().to_string();
        let name = match xlcfg::parse(&text, &path, &[]) {
            Ok(p) => p.config.name.clone(),
            Err(e) => return failed(&shown, e.to_string()),
        };
        let running = self
            .list(caller, &[])
            .map(|l| {
                l.iter()
                    .any(|d| d.name == name && d.state.as_bytes().get(3) != Some(&b's'))
            })
            .unwrap_or(false);
        if running {
            return outcome(&name, HostDomainAction::AlreadyRunning, Some(cfg), None);
        }
        match self.create(caller, &path, &text, &[], false, false) {
            Ok(_) => outcome(&name, HostDomainAction::Created, Some(cfg), None),
            Err(e) => failed(&name, e.to_string()),
        }
    }
}

/// Creates `dir` (mode 0700) if it is missing.
fn create_private_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(source) => Err(DaemonError::Persist {
            path: dir.to_path_buf(),
            source,
        }),
    }
}
