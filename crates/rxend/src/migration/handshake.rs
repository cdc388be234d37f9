//! The relocation wire protocol, both sides of it, and nothing of the daemon: the
//! handshake in which both peers prove by HMAC-SHA256 over random nonces that they hold
//! the shared key (the key never crosses the wire), the [`Reservation`] the source sends
//! before a single page, the ssh transport's ready line, the key file and `hosts-allow`.
//!
//! Handshake, one JSON object per line:
//! 1. target → source: `{"hello":"rxen-relocation","version":1,"nonce":N1}`
//! 2. source → target: `{"nonce":N2,"mac":HMAC(key,"rxen-relocation source"|N1|N2)}`
//! 3. target → source: `{"mac":HMAC(key,"rxen-relocation target"|N2|N1)}` or `{"error":...}`
//! 4. source → target: the [`Reservation`]
//! 5. target → source: `{"ok":true}` or `{"error":...}`; then the stream.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use xlcfg::DomainConfig;

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
    /// The relocation server could not be found or reached (the message names it).
    #[error("{0}")]
    Connect(String),
}

/// Connects to the relocation server at `addrs` (the first address they resolve to) within
/// `timeout`; `name` is how messages call it. The caller then authenticates
/// ([`client_handshake`], [`client_authenticate`]).
pub fn connect(
    name: &str,
    addrs: impl ToSocketAddrs,
    timeout: Duration,
) -> Result<TcpStream, RelocationError> {
    let addr = addrs
        .to_socket_addrs()
        .map_err(|e| RelocationError::Connect(format!("{name}: {e}")))?
        .next()
        .ok_or_else(|| RelocationError::Connect(format!("{name}: no address")))?;
    TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| RelocationError::Connect(format!("cannot connect to {addr}: {e}")))
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

/// Tells the peer why it is refused (best effort: it may be gone already).
pub fn refuse(w: impl Write, why: &str) {
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

/// The target's side of the handshake, up to the reservation: greet, check that the
/// source holds the key, prove that we hold it. A source that fails is told so. Returns what
/// the source came for ([`Msg::purpose`]: `None` for a migration).
pub fn server_handshake(sock: &TcpStream, key: &[u8]) -> Result<Option<String>, RelocationError> {
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let n1 = nonce()?;
    write_json(
        sock,
        &Msg {
            hello: Some("rxen-relocation".into()),
            version: Some(1),
            nonce: Some(hex(&n1)),
            ..Default::default()
        },
    )?;
    let m: Msg = read_json(sock)?;
    let n2 = m
        .nonce
        .as_deref()
        .and_then(unhex)
        .filter(|n| n.len() == 32)
        .ok_or_else(|| RelocationError::Auth("no nonce".into()))?;
    let theirs = m.mac.as_deref().and_then(unhex).unwrap_or_default();
    if !verify(key, "rxen-relocation source", &n1, &n2, &theirs) {
        refuse(sock, "authentication failed");
        return Err(RelocationError::Auth("wrong key".into()));
    }
    write_json(
        sock,
        &Msg {
            mac: Some(hex(&mac(key, "rxen-relocation target", &n2, &n1)?)),
            ..Default::default()
        },
    )?;
    Ok(m.purpose)
}

/// The receiver's side of the ssh transport (ssh authenticated the peer): xl's ready line.
pub fn ssh_receiver_ready(mut w: impl Write) -> Result<(), RelocationError> {
    w.write_all(format!("{XL_READY}\n").as_bytes())?;
    w.flush()?;
    Ok(())
}

/// The target reads the source's [`Reservation`] (after either transport's handshake).
pub fn read_reservation(r: impl Read) -> Result<Reservation, RelocationError> {
    read_json(r)
}

/// The target accepts the reservation: the stream follows.
pub fn accept_reservation(w: impl Write) -> Result<(), RelocationError> {
    write_json(
        w,
        &Msg {
            ok: Some(true),
            ..Default::default()
        },
    )
}

/// What the source asks the target to set aside before anything moves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    /// The domain's name (must be free on the target).
    pub name: String,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// The domain's config. A config this rxend cannot read (another version's, or not one
    /// at all) fails the reservation as a whole, and the source is told why.
    pub config: xlcfg::DomainConfig,
    /// The config file it came from.
    #[serde(default)]
    pub config_path: Option<String>,
    /// Leave the domain paused on the target.
    #[serde(default)]
    pub paused: bool,
    /// What `rxl mem-set`, `mem-max` and `vcpu-set` changed on the source,
    /// so that the target's record (and `rxl list`) agree with the guest.
    #[serde(default)]
    pub runtime: RuntimeSettings,
    /// A storage migration: the disks the stream carries (the target creates new images for
    /// them in its own storage directory). `None`: the hosts share the storage.
    #[serde(default)]
    pub copy_storage: Option<Vec<super::storage::CopiedDisk>>,
}

