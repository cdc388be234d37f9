//! The migration connection between the source and the target VMM: short
//! handshake lines around the stream. The target says `ready` once its VM is
//! built (the source pauses the guest only then), `applied N` once it has
//! put round N's pages in place (when the stream's header asks for it), and
//! `received` once the stream is in; the source answers `go`; the target says
//! `resumed` once the guest runs there, then `timings {json}` (its side of
//! the downtime). Any `error: why` line ends the migration, and the guest goes
//! on at the source.

use std::fs::File;
use std::io::{Read, Write};
use std::time::Duration;

use rxen_proto::vmctl::TargetTimings;

use super::TransferError;

/// The target's VM is built: the source may pause the guest.
pub const READY: &str = "ready";
/// The target has the whole stream and checked it.
pub const RECEIVED: &str = "received";
/// The source lets the target run the guest (it will not resume it itself).
pub const GO: &str = "go";
/// The guest runs on the target.
pub const RESUMED: &str = "resumed";

/// What starts the target's line after a pre-copy round: `applied N`.
const APPLIED_PREFIX: &str = "applied ";

/// The target's line once round `round`'s pages are in place.
pub(crate) fn applied(round: u32) -> String {
    format!("{APPLIED_PREFIX}{round}")
}

/// The source's side of a round's end: reads the target's lines until `applied round`. The
/// target's `ready` (said before any round) and earlier rounds' lines pass; `ready` is noted in
/// `ready_seen`.
pub(crate) fn expect_applied(
    sock: &File,
    round: u32,
    ready_seen: &mut bool,
) -> Result<(), TransferError> {
    let want = applied(round);
    loop {
        let l = read_line(sock)
            .map_err(|e| TransferError::Peer(format!("the target went away: {e}")))?;
        if l == want {
            return Ok(());
        }
        if l == READY && !*ready_seen {
            *ready_seen = true;
            continue;
        }
        let earlier = l
            .strip_prefix(APPLIED_PREFIX)
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n < round);
        if !earlier {
            let why = l.strip_prefix("error: ").unwrap_or(&l).to_string();
            return Err(TransferError::Peer(format!(
                "the target refused the domain: {why}"
            )));
        }
    }
}

/// Sends one handshake line (`line` without its newline).
pub(crate) fn say(sock: &File, line: &str) -> std::io::Result<()> {
    (&*sock).write_all(format!("{line}\n").as_bytes())
}

/// Tells the source why the target cannot take the domain.
pub(crate) fn refuse(sock: &File, why: &dyn std::fmt::Display) {
    let _ = say(sock, &format!("error: {why}"));
}

/// The source's side: waits for the target's `want` line; an `error: why`
/// line, another line or a closed connection is the peer's error.
///
/// Every wait of the handshake sleeps on the connection. Polling instead (tried at stop 22)
/// cut the median wake-up a little on an otherwise idle host, but when the source and the
/// target share few CPUs (the benchmark's loopback on two), a poller holds a CPU that the
/// thread it waits for needs: one migration in four then paused the guest for 2 to 4 ms.
pub(crate) fn expect(sock: &File, want: &str) -> Result<(), TransferError> {
    match read_line(sock) {
        Ok(l) if l == want => Ok(()),
        Ok(l) => {
            let why = l.strip_prefix("error: ").unwrap_or(&l).to_string();
            Err(TransferError::Peer(format!(
                "the target refused the domain: {why}"
            )))
        }
        Err(e) => Err(TransferError::Peer(format!("the target went away: {e}"))),
    }
}

/// The target's last line: its side of the downtime, after `resumed` (which
/// a source from before the breakdown reads last).
pub(crate) fn send_timings(sock: &File, timings: &TargetTimings) -> std::io::Result<()> {
    let json = serde_json::to_string(timings).map_err(std::io::Error::other)?;
    say(sock, &format!("{TIMINGS_PREFIX}{json}"))
}

/// The target's `timings {json}` line, sent after `resumed`.
pub(crate) fn target_timings(line: &str) -> Option<TargetTimings> {
    serde_json::from_str(line.strip_prefix(TIMINGS_PREFIX)?).ok()
}

/// What starts the target's timings line.
pub(crate) const TIMINGS_PREFIX: &str = "timings ";

/// Sets the receive timeout of a socket (ignored for other files).
pub(crate) fn set_timeout(f: &File, t: Option<Duration>) {
    let tv = nix::sys::time::TimeVal::new(t.map(|d| d.as_secs() as i64).unwrap_or(0), 0);
    let _ = nix::sys::socket::setsockopt(f, nix::sys::socket::sockopt::ReceiveTimeout, &tv);
}

/// Reads one short handshake line (without its newline).
pub fn read_line(f: &File) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match (&*f).read(&mut b) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() < 4096 => line.push(b[0]),
            Ok(_) => return Err(std::io::Error::other("handshake line too long")),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The buffered reader an incoming migration's stream is read through (see `Vm::build`).
pub type Incoming<'a> = std::io::BufReader<&'a File>;

/// The buffer of an [`Incoming`] reader: large enough for a round's page batches.
pub const INCOMING_BUFFER: usize = 1 << 20;

/// Takes ownership of the inherited migration socket `fd`.
pub(crate) fn take_incoming(fd: i32) -> std::io::Result<File> {
    let f = crate::vm::take_fd(fd)?;
    set_timeout(&f, Some(Duration::from_secs(120)));
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    fn pair() -> (File, File) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (File::from(OwnedFd::from(a)), File::from(OwnedFd::from(b)))
    }

    #[test]
    fn handshake_lines_and_refusals() {
        let (source, target) = pair();
        say(&target, READY).expect("say");
        expect(&source, READY).expect("ready");
        refuse(&target, &"no room for 64 MiB");
        let e = expect(&source, RECEIVED).expect_err("refused").to_string();
        assert_eq!(e, "the target refused the domain: no room for 64 MiB");
        say(&target, GO).expect("say");
        let e = expect(&source, RECEIVED)
            .expect_err("wrong line")
            .to_string();
        assert_eq!(e, "the target refused the domain: go");
        let timings = TargetTimings {
            restore_us: 12,
            resume_us: 34,
            running_at_unix_us: Some(1_800_000_000_000_000),
        };
        send_timings(&target, &timings).expect("timings");
        let line = read_line(&source).expect("line");
        let back = target_timings(&line).expect("parsed");
        assert_eq!(back, timings);
        // A target from before the stamp.
        let old = target_timings(r#"timings {"restore_us":1,"resume_us":2}"#).expect("old");
        assert_eq!(old.running_at_unix_us, None);
        drop(target);
        let e = expect(&source, RESUMED).expect_err("gone").to_string();
        assert!(e.starts_with("the target went away"), "{e}");
    }

    #[test]
    fn round_acknowledgements_pass_ready_and_earlier_rounds() {
        let (source, target) = pair();
        for l in [READY.to_string(), applied(1), applied(2)] {
            say(&target, &l).expect("say");
        }
        let mut ready = false;
        expect_applied(&source, 2, &mut ready).expect("round 2");
        assert!(ready, "ready was seen on the way");
        say(&target, &applied(4)).expect("say");
        let e = expect_applied(&source, 3, &mut ready).expect_err("a later round");
        assert_eq!(e.to_string(), "the target refused the domain: applied 4");
        refuse(&target, &"cannot write a page");
        let e = expect_applied(&source, 5, &mut ready).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "the target refused the domain: cannot write a page"
        );
        say(&target, GO).expect("say");
        expect(&source, GO).expect("go");
    }
}
