//! One rxen-shell session: the domains the user manages (as rxend says),
//! the one under control, and each command carried out as one request to
//! rxend, which decides whether the user may.

use std::io::Write;
use std::path::PathBuf;

use rxen_proto::api::{KnownDomain, Request, Response};

use crate::client::{Client, ClientError};
use crate::console;
use crate::format;
use crate::shell::command::{Action, Command};

/// Errors of one command; each is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// rxend refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The user manages no domain to act on.
    #[error("you manage no domains")]
    NoDomain,
    /// A domain the user does not manage (rxend's wording).
    #[error("{0} is an invalid domain identifier (rc=-6)")]
    NotYours(String),
    /// The domain is not running.
    #[error("{0} is not running (type boot to start it)")]
    NotRunning(String),
    /// The console failed.
    #[error("console: {0}")]
    Console(std::io::Error),
}

/// Whether the shell goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// Leave the shell.
    Exit,
}

/// The state of one session.
pub struct Session {
    socket: PathBuf,
    domains: Vec<KnownDomain>,
    current: Option<String>,
}

impl Session {
    /// A session against rxend at `socket`; the domain under control is the
    /// user's first (by name).
    pub fn new(socket: PathBuf) -> Result<Session, SessionError> {
        let mut s = Session {
            socket,
            domains: Vec::new(),
            current: None,
        };
        s.refresh()?;
        Ok(s)
    }

    fn connect(&self) -> Result<Client, SessionError> {
        // Never start rxend: connect only.
        Client::connect(&self.socket).map_err(|e| {
            SessionError::Client(ClientError::Unreachable {
                path: self.socket.display().to_string(),
                reason: e.to_string(),
            })
        })
    }

    fn known(&self, only: Option<String>) -> Result<Vec<KnownDomain>, SessionError> {
        match self.connect()?.call(&Request::Known { domain: only })? {
            Response::Known { domains } => Ok(domains),
            other => Err(ClientError::Unexpected(format!("{other:?}")).into()),
        }
    }

    /// Asks rxend again which domains the user manages.
    pub fn refresh(&mut self) -> Result<(), SessionError> {
        self.domains = self.known(None)?;
        let still_ours = self
            .current
            .as_ref()
            .is_some_and(|c| self.domains.iter().any(|d| &d.name == c));
        if !still_ours {
            self.current = self.domains.first().map(|d| d.name.clone());
        }
        Ok(())
    }

    /// The domain under control.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// The domains the user manages, as of the last refresh.
    pub fn domains(&self) -> &[KnownDomain] {
        &self.domains
    }

    /// The prompt: `rxen-shell[NAME]> `, or `rxen-shell> ` with no domain.
    pub fn prompt(&self) -> String {
        match &self.current {
            Some(c) => format!("rxen-shell[{c}]> "),
            None => "rxen-shell> ".to_string(),
        }
    }

    /// The text of `help`; `control` only for users with more than one domain.
    pub fn help(&self) -> String {
        let mut out = String::from("Commands:\n");
        let mut line = |w: &str, h: &str| out.push_str(&format!("  {w:<16} {h}\n"));
        line("list", "your domains and their state");
        for a in Action::ALL {
            line(a.word(), a.help());
        }
        if self.domains.len() > 1 {
            line("control DOMAIN", "switch to another of your domains");
        }
        line("help", "this text");
        line("exit", "leave (Ctrl-D too)");
        out.push_str(
            "The commands act on the domain in the prompt; boot, console and the others\n\
             also take a domain name.\n",
        );
        out
    }

    /// Carries out one command, printing its results.
    pub fn run(&mut self, cmd: Command) -> Result<Flow, SessionError> {
        // Someone may have changed the user's domains meanwhile.
        if !matches!(cmd, Command::Nothing | Command::Exit) {
            self.refresh()?;
        }
        match cmd {
            Command::Nothing => {}
            Command::Exit => return Ok(Flow::Exit),
            Command::Help => print!("{}", self.help()),
            Command::List => self.list()?,
            Command::Control(name) => {
                let found = self.known(Some(name.clone()))?;
                if found.iter().any(|d| d.name == name) {
                    println!("now controlling {name}");
                    self.current = Some(name);
                } else {
                    return Err(SessionError::NotYours(name));
                }
            }
            Command::On(action, named) => {
                let target = match named.or_else(|| self.current.clone()) {
                    Some(t) => t,
                    None => return Err(SessionError::NoDomain),
                };
                self.act(action, &target)?;
                self.refresh()?;
            }
        }
        Ok(Flow::Continue)
    }

    fn list(&self) -> Result<(), SessionError> {
        let running = match self.connect()?.call(&Request::List {
            domains: Vec::new(),
        })? {
            Response::Domains { domains } => domains,
            other => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
        };
        let mut out = String::from(format::LIST_HEADER);
        out.push('\n');
        for d in &self.domains {
            match running.iter().find(|r| r.name == d.name) {
                Some(r) => out.push_str(&format::list_row(r)),
                None => out.push_str(&format!(
                    "{:<40} {:>5} {:>5} {:>5}     (not running)",
                    d.name, "-", "-", "-"
                )),
            }
            out.push('\n');
        }
        print!("{out}");
        Ok(())
    }

    fn act(&mut self, action: Action, name: &str) -> Result<(), SessionError> {
        let domain = name.to_string();
        let stopped = self
            .domains
            .iter()
            .any(|d| d.name == name && d.domid.is_none());
        if stopped && action != Action::Boot {
            return Err(SessionError::NotRunning(domain));
        }
        let mut c = self.connect()?;
        match action {
            Action::Boot => match c.call(&Request::Boot { domain })? {
                Response::Domain {
                    domid,
                    name,
                    warnings,
                } => {
                    for w in warnings {
                        println!("warning: {w}");
                    }
                    println!("{name} is booting (domain ID {domid})");
                }
                other => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
            },
            Action::Shutdown => {
                c.call_ok(&Request::Shutdown { domain })?;
                println!("{name} was asked to shut down");
            }
            Action::Reboot => {
                c.call_ok(&Request::Reboot { domain })?;
                println!("{name} was asked to reboot");
            }
            Action::Destroy => {
                c.call_ok(&Request::Destroy { domain })?;
                println!("{name} was destroyed");
            }
            Action::Pause => {
                c.call_ok(&Request::Pause { domain })?;
                println!("{name} is paused");
            }
            Action::Unpause => {
                c.call_ok(&Request::Unpause { domain })?;
                println!("{name} runs again");
            }
            Action::Console => {
                let fd = c.call_fd(&Request::Console { domain })?;
                println!("[attached to {name}'s console; Ctrl-] returns to rxen-shell]");
                let _ = std::io::stdout().flush();
                let how = console::attach(fd).map_err(SessionError::Console)?;
                match how {
                    console::Detach::Escape => println!("\r\n[back in rxen-shell]"),
                    console::Detach::Closed => println!("\r\n[{name}'s console closed]"),
                }
            }
            Action::Uptime => {
                let list = match c.call(&Request::List {
                    domains: vec![domain],
                })? {
                    Response::Domains { domains } => domains,
                    other => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
                };
                print!("{}", format::uptime_table(&list));
            }
        }
        Ok(())
    }
}
