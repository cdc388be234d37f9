//! The VMM's main loop (epoll): control and console sockets, console input,
//! SIGTERM, and the exit of the VM. It serves any [`Served`] (the VM
//! implements it) and knows nothing else of it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use rxen_proto::vmctl::VmResponse;
use rxen_proto::vmspec::{ExitReason, ExitRecord};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::control::{self, ControlTarget, LineBuffer};
use crate::exit::{ExitError, ExitRecordFile};

/// What the loop needs of the VM it serves, besides the control requests.
pub trait Served: ControlTarget {
    /// Readable once an exit is pending.
    fn exit_event(&self) -> &EventFd;
    /// Readable when the guest drained the UART's receive FIFO.
    fn input_drained_event(&self) -> &EventFd;
    /// The exit record, once the VM has ended.
    fn exit_record(&self) -> Option<ExitRecord>;
    /// Ends the VM for `reason`.
    fn request_exit(&self, reason: ExitReason, detail: &str);
    /// Sends the console's output to client `id` too.
    fn attach_console(&self, id: u64, out: UnixStream);
    /// Stops sending the console's output to client `id`.
    fn detach_console(&self, id: u64);
    /// Queues console input; returns the bytes that did not fit.
    fn queue_input(&mut self, bytes: &[u8]) -> usize;
    /// Moves queued console input into the UART as it has room.
    fn feed_input(&mut self);
    /// As the VM ends: makes the disks' writes durable and returns the NICs' byte counts.
    fn end_io(&self) -> NetTotals;
}

/// The NICs' byte counts as the VM ends, for the exit record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetTotals {
    /// Bytes sent by the guest.
    pub tx_bytes: u64,
    /// Bytes received by the guest.
    pub rx_bytes: u64,
}

/// Errors of the main loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll failed.
    #[error("event loop: {0}")]
    Epoll(#[source] io::Error),
    /// The SIGTERM handler could not be installed.
    #[error("cannot handle SIGTERM: {0}")]
    Signal(String),
    /// The exit record could not be written.
    #[error(transparent)]
    Exit(#[from] ExitError),
}

const TOKEN_CONTROL: u64 = 1;
const TOKEN_CONSOLE: u64 = 2;
const TOKEN_EXIT: u64 = 3;
const TOKEN_DRAINED: u64 = 4;
const TOKEN_SIGTERM: u64 = 5;
const TOKEN_FENCE: u64 = 6;
/// Client tokens: kind in the high half, client id in the low half.
const KIND_CONTROL_CLIENT: u64 = 1 << 32;
const KIND_CONSOLE_CLIENT: u64 = 2 << 32;
const KIND_MASK: u64 = !0xFFFF_FFFF;

static SIGTERM_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigterm(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = SIGTERM_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is a valid 8-byte buffer and
        // `fd` is the eventfd installed below, which lives for the whole process.
        unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    }
}

/// Installs a SIGTERM handler that signals the returned event fd.
pub fn install_sigterm() -> Result<EventFd, EventLoopError> {
    let evt =
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(EventLoopError::Epoll)?;
    let keep = evt.try_clone().map_err(EventLoopError::Epoll)?;
    // The clone stays open for the life of the process so the handler's fd is always valid.
    SIGTERM_FD.store(keep.as_raw_fd(), Ordering::SeqCst);
    std::mem::forget(keep);
    vmm_sys_util::signal::register_signal_handler(libc::SIGTERM, on_sigterm)
        .map_err(|e| EventLoopError::Signal(e.to_string()))?;
    Ok(evt)
}

struct ControlClient {
    stream: UnixStream,
    lines: LineBuffer,
    /// Descriptors received with the client's bytes (SCM_RIGHTS), oldest first.
    fds: Vec<OwnedFd>,
}

struct Loop<'a, V: Served> {
    vm: &'a mut V,
    epoll: Epoll,
    control: UnixListener,
    console: UnixListener,
    next_id: u64,
    control_clients: HashMap<u64, ControlClient>,
    console_clients: HashMap<u64, UnixStream>,
    exit_file: ExitRecordFile,
}

/// What the loop does next.
enum Flow {
    Continue,
    Finish(ExitRecord),
}

fn add(epoll: &Epoll, fd: i32, token: u64) -> Result<(), EventLoopError> {
    epoll
        .ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token),
        )
        .map_err(EventLoopError::Epoll)
}

