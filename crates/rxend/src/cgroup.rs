//! CPU cgroups for the credit scheduler: one group per domain holding its
//! vCPU threads, and Domain-0's group (`dom0`) holding rxend and, by
//! inheritance, the VMMs' other threads. Works with the cgroup v1 `cpu`
//! controller (shares, CFS quota) and with cgroup v2 (`cpu.weight`,
//! `cpu.max`), whichever the host mounts; the version is detected.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The CFS period used for caps, in microseconds (100 ms, the kernel's default).
pub const CAP_PERIOD_US: u64 = 100_000;

/// Errors of cgroup operations.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The host has no CPU controller rxen can use.
    #[error("no cgroup cpu controller is mounted (looked for cgroup v1 \"cpu\" and cgroup v2 with \"cpu\")")]
    NoController,
    /// A cgroup file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Which cgroup hierarchy holds the CPU controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// cgroup v1: the `cpu` controller's mount point.
    V1(PathBuf),
    /// cgroup v2: the unified hierarchy's mount point.
    V2(PathBuf),
}

/// The CPU cgroups of one rxend: `<mount>/<name>/dom<ID>`.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    name: String,
    /// The group rxend was in before it moved into Domain-0's, relative to the mount point.
    origin: Option<PathBuf>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path))
}

/// Finds the CPU controller in mount-table text (`/proc/self/mounts`).
pub fn detect_in(mounts: &str) -> Option<Version> {
    controller_in(mounts, "cpu")
}

/// Finds `controller` in mount-table text (`/proc/self/mounts`): a v1 hierarchy that has it,
/// else the first v2 mount that offers it.
pub fn controller_in(mounts: &str, controller: &str) -> Option<Version> {
    let mut v2 = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(kind), Some(opts)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        match *kind {
            "cgroup" if opts.split(',').any(|o| o == controller) => {
                return Some(Version::V1(PathBuf::from(dir)));
            }
            "cgroup2" if v2.is_none() => {
                let controllers = fs::read_to_string(Path::new(dir).join("cgroup.controllers"))
                    .unwrap_or_default();
                if controllers.split_whitespace().any(|c| c == controller) {
                    v2 = Some(Version::V2(PathBuf::from(dir)));
                }
            }
            _ => {}
        }
    }
    v2
}

/// cgroup v1 `cpu.shares` for a credit weight: 256 (Xen's default) is 1024 (the kernel's default).
pub fn v1_shares(weight: u32) -> u64 {
    (u64::from(weight) * 1024 / 256).clamp(2, 262_144)
}

/// cgroup v2 `cpu.weight` for a credit weight: 256 is 100 (the kernel's default).
pub fn v2_weight(weight: u32) -> u64 {
    (u64::from(weight) * 100 / 256).clamp(1, 10_000)
}

/// CFS quota in microseconds per [`CAP_PERIOD_US`] for a cap; `None` = no cap.
pub fn cap_quota_us(cap: u32) -> Option<u64> {
    (cap > 0).then(|| (u64::from(cap) * CAP_PERIOD_US / 100).max(1000))
}

impl Cgroups {
    /// Finds the host's CPU controller; `name` is the top group (`rxen` by default).
    pub fn detect(name: &str) -> Result<Cgroups, CgroupError> {
        let mounts = fs::read_to_string("/proc/self/mounts")
            .map_err(io_err(Path::new("/proc/self/mounts")))?;
        let version = detect_in(&mounts).ok_or(CgroupError::NoController)?;
        Ok(Cgroups {
            version,
            name: name.to_string(),
            origin: None,
        })
    }

    /// The hierarchy in use.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// The top group, `<mount>/<name>`.
    pub fn base(&self) -> PathBuf {
        match &self.version {
            Version::V1(m) | Version::V2(m) => m.join(&self.name),
        }
    }

    /// A domain's group (`dom0` is Domain-0's).
    pub fn domain_dir(&self, domid: u32) -> PathBuf {
        self.base().join(format!("dom{domid}"))
    }

