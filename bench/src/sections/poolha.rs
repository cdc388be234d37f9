//! Pool HA (issue 18): the time from a host's death (its rxend and VMMs killed with SIGKILL)
//! to its `ha = 1` domain's first heartbeat on another host, for a given lease TTL. Two rxend
//! "hosts" on this machine join a pool on an etcd of the section's own (loopback); the pool's
//! leader restarts the domain once the dead host's lease expired. QEMU has no pools: its cells
//! say so.

use std::time::{Duration, Instant};

use super::Ctx;
use crate::error::{BenchError, Result};
use crate::report::{Better, Cell, Row, SectionReport};
use crate::rxen::RxenHost;

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
    let etcd = crate::etcd::binary()
        .ok_or_else(|| "etcd is not installed (Debian's etcd-server)".to_string())
        .and_then(|b| crate::etcd::Etcd::start(&b).map_err(|e| e.to_string()));
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
fn one(etcd: &crate::etcd::Etcd, pool: &str, ttl: u64) -> Result<f64> {
    let config = |host: &str| {
        format!(
            "[pool]\nendpoints = [\"{}\"]\nname = \"{pool}\"\nhost = \"{host}\"\nttl = {ttl}\n",
            etcd.endpoint()
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
