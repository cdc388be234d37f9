//! rxen-shell's command line. As a login shell it is started with no
//! arguments, or with `-c LINE` when ssh is given a command; `--socket`
//! is for the administrator (tests, a non-default rxend). No environment
//! variable changes where it connects.

use std::path::PathBuf;

use crate::client::DEFAULT_SOCKET;

/// How the shell was asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// rxend's socket.
    pub socket: PathBuf,
    /// One command line to run instead of an interactive session (`-c`).
    pub command: Option<String>,
}

/// A command line that rxen-shell does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// An option is missing its value.
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// Something else.
    #[error("usage: rxen-shell [--socket PATH] [-c COMMAND]")]
    Usage,
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Invocation, ArgError> {
    let mut inv = Invocation {
        socket: PathBuf::from(DEFAULT_SOCKET),
        command: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket" => {
                inv.socket = PathBuf::from(it.next().ok_or(ArgError::MissingValue("--socket"))?)
            }
            "-c" => {
                inv.command = Some(it.next().ok_or(ArgError::MissingValue("-c"))?.clone());
                // Whatever follows `-c LINE` belongs to a command line, not to us.
                return Ok(inv);
            }
            _ => return Err(ArgError::Usage),
        }
    }
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn login_shell_forms() {
        let inv = parse(&[]).expect("no args");
        assert_eq!(inv.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(inv.command, None);
        let inv = parse(&strings(&["-c", "boot"])).expect("-c");
        assert_eq!(inv.command.as_deref(), Some("boot"));
        let inv = parse(&strings(&["--socket", "/tmp/s", "-c", "list"])).expect("both");
        assert_eq!(inv.socket, PathBuf::from("/tmp/s"));
        assert_eq!(inv.command.as_deref(), Some("list"));
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(parse(&strings(&["-i"])), Err(ArgError::Usage));
        assert_eq!(
            parse(&strings(&["--socket"])),
            Err(ArgError::MissingValue("--socket"))
        );
        assert_eq!(parse(&strings(&["-c"])), Err(ArgError::MissingValue("-c")));
        // `ssh host --socket x` arrives as `-c "--socket x"`: a command line, not an option.
        let inv = parse(&strings(&["-c", "--socket /tmp/evil"])).expect("-c");
        assert_eq!(inv.socket, PathBuf::from(DEFAULT_SOCKET));
    }
}
