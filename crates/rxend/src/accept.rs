//! Accept loops that hold up under pressure: a thread per connection, but never more than
//! a limit in total and per peer; a thread that cannot be created refuses its connection
//! instead of aborting rxend; a failing `accept` (out of descriptors) backs off and is
//! logged once per interval with a count instead of spinning.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::log::Log;

fn lock(m: &Mutex<Active>) -> std::sync::MutexGuard<'_, Active> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How often a repeated error is logged at most.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long to wait after `accept` fails for lack of descriptors or memory.
const BACKOFF: Duration = Duration::from_millis(200);

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once, all peers together.
    pub total: usize,
    /// Connections served at once from one peer (an IP address; ignored when the listener
    /// has no notion of peer).
    pub per_peer: usize,
}

/// A log line that is written at most once per [`LOG_INTERVAL`], with the number of times
/// it happened since.
struct Throttled {
    last: Option<Instant>,
    missed: u64,
}

impl Throttled {
    fn new() -> Self {
        Self {
            last: None,
            missed: 0,
        }
    }

    fn log(&mut self, log: &Log, msg: impl std::fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < LOG_INTERVAL)
        {
            self.missed += 1;
            return;
        }
        if self.missed > 0 {
            log.error(format!("{msg} (and {} more times)", self.missed));
        } else {
            log.error(msg);
        }
        self.last = Some(now);
        self.missed = 0;
    }
}

/// Connections being served, in total and per peer.
#[derive(Default)]
struct Active {
    total: usize,
    per_peer: BTreeMap<String, usize>,
}

/// One connection's place; given back when dropped.
struct Slot {
    active: Arc<Mutex<Active>>,
    peer: Option<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut a = lock(&self.active);
        a.total = a.total.saturating_sub(1);
        if let Some(p) = &self.peer {
            if let Some(n) = a.per_peer.get_mut(p) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    a.per_peer.remove(p);
                }
            }
        }
    }
}

fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

/// Accepts connections with `accept` forever and serves each with `handle` in a thread of
/// its own, within `limits`. `peer` names a connection's peer (for the per-peer limit);
/// `name` names the listener in log lines and threads.
pub fn serve<S, A, P, H>(log: &Log, name: &str, limits: Limits, mut accept: A, peer: P, handle: H)
where
    S: Send + 'static,
    A: FnMut() -> io::Result<S>,
    P: Fn(&S) -> Option<String>,
    H: Fn(S) + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    let active = Arc::new(Mutex::new(Active::default()));
    let mut accept_errors = Throttled::new();
    let mut refusals = Throttled::new();
    loop {
        let conn = match accept() {
            Ok(c) => c,
            Err(e) => {
                accept_errors.log(log, format!("{name}: accept: {e}"));
                if out_of_resources(&e) {
                    std::thread::sleep(BACKOFF);
                }
                continue;
            }
        };
        let who = peer(&conn);
        let slot = {
            let mut a = lock(&active);
            let from_peer = who
                .as_ref()
                .and_then(|p| a.per_peer.get(p).copied())
                .unwrap_or(0);
            if a.total >= limits.total {
                None.ok_or(format!("{} connections already", a.total))
            } else if who.is_some() && from_peer >= limits.per_peer {
                None.ok_or(format!("{from_peer} connections from this peer already"))
            } else {
                a.total += 1;
                if let Some(p) = &who {
                    *a.per_peer.entry(p.clone()).or_insert(0) += 1;
                }
                Ok(Slot {
                    active: active.clone(),
                    peer: who.clone(),
                })
            }
        };
        let slot = match slot {
            Ok(s) => s,
            Err(why) => {
                refusals.log(
                    log,
                    format!(
                        "{name}: refused a connection{}: {why}",
                        who.as_deref()
                            .map(|p| format!(" from {p}"))
                            .unwrap_or_default()
                    ),
                );
                drop(conn);
                continue;
            }
        };
        let h = handle.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-conn"))
            .spawn(move || {
                let _slot = slot;
                h(conn);
            });
        if let Err(e) = spawned {
            // The closure (and with it the connection) is dropped: the peer sees it closed.
            refusals.log(log, format!("{name}: refused a connection: no thread: {e}"));
            std::thread::sleep(BACKOFF);
        }
    }
}
