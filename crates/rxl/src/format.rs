//! xl's output formats, byte for byte, so that scripts written for xl keep
//! working.

use rxen_proto::api::DomainInfo;

/// The header of `xl list` (with real tabs before State and Time(s)).
pub const LIST_HEADER: &str =
    "Name                                        ID   Mem VCPUs\tState\tTime(s)";

/// The extra header of `xl list -v`.
pub const LIST_VERBOSE_HEADER: &str =
    "   UUID                            Reason-Code\tSecurity Label";

/// One `xl list` row: `"%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f"`.
pub fn list_row(d: &DomainInfo) -> String {
    format!(
        "{:<40} {:>5} {:>5} {:>5}     {}  {:>8.1}",
        d.name, d.domid, d.memory_mib, d.vcpus, d.state, d.cpu_time_s
    )
}

/// The reason code of a shut-down domain from its state letters (`---sr-` is a reboot, 1);
/// `None` while it is not shut down.
pub fn shutdown_code(state: &str) -> Option<u32> {
    let s = state.as_bytes();
    if s.get(3) != Some(&b's') {
        return None;
    }
    Some(match s.get(4) {
        Some(b'r') => 1,
        Some(b's') => 2,
        Some(b'c') => 3,
        Some(b'w') => 4,
        Some(b'S') => 5,
        _ => 0,
    })
}

/// The columns `xl list -v` appends to a row: UUID, reason code, security label.
pub fn list_verbose_suffix(d: &DomainInfo) -> String {
    let reason = if let Some(code) = shutdown_code(&d.state) {
        format!("{code:>8x}")
    } else {
        format!("{:>8}", "-")
    };
    format!(" {} {} {:>16}", d.uuid, reason, "-")
}

/// The whole `xl list` table.
pub fn list_table(domains: &[DomainInfo], verbose: bool) -> String {
    let mut out = String::from(LIST_HEADER);
    if verbose {
        out.push_str(LIST_VERBOSE_HEADER);
    }
    out.push('\n');
    for d in domains {
        out.push_str(&list_row(d));
        if verbose {
            out.push_str(&list_verbose_suffix(d));
        }
        out.push('\n');
    }
    out
}

/// `xl vm-list`: UUID, ID and name of every domain, in xl's columns (the name padded to 30).
/// As libxl lists them today, Domain-0 is among them (its help says "excluding dom0", which
/// libxl's `libxl_list_vm` no longer does: it lists from domain 0 and skips only stub domains).
pub fn vm_list(domains: &[DomainInfo]) -> String {
    let mut out = String::from("UUID                                  ID    name\n");
    for d in domains {
        out.push_str(&format!("{}  {}    {:<30}\n", d.uuid, d.domid, d.name));
    }
    out
}

/// `xl info` lines: the name padded to 23 columns, then `": value"`.
pub fn info_lines(fields: &[(String, String)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k:<23}: {v}\n"))
        .collect()
}

/// `xl info FIELD`: the value of every line that starts with FIELD (`xen` gives every
/// `xen_*` value), one per line; nothing when none does.
pub fn info_matching(fields: &[(String, String)], prefix: &str) -> String {
    info_lines(fields)
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| {
            let (_, value) = line.split_once(':')?;
            Some(format!("{}\n", value.strip_prefix(' ')?))
        })
        .collect()
}

/// `xl info -n`: the info lines with xl's `cpu_topology`, `device topology` and `numa_info`
/// sections between the host's lines and the hypervisor's (before `xen_major`), in xl's
/// printf formats (tools/xl/xl_info.c: output_topologyinfo, output_numainfo).
pub fn info_with_topology(
    fields: &[(String, String)],
    t: &rxen_proto::api::HostTopology,
) -> String {
    let at = fields
        .iter()
        .position(|(k, _)| k == "xen_major")
        .unwrap_or(fields.len());
    let (host, rest) = fields.split_at(at);
    let mut out = info_lines(host);
    out.push_str("cpu_topology           :\n");
    out.push_str("cpu:    core    socket     node\n");
    for c in &t.cpus {
        out.push_str(&format!(
            "{:3}:    {:4}     {:4}     {:4}\n",
            c.cpu, c.core, c.socket, c.node
        ));
    }
    out.push_str("device topology        :\n");
    out.push_str("device           node\n");
    for p in &t.pci {
        out.push_str(&format!(
            "{:04x}:{:02x}:{:02x}.{:01x}      {}\n",
            p.seg, p.bus, p.dev, p.func, p.node
        ));
    }
    if t.pci.is_empty() {
        out.push_str("No device topology data available\n");
    }
    out.push_str("numa_info              :\n");
    out.push_str("node:    memsize    memfree    distances\n");
    for n in &t.nodes {
        let dists: Vec<String> = n.distances.iter().map(u32::to_string).collect();
        out.push_str(&format!(
            "{:4}:    {:6}     {:6}      {}\n",
            n.node,
            n.size >> 20,
            n.free >> 20,
            dists.join(",")
        ));
    }
    out.push_str(&info_lines(rest));
    out
}

