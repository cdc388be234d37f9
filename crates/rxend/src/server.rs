//! rxend's client socket: one thread per connection, one JSON request per
//! line, the caller identified by the socket's peer credentials.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{getsockopt, sendmsg, sockopt, ControlMessage, MsgFlags};
use rxen_proto::api::{HostInfo, Request, Response};
use rxen_proto::jsonline::{self, FrameError};

use crate::auth::Caller;
use crate::daemon::{Daemon, DaemonError};
use crate::hostinfo;

/// Errors while setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another rxend answers on the socket.
    #[error("another rxend is already listening on {0}")]
    AlreadyRunning(String),
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Binds the client socket, replacing a stale one, with mode 0660 and,
/// when `group` is given, owned by that group (whose members may connect).
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ServerError> {
    let shown = path.display().to_string();
    let bind_err = |source| ServerError::Bind {
        path: shown.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::create_dir_all(dir).map_err(bind_err)?;
            // The socket's own mode and group decide who connects; its directory lets anyone
            // reach it (rxend's umask would make it root's alone).
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(bind_err)?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::AlreadyRunning(shown));
        }
        fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| bind_err(e.into()))?;
    }
    Ok(listener)
}

/// Connections one user other than root may hold open at once, so that a
/// member of the socket's group cannot exhaust rxend's threads.
pub const MAX_CONNECTIONS_PER_USER: usize = 32;

/// Open connections per user ID.
#[derive(Default)]
struct Connections {
    per_uid: Mutex<BTreeMap<u32, usize>>,
}

/// One counted connection; uncounted when dropped.
struct Counted<'a> {
    conns: &'a Connections,
    uid: u32,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, usize>> {
        match self.per_uid.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Counts a connection of `caller`, unless a non-root caller has too many.
    fn enter(&self, caller: &Caller) -> Option<Counted<'_>> {
        let mut map = self.lock();
        let n = map.entry(caller.uid).or_insert(0);
        if !caller.is_root() && *n >= MAX_CONNECTIONS_PER_USER {
            return None;
        }
        *n += 1;
        Some(Counted {
            conns: self,
            uid: caller.uid,
        })
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let mut map = self.conns.lock();
        if let Some(n) = map.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

/// Accepts clients forever, each in a thread of its own.
pub fn serve(daemon: Arc<Daemon>, listener: UnixListener) {
    let conns = Arc::new(Connections::default());
    let d = Arc::clone(&daemon);
    crate::accept::serve(
        &daemon.log,
        "socket",
        MAX_CONNECTIONS,
        || listener.accept().map(|(s, _)| s),
        |_| None,
        move |stream| handle_client(&d, &conns, stream),
    );
}

/// Clients served at once, all users together (each non-root user at most
/// [`MAX_CONNECTIONS_PER_USER`]).
pub const MAX_CONNECTIONS: crate::accept::Limits = crate::accept::Limits {
    total: 256,
    per_peer: 256,
};

/// What to send back for one request.
enum Reply {
    Plain(Response),
    WithFd(Response, OwnedFd),
    Quit,
}

fn handle_client(daemon: &Daemon, conns: &Connections, stream: UnixStream) {
    let caller = match getsockopt(&stream, sockopt::PeerCredentials) {
        Ok(c) => Caller::from_uid(c.uid()),
        Err(e) => {
            daemon
                .log
                .error(format!("cannot read peer credentials: {e}"));
            return;
        }
    };
    let Some(_counted) = conns.enter(&caller) else {
        daemon.log.warn(format!(
            "refused: {} may not open more than {MAX_CONNECTIONS_PER_USER} connections",
            caller.describe()
        ));
        let mut w = &stream;
        let _ = jsonline::write(
            &mut w,
            &Response::Error {
                message: "too many connections to rxend".into(),
            },
        );
        return;
    };
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    loop {
        let req: Request = match jsonline::read(&mut reader) {
            Ok(r) => r,
            Err(FrameError::Closed) => return,
            Err(e) => {
                let mut w = &stream;
                let _ = jsonline::write(
                    &mut w,
                    &Response::Error {
                        message: format!("bad request: {e}"),
                    },
                );
                return;
            }
        };
        // Requests that come with a connection: acknowledge, then receive it
        // in a message of its own (SCM_RIGHTS), so that no buffered read loses it.
        let wants_fd = matches!(
            req,
            Request::Migrate { ssh: true, .. } | Request::MigrateReceive { .. }
        );
        let fd = if wants_fd {
            let mut w = &stream;
            if jsonline::write(&mut w, &Response::Ok).is_err() {
                return;
            }
            match recv_fd(&stream) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    let mut w = &stream;
                    let _ = jsonline::write(
                        &mut w,
                        &Response::Error {
                            message: format!("no connection passed with the request: {e}"),
                        },
                    );
                    return;
                }
            }
        } else {
            None
        };
        let sent = match dispatch(daemon, &caller, req, fd) {
            Reply::Plain(resp) => {
                let mut w = &stream;
                match jsonline::write(&mut w, &resp) {
                    // The operation is done; say so rather than drop the connection.
                    Err(FrameError::TooLong) => {
                        let outcome = if matches!(resp, Response::Error { .. }) {
                            "the request failed"
                        } else {
                            "the request was carried out"
                        };
                        let message = format!(
                            "{outcome}, but its reply is longer than {} bytes and cannot be \
                             sent; narrow the request",
                            jsonline::MAX_LINE
                        );
                        jsonline::write(&mut w, &Response::Error { message }).is_ok()
                    }
                    r => r.is_ok(),
                }
            }
            Reply::WithFd(resp, fd) => send_with_fd(&stream, &resp, &fd).is_ok(),
            Reply::Quit => {
                let mut w = &stream;
                let _ = jsonline::write(&mut w, &Response::Ok);
                daemon.log.info(format!(
                    "exiting at the request of {}; domains keep running",
                    caller.describe()
                ));
                std::process::exit(0);
            }
        };
        if !sent {
            return;
        }
    }
}

