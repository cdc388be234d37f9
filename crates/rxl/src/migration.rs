//! `rxl save`, `restore`, `migrate` and `migrate-receive`: progress on a
//! terminal, the figures at the end, and the ssh transport's plumbing.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use rxen_proto::vmctl::{TransferProgress, TransferStats};

/// Errors of the transfer commands.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The ssh command could not be run.
    #[error("cannot run {cmd:?}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A local socket could not be made.
    #[error("cannot create a socket pair: {0}")]
    Socket(#[source] std::io::Error),
    /// A save file could not be read back.
    #[error("cannot read {path}: {source}")]
    SaveFile {
        /// The file.
        path: String,
        /// The cause.
        source: rxen_proto::stream::StreamError,
    },
}

/// `rxl save -D`'s refusal.
pub const KEEP_DOMID_REFUSAL: &str = "-D (store the domain ID) is not supported: rxen never gives a second domain an ID that another has had, so a restored domain always gets a new ID";

/// What xl's "Saving to F new xl format (info M/O/L)" line reports of a save file: its
/// mandatory flags, optional flags and the length of the config data that rides in front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveFileInfo {
    /// The stream header's flags word (rxen's mandatory flags: 0 for a save file).
    pub mandatory_flags: u32,
    /// Optional flags: rxen's header has none.
    pub optional_flags: u32,
    /// The length of the config record's body (xl: the optional data, its JSON config).
    pub config_len: u32,
}

impl SaveFileInfo {
    /// Reads the header and the config record at the start of a save stream.
    pub fn read(reader: impl Read) -> Result<SaveFileInfo, rxen_proto::stream::StreamError> {
        let mut r = rxen_proto::stream::StreamReader::new(reader)?;
        let config = r.expect(rxen_proto::stream::RecordType::Config)?;
        Ok(SaveFileInfo {
            mandatory_flags: r.header.flags,
            optional_flags: 0,
            config_len: u32::try_from(config.len()).unwrap_or(u32::MAX),
        })
    }

    /// Reads them from the save file at `path`.
    pub fn of_file(path: &std::path::Path) -> Result<SaveFileInfo, TransferError> {
        let fail = |source| TransferError::SaveFile {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(|e| fail(e.into()))?;
        SaveFileInfo::read(std::io::BufReader::new(file)).map_err(fail)
    }
}

/// xl's line for a save (`"Saving to %s new xl format (info 0x%x/0x%x/%u)"`), with rxl's name
/// for the format, which is rxen's own.
pub fn saving_line(path: &std::path::Path, info: &SaveFileInfo) -> String {
    format!(
        "Saving to {} new rxl format (info 0x{:x}/0x{:x}/{})",
        path.display(),
        info.mandatory_flags,
        info.optional_flags,
        info.config_len
    )
}

/// Progress on stderr when it is a terminal, nothing otherwise: a spinner
/// with the elapsed time, or for a domain's save or migration a bar per
/// round that follows the VMM's progress through rxend.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts showing `message`.
    pub fn start(message: String) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                stop: None,
                poller: None,
            };
        }
        let pb = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
            pb.set_style(style);
        }
        pb.set_message(message);
        pb.enable_steady_tick(Duration::from_millis(100));
        Progress {
            bar: Some(pb),
            stop: None,
            poller: None,
        }
    }

    /// Starts showing `message`, then a bar per pre-copy round from what
    /// `poll` reports (rxend's `TransferProgress` for the domain).
    pub fn follow(
        message: String,
        mut poll: impl FnMut() -> Option<TransferProgress> + Send + 'static,
    ) -> Progress {
        let mut p = Progress::start(message.clone());
        let Some(pb) = p.bar.clone() else {
            return p;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let poller = std::thread::spawn(move || {
            let mut round = 0;
            while rx.recv_timeout(Duration::from_millis(200)).is_err() {
                let Some(now) = poll() else {
                    continue;
                };
                if now.round != round {
                    round = now.round;
                    pb.set_length(now.round_pages.max(1));
                    if let Ok(style) = indicatif::ProgressStyle::with_template(
                        "{msg} [{elapsed}] {wide_bar} {pos}/{len} pages",
                    ) {
                        pb.set_style(style);
                    }
                }
                pb.set_message(bar_message(&message, &now));
                pb.set_position(now.round_sent.min(now.round_pages));
            }
        });
        p.stop = Some(tx);
        p.poller = Some(poller);
        p
    }

    /// A handle that prints lines on stdout from any thread without garbling the spinner,
    /// and changes its message.
    pub fn printer(&self) -> Printer {
        Printer(self.bar.clone())
    }

    /// Removes the spinner or bar.
    pub fn finish(self) {
        if let Some(stop) = self.stop {
            let _ = stop.send(());
        }
        if let Some(t) = self.poller {
            let _ = t.join();
        }
        if let Some(pb) = self.bar {
            pb.finish_and_clear();
        }
    }
}

