//! `rxl top`: xentop's screen and batch mode. The same rows feed both: the
//! terminal UI (ratatui over crossterm) and `-b` lines for scripts. CPU(%)
//! is measured between two samples, never averaged since boot.

use std::io::Write;
use std::time::{Duration, Instant};

use rxen_proto::api::{Counters, DomainCounters};
use rxen_proto::vmctl::{DiskStats, NicStats};

/// Errors of `rxl top`.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// Asking rxend for counters failed.
    #[error("{0}")]
    Fetch(String),
    /// The terminal failed.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// One sample of every counter, with the time it was taken.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// What rxend answered.
    pub counters: Counters,
}

/// Column titles, in xentop's order.
pub const TITLES: [&str; 19] = [
    "NAME",
    "STATE",
    "CPU(sec)",
    "CPU(%)",
    "MEM(k)",
    "MEM(%)",
    "MAXMEM(k)",
    "MAXMEM(%)",
    "VCPUS",
    "NETS",
    "NETTX(k)",
    "NETRX(k)",
    "VBDS",
    "VBD_OO",
    "VBD_RD",
    "VBD_WR",
    "VBD_RSECT",
    "VBD_WSECT",
    "SSID",
];

/// xentop's minimum column widths.
pub const WIDTHS: [usize; 19] = [
    10, 6, 10, 6, 10, 6, 10, 9, 5, 4, 8, 8, 4, 8, 8, 8, 10, 10, 4,
];

/// The columns that widen to fit their largest value.
const WIDENING: [usize; 6] = [10, 11, 14, 15, 16, 17];

/// One domain's row, as numbers (for sorting) before it becomes text.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Domain ID (not shown; Domain-0 is 0).
    pub domid: u32,
    /// NAME.
    pub name: String,
    /// STATE in xentop's flag order (d s b c p r).
    pub state: String,
    /// CPU(sec).
    pub cpu_sec: u64,
    /// CPU(%), between the previous sample and this one.
    pub cpu_pct: f64,
    /// MEM(k).
    pub mem_k: u64,
    /// MEM(%) of host memory.
    pub mem_pct: f64,
    /// MAXMEM(k); `None` = no limit.
    pub maxmem_k: Option<u64>,
    /// MAXMEM(%).
    pub maxmem_pct: Option<f64>,
    /// VCPUS.
    pub vcpus: u32,
    /// NETS.
    pub nets: u32,
    /// NETTX(k).
    pub nettx_k: u64,
    /// NETRX(k).
    pub netrx_k: u64,
    /// VBDS.
    pub vbds: u32,
    /// VBD_OO.
    pub vbd_oo: u64,
    /// VBD_RD.
    pub vbd_rd: u64,
    /// VBD_WR.
    pub vbd_wr: u64,
    /// VBD_RSECT.
    pub vbd_rsect: u64,
    /// VBD_WSECT.
    pub vbd_wsect: u64,
    /// What `-v`, `-n` and `-x` print under the row.
    pub details: Details,
}

/// Per-vCPU, per-NIC and per-disk figures of one domain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Details {
    /// CPU time of each online vCPU, nanoseconds.
    pub vcpu_ns: Vec<u64>,
    /// Each NIC's counters.
    pub nics: Vec<NicStats>,
    /// Each disk's counters.
    pub disks: Vec<DiskStats>,
}

/// Which detail lines to print (`-v`, `-n`, `-x`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Show {
    /// `-v`: CPU seconds per vCPU.
    pub vcpus: bool,
    /// `-n`: one line per NIC.
    pub networks: bool,
    /// `-x`: one line per disk.
    pub vbds: bool,
}

