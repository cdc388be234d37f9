//! Rows, cells and the Markdown rendering of the results table.

use crate::stats::Summary;

/// Which direction of a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Smaller is better (time, memory, bytes).
    Lower,
    /// Larger is better (throughput).
    Higher,
    /// Closer to 1 (or to the ideal) is better; the ratio gets no verdict.
    Neither,
}

/// The repeated samples of one figure for one monitor, or why there are none.
#[derive(Debug, Clone)]
pub enum Cell {
    /// Measured samples, with the failures of the repetitions that did not give one.
    Samples {
        /// The measured values.
        values: Vec<f64>,
        /// One message per failed repetition.
        failures: Vec<String>,
    },
    /// Yes-or-no outcomes of repeated checks (e.g. memory intact after a migration).
    Tally {
        /// Runs whose check held.
        yes: usize,
        /// Why each run whose check did not hold failed it.
        no: Vec<String>,
        /// One message per repetition that could not be checked at all.
        failures: Vec<String>,
    },
    /// The feature has not landed (or cannot be measured yet), with why.
    Pending(String),
    /// The figure does not apply to this monitor, with why.
    NotApplicable(String),
}

impl Cell {
    /// An empty sample set, to be filled repetition by repetition.
    pub fn empty() -> Cell {
        Cell::Samples {
            values: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// An empty tally of checks, to be filled repetition by repetition.
    pub fn tally() -> Cell {
        Cell::Tally {
            yes: 0,
            no: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Adds one repetition's check to a tally: `Ok(Ok(()))` it held, `Ok(Err(why))` it
    /// did not, `Err(e)` the repetition could not be checked.
    pub fn push_check<E: std::fmt::Display>(&mut self, r: Result<Result<(), String>, E>) {
        if let Cell::Tally { yes, no, failures } = self {
            match r {
                Ok(Ok(())) => *yes += 1,
                Ok(Err(why)) => no.push(why),
                Err(e) => failures.push(e.to_string()),
            }
        }
    }

    /// Adds one repetition's outcome.
    pub fn push<E: std::fmt::Display>(&mut self, r: Result<f64, E>) {
        if let Cell::Samples { values, failures } = self {
            match r {
                Ok(v) => values.push(v),
                Err(e) => failures.push(e.to_string()),
            }
        }
    }

    /// Adds the samples and failures of `other` (a sample set) to this one.
    pub fn merge(&mut self, other: Cell) {
        if let (
            Cell::Samples { values, failures },
            Cell::Samples {
                values: more_values,
                failures: more_failures,
            },
        ) = (self, other)
        {
            values.extend(more_values);
            failures.extend(more_failures);
        }
    }

    /// The summary of the samples, if there are any.
    pub fn summary(&self) -> Option<Summary> {
        match self {
            Cell::Samples { values, .. } => Summary::of(values),
            _ => None,
        }
    }

    fn render(&self, unit: &str, decimals: usize) -> String {
        match self {
            Cell::Pending(why) => format!("pending: {}", escape(why)),
            Cell::NotApplicable(why) => format!("n/a: {}", escape(why)),
            Cell::Tally { yes, no, failures } => {
                let checked = yes + no.len();
                let mut out = if checked == 0 {
                    match failures.first() {
                        Some(f) => return format!("failed: {}", escape(f)),
                        None => return "not run".to_string(),
                    }
                } else {
                    format!("**{yes} of {checked}** {unit}")
                };
                if let Some(why) = no.first() {
                    out.push_str(&format!("; not in {}: {}", no.len(), escape(why)));
                }
                if let Some(f) = failures.first() {
                    out.push_str(&format!(
                        "; {} of {} runs failed: {}",
                        failures.len(),
                        failures.len() + checked,
                        escape(f)
                    ));
                }
                out
            }
            Cell::Samples { values, failures } => match Summary::of(values) {
                None => match failures.first() {
                    Some(f) => format!("failed: {}", escape(f)),
                    None => "not run".to_string(),
                },
                Some(s) => {
                    let mut out = if s.n == 1 {
                        format!("{:.*} {unit}", decimals, s.median)
                    } else {
                        format!(
                            "{:.*} {unit} ({:.*}–{:.*})",
                            decimals, s.median, decimals, s.min, decimals, s.max
                        )
                    };
                    if let Some(f) = failures.first() {
                        out.push_str(&format!(
                            "; {} of {} runs failed: {}",
                            failures.len(),
                            failures.len() + s.n,
                            escape(f)
                        ));
                    }
                    out
                }
            },
        }
    }
}

/// One line of the table: a figure measured for rxen and for QEMU.
#[derive(Debug, Clone)]
pub struct Row {
    /// What is measured.
    pub figure: String,
    /// The guest (size, vCPUs, load).
    pub guest: String,
    /// The unit printed after each number.
    pub unit: &'static str,
    /// Decimals printed.
    pub decimals: usize,
    /// Which direction is better.
    pub better: Better,
    /// rxen's samples.
    pub rxen: Cell,
    /// QEMU's samples.
    pub qemu: Cell,
    /// The host doing the same work without a VM, where a figure has such a baseline.
    pub host: Option<Cell>,
}

impl Row {
    /// A row whose cells are both empty sample sets.
    pub fn new(
        figure: &str,
        guest: &str,
        unit: &'static str,
        decimals: usize,
        better: Better,
    ) -> Row {
        Row {
            figure: figure.to_string(),
            guest: guest.to_string(),
            unit,
            decimals,
            better,
            rxen: Cell::empty(),
            qemu: Cell::empty(),
            host: None,
        }
    }

    fn host_cell(&self) -> String {
        let Some(h) = &self.host else {
            return "–".to_string();
        };
        let mut out = h.render(self.unit, self.decimals);
        if let (Some(r), Some(hs)) = (self.rxen.summary(), h.summary()) {
            if hs.median != 0.0 {
                out.push_str(&format!("; rxen/host {:.2}×", r.median / hs.median));
            }
        }
        out
    }

    fn ratio(&self) -> String {
        self.ratio_named("rxen", "QEMU")
    }

    /// rxen's median over QEMU's (or, in a `Versus` table, column a's over
    /// column b's), with a verdict naming the better one as `a` or `b`.
    fn ratio_named(&self, a: &str, b: &str) -> String {
        let (Some(r), Some(q)) = (self.rxen.summary(), self.qemu.summary()) else {
            return "–".to_string();
        };
        if q.median == 0.0 {
            return "–".to_string();
        }
        let ratio = r.median / q.median;
        let overlap = r.n > 1 && q.n > 1 && r.min <= q.max && q.min <= r.max;
        let verdict = match self.better {
            Better::Neither => String::new(),
            _ if (ratio - 1.0).abs() < 0.02 => " (even)".to_string(),
            _ if overlap => " (ranges overlap)".to_string(),
            Better::Lower if ratio < 1.0 => format!(" ({a} better)"),
            Better::Higher if ratio > 1.0 => format!(" ({a} better)"),
            _ => format!(" ({b} better)"),
        };
        format!("{ratio:.2}×{verdict}")
    }
}

/// A section that compares rxen with itself in two settings, in a table of
/// its own: each row's `rxen` cell is column `a` and its `qemu` cell column
/// `b`, and the ratio is a/b.
#[derive(Debug, Clone)]
pub struct Versus {
    /// The table's heading.
    pub heading: String,
    /// The first column's setting (e.g. "sandbox on").
    pub a: String,
    /// The second column's setting (e.g. "sandbox off").
    pub b: String,
}

/// One section's rows and the method lines printed beneath the table.
#[derive(Debug, Clone, Default)]
pub struct SectionReport {
    /// The section's title.
    pub title: String,
    /// Set for a section whose rows compare two rxen settings, not rxen and
    /// QEMU: they go in a table of their own under this heading.
    pub versus: Option<Versus>,
    /// Its rows.
    pub rows: Vec<Row>,
    /// How each figure is measured, one line each.
    pub method: Vec<String>,
}

/// Renders the whole report as Markdown.
pub fn render(header: &[String], sections: &[SectionReport]) -> String {
    let mut out = String::new();
    out.push_str("# rxen benchmarks, side by side with QEMU/KVM\n\n");
    for h in header {
        out.push_str(h);
        out.push('\n');
    }
    let (versus, side_by_side): (Vec<_>, Vec<_>) =
        sections.iter().partition(|s| s.versus.is_some());
    if side_by_side.iter().any(|s| !s.rows.is_empty()) {
        out.push('\n');
        out.push_str(
            "| section | figure | guest | rxen: median (min–max) | QEMU: median (min–max) | rxen/QEMU | host, no VM |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|\n");
    }
    for s in &side_by_side {
        for r in &s.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                s.title,
                r.figure,
                r.guest,
                r.rxen.render(r.unit, r.decimals),
                r.qemu.render(r.unit, r.decimals),
                r.ratio(),
                r.host_cell()
            ));
        }
    }
    for s in &versus {
        let Some(v) = &s.versus else { continue };
        out.push_str(&format!("\n## {}\n\n", v.heading));
        out.push_str(&format!(
            "| section | figure | guest | {a}: median (min–max) | {b}: median (min–max) | {a} / {b} |\n",
            a = v.a,
            b = v.b
        ));
        out.push_str("|---|---|---|---|---|---|\n");
        for r in &s.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                s.title,
                r.figure,
                r.guest,
                r.rxen.render(r.unit, r.decimals),
                r.qemu.render(r.unit, r.decimals),
                r.ratio_named(&v.a, &v.b)
            ));
        }
    }
    out.push_str("\n## Method\n\n");
    for s in sections {
        for m in &s.method {
            out.push_str(&format!("- **{}**: {}\n", s.title, m));
        }
    }
    out
}