/// Prints beside a [`Progress`] (see [`Progress::printer`]).
#[derive(Clone)]
pub struct Printer(Option<indicatif::ProgressBar>);

impl Printer {
    /// Prints `text` and a newline on stdout, the spinner hidden meanwhile.
    pub fn line(&self, text: &str) {
        match &self.0 {
            Some(pb) => pb.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }

    /// Changes the spinner's message (nothing when there is no spinner).
    pub fn message(&self, text: String) {
        if let Some(pb) = &self.0 {
            pb.set_message(text);
        }
    }
}

/// The text before a transfer's bar: what, which round, how much so far.
fn bar_message(what: &str, p: &TransferProgress) -> String {
    let phase = if p.paused {
        "last round, paused".to_string()
    } else {
        format!("round {}", p.round)
    };
    format!(
        "{what}: {phase}, {:.1} MiB sent",
        p.bytes as f64 / (1u64 << 20) as f64
    )
}

/// The figures line printed (and logged by rxend) at the end of a transfer.
pub fn figures(stats: &TransferStats) -> String {
    let unlogged = if stats.unlogged_pages > 0 {
        format!(
            "; {} pages rewritten unseen by the dirty log, resent",
            stats.unlogged_pages
        )
    } else {
        String::new()
    };
    let disks = if stats.disk_bytes > 0 {
        format!(
            "; disks {:.1} MiB, {} bytes in the last round",
            stats.disk_bytes as f64 / (1u64 << 20) as f64,
            stats.last_round_disk_bytes
        )
    } else {
        String::new()
    };
    format!(
        "rounds {}, {} bytes sent ({:.1} MiB; {} pages, {} zero pages), total {:.0} ms, downtime {:.1} ms{unlogged}{disks}",
        stats.rounds,
        stats.bytes,
        stats.bytes as f64 / (1u64 << 20) as f64,
        stats.pages,
        stats.zero_pages,
        stats.total_ms,
        stats.downtime_ms
    )
}

/// `-v`'s lines after the figures: the stop-and-copy phase, phase by phase,
/// in microseconds (`  LABEL  N us`), then what they leave out and the downtime.
pub fn breakdown(stats: &TransferStats) -> String {
    let Some(p) = &stats.stop_copy else {
        return "stop-and-copy: the VMM gave no breakdown\n".into();
    };
    let downtime_us = (stats.downtime_ms * 1000.0) as u64;
    let mut out = String::from("stop-and-copy, in microseconds:\n");
    for (what, us) in p.phases() {
        out.push_str(&format!("  {what:<24}{us:>10} us"));
        if what == "last round on the wire" {
            out.push_str(&format!(" ({} bytes)", p.last_round_bytes));
        }
        if what == "last disk blocks" {
            out.push_str(&format!(" ({} bytes)", stats.last_round_disk_bytes));
        }
        out.push('\n');
    }
    let rest = if p.target_restore_us.is_some() {
        "handshake, the target reading the stream's tail"
    } else {
        "between the phases"
    };
    out.push_str(&format!(
        "  {:<24}{:>10} us ({rest})\n",
        "not broken down",
        downtime_us.saturating_sub(p.accounted_us())
    ));
    out.push_str(&format!("  {:<24}{downtime_us:>10} us\n", "downtime"));
    out
}

/// Quotes a word for `sh -c`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Starts the ssh transport as xl does: `sh -c "exec SSHCMD HOST rxl migrate-receive"`,
/// or `sh -c "exec HOST"` when SSHCMD is empty; its stdin and stdout are one end
/// of a socket pair, and the other end is returned with the child.
pub fn spawn_ssh(
    ssh: &str,
    host: &str,
    paused: bool,
) -> Result<(std::process::Child, OwnedFd), TransferError> {
    let (ours, theirs) = UnixStream::pair().map_err(TransferError::Socket)?;
    let cmd = if ssh.is_empty() {
        format!("exec {host}")
    } else {
        format!(
            "exec {ssh} {} rxl migrate-receive{}",
            sh_quote(host),
            if paused { " -p" } else { "" }
        )
    };
    let input = theirs.try_clone().map_err(TransferError::Socket)?;
    let child = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(Stdio::from(OwnedFd::from(input)))
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| TransferError::Spawn { cmd, source })?;
    Ok((child, OwnedFd::from(ours)))
}