/// The lines xentop prints under a domain's row for `show`.
pub fn detail_lines(d: &Details, show: Show) -> Vec<String> {
    let mut out = Vec::new();
    if show.vcpus {
        let mut line = String::from("VCPUs(sec): ");
        for (i, ns) in d.vcpu_ns.iter().enumerate() {
            if i != 0 && i % 5 == 0 {
                out.push(std::mem::take(&mut line));
                line.push_str("        ");
            }
            line.push_str(&format!(" {i:2}: {:10}s", ns / 1_000_000_000));
        }
        out.push(line);
    }
    if show.networks {
        for (i, n) in d.nics.iter().enumerate() {
            out.push(format!(
                "Net{i} RX: {:8}bytes {:8}pkts {:8}err {:8}drop  TX: {:8}bytes {:8}pkts {:8}err {:8}drop",
                n.rx_bytes,
                n.rx_packets,
                0,
                n.rx_drops,
                n.tx_bytes,
                n.tx_packets,
                0,
                n.tx_drops + n.tx_spoof_drops
            ));
        }
    }
    if show.vbds {
        for v in &d.disks {
            // The Xen device number, as xentop shows it: decimal, then [major:minor] in hex.
            let dev = v.devid;
            out.push(format!(
                "VBD BlkBack {dev:4} [{:2x}:{:2x}]  OO: {:8}   RD: {:8}   WR: {:8}   RSECT: {:10}   WSECT: {:10}",
                (dev >> 8) & 0xFFF,
                dev & 0xFF,
                0,
                v.read_reqs,
                v.write_reqs,
                v.read_sectors,
                v.write_sectors
            ));
        }
    }
    out
}

