//! cgroup cpusets for CPU pools: one group per domain, `<mount>/<name>/dom<ID>`, whose CPUs
//! are its pool's, holding every thread of its VMM. cgroup v1's `cpuset` hierarchy or the
//! `cpuset` controller of cgroup v2 (where the group is the one the `cpu` controller uses).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cgroup::{remove_dir, CgroupError, Version};

/// Errors of cpuset operations.
#[derive(Debug, thiserror::Error)]
pub enum CpusetError {
    /// The host has no cpuset controller rxen can use.
    #[error("no cgroup cpuset controller is mounted (looked for cgroup v1 \"cpuset\" and cgroup v2 with \"cpuset\")")]
    NoController,
    /// A cgroup file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Removing a group failed.
    #[error(transparent)]
    Remove(#[from] CgroupError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CpusetError + '_ {
    move |source| CpusetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CpusetError> {
    fs::write(path, value).map_err(io_err(path))
}

fn read(path: &Path) -> Result<String, CpusetError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(io_err(path))
}

/// Finds the cpuset controller in mount-table text (`/proc/self/mounts`); v1 first.
pub fn detect_in(mounts: &str) -> Option<Version> {
    crate::cgroup::controller_in(mounts, "cpuset")
}

/// A CPU list as the kernel's cpuset files take it (`0-1,3`; empty for none).
pub fn cpus_text(cpus: &[u32]) -> String {
    if cpus.is_empty() {
        String::new()
    } else {
        xlcfg::cpu_ranges(cpus)
    }
}

/// The cpusets of one rxend: `<mount>/<name>/dom<ID>`.
#[derive(Debug, Clone)]
pub struct Cpusets {
    version: Version,
    name: String,
}

impl Cpusets {
    /// Finds the host's cpuset controller; `name` is rxend's top group (as for the CPU groups).
    pub fn detect(name: &str) -> Result<Cpusets, CpusetError> {
        let mounts = fs::read_to_string("/proc/self/mounts")
            .map_err(io_err(Path::new("/proc/self/mounts")))?;
        let version = detect_in(&mounts).ok_or(CpusetError::NoController)?;
        Ok(Cpusets {
            version,
            name: name.to_string(),
        })
    }

    /// The hierarchy in use.
    pub fn version(&self) -> &Version {
        &self.version
    }

    fn mount(&self) -> &Path {
        match &self.version {
            Version::V1(m) | Version::V2(m) => m,
        }
    }

    /// The top group, `<mount>/<name>`.
    pub fn base(&self) -> PathBuf {
        self.mount().join(&self.name)
    }

    /// A domain's group.
    pub fn domain_dir(&self, domid: u32) -> PathBuf {
        self.base().join(format!("dom{domid}"))
    }

    fn ensure_base(&self) -> Result<PathBuf, CpusetError> {
        let base = self.base();
        match &self.version {
            Version::V1(mount) => {
                fs::create_dir_all(&base).map_err(io_err(&base))?;
                // A v1 cpuset starts with no CPUs and no memory nodes: give the top group
                // everything its parent has, so that each domain's group may take its share.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    if read(&base.join(f))?.is_empty() {
                        write(&base.join(f), &read(&mount.join(f))?)?;
                    }
                }
            }
            Version::V2(mount) => {
                let _ = fs::write(mount.join("cgroup.subtree_control"), "+cpuset");
                fs::create_dir_all(&base).map_err(io_err(&base))?;
                write(&base.join("cgroup.subtree_control"), "+cpuset")?;
            }
        }
        Ok(base)
    }

    /// Makes (or updates) a domain's group with `cpus`, and opens its `cgroup.procs` for the
    /// VMM to join before it runs anything (writing `0` there moves the writer).
    pub fn prepare(&self, domid: u32, cpus: &[u32]) -> Result<File, CpusetError> {
        let base = self.ensure_base()?;
        let dir = self.domain_dir(domid);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        if matches!(self.version, Version::V1(_)) && read(&dir.join("cpuset.mems"))?.is_empty() {
            write(&dir.join("cpuset.mems"), &read(&base.join("cpuset.mems"))?)?;
        }
        self.set_cpus(domid, cpus)?;
        let procs = dir.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(io_err(&procs))
    }

    /// Sets the CPUs of a domain's group (the kernel resets its threads' affinity to them).
    pub fn set_cpus(&self, domid: u32, cpus: &[u32]) -> Result<(), CpusetError> {
        write(
            &self.domain_dir(domid).join("cpuset.cpus"),
            &cpus_text(cpus),
        )
    }

    /// Moves every thread of process `pid` into a domain's group (made with `cpus` if needed).
    pub fn place(&self, domid: u32, pid: i32, cpus: &[u32]) -> Result<(), CpusetError> {
        drop(self.prepare(domid, cpus)?);
        write(
            &self.domain_dir(domid).join("cgroup.procs"),
            &pid.to_string(),
        )
    }

    /// The CPUs a domain's group has, as the kernel reads them back.
    pub fn read_cpus(&self, domid: u32) -> Option<String> {
        read(&self.domain_dir(domid).join("cpuset.cpus")).ok()
    }

    /// The domain IDs that have a cpuset now.
    pub fn domain_ids(&self) -> Vec<u32> {
        crate::cgroup::domain_ids_in(&self.base())
    }

    /// Removes a domain's group, waiting up to `timeout` for its threads to go.
    pub fn remove_domain(&self, domid: u32, timeout: Duration) -> Result<(), CpusetError> {
        Ok(remove_dir(&self.domain_dir(domid), timeout)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuset_controller_is_found_in_the_mount_table() {
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                      cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0\n";
        assert_eq!(
            detect_in(mounts),
            Some(Version::V1(PathBuf::from("/sys/fs/cgroup/cpuset")))
        );
        assert_eq!(detect_in("proc /proc proc rw 0 0\n"), None);
        assert_eq!(cpus_text(&[0, 1, 3]), "0-1,3");
        assert_eq!(cpus_text(&[]), "");
    }
}