    fn ensure_base(&self) -> Result<(), CgroupError> {
        let base = self.base();
        if let Version::V2(mount) = &self.version {
            // The cpu controller must be enabled on the way down.
            let _ = fs::write(mount.join("cgroup.subtree_control"), "+cpu");
            fs::create_dir_all(&base).map_err(io_err(&base))?;
            let ctl = base.join("cgroup.subtree_control");
            write(&ctl, "+cpu")?;
        } else {
            fs::create_dir_all(&base).map_err(io_err(&base))?;
        }
        Ok(())
    }

    fn ensure_domain(&self, domid: u32) -> Result<PathBuf, CgroupError> {
        self.ensure_base()?;
        let dir = self.domain_dir(domid);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    /// Sets a group's weight.
    pub fn set_weight(&self, domid: u32, weight: u32) -> Result<(), CgroupError> {
        let dir = self.ensure_domain(domid)?;
        match &self.version {
            Version::V1(_) => write(&dir.join("cpu.shares"), &v1_shares(weight).to_string()),
            Version::V2(_) => write(&dir.join("cpu.weight"), &v2_weight(weight).to_string()),
        }
    }

    /// Sets a group's cap (percent of one host CPU, 0 = none).
    pub fn set_cap(&self, domid: u32, cap: u32) -> Result<(), CgroupError> {
        let dir = self.ensure_domain(domid)?;
        match &self.version {
            Version::V1(_) => {
                write(&dir.join("cpu.cfs_period_us"), &CAP_PERIOD_US.to_string())?;
                let quota = cap_quota_us(cap).map_or("-1".to_string(), |q| q.to_string());
                write(&dir.join("cpu.cfs_quota_us"), &quota)
            }
            Version::V2(_) => {
                let quota = cap_quota_us(cap).map_or("max".to_string(), |q| q.to_string());
                write(&dir.join("cpu.max"), &format!("{quota} {CAP_PERIOD_US}"))
            }
        }
    }

    /// Puts Domain-0's work (this process, and so every VMM it starts) in `dom0` with `weight`,
    /// remembering the group it leaves for [`Cgroups::leave_dom0`].
    pub fn setup_dom0(&mut self, weight: u32) -> Result<(), CgroupError> {
        let own = Path::new("/proc/self/cgroup");
        let text = fs::read_to_string(own).map_err(io_err(own))?;
        self.origin = own_group(&text, &self.version).filter(|g| {
            let mount = match &self.version {
                Version::V1(m) | Version::V2(m) => m,
            };
            mount.join(g.strip_prefix("/").unwrap_or(g)) != self.domain_dir(0)
        });
        self.set_weight(0, weight)?;
        let procs = self.domain_dir(0).join("cgroup.procs");
        write(&procs, &std::process::id().to_string())
    }

    /// Moves this process back to the group it came from and removes Domain-0's group, when
    /// nothing else is in it (on cgroup v1 the VMMs' other threads stay there while they run).
    /// Returns whether the group went.
    pub fn leave_dom0(&self) -> Result<bool, CgroupError> {
        let Some(origin) = &self.origin else {
            return Ok(false);
        };
        let mount = match &self.version {
            Version::V1(m) | Version::V2(m) => m,
        };
        let back = mount.join(origin.strip_prefix("/").unwrap_or(origin));
        write(&back.join("cgroup.procs"), &std::process::id().to_string())?;
        let dom0 = self.domain_dir(0);
        match fs::remove_dir(&dom0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
            Err(e) => Err(io_err(&dom0)(e)),
        }
    }

    /// Moves a domain's threads into its group and applies weight and cap.
    /// On v1 only the vCPU threads `tids` move (the VMM's other threads stay
    /// in Domain-0's group); v2 cannot split a process's threads across
    /// domain groups, so the whole VMM process `pid` moves there.
    pub fn place_domain(
        &self,
        domid: u32,
        pid: i32,
        tids: &[i32],
        weight: u32,
        cap: u32,
    ) -> Result<(), CgroupError> {
        self.set_weight(domid, weight)?;
        self.set_cap(domid, cap)?;
        let dir = self.domain_dir(domid);
        match &self.version {
            Version::V1(_) => {
                let tasks = dir.join("tasks");
                for tid in tids {
                    write(&tasks, &tid.to_string())?;
                }
                Ok(())
            }
            Version::V2(_) => write(&dir.join("cgroup.procs"), &pid.to_string()),
        }
    }

    /// The domain IDs that have a group (`dom<ID>`) now, Domain-0's included.
    pub fn domain_ids(&self) -> Vec<u32> {
        domain_ids_in(&self.base())
    }

    /// The thread IDs in a domain's group.
    pub fn domain_tids(&self, domid: u32) -> Vec<i32> {
        let file = match &self.version {
            Version::V1(_) => "tasks",
            Version::V2(_) => "cgroup.threads",
        };
        fs::read_to_string(self.domain_dir(domid).join(file))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect()
    }

    /// The weight and cap a domain's group has now, read back from the kernel's files.
    pub fn read_back(&self, domid: u32) -> Option<(u64, Option<u64>)> {
        let dir = self.domain_dir(domid);
        let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
        match &self.version {
            Version::V1(_) => {
                let shares = read("cpu.shares")?.trim().parse().ok()?;
                let quota: i64 = read("cpu.cfs_quota_us")?.trim().parse().ok()?;
                Some((shares, u64::try_from(quota).ok()))
            }
            Version::V2(_) => {
                let weight = read("cpu.weight")?.trim().parse().ok()?;
                let max = read("cpu.max")?;
                let quota = max.split_whitespace().next()?.parse().ok();
                Some((weight, quota))
            }
        }
    }

    /// Removes a domain's group, waiting up to `timeout` for its threads to go.
    pub fn remove_domain(&self, domid: u32, timeout: Duration) -> Result<(), CgroupError> {
        remove_dir(&self.domain_dir(domid), timeout)
    }
}

/// The domain IDs that have a group (`dom<ID>`) in `base`, sorted.
pub fn domain_ids_in(base: &Path) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(base) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = dir
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id: u32 = name.strip_prefix("dom")?.parse().ok()?;
            (format!("dom{id}") == name).then_some(id)
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The group of this process in the hierarchy of `version`, from `/proc/self/cgroup`'s text.
pub fn own_group(text: &str, version: &Version) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match version {
            Version::V2(_) => controllers.is_empty(),
            Version::V1(_) => controllers.split(',').any(|c| c == "cpu"),
        };
        wanted.then(|| PathBuf::from(path))
    })
}