/// Sends one response line with a file descriptor attached.
fn send_with_fd(stream: &UnixStream, resp: &Response, fd: &OwnedFd) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(&line)];
    let n = sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(std::io::Error::from)?;
    if n != line.len() {
        // The descriptor went with the first part; the rest follows as plain bytes.
        use std::io::Write;
        let mut w = stream;
        w.write_all(line.get(n..).unwrap_or_default())?;
    }
    Ok(())
}

/// Receives one descriptor sent in a message of its own.
fn recv_fd(stream: &UnixStream) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut out = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                out.get_or_insert(fd);
            }
        }
    }
    out.ok_or_else(|| std::io::Error::other("no descriptor in the message"))
}

fn transferred(r: Result<(String, rxen_proto::vmctl::TransferStats), DaemonError>) -> Reply {
    match r {
        Ok((name, stats)) => Reply::Plain(Response::Transferred { name, stats }),
        Err(e) => error(e),
    }
}

fn placed(r: Result<crate::pool::remote::Placed, DaemonError>) -> Reply {
    match r {
        Ok(p) => Reply::Plain(Response::Placed {
            host: p.host,
            domid: p.domid,
            name: p.name,
            warnings: p.warnings,
        }),
        Err(e) => error(e),
    }
}

fn result(r: Result<(), DaemonError>) -> Reply {
    Reply::Plain(match r {
        Ok(()) => Response::Ok,
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    })
}

fn error(e: DaemonError) -> Reply {
    Reply::Plain(Response::Error {
        message: e.to_string(),
    })
}

/// Refuses a request that only root may make, and logs it.
fn root_only(daemon: &Daemon, caller: &Caller, what: &str) -> Reply {
    daemon
        .log
        .warn(format!("refused: {} may not {what}", caller.describe()));
    error(DaemonError::Denied(format!("only root may {what}")))
}