/// xentop's state flags, in its order (d s b c p r), from xl's six letters (r b p s reason d).
pub fn xentop_state(xl: &str) -> String {
    let b = xl.as_bytes();
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let f = |on: bool, c: char| if on { c } else { '-' };
    [
        f(at(5, b'd'), 'd'),
        f(at(3, b's'), 's'),
        f(at(1, b'b'), 'b'),
        f(at(4, b'c'), 'c'),
        f(at(2, b'p'), 'p'),
        f(at(0, b'r'), 'r'),
    ]
    .iter()
    .collect()
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The rows of `cur`, with CPU(%) measured against `prev` (0 without one, as xentop does).
pub fn rows(prev: Option<&Sample>, cur: &Sample) -> Vec<Row> {
    let total = cur.counters.host.total_kib;
    cur.counters
        .domains
        .iter()
        .map(|d: &DomainCounters| {
            let cpu_pct = prev
                .and_then(|p| {
                    let old = p.counters.domains.iter().find(|o| o.domid == d.domid)?;
                    let wall = cur.at.checked_duration_since(p.at)?.as_nanos() as f64;
                    (wall > 0.0).then(|| d.cpu_ns.saturating_sub(old.cpu_ns) as f64 * 100.0 / wall)
                })
                .unwrap_or(0.0);
            Row {
                domid: d.domid,
                name: d.name.clone(),
                state: xentop_state(&d.state),
                cpu_sec: d.cpu_ns / 1_000_000_000,
                cpu_pct,
                mem_k: d.mem_kib,
                mem_pct: pct(d.mem_kib, total),
                maxmem_k: d.maxmem_kib,
                maxmem_pct: d.maxmem_kib.map(|m| pct(m, total)),
                vcpus: d.vcpus,
                nets: d.nets,
                nettx_k: d.net_tx_bytes / 1024,
                netrx_k: d.net_rx_bytes / 1024,
                vbds: d.vbds,
                vbd_oo: d.vbd_oo,
                vbd_rd: d.vbd_rd,
                vbd_wr: d.vbd_wr,
                vbd_rsect: d.vbd_rsect,
                vbd_wsect: d.vbd_wsect,
                details: Details {
                    vcpu_ns: d.vcpu_ns.iter().take(d.vcpus as usize).copied().collect(),
                    nics: d.nics.clone(),
                    disks: d.disks.clone(),
                },
            }
        })
        .collect()
}

/// The cells of a row as xentop prints them (before padding); `full_name` is `-f`.
fn cells(r: &Row, full_name: bool) -> [String; 19] {
    let name = if full_name {
        r.name.clone()
    } else {
        r.name.chars().take(10).collect()
    };
    [
        name,
        r.state.clone(),
        r.cpu_sec.to_string(),
        format!("{:.1}", r.cpu_pct),
        r.mem_k.to_string(),
        format!("{:.1}", r.mem_pct),
        r.maxmem_k.map_or("no limit".into(), |m| m.to_string()),
        r.maxmem_pct.map_or("n/a".into(), |p| format!("{p:.1}")),
        r.vcpus.to_string(),
        r.nets.to_string(),
        r.nettx_k.to_string(),
        r.netrx_k.to_string(),
        r.vbds.to_string(),
        r.vbd_oo.to_string(),
        r.vbd_rd.to_string(),
        r.vbd_wr.to_string(),
        r.vbd_rsect.to_string(),
        r.vbd_wsect.to_string(),
        "0".into(),
    ]
}

/// Column widths for these rows: xentop's, with the counter columns widened to fit.
pub fn widths(rows: &[Row]) -> [usize; 19] {
    let mut w = WIDTHS;
    for r in rows {
        let c = cells(r, false);
        for &i in &WIDENING {
            w[i] = w[i].max(c[i].len());
        }
    }
    w
}

/// The column header: each title right-aligned to its width, joined by single spaces.
pub fn header_line(w: &[usize; 19]) -> String {
    TITLES
        .iter()
        .zip(w)
        .map(|(t, n)| format!("{t:>n$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One row as xentop prints it.
pub fn row_line(r: &Row, w: &[usize; 19], full_name: bool) -> String {
    cells(r, full_name)
        .iter()
        .zip(w)
        .map(|(c, n)| format!("{c:>n$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// xentop's three summary lines (interactive mode only).
pub fn summary_lines(s: &Sample, rows: &[Row]) -> [String; 3] {
    let now = chrono::Local::now().format("%H:%M:%S");
    let count = |c: char| rows.iter().filter(|r| r.state.contains(c)).count();
    let h = &s.counters.host;
    [
        format!("xentop - {now}   rxen {}", env!("CARGO_PKG_VERSION")),
        format!(
            "{} domains: {} running, {} blocked, {} paused, {} crashed, {} dying, {} shutdown ",
            rows.len(),
            count('r'),
            count('b'),
            count('p'),
            count('c'),
            count('d'),
            count('s')
        ),
        format!(
            "Mem: {}k total, {}k used, {}k free    CPUs: {} @ {:.0}MHz",
            h.total_kib,
            h.total_kib.saturating_sub(h.free_kib),
            h.free_kib,
            h.nr_cpus,
            h.cpu_mhz
        ),
    ]
}

/// Sorts rows on a column (xentop's order of fields): names and states
/// ascending, numbers from the largest; `reverse` flips it.
pub fn sort_rows(rows: &mut [Row], column: usize, reverse: bool) {
    use std::cmp::Ordering;
    let key = |r: &Row| -> f64 {
        match column {
            2 => r.cpu_sec as f64,
            3 => r.cpu_pct,
            4 | 5 => r.mem_k as f64,
            6 | 7 => r.maxmem_k.map_or(f64::MAX, |m| m as f64),
            8 => f64::from(r.vcpus),
            9 => f64::from(r.nets),
            10 => r.nettx_k as f64,
            11 => r.netrx_k as f64,
            12 => f64::from(r.vbds),
            13 => r.vbd_oo as f64,
            14 => r.vbd_rd as f64,
            15 => r.vbd_wr as f64,
            16 => r.vbd_rsect as f64,
            17 => r.vbd_wsect as f64,
            _ => 0.0,
        }
    };
    rows.sort_by(|a, b| {
        let o = match column {
            0 => a.name.to_lowercase().cmp(&b.name.to_lowercase()),
            1 => a.state.cmp(&b.state),
            18 => Ordering::Equal,
            _ => key(b).total_cmp(&key(a)),
        };
        let o = o.then(a.domid.cmp(&b.domid));
        if reverse {
            o.reverse()
        } else {
            o
        }
    });
}

/// Options shared by batch and interactive mode.
#[derive(Debug, Clone, Copy)]
pub struct TopOptions {
    /// Seconds between refreshes (`-d`).
    pub delay: Duration,
    /// Stop after this many refreshes (`-i`); `None` = until stopped.
    pub iterations: Option<u64>,
    /// Show full names (`-f`).
    pub full_name: bool,
    /// Domain-0 first whatever the sort (`-z`).
    pub dom0_first: bool,
    /// Detail lines under each row (`-v`, `-n`, `-x`).
    pub show: Show,
    /// The column header before every domain, not only the first (`-r`).
    pub repeat_header: bool,
}

fn arrange(rows: &mut [Row], column: usize, reverse: bool, dom0_first: bool) {
    sort_rows(rows, column, reverse);
    if dom0_first {
        rows.sort_by_key(|r| r.domid != 0);
    }
}

/// Batch mode (`-b`): the column header and one line per domain each
/// refresh, no summary lines, flushed, as xentop prints them for scripts.
pub fn batch(
    mut fetch: impl FnMut() -> Result<Counters, String>,
    opts: TopOptions,
    out: &mut impl Write,
) -> Result<(), TopError> {
    let mut prev: Option<Sample> = None;
    let mut done = 0u64;
    loop {
        let cur = Sample {
            counters: fetch().map_err(TopError::Fetch)?,
            at: Instant::now(),
        };
        let mut r = rows(prev.as_ref(), &cur);
        arrange(&mut r, 0, false, opts.dom0_first);
        let w = widths(&r);
        for (i, row) in r.iter().enumerate() {
            if i == 0 || opts.repeat_header {
                writeln!(out, "{}", header_line(&w))?;
            }
            writeln!(out, "{}", row_line(row, &w, opts.full_name))?;
            for line in detail_lines(&row.details, opts.show) {
                writeln!(out, "{line}")?;
            }
        }
        if r.is_empty() {
            writeln!(out, "{}", header_line(&w))?;
        }
        out.flush()?;
        prev = Some(cur);
        done += 1;
        if opts.iterations.is_some_and(|n| done >= n) {
            return Ok(());
        }
        std::thread::sleep(opts.delay);
    }
}

/// The interactive screen. Keys: `q` quits; `s`/`S` or the right and left
/// arrows choose the sort column; `r` reverses the order; `+`/`-` change
/// the delay; up, down, PageUp and PageDown scroll.
pub fn interactive(
    mut fetch: impl FnMut() -> Result<Counters, String>,
    mut opts: TopOptions,
) -> Result<(), TopError> {
    use crossterm::event::{self, Event, KeyCode, KeyEventKind};
    use crossterm::terminal::{
        disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
    };
    use ratatui::backend::CrosstermBackend;
    use ratatui::style::{Modifier, Style};
    use ratatui::text::{Line, Span};
    use ratatui::widgets::Paragraph;
    use ratatui::Terminal;

    enable_raw_mode()?;
    let mut stdout = std::io::stdout();
    crossterm::execute!(stdout, EnterAlternateScreen)?;
    let mut term = Terminal::new(CrosstermBackend::new(stdout))?;
    let restore = |t: &mut Terminal<CrosstermBackend<std::io::Stdout>>| {
        let _ = disable_raw_mode();
        let _ = crossterm::execute!(t.backend_mut(), LeaveAlternateScreen);
        let _ = t.show_cursor();
    };

    let mut prev: Option<Sample> = None;
    let mut column = 0usize;
    let mut reverse = false;
    let mut scroll = 0usize;
    let mut done = 0u64;
    let outcome = 'outer: loop {
        let counters = match fetch() {
            Ok(c) => c,
            Err(e) => break Err(TopError::Fetch(e)),
        };
        let cur = Sample {
            counters,
            at: Instant::now(),
        };
        let mut next_refresh = Instant::now() + opts.delay;
        loop {
            let mut r = rows(prev.as_ref(), &cur);
            arrange(&mut r, column, reverse, opts.dom0_first);
            let w = widths(&r);
            let summary = summary_lines(&cur, &r);
            let header = header_line(&w);
            let body: Vec<String> = r
                .iter()
                .enumerate()
                .flat_map(|(i, row)| {
                    let head = (i > 0 && opts.repeat_header).then(|| header.clone());
                    head.into_iter()
                        .chain(std::iter::once(row_line(row, &w, opts.full_name)))
                        .chain(detail_lines(&row.details, opts.show))
                })
                .collect();
            let help = format!(
                "q quit  s/\u{2190}\u{2192} sort ({}{})  r reverse  +/- delay ({}s)  v vcpus  n networks  b vbds  h repeat header",
                TITLES[column],
                if reverse { ", reversed" } else { "" },
                opts.delay.as_secs_f64()
            );
            let drawn = term.draw(|f| {
                let area = f.area();
                let mut lines: Vec<Line> = summary.iter().map(|s| Line::raw(s.clone())).collect();
                lines.push(Line::from(Span::styled(
                    header.clone(),
                    Style::default().add_modifier(Modifier::REVERSED),
                )));
                let room = (area.height as usize).saturating_sub(lines.len() + 1);
                scroll = scroll.min(body.len().saturating_sub(room));
                lines.extend(
                    body.iter()
                        .skip(scroll)
                        .take(room)
                        .map(|s| Line::raw(s.clone())),
                );
                lines.push(Line::from(Span::styled(
                    help.clone(),
                    Style::default().add_modifier(Modifier::DIM),
                )));
                f.render_widget(Paragraph::new(lines), area);
            });
            if let Err(e) = drawn {
                break 'outer Err(e.into());
            }
            let wait = next_refresh.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            match event::poll(wait) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => break 'outer Err(e.into()),
            }
            let Ok(Event::Key(k)) = event::read() else {
                continue;
            };
            if k.kind != KeyEventKind::Press {
                continue;
            }
            match k.code {
                KeyCode::Char('q' | 'Q') | KeyCode::Esc => break 'outer Ok(()),
                KeyCode::Char('s' | 'S') | KeyCode::Right => column = (column + 1) % TITLES.len(),
                KeyCode::Left => column = (column + TITLES.len() - 1) % TITLES.len(),
                KeyCode::Char('r' | 'R') => reverse = !reverse,
                KeyCode::Char('v' | 'V') => opts.show.vcpus = !opts.show.vcpus,
                KeyCode::Char('n' | 'N') => opts.show.networks = !opts.show.networks,
                KeyCode::Char('b' | 'B') => opts.show.vbds = !opts.show.vbds,
                KeyCode::Char('h' | 'H') => opts.repeat_header = !opts.repeat_header,
                KeyCode::Char('+') => {
                    opts.delay += Duration::from_secs(1);
                    next_refresh = Instant::now() + opts.delay;
                }
                KeyCode::Char('-') => {
                    opts.delay = opts
                        .delay
                        .saturating_sub(Duration::from_secs(1))
                        .max(Duration::from_secs(1));
                    next_refresh = Instant::now() + opts.delay;
                }
                KeyCode::Down => scroll += 1,
                KeyCode::Up => scroll = scroll.saturating_sub(1),
                KeyCode::PageDown => scroll += 10,
                KeyCode::PageUp => scroll = scroll.saturating_sub(10),
                _ => {}
            }
        }
        prev = Some(cur);
        done += 1;
        if opts.iterations.is_some_and(|n| done >= n) {
            break Ok(());
        }
    };
    restore(&mut term);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use rxen_proto::api::HostCounters;

    fn dom(domid: u32, name: &str, state: &str, cpu_ns: u64) -> DomainCounters {
        DomainCounters {
            domid,
            name: name.into(),
            state: state.into(),
            cpu_ns,
            mem_kib: 65536,
            maxmem_kib: Some(65536),
            vcpus: 1,
            vcpu_ns: vec![cpu_ns],
            weight: 256,
            cap: 0,
            nets: 0,
            net_tx_bytes: 0,
            net_rx_bytes: 0,
            vbds: 0,
            vbd_oo: 0,
            vbd_rd: 0,
            vbd_wr: 0,
            vbd_rsect: 0,
            vbd_wsect: 0,
            nics: Vec::new(),
            disks: Vec::new(),
        }
    }

    fn sample(at: Instant, doms: Vec<DomainCounters>) -> Sample {
        Sample {
            at,
            counters: Counters {
                host: HostCounters {
                    total_kib: 1_048_576,
                    free_kib: 524_288,
                    nr_cpus: 2,
                    cpu_mhz: 2400.0,
                },
                domains: doms,
            },
        }
    }

    #[test]
    fn header_matches_xentop() {
        assert_eq!(
            header_line(&WIDTHS),
            "      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT SSID"
        );
    }

    #[test]
    fn cpu_percent_is_measured_between_samples() {
        let t0 = Instant::now();
        let a = sample(t0, vec![dom(1, "web", "r-----", 10_000_000_000)]);
        let b = sample(
            t0 + Duration::from_secs(2),
            vec![dom(1, "web", "r-----", 11_000_000_000)],
        );
        assert_eq!(rows(None, &a)[0].cpu_pct, 0.0);
        let r = rows(Some(&a), &b);
        assert!((r[0].cpu_pct - 50.0).abs() < 1e-9, "{}", r[0].cpu_pct);
        assert_eq!(r[0].cpu_sec, 11);
        assert_eq!(r[0].state, "-----r");
        let line = row_line(&r[0], &widths(&r), false);
        assert_eq!(
            line,
            "       web -----r         11   50.0      65536    6.2      65536       6.2     1    0        0        0    0        0        0        0          0          0    0"
        );
    }

    #[test]
    fn states_use_xentops_order() {
        assert_eq!(xentop_state("-b----"), "--b---");
        assert_eq!(xentop_state("--p---"), "----p-");
        assert_eq!(xentop_state("---sc-"), "-s-c--");
        assert_eq!(xentop_state("-----d"), "d-----");
    }

    #[test]
    fn sorting_and_names() {
        let t0 = Instant::now();
        let s = sample(
            t0,
            vec![
                dom(0, "Domain-0", "r-----", 5),
                dom(2, "zeta", "-b----", 9_000_000_000),
                dom(1, "Alpha-long-name", "-b----", 1),
            ],
        );
        let mut r = rows(None, &s);
        sort_rows(&mut r, 0, false);
        assert_eq!(r[0].name, "Alpha-long-name");
        sort_rows(&mut r, 2, false);
        assert_eq!(r[0].name, "zeta");
        arrange(&mut r, 2, false, true);
        assert_eq!(r[0].name, "Domain-0");
        let w = widths(&r);
        let named = r.iter().find(|x| x.domid == 1).expect("row");
        assert!(row_line(named, &w, false).starts_with("Alpha-long"));
        assert!(row_line(named, &w, true).starts_with("Alpha-long-name "));
    }

    #[test]
    fn batch_prints_header_and_rows_each_iteration() {
        let mut n = 0u64;
        let mut out = Vec::new();
        batch(
            || {
                n += 1;
                Ok(sample(
                    Instant::now(),
                    vec![dom(3, "g", "r-----", n * 1_000_000_000)],
                )
                .counters)
            },
            TopOptions {
                delay: Duration::from_millis(10),
                iterations: Some(2),
                full_name: false,
                dom0_first: false,
                show: Show::default(),
                repeat_header: false,
            },
            &mut out,
        )
        .expect("batch");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.lines().count(), 4, "{text}");
        assert_eq!(
            text.lines().filter(|l| l.contains("NAME  STATE")).count(),
            2
        );
    }

    #[test]
    fn detail_lines_follow_xentop() {
        let mut d = dom(4, "io", "r-----", 0);
        d.vcpus = 6;
        d.vcpu_ns = (1..=6).map(|s| s * 1_000_000_000).collect();
        d.nics = vec![NicStats {
            devid: 0,
            mac: "00:16:3e:00:00:01".into(),
            tap: "vif4.0".into(),
            slot: 1,
            tx_bytes: 1500,
            tx_packets: 3,
            rx_bytes: 98,
            rx_packets: 1,
            tx_spoof_drops: 2,
            tx_drops: 1,
            rx_drops: 0,
        }];
        d.disks = vec![DiskStats {
            devid: 51712,
            vdev: "xvda".into(),
            slot: 0,
            read_reqs: 7,
            read_sectors: 56,
            write_reqs: 2,
            write_sectors: 16,
            flush_reqs: 0,
            errors: 0,
        }];
        let r = rows(None, &sample(Instant::now(), vec![d]));
        let all = Show {
            vcpus: true,
            networks: true,
            vbds: true,
        };
        let lines = detail_lines(&r[0].details, all);
        assert_eq!(
            lines,
            vec![
                "VCPUs(sec):   0:          1s  1:          2s  2:          3s  3:          4s  4:          5s",
                "          5:          6s",
                "Net0 RX:       98bytes        1pkts        0err        0drop  TX:     1500bytes        3pkts        0err        3drop",
                "VBD BlkBack 51712 [ca: 0]  OO:        0   RD:        7   WR:        2   RSECT:         56   WSECT:         16",
            ]
        );
        assert!(detail_lines(&r[0].details, Show::default()).is_empty());
    }
}
