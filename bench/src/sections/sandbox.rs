//! Sandbox: what confining the VMM costs (its jail: namespaces, an empty root, a uid of its
//! own; per-thread seccomp filters, no capabilities, no_new_privs), against the same rxen with
//! `rxend --no-sandbox`.

use std::time::Duration;

use super::migration::{rxen_migrate, start_target};
use super::{boot, memory, Ctx};
use crate::error::{BenchError, Result};
use crate::procfs;
use crate::report::{Better, Cell, Row, SectionReport, Versus};
use crate::rxen::RxenHost;

/// One setting's hosts: the rxend that boots guests, and the migration
/// target (with its relocation port), each with the sandbox on or off.
struct Setting {
    sandbox: bool,
    host: std::result::Result<RxenHost, String>,
    target: std::result::Result<(RxenHost, u16), String>,
}

/// The cells of one setting: one column of the table.
struct Column {
    boot: Cell,
    memory: Cell,
    downtime: Cell,
    total: Cell,
}

/// Boot time, idle monitor memory and migration downtime, with the sandbox on
/// and off, alternating the order run by run.
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let settle = Duration::from_millis(if ctx.quick { 300 } else { 1000 });
    let (boot_mib, mem_mib, mig_mib) = (128u64, 128u64, 256u64);
    let unsandbox = RxenHost::can_unsandbox();
    let settings = [true, false].map(|sandbox| start(ctx, sandbox, unsandbox));
    let migrate_pending = match &settings[0].host {
        Ok(h) if !h.rxl_has("migrate") => Some("`rxl migrate` has not landed here".to_string()),
        _ => None,
    };
    let mut columns = [(); 2].map(|()| Column {
        boot: Cell::empty(),
        memory: Cell::empty(),
        downtime: Cell::empty(),
        total: Cell::empty(),
    });
    for run in 0..ctx.runs {
        // On then off in even runs, off then on in odd ones, so that a drift in
        // the host's load weighs on both alike.
        let order: [usize; 2] = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let s = &settings[i];
            let Ok(host) = &s.host else { continue };
            let check = confinement_check(s.sandbox);
            let name = ctx.name("sbboot");
            columns[i]
                .boot
                .push(boot::rxen_boot_ms(host, &name, boot_mib, 1, &check));
        }
        for i in order {
            let s = &settings[i];
            let Ok(host) = &s.host else { continue };
            let check = confinement_check(s.sandbox);
            let name = ctx.name("sbmem");
            columns[i]
                .memory
                .push(memory::rxen_own_mib(host, &name, mem_mib, settle, &check));
        }
        if migrate_pending.is_some() {
            continue;
        }
        for i in order {
            let s = &settings[i];
            let (Ok(host), Ok((target, port))) = (&s.host, &s.target) else {
                continue;
            };
            let check = confinement_check(s.sandbox);
            let name = ctx.name("sbmig");
            let key = key_path(ctx, s.sandbox);
            let f = rxen_migrate(host, target, &name, *port, &key, mig_mib, 0, &check);
            let c = &mut columns[i];
            match f {
                Ok(f) => {
                    c.downtime.push::<String>(Ok(f.downtime_ms));
                    c.total.push::<String>(Ok(f.total_ms));
                }
                Err(e) => {
                    c.downtime.push::<String>(Err(e.to_string()));
                    c.total.push::<String>(Err(e.to_string()));
                }
            }
        }
    }
    // Why a setting's cells are empty, if they are.
    for (s, c) in settings.iter().zip(columns.iter_mut()) {
        if let Err(why) = &s.host {
            for cell in [&mut c.boot, &mut c.memory, &mut c.downtime, &mut c.total] {
                *cell = Cell::Pending(why.clone());
            }
        }
        let mig_blocked = migrate_pending
            .clone()
            .or_else(|| s.target.as_ref().err().cloned());
        if let (Ok(_), Some(why)) = (&s.host, mig_blocked) {
            c.downtime = Cell::Pending(why.clone());
            c.total = Cell::Pending(why);
        }
    }
    let [on, off] = columns;
    let idle = |mib: u64| format!("{mib} MiB, 1 vCPU, idle");
    let rows = vec![
        versus_row(
            "boot to first console line",
            format!("{boot_mib} MiB, 1 vCPU"),
            ("ms", 1),
            on.boot,
            off.boot,
        ),
        versus_row(
            "monitor RSS beyond guest RAM",
            idle(mem_mib),
            ("MiB", 2),
            on.memory,
            off.memory,
        ),
        versus_row(
            "migration: downtime",
            idle(mig_mib),
            ("ms", 1),
            on.downtime,
            off.downtime,
        ),
        versus_row(
            "migration: total time",
            idle(mig_mib),
            ("ms", 1),
            on.total,
            off.total,
        ),
    ];
    SectionReport {
        title: "sandbox".into(),
        versus: Some(Versus {
            heading: "The sandbox's cost: rxen with the sandbox on and off".into(),
            a: "sandbox on".into(),
            b: "sandbox off".into(),
        }),
        rows,
        method: vec![
            "its own table: both columns are rxen; \"sandbox on\" is rxend as shipped (each VMM \
             in its jail: PID, mount, IPC, UTS, cgroup and network namespaces of its own, an \
             empty root, a uid of its own; each thread under its seccomp filter, capabilities \
             emptied, no_new_privs), \"sandbox off\" \
             is `rxend --no-sandbox`; on/off above 1 is what the sandbox costs. Each setting has \
             its own rxend and its own migration target (the same setting on both ends), in one \
             run, the order alternating run by run (on first, then off first)."
                .into(),
            format!(
                "the figures are taken as in the sections above: boot as in **boot** \
                 ({boot_mib} MiB, 1 vCPU), memory as in **memory** ({mem_mib} MiB, {} after the \
                 banner), migration as in **migration** ({mig_mib} MiB, idle, over loopback, \
                 the figures `rxl migrate` prints). Each run then checks, untimed, that the VMM is \
                 confined or not as its column says: `Seccomp: 2` in every \
                 `/proc/PID/task/TID/status` with the sandbox on, in none with it off (and, \
                 for migration, on the source before and on the target after); a run that \
                 fails the check counts as failed.",
                if ctx.quick { "0.3 s" } else { "1 s" }
            ),
        ],
    }
}

