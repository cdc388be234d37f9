//! Disk: guest sequential and random throughput against the host's own on the same file.

use super::Ctx;
use crate::report::{Better, Cell, Row, SectionReport};

/// Pending until rxen's disks (issue 4) land in this branch.
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let mut row = Row::new("disk throughput", "-", "MiB/s", 1, Better::Higher);
    row.rxen = Cell::Pending(
        ctx.rxen_blocked(Some(
            "rxen disks (issue 4) have not landed in this benchmark",
        ))
        .unwrap_or_default(),
    );
    row.qemu = Cell::Pending("waits for the rxen side".into());
    SectionReport {
        title: "disk".into(),
        rows: vec![row],
        method: vec!["pending: no figures yet.".into()],
    }
}
