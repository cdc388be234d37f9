//! CPU lists (`cpus=`, `rxl vcpu-pin`): "3,5-8,^6", "all", and the per-vCPU list form.

use crate::spec::SpecError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The highest CPU number rxen handles, plus one.
pub const MAX_CPUS: u32 = 4096;

/// Hard vCPU affinity from `cpus=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuAffinity {
    /// Every vCPU may run on every host CPU (`cpus = "all"`).
    All,
    /// Every vCPU may run on these host CPUs (sorted, deduplicated).
    Set(Vec<u32>),
    /// vCPU i may run on the CPUs of entry i (each sorted, deduplicated); vCPUs past the end are unpinned.
    PerVcpu(Vec<Vec<u32>>),
}

/// One item of a CPU list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    All,
    Range(u32, u32),
}

/// Parses the items of a CPU list string, left to right: (remove?, item).
fn items(spec: &str) -> Result<Vec<(bool, Item)>, SpecError> {
    let mut out = Vec::new();
    for raw in spec.split(',') {
        let item = raw.trim();
        if item.is_empty() {
            continue;
        }
        let (remove, body) = match item.strip_prefix('^') {
            Some(b) => (true, b.trim_start()),
            None => (false, item),
        };
        if body.starts_with("node:") || body.starts_with("nodes:") {
            return Err(SpecError::NodesUnsupported(item.to_string()));
        }
        if body == "all" {
            if remove {
                return Err(SpecError::CaretAll);
            }
            out.push((false, Item::All));
            continue;
        }
        let (a, b) = match body.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (body, None),
        };
        let num = |s: &str| -> Result<u32, SpecError> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(SpecError::BadCpuItem(item.to_string()));
            }
            let v: u32 = s.parse().map_err(|_| SpecError::CpuTooLarge {
                cpu: u32::MAX,
                limit: MAX_CPUS,
            })?;
            if v >= MAX_CPUS {
                return Err(SpecError::CpuTooLarge {
                    cpu: v,
                    limit: MAX_CPUS,
                });
            }
            Ok(v)
        };
        let from = num(a)?;
        let to = match b {
            Some(b) => num(b)?,
            None => from,
        };
        if to < from {
            return Err(SpecError::CpuRangeBackwards { from, to });
        }
        out.push((remove, Item::Range(from, to)));
    }
    if out.is_empty() {
        return Err(SpecError::EmptyCpuList);
    }
    Ok(out)
}

/// Applies the items to a set, `all` meaning CPUs `0..host_cpus`.
fn resolve(items: &[(bool, Item)], host_cpus: u32) -> BTreeSet<u32> {
    let mut set = BTreeSet::new();
    for &(remove, item) in items {
        let (from, to) = match item {
            Item::All => (0, host_cpus.saturating_sub(1)),
            Item::Range(a, b) => (a, b),
        };
        if matches!(item, Item::All) && host_cpus == 0 {
            continue;
        }
        for c in from..=to {
            if remove {
                set.remove(&c);
            } else {
                set.insert(c);
            }
        }
    }
    set
}

/// Parses a CPU list such as "3,5-8,^6", "all" or "all,^7" into sorted, deduplicated CPU
/// numbers; `host_cpus` is the number of host CPUs (what "all" means, and the limit).
/// `node:`/`nodes:` items are refused. An empty result (e.g. "^0") is returned as an empty list.
pub fn parse_cpu_list(spec: &str, host_cpus: u32) -> Result<Vec<u32>, SpecError> {
    let items = items(spec)?;
    let set = resolve(&items, host_cpus.min(MAX_CPUS));
    if let Some(&cpu) = set.iter().find(|&&c| c >= host_cpus) {
        return Err(SpecError::CpuTooLarge {
            cpu,
            limit: host_cpus,
        });
    }
    Ok(set.into_iter().collect())
}

/// What a CPU list means without knowing the host: all, a set, or "needs the host CPU count".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostFree {
    /// "all" (possibly with more CPUs added).
    All,
    /// An explicit set.
    Set(Vec<u32>),
    /// "all" with CPUs removed afterwards: the answer depends on the host.
    NeedsHost,
}

/// Checks a CPU list's syntax without expanding it (for entries that are then ignored).
pub(crate) fn check_cpu_list_syntax(spec: &str) -> Result<(), SpecError> {
    match items(spec) {
        Ok(_) | Err(SpecError::NodesUnsupported(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads a CPU list for a config file, where the host is not known.
pub(crate) fn parse_cpu_list_host_free(spec: &str) -> Result<HostFree, SpecError> {
    let items = items(spec)?;
    match items.iter().position(|(_, i)| *i == Item::All) {
        None => Ok(HostFree::Set(resolve(&items, 0).into_iter().collect())),
        Some(first_all) => {
            let removes_after = items.iter().skip(first_all).any(|(remove, _)| *remove);
            Ok(if removes_after {
                HostFree::NeedsHost
            } else {
                HostFree::All
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(parse_cpu_list("3,5-8,^6", 16), Ok(vec![3, 5, 7, 8]));
        assert_eq!(parse_cpu_list("0-3,5,^1", 16), Ok(vec![0, 2, 3, 5]));
        assert_eq!(parse_cpu_list("all", 4), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_list("all,^2", 4), Ok(vec![0, 1, 3]));
        // Xen's check-xl-vcpupin-parse: "all,^12" on 16 CPUs, "^0" -> none, "foo" -> error
        assert_eq!(
            parse_cpu_list("all,^12", 16),
            Ok((0..16).filter(|&c| c != 12).collect())
        );
        assert_eq!(parse_cpu_list("^0", 16), Ok(vec![]));
        assert!(matches!(
            parse_cpu_list("foo", 16),
            Err(SpecError::BadCpuItem(_))
        ));
        assert_eq!(
            parse_cpu_list("8-5", 16),
            Err(SpecError::CpuRangeBackwards { from: 8, to: 5 })
        );
        assert_eq!(parse_cpu_list("^all", 16), Err(SpecError::CaretAll));
        assert!(matches!(
            parse_cpu_list("nodes:0-1", 16),
            Err(SpecError::NodesUnsupported(_))
        ));
        assert!(matches!(
            parse_cpu_list("node:0,^node:1", 16),
            Err(SpecError::NodesUnsupported(_))
        ));
        assert_eq!(
            parse_cpu_list("17", 16),
            Err(SpecError::CpuTooLarge { cpu: 17, limit: 16 })
        );
        assert_eq!(parse_cpu_list("", 16), Err(SpecError::EmptyCpuList));
        assert!(parse_cpu_list("0-99999999999", 16).is_err());
        assert!(parse_cpu_list("1-", 16).is_err());
        assert!(parse_cpu_list("-1", 16).is_err());
    }

    #[test]
    fn host_free() {
        assert_eq!(parse_cpu_list_host_free("all"), Ok(HostFree::All));
        assert_eq!(parse_cpu_list_host_free("all,3"), Ok(HostFree::All));
        assert_eq!(parse_cpu_list_host_free("all,^3"), Ok(HostFree::NeedsHost));
        assert_eq!(parse_cpu_list_host_free("^3,all"), Ok(HostFree::All));
        assert_eq!(
            parse_cpu_list_host_free("1,3-4,^4"),
            Ok(HostFree::Set(vec![1, 3]))
        );
    }
}
