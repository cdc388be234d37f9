//! "Memory intact after migration": does every write the guest makes during a live
//! migration reach the target? Both monitors send what KVM's dirty log (and, for rxen, the
//! VMM's own bitmap of device writes) reports; this row checks the result from inside the guest.
//!
//! Each run: the guest fills its free memory with seed A (`memfill A`) and hashes it
//! (`memsum`: the expected value), fills it with seed B, then starts `memfill A` again and
//! the migration starts at once, while the guest rewrites every page from B to A. A page
//! the guest rewrote after it was sent, and that the dirty log did not report, reaches the
//! target with B's words: the target's `memsum` (once the fill is done there) differs.

use std::cell::Cell as Flag;
use std::time::Duration;

use serde_json::json;

use super::migration::{free_port, target_unless};
use super::saverestore::QEMU_MAX_BANDWIDTH;
use super::Ctx;
use crate::console::Console;
use crate::error::{BenchError, Result};
use crate::qemu::{Qemu, QemuSpec};
use crate::report::{Better, Cell, Row, SectionReport};
use crate::rxen::RxenHost;

/// The guest's memory: its free region (about all of it) is rewritten during the migration.
/// Small, as in the e2e test: under PVM `memfill` writes about a MiB a second on a loaded
/// host, and each run fills the region three times.
const GUEST_MIB: u64 = 16;
/// The seed of the final contents (what must arrive).
const SEED_FINAL: u64 = 42;
/// The seed of the contents the migration starts from.
const SEED_BEFORE: u64 = 7;
/// How long a fill of the whole free region, or the guest's answer after it, may take.
const FILL_TIMEOUT: Duration = Duration::from_secs(300);

/// What one run found.
struct Outcome {
    /// Whether the target's memory hashed to the expected value (else why not).
    intact: std::result::Result<(), String>,
    /// Whether the rewrite was still running when the guest paused (its end printed on the target).
    rewriting_at_pause: bool,
}

/// Fills the free region with `seed` and waits for the end of the fill.
fn fill(con: &mut Console, seed: u64) -> Result<()> {
    con.send(&format!("memfill {seed}"))?;
    con.wait_contains("memfill done", FILL_TIMEOUT).map(|_| ())
}

/// Asks for `memsum` and returns its value.
fn memsum(con: &mut Console) -> Result<u64> {
    con.send("memsum")?;
    let line = con.wait_for("memsum 0x...", FILL_TIMEOUT, |l| {
        l.trim().starts_with("memsum 0x")
    })?;
    parse_memsum(&line).ok_or_else(|| BenchError::Unexpected(format!("odd memsum line {line:?}")))
}

fn parse_memsum(line: &str) -> Option<u64> {
    let hex = line.trim().strip_prefix("memsum 0x")?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Before the migration: the expected hash (of a fill with [`SEED_FINAL`]), then the memory
/// refilled with [`SEED_BEFORE`], then the rewrite to [`SEED_FINAL`] started (the guest
/// echoed the command). Returns the expected hash.
fn prepare(con: &mut Console) -> Result<u64> {
    fill(con, SEED_FINAL)?;
    let expected = memsum(con)?;
    fill(con, SEED_BEFORE)?;
    con.send(&format!("memfill {SEED_FINAL}"))?;
    // The echo shows the guest took the command and is rewriting.
    con.wait_contains(&format!("memfill {SEED_FINAL}"), Duration::from_secs(10))?;
    Ok(expected)
}

/// After arrival: a marker command (answered only once the rewrite is done), then
/// `memsum`; whether the rewrite's end was printed here, and the comparison.
fn verify(
    con: &mut Console,
    mark: &str,
    expected: u64,
) -> Result<(bool, std::result::Result<(), String>)> {
    con.send(mark)?;
    let done_here = Flag::new(false);
    let answer = format!("unknown command: {mark}");
    con.wait_for(&answer, FILL_TIMEOUT, |l| {
        if l.contains("memfill done") {
            done_here.set(true);
        }
        l.contains(&answer)
    })?;
    let got = memsum(con)?;
    let intact = if got == expected {
        Ok(())
    } else {
        Err(format!(
            "memsum {got:#018x} on arrival, {expected:#018x} expected"
        ))
    };
    Ok((done_here.get(), intact))
}

/// K live migrations per monitor of a guest rewriting its memory; how many arrive intact.
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let guest =
        format!("{GUEST_MIB} MiB, 1 vCPU, rewriting all its free memory during the migration");
    let mut intact = Row::new(
        "migration: memory intact after migration",
        &guest,
        "intact",
        0,
        Better::Higher,
    );
    let mut overlap = Row::new(
        "migration: still rewriting when the guest paused",
        &guest,
        "runs",
        0,
        Better::Neither,
    );
    for r in [&mut intact, &mut overlap] {
        r.rxen = Cell::tally();
        r.qemu = Cell::tally();
    }
    let mut rxen_blocked = ctx.rxen_blocked(None);
    let key = ctx.path().join("relocation-intact.key");
    let target = target_unless(&mut rxen_blocked, &key);
    let qemu_blocked = ctx.qemu_unavailable.clone();
    for _ in 0..ctx.runs {
        if let Some((t, port)) = &target {
            let name = ctx.name("intact");
            let mark = ctx.name("mk");
            let o = ctx
                .host()
                .and_then(|src| rxen_run(src, t, &name, &mark, *port, &key));
            record(&mut intact, &mut overlap, true, o);
        }
        if qemu_blocked.is_none() {
            let o = qemu_run(ctx);
            record(&mut intact, &mut overlap, false, o);
        }
    }
    for r in [&mut intact, &mut overlap] {
        if let Some(why) = &rxen_blocked {
            r.rxen = Cell::Pending(why.clone());
        }
        if let Some(why) = &qemu_blocked {
            if !matches!(r.qemu, Cell::NotApplicable(_)) {
                r.qemu = Cell::Pending(why.clone());
            }
        }
    }
    SectionReport {
        title: "migration".into(),
        versus: None,
        rows: vec![intact, overlap],
        method: vec![
            format!(
                "\"memory intact after migration\": per run, the test guest fills its free memory \
                 (all but the image and a MiB of its {GUEST_MIB} MiB) with seed {SEED_FINAL} and hashes it (`memsum`, FNV-1a over \
                 every word: the expected value), refills it with seed {SEED_BEFORE}, then starts \
                 `memfill {SEED_FINAL}` and the live migration starts as soon as the guest echoes \
                 the command (same transports and settings as the rows above). On the target a \
                 marker command (answered once the rewrite is done) and `memsum` follow; the run is \
                 intact when it equals the expected value. A page rewritten after it was sent that \
                 the dirty log did not report arrives with seed {SEED_BEFORE}'s words and changes \
                 the hash. \"still rewriting when the guest paused\" counts the runs whose rewrite \
                 ended on the target (its `memfill done` printed there), so that the last round \
                 had writes to catch; in the others it ended during pre-copy."
            ),
        ],
    }
}

