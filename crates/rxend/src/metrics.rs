//! The opt-in metrics listener (`rxend --metrics-listen ADDR:PORT`): every
//! counter rxend keeps, in Prometheus text format, at `GET /metrics`, over
//! a minimal HTTP/1.0 server.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rxen_proto::api::Counters;

use crate::auth::Caller;
use crate::daemon::Daemon;

/// Errors of the metrics listener.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Binds the metrics address.
pub fn bind(addr: &str) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr).map_err(|source| MetricsError::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// Serves `/metrics` forever, one short-lived thread per connection.
pub fn serve(daemon: Arc<Daemon>, listener: TcpListener) {
    let d = Arc::clone(&daemon);
    crate::accept::serve(
        &daemon.log,
        "metrics",
        crate::accept::Limits {
            total: 16,
            per_peer: 4,
        },
        || listener.accept().map(|(s, _)| s),
        |s: &TcpStream| s.peer_addr().ok().map(|a| a.ip().to_string()),
        move |conn| {
            let _ = handle(&d, conn);
        },
    );
}

fn handle(daemon: &Daemon, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            // Metrics are the operator's view: every domain, as root sees them.
            let c = daemon.counters(&Caller::from_uid(0));
            ("200 OK", "text/plain; version=0.0.4", render(&c))
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is supported\n".into(),
        ),
    };
    let mut w = stream;
    write!(
        w,
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

/// Escapes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the counters in Prometheus text format (version 0.0.4).
pub fn render(c: &Counters) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let h = &c.host;
    family(
        "rxen_host_memory_total_bytes",
        "gauge",
        "Host memory.",
        vec![(String::new(), (h.total_kib * 1024).to_string())],
    );
    family(
        "rxen_host_memory_free_bytes",
        "gauge",
        "Free (available) host memory.",
        vec![(String::new(), (h.free_kib * 1024).to_string())],
    );
    family(
        "rxen_host_cpus",
        "gauge",
        "Online host CPUs.",
        vec![(String::new(), h.nr_cpus.to_string())],
    );
    family(
        "rxen_domains",
        "gauge",
        "Domains known to rxend, Domain-0 included.",
        vec![(String::new(), c.domains.len().to_string())],
    );
    let dl = |d: &rxen_proto::api::DomainCounters| {
        format!("{{domid=\"{}\",name=\"{}\"}}", d.domid, label(&d.name))
    };
    let per = |f: &dyn Fn(&rxen_proto::api::DomainCounters) -> String| {
        c.domains.iter().map(|d| (dl(d), f(d))).collect::<Vec<_>>()
    };
    family(
        "rxen_domain_cpu_seconds_total",
        "counter",
        "CPU time used by the domain over its life.",
        per(&|d| format!("{:.9}", d.cpu_ns as f64 / 1e9)),
    );
    let mut vcpu_rows = Vec::new();
    for d in &c.domains {
        for (i, ns) in d.vcpu_ns.iter().enumerate() {
            vcpu_rows.push((
                format!(
                    "{{domid=\"{}\",name=\"{}\",vcpu=\"{i}\"}}",
                    d.domid,
                    label(&d.name)
                ),
                format!("{:.9}", *ns as f64 / 1e9),
            ));
        }
    }
    family(
        "rxen_vcpu_cpu_seconds_total",
        "counter",
        "CPU time used by one vCPU of the current VMM.",
        vcpu_rows,
    );
    family(
        "rxen_domain_memory_bytes",
        "gauge",
        "Current memory of the domain.",
        per(&|d| (d.mem_kib * 1024).to_string()),
    );
    family(
        "rxen_domain_maxmem_bytes",
        "gauge",
        "Maximum memory of the domain (absent: no limit).",
        c.domains
            .iter()
            .filter_map(|d| d.maxmem_kib.map(|m| (dl(d), (m * 1024).to_string())))
            .collect(),
    );
    family(
        "rxen_domain_vcpus",
        "gauge",
        "Online vCPUs.",
        per(&|d| d.vcpus.to_string()),
    );
    family(
        "rxen_domain_running",
        "gauge",
        "1 when the domain has a running VMM that is not paused.",
        per(&|d| u8::from(d.state.starts_with('r') || d.state.starts_with("-b")).to_string()),
    );
    family(
        "rxen_domain_sched_weight",
        "gauge",
        "Credit scheduler weight.",
        per(&|d| d.weight.to_string()),
    );
    family(
        "rxen_domain_sched_cap_percent",
        "gauge",
        "Credit scheduler cap in percent of one host CPU (0: none).",
        per(&|d| d.cap.to_string()),
    );
    family(
        "rxen_domain_net_interfaces",
        "gauge",
        "Network interfaces.",
        per(&|d| d.nets.to_string()),
    );
    family(
        "rxen_domain_net_transmit_bytes_total",
        "counter",
        "Bytes the guest sent.",
        per(&|d| d.net_tx_bytes.to_string()),
    );
    family(
        "rxen_domain_net_receive_bytes_total",
        "counter",
        "Bytes the guest received.",
        per(&|d| d.net_rx_bytes.to_string()),
    );
    family(
        "rxen_domain_block_devices",
        "gauge",
        "Virtual block devices.",
        per(&|d| d.vbds.to_string()),
    );
    family(
        "rxen_domain_block_read_requests_total",
        "counter",
        "Block read requests.",
        per(&|d| d.vbd_rd.to_string()),
    );
    family(
        "rxen_domain_block_write_requests_total",
        "counter",
        "Block write requests.",
        per(&|d| d.vbd_wr.to_string()),
    );
    family(
        "rxen_domain_block_read_sectors_total",
        "counter",
        "Sectors read.",
        per(&|d| d.vbd_rsect.to_string()),
    );
    family(
        "rxen_domain_block_write_sectors_total",
        "counter",
        "Sectors written.",
        per(&|d| d.vbd_wsect.to_string()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rxen_proto::api::{DomainCounters, HostCounters};

    #[test]
    fn renders_families_with_labels() {
        let c = Counters {
            host: HostCounters {
                total_kib: 1024,
                free_kib: 512,
                nr_cpus: 2,
                cpu_mhz: 2000.0,
            },
            domains: vec![DomainCounters {
                domid: 3,
                name: "we\"b".into(),
                state: "-b----".into(),
                cpu_ns: 1_500_000_000,
                mem_kib: 65536,
                maxmem_kib: Some(65536),
                vcpus: 2,
                vcpu_ns: vec![1_000_000_000, 500_000_000],
                weight: 512,
                cap: 50,
                nets: 0,
                net_tx_bytes: 0,
                net_rx_bytes: 0,
                vbds: 0,
                vbd_oo: 0,
                vbd_rd: 0,
                vbd_wr: 0,
                vbd_rsect: 0,
                vbd_wsect: 0,
                nics: Vec::new(),
                disks: Vec::new(),
            }],
        };
        let text = render(&c);
        assert!(text.contains("# TYPE rxen_domain_cpu_seconds_total counter\n"));
        assert!(text
            .contains("rxen_domain_cpu_seconds_total{domid=\"3\",name=\"we\\\"b\"} 1.500000000\n"));
        assert!(text.contains(
            "rxen_vcpu_cpu_seconds_total{domid=\"3\",name=\"we\\\"b\",vcpu=\"1\"} 0.500000000\n"
        ));
        assert!(text.contains("rxen_host_memory_total_bytes 1048576\n"));
        assert!(text.contains("rxen_domain_sched_weight{domid=\"3\",name=\"we\\\"b\"} 512\n"));
    }
}
