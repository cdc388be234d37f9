//! Attaching the terminal to a domain's console; Ctrl-] detaches, as in xl.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, InputFlags, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

/// The byte that detaches: Ctrl-] (0x1d), as in `xl console`.
pub const ESCAPE: u8 = 0x1d;

/// Puts a terminal into raw input mode while it lives; output processing
/// (newline to CR-LF) stays on so that guest lines show as lines.
struct RawInput<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> RawInput<'a> {
    fn enter(fd: BorrowedFd<'a>) -> nix::Result<RawInput<'a>> {
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        raw.local_flags
            .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG | LocalFlags::IEXTEN);
        raw.input_flags
            .remove(InputFlags::IXON | InputFlags::ICRNL | InputFlags::INLCR | InputFlags::ISTRIP);
        raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw)?;
        Ok(RawInput { fd, saved })
    }
}

impl Drop for RawInput<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, SetArg::TCSANOW, &self.saved);
    }
}

/// How an attachment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// The user pressed Ctrl-].
    Escape,
    /// The console closed (the domain went away, or the log ended).
    Closed,
}

/// Copies the console to stdout and stdin to the console until the user
/// detaches or the console closes. With stdin at end of file, output is
/// still shown until the console closes.
pub fn attach(console: OwnedFd) -> io::Result<Detach> {
    let stdin = io::stdin();
    let stdin_fd = stdin.as_fd();
    let _raw = if termios::tcgetattr(stdin_fd).is_ok() {
        RawInput::enter(stdin_fd).ok()
    } else {
        None
    };
    let mut con = std::fs::File::from(console);
    let mut stdout = io::stdout();
    let mut stdin_open = true;
    let mut buf = [0u8; 4096];
    loop {
        let con_fd = con.as_fd();
        let mut fds = vec![PollFd::new(con_fd, PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin_fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready = |f: &PollFd| {
            f.revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let con_ready = fds.first().is_some_and(ready);
        let in_ready = fds.get(1).is_some_and(ready);
        drop(fds);
        if con_ready {
            let n = con.read(&mut buf)?;
            if n == 0 {
                stdout.flush()?;
                return Ok(Detach::Closed);
            }
            stdout.write_all(buf.get(..n).unwrap_or_default())?;
            stdout.flush()?;
        }
        if in_ready {
            // Read the descriptor directly: a buffered reader could keep bytes
            // that poll would then never report.
            let n = match nix::unistd::read(stdin_fd.as_raw_fd(), &mut buf) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                stdin_open = false;
                continue;
            }
            let data = buf.get(..n).unwrap_or_default();
            if let Some(pos) = data.iter().position(|&b| b == ESCAPE) {
                con.write_all(data.get(..pos).unwrap_or_default())?;
                return Ok(Detach::Escape);
            }
            con.write_all(data)?;
        }
    }
}