/// `xl info -x`: the `xenstore_features` line, before `xend_config_format`. rxen has no
/// xenstore, so it has no features.
pub fn with_xenstore_features(fields: &mut Vec<(String, String)>) {
    let at = fields
        .iter()
        .position(|(k, _)| k == "xend_config_format")
        .unwrap_or(fields.len());
    fields.insert(at, ("xenstore_features".into(), "0x00000000".into()));
}

/// xl's uptime text: `"%d days, %2d:%02d:%02d"`, `"%d day, ..."` or `"%2d:%02d:%02d"`.
pub fn uptime_text(secs: u64) -> String {
    let days = secs / 86400;
    let h = (secs / 3600) % 24;
    let m = (secs / 60) % 60;
    let s = secs % 60;
    match days {
        0 => format!("{h:>2}:{m:02}:{s:02}"),
        1 => format!("1 day, {h:>2}:{m:02}:{s:02}"),
        d => format!("{d} days, {h:>2}:{m:02}:{s:02}"),
    }
}

/// xl's short uptime text (`uptime -s`): `"%d days, %2d:%02d"`, `"%d day, %2d:%02d"` or
/// `"%2d:%02d"`.
pub fn short_uptime_text(secs: u64) -> String {
    let days = secs / 86400;
    let h = (secs / 3600) % 24;
    let m = (secs / 60) % 60;
    match days {
        0 => format!("{h:>2}:{m:02}"),
        1 => format!("1 day, {h:>2}:{m:02}"),
        d => format!("{d} days, {h:>2}:{m:02}"),
    }
}

/// One `xl uptime -s` line: `" %s up %s, %s (%d)"`, the first `%s` being the local time of
/// day as `%H:%M:%S` (given here as `clock`).
pub fn short_uptime_line(clock: &str, d: &DomainInfo) -> String {
    format!(
        " {clock} up {}, {} ({})",
        short_uptime_text(d.uptime_s as u64),
        d.name,
        d.domid
    )
}

