//! rxend's log: every line goes to the log file, to stderr, and to an
//! in-memory ring that `rxl dmesg` reads.

use rxen_logfile::RotatingFile;
use std::collections::VecDeque;
use std::fmt::Display;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// Size at which the log file is rotated (`rxend.log` → `rxend.log.1`).
pub const LOG_MAX_BYTES: u64 = 8 << 20;
/// Older log files kept beside it.
pub const LOG_KEEP: u32 = 3;

/// Lines kept for `rxl dmesg`.
const RING_LINES: usize = 2000;

/// The daemon's log.
pub struct Log {
    inner: Mutex<Inner>,
}

struct Inner {
    ring: VecDeque<String>,
    file: Option<RotatingFile>,
}

impl Log {
    /// Opens (appends to) the log file at `path`, rotated at [`LOG_MAX_BYTES`] with
    /// [`LOG_KEEP`] older files; logging still works in memory if it cannot be opened.
    pub fn open(path: &Path) -> Log {
        let file = RotatingFile::open(path, LOG_MAX_BYTES, LOG_KEEP).ok();
        Log {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                file,
            }),
        }
    }

    /// Records an informational line.
    pub fn info(&self, msg: impl Display) {
        self.line("info", msg);
    }

    /// Records a warning.
    pub fn warn(&self, msg: impl Display) {
        self.line("warning", msg);
    }

    /// Records an error.
    pub fn error(&self, msg: impl Display) {
        self.line("error", msg);
    }

    fn line(&self, level: &str, msg: impl Display) {
        let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S%.3f");
        // One entry per line: names typed by clients cannot forge lines or send escapes.
        let mut clean = String::new();
        for c in msg.to_string().chars() {
            if c.is_control() && c != '\t' {
                clean.extend(c.escape_default());
            } else {
                clean.push(c);
            }
        }
        let msg = clean;
        let line = format!("[{now}] {level}: {msg}");
        // Not eprintln!: a closed stderr (the rxl that started rxend has exited) must not
        // stop the daemon.
        let _ = writeln!(std::io::stderr(), "{line}");
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(f) = inner.file.as_mut() {
            // A full disk must not stop the daemon; the ring still has the line.
            let _ = writeln!(f, "{line}");
        }
        if inner.ring.len() == RING_LINES {
            inner.ring.pop_front();
        }
        inner.ring.push_back(line);
    }

    /// The lines in the ring, oldest first; `clear` empties the ring afterwards.
    pub fn text(&self, clear: bool) -> String {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut out = String::new();
        for l in &inner.ring {
            out.push_str(l);
            out.push('\n');
        }
        if clear {
            inner.ring.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_and_file_get_every_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rxend.log");
        let log = Log::open(&path);
        log.info("domain 1 created");
        log.warn("careful");
        let text = log.text(true);
        assert!(text.contains("info: domain 1 created"), "{text}");
        assert!(text.contains("warning: careful"), "{text}");
        assert_eq!(log.text(false), "");
        let file = std::fs::read_to_string(&path).expect("log file");
        assert_eq!(file.lines().count(), 2);
    }

    #[test]
    fn names_from_clients_cannot_forge_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(&dir.path().join("rxend.log"));
        log.warn(
            "refused: marlowe may not manage domain x\n[2030-01-01] info: all is well\u{1b}[2J",
        );
        let text = log.text(false);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("domain x\\n[2030"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }
}
