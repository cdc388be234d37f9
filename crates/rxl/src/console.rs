//! Attaching the terminal to a domain's console; Ctrl-] detaches, as in xl. Also which console
//! `rxl console -t TYPE -n NUMBER` names (rxen domains have one: the 16550 UART, serial 0) and
//! the escape character of `-e`, read as xenconsole reads it.

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

/// Why `rxl console` cannot attach what its options name, in xl's words where xl has some.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleChoiceError {
    /// `-t` with a type xl does not know.
    #[error("console type supported are: pv, serial, vuart")]
    UnknownType,
    /// `-t pv`: rxen domains have no PV console.
    #[error("rxen domains have no PV console: their console is the emulated 16550 UART (-t serial)\nUnable to attach console")]
    NoPv,
    /// `-t vuart`: the Arm virtual UART.
    #[error("rxen domains have no vuart (an Arm console): their console is the emulated 16550 UART (-t serial)\nUnable to attach console")]
    NoVuart,
    /// `-t serial -n N` with N other than 0.
    #[error("rxen domains have one serial console, number 0: there is no serial console {0}\nUnable to attach console")]
    NoSuchSerial(i64),
    /// `-e` with more than one character (or `^` and one).
    #[error("Invalid escape argument")]
    BadEscape,
}

/// Checks `-t TYPE` and `-n NUMBER` (read as C's `atoi`); the serial console 0 is all there is.
/// As in xl, `-n` counts only with `-t`: without it the primary console is meant.
pub fn choose(kind: Option<&str>, number: Option<&str>) -> Result<(), ConsoleChoiceError> {
    let Some(kind) = kind else {
        return Ok(());
    };
    match kind {
        "serial" => {}
        "pv" => return Err(ConsoleChoiceError::NoPv),
        "vuart" => return Err(ConsoleChoiceError::NoVuart),
        _ => return Err(ConsoleChoiceError::UnknownType),
    }
    match number.map(atoi).unwrap_or(0) {
        0 => Ok(()),
        n => Err(ConsoleChoiceError::NoSuchSerial(n)),
    }
}

/// C's `atoi`: leading blanks, a sign, the digits that follow; 0 when there are none.
fn atoi(text: &str) -> i64 {
    let crate::cnum::Leading { negative, digits } = crate::cnum::leading(text);
    let value: i64 = digits.parse().unwrap_or(0);
    if negative {
        -value
    } else {
        value
    }
}

/// `-e`'s escape character as xenconsole reads it: `^X` is Ctrl-X, a single character is
/// itself; anything else is refused.
pub fn escape_byte(arg: &str) -> Result<u8, ConsoleChoiceError> {
    match arg.as_bytes() {
        [b'^', c] => Ok(c & 0x1f),
        [c] => Ok(*c),
        _ => Err(ConsoleChoiceError::BadEscape),
    }
}

/// Copies the console to stdout and stdin to the console until the user
/// detaches (Ctrl-]) or the console closes. With stdin at end of file, output is
/// still shown until the console closes.
pub fn attach(console: OwnedFd) -> io::Result<Detach> {
    attach_with(console, ESCAPE)
}

/// [`attach`] with another byte that detaches (`rxl console -e`).
pub fn attach_with(console: OwnedFd, escape: u8) -> io::Result<Detach> {
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
            if let Some(pos) = data.iter().position(|&b| b == escape) {
                con.write_all(data.get(..pos).unwrap_or_default())?;
                return Ok(Detach::Escape);
            }
            con.write_all(data)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_zero_is_the_only_console() {
        assert_eq!(choose(None, None), Ok(()));
        // Without -t, xl ignores -n and attaches the primary console.
        assert_eq!(choose(None, Some("3")), Ok(()));
        assert_eq!(choose(Some("serial"), None), Ok(()));
        assert_eq!(choose(Some("serial"), Some("0")), Ok(()));
        assert_eq!(choose(Some("serial"), Some("x")), Ok(()));
        assert_eq!(
            choose(Some("serial"), Some("1")),
            Err(ConsoleChoiceError::NoSuchSerial(1))
        );
        assert_eq!(choose(Some("pv"), None), Err(ConsoleChoiceError::NoPv));
        assert_eq!(
            choose(Some("vuart"), None),
            Err(ConsoleChoiceError::NoVuart)
        );
        let e = choose(Some("vga"), None).expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "console type supported are: pv, serial, vuart"
        );
        assert!(ConsoleChoiceError::NoPv
            .to_string()
            .ends_with("\nUnable to attach console"));
    }

    #[test]
    fn escape_characters_as_xenconsole_reads_them() {
        assert_eq!(escape_byte("^]"), Ok(0x1d));
        assert_eq!(escape_byte("^a"), Ok(0x01));
        assert_eq!(escape_byte("q"), Ok(b'q'));
        assert_eq!(escape_byte("^"), Ok(b'^'));
        assert_eq!(escape_byte("ab"), Err(ConsoleChoiceError::BadEscape));
        assert_eq!(escape_byte(""), Err(ConsoleChoiceError::BadEscape));
    }
}
