//! Pools: the time `rxl host-evacuate` takes to live-migrate every domain off a host of a
//! three-host pool (a test etcd of its own, three rxends on this machine with relocation
//! servers on loopback), for N = 1, 4 and 8 domains, two at a time (the default). QEMU has no
//! pools: its cells say so.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::migration::free_port;
use super::Ctx;
use crate::error::{BenchError, Result};
use crate::report::{Better, Cell, Row, SectionReport};
use crate::rxen::{Domain, RxenHost};

/// The domains' memory, MiB.
const GUEST_MIB: u64 = 64;

/// How many domains each row evacuates.
const COUNTS: &[usize] = &[1, 4, 8];

/// The pool: etcd and hosts h1 (evacuated), h2 and h3.
struct PoolHosts {
    hosts: Vec<RxenHost>,
    _etcd: crate::etcd::Etcd,
}

fn start_pool(ctx: &Ctx, bin: &PathBuf) -> Result<PoolHosts> {
    let etcd = crate::etcd::Etcd::start(bin)?;
    let key = ctx.path().join("pool-relocation.key");
    std::fs::write(&key, "the pool benchmark's relocation key\n")
        .map_err(|e| BenchError::io("write the relocation key", e))?;
    let pool = format!("bench{}", std::process::id());
    let mut hosts = Vec::new();
    for (i, name) in ["h1", "h2", "h3"].iter().enumerate() {
        let port = free_port()?;
        let first_uid = 90_000_000 + (std::process::id() % 1000) * 3000 + i as u32 * 1000;
        hosts.push(RxenHost::start_configured(&format!(
            "[pool]\nendpoints = [\"{}\"]\nname = \"{pool}\"\nhost = \"{name}\"\n\
             relocation-address = \"127.0.0.1:{port}\"\n\
             [relocation]\nserver = true\naddress = \"127.0.0.1\"\nport = {port}\n\
             hosts-allow = [\"^127\\\\.0\\\\.0\\\\.1$\"]\nkey-file = \"{}\"\n\
             [sandbox]\nfirst-uid = {first_uid}\nuid-count = 1000\n",
            etcd.endpoint(),
            key.display()
        ))?);
    }
    let p = PoolHosts { hosts, _etcd: etcd };
    // Every host registered (and its relocation server up: it starts before the pool).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = p.hosts[0]
            .rxl(&["host-list"])
            .map(|t| t.lines().skip(1).filter(|l| l.contains(" up ")).count())
            .unwrap_or(0);
        if up == 3 {
            return Ok(p);
        }
        if Instant::now() > deadline {
            return Err(BenchError::timeout(
                "three pool hosts up",
                Duration::from_secs(30),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One evacuation of `n` freshly booted domains off h1: seconds `rxl host-evacuate` took.
fn evacuate_once(ctx: &mut Ctx, p: &PoolHosts, n: usize) -> Result<f64> {
    let h1 = &p.hosts[0];
    h1.rxl(&["host-enable", "h1"])?;
    let names: Vec<String> = (0..n).map(|_| ctx.name("evac")).collect();
    let mut domains: Vec<Domain> = Vec::new();
    for name in &names {
        domains.push(h1.boot(name, GUEST_MIB, 1, "")?);
    }
    let t = Instant::now();
    let r = h1.rxl(&["host-evacuate", "h1"]);
    let secs = t.elapsed().as_secs_f64();
    drop(domains);
    for name in &names {
        for h in &p.hosts {
            h.destroy(name);
        }
    }
    let out = r?;
    let moved = out.lines().filter(|l| l.contains(" moved to ")).count();
    if moved != n {
        return Err(BenchError::Unexpected(format!(
            "host-evacuate moved {moved} of {n} domains: {out}"
        )));
    }
    Ok(secs)
}

/// Evacuation time for N = 1, 4, 8.
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let mut rows: Vec<Row> = COUNTS
        .iter()
        .map(|n| {
            let mut r = Row::new(
                &format!(
                    "host-evacuate, {n} domain{}",
                    if *n == 1 { "" } else { "s" }
                ),
                &format!("{GUEST_MIB} MiB, 1 vCPU, idle; 2 at a time"),
                "s",
                2,
                Better::Lower,
            );
            r.qemu = Cell::Pending("QEMU has no pools".into());
            r
        })
        .collect();
    let pending = match (ctx.rxen_blocked(None), crate::etcd::binary()) {
        (Some(why), _) => Some(why),
        (None, None) => Some("etcd is not installed (Debian's etcd-server)".to_string()),
        (None, Some(_)) => match ctx.host() {
            Ok(h) if !h.rxl_has("host-evacuate") => {
                Some("`rxl host-evacuate` has not landed here".to_string())
            }
            _ => None,
        },
    };
    let pool = match (&pending, crate::etcd::binary()) {
        (None, Some(bin)) => start_pool(ctx, &bin).map_err(|e| e.to_string()),
        (Some(why), _) => Err(why.clone()),
        (None, None) => Err("etcd is not installed".to_string()),
    };
    match &pool {
        Ok(p) => {
            for _ in 0..ctx.runs {
                for (row, n) in rows.iter_mut().zip(COUNTS) {
                    row.rxen.push(evacuate_once(ctx, p, *n));
                }
            }
        }
        Err(why) => {
            for row in &mut rows {
                row.rxen = Cell::Pending(why.clone());
            }
        }
    }
    SectionReport {
        title: "Pools (issue 18)".into(),
        versus: None,
        rows,
        method: vec![
            "host-evacuate: three rxends on this machine joined to one pool on a test etcd \
             (relocation servers on loopback, one key, hosts-allow 127.0.0.1); N test guests \
             booted on h1, then the wall time of `rxl host-evacuate h1` (default --parallel 2): \
             it disables h1, then live-migrates each domain to the host placement chooses and \
             returns when all have moved"
                .into(),
        ],
    }
}
