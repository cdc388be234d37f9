//! The migration connection between the source and the target VMM: short
//! handshake lines around the stream. The target says `ready` once its VM is
//! built (the source pauses the guest only then) and `received` once the
//! stream is in; the source answers `go`; the target says `resumed` once the
//! guest runs there, then `timings {json}` (its side of the downtime). Any
//! `error: why` line ends the migration, and the guest goes on at the source.

use std::fs::File;
use std::io::Read;
use std::time::Duration;

use rxen_proto::vmctl::TargetTimings;

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
