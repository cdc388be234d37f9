//! Pools: the time `rxl host-evacuate` takes to live-migrate every domain off a host of a
//! three-host pool (a test etcd of its own, three rxends on this machine with relocation
//! servers on loopback), for N = 1, 4 and 8 domains, two at a time (the default). QEMU has no
//! pools: its cells say so.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Ctx;
use crate::error::{BenchError, Result};
use crate::report::{Better, Cell, Row, SectionReport};
use crate::rxen::{Domain, RxenHost};

/// The domains' memory, MiB.
const GUEST_MIB: u64 = 64;

/// How many domains each row evacuates.
const COUNTS: &[usize] = &[1, 4, 8];

/// A test etcd: one member on free loopback ports, killed on drop.
struct Etcd {
    child: Child,
    client: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::io("find a free port", e))
}

fn etcd_binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Etcd {
    fn start(bin: &PathBuf) -> Result<Etcd> {
        let dir = tempfile::Builder::new()
            .prefix("rxen-bench-etcd-")
            .tempdir()
            .map_err(|e| BenchError::io("make etcd's directory", e))?;
        let (client, peer) = (free_port()?, free_port()?);
        let c = format!("http://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        let child = Command::new(bin)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("bench={p}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| BenchError::Spawn {
                program: bin.display().to_string(),
                source,
            })?;
        let e = Etcd {
            child,
            client,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !e.healthy() {
            if Instant::now() > deadline {
                return Err(BenchError::timeout("etcd", Duration::from_secs(30)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(e)
    }

    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut a = String::new();
        let _ = s.read_to_string(&mut a);
        a.contains("\"health\":\"true\"")
    }
}

/// The pool: etcd and hosts h1 (evacuated), h2 and h3.
struct PoolHosts {
    hosts: Vec<RxenHost>,
    _etcd: Etcd,
}

fn start_pool(ctx: &Ctx, bin: &PathBuf) -> Result<PoolHosts> {
    let etcd = Etcd::start(bin)?;
    let key = ctx.path().join("pool-relocation.key");
    std::fs::write(&key, "the pool benchmark's relocation key\n")
        .map_err(|e| BenchError::io("write the relocation key", e))?;
    let pool = format!("bench{}", std::process::id());
    let mut hosts = Vec::new();
    for (i, name) in ["h1", "h2", "h3"].iter().enumerate() {
        let port = free_port()?;
        let first_uid = 90_000_000 + (std::process::id() % 1000) * 3000 + i as u32 * 1000;
        hosts.push(RxenHost::start_configured(&format!(
            "[pool]\nendpoints = [\"http://127.0.0.1:{}\"]\nname = \"{pool}\"\nhost = \"{name}\"\n\
             relocation-address = \"127.0.0.1:{port}\"\n\
             [relocation]\nserver = true\naddress = \"127.0.0.1\"\nport = {port}\n\
             hosts-allow = [\"^127\\\\.0\\\\.0\\\\.1$\"]\nkey-file = \"{}\"\n\
             [sandbox]\nfirst-uid = {first_uid}\nuid-count = 1000\n",
            etcd.client,
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
    let pending = match (ctx.rxen_blocked(None), etcd_binary()) {
        (Some(why), _) => Some(why),
        (None, None) => Some("etcd is not installed (Debian's etcd-server)".to_string()),
        (None, Some(_)) => match ctx.host() {
            Ok(h) if !h.rxl_has("host-evacuate") => {
                Some("`rxl host-evacuate` has not landed here".to_string())
            }
            _ => None,
        },
    };
    let pool = match (&pending, etcd_binary()) {
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
