//! The host's CPU, NUMA and PCI topology from `/sys` for `rxl info -n` (xl's `cpu_topology`,
//! `device topology` and `numa_info`): each online CPU's core, socket and node, each node's
//! memory and distances, each PCI device's node. A kernel without NUMA (no
//! `devices/system/node`) is one node 0 holding every CPU and all of memory.

use std::fs;
use std::path::Path;

use rxen_proto::api::{CpuTopology, HostTopology, NodeInfo, PciNode};

/// Reads the topology under `sys` (`/sys`, or a copy of its layout in tests).
pub fn read(sys: &Path) -> HostTopology {
    let nodes_dir = sys.join("devices/system/node");
    let node_ids = numbered(&nodes_dir, "node");
    // Which node each CPU belongs to, from the nodes' cpulists.
    let mut node_of = std::collections::BTreeMap::new();
    for &n in &node_ids {
        let list = read_trim(&nodes_dir.join(format!("node{n}/cpulist"))).unwrap_or_default();
        for cpu in parse_cpulist(&list) {
            node_of.insert(cpu, n);
        }
    }
    let cpu_dir = sys.join("devices/system/cpu");
    let cpus = numbered(&cpu_dir, "cpu")
        .into_iter()
        .filter_map(|cpu| {
            // An offline CPU has no topology: xl skips it as an invalid entry.
            let topo = cpu_dir.join(format!("cpu{cpu}/topology"));
            Some(CpuTopology {
                cpu,
                core: read_num(&topo.join("core_id"))?,
                socket: read_num(&topo.join("physical_package_id"))?,
                node: node_of.get(&cpu).copied().unwrap_or(0),
            })
        })
        .collect();
    let nodes = if node_ids.is_empty() {
        let (size, free) = meminfo(&fs::read_to_string("/proc/meminfo").unwrap_or_default());
        vec![NodeInfo {
            node: 0,
            size,
            free,
            distances: vec![10],
        }]
    } else {
        node_ids
            .iter()
            .map(|&n| {
                let dir = nodes_dir.join(format!("node{n}"));
                let (size, free) =
                    meminfo(&fs::read_to_string(dir.join("meminfo")).unwrap_or_default());
                NodeInfo {
                    node: n,
                    size,
                    free,
                    distances: read_trim(&dir.join("distance"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .filter_map(|d| d.parse().ok())
                        .collect(),
                }
            })
            .collect()
    };
    HostTopology {
        cpus,
        nodes,
        pci: pci_nodes(&sys.join("bus/pci/devices")),
    }
}

/// The numbers N of the entries `PREFIXN` in `dir`, in order.
fn numbered(dir: &Path, prefix: &str) -> Vec<u32> {
    let mut out: Vec<u32> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(prefix)?.parse().ok())
        .collect();
    out.sort_unstable();
    out
}

fn read_trim(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn read_num(path: &Path) -> Option<u32> {
    read_trim(path)?.parse().ok()
}

/// A kernel CPU list (`0-3,8,10-11`) as CPU numbers; what does not parse is left out.
pub fn parse_cpulist(list: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    // A list names at most every possible CPU; a wild range is not one.
                    if b >= a && b - a < 1 << 16 {
                        out.extend(a..=b);
                    }
                }
            }
            None => out.extend(part.parse::<u32>().ok()),
        }
    }
    out
}

/// MemTotal and MemFree in bytes from a meminfo text (`/proc/meminfo`, or a node's, whose
/// lines start with `Node N`).
fn meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace().skip_while(|w| *w != name);
                w.next()?;
                w.next()?.parse::<u64>().ok()
            })
            .unwrap_or(0)
            * 1024
    };
    (field("MemTotal:"), field("MemFree:"))
}

/// Each PCI device whose `numa_node` is known (not -1), by address `SSSS:BB:DD.F`.
fn pci_nodes(dir: &Path) -> Vec<PciNode> {
    let mut out: Vec<PciNode> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let (seg, rest) = name.split_once(':')?;
            let (bus, rest) = rest.split_once(':')?;
            let (dev, func) = rest.split_once('.')?;
            let node: i64 = read_trim(&e.path().join("numa_node"))?.parse().ok()?;
            Some(PciNode {
                seg: u16::from_str_radix(seg, 16).ok()?,
                bus: u8::from_str_radix(bus, 16).ok()?,
                dev: u8::from_str_radix(dev, 16).ok()?,
                func: u8::from_str_radix(func, 16).ok()?,
                node: u32::try_from(node).ok()?,
            })
        })
        .collect();
    out.sort_unstable_by_key(|p| (p.seg, p.bus, p.dev, p.func));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, path: &str, text: &str) {
        let p = root.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }

    #[test]
    fn two_nodes_with_an_offline_cpu_and_a_pci_device() {
        let d = tempfile::tempdir().expect("tmp");
        let r = d.path();
        for (cpu, core, socket) in [(0, 0, 0), (1, 1, 0), (2, 0, 1), (3, 1, 1)] {
            put(
                r,
                &format!("devices/system/cpu/cpu{cpu}/topology/core_id"),
                &format!("{core}\n"),
            );
            put(
                r,
                &format!("devices/system/cpu/cpu{cpu}/topology/physical_package_id"),
                &format!("{socket}\n"),
            );
        }
        // cpu4 is offline: no topology.
        put(r, "devices/system/cpu/cpu4/online", "0\n");
        put(r, "devices/system/node/node0/cpulist", "0-1\n");
        put(r, "devices/system/node/node1/cpulist", "2-3\n");
        put(r, "devices/system/node/node0/distance", "10 21\n");
        put(r, "devices/system/node/node1/distance", "21 10\n");
        put(
            r,
            "devices/system/node/node0/meminfo",
            "Node 0 MemTotal:       2097152 kB\nNode 0 MemFree:        1048576 kB\n",
        );
        put(
            r,
            "devices/system/node/node1/meminfo",
            "Node 1 MemTotal:       4194304 kB\nNode 1 MemFree:         524288 kB\n",
        );
        put(r, "bus/pci/devices/0000:00:1f.2/numa_node", "1\n");
        put(r, "bus/pci/devices/0000:00:01.0/numa_node", "-1\n");
        let t = read(r);
        assert_eq!(
            t.cpus
                .iter()
                .map(|c| (c.cpu, c.core, c.socket, c.node))
                .collect::<Vec<_>>(),
            vec![(0, 0, 0, 0), (1, 1, 0, 0), (2, 0, 1, 1), (3, 1, 1, 1)]
        );
        assert_eq!(t.nodes.len(), 2);
        assert_eq!((t.nodes[1].size >> 20, t.nodes[1].free >> 20), (4096, 512));
        assert_eq!(t.nodes[0].distances, vec![10, 21]);
        assert_eq!(
            t.pci,
            vec![PciNode {
                seg: 0,
                bus: 0,
                dev: 0x1f,
                func: 2,
                node: 1
            }]
        );
    }

    #[test]
    fn cpulists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpulist("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpulist(""), Vec::<u32>::new());
        assert_eq!(parse_cpulist("3-1,x,0-4294967295"), Vec::<u32>::new());
    }
}