/// Writes all of `bytes` to a client, giving up after a second.
fn send_reply(stream: &mut UnixStream, bytes: &[u8]) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    let r = stream.write_all(bytes);
    stream.set_nonblocking(true)?;
    r
}

impl<V: Served> Loop<'_, V> {
    fn accept(&mut self, console: bool) {
        loop {
            let listener = if console {
                &self.console
            } else {
                &self.control
            };
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            };
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!("cannot configure client: {e}");
                continue;
            }
            self.next_id = self.next_id.wrapping_add(1) & 0xFFFF_FFFF;
            let id = self.next_id;
            let kind = if console {
                KIND_CONSOLE_CLIENT
            } else {
                KIND_CONTROL_CLIENT
            };
            if let Err(e) = add(&self.epoll, stream.as_raw_fd(), kind | id) {
                tracing::warn!("cannot watch client: {e}");
                continue;
            }
            if console {
                match stream.try_clone() {
                    Ok(out) => {
                        self.vm.attach_console(id, out);
                        self.console_clients.insert(id, stream);
                        tracing::info!(client = id, "console client attached");
                    }
                    Err(e) => tracing::warn!("cannot attach console client: {e}"),
                }
            } else {
                self.control_clients.insert(
                    id,
                    ControlClient {
                        stream,
                        lines: LineBuffer::default(),
                        fds: Vec::new(),
                    },
                );
            }
        }
    }

    /// Reads what a client sent; returns the bytes and whether it is gone.
    fn drain(stream: &mut UnixStream) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return (data, true),
                Ok(n) => {
                    data.extend_from_slice(buf.get(..n).unwrap_or(&[]));
                    if data.len() >= 64 * 1024 {
                        return (data, false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (data, false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return (data, true),
            }
        }
    }

    /// Like [`Self::drain`], and collects descriptors passed with the bytes.
    fn drain_with_fds(stream: &mut UnixStream, fds: &mut Vec<OwnedFd>) -> (Vec<u8>, bool) {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // A disk with a full backing chain carries 1 + 16 descriptors.
            let mut cmsg = nix::cmsg_space!([RawFd; 32]);
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            let r = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            );
            let n = match r {
                Ok(msg) => {
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(received) = c {
                                for fd in received {
                                    // SAFETY: the kernel just installed `fd` in this
                                    // process for us; nothing else owns it.
                                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                                }
                            }
                        }
                    }
                    msg.bytes
                }
                Err(nix::errno::Errno::EAGAIN) => return (data, false),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return (data, true),
            };
            if n == 0 {
                return (data, true);
            }
            data.extend_from_slice(buf.get(..n).unwrap_or(&[]));
            if data.len() >= 64 * 1024 {
                return (data, false);
            }
        }
    }

    fn console_event(&mut self, id: u64) {
        let Some(stream) = self.console_clients.get_mut(&id) else {
            return;
        };
        let (data, gone) = Self::drain(stream);
        if !data.is_empty() {
            let dropped = self.vm.queue_input(&data);
            if dropped > 0 {
                tracing::warn!(dropped, "console input queue full");
            }
            self.feed_input();
        }
        if gone {
            if let Some(s) = self.console_clients.remove(&id) {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    s.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
            self.vm.detach_console(id);
            tracing::info!(client = id, "console client detached");
        }
    }

    fn feed_input(&mut self) {
        self.vm.feed_input();
    }

    fn drop_control(&mut self, id: u64) {
        if let Some(c) = self.control_clients.remove(&id) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn control_event(&mut self, id: u64) -> Result<Flow, EventLoopError> {
        let Some(client) = self.control_clients.get_mut(&id) else {
            return Ok(Flow::Continue);
        };
        let (data, gone) = Self::drain_with_fds(&mut client.stream, &mut client.fds);
        client.lines.push(&data);
        loop {
            let Some(client) = self.control_clients.get_mut(&id) else {
                return Ok(Flow::Continue);
            };
            let reply = match client.lines.next_line() {
                Ok(None) => break,
                Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Some(line)) => control::handle_line_with_fds(&line, self.vm, &mut client.fds),
                Err(e) => control::Reply {
                    response: VmResponse::Error {
                        message: e.to_string(),
                    },
                    finish: false,
                },
            };
            let mut finished = None;
            if reply.finish {
                // The record must exist before the client hears "ok".
                if let Some(record) = self.vm.exit_record() {
                    finished = Some(self.write_final(record)?);
                }
            }
            let Some(client) = self.control_clients.get_mut(&id) else {
                return Ok(Flow::Continue);
            };
            if let Err(e) = send_reply(&mut client.stream, &control::encode(&reply.response)) {
                tracing::info!(client = id, "control client lost: {e}");
                self.drop_control(id);
            }
            if let Some(record) = finished {
                return Ok(Flow::Finish(record));
            }
        }
        if gone {
            self.drop_control(id);
        }
        Ok(Flow::Continue)
    }

    fn finish(&mut self) -> Result<Flow, EventLoopError> {
        match self.vm.exit_record() {
            Some(record) => Ok(Flow::Finish(self.write_final(record)?)),
            None => Ok(Flow::Continue),
        }
    }

    /// Writes the exit record with the NICs' byte counts as they end (rxend adds them to the
    /// domain's totals: its own samples are seconds old, or missing while it is away).
    fn write_final(&self, mut record: ExitRecord) -> Result<ExitRecord, EventLoopError> {
        // Before the record: once rxend reads it, another VMM may open the disks.
        let net = self.vm.end_io();
        record.net_tx_bytes = net.tx_bytes;
        record.net_rx_bytes = net.rx_bytes;
        self.exit_file.write(&record)?;
        Ok(record)
    }

    fn dispatch(&mut self, token: u64) -> Result<Flow, EventLoopError> {
        match token {
            TOKEN_CONTROL => self.accept(false),
            TOKEN_CONSOLE => self.accept(true),
            TOKEN_EXIT => {
                let _ = self.vm.exit_event().read();
                return self.finish();
            }
            TOKEN_DRAINED => {
                let _ = self.vm.input_drained_event().read();
                self.feed_input();
            }
            TOKEN_FENCE if crate::fence::fired() => {
                tracing::warn!("fence deadline passed (ha domain, no lease renewal from rxend)");
                self.vm
                    .request_exit(ExitReason::Destroyed, rxen_proto::vmctl::FENCE_EXIT_DETAIL);
                return self.finish();
            }
            TOKEN_SIGTERM => {
                tracing::info!("SIGTERM: destroying the domain");
                self.vm.request_exit(ExitReason::Destroyed, "SIGTERM");
                return self.finish();
            }
            t if t & KIND_MASK == KIND_CONSOLE_CLIENT => self.console_event(t & !KIND_MASK),
            t if t & KIND_MASK == KIND_CONTROL_CLIENT => return self.control_event(t & !KIND_MASK),
            _ => {}
        }
        Ok(Flow::Continue)
    }
}