/// Settings changed on a running domain that are not in its config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeSettings {
    /// The balloon target (`rxl mem-set`).
    #[serde(default)]
    pub mem_target_mib: Option<u64>,
    /// The bound of `rxl mem-max`.
    #[serde(default)]
    pub mem_max_mib: Option<u64>,
    /// vCPUs online (`rxl vcpu-set`).
    #[serde(default)]
    pub online_vcpus: Option<u32>,
}

impl RuntimeSettings {
    /// Why these settings cannot be those of a domain of `config`, if they
    /// cannot: what `rxl mem-set`, `mem-max` and `vcpu-set` would have
    /// refused (a migration's source sends them; the target keeps them).
    pub fn check(&self, config: &DomainConfig) -> Result<(), String> {
        let ram = crate::record::ram_mib(config);
        if let Some(m) = self.mem_max_mib.filter(|&m| m == 0 || m > ram) {
            return Err(format!(
                "memory maximum {m} MiB is outside 1-{ram} MiB (the RAM it is built with)"
            ));
        }
        let max = self.mem_max_mib.unwrap_or(config.maxmem_mib).min(ram);
        if let Some(t) = self.mem_target_mib.filter(|&t| t == 0 || t > max) {
            return Err(format!(
                "memory target {t} MiB is outside 1-{max} MiB (maxmem)"
            ));
        }
        let current = self.mem_target_mib.unwrap_or(config.memory_mib);
        if let Some(m) = self.mem_max_mib.filter(|&m| m < current) {
            return Err(format!(
                "memory maximum {m} MiB is below the current memory ({current} MiB)"
            ));
        }
        let vcpus = config.maxvcpus.max(config.vcpus);
        if let Some(n) = self.online_vcpus.filter(|&n| n == 0 || n > vcpus) {
            return Err(format!("{n} vCPUs online is outside 1-{vcpus} (maxvcpus)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn config(memory: u64, maxmem: u64, vcpus: u32, maxvcpus: u32) -> DomainConfig {
        let text = format!(
            "name = \"g\"\nkernel = \"/boot/vmlinuz\"\nmemory = {memory}\nmaxmem = {maxmem}\nvcpus = {vcpus}\nmaxvcpus = {maxvcpus}\n"
        );
        let c = xlcfg::parse(&text, "g.cfg", &[]).expect("config").config;
        assert_eq!((c.memory_mib, c.maxmem_mib), (memory, maxmem));
        c
    }

    #[test]
    fn runtime_settings_keep_to_what_the_commands_allow() {
        let c = config(512, 1024, 2, 4);
        let rt = |mem_target_mib, mem_max_mib, online_vcpus| RuntimeSettings {
            mem_target_mib,
            mem_max_mib,
            online_vcpus,
        };
        for ok in [
            rt(None, None, None),
            rt(Some(1), None, Some(1)),
            rt(Some(1024), None, Some(4)),
            rt(Some(256), Some(256), Some(3)),
            rt(None, Some(512), None),
            rt(Some(300), Some(1024), None),
        ] {
            assert_eq!(ok.check(&c), Ok(()), "{ok:?}");
        }
        for (bad, why) in [
            (rt(Some(0), None, None), "memory target 0 MiB"),
            (
                rt(Some(1025), None, None),
                "memory target 1025 MiB is outside 1-1024",
            ),
            (
                rt(Some(600), Some(512), None),
                "memory target 600 MiB is outside 1-512",
            ),
            (rt(None, Some(0), None), "memory maximum 0 MiB"),
            (
                rt(None, Some(2048), None),
                "memory maximum 2048 MiB is outside 1-1024",
            ),
            (
                rt(None, Some(300), None),
                "below the current memory (512 MiB)",
            ),
            (rt(None, None, Some(0)), "0 vCPUs online"),
            (rt(None, None, Some(5)), "5 vCPUs online is outside 1-4"),
            (rt(None, None, Some(u32::MAX)), "outside 1-4"),
        ] {
            let e = bad.check(&c).expect_err(why);
            assert!(e.contains(why), "{e} (expected {why})");
        }
    }

    fn reservation() -> Reservation {
        let c = config(64, 64, 1, 1);
        Reservation {
            name: c.name.clone(),
            memory_mib: 64,
            vcpus: 1,
            config: c,
            config_path: None,
            paused: false,
            runtime: RuntimeSettings::default(),
            copy_storage: None,
        }
    }

    /// Runs the target's side (handshake, reservation, answer) on a loopback connection
    /// and the source's side here; returns what each side got.
    fn handshake_between(
        target_key: &'static [u8],
        source_key: &[u8],
        accept: bool,
    ) -> (
        Result<(), RelocationError>,
        Result<Option<Reservation>, RelocationError>,
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = std::thread::spawn(move || {
            let (sock, _) = listener.accept()?;
            server_handshake(&sock, target_key)?;
            let r = read_reservation(&sock)?;
            if accept {
                accept_reservation(&sock)?;
            } else {
                refuse(&sock, "no room");
            }
            Ok(Some(r))
        });
        let sock = TcpStream::connect(addr).expect("connect");
        let source = client_handshake(&sock, source_key, &reservation());
        drop(sock);
        (source, target.join().expect("target thread"))
    }

    #[test]
    fn a_reservation_whose_config_this_rxend_cannot_read_is_refused_whole() {
        let mut line = Vec::new();
        write_json(&mut line, &reservation()).expect("write");
        assert_eq!(read_reservation(&line[..]).expect("read"), reservation());
        // Another version's config, or none: the reservation itself does not parse.
        let text = String::from_utf8(line).expect("utf-8");
        let start = text.find("\"config\":{").expect("config") + "\"config\":".len();
        let end = text[start..].find("},\"config_path\"").expect("end") + start + 1;
        for bad in [r#"{"name":"web"}"#, "\"web\"", "null"] {
            let broken = format!("{}{bad}{}", &text[..start], &text[end..]);
            // Well-formed JSON all the same: only the config is wrong.
            serde_json::from_str::<serde_json::Value>(&broken).expect(bad);
            let e = read_reservation(broken.as_bytes()).expect_err(bad);
            assert!(matches!(e, RelocationError::Protocol(_)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn both_sides_prove_the_key_before_the_reservation_passes() {
        let key: &'static [u8] = b"0123456789abcdef";
        let (source, target) = handshake_between(key, key, true);
        source.expect("source side");
        assert_eq!(target.expect("target side"), Some(reservation()));

        let (source, _) = handshake_between(key, key, false);
        assert!(
            matches!(&source, Err(RelocationError::Refused(e)) if e == "no room"),
            "{source:?}"
        );

        let (source, target) = handshake_between(key, b"0123456789abcdeX", true);
        assert!(
            matches!(target, Err(RelocationError::Auth(_))),
            "{target:?}"
        );
        assert!(
            matches!(&source, Err(RelocationError::Refused(e)) if e == "authentication failed"),
            "{source:?}"
        );
    }
}