/// The whole `xl uptime` table: `"%-33s %4s %s"`.
pub fn uptime_table(domains: &[DomainInfo]) -> String {
    let mut out = format!("{:<33} {:>4} {}\n", "Name", "ID", "Uptime");
    for d in domains {
        out.push_str(&format!(
            "{:<33} {:>4} {}\n",
            d.name,
            d.domid,
            uptime_text(d.uptime_s as u64)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn info_n_has_xls_sections_between_the_host_and_the_hypervisor() {
        use rxen_proto::api::{CpuTopology, HostTopology, NodeInfo, PciNode};
        let fields: Vec<(String, String)> = [("free_cpus", "4"), ("xen_major", "0")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let t = HostTopology {
            cpus: vec![
                CpuTopology {
                    cpu: 0,
                    core: 0,
                    socket: 0,
                    node: 0,
                },
                CpuTopology {
                    cpu: 12,
                    core: 3,
                    socket: 1,
                    node: 1,
                },
            ],
            nodes: vec![
                NodeInfo {
                    node: 0,
                    size: 2048 << 20,
                    free: 1000 << 20,
                    distances: vec![10, 21],
                },
                NodeInfo {
                    node: 1,
                    size: 4096 << 20,
                    free: 7 << 20,
                    distances: vec![21, 10],
                },
            ],
            pci: vec![PciNode {
                seg: 0,
                bus: 0x3b,
                dev: 0x1f,
                func: 2,
                node: 1,
            }],
        };
        assert_eq!(
            info_with_topology(&fields, &t),
            "free_cpus              : 4\n\
             cpu_topology           :\n\
             cpu:    core    socket     node\n\
             \x20 0:       0        0        0\n\
             \x2012:       3        1        1\n\
             device topology        :\n\
             device           node\n\
             0000:3b:1f.2      1\n\
             numa_info              :\n\
             node:    memsize    memfree    distances\n\
             \x20  0:      2048       1000      10,21\n\
             \x20  1:      4096          7      21,10\n\
             xen_major              : 0\n"
        );
    }

    use super::*;

    fn dom(name: &str, domid: u32, mem: u64, vcpus: u32, state: &str, t: f64) -> DomainInfo {
        DomainInfo {
            domid,
            name: name.into(),
            uuid: "2f0a3d2e-6c1b-4c8e-9a57-0c7d5f1e8a11".into(),
            memory_mib: mem,
            maxmem_mib: mem,
            vcpus,
            state: state.into(),
            cpu_time_s: t,
            uptime_s: 3725.0,
            config: None,
            config_path: None,
        }
    }

    #[test]
    fn vm_list_matches_xl_columns() {
        let t = vm_list(&[
            dom("Domain-0", 0, 4096, 4, "r-----", 1.0),
            dom("web", 12, 64, 1, "-b----", 1.0),
        ]);
        // printf("%s  %d    %-30s\n", uuid, domid, name), under xl's header.
        assert_eq!(
            t,
            "UUID                                  ID    name\n\
             2f0a3d2e-6c1b-4c8e-9a57-0c7d5f1e8a11  0    Domain-0                      \n\
             2f0a3d2e-6c1b-4c8e-9a57-0c7d5f1e8a11  12    web                           \n"
        );
    }

    #[test]
    fn list_matches_xl_byte_for_byte() {
        // The same printf formats compiled with C give exactly these lines.
        let t = list_table(
            &[
                dom("Domain-0", 0, 4096, 4, "r-----", 1234.5),
                dom("guest1", 3, 1024, 2, "-b----", 12.0),
            ],
            false,
        );
        assert_eq!(
            t,
            "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
             Domain-0                                     0  4096     4     r-----    1234.5\n\
             guest1                                       3  1024     2     -b----      12.0\n"
        );
    }

    #[test]
    fn verbose_list_adds_uuid_reason_and_label() {
        let d = dom("dead", 7, 256, 0, "---sc-", 1.0);
        assert_eq!(
            list_verbose_suffix(&d),
            " 2f0a3d2e-6c1b-4c8e-9a57-0c7d5f1e8a11        3                -"
        );
        let d = dom("live", 8, 256, 1, "-b----", 1.0);
        assert!(list_verbose_suffix(&d).contains("        -"));
    }

    #[test]
    fn info_pads_names_to_23_columns() {
        let f = vec![("host".to_string(), "scarlett".to_string())];
        assert_eq!(info_lines(&f), "host                   : scarlett\n");
        assert_eq!(info_matching(&f, "ho"), "scarlett\n");
    }

    #[test]
    fn info_field_prints_every_line_it_prefixes() {
        let mut f: Vec<(String, String)> = [
            ("xen_major", "0"),
            ("xen_minor", "1"),
            ("xen_version", "0.1.0-rxen"),
            ("xen_commandline", "a=b:c"),
            ("xend_config_format", "4"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(info_matching(&f, "xen_m"), "0\n1\n");
        assert_eq!(info_matching(&f, "xen_commandline"), "a=b:c\n");
        assert_eq!(info_matching(&f, "xen"), "0\n1\n0.1.0-rxen\na=b:c\n4\n");
        assert_eq!(info_matching(&f, "nosuch"), "");
        with_xenstore_features(&mut f);
        assert_eq!(f[4].0, "xenstore_features");
        assert_eq!(f[5].0, "xend_config_format");
    }

    #[test]
    fn short_uptime_pads_hours_as_xl() {
        assert_eq!(short_uptime_text(5 * 3600 + 7 * 60 + 59), " 5:07");
        assert_eq!(short_uptime_text(86400 + 61), "1 day,  0:01");
        assert_eq!(short_uptime_text(2 * 86400 + 13 * 3600), "2 days, 13:00");
        assert_eq!(
            short_uptime_line("09:05:03", &dom("web", 3, 1, 1, "-b----", 0.0)),
            " 09:05:03 up  1:02, web (3)"
        );
    }

    #[test]
    fn uptime_formats() {
        assert_eq!(uptime_text(3725), " 1:02:05");
        assert_eq!(uptime_text(86400 + 61), "1 day,  0:01:01");
        assert_eq!(uptime_text(3 * 86400 + 36000), "3 days, 10:00:00");
        let t = uptime_table(&[dom("web", 5, 1, 1, "-b----", 0.0)]);
        assert_eq!(
            t,
            "Name                                ID Uptime\nweb                                  5  1:02:05\n"
        );
    }
}

/// The header of `xl block-list`: `"%-5s %-3s %-6s %-5s %-6s %-8s %-30s"`.
pub fn block_list_header() -> String {
    format!(
        "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}",
        "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"
    )
}

/// One `xl block-list` row: `"%-5d %-3d %-6d %-5d %-6d %-8d %-30s"` (devid, backend domain 0,
/// the domain as handle, state 4 = connected, no event channel or ring: -1, xenstore path).
pub fn block_list_row(domid: u32, devid: u32) -> String {
    format!(
        "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}",
        devid,
        0,
        domid,
        4,
        -1,
        -1,
        format!("/local/domain/0/backend/vbd/{domid}/{devid}")
    )
}

/// The header of `xl network-list`: `"%-3s %-2s %-17s %-6s %-5s %-6s %5s/%-5s %-30s"`.
pub fn network_list_header() -> String {
    format!(
        "{:<3} {:<2} {:<17} {:<6} {:<5} {:<6} {:>5}/{:<5} {:<30}",
        "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path"
    )
}

/// One `xl network-list` row: `"%-3d %-2d "` MAC `"%6d %5d %6d %5d/%-11d %-30s"`.
pub fn network_list_row(domid: u32, devid: u32, mac: &str) -> String {
    format!(
        "{:<3} {:<2} {}{:>6} {:>5} {:>6} {:>5}/{:<11} {:<30}",
        devid,
        0,
        mac,
        devid,
        4,
        -1,
        -1,
        -1,
        format!("/local/domain/0/backend/vif/{domid}/{devid}")
    )
}

#[cfg(test)]
mod device_tests {
    use super::*;

    #[test]
    fn block_list_matches_xl() {
        assert_eq!(
            block_list_header(),
            "Vdev  BE  handle state evt-ch ring-ref BE-path                       "
        );
        assert_eq!(
            block_list_row(3, 51712),
            "51712 0   3      4     -1     -1       /local/domain/0/backend/vbd/3/51712"
        );
    }

    #[test]
    fn network_list_matches_xl() {
        assert_eq!(
            network_list_header(),
            "Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path                       "
        );
        assert_eq!(
            network_list_row(3, 0, "00:16:3e:00:00:01"),
            "0   0  00:16:3e:00:00:01     0     4     -1    -1/-1          /local/domain/0/backend/vif/3/0"
        );
    }
}

/// One line of `rxl host-shutdown` or `rxl host-start`: the domain, what was done, and why
/// when it did not go as planned.
pub fn host_domain_line(o: &rxen_proto::api::HostDomainOutcome) -> String {
    use rxen_proto::api::HostDomainAction as A;
    let what = match o.action {
        A::Saved => "saved",
        A::ShutDown => "shut down (not saved)",
        A::Destroyed => "destroyed (not saved)",
        A::Restored => "restored",
        A::Created => "created",
        A::AlreadyRunning => "already running",
        A::Failed => "FAILED",
    };
    let mut line = format!("{}: {what}", o.name);
    if let Some(f) = &o.file {
        line.push_str(&format!(" ({f})"));
    }
    if let Some(d) = &o.detail {
        line.push_str(&format!(": {d}"));
    }
    line
}

/// What `rxl backup` says: where the backup went, how long the domain was paused, and each
/// disk with how it was copied.
pub fn backup_line(
    dir: &str,
    paused_ms: u64,
    state_bytes: u64,
    disks: &[rxen_proto::api::BackedUpDisk],
) -> String {
    let disks = disks
        .iter()
        .map(|d| format!("{} {} bytes ({})", d.vdev, d.bytes, d.method))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "Backed up to {dir}: state {state_bytes} bytes{}{disks}; paused {paused_ms} ms",
        if disks.is_empty() { "" } else { ", disks " }
    )
}
