//! Spawning `rxen-vmm` processes and talking to their control sockets.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use rxen_proto::jsonline;
use rxen_proto::vmctl::{VmRequest, VmResponse};
use rxen_proto::vmspec::{files, ExitRecord, VmSpec};

use crate::procfs;

/// How long a new VMM may take to say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a control request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors while starting or talking to a VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The run directory or spec file could not be written.
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The VMM binary could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The VMM exited or failed before it was ready.
    #[error("the VMM failed to start the domain: {0}")]
    Failed(String),
    /// The VMM did not become ready in time.
    #[error("the VMM did not become ready within {0:?}")]
    Timeout(Duration),
    /// The control socket failed.
    #[error("VMM control socket: {0}")]
    Control(String),
}

/// A VMM that has started its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launched {
    /// Its PID.
    pub pid: i32,
    /// Its start time, against PID reuse.
    pub start_ticks: u64,
}

/// The rxen-vmm binary to run: `$RXEN_VMM`, else the one beside this executable, else `$PATH`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RXEN_VMM") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let sibling = dir.join("rxen-vmm");
            if sibling.exists() {
                return sibling;
            }
        }
    }
    PathBuf::from("rxen-vmm")
}

/// The descriptor number a receiving VMM finds its migration connection on.
pub const INCOMING_FD: i32 = 3;
/// The descriptor number a restoring VMM finds its save file on.
pub const RESTORE_FD: i32 = 4;
/// Most bytes rxend reads of a file a VMM wrote in its run directory.
const RUN_FILE_MAX: u64 = 64 * 1024;
/// How long a receiving VMM may take to get the whole domain and say `ready`.
const INCOMING_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Writes the spec into its run directory, starts a VMM in a session of its
/// own (so it outlives rxend), and waits until it reports `ready`.
pub fn launch(spec: &VmSpec) -> Result<Launched, VmmError> {
    launch_with(spec, None, None)
}

/// Like [`launch`]; with `incoming`, the VMM receives the domain on that
/// connection (as descriptor [`INCOMING_FD`]). rxend's own copy is closed
/// as soon as the VMM has it, so that the peer sees the VMM's end alone.
/// A spec that restores from a save file gets the file opened here, as
/// descriptor [`RESTORE_FD`]. With `join` (a cgroup's `cgroup.procs`, open for writing), the
/// VMM moves itself into that group before it runs anything (its CPU pool's cpuset).
pub fn launch_with(
    spec: &VmSpec,
    incoming: Option<OwnedFd>,
    join: Option<File>,
) -> Result<Launched, VmmError> {
    let mut spec = spec.clone();
    let handover = match (incoming, &spec.restore_from) {
        (Some(sock), _) => {
            spec.incoming_fd = Some(INCOMING_FD);
            Some((sock, INCOMING_FD))
        }
        (None, Some(path)) => {
            let file = File::open(path).map_err(|e| {
                VmmError::Failed(format!("cannot open save file {}: {e}", path.display()))
            })?;
            spec.restore_fd = Some(RESTORE_FD);
            Some((OwnedFd::from(file), RESTORE_FD))
        }
        (None, None) => None,
    };
    let spec = &spec;
    let prep = |path: &Path, source| VmmError::Prepare {
        path: path.to_path_buf(),
        source,
    };
    let run_dir = &spec.run_dir;
    fs::create_dir_all(run_dir).map_err(|e| prep(run_dir, e))?;
    let spec_path = run_dir.join(files::SPEC);
    let data = serde_json::to_vec_pretty(spec).map_err(|e| prep(&spec_path, e.into()))?;
    fs::write(&spec_path, data).map_err(|e| prep(&spec_path, e))?;
    let log_path = run_dir.join(files::VMM_LOG);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| prep(&log_path, e))?;

    let bin = binary();
    let mut cmd = Command::new(&bin);
    cmd.arg("--spec")
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    let inherit = handover.as_ref().map(|(f, to)| (f.as_raw_fd(), *to));
    let join_fd = join.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: setsid, write, dup2 and fcntl are async-signal-safe and touch no memory of the
    // parent; the written byte is a static.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = join_fd {
                // "0" is the writing process: the VMM joins its cgroup with every thread it
                // will have. The descriptor closes at exec (O_CLOEXEC).
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if let Some((fd, to)) = inherit {
                if fd == to {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let spawned = if spec.sandbox {
        spawn_in_pid_namespace(&mut cmd)
    } else {
        cmd.spawn()
    };
    let mut child = spawned.map_err(|source| VmmError::Spawn {
        binary: bin.clone(),
        source,
    })?;
    drop(handover);
    drop(join);
    let pid = child.id() as i32;
    note_child(pid);
    crate::failpoint::hit(crate::failpoint::START_SPAWNED);
    let Some(stdout) = child.stdout.take() else {
        return Err(VmmError::Failed("no stdout pipe".into()));
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    let timeout = if spec.incoming_fd.is_some() {
        INCOMING_TIMEOUT
    } else {
        READY_TIMEOUT
    };
    let outcome = rx.recv_timeout(timeout);
    match outcome {
        Ok(Ok(line)) if line.trim_end() == "ready" => {
            let start_ticks = procfs::process(pid)
                .map(|s| s.start_ticks)
                .ok_or_else(|| VmmError::Failed(last_error_line(&log_path)))?;
            Ok(Launched { pid, start_ticks })
        }
        Ok(_) => {
            let _ = child.wait();
            Err(VmmError::Failed(last_error_line(&log_path)))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(VmmError::Timeout(timeout))
        }
    }
}

/// Starts `cmd` as the first process of a PID namespace of its own, where it sees no other
/// process. Only the PID namespace for a thread's children can be new, and a thread that has
/// one can start no threads, so a short-lived thread does the spawning.
fn spawn_in_pid_namespace(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(std::io::Error::from)?;
            cmd.spawn()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the spawning thread panicked")))
    })
}

