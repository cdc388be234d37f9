//! The relocation server (xend's, for live migration): TCP, `hosts-allow`
//! regular expressions on the peer's address or name, and a shared key that
//! both sides prove they hold by HMAC-SHA256 over random nonces (the key
//! never crosses the wire). Everything else is refused before a single page
//! is accepted, and logged.
//!
//! Handshake, one JSON object per line:
//! 1. target → source: `{"hello":"rxen-relocation","version":1,"nonce":N1}`
//! 2. source → target: `{"nonce":N2,"mac":HMAC(key,"rxen-relocation source"|N1|N2)}`
//! 3. target → source: `{"mac":HMAC(key,"rxen-relocation target"|N2|N1)}` or `{"error":...}`
//! 4. source → target: the [`Reservation`]
//! 5. target → source: `{"ok":true}` or `{"error":...}`; then the stream.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::daemon::{Daemon, Reservation};

/// The relocation port xend used.
pub const DEFAULT_PORT: u16 = 8002;
/// Longest handshake line.
const MAX_MSG: usize = 1 << 20;
/// The line xl's receiver sends first on the ssh transport.
pub const XL_READY: &str = "xl migration receiver ready, send binary domain data.";

/// Errors of the relocation protocol.
#[derive(Debug, thiserror::Error)]
pub enum RelocationError {
    /// The connection failed.
    #[error("relocation connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not the protocol.
    #[error("relocation protocol: {0}")]
    Protocol(String),
    /// The peer could not prove it holds the key.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The target refused the domain.
    #[error("the target refused the domain: {0}")]
    Refused(String),
    /// The key file is unusable.
    #[error("relocation key {path}: {why}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A `hosts-allow` entry is not a regular expression.
    #[error("hosts-allow entry {0:?}: {1}")]
    BadPattern(String, String),
}

/// `[relocation]` in rxend's config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RelocationConfig {
    /// Listen for migrations (xend-relocation-server).
    #[serde(default)]
    pub server: bool,
    /// TCP port (xend-relocation-port).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Address to bind; empty = every interface (xend-relocation-address).
    #[serde(default)]
    pub address: String,
    /// Regular expressions on the peer's address or name; empty = allow all (xend-relocation-hosts-allow).
    #[serde(default)]
    pub hosts_allow: Vec<String>,
    /// The shared key; both sides need the same.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

impl Default for RelocationConfig {
    fn default() -> Self {
        Self {
            server: false,
            port: DEFAULT_PORT,
            address: String::new(),
            hosts_allow: Vec::new(),
            key_file: None,
        }
    }
}

/// Reads a shared key file (its bytes, without a trailing newline); at least 16 bytes.
pub fn read_key(path: &Path) -> Result<Vec<u8>, RelocationError> {
    let err = |why: String| RelocationError::Key {
        path: path.to_path_buf(),
        why,
    };
    let mut key = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    if key.len() < 16 {
        return Err(err("shorter than 16 bytes".into()));
    }
    Ok(key)
}

/// Compiled `hosts-allow` patterns.
pub struct HostsAllow(Vec<regex::Regex>);

impl HostsAllow {
    /// Compiles the patterns; none means everyone may connect (as xend).
    pub fn new(patterns: &[String]) -> Result<Self, RelocationError> {
        patterns
            .iter()
            .map(|p| {
                regex::Regex::new(p)
                    .map_err(|e| RelocationError::BadPattern(p.clone(), e.to_string()))
            })
            .collect::<Result<_, _>>()
            .map(HostsAllow)
    }

    /// Whether a peer with this address (and, looked up only when needed, name) may connect.
    pub fn allows(&self, addr: IpAddr, name: impl FnOnce() -> Option<String>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let a = addr.to_string();
        if self.0.iter().any(|r| r.is_match(&a)) {
            return true;
        }
        name().is_some_and(|n| self.0.iter().any(|r| r.is_match(&n)))
    }
}

