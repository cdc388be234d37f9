//! The interactive loop: rustyline for line editing and a history kept in
//! memory only (a customer's home may not exist or be writable, and the
//! shell writes no files), Ctrl-C cancels the line, Ctrl-D leaves.

use rustyline::error::ReadlineError;
use rustyline::history::MemHistory;
use rustyline::{Config, Editor};

use crate::shell::command;
use crate::shell::session::{Flow, Session};

/// Lines of history kept for the session.
const HISTORY_LINES: usize = 200;

/// Errors that end the shell.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// The line editor failed.
    #[error("line editor: {0}")]
    Editor(#[from] ReadlineError),
}

/// Ignores the terminal's job-control and quit signals: Ctrl-C and Ctrl-Z
/// must neither stop nor kill the shell (the console passes them to the guest).
pub fn ignore_terminal_signals() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTSTP] {
        // SAFETY: SIG_IGN installs no handler code; nothing runs in signal context.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

/// Runs one command line (`rxen-shell -c LINE`); the result is the exit status's success.
pub fn run_once(session: &mut Session, line: &str) -> bool {
    match command::parse(line) {
        Ok(cmd) => match session.run(cmd) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("error: {e}");
                false
            }
        },
        Err(e) => {
            eprintln!("rxen-shell: {e}");
            false
        }
    }
}

/// Reads and runs commands until `exit` or end of input.
pub fn interactive(session: &mut Session) -> Result<(), ReplError> {
    let config = Config::builder()
        .max_history_size(HISTORY_LINES)?
        .auto_add_history(true)
        .history_ignore_space(true)
        .build();
    let mut editor: Editor<(), MemHistory> = Editor::with_history(config, MemHistory::new())?;
    greet(session);
    loop {
        let line = match editor.readline(&session.prompt()) {
            Ok(l) => l,
            // Ctrl-C: drop the line, ask again.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::WindowResized) => continue,
            Err(ReadlineError::Eof) => {
                println!();
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let cmd = match command::parse(&line) {
            Ok(c) => c,
            Err(e) => {
                println!("{e}");
                continue;
            }
        };
        match session.run(cmd) {
            Ok(Flow::Exit) => return Ok(()),
            Ok(Flow::Continue) => {}
            Err(e) => println!("error: {e}"),
        }
    }
}

fn greet(session: &Session) {
    let names: Vec<&str> = session.domains().iter().map(|d| d.name.as_str()).collect();
    match names.len() {
        0 => println!("rxen-shell: you manage no domains. Type help for the commands."),
        1 => println!(
            "rxen-shell: you manage {}. Type help for the commands.",
            names.join("")
        ),
        _ => println!(
            "rxen-shell: you manage {}; switch with control DOMAIN. Type help for the commands.",
            names.join(", ")
        ),
    }
}
