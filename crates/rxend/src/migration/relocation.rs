//! The relocation server (xend's, for live migration): it listens on TCP, admits peers by
//! `hosts-allow` (regular expressions on the peer's address or name), runs the target's side
//! of [`handshake`] (the shared key, then the [`Reservation`](handshake::Reservation)), and
//! has the daemon reserve and receive the domain. Everything else is refused before a single
//! page is accepted, and logged. `rxl migrate-receive` (the ssh transport) joins it after
//! the handshake.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::handshake;
use crate::config::RelocationConfig;
use crate::daemon::Daemon;

/// Serves the relocation port forever (one thread per connection).
pub fn serve(daemon: Arc<Daemon>, config: &RelocationConfig) -> Result<(), String> {
    let key_path = config
        .key_file
        .clone()
        .ok_or("the relocation server needs key-file: refusing to listen without a key")?;
    let key = Arc::new(handshake::read_key(&key_path).map_err(|e| e.to_string())?);
    let allow =
        Arc::new(handshake::HostsAllow::new(&config.hosts_allow).map_err(|e| e.to_string())?);
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

fn handle(daemon: &Daemon, sock: TcpStream, key: &[u8], allow: &handshake::HostsAllow) {
    let peer = match sock.peer_addr() {
        Ok(p) => p,
        Err(e) => {
            daemon.log.warn(format!("relocation: no peer address: {e}"));
            return;
        }
    };
    if !allow.allows(peer.ip(), || handshake::reverse_name(peer.ip())) {
        daemon.log.warn(format!(
            "relocation: refused {peer}: not allowed by hosts-allow"
        ));
        handshake::refuse(&sock, "your host is not allowed to migrate domains here");
        return;
    }
    let purpose = match handshake::server_handshake(&sock, key) {
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
    let f = std::fs::File::from(channel.try_clone().map_err(|e| e.to_string())?);
    handshake::ssh_receiver_ready(&f).map_err(|e| e.to_string())?;
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
    let mut reservation = match handshake::read_reservation(&f) {
        Ok(r) => r,
        Err(e) => {
            daemon
                .log
                .warn(format!("relocation: {from}: no reservation: {e}"));
            handshake::refuse(&f, &e.to_string());
            return None;
        }
    };
    reservation.paused |= force_paused;
    let mut config = match daemon.reserve(&reservation) {
        Ok(c) => c,
        Err(why) => {
            daemon.log.warn(format!(
                "relocation: refused domain {} from {from}: {why}",
                reservation.name
            ));
            handshake::refuse(&f, &why);
            return None;
        }
    };
    // A storage migration: new images here, before anything is sent; gone again unless
    // the domain arrives.
    let copied = match &reservation.copy_storage {
        None => None,
        Some(disks) => {
            let dir = daemon.storage_dir();
            match super::storage::TargetDisks::create(&dir, disks, &mut config) {
                Ok(made) => {
                    daemon.log.info(format!(
                        "relocation: domain {} from {from}: copying its disks to {}",
                        reservation.name,
                        made.paths()
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    Some(made)
                }
                Err(e) => {
                    daemon.log.warn(format!(
                        "relocation: refused domain {} from {from}: {e}",
                        reservation.name
                    ));
                    handshake::refuse(&f, &e.to_string());
                    return None;
                }
            }
        }
    };
    if let Err(e) = handshake::accept_reservation(&f) {
        daemon.log.warn(format!("relocation: {from}: {e}"));
        return None;
    }
    drop(f);
    daemon.log.info(format!(
        "relocation: receiving domain {} ({} MiB, {} vCPUs) from {from}",
        reservation.name, reservation.memory_mib, reservation.vcpus
    ));
    match daemon.receive(config, &reservation, channel, from) {
        Ok(c) => {
            if let Some(made) = copied {
                made.keep();
            }
            Some(c.name)
        }
        Err(e) => {
            daemon.log.error(format!(
                "relocation: domain {} from {from} did not arrive: {e}",
                reservation.name
            ));
            None
        }
    }
}