/// For `rxl migrate-receive`: a socket pair whose one end is pumped to and
/// from stdin/stdout; returns the other end and the thread pumping towards stdout.
pub fn stdio_channel() -> Result<(OwnedFd, std::thread::JoinHandle<()>), TransferError> {
    let (ours, theirs) = UnixStream::pair().map_err(TransferError::Socket)?;
    let mut to_sock = ours.try_clone().map_err(TransferError::Socket)?;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_sock.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_sock.shutdown(std::net::Shutdown::Write);
    });
    let mut from_sock = ours;
    let out = std::thread::spawn(move || {
        let mut stdout = std::io::stdout().lock();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match from_sock.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stdout
                        .write_all(&buf[..n])
                        .and_then(|()| stdout.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    Ok((OwnedFd::from(theirs), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_figures() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        let s = TransferStats {
            rounds: 3,
            bytes: 1 << 20,
            ..Default::default()
        };
        assert!(figures(&s).starts_with("rounds 3, 1048576 bytes sent (1.0 MiB"));
        assert!(breakdown(&s).contains("no breakdown"));
    }

    #[test]
    fn the_saving_line_reports_the_header_flags_and_the_config_length() {
        use rxen_proto::stream::{Header, RecordType, StreamWriter};
        let mut w = StreamWriter::new(Vec::new(), Header::new(false)).expect("header");
        w.record(RecordType::Config, b"{\"config\":{}}")
            .expect("record");
        w.record(RecordType::End, b"").expect("end");
        let bytes = w.into_inner();
        let info = SaveFileInfo::read(&bytes[..]).expect("info");
        assert_eq!(
            info,
            SaveFileInfo {
                mandatory_flags: 0,
                optional_flags: 0,
                config_len: 13
            }
        );
        assert_eq!(
            saving_line(std::path::Path::new("/tmp/d.sav"), &info),
            "Saving to /tmp/d.sav new rxl format (info 0x0/0x0/13)"
        );
        assert!(SaveFileInfo::read(&bytes[..40]).is_err());
    }

    #[test]
    fn breakdown_lists_the_phases_and_the_rest() {
        let s = TransferStats {
            downtime_ms: 10.0,
            stop_copy: Some(rxen_proto::vmctl::StopCopyBreakdown {
                vcpu_pause_us: 100,
                device_freeze_us: 5,
                page_list_us: None,
                dirty_sync_us: Some(200),
                rehash_us: None,
                state_capture_us: 300,
                last_round_bytes: 4096,
                last_round_wire_us: 1000,
                file_sync_us: None,
                target_restore_us: Some(2000),
                target_resume_us: Some(400),
                disk_last_round_us: None,
            }),
            ..Default::default()
        };
        let text = breakdown(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "stop-and-copy, in microseconds:");
        assert_eq!(lines[1], "  vCPU pause                     100 us");
        assert!(lines
            .iter()
            .any(|l| l.contains("dirty-log sync") && l.ends_with(" 200 us")));
        assert!(!text.contains("rehash"), "{text}");
        assert!(text.contains("1000 us (4096 bytes)"), "{text}");
        // 10 ms less 4005 us measured.
        assert!(
            text.contains("not broken down               5995 us"),
            "{text}"
        );
        assert!(
            text.ends_with("  downtime                     10000 us\n"),
            "{text}"
        );
    }

    #[test]
    fn a_storage_migration_shows_its_disk_figures_and_phase() {
        let s = TransferStats {
            downtime_ms: 10.0,
            disk_bytes: 3 << 20,
            last_round_disk_bytes: 65536,
            stop_copy: Some(rxen_proto::vmctl::StopCopyBreakdown {
                disk_last_round_us: Some(700),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            figures(&s).ends_with("; disks 3.0 MiB, 65536 bytes in the last round"),
            "{}",
            figures(&s)
        );
        let text = breakdown(&s);
        assert!(text.contains("last disk blocks"), "{text}");
        assert!(text.contains("700 us (65536 bytes)"), "{text}");
        assert!(!figures(&TransferStats::default()).contains("disks"));
    }
}
