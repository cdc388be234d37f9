//! A connection to rxend: one JSON request per line, one response per line,
//! and rxend started on demand when none is listening.

use std::io::{BufRead, BufReader, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use rxen_proto::api::{Request, Response};
use rxen_proto::jsonline::{self, FrameError};

/// Default state directory of an rxend that rxl starts (`RXEN_STATE_DIR` overrides it).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rxen";

/// Default path of rxend's socket.
pub const DEFAULT_SOCKET: &str = "/run/rxen/rxend.sock";

/// Errors talking to rxend.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No rxend could be reached or started.
    #[error("cannot reach rxend at {path}: {reason}")]
    Unreachable {
        /// The socket path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The connection failed mid-request.
    #[error("lost connection to rxend: {0}")]
    Frame(#[from] FrameError),
    /// rxend refused the request; the message is for the user.
    #[error("{0}")]
    Refused(String),
    /// rxend answered something unexpected.
    #[error("unexpected answer from rxend: {0}")]
    Unexpected(String),
}

/// An open connection to rxend.
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

fn rxend_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RXEND") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let sibling = dir.join("rxend");
            if sibling.exists() {
                return sibling;
            }
        }
    }
    PathBuf::from("rxend")
}

/// Environment variable that, when set to anything but `0` or nothing, stops rxl from
/// starting rxend itself.
pub const NO_AUTOSTART: &str = "RXEN_NO_AUTOSTART";

fn autostart_disabled() -> bool {
    std::env::var_os(NO_AUTOSTART).is_some_and(|v| !v.is_empty() && v != "0")
}

impl Client {
    /// Connects to rxend at `socket`, starting one (in the background, in a
    /// session of its own) if nothing listens there.
    pub fn connect_or_start(socket: &Path) -> Result<Client, ClientError> {
        match Client::connect(socket) {
            Ok(c) => return Ok(c),
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ClientError::Unreachable {
                    path: socket.display().to_string(),
                    reason: e.to_string(),
                });
            }
            Err(e) if !nix::unistd::geteuid().is_root() => {
                // Only root runs rxend; anyone else just reports that it is down.
                return Err(ClientError::Unreachable {
                    path: socket.display().to_string(),
                    reason: format!("{e} (is rxend running?)"),
                });
            }
            Err(e) if autostart_disabled() => {
                // rxend belongs to a service manager (or a test) here: one started by rxl
                // would take its state directory while it restarts.
                return Err(ClientError::Unreachable {
                    path: socket.display().to_string(),
                    reason: format!("{e} (is rxend running? {NO_AUTOSTART} is set)"),
                });
            }
            Err(_) => {}
        }
        let bin = rxend_binary();
        let state = std::env::var_os("RXEN_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        // Say what is about to happen: which daemon, on which socket and state directory.
        eprintln!(
            "rxl: no rxend answers on {}; starting {} (state in {})",
            socket.display(),
            bin.display(),
            state.display()
        );
        // rxend's start-up errors (another rxend holds the state directory, a bad config)
        // come back through a pipe, shown if it exits at once; once it listens, rxl lets go
        // of the pipe and rxend's later writes to stderr fail harmlessly.
        let mut cmd = Command::new(&bin);
        cmd.arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let unreachable = |reason: String| ClientError::Unreachable {
            path: socket.display().to_string(),
            reason,
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| unreachable(format!("starting {} failed: {e}", bin.display())))?;
        let mut stderr = child.stderr.take();
        if let Some(e) = &stderr {
            let _ = nix::fcntl::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(e),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
        }
        // The last lines rxend wrote (read as it goes, so that it never blocks on a full pipe).
        let mut said = String::new();
        let mut drain = |said: &mut String| {
            let mut buf = [0u8; 4096];
            while let Some(Ok(n @ 1..)) = stderr.as_mut().map(|e| std::io::Read::read(e, &mut buf))
            {
                said.push_str(&String::from_utf8_lossy(&buf[..n]));
                if said.len() > 16 << 10 {
                    let mut cut = said.len() - (8 << 10);
                    while !said.is_char_boundary(cut) {
                        cut += 1;
                    }
                    *said = said[cut..].to_string();
                }
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            drain(&mut said);
            if let Ok(c) = Client::connect(socket) {
                return Ok(c);
            }
            if let Ok(Some(status)) = child.try_wait() {
                drain(&mut said);
                let said = said.lines().last().unwrap_or("").trim().to_string();
                return Err(unreachable(if said.is_empty() {
                    format!(
                        "{} exited ({status}); see its log in the state directory",
                        bin.display()
                    )
                } else {
                    format!("{} exited ({status}): {said}", bin.display())
                }));
            }
            if Instant::now() >= deadline {
                return Err(unreachable("started rxend but it did not listen".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Connects to a running rxend.
    pub fn connect(socket: &Path) -> std::io::Result<Client> {
        let stream = UnixStream::connect(socket)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client { stream, reader })
    }

    /// Sends a request and returns rxend's response; an error response becomes `Refused`.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        jsonline::write(&mut self.stream, req)?;
        match jsonline::read(&mut self.reader)? {
            Response::Error { message } => Err(ClientError::Refused(message)),
            r => Ok(r),
        }
    }

    /// Sends a request that needs no answer beyond success.
    pub fn call_ok(&mut self, req: &Request) -> Result<(), ClientError> {
        match self.call(req)? {
            Response::Ok => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends a request that hands rxend a connection: rxend acknowledges the
    /// request, then receives `fd` in a message of its own, then answers.
    pub fn call_with_fd(&mut self, req: &Request, fd: &OwnedFd) -> Result<Response, ClientError> {
        use nix::sys::socket::{sendmsg, ControlMessage};
        match self.call(req)? {
            Response::Ok => {}
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
        let fds = [fd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(b"F")];
        sendmsg::<()>(
            self.stream.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| FrameError::Io(e.into()))?;
        match jsonline::read(&mut self.reader)? {
            Response::Error { message } => Err(ClientError::Refused(message)),
            r => Ok(r),
        }
    }

    /// Sends a request whose answer carries a file descriptor (console attach).
    pub fn call_fd(&mut self, req: &Request) -> Result<OwnedFd, ClientError> {
        jsonline::write(&mut self.stream, req)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let (n, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|e| FrameError::Io(e.into()))?;
            let mut fd = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for raw in fds {
                            // SAFETY: the kernel just installed this descriptor in our
                            // table for us; nothing else owns it.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            if fd.is_none() {
                                fd = Some(owned);
                            }
                        }
                    }
                }
            }
            (msg.bytes, fd)
        };
        if n == 0 {
            return Err(FrameError::Closed.into());
        }
        let mut line = buf.get(..n).unwrap_or_default().to_vec();
        if line.last() != Some(&b'\n') {
            self.reader
                .read_until(b'\n', &mut line)
                .map_err(FrameError::Io)?;
        }
        let resp: Response = serde_json::from_slice(&line).map_err(FrameError::Json)?;
        match (resp, fd) {
            (Response::Error { message }, _) => Err(ClientError::Refused(message)),
            (Response::Ok, Some(fd)) => Ok(fd),
            (other, _) => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.stream.flush();
    }
}