/// The last non-empty line of the VMM's log, which holds its startup error.
fn last_error_line(log_path: &Path) -> String {
    fs::read_to_string(log_path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "it exited without saying why".to_string())
}

/// VMM processes this rxend started and has not reaped yet.
static CHILDREN: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

fn note_child(pid: i32) {
    CHILDREN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(pid);
}

/// Reaps the VMMs this rxend started that have exited. Only those: a `waitpid(-1)` would also
/// take the exit status of helper commands (`ip`, hotplug scripts) from the threads that run them.
pub fn reap_children() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut children = CHILDREN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    children.retain(|&pid| {
        !matches!(
            waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_)
        )
    });
}

/// Sends one control request and returns the answer.
pub fn request(run_dir: &Path, req: &VmRequest) -> Result<VmResponse, VmmError> {
    request_within(run_dir, req, CONTROL_TIMEOUT)
}

/// The state a VMM reports when it answers within `timeout`: `None` when it does not (it is
/// still building or receiving its domain, and serves its control socket only once the guest
/// runs).
pub fn probe(run_dir: &Path, timeout: Duration) -> Option<rxen_proto::vmctl::VmStats> {
    match request_within(run_dir, &VmRequest::Stats, timeout) {
        Ok(VmResponse::Stats(s)) => Some(s),
        _ => None,
    }
}

/// [`request`] with a timeout of its own.
fn request_within(
    run_dir: &Path,
    req: &VmRequest,
    timeout: Duration,
) -> Result<VmResponse, VmmError> {
    let path = run_dir.join(files::CONTROL_SOCKET);
    let ctl = |e: String| VmmError::Control(e);
    let stream = UnixStream::connect(&path).map_err(|e| ctl(format!("{}: {e}", path.display())))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| ctl(e.to_string()))?;
    let mut w = &stream;
    jsonline::write(&mut w, req).map_err(|e| ctl(e.to_string()))?;
    let mut r = BufReader::new(&stream);
    jsonline::read(&mut r).map_err(|e| ctl(e.to_string()))
}

/// Sends one control request that may take long (save, migration), with
/// `fd` attached when given, and returns the answer.
pub fn request_long(
    run_dir: &Path,
    req: &VmRequest,
    fd: Option<&OwnedFd>,
    timeout: Duration,
) -> Result<VmResponse, VmmError> {
    request_with_fds(run_dir, req, fd.as_slice(), timeout)
}

/// [`request_long`] with any number of descriptors attached (SCM_RIGHTS, in one message).
pub fn request_with_fds(
    run_dir: &Path,
    req: &VmRequest,
    fds: &[&OwnedFd],
    timeout: Duration,
) -> Result<VmResponse, VmmError> {
    let path = run_dir.join(files::CONTROL_SOCKET);
    let ctl = |e: String| VmmError::Control(e);
    let stream = UnixStream::connect(&path).map_err(|e| ctl(format!("{}: {e}", path.display())))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| ctl(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| ctl(e.to_string()))?;
    line.push(b'\n');
    match fds {
        [_, ..] => {
            let fds: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let iov = [IoSlice::new(&line)];
            let n = sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                .map_err(|e| ctl(e.to_string()))?;
            let mut w = &stream;
            w.write_all(line.get(n..).unwrap_or_default())
                .map_err(|e| ctl(e.to_string()))?;
        }
        [] => {
            let mut w = &stream;
            w.write_all(&line).map_err(|e| ctl(e.to_string()))?;
        }
    }
    let mut r = BufReader::new(&stream);
    jsonline::read(&mut r).map_err(|e| ctl(e.to_string()))
}

