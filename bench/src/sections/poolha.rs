//! Pool HA (issue 18): the time from a host's death (its rxend and VMMs killed with SIGKILL)
//! to its `ha = 1` domain's first heartbeat on another host, for a given lease TTL. Two rxend
//! "hosts" on this machine join a pool on an etcd of the section's own (loopback); the pool's
//! leader restarts the domain once the dead host's lease expired. QEMU has no pools: its cells
//! say so.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Ctx;
use crate::error::{BenchError, Result};
use crate::report::{Better, Cell, Row, SectionReport};
use crate::rxen::RxenHost;

/// etcd's binary (Debian's `etcd-server`), if installed.
fn etcd_binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::io("find a free port", e))
}

/// A single-member etcd on loopback with its own data directory; killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start(bin: &PathBuf) -> Result<Etcd> {
        let dir = tempfile::Builder::new()
            .prefix("rxen-bench-etcd-")
            .tempdir()
            .map_err(|e| BenchError::io("make etcd's directory", e))?;
        let (client, peer) = (free_port()?, free_port()?);
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(bin)
            .arg("--name")
            .arg("bench")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
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
            endpoint,
            _dir: dir,
        };
        wait(
            Duration::from_secs(30),
            "etcd answering",
            || Ok(e.healthy()),
        )?;
        Ok(e)
    }

    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://");
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 50 ms until it holds, or fails after `timeout`.
fn wait(timeout: Duration, what: &str, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::timeout(what, timeout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lease TTLs measured, seconds.
fn ttls(quick: bool) -> &'static [u64] {
    if quick {
        &[3]
    } else {
        &[3, 10]
    }
}

/// One row per TTL: seconds from SIGKILL of the host to the first heartbeat elsewhere.
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let etcd = etcd_binary()
        .ok_or_else(|| "etcd is not installed (Debian's etcd-server)".to_string())
        .and_then(|b| Etcd::start(&b).map_err(|e| e.to_string()));
    let mut rows = Vec::new();
    for &ttl in ttls(ctx.quick) {
        let mut row = Row::new(
            "host killed → its ha domain's first heartbeat elsewhere",
            &format!("16 MiB, 1 vCPU, ha = 1; lease TTL {ttl} s"),
            "s",
            2,
            Better::Lower,
        );
        match &etcd {
            Ok(e) => {
                for _ in 0..ctx.runs {
                    let pool = ctx.name("bha");
                    row.rxen.push(one(e, &pool, ttl));
                }
            }
            Err(why) => row.rxen = Cell::Pending(why.clone()),
        }
        row.qemu = Cell::NotApplicable("QEMU has no pools".into());
        rows.push(row);
    }
    SectionReport {
        title: "pool-ha".into(),
        versus: None,
        rows,
        method: vec![
            "two rxend hosts on this machine (own sockets and state directories) join a \
             fresh pool on an etcd of the section's own (one member, loopback, etcd's defaults); \
             once both are up and a leader is elected, host A boots a 16 MiB test guest with \
             `ha = 1`; then A's rxend and VMMs are killed with SIGKILL and the clock starts. It \
             stops at the first `heartbeat N` the guest answers on host B (polling B's `rxl list` \
             every 50 ms, then `rxl console`). That is the lease running out (at most the TTL \
             after A's last renewal, which came up to a third of the TTL before the kill), the \
             leader's next look (every third of the TTL) and the new boot."
                .into(),
        ],
    }
}

/// One measurement in pool `pool` with lease `ttl`: seconds.
fn one(etcd: &Etcd, pool: &str, ttl: u64) -> Result<f64> {
    let config = |host: &str| {
        format!(
            "[pool]\nendpoints = [\"{}\"]\nname = \"{pool}\"\nhost = \"{host}\"\nttl = {ttl}\n",
            etcd.endpoint
        )
    };
    let mut a = RxenHost::start_configured(&config("a"))?;
    let b = RxenHost::start_configured(&config("b"))?;
    wait(
        Duration::from_secs(30),
        "both hosts up and a leader",
        || {
            let Ok(list) = b.rxl(&["host-list"]) else {
                return Ok(false);
            };
            let up = list
                .lines()
                .filter(|l| l.split_whitespace().nth(1) == Some("up"))
                .count();
            Ok(up == 2
                && list
                    .lines()
                    .any(|l| l.starts_with("Leader: ") && l != "Leader: none"))
        },
    )?;
    let name = format!("{pool}-ha");
    let mut d = a.boot(&name, 16, 1, "ha = 1")?;
    d.console.heartbeat(Duration::from_secs(10))?;
    drop(d);
    a.kill_all();
    let killed = Instant::now();
    let limit = Duration::from_secs(ttl + 60);
    wait(limit, "the domain on host B", || {
        Ok(b.rxl(&["domid", &name]).is_ok())
    })?;
    let mut d = b.attach(&name)?;
    let left = limit.saturating_sub(killed.elapsed());
    d.console.heartbeat(left)?;
    Ok(killed.elapsed().as_secs_f64())
}
