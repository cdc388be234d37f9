//! Domains rxend has created from a file, remembered after they are gone so
//! that `boot` (rxen-shell, `rxl boot`) can create them again from the same
//! file: name → config path, with the overrides and flags of that create.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::record::write_atomic;

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum KnownError {
    /// The registry file could not be read or parsed.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The registry file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How root created a domain from a file, to do the same again at `boot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownConfig {
    /// Absolute path of the config file.
    pub path: String,
    /// `KEY=VALUE` overrides given with the create.
    #[serde(default)]
    pub overrides: Vec<String>,
    /// `--ignore-unsupported` was given with the create.
    #[serde(default)]
    pub ignore_unsupported: bool,
}

/// The persisted registry of known configs, keyed by domain name.
pub struct KnownConfigs {
    file: PathBuf,
    map: Mutex<BTreeMap<String, KnownConfig>>,
}

impl KnownConfigs {
    /// Loads the registry from `file`; a missing file is an empty registry.
    /// An unreadable one is reported and replaced at the next create.
    pub fn open(file: &Path) -> (KnownConfigs, Option<KnownError>) {
        let (map, err) = match fs::read(file) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(m) => (m, None),
                Err(e) => (
                    BTreeMap::new(),
                    Some(KnownError::Read {
                        path: file.to_path_buf(),
                        reason: e.to_string(),
                    }),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), None),
            Err(e) => (
                BTreeMap::new(),
                Some(KnownError::Read {
                    path: file.to_path_buf(),
                    reason: e.to_string(),
                }),
            ),
        };
        (
            KnownConfigs {
                file: file.to_path_buf(),
                map: Mutex::new(map),
            },
            err,
        )
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, KnownConfig>> {
        match self.map.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Remembers (or updates) where domain `name` comes from, and persists the registry.
    pub fn remember(&self, name: &str, known: KnownConfig) -> Result<(), KnownError> {
        let mut map = self.lock();
        if map.get(name) == Some(&known) {
            return Ok(());
        }
        map.insert(name.to_string(), known);
        let data = serde_json::to_vec_pretty(&*map).map_err(|e| KnownError::Write {
            path: self.file.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.file, &data).map_err(|source| KnownError::Write {
            path: self.file.clone(),
            source,
        })
    }

    /// Where domain `name` comes from, if known.
    pub fn get(&self, name: &str) -> Option<KnownConfig> {
        self.lock().get(name).cloned()
    }

    /// Every known domain, by name.
    pub fn all(&self) -> Vec<(String, KnownConfig)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("known-configs.json");
        let (k, err) = KnownConfigs::open(&file);
        assert!(err.is_none());
        let web = KnownConfig {
            path: "/etc/xen/web.cfg".into(),
            overrides: vec!["memory=64".into()],
            ignore_unsupported: false,
        };
        k.remember("web", web.clone()).expect("remember");
        let (again, err) = KnownConfigs::open(&file);
        assert!(err.is_none());
        assert_eq!(again.get("web"), Some(web));
        assert_eq!(again.get("db"), None);
        assert_eq!(again.all().len(), 1);
    }

    #[test]
    fn a_corrupt_registry_is_reported_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("known-configs.json");
        fs::write(&file, b"{not json").expect("write");
        let (k, err) = KnownConfigs::open(&file);
        assert!(err.is_some());
        assert!(k.all().is_empty());
    }
}