fn escape(s: &str) -> String {
    let one_line: String = s.lines().collect::<Vec<_>>().join(" ");
    let short: String = one_line.chars().take(160).collect();
    short.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::{render, Better, Cell, Row, SectionReport, Versus};

    #[test]
    fn ratio_and_verdict() {
        let mut r = Row::new("boot", "128 MiB", "ms", 1, Better::Lower);
        r.rxen.push::<String>(Ok(10.0));
        r.qemu.push::<String>(Ok(40.0));
        assert_eq!(r.ratio(), "0.25× (rxen better)");
        r.rxen.push::<String>(Ok(35.0));
        r.qemu.push::<String>(Ok(30.0));
        assert_eq!(r.ratio(), "0.64× (ranges overlap)");
        r.qemu = Cell::Pending("not yet".into());
        assert_eq!(r.ratio(), "–");
        assert_eq!(r.qemu.render("ms", 1), "pending: not yet");
    }

    #[test]
    fn versus_sections_get_their_own_table() {
        let mut r = Row::new("boot", "128 MiB", "ms", 1, Better::Lower);
        r.rxen.push::<String>(Ok(42.0));
        r.qemu.push::<String>(Ok(40.0));
        let s = SectionReport {
            title: "sandbox".into(),
            versus: Some(Versus {
                heading: "Sandbox cost".into(),
                a: "sandbox on".into(),
                b: "sandbox off".into(),
            }),
            rows: vec![r],
            method: vec!["how".into()],
        };
        let text = render(&["- date: now".into()], &[s]);
        assert!(!text.contains("rxen/QEMU"), "{text}");
        assert!(text.contains("## Sandbox cost\n"), "{text}");
        assert!(text.contains("| sandbox on / sandbox off |"), "{text}");
        assert!(
            text.contains(
                "| sandbox | boot | 128 MiB | 42.0 ms | 40.0 ms | 1.05× (sandbox off better) |"
            ),
            "{text}"
        );
        assert!(text.contains("- **sandbox**: how"), "{text}");
    }

    #[test]
    fn failures_render_without_crashing() {
        let mut c = Cell::empty();
        c.push::<String>(Err("boom | bang".into()));
        assert_eq!(c.render("ms", 1), "failed: boom \\| bang");
        c.push::<String>(Ok(2.0));
        assert_eq!(c.render("ms", 0), "2 ms; 1 of 2 runs failed: boom \\| bang");
    }

    #[test]
    fn tallies_count_checks_and_say_why_one_did_not_hold() {
        let mut c = Cell::tally();
        assert_eq!(c.render("intact", 0), "not run");
        c.push_check::<String>(Err("no console".into()));
        assert_eq!(c.render("intact", 0), "failed: no console");
        c.push_check::<String>(Ok(Ok(())));
        c.push_check::<String>(Ok(Err("memsum 0x1, expected 0x2".into())));
        c.push_check::<String>(Ok(Ok(())));
        assert_eq!(
            c.render("intact", 0),
            "**2 of 3** intact; not in 1: memsum 0x1, expected 0x2; 1 of 4 runs failed: no console"
        );
        // A tally has no median: the ratio column stays empty.
        assert_eq!(c.summary(), None);
    }
}