fn record(intact: &mut Row, overlap: &mut Row, rxen: bool, o: Result<Outcome>) {
    let (i, v) = if rxen {
        (&mut intact.rxen, &mut overlap.rxen)
    } else {
        (&mut intact.qemu, &mut overlap.qemu)
    };
    match o {
        Ok(o) => {
            i.push_check::<String>(Ok(o.intact));
            v.push_check::<String>(Ok(if o.rewriting_at_pause {
                Ok(())
            } else {
                Err("the rewrite ended before the pause".into())
            }));
        }
        Err(e) => {
            let e = e.to_string();
            i.push_check::<String>(Err(e.clone()));
            v.push_check::<String>(Err(e));
        }
    }
}

/// One rxen run: boot on `src`, prepare, migrate to `target` (127.0.0.2:`port`), verify.
fn rxen_run(
    src: &RxenHost,
    target: &RxenHost,
    name: &str,
    mark: &str,
    port: u16,
    key: &std::path::Path,
) -> Result<Outcome> {
    let r = (|| {
        let mut d = src.boot(name, GUEST_MIB, 1, "")?;
        let expected = prepare(&mut d.console)?;
        src.migrate_to_target(&[], port, key, name)?;
        drop(d);
        let (rewriting_at_pause, intact) = verify_on(target, name, mark, expected)?;
        Ok(Outcome {
            intact,
            rewriting_at_pause,
        })
    })();
    src.destroy(name);
    target.destroy(name);
    r
}

/// Attaches to the migrated domain on the target and verifies its memory; an `rxl console`
/// that closes at once (the target's console may take a moment to open after `rxl migrate`
/// returns) is tried again.
fn verify_on(
    target: &RxenHost,
    name: &str,
    mark: &str,
    expected: u64,
) -> Result<(bool, std::result::Result<(), String>)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut d = target.attach(name)?;
        match verify(&mut d.console, mark, expected) {
            Err(e)
                if !matches!(e, BenchError::Timeout { .. })
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            r => return r,
        }
    }
}

/// One QEMU run: boot, prepare, migrate to a second QEMU over loopback, verify there.
fn qemu_run(ctx: &mut Ctx) -> Result<Outcome> {
    let tag = ctx.name("intact");
    let mark = ctx.name("mk");
    let spec = QemuSpec {
        memory_mib: GUEST_MIB,
        vcpus: 1,
        incoming: None,
    };
    let mut src = Qemu::boot(&ctx.qemu, &spec, ctx.path(), &tag)?;
    let port = free_port()?;
    let dst_spec = QemuSpec {
        incoming: Some(format!("tcp:127.0.0.1:{port}")),
        ..spec.clone()
    };
    let mut dst = Qemu::spawn(&ctx.qemu, &dst_spec, ctx.path(), &format!("{tag}d"))?;
    let r = dst.qmp("query-status", json!({}));
    dst.explain(r)?;
    src.qmp(
        "migrate-set-parameters",
        json!({ "max-bandwidth": QEMU_MAX_BANDWIDTH }),
    )?;
    let expected = prepare(&mut src.console)?;
    src.qmp("migrate", json!({ "uri": format!("tcp:127.0.0.1:{port}") }))?;
    src.wait_migration(Duration::from_secs(120))?;
    let r = dst.wait_running(Duration::from_secs(30));
    dst.explain(r)?;
    let (rewriting_at_pause, intact) = verify(&mut dst.console, &mark, expected)?;
    Ok(Outcome {
        intact,
        rewriting_at_pause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memsum_lines_parse() {
        assert_eq!(parse_memsum("memsum 0x00000000000000ff"), Some(255));
        assert_eq!(parse_memsum("memsum 0xzz"), None);
    }
}
