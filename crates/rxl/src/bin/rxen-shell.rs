//! `rxen-shell`: the restricted login shell for rxen's customers.

use std::process::ExitCode;

use rxl::shell::{args, repl, session::Session};

fn main() -> ExitCode {
    repl::ignore_terminal_signals();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let inv = match args::parse(&argv) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("rxen-shell: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut session = match Session::new(inv.socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rxen-shell: {e}");
            return ExitCode::FAILURE;
        }
    };
    // With sshd's ForceCommand, the command the user asked for arrives here.
    let command = inv.command.or_else(|| {
        std::env::var("SSH_ORIGINAL_COMMAND")
            .ok()
            .filter(|c| !c.trim().is_empty())
    });
    if let Some(line) = command {
        return if repl::run_once(&mut session, &line) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match repl::interactive(&mut session) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rxen-shell: {e}");
            ExitCode::FAILURE
        }
    }
}
