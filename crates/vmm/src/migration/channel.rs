//! The migration connection between the source and the target VMM: short
//! handshake lines around the stream. The target says `ready` once its VM is
//! built (the source pauses the guest only then) and `received` once the
//! stream is in; the source answers `go`; the target says `resumed` once the
//! guest runs there, then `timings {json}` (its side of the downtime). Any
//! `error: why` line ends the migration, and the guest goes on at the source.

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
        };
        send_timings(&target, &timings).expect("timings");
        let line = read_line(&source).expect("line");
        let back = target_timings(&line).expect("parsed");
        assert_eq!((back.restore_us, back.resume_us), (12, 34));
        drop(target);
        let e = expect(&source, RESUMED).expect_err("gone").to_string();
        assert!(e.starts_with("the target went away"), "{e}");
    }
}
