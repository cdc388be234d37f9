//! Cgroup I/O weights that follow the credit weight: `blkio.weight` or
//! `blkio.bfq.weight` on cgroup v1 (a `blkio` group per domain holding its
//! disk I/O threads), `io.weight` and `io.bfq.weight` on cgroup v2 (in the
//! domain's group, which holds its whole VMM). Only the files the kernel
//! offers are written: with a disk scheduler that has no weights (mq-deadline,
//! kyber, none) cgroup v1 offers none, and rxend says so once and relies on
//! the threads' I/O priorities (`ioprio`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cgroup::{self, CgroupError, Cgroups, Version};

/// The weight files rxend knows, in the order it prefers them.
const V1_FILES: [&str; 2] = ["blkio.weight", "blkio.bfq.weight"];
const V2_FILES: [&str; 2] = ["io.weight", "io.bfq.weight"];

/// Where and how a host takes cgroup I/O weights.
#[derive(Debug, Clone)]
pub enum IoWeights {
    /// cgroup v1 `blkio`: groups `<mount>/<name>/dom<ID>` holding the disk I/O threads.
    V1 {
        /// `<mount>/<name>`.
        base: PathBuf,
        /// The weight files the controller offers.
        files: Vec<&'static str>,
    },
    /// cgroup v2 `io`: the files in the CPU cgroups' domain groups.
    V2 {
        /// The CPU cgroups, whose domain groups hold the whole VMMs.
        cpu: Cgroups,
        /// The weight files the controller offers.
        files: Vec<&'static str>,
    },
}

/// The value a weight file takes for a credit weight (256, Xen's default, is each file's default).
pub fn file_value(file: &str, weight: u32) -> u64 {
    let w = u64::from(weight);
    match file {
        // 10-1000, default 500.
        "blkio.weight" => (w * 500 / 256).clamp(10, 1000),
        // 1-10000, default 100: the same scale as cpu.weight.
        "io.weight" => cgroup::v2_weight(weight),
        // BFQ's 1-1000, default 100.
        _ => (w * 100 / 256).clamp(1, 1000),
    }
}

/// The files of `candidates` that exist in `dir`.
pub fn offered(dir: &Path, candidates: &[&'static str]) -> Vec<&'static str> {
    candidates
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect()
}

/// The mount point of the cgroup v1 `blkio` controller in mount-table text.
pub fn blkio_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dir, kind, opts) = (f.get(1)?, f.get(2)?, f.get(3)?);
        (*kind == "cgroup" && opts.split(',').any(|o| o == "blkio")).then(|| PathBuf::from(dir))
    })
}

/// Finds where this host takes I/O weights for rxend's top group `name`; `Err` says why none.
pub fn detect(name: &str, cpu: Option<&Cgroups>) -> Result<IoWeights, String> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(|e| e.to_string())?;
    if let Some(mount) = blkio_mount_in(&mounts) {
        let files = offered(&mount, &V1_FILES);
        if files.is_empty() {
            return Err(format!(
                "the cgroup v1 blkio controller at {} offers no weight file ({}): the disk \
                 schedulers here do not weigh groups",
                mount.display(),
                V1_FILES.join(", ")
            ));
        }
        return Ok(IoWeights::V1 {
            base: mount.join(name),
            files,
        });
    }
    let Some(cpu) = cpu.filter(|c| matches!(c.version(), Version::V2(_))) else {
        return Err(
            "no cgroup I/O controller (v1 blkio, or v2 io beside the cpu controller)".into(),
        );
    };
    let Version::V2(mount) = cpu.version() else {
        return Err("unreachable".into());
    };
    let controllers = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "io") {
        return Err(format!(
            "cgroup v2 at {} has no io controller",
            mount.display()
        ));
    }
    let base = cpu.base();
    let _ = fs::create_dir_all(&base);
    for dir in [mount.as_path(), base.as_path()] {
        let ctl = dir.join("cgroup.subtree_control");
        fs::write(&ctl, "+io").map_err(|e| format!("{}: {e}", ctl.display()))?;
    }
    // The files appear in the children of a group with io enabled: look in Domain-0's.
    let files = offered(&cpu.domain_dir(0), &V2_FILES);
    if files.is_empty() {
        return Err(format!(
            "cgroup v2's io controller offers no weight file ({})",
            V2_FILES.join(", ")
        ));
    }
    Ok(IoWeights::V2 {
        cpu: cpu.clone(),
        files,
    })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl IoWeights {
    /// A domain's group.
    fn dir(&self, domid: u32) -> PathBuf {
        match self {
            IoWeights::V1 { base, .. } => base.join(format!("dom{domid}")),
            IoWeights::V2 { cpu, .. } => cpu.domain_dir(domid),
        }
    }

    fn files(&self) -> &[&'static str] {
        match self {
            IoWeights::V1 { files, .. } | IoWeights::V2 { files, .. } => files,
        }
    }

    /// Writes a domain's weight files; on v1 also moves the disk I/O threads `tids` into its
    /// group (on v2 the VMM is already in it, with the CPU cgroups).
    pub fn apply(&self, domid: u32, tids: &[i32], weight: u32) -> Result<(), CgroupError> {
        let dir = self.dir(domid);
        fs::create_dir_all(&dir).map_err(|source| CgroupError::Io {
            path: dir.clone(),
            source,
        })?;
        for f in self.files() {
            write(&dir.join(f), &file_value(f, weight).to_string())?;
        }
        if let IoWeights::V1 { .. } = self {
            for tid in tids {
                write(&dir.join("tasks"), &tid.to_string())?;
            }
        }
        Ok(())
    }

    /// The first weight file and its value as the kernel holds it (`io.weight`'s `default N`).
    pub fn read_back(&self, domid: u32) -> Option<(String, u64)> {
        let f = self.files().first()?;
        let text = fs::read_to_string(self.dir(domid).join(f)).ok()?;
        let value = text
            .lines()
            .next()?
            .split_whitespace()
            .last()?
            .parse()
            .ok()?;
        Some((f.to_string(), value))
    }

    /// Removes a domain's v1 group once its threads are gone (v2's is the CPU cgroups').
    pub fn remove(&self, domid: u32, timeout: Duration) -> Result<(), CgroupError> {
        match self {
            IoWeights::V1 { .. } => cgroup::remove_dir(&self.dir(domid), timeout),
            IoWeights::V2 { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_map_to_each_files_scale() {
        assert_eq!(file_value("blkio.weight", 256), 500);
        assert_eq!(file_value("blkio.weight", 512), 1000);
        assert_eq!(file_value("blkio.weight", 1), 10);
        assert_eq!(file_value("io.weight", 256), 100);
        assert_eq!(file_value("io.weight", 512), 200);
        assert_eq!(file_value("io.bfq.weight", 256), 100);
        assert_eq!(file_value("blkio.bfq.weight", 65535), 1000);
        assert_eq!(file_value("io.bfq.weight", 1), 1);
    }

    #[test]
    fn blkio_is_found_and_only_offered_files_count() {
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup /sys/fs/cgroup/blkio cgroup rw,relatime,blkio 0 0\n";
        assert_eq!(
            blkio_mount_in(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/blkio"))
        );
        assert_eq!(
            blkio_mount_in("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            None
        );
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(offered(dir.path(), &V1_FILES).is_empty());
        fs::write(dir.path().join("blkio.bfq.weight"), "100").expect("write");
        assert_eq!(offered(dir.path(), &V1_FILES), vec!["blkio.bfq.weight"]);
    }
}
