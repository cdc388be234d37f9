//! The pool's tables: `rxl host-list` and `rxl list --pool` (xl has neither; the formats are
//! rxen's own, described in docs/pools.md, with whitespace-separated columns for scripts).

use rxen_proto::api::{DomainInfo, PoolDomain, PoolHost, PoolHostState};

use crate::format::{list_row, LIST_HEADER};

/// The header of `rxl host-list`.
pub const HOST_HEADER: &str =
    "Name                 State                MemFree  MemTotal  CPUs   Load  Domains";

/// A host's state as `rxl host-list` prints it.
pub fn state_word(s: PoolHostState) -> &'static str {
    match s {
        PoolHostState::Up => "up",
        PoolHostState::Disabled => "disabled",
        PoolHostState::DownLeaseExpired => "down-lease-expired",
    }
}

/// One `rxl host-list` row: name (20, longer names push the rest right), state (18), free and
/// total memory in MiB, CPUs, the one-minute load, the pool's domains on the host.
pub fn host_row(h: &PoolHost) -> String {
    format!(
        "{:<20} {:<18} {:>9} {:>9} {:>5} {:>6.2} {:>8}",
        h.name,
        state_word(h.state),
        h.mem_free_mib,
        h.mem_total_mib,
        h.cpus,
        h.load,
        h.domains
    )
}

/// The whole `rxl host-list` table, then a line naming the pool's leader (`Leader: HOST`,
/// or `Leader: none` while no host leads).
pub fn host_table(hosts: &[PoolHost]) -> String {
    let mut out = format!("{HOST_HEADER}\n");
    for h in hosts {
        out.push_str(&host_row(h));
        out.push('\n');
    }
    let leader = hosts.iter().find(|h| h.leader).map_or("none", |h| &h.name);
    out.push_str(&format!("Leader: {leader}\n"));
    out
}

/// The header of `rxl list --pool`: xl's, and a Host column.
pub fn domain_header() -> String {
    format!("{LIST_HEADER}  Host")
}

/// One `rxl list --pool` row: xl's row, two spaces and the host.
pub fn domain_row(d: &PoolDomain) -> String {
    let info = DomainInfo {
        domid: d.domid,
        name: d.name.clone(),
        uuid: String::new(),
        memory_mib: d.memory_mib,
        maxmem_mib: d.memory_mib,
        vcpus: d.vcpus,
        state: d.state.clone(),
        cpu_time_s: d.cpu_time_s,
        uptime_s: 0.0,
        config: None,
        config_path: None,
    };
    format!("{}  {}", list_row(&info), d.host)
}

/// The whole `rxl list --pool` table.
pub fn domain_table(domains: &[PoolDomain]) -> String {
    let mut out = domain_header();
    out.push('\n');
    for d in domains {
        out.push_str(&domain_row(d));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rows_line_up_under_the_header() {
        let h = PoolHost {
            name: "h1".into(),
            state: PoolHostState::DownLeaseExpired,
            disabled: false,
            mem_free_mib: 1024,
            mem_total_mib: 23976,
            cpus: 2,
            load: 0.5,
            domains: 3,
            version: "0.1.0".into(),
            relocation_address: None,
            updated: 0.0,
            leader: true,
        };
        let row = host_row(&h);
        assert_eq!(row.len(), HOST_HEADER.len(), "{row}\n{HOST_HEADER}");
        let words: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            words,
            [
                "h1",
                "down-lease-expired",
                "1024",
                "23976",
                "2",
                "0.50",
                "3"
            ]
        );
        let d = PoolDomain {
            name: "web".into(),
            host: "h2".into(),
            domid: 4,
            memory_mib: 128,
            vcpus: 2,
            state: "r-----".into(),
            cpu_time_s: 1.5,
        };
        let words: Vec<String> = domain_row(&d)
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(words, ["web", "4", "128", "2", "r-----", "1.5", "h2"]);
        assert!(domain_table(&[d]).starts_with("Name "));
        assert!(host_table(std::slice::from_ref(&h)).ends_with("\nLeader: h1\n"));
        let follower = PoolHost { leader: false, ..h };
        assert!(host_table(&[follower]).ends_with("\nLeader: none\n"));
    }
}
