//! `rxen-vmm --spec RUN_DIR/spec.json`: runs one domain.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;

/// The rxen virtual machine monitor: runs one domain from its launch spec.
#[derive(Debug, Parser)]
#[command(name = "rxen-vmm", version, about)]
struct Args {
    /// The launch spec (`rxen_proto::vmspec::VmSpec` as JSON), usually RUN_DIR/spec.json.
    #[arg(long)]
    spec: PathBuf,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RXEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = rxen_vmm::vm::read_spec(&args.spec).and_then(|spec| {
        tracing::info!(name = %spec.name, domid = spec.domid, "starting");
        rxen_vmm::run(spec, || {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(b"ready\n");
            let _ = out.flush();
        })
    });
    match result {
        Ok(record) => {
            tracing::info!(reason = ?record.reason, detail = %record.detail, "exiting");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("rxen-vmm: {e}");
            std::process::exit(1);
        }
    }
}
