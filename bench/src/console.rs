//! A guest's serial console as lines, read on a thread, with timed waits.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::error::{BenchError, Result};

/// Lines from a console, plus the writer that types into it.
pub struct Console {
    lines: Receiver<String>,
    input: Option<Box<dyn Write + Send>>,
    /// The last lines seen, for error messages.
    tail: Vec<String>,
}

impl Console {
    /// Reads lines from `output` on a thread; `input` types into the guest.
    pub fn new(
        output: impl Read + Send + 'static,
        input: Option<Box<dyn Write + Send>>,
    ) -> Console {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(output);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .to_string();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Console {
            lines: rx,
            input,
            tail: Vec::new(),
        }
    }

    /// Waits for a line that satisfies `pred` and returns it.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if self.tail.len() >= 4 {
                        self.tail.remove(0);
                    }
                    self.tail.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(BenchError::timeout(
                        format!("{what} (last lines: {:?})", self.tail),
                        timeout,
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(BenchError::Unexpected(format!(
                        "console closed while waiting for {what} (last lines: {:?})",
                        self.tail
                    )))
                }
            }
        }
    }

    /// Waits for a line containing `needle`.
    pub fn wait_contains(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for(&format!("{needle:?}"), timeout, |l| l.contains(needle))
    }

    /// Types a command and a newline into the guest.
    pub fn send(&mut self, command: &str) -> Result<()> {
        let Some(w) = self.input.as_mut() else {
            return Err(BenchError::Unexpected("console has no input".into()));
        };
        w.write_all(format!("{command}\n").as_bytes())
            .and_then(|()| w.flush())
            .map_err(|e| BenchError::io("type into the console", e))
    }

    /// Asks for the heartbeat and returns N from `heartbeat N`: proof the guest runs.
    pub fn heartbeat(&mut self, timeout: Duration) -> Result<u64> {
        self.send("heartbeat")?;
        let line = self.wait_for("heartbeat N", timeout, |l| {
            l.trim()
                .strip_prefix("heartbeat ")
                .is_some_and(|n| n.trim().parse::<u64>().is_ok())
        })?;
        Ok(line.trim()["heartbeat ".len()..]
            .trim()
            .parse()
            .unwrap_or(0))
    }
}
