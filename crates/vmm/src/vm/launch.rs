//! A VMM process's life around its VM: the run directory's sockets, the
//! jail, an incoming migration's handshake, the start, then the event loop
//! until the guest ends.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use rxen_proto::vmctl::TargetTimings;
use rxen_proto::vmspec::{files, ExitRecord, VmSpec};

use super::error::VmmError;
use super::running::Vm;
use crate::event_loop;
use crate::micros;
use crate::migration::channel::{self, take_incoming};
use crate::sandbox::preopen::HostFiles;

/// Binds a Unix socket at `path` with mode 0600, replacing a stale one.
pub fn bind_socket(path: &Path) -> Result<UnixListener, VmmError> {
    let err = |source| VmmError::RunDir {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    // SAFETY: umask only changes this process's file creation mask; we restore it below.
    let old = unsafe { libc::umask(0o077) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Takes ownership of the descriptor `fd` that rxend let this process inherit.
pub(crate) fn take_fd(fd: i32) -> std::io::Result<File> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::other(format!(
            "file descriptor {fd} is not open"
        )));
    }
    // SAFETY: rxend passed `fd` to this process for this purpose alone; nothing
    // else in the process owns it, and it was just checked to be open.
    let f = unsafe { File::from_raw_fd(fd) };
    // SAFETY: F_SETFD on the descriptor just taken: not passed on to children.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(f)
}

/// Opens (empty) `RUN_DIR/transfer.json`, which save and migration progress
/// is written to in place.
pub(crate) fn open_progress(run_dir: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(run_dir.join(files::TRANSFER_PROGRESS))
}

/// Runs the VM of `spec` to its end: calls `on_ready` once the vCPUs are
/// started, serves the sockets, and returns the exit record it wrote.
pub fn run(spec: VmSpec, on_ready: impl FnOnce()) -> Result<ExitRecord, VmmError> {
    if !spec.sandbox {
        crate::sandbox::disable();
        tracing::warn!("running unconfined: the sandbox is off (rxend --no-sandbox)");
    }
    crate::sandbox::limit_resources()?;
    // The process has one thread yet: what every thread's confinement has in common is
    // done here once, not in each new thread.
    crate::sandbox::empty_bounding_set_early()?;
    crate::sandbox::prepare()?;
    let run_dir = spec.run_dir.clone();
    if !run_dir.is_dir() {
        return Err(VmmError::RunDir {
            path: run_dir,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    // A record left by an earlier run of this domain must not describe this one.
    crate::exit::ExitRecordFile::remove_stale(&run_dir)?;
    let sigterm = event_loop::install_sigterm()?;
    let incoming = match spec.incoming_fd {
        Some(fd) => Some(take_incoming(fd).map_err(|e| VmmError::Incoming(e.to_string()))?),
        None => None,
    };
    let tell_source = |e: VmmError| {
        if let Some(sock) = &incoming {
            channel::refuse(sock, &e);
        }
        e
    };
    // Every path is opened here, then the VMM jails itself, and only then builds the domain
    // (and parses a save file or a migration stream) from the descriptors.
    let host = HostFiles::open(&spec)
        .map_err(VmmError::from)
        .map_err(tell_source)?;
    let control = bind_socket(&run_dir.join(files::CONTROL_SOCKET))?;
    let console = bind_socket(&run_dir.join(files::CONSOLE_SOCKET))?;
    // The record is written at exit through this descriptor.
    let exit_file = crate::exit::ExitRecordFile::create(&run_dir)?;
    let jail_started = Instant::now();
    crate::sandbox::jail::enter_jail(&crate::sandbox::jail::JailSpec {
        mount_at: &run_dir,
        uid: spec.sandbox_uid,
        max_file_size: host.largest_write(&spec),
    })
    .map_err(VmmError::from)
    .map_err(tell_source)?;
    if crate::sandbox::jail::entered() {
        tracing::info!(
            us = micros(jail_started.elapsed()),
            uid = ?spec.sandbox_uid,
            "jailed: own namespaces, empty root"
        );
    }
    // Kept until the guest runs on this side: its buffer is unmapped when it goes.
    let mut input = incoming
        .as_ref()
        .map(|sock| channel::Incoming::with_capacity(channel::INCOMING_BUFFER, sock));
    let mut vm = Vm::build(spec, input.as_mut(), host).map_err(tell_source)?;
    let mut timings = TargetTimings::default();
    let mut go_unix_us = 0;
    if let Some(sock) = &incoming {
        timings.restore_us = vm.received_at.map_or(0, |t| micros(t.elapsed()));
        // The source may still back out until it says "go".
        let go = channel::say(sock, channel::RECEIVED).and_then(|()| channel::read_line(sock));
        match go {
            Ok(l) if l == channel::GO => {
                go_unix_us = crate::unix_micros();
            }
            other => {
                return Err(VmmError::Incoming(format!(
                    "the source did not clear the domain to run ({other:?})"
                )))
            }
        }
    }
    // Each vCPU and device thread confines itself before its first instruction.
    vm.start()?;
    if let Some(sock) = &incoming {
        if let Err(e) = channel::say(sock, channel::RESUMED) {
            tracing::warn!("cannot tell the source that the domain runs: {e}");
        }
        // The guest runs once every vCPU thread has confined itself and entered it.
        timings.running_at_unix_us = vm.first_run_unix_us(Duration::from_millis(100));
        let ran = timings
            .running_at_unix_us
            .unwrap_or_else(crate::unix_micros);
        timings.resume_us = ran.saturating_sub(go_unix_us);
        if let Err(e) = channel::send_timings(sock, &timings) {
            tracing::warn!("cannot send the source the target's timings: {e}");
        }
        tracing::info!(
            restore_us = timings.restore_us,
            resume_us = timings.resume_us,
            "stop-and-copy on the target"
        );
        tracing::info!("incoming migration complete; the domain runs here");
        vm.slots.after_migration();
    }
    drop(input);
    drop(incoming);
    // This thread, which serves rxend's requests and the console, and every thread it starts
    // (hotplug, migration) from here on: no path is opened after this.
    crate::sandbox::enter(crate::sandbox::ThreadKind::Control)?;
    on_ready();
    crate::sandbox::test_forbidden_call();
    let record = event_loop::run(&mut vm, control, console, sigterm, exit_file)?;
    Ok(record)
}
