//! rxend's client socket: one thread per connection, one JSON request per
//! line, the caller identified by the socket's peer credentials.

use std::fs;
use std::io::{BufReader, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

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

/// Binds the client socket, replacing a stale one, with mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let shown = path.display().to_string();
    let bind_err = |source| ServerError::Bind {
        path: shown.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::AlreadyRunning(shown));
        }
        fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    Ok(listener)
}

/// Accepts clients forever, each in a thread of its own.
pub fn serve(daemon: Arc<Daemon>, listener: UnixListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let d = Arc::clone(&daemon);
                std::thread::spawn(move || handle_client(&d, stream));
            }
            Err(e) => daemon.log.error(format!("accept: {e}")),
        }
    }
}

/// What to send back for one request.
enum Reply {
    Plain(Response),
    WithFd(Response, OwnedFd),
    Quit,
}

fn handle_client(daemon: &Daemon, stream: UnixStream) {
    let caller = match getsockopt(&stream, sockopt::PeerCredentials) {
        Ok(c) => Caller::from_uid(c.uid()),
        Err(e) => {
            daemon
                .log
                .error(format!("cannot read peer credentials: {e}"));
            return;
        }
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
        let sent = match dispatch(daemon, &caller, req) {
            Reply::Plain(resp) => {
                let mut w = &stream;
                jsonline::write(&mut w, &resp).is_ok()
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

fn dispatch(daemon: &Daemon, caller: &Caller, req: Request) -> Reply {
    match req {
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
            Reply::Plain(Response::Host(HostInfo {
                fields: hostinfo::info_fields(free),
            }))
        }
        Request::Destroy { domain } => result(daemon.destroy(caller, &domain)),
        Request::Shutdown { domain } => result(daemon.request_shutdown(caller, &domain, false)),
        Request::Reboot { domain } => result(daemon.request_shutdown(caller, &domain, true)),
        Request::Pause { domain } => result(daemon.set_paused(caller, &domain, true)),
        Request::Unpause { domain } => result(daemon.set_paused(caller, &domain, false)),
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
                return error(DaemonError::Denied("only root may read rxend's log".into()));
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
        Request::VcpuList { domains } => match daemon.vcpu_list(caller, &domains) {
            Ok(vcpus) => Reply::Plain(Response::Vcpus { vcpus }),
            Err(e) => error(e),
        },
        Request::VcpuPin { domain, vcpu, hard } => {
            result(daemon.vcpu_pin(caller, &domain, &vcpu, &hard))
        }
        Request::Counters => Reply::Plain(Response::Counters(daemon.counters(caller))),
        Request::MemSet { domain, mib } => result(daemon.mem_set(caller, &domain, mib)),
        Request::MemMax { domain, mib } => result(daemon.mem_max(caller, &domain, mib)),
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
                error(DaemonError::Denied("only root may stop rxend".into()))
            }
        }
    }
}