/// Removes an empty cgroup directory, retrying while exiting tasks still hold it.
pub fn remove_dir(dir: &Path, timeout: Duration) -> Result<(), CgroupError> {
    let deadline = Instant::now() + timeout;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(io_err(dir)(e)),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_and_caps_map_to_the_kernel_scales() {
        assert_eq!(v1_shares(256), 1024);
        assert_eq!(v1_shares(512), 2048);
        assert_eq!(v1_shares(1), 4);
        assert_eq!(v1_shares(65535), 262_140);
        assert_eq!(v2_weight(256), 100);
        assert_eq!(v2_weight(1), 1);
        assert_eq!(v2_weight(65535), 10_000);
        assert_eq!(cap_quota_us(0), None);
        assert_eq!(cap_quota_us(50), Some(50_000));
        assert_eq!(cap_quota_us(250), Some(250_000));
        assert_eq!(cap_quota_us(1), Some(1000));
    }

    #[test]
    fn own_group_is_read_for_either_hierarchy() {
        let v2 = Version::V2(PathBuf::from("/sys/fs/cgroup"));
        let v1 = Version::V1(PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(
            own_group("0::/system.slice/rxend.service\n", &v2),
            Some(PathBuf::from("/system.slice/rxend.service"))
        );
        let text = "12:memory:/a\n4:cpu,cpuacct:/b/c\n0::/d\n";
        assert_eq!(own_group(text, &v1), Some(PathBuf::from("/b/c")));
        assert_eq!(own_group(text, &v2), Some(PathBuf::from("/d")));
        assert_eq!(own_group("12:memory:/a\n", &v1), None);
    }

    #[test]
    fn v1_cpu_controller_is_found_in_the_mount_table() {
        let mounts = "cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n";
        assert_eq!(
            detect_in(mounts),
            Some(Version::V1(PathBuf::from("/sys/fs/cgroup/cpu")))
        );
        let combined = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n";
        assert_eq!(
            detect_in(combined),
            Some(Version::V1(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")))
        );
        assert_eq!(detect_in("proc /proc proc rw 0 0\n"), None);
    }
}