/// Serves the sockets until the VM ends; writes the exit record to `exit_file` and returns it.
pub fn run<V: Served>(
    vm: &mut V,
    control: UnixListener,
    console: UnixListener,
    sigterm: EventFd,
    exit_file: ExitRecordFile,
) -> Result<ExitRecord, EventLoopError> {
    let epoll = Epoll::new().map_err(EventLoopError::Epoll)?;
    add(&epoll, control.as_raw_fd(), TOKEN_CONTROL)?;
    add(&epoll, console.as_raw_fd(), TOKEN_CONSOLE)?;
    add(&epoll, vm.exit_event().as_raw_fd(), TOKEN_EXIT)?;
    add(&epoll, vm.input_drained_event().as_raw_fd(), TOKEN_DRAINED)?;
    add(&epoll, sigterm.as_raw_fd(), TOKEN_SIGTERM)?;
    add(
        &epoll,
        crate::fence::fd().map_err(EventLoopError::Epoll)?,
        TOKEN_FENCE,
    )?;
    let mut lp = Loop {
        vm,
        epoll,
        control,
        console,
        next_id: 0,
        control_clients: HashMap::new(),
        console_clients: HashMap::new(),
        exit_file,
    };
    // An exit may already be pending (a vCPU that failed at once).
    if let Flow::Finish(r) = lp.finish()? {
        return Ok(r);
    }
    // Input that arrived with a restored or migrated domain.
    lp.feed_input();
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match lp.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(EventLoopError::Epoll(e)),
        };
        for ev in events.iter().take(n) {
            if let Flow::Finish(r) = lp.dispatch(ev.data())? {
                return Ok(r);
            }
        }
    }
}