fn dispatch(daemon: &Daemon, caller: &Caller, req: Request, fd: Option<OwnedFd>) -> Reply {
    match req {
        Request::Boot { domain } => match daemon.boot(caller, &domain) {
            Ok(c) => Reply::Plain(Response::Domain {
                domid: c.domid,
                name: c.name,
                warnings: c.warnings,
            }),
            Err(e) => error(e),
        },
        Request::ConfigUpdate {
            domain,
            path,
            text,
            overrides,
            ignore_unsupported,
        } => match daemon.config_update(
            caller,
            &domain,
            &path,
            &text,
            &overrides,
            ignore_unsupported,
        ) {
            Ok(c) => Reply::Plain(Response::Domain {
                domid: c.domid,
                name: c.name,
                warnings: c.warnings,
            }),
            Err(e) => error(e),
        },
        Request::Known { domain } => Reply::Plain(Response::Known {
            domains: daemon.known(caller, domain.as_deref()),
        }),
        Request::Info if !caller.is_root() => root_only(daemon, caller, "read host information"),
        Request::Create {
            path,
            text,
            overrides,
            paused,
            ignore_unsupported,
        } => match daemon.create(caller, &path, &text, &overrides, paused, ignore_unsupported) {
            Ok(c) => Reply::Plain(Response::Domain {
                domid: c.domid,
                name: c.name,
                warnings: c.warnings,
            }),
            Err(e) => error(e),
        },
        Request::List { domains } => match daemon.list(caller, &domains) {
            Ok(domains) => Reply::Plain(Response::Domains { domains }),
            Err(e) => error(e),
        },
        Request::Info => {
            let used: u32 = daemon
                .list(caller, &[])
                .map(|v| v.iter().filter(|d| d.domid != 0).map(|d| d.vcpus).sum())
                .unwrap_or(0);
            let free = hostinfo::nr_cpus().saturating_sub(used);
            let topology = crate::topology::read(std::path::Path::new("/sys"));
            let mut fields = hostinfo::info_fields(free, daemon.sandbox());
            if let Some((_, n)) = fields.iter_mut().find(|(k, _)| k == "nr_nodes") {
                *n = topology.nodes.len().max(1).to_string();
            }
            Reply::Plain(Response::Host(HostInfo { fields, topology }))
        }
        Request::Destroy { domain } => result(daemon.destroy(caller, &domain)),
        Request::Backup {
            domain,
            dir,
            incremental,
        } => match daemon.backup_domain(caller, &domain, &dir, incremental) {
            Ok(b) => Reply::Plain(Response::BackedUp {
                dir: b.dir.display().to_string(),
                paused_ms: b.paused_ms,
                disks: b.disks,
                state_bytes: b.state_bytes,
            }),
            Err(e) => error(e),
        },
        Request::BackupRestore { dir, name } => {
            match daemon.backup_restore(caller, &dir, name.as_deref()) {
                Ok(c) => Reply::Plain(Response::Domain {
                    domid: c.domid,
                    name: c.name,
                    warnings: c.warnings,
                }),
                Err(e) => error(e),
            }
        }
        Request::HostShutdown => match daemon.host_shutdown(caller) {
            Ok(domains) => Reply::Plain(Response::HostDomains { domains }),
            Err(e) => error(e),
        },
        Request::HostStart => match daemon.host_start(caller) {
            Ok(domains) => Reply::Plain(Response::HostDomains { domains }),
            Err(e) => error(e),
        },
        Request::Shutdown { domain } => result(daemon.request_shutdown(caller, &domain, false)),
        Request::Reboot { domain } => result(daemon.request_shutdown(caller, &domain, true)),
        Request::Pause { domain } => result(daemon.set_paused(caller, &domain, true)),
        Request::Unpause { domain } => result(daemon.set_paused(caller, &domain, false)),
        Request::Reset { domain } => result(daemon.reset(caller, &domain)),
        Request::DumpCore { domain, path } => result(daemon.dump_core(caller, &domain, &path)),
        Request::Sysrq { domain, key } => result(daemon.sysrq(caller, &domain, key)),
        Request::Nmi { domain, vcpu } => result(daemon.nmi(caller, &domain, vcpu)),
        Request::ChangeCdrom {
            domain,
            vdev,
            target,
        } => result(daemon.change_cdrom(caller, &domain, &vdev, target.as_deref())),
        Request::Rename { domain, new_name } => result(daemon.rename(caller, &domain, &new_name)),
        Request::Lookup { domain } => match daemon.lookup(caller, &domain) {
            Ok((domid, name)) => Reply::Plain(Response::Domain {
                domid,
                name,
                warnings: Vec::new(),
            }),
            Err(e) => error(e),
        },
        Request::Dmesg { clear } => {
            if !caller.is_root() {
                return root_only(daemon, caller, "read rxend's log");
            }
            Reply::Plain(Response::Log {
                text: daemon.log.text(clear),
            })
        }
        Request::Console { domain } => match daemon.console(caller, &domain) {
            Ok(fd) => Reply::WithFd(Response::Ok, fd),
            Err(e) => error(e),
        },
        Request::SchedCredit {
            domain,
            weight,
            cap,
        } => match daemon.sched_credit(caller, domain.as_deref(), weight, cap) {
            Ok(entries) => Reply::Plain(Response::Sched { entries }),
            Err(e) => error(e),
        },
        Request::SchedPool => Reply::Plain(Response::SchedPool(crate::schedparams::current())),
        Request::CpupoolList => Reply::Plain(Response::Cpupools {
            pools: daemon.cpupool_list(caller),
        }),
        Request::CpupoolCreate {
            name,
            sched,
            cpus,
            dry_run,
        } => match daemon.cpupool_create(caller, &name, sched.as_deref(), &cpus, dry_run) {
            Ok(c) => Reply::Plain(Response::CpupoolCreated(c)),
            Err(e) => error(e),
        },
        Request::CpupoolDestroy { pool } => result(daemon.cpupool_destroy(caller, &pool)),
        Request::CpupoolRename { pool, new_name } => {
            result(daemon.cpupool_rename(caller, &pool, &new_name))
        }
        Request::CpupoolCpuAdd { pool, cpus } => {
            result(daemon.cpupool_cpus(caller, &pool, &cpus, true))
        }
        Request::CpupoolCpuRemove { pool, cpus } => {
            result(daemon.cpupool_cpus(caller, &pool, &cpus, false))
        }
        Request::CpupoolMigrate { domain, pool } => {
            result(daemon.cpupool_migrate(caller, &domain, &pool))
        }
        Request::CpupoolNumaSplit => match daemon.cpupool_numa_split(caller) {
            Ok(()) => Reply::Plain(Response::Cpupools {
                pools: daemon.cpupool_list(caller),
            }),
            Err(e) => error(e),
        },
        Request::VcpuList { domains } => match daemon.vcpu_list(caller, &domains) {
            Ok(vcpus) => Reply::Plain(Response::Vcpus { vcpus }),
            Err(e) => error(e),
        },
        Request::VcpuPin {
            domain,
            vcpu,
            hard,
            soft,
        } => result(daemon.vcpu_pin(caller, &domain, &vcpu, &hard, soft.as_deref())),
        Request::Counters => Reply::Plain(Response::Counters(daemon.counters(caller))),
        Request::PoolHosts => match daemon.pool_hosts(caller) {
            Ok((pool, hosts)) => Reply::Plain(Response::PoolHosts { pool, hosts }),
            Err(e) => error(e),
        },
        Request::PoolDomains => match daemon.pool_domain_list(caller) {
            Ok((pool, domains)) => Reply::Plain(Response::PoolDomains { pool, domains }),
            Err(e) => error(e),
        },
        Request::PoolHostEnable { host, enabled } => {
            result(daemon.pool_host_enable(caller, &host, enabled))
        }
        Request::PoolCreate {
            path,
            text,
            overrides,
            paused,
            ignore_unsupported,
        } => placed(daemon.pool_create(
            caller,
            &crate::pool::remote::CreateSpec {
                path,
                text,
                overrides,
                paused,
                ignore_unsupported,
            },
        )),
        Request::PoolRestore {
            path,
            config,
            paused,
        } => placed(daemon.pool_restore(caller, &path, config.as_ref(), paused)),
        Request::PoolEvacuate { host, domain } => {
            match daemon.pool_evacuate(caller, &host, &domain) {
                Ok(to) => Reply::Plain(Response::PoolMoved {
                    name: domain,
                    host: to,
                }),
                Err(e) => error(e),
            }
        }
        Request::Ended { domid } => Reply::Plain(Response::Ended {
            reason: daemon.ended(caller, domid),
        }),
        Request::VcpuSet { domain, count } => result(daemon.vcpu_set(caller, &domain, count)),
        Request::MemSet { domain, mib } => result(daemon.mem_set(caller, &domain, mib)),
        Request::MemMax { domain, mib } => result(daemon.mem_max(caller, &domain, mib)),
        Request::TransferProgress { domain } => match daemon.transfer_progress(caller, &domain) {
            Ok(progress) => Reply::Plain(Response::Progress { progress }),
            Err(e) => error(e),
        },
        Request::Save {
            domain,
            path,
            checkpoint,
            paused,
            config,
        } => transferred(daemon.save_domain(
            caller,
            &domain,
            &path,
            checkpoint,
            paused,
            config.as_ref(),
        )),
        Request::Restore {
            path,
            config,
            paused,
        } => match daemon.restore_domain(caller, &path, config.as_ref(), paused) {
            Ok(c) => Reply::Plain(Response::Domain {
                domid: c.domid,
                name: c.name,
                warnings: c.warnings,
            }),
            Err(e) => error(e),
        },
        Request::Migrate {
            domain,
            host,
            port,
            key_file,
            live,
            max_rounds,
            downtime_ms,
            paused,
            ssh: _,
            copy_storage,
        } => transferred(daemon.migrate_domain(
            caller,
            &domain,
            crate::migration::MigrateOptions {
                host,
                port,
                key_file,
                live,
                max_rounds,
                downtime_ms,
                paused,
                channel: fd,
                copy_storage,
            },
        )),
        Request::MigrateReceive { paused } => {
            if !caller.is_root() {
                return error(DaemonError::Denied(
                    "only root may receive migrated domains".into(),
                ));
            }
            let Some(fd) = fd else {
                return error(DaemonError::Config("no connection to receive on".into()));
            };
            match crate::migration::relocation::receive_over_ssh(daemon, fd, paused) {
                Ok(()) => Reply::Plain(Response::Ok),
                Err(e) => Reply::Plain(Response::Error { message: e }),
            }
        }
        Request::BlockAttach { domain, spec } => {
            result(daemon.block_attach(caller, &domain, &spec))
        }
        Request::BlockDetach { domain, vdev } => {
            result(daemon.block_detach(caller, &domain, &vdev))
        }
        Request::NetworkAttach { domain, spec } => {
            result(daemon.network_attach(caller, &domain, &spec))
        }
        Request::NetworkDetach { domain, device } => {
            result(daemon.network_detach(caller, &domain, &device))
        }
        Request::DeviceList { domain } => match daemon.devices(caller, &domain) {
            Ok((domid, disks, nics)) => Reply::Plain(Response::Devices { domid, disks, nics }),
            Err(e) => error(e),
        },
        Request::Quit => {
            if caller.is_root() {
                Reply::Quit
            } else {
                root_only(daemon, caller, "stop rxend")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_may_hold_only_so_many_connections() {
        let conns = Connections::default();
        let user = Caller {
            uid: 4242,
            user: Some("marlowe".into()),
        };
        let held: Vec<_> = (0..MAX_CONNECTIONS_PER_USER)
            .map(|_| conns.enter(&user).expect("under the limit"))
            .collect();
        assert!(conns.enter(&user).is_none());
        let root = Caller { uid: 0, user: None };
        assert!(conns.enter(&root).is_some(), "root is never limited");
        drop(held);
        assert!(conns.enter(&user).is_some());
        assert!(conns.lock().is_empty(), "counts return to zero");
    }
}
