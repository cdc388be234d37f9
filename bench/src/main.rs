//! `rxen-bench`: measures rxen and QEMU/KVM side by side on this machine, with
//! the same test guest, and prints a Markdown table (optionally also written
//! to a file). It asserts nothing about speed. Run it as root on a host with
//! /dev/kvm, through `scripts/bench.sh`.
//!
//! Options: `--quick` (a smoke run), `--runs N` (or `RXEN_BENCH_RUNS`),
//! `--out FILE`, `--only SECTION,...` (boot, memory, saverestore, migration,
//! migration-intact, disk, iosplit, net, sched, sandbox, pool, pool-ha;
//! `migration` selects `migration-intact` too).

mod console;
mod error;
mod etcd;
mod guestimg;
mod machine;
mod procfs;
mod qemu;
mod report;
mod rxen;
mod sections;
mod stats;

use std::time::Instant;

use report::SectionReport;
use sections::Ctx;

/// Command-line options.
struct Opts {
    quick: bool,
    runs: usize,
    out: Option<String>,
    only: Option<Vec<String>>,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        runs: std::env::var("RXEN_BENCH_RUNS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        out: None,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--runs" => o.runs = args.next().and_then(|s| s.parse().ok()).ok_or("--runs needs a number")?,
            "--out" => o.out = Some(args.next().ok_or("--out needs a file")?),
            "--only" => {
                o.only = Some(args.next().ok_or("--only needs sections")?.split(',').map(str::to_string).collect())
            }
            "-h" | "--help" => {
                return Err("usage: rxen-bench [--quick] [--runs N] [--out FILE] [--only boot,memory,saverestore,migration,migration-intact,disk,iosplit,net,sched,sandbox,pool,pool-ha]".into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.runs == 0 {
        o.runs = if o.quick { 2 } else { 5 };
    }
    Ok(o)
}

type Section = fn(&mut Ctx) -> SectionReport;

/// The sections in the order the table shows them.
const SECTIONS: &[(&str, Section)] = &[
    ("boot", sections::boot::run),
    ("memory", sections::memory::run),
    ("saverestore", sections::saverestore::run),
    ("migration", sections::migration::run),
    ("migration-intact", sections::intact::run),
    ("disk", sections::disk::run),
    ("iosplit", sections::iosplit::run),
    ("net", sections::net::run),
    ("sched", sections::sched::run),
    ("sandbox", sections::sandbox::run),
    ("pool", sections::pool::run),
    ("pool-ha", sections::poolha::run),
];

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let dir = match tempfile::Builder::new()
        .prefix("rxen-bench-qemu-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("rxen-bench: cannot make a temporary directory: {e}");
            std::process::exit(1);
        }
    };
    let qemu_bin = std::env::var("RXEN_BENCH_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    // RXEN_BENCH_QEMU_KERNEL replaces the guest QEMU boots (to debug the QEMU
    // paths); the header then says so, since its figures are not comparable.
    let kernel_override = std::env::var("RXEN_BENCH_QEMU_KERNEL").ok();
    let kernel = match &kernel_override {
        Some(k) => Ok(std::path::PathBuf::from(k)),
        None => guestimg::write_to(dir.path()),
    };
    let qemu_unavailable =
        qemu_unavailable(&qemu_bin, kernel.as_ref().err(), kernel_override.is_some());
    let qemu = qemu::QemuConfig {
        binary: qemu_bin.clone(),
        cpu: std::env::var("RXEN_BENCH_QEMU_CPU")
            .unwrap_or_else(|_| "host,-arch-capabilities".into()),
        kernel: kernel.unwrap_or_default(),
    };
    let mut header = machine::describe(&qemu_bin);
    if let Some(k) = &kernel_override {
        header.push(format!(
            "- **QEMU booted `{k}` (RXEN_BENCH_QEMU_KERNEL), not the test guest: its figures are not comparable**"
        ));
    }
    header.push(format!(
        "- runs: {} per figure and monitor, alternating rxen and QEMU{}",
        opts.runs,
        if opts.quick {
            " (quick mode: fewer guests, shorter waits)"
        } else {
            ""
        }
    ));
    header.push(format!("- QEMU command: `{qemu_bin} -M microvm -enable-kvm -cpu {} -m M -smp N -kernel testguest.elf -nodefaults -no-user-config -display none -serial stdio -no-reboot -qmp unix:SOCK,server=on,wait=off`", qemu.cpu));
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        header.push(
            "- QEMU on PVM: `-enable-kvm -M microvm` works; `-cpu host` and `-cpu max` abort \
             (KVM refuses MSR 0x10a, IA32_ARCH_CAPABILITIES), so the CPU is `host,-arch-capabilities`"
                .to_string(),
        );
    }
    let rxen = rxen::RxenHost::start().map_err(|e| e.to_string());
    let mut ctx = Ctx::new(opts.runs, opts.quick, rxen, qemu, qemu_unavailable, dir);
    let started = Instant::now();
    let mut reports = Vec::new();
    for (name, run) in SECTIONS {
        if opts
            .only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|s| selects(s, name)))
        {
            continue;
        }
        eprintln!("rxen-bench: {name}...");
        let t = Instant::now();
        reports.push(run(&mut ctx));
        eprintln!("rxen-bench: {name} took {:.0} s", t.elapsed().as_secs_f64());
    }
    header.push(format!(
        "- load average at end: {}; the whole run took {:.0} s",
        machine::load(),
        started.elapsed().as_secs_f64()
    ));
    drop(ctx);
    let text = report::render(&header, &reports);
    print!("{text}");
    if let Some(out) = &opts.out {
        if let Err(e) = std::fs::write(out, &text) {
            eprintln!("rxen-bench: cannot write {out}: {e}");
            std::process::exit(1);
        }
        eprintln!("rxen-bench: wrote {out}");
    }
}

/// Whether `--only`'s `choice` selects the section `name`: its name, or the name before
/// its `-` (`migration` also selects `migration-intact`).
fn selects(choice: &str, name: &str) -> bool {
    name == choice || name.split_once('-').is_some_and(|(head, _)| head == choice)
}

/// Why QEMU cannot run the guest here, or `None` when it can be tried.
fn qemu_unavailable(
    bin: &str,
    write_err: Option<&error::BenchError>,
    overridden: bool,
) -> Option<String> {
    if let Some(e) = write_err {
        return Some(e.to_string());
    }
    if std::process::Command::new(bin)
        .arg("--version")
        .output()
        .is_err()
    {
        return Some(format!("`{bin}` is not installed"));
    }
    if !overridden && !guestimg::has_pvh_note(rxen_testguest::image()) {
        return Some("the test guest has no PVH ELF note yet, so QEMU cannot boot it".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::selects;

    #[test]
    fn only_selects_a_section_and_its_parts() {
        assert!(selects("migration", "migration"));
        assert!(selects("migration", "migration-intact"));
        assert!(selects("migration-intact", "migration-intact"));
        assert!(!selects("migration-intact", "migration"));
        assert!(!selects("boot", "migration-intact"));
    }
}