/// The peer's name from reverse DNS (or /etc/hosts), if it has one.
pub fn reverse_name(addr: IpAddr) -> Option<String> {
    let sa = SocketAddr::new(addr, 0);
    let (storage, len) = match sa {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            // SAFETY: copying a sockaddr_in into the front of the storage.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (&sin as *const libc::sockaddr_in).cast::<u8>(),
                    (&mut st as *mut libc::sockaddr_storage).cast::<u8>(),
                    std::mem::size_of::<libc::sockaddr_in>(),
                )
            };
            (st, std::mem::size_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(_) => return None,
    };
    let mut host = [0 as libc::c_char; 256];
    // SAFETY: all pointers point at live buffers of the lengths given.
    let rc = unsafe {
        libc::getnameinfo(
            (&storage as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: getnameinfo wrote a NUL-terminated string into `host`.
    let name = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// One handshake message; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Msg {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hello: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// In the source's step 2: what the connection is for once authenticated; absent for a
    /// migration, [`crate::pool::remote::PURPOSE`] for a pool request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    purpose: Option<String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn nonce() -> Result<Vec<u8>, RelocationError> {
    let mut n = vec![0u8; 32];
    getrandom::fill(&mut n)
        .map_err(|e| RelocationError::Protocol(format!("no randomness: {e}")))?;
    Ok(n)
}

fn mac(key: &[u8], label: &str, a: &[u8], b: &[u8]) -> Result<Vec<u8>, RelocationError> {
    let mut m = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|e| RelocationError::Protocol(e.to_string()))?;
    m.update(label.as_bytes());
    m.update(a);
    m.update(b);
    Ok(m.finalize().into_bytes().to_vec())
}

fn verify(key: &[u8], label: &str, a: &[u8], b: &[u8], got: &[u8]) -> bool {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    m.update(label.as_bytes());
    m.update(a);
    m.update(b);
    m.verify_slice(got).is_ok()
}

/// Reads one line (unbuffered, so nothing after it is consumed).
fn read_line(mut r: impl Read) -> Result<Vec<u8>, RelocationError> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(0) => return Err(RelocationError::Protocol("connection closed".into())),
            Ok(_) if b[0] == b'\n' => return Ok(line),
            Ok(_) if line.len() < MAX_MSG => line.push(b[0]),
            Ok(_) => return Err(RelocationError::Protocol("message too long".into())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    r: impl Read,
) -> Result<T, RelocationError> {
    let line = read_line(r)?;
    serde_json::from_slice(&line).map_err(|e| RelocationError::Protocol(e.to_string()))
}

pub(crate) fn write_json<T: Serialize>(mut w: impl Write, v: &T) -> Result<(), RelocationError> {
    let mut b = serde_json::to_vec(v).map_err(|e| RelocationError::Protocol(e.to_string()))?;
    b.push(b'\n');
    w.write_all(&b)?;
    w.flush()?;
    Ok(())
}

fn refuse(w: impl Write, why: &str) {
    let _ = write_json(
        w,
        &Msg {
            error: Some(why.to_string()),
            ..Default::default()
        },
    );
}

/// The source's side: authenticate (both ways) and reserve.
pub fn client_handshake(
    sock: &TcpStream,
    key: &[u8],
    reservation: &Reservation,
) -> Result<(), RelocationError> {
    client_authenticate(sock, key, None)?;
    reserve_as_source(sock, reservation)?;
    sock.set_read_timeout(None)?;
    Ok(())
}

/// The connecting side's authentication (both ways), saying what the connection is for
/// (`None`: a migration; see [`Msg::purpose`]).
pub fn client_authenticate(
    sock: &TcpStream,
    key: &[u8],
    purpose: Option<&str>,
) -> Result<(), RelocationError> {
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let hello: Msg = read_json(sock)?;
    if let Some(e) = hello.error {
        return Err(RelocationError::Refused(e));
    }
    if hello.hello.as_deref() != Some("rxen-relocation") || hello.version != Some(1) {
        return Err(RelocationError::Protocol(
            "the peer is not an rxen relocation server".into(),
        ));
    }
    let n1 = hello
        .nonce
        .as_deref()
        .and_then(unhex)
        .filter(|n| n.len() == 32)
        .ok_or_else(|| RelocationError::Protocol("no nonce".into()))?;
    let n2 = nonce()?;
    write_json(
        sock,
        &Msg {
            nonce: Some(hex(&n2)),
            mac: Some(hex(&mac(key, "rxen-relocation source", &n1, &n2)?)),
            purpose: purpose.map(str::to_string),
            ..Default::default()
        },
    )?;
    let answer: Msg = read_json(sock)?;
    if let Some(e) = answer.error {
        return Err(RelocationError::Refused(e));
    }
    let theirs = answer.mac.as_deref().and_then(unhex).unwrap_or_default();
    if !verify(key, "rxen-relocation target", &n2, &n1, &theirs) {
        return Err(RelocationError::Auth(
            "the target does not hold the shared key".into(),
        ));
    }
    Ok(())
}

fn reserve_as_source(
    mut sock: impl Read + Write,
    reservation: &Reservation,
) -> Result<(), RelocationError> {
    write_json(&mut sock, reservation)?;
    let r: Msg = read_json(&mut sock)?;
    match (r.ok, r.error) {
        (_, Some(e)) => Err(RelocationError::Refused(e)),
        (Some(true), None) => Ok(()),
        _ => Err(RelocationError::Protocol(
            "no answer to the reservation".into(),
        )),
    }
}

/// The source's side of the ssh transport (ssh authenticates): xl's ready line, then the reservation.
pub fn ssh_sender_handshake(
    channel: &OwnedFd,
    reservation: &Reservation,
) -> Result<(), RelocationError> {
    let f = std::fs::File::from(channel.try_clone()?);
    let line = read_line(&f)?;
    if line != XL_READY.as_bytes() {
        return Err(RelocationError::Protocol(format!(
            "the receiver said {:?} instead of xl's ready line",
            String::from_utf8_lossy(&line)
        )));
    }
    reserve_as_source(&f, reservation)
}

/// Serves the relocation port forever (one thread per connection).
pub fn serve(daemon: Arc<Daemon>, config: &RelocationConfig) -> Result<(), String> {
    let key_path = config
        .key_file
        .clone()
        .ok_or("the relocation server needs key-file: refusing to listen without a key")?;
    let key = Arc::new(read_key(&key_path).map_err(|e| e.to_string())?);
    let allow = Arc::new(HostsAllow::new(&config.hosts_allow).map_err(|e| e.to_string())?);
    let bind = if config.address.is_empty() {
        format!("0.0.0.0:{}", config.port)
    } else if config.address.contains(':') {
        format!("[{}]:{}", config.address, config.port)
    } else {
        format!("{}:{}", config.address, config.port)
    };
    let listener = TcpListener::bind(&bind).map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    daemon
        .log
        .info(format!("relocation server listening on {bind}"));
    let d = daemon.clone();
    std::thread::Builder::new()
        .name("relocation".into())
        .spawn(move || {
            crate::accept::serve(
                &daemon.log,
                "relocation",
                MAX_CONNECTIONS,
                || listener.accept().map(|(s, _)| s),
                |s: &TcpStream| s.peer_addr().ok().map(|a| a.ip().to_string()),
                move |sock| handle(&d, sock, &key, &allow),
            )
        })
        .map_err(|e| format!("cannot start the relocation server: {e}"))?;
    Ok(())
}

/// Connections the relocation server serves at once (before and after authentication):
/// a peer that opens many cannot starve the others or exhaust rxend's threads.
pub const MAX_CONNECTIONS: crate::accept::Limits = crate::accept::Limits {
    total: 32,
    per_peer: 4,
};

fn handle(daemon: &Daemon, sock: TcpStream, key: &[u8], allow: &HostsAllow) {
    let peer = match sock.peer_addr() {
        Ok(p) => p,
        Err(e) => {
            daemon.log.warn(format!("relocation: no peer address: {e}"));
            return;
        }
    };
    if !allow.allows(peer.ip(), || reverse_name(peer.ip())) {
        daemon.log.warn(format!(
            "relocation: refused {peer}: not allowed by hosts-allow"
        ));
        refuse(&sock, "your host is not allowed to migrate domains here");
        return;
    }
    let r = (|| -> Result<Option<String>, RelocationError> {
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        let n1 = nonce()?;
        write_json(
            &sock,
            &Msg {
                hello: Some("rxen-relocation".into()),
                version: Some(1),
                nonce: Some(hex(&n1)),
                ..Default::default()
            },
        )?;
        let m: Msg = read_json(&sock)?;
        let n2 = m
            .nonce
            .as_deref()
            .and_then(unhex)
            .filter(|n| n.len() == 32)
            .ok_or_else(|| RelocationError::Auth("no nonce".into()))?;
        let theirs = m.mac.as_deref().and_then(unhex).unwrap_or_default();
        if !verify(key, "rxen-relocation source", &n1, &n2, &theirs) {
            refuse(&sock, "authentication failed");
            return Err(RelocationError::Auth("wrong key".into()));
        }
        write_json(
            &sock,
            &Msg {
                mac: Some(hex(&mac(key, "rxen-relocation target", &n2, &n1)?)),
                ..Default::default()
            },
        )?;
        Ok(m.purpose)
    })();
    let purpose = match r {
        Ok(p) => p,
        Err(e) => {
            daemon.log.warn(format!("relocation: refused {peer}: {e}"));
            return;
        }
    };
    // Authenticated as for a migration (hosts-allow and the key): a pool request instead.
    if purpose.as_deref() == Some(crate::pool::remote::PURPOSE) {
        crate::pool::remote::serve(daemon, sock, &peer.to_string());
        return;
    }
    let fd = match sock.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            daemon.log.error(format!("relocation: {e}"));
            return;
        }
    };
    drop(sock);
    receive_reserved(daemon, fd, &peer.to_string());
}

