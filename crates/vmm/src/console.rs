//! The serial console's host side: a ring of recent output, `console.log`,
//! and the clients of `console.sock`.
//!
//! `console.log` is opened once, at start-up, for appending; rxend rotates it
//! (copy and truncate, see `rxen_logfile::rotate_copy_truncate`), so the VMM
//! never opens or renames a path while the guest runs.
//!
//! Output comes from the vCPU thread that wrote the UART; it never blocks: a
//! client whose socket is full loses those bytes, a client whose socket failed
//! is dropped. Input from any client is queued here and fed to the UART as its
//! small receive FIFO drains.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::lock;

/// Bytes of recent output replayed to a new client.
pub const RING_SIZE: usize = 64 * 1024;
/// Most console input queued for the guest; more is dropped.
pub const INPUT_QUEUE_MAX: usize = 64 * 1024;

/// Errors of the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The console log could not be opened.
    #[error("cannot open console log {path}: {source}")]
    Log {
        /// The file.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
}

struct Client {
    id: u64,
    stream: UnixStream,
}

struct HubInner {
    ring: VecDeque<u8>,
    log: Option<File>,
    clients: Vec<Client>,
}

/// Where guest console output goes.
pub struct ConsoleHub {
    inner: Mutex<HubInner>,
}

/// Writes every byte it gets to all outputs; never blocks.
fn send_nonblocking(stream: &mut UnixStream, bytes: &[u8]) -> io::Result<()> {
    match stream.write(bytes) {
        Ok(_) => Ok(()),
        // A full socket: the slow client loses these bytes.
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Opens the console log at `path` for appending (`O_APPEND`: rxend's truncation of a rotated
/// log sends the next write to the start of the file).
pub fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

impl ConsoleHub {
    /// Creates the hub, appending output to the file at `log_path` (`None`: no log),
    /// which is opened here, once (`O_APPEND`: rxend's truncation of a rotated log
    /// sends the next write to the start of the file).
    pub fn new(log_path: Option<&Path>) -> Result<Self, ConsoleError> {
        let log = match log_path {
            Some(p) => Some(open_log(p).map_err(|source| ConsoleError::Log {
                path: p.display().to_string(),
                source,
            })?),
            None => None,
        };
        Ok(Self::with_log(log))
    }

    /// Creates the hub around a log opened already (see [`open_log`]).
    pub fn with_log(log: Option<std::fs::File>) -> Self {
        Self {
            inner: Mutex::new(HubInner {
                ring: VecDeque::with_capacity(RING_SIZE),
                log,
                clients: Vec::new(),
            }),
        }
    }

    /// Records guest output and passes it to the log and every client.
    pub fn output(&self, bytes: &[u8]) {
        let mut g = lock(&self.inner);
        let inner = &mut *g;
        inner.ring.extend(bytes);
        let excess = inner.ring.len().saturating_sub(RING_SIZE);
        inner.ring.drain(..excess);
        if let Some(log) = inner.log.as_mut() {
            if let Err(e) = log.write_all(bytes) {
                tracing::warn!("console log write failed, closing it: {e}");
                inner.log = None;
            }
        }
        inner
            .clients
            .retain_mut(|c| match send_nonblocking(&mut c.stream, bytes) {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(client = c.id, "dropping console client: {e}");
                    let _ = c.stream.shutdown(std::net::Shutdown::Both);
                    false
                }
            });
    }

    /// Replays the ring to `stream` and adds it as a client (the stream must be non-blocking).
    pub fn attach(&self, id: u64, mut stream: UnixStream) {
        let mut g = lock(&self.inner);
        let (a, b) = g.ring.as_slices();
        let replay = [a, b].concat();
        let mut sent = 0;
        while sent < replay.len() {
            match stream.write(replay.get(sent..).unwrap_or(&[])) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        g.clients.push(Client { id, stream });
    }

    /// Removes client `id`.
    pub fn detach(&self, id: u64) {
        lock(&self.inner).clients.retain(|c| c.id != id);
    }

    /// The recent output (at most [`RING_SIZE`] bytes).
    pub fn recent(&self) -> Vec<u8> {
        let g = lock(&self.inner);
        let (a, b) = g.ring.as_slices();
        [a, b].concat()
    }
}

/// The UART's output sink: hands bytes to a [`ConsoleHub`].
pub struct ConsoleWriter(pub Arc<ConsoleHub>);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.output(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Input typed on console clients, waiting for room in the UART FIFO.
#[derive(Debug, Default)]
pub struct InputQueue {
    queue: VecDeque<u8>,
    /// Where a BREAK comes before the queued byte at that index (`rxl sysrq`), in order.
    breaks: VecDeque<usize>,
}

impl InputQueue {
    /// Queues `bytes`, dropping what does not fit in [`INPUT_QUEUE_MAX`]; returns bytes dropped.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let room = INPUT_QUEUE_MAX.saturating_sub(self.queue.len());
        let take = bytes.len().min(room);
        self.queue.extend(bytes.iter().take(take));
        bytes.len() - take
    }

    /// Queues a BREAK followed by `key` (a magic SysRq on a serial line); false when the
    /// queue is full.
    pub fn push_break(&mut self, key: u8) -> bool {
        if self.queue.len() >= INPUT_QUEUE_MAX {
            return false;
        }
        self.breaks.push_back(self.queue.len());
        self.queue.push_back(key);
        true
    }

    /// Moves queued bytes into the FIFO through `enqueue` (which returns how many it took),
    /// and each queued BREAK in its place through `brk` (false: not now, try again later).
    pub fn feed(&mut self, mut enqueue: impl FnMut(&[u8]) -> usize, mut brk: impl FnMut() -> bool) {
        loop {
            if self.breaks.front() == Some(&0) {
                if !brk() {
                    break;
                }
                self.breaks.pop_front();
                continue;
            }
            if self.queue.is_empty() {
                break;
            }
            let limit = self.breaks.front().copied().unwrap_or(self.queue.len());
            let (front, _) = self.queue.as_slices();
            let n = enqueue(front.get(..limit.min(front.len())).unwrap_or_default());
            if n == 0 {
                break;
            }
            let n = n.min(self.queue.len());
            self.queue.drain(..n);
            for b in &mut self.breaks {
                *b = b.saturating_sub(n);
            }
        }
    }

    /// Where the queued BREAKs wait (indices into [`InputQueue::contents`]), in order.
    pub fn breaks(&self) -> Vec<usize> {
        self.breaks.iter().copied().collect()
    }

    /// Queues `bytes` with BREAKs before the bytes at `breaks` (a saved queue); `None` (nothing
    /// queued) when they do not fit: more than [`INPUT_QUEUE_MAX`] bytes, or breaks out of
    /// order or past the bytes.
    pub fn restore(bytes: &[u8], breaks: &[usize]) -> Option<Self> {
        if bytes.len() > INPUT_QUEUE_MAX
            || breaks.windows(2).any(|w| w[0] > w[1])
            || breaks.iter().any(|&b| b >= bytes.len())
        {
            return None;
        }
        Some(Self {
            queue: bytes.iter().copied().collect(),
            breaks: breaks.iter().copied().collect(),
        })
    }

    /// Bytes still queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// A copy of what is queued, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        self.queue.iter().copied().collect()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn ring_keeps_last_64k() {
        let hub = ConsoleHub::new(None).expect("hub");
        let big: Vec<u8> = (0..RING_SIZE + 100).map(|i| (i % 251) as u8).collect();
        hub.output(&big);
        let r = hub.recent();
        assert_eq!(r.len(), RING_SIZE);
        assert_eq!(r[..], big[100..]);
    }

    #[test]
    fn log_clients_and_replay() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("console.log");
        let hub = ConsoleHub::new(Some(&log)).expect("hub");
        hub.output(b"early ");
        let (mine, theirs) = UnixStream::pair().expect("pair");
        theirs.set_nonblocking(true).expect("nb");
        hub.attach(1, theirs);
        hub.output(b"late");
        let mut buf = [0u8; 10];
        let mut mine = mine;
        mine.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"early late");
        assert_eq!(std::fs::read(&log).expect("log"), b"early late");
    }

    #[test]
    fn stuck_and_dead_clients_never_block() {
        let hub = ConsoleHub::new(None).expect("hub");
        let (stuck, theirs) = UnixStream::pair().expect("pair");
        theirs.set_nonblocking(true).expect("nb");
        hub.attach(1, theirs);
        let (dead, theirs2) = UnixStream::pair().expect("pair");
        theirs2.set_nonblocking(true).expect("nb");
        hub.attach(2, theirs2);
        drop(dead);
        let chunk = vec![b'x'; 4096];
        // Far more than any socket buffer: must return promptly.
        for _ in 0..1024 {
            hub.output(&chunk);
        }
        assert_eq!(lock(&hub.inner).clients.len(), 1);
        drop(stuck);
    }

    #[test]
    fn input_queue_feeds_as_fifo_drains() {
        let mut q = InputQueue::default();
        q.push(b"heartbeat\n");
        let mut fifo = Vec::new();
        q.feed(
            |b| {
                let n = b.len().min(4usize.saturating_sub(fifo.len()));
                fifo.extend_from_slice(&b[..n]);
                n
            },
            || true,
        );
        assert_eq!(fifo, b"hear");
        assert_eq!(q.len(), 6);
        fifo.clear();
        q.feed(
            |b| {
                fifo.extend_from_slice(b);
                b.len()
            },
            || true,
        );
        assert_eq!(fifo, b"tbeat\n");
        assert!(q.is_empty());
        assert_eq!(q.push(&vec![0; INPUT_QUEUE_MAX + 5]), 5);
    }

    #[test]
    fn a_saved_queue_with_breaks_comes_back_and_a_bad_one_is_refused() {
        let mut q = InputQueue::default();
        q.push(b"ab");
        assert!(q.push_break(b'h'));
        let back = InputQueue::restore(&q.contents(), &q.breaks()).expect("restore");
        assert_eq!((back.contents(), back.breaks()), (b"abh".to_vec(), vec![2]));
        assert!(InputQueue::restore(b"ab", &[2]).is_none(), "past the bytes");
        assert!(
            InputQueue::restore(b"abc", &[2, 1]).is_none(),
            "out of order"
        );
        assert!(InputQueue::restore(&vec![0; INPUT_QUEUE_MAX + 1], &[]).is_none());
    }

    #[test]
    fn a_break_goes_in_its_place_once_the_fifo_before_it_drained() {
        let mut q = InputQueue::default();
        q.push(b"ab");
        assert!(q.push_break(b'h'));
        q.push(b"c");
        // The FIFO (`got`, B = a BREAK) takes bytes; a BREAK only when it is empty.
        let mut got = Vec::new();
        let mut fifo_empty = false;
        let feed = |q: &mut InputQueue, got: &mut Vec<u8>, empty: bool| {
            let got = std::cell::RefCell::new(got);
            q.feed(
                |b| {
                    got.borrow_mut().extend_from_slice(b);
                    b.len()
                },
                || {
                    if empty {
                        got.borrow_mut().push(b'B');
                    }
                    empty
                },
            )
        };
        feed(&mut q, &mut got, fifo_empty);
        assert_eq!(got, b"ab", "the bytes before the BREAK go, the BREAK waits");
        fifo_empty = true;
        feed(&mut q, &mut got, fifo_empty);
        assert_eq!(got, b"abBhc");
        assert!(q.is_empty());
    }
}