/// A row whose `rxen` cell is the sandbox on and whose `qemu` cell is the
/// sandbox off (see `Versus`).
fn versus_row(
    figure: &str,
    guest: String,
    (unit, decimals): (&'static str, usize),
    on: Cell,
    off: Cell,
) -> Row {
    let mut r = Row::new(figure, &guest, unit, decimals, Better::Lower);
    r.rxen = on;
    r.qemu = off;
    r
}

/// Starts one setting's rxend and migration target.
fn start(ctx: &Ctx, sandbox: bool, unsandbox: bool) -> Setting {
    let started = if !sandbox && !unsandbox {
        Err("this rxend has no `--no-sandbox`".to_string())
    } else {
        RxenHost::start_sandbox(sandbox).map_err(|e| format!("rxend did not start: {e}"))
    };
    let target = match &started {
        Ok(_) => start_target(&key_path(ctx, sandbox), sandbox)
            .map_err(|e| format!("the target rxend did not start: {e}")),
        Err(e) => Err(e.clone()),
    };
    Setting {
        sandbox,
        host: started,
        target,
    }
}

fn key_path(ctx: &Ctx, sandbox: bool) -> std::path::PathBuf {
    ctx.path().join(if sandbox {
        "sandbox-on-relocation.key"
    } else {
        "sandbox-off-relocation.key"
    })
}

/// A check that the domain's VMM runs confined (`sandbox`: every thread under
/// a seccomp filter) or not (no thread under one).
fn confinement_check(sandbox: bool) -> impl Fn(&RxenHost, &str) -> Result<()> {
    move |host, name| {
        let pid = host.vmm_pid(name)?;
        let (filtered, threads) = procfs::seccomp_threads(pid)?;
        let ok = if sandbox {
            threads > 0 && filtered == threads
        } else {
            filtered == 0
        };
        if ok {
            Ok(())
        } else {
            Err(BenchError::Unexpected(format!(
                "sandbox {}, but {filtered} of the {threads} threads of VMM {pid} have a seccomp filter",
                if sandbox { "on" } else { "off" }
            )))
        }
    }
}