/// `rxl migrate-receive` (ssh authenticated the peer): xl's ready line, then
/// as after our own handshake. `paused` overrides the source's wish.
pub fn receive_over_ssh(daemon: &Daemon, channel: OwnedFd, paused: bool) -> Result<(), String> {
    let mut f = std::fs::File::from(channel.try_clone().map_err(|e| e.to_string())?);
    f.write_all(format!("{XL_READY}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    drop(f);
    match receive_reserved_as(daemon, channel, "ssh", paused) {
        Some(name) => Ok(name).map(|_| ()),
        None => Err("the domain did not arrive; see rxl dmesg".into()),
    }
}

/// After authentication (ours or ssh's): the reservation, then a receiving VMM.
pub fn receive_reserved(daemon: &Daemon, channel: OwnedFd, from: &str) {
    receive_reserved_as(daemon, channel, from, false);
}

fn receive_reserved_as(
    daemon: &Daemon,
    channel: OwnedFd,
    from: &str,
    force_paused: bool,
) -> Option<String> {
    let f = match channel.try_clone() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            daemon.log.error(format!("relocation: {e}"));
            return None;
        }
    };
    let mut reservation: Reservation = match read_json(&f) {
        Ok(r) => r,
        Err(e) => {
            daemon
                .log
                .warn(format!("relocation: {from}: no reservation: {e}"));
            refuse(&f, &e.to_string());
            return None;
        }
    };
    reservation.paused |= force_paused;
    let config = match daemon.reserve(&reservation) {
        Ok(c) => c,
        Err(why) => {
            daemon.log.warn(format!(
                "relocation: refused domain {} from {from}: {why}",
                reservation.name
            ));
            refuse(&f, &why);
            return None;
        }
    };
    if let Err(e) = write_json(
        &f,
        &Msg {
            ok: Some(true),
            ..Default::default()
        },
    ) {
        daemon.log.warn(format!("relocation: {from}: {e}"));
        return None;
    }
    drop(f);
    daemon.log.info(format!(
        "relocation: receiving domain {} ({} MiB, {} vCPUs) from {from}",
        reservation.name, reservation.memory_mib, reservation.vcpus
    ));
    match daemon.receive(config, &reservation, channel, from) {
        Ok(c) => Some(c.name),
        Err(e) => {
            daemon.log.error(format!(
                "relocation: domain {} from {from} did not arrive: {e}",
                reservation.name
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RxendConfig;

    #[test]
    fn hosts_allow_matches_address_or_name() {
        let a = HostsAllow::new(&["^10\\.0\\.0\\.1$".into(), "^src\\.example$".into()])
            .expect("patterns");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(a.allows(ip("10.0.0.1"), || None));
        assert!(!a.allows(ip("10.0.0.11"), || None));
        assert!(a.allows(ip("10.9.9.9"), || Some("src.example".into())));
        assert!(!a.allows(ip("10.9.9.9"), || Some("evil.example".into())));
        assert!(HostsAllow::new(&[])
            .expect("empty")
            .allows(ip("1.2.3.4"), || None));
        assert!(HostsAllow::new(&["(".into()]).is_err());
    }

    #[test]
    fn macs_bind_key_label_and_nonces() {
        let k = b"0123456789abcdef";
        let m = mac(k, "x", b"a", b"b").expect("mac");
        assert!(verify(k, "x", b"a", b"b", &m));
        assert!(!verify(b"0123456789abcdeX", "x", b"a", b"b", &m));
        assert!(!verify(k, "y", b"a", b"b", &m));
        assert!(!verify(k, "x", b"b", b"a", &m));
        assert!(!verify(k, "x", b"a", b"b", &m[..31]));
        assert_eq!(unhex(&hex(&m)), Some(m));
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn config_file() {
        let c = RxendConfig::parse(
            "[relocation]\nserver = true\naddress = \"10.0.0.2\"\nhosts-allow = [\"^10\\\\.0\\\\.0\\\\.1$\"]\nkey-file = \"/etc/rxen/key\"\n",
        )
        .expect("parse");
        assert!(c.relocation.server);
        assert_eq!(c.relocation.port, 8002);
        assert_eq!(
            c.relocation.hosts_allow,
            vec!["^10\\.0\\.0\\.1$".to_string()]
        );
        assert!(RxendConfig::parse("[relocation]\nsrever = true\n").is_err());
        assert_eq!(
            RxendConfig::parse("").expect("empty"),
            RxendConfig::default()
        );
    }
}