/// Sends a request that only needs an acknowledgement, with `fds` attached (SCM_RIGHTS).
pub fn command_with_fds(run_dir: &Path, req: &VmRequest, fds: &[&OwnedFd]) -> Result<(), VmmError> {
    match request_with_fds(run_dir, req, fds, CONTROL_TIMEOUT)? {
        VmResponse::Ok
        | VmResponse::Stats(_)
        | VmResponse::Transferred(_)
        | VmResponse::Dirty { .. } => Ok(()),
        VmResponse::Error { message } => Err(VmmError::Control(message)),
    }
}

/// Reads a file a VMM wrote in its run directory: at most [`RUN_FILE_MAX`]
/// bytes, never through a link, a FIFO or a device the VMM may have put there.
pub fn read_run_file(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut data = Vec::new();
    f.take(RUN_FILE_MAX).read_to_end(&mut data).ok()?;
    Some(data)
}

/// Sends a request that only needs an acknowledgement.
pub fn command(run_dir: &Path, req: &VmRequest) -> Result<(), VmmError> {
    match request(run_dir, req)? {
        VmResponse::Ok
        | VmResponse::Stats(_)
        | VmResponse::Transferred(_)
        | VmResponse::Dirty { .. } => Ok(()),
        VmResponse::Error { message } => Err(VmmError::Control(message)),
    }
}

/// The call a VMM's seccomp filter stopped, when its log's last lines say so.
pub fn seccomp_kill(run_dir: &Path) -> Option<i64> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 4096;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(run_dir.join(files::VMM_LOG))
        .ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut tail = Vec::new();
    f.take(TAIL).read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find_map(rxen_proto::vmspec::seccomp_killed_call)
}

/// The exit record a VMM left, if any: the VMM creates the file empty at
/// start-up and writes it as it exits, so an empty or cut-short file is no
/// record (it was killed, or died mid-write).
pub fn exit_record(run_dir: &Path) -> Option<ExitRecord> {
    let data = read_run_file(&run_dir.join(files::EXIT_RECORD))?;
    serde_json::from_slice(&data).ok()
}

/// Opens the console of a running VMM.
pub fn connect_console(run_dir: &Path) -> std::io::Result<UnixStream> {
    UnixStream::connect(run_dir.join(files::CONSOLE_SOCKET))
}

/// Opens the console log of a domain for reading.
pub fn open_console_log(run_dir: &Path) -> std::io::Result<File> {
    File::open(run_dir.join(files::CONSOLE_LOG))
}

/// Reads and clears every disk's dirty map of the paused domain whose VMM runs in `run_dir`.
pub fn take_dirty(run_dir: &Path) -> Result<Vec<rxen_proto::vmctl::DirtyDisk>, VmmError> {
    match request(run_dir, &VmRequest::TakeDirty)? {
        VmResponse::Dirty { disks } => Ok(disks),
        VmResponse::Error { message } => Err(VmmError::Control(message)),
        other => Err(VmmError::Control(format!(
            "unexpected answer to take_dirty: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_cut_short_record_is_no_record() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join(files::EXIT_RECORD);
        assert_eq!(exit_record(dir.path()), None, "no file");
        fs::write(&path, b"").expect("write");
        assert_eq!(exit_record(dir.path()), None, "empty");
        let full = br#"{"reason":"poweroff","detail":"bye"}"#;
        fs::write(&path, &full[..full.len() / 2]).expect("write");
        assert_eq!(exit_record(dir.path()), None, "half written");
        fs::write(&path, full).expect("write");
        let r = exit_record(dir.path()).expect("record");
        assert_eq!(r.detail, "bye");
    }

    #[test]
    fn run_files_are_read_capped_and_never_through_links_or_fifos() {
        let dir = tempfile::tempdir().expect("tmp");
        let big = dir.path().join("big");
        fs::write(&big, vec![b'x'; RUN_FILE_MAX as usize * 4]).expect("write");
        assert_eq!(
            read_run_file(&big).expect("read").len() as u64,
            RUN_FILE_MAX
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&big, &link).expect("symlink");
        assert_eq!(read_run_file(&link), None);
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert_eq!(
            read_run_file(&fifo),
            None,
            "a FIFO must not block or be read"
        );
    }
}
