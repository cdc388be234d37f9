//! rxen-shell's command language: a handful of words, nothing else.

/// One line typed at the rxen-shell prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty line.
    Nothing,
    /// `help`: the commands.
    Help,
    /// `list`: the user's domains.
    List,
    /// `control DOMAIN`: switch the domain under control.
    Control(String),
    /// A command on one domain (the one under control unless named).
    On(Action, Option<String>),
    /// `exit`, `quit` or `logout`.
    Exit,
}

/// What to do to a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create it from its config file.
    Boot,
    /// Ask it to power off.
    Shutdown,
    /// Ask it to reboot.
    Reboot,
    /// Stop it at once.
    Destroy,
    /// Pause its vCPUs.
    Pause,
    /// Resume its vCPUs.
    Unpause,
    /// Attach to its console.
    Console,
    /// Show how long it has been up.
    Uptime,
}

impl Action {
    /// Every action, in the order `help` shows them.
    pub const ALL: [Action; 8] = [
        Action::Boot,
        Action::Console,
        Action::Shutdown,
        Action::Reboot,
        Action::Destroy,
        Action::Pause,
        Action::Unpause,
        Action::Uptime,
    ];

    /// The word that invokes it.
    pub fn word(self) -> &'static str {
        match self {
            Action::Boot => "boot",
            Action::Shutdown => "shutdown",
            Action::Reboot => "reboot",
            Action::Destroy => "destroy",
            Action::Pause => "pause",
            Action::Unpause => "unpause",
            Action::Console => "console",
            Action::Uptime => "uptime",
        }
    }

    /// One line for `help`.
    pub fn help(self) -> &'static str {
        match self {
            Action::Boot => "start the domain from its config file",
            Action::Shutdown => "ask the domain to power off",
            Action::Reboot => "ask the domain to reboot",
            Action::Destroy => "stop the domain at once, like pulling the plug",
            Action::Pause => "freeze the domain's virtual CPUs",
            Action::Unpause => "let a paused domain run again",
            Action::Console => "attach to the domain's console (Ctrl-] returns here)",
            Action::Uptime => "how long the domain has been up",
        }
    }
}

/// A line that is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The first word is no command.
    #[error("unknown command: {0} (type help for the commands)")]
    Unknown(String),
    /// The command was given the wrong arguments.
    #[error("usage: {0}")]
    Usage(&'static str),
}

/// Shows a word typed by the user safely: control characters escaped, length capped.
fn shown(word: &str) -> String {
    let escaped: String = word.chars().flat_map(char::escape_debug).collect();
    match escaped.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", escaped.get(..at).unwrap_or_default()),
        None => escaped,
    }
}

/// Parses one line: a command word and at most one domain name.
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let mut words = line.split_whitespace();
    let Some(first) = words.next() else {
        return Ok(Command::Nothing);
    };
    let arg = words.next().map(str::to_string);
    let extra = words.next().is_some();
    let simple = |c: Command, usage: &'static str| {
        if arg.is_some() {
            Err(ParseError::Usage(usage))
        } else {
            Ok(c)
        }
    };
    match first {
        "help" | "?" => simple(Command::Help, "help"),
        "list" => simple(Command::List, "list"),
        "exit" | "quit" | "logout" => simple(Command::Exit, first_usage(first)),
        "control" => match (arg, extra) {
            (Some(d), false) => Ok(Command::Control(d)),
            _ => Err(ParseError::Usage("control DOMAIN")),
        },
        word => match Action::ALL.iter().find(|a| a.word() == word) {
            Some(&a) if !extra => Ok(Command::On(a, arg)),
            Some(&a) => Err(ParseError::Usage(action_usage(a))),
            None => Err(ParseError::Unknown(shown(word))),
        },
    }
}

fn first_usage(word: &str) -> &'static str {
    match word {
        "quit" => "quit",
        "logout" => "logout",
        _ => "exit",
    }
}

fn action_usage(a: Action) -> &'static str {
    match a {
        Action::Boot => "boot [DOMAIN]",
        Action::Shutdown => "shutdown [DOMAIN]",
        Action::Reboot => "reboot [DOMAIN]",
        Action::Destroy => "destroy [DOMAIN]",
        Action::Pause => "pause [DOMAIN]",
        Action::Unpause => "unpause [DOMAIN]",
        Action::Console => "console [DOMAIN]",
        Action::Uptime => "uptime [DOMAIN]",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commands_parse() {
        assert_eq!(parse(""), Ok(Command::Nothing));
        assert_eq!(parse("   "), Ok(Command::Nothing));
        assert_eq!(parse("help"), Ok(Command::Help));
        assert_eq!(parse(" list "), Ok(Command::List));
        assert_eq!(parse("boot"), Ok(Command::On(Action::Boot, None)));
        assert_eq!(
            parse("console regan"),
            Ok(Command::On(Action::Console, Some("regan".into())))
        );
        assert_eq!(
            parse("control goneril"),
            Ok(Command::Control("goneril".into()))
        );
        assert_eq!(parse("logout"), Ok(Command::Exit));
        for a in Action::ALL {
            assert_eq!(parse(a.word()), Ok(Command::On(a, None)));
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for line in [
            "!sh",
            "sh",
            "/bin/sh",
            "bash -i",
            "exec sh",
            "create /etc/xen/x.cfg",
            "dmesg",
            "rxl list",
            "scp -t /tmp",
            "BOOT",
        ] {
            assert!(
                matches!(parse(line), Err(ParseError::Unknown(_))),
                "{line} was accepted"
            );
        }
        assert_eq!(parse("control"), Err(ParseError::Usage("control DOMAIN")));
        assert_eq!(
            parse("control a b"),
            Err(ParseError::Usage("control DOMAIN"))
        );
        assert_eq!(parse("boot a b"), Err(ParseError::Usage("boot [DOMAIN]")));
        assert_eq!(parse("list all"), Err(ParseError::Usage("list")));
    }

    #[test]
    fn refused_words_are_shown_harmlessly() {
        let err = parse("\u{1b}]0;pwned\u{7}").expect_err("refused");
        let text = err.to_string();
        assert!(!text.contains('\u{1b}'), "{text:?}");
        let long = "x".repeat(500);
        assert!(parse(&long).expect_err("refused").to_string().len() < 100);
    }
}
