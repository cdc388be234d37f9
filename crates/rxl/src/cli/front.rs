//! xl's front door: the global options before the command (`-v`, `-f`, `-N`, `-t`, `-T`),
//! commands by any unambiguous prefix, xl's help layout, and xl's messages and exit codes for
//! unknown commands, bad options and missing arguments. Only then does clap read the command.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Command, CommandFactory, Parser};

use super::Cli;

/// xl's global options, given before the command (`rxl [-vfNtT] COMMAND ...`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Globals {
    /// `-v`, once per `v`: more detail (save and migrate print their downtime breakdown).
    pub verbose: u8,
    /// `-f`: accepted as xl accepts it (xl itself sets a flag that no command reads).
    pub force: bool,
    /// `-N`: dry run; only the commands in [`DRY_RUN`] honour it, the others refuse it.
    pub dry_run: bool,
    /// `-t`: progress with carriage returns (rxl's progress bars already do on a terminal).
    pub progress_cr: bool,
    /// `-T`: timestamps on xl's log lines (accepted; rxl's messages carry none).
    pub timestamps: bool,
}

/// The commands that honour the global `-N`: they print what they would do and do nothing.
pub const DRY_RUN: &[&str] = &["create", "config-update", "cpupool-create"];

/// The commands xl marks as changing configuration (the `f` in their usage line).
const MODIFIES: &[&str] = &[
    "create",
    "cpupool-create",
    "config-update",
    "trigger",
    "cd-insert",
    "cd-eject",
    "vcpu-pin",
    "block-attach",
    "network-attach",
];

/// What the command line came to.
#[derive(Debug)]
pub enum Invocation {
    /// Run this command.
    Run {
        /// The options before the command.
        globals: Globals,
        /// The command, as clap read it (under its full name).
        cli: Cli,
    },
    /// Nothing to run: print this and exit.
    Exit(Exit),
}

/// Text for stdout and stderr, and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// What goes to standard output.
    pub stdout: String,
    /// What goes to standard error.
    pub stderr: String,
    /// The exit status.
    pub code: u8,
}

impl Exit {
    fn out(stdout: String, code: u8) -> Invocation {
        Invocation::Exit(Exit {
            stdout,
            stderr: String::new(),
            code,
        })
    }

    fn err(stderr: impl Into<String>, code: u8) -> Invocation {
        Invocation::Exit(Exit {
            stdout: String::new(),
            stderr: stderr.into(),
            code,
        })
    }
}

/// Reads rxl's command line (`args` includes the program name) as xl reads its own.
pub fn parse<I, T>(args: I) -> Invocation
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut globals = Globals::default();
    // rxl's own `--socket PATH` may come before the command too; clap reads it.
    let mut socket: Vec<OsString> = Vec::new();
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        let text = arg.to_string_lossy();
        if text == "--" {
            i += 1;
            break;
        }
        if text == "--version" {
            return Exit::out(format!("rxl {}\n", env!("CARGO_PKG_VERSION")), 0);
        }
        if text == "--help" {
            return Exit::out(overview(), 0);
        }
        if text == "--socket" {
            let Some(path) = args.get(i + 1) else {
                return Exit::err("option `--socket' requires an argument\n", 1);
            };
            socket.extend([arg.clone(), path.clone()]);
            i += 2;
            continue;
        }
        if text.starts_with("--socket=") {
            socket.push(arg.clone());
            i += 1;
            continue;
        }
        if !text.starts_with('-') || text == "-" {
            break;
        }
        if text.starts_with("--") {
            return Exit::err("unknown global option\n", 1);
        }
        for c in text.chars().skip(1) {
            match c {
                'v' => globals.verbose = globals.verbose.saturating_add(1),
                'f' => globals.force = true,
                'N' => globals.dry_run = true,
                't' => globals.progress_cr = true,
                'T' => globals.timestamps = true,
                _ => return Exit::err("unknown global option\n", 1),
            }
        }
        i += 1;
    }
    let Some(given) = args.get(i) else {
        return Exit::out(overview(), 1);
    };
    let given = given.to_string_lossy().into_owned();
    let rest = &args[i + 1..];
    let command = Cli::command();
    let Some(name) = lookup(&command, &given) else {
        if given == "help" {
            let topic = rest.first().map(|t| t.to_string_lossy().into_owned());
            return Exit::out(help(&command, topic.as_deref()), 0);
        }
        return Exit::err("command not implemented\n", 1);
    };
    if globals.dry_run && !DRY_RUN.contains(&name.as_str()) {
        return Exit::err("command does not implement -N (dryrun) option\n", 1);
    }
    let mut argv: Vec<OsString> = vec!["rxl".into()];
    argv.extend(socket);
    argv.push(name.clone().into());
    argv.extend(rest.iter().cloned());
    match Cli::try_parse_from(argv) {
        Ok(cli) => Invocation::Run { globals, cli },
        Err(e) => Invocation::Exit(from_clap(&command, &name, &e)),
    }
}

/// The command `given` names: itself, or the only command it is a prefix of (xl's rule: an
/// exact name wins even when it also prefixes another command).
pub fn lookup(command: &Command, given: &str) -> Option<String> {
    if given.is_empty() {
        return None;
    }
    let mut found = None;
    let mut count = 0;
    for sub in command.get_subcommands() {
        let name = sub.get_name();
        if name == given {
            return Some(name.to_string());
        }
        if name.starts_with(given) {
            found = Some(name.to_string());
            count += 1;
        }
    }
    if count == 1 {
        found
    } else {
        None
    }
}

/// `rxl help [COMMAND]`: the overview, one command's help, or xl's line for an unknown one.
pub fn help(command: &Command, topic: Option<&str>) -> String {
    match topic {
        None | Some("help") => overview(),
        Some(t) => match lookup(command, t) {
            Some(name) => command_help(command, &name),
            None => format!("command \"{t}\" not implemented\n"),
        },
    }
}

/// `rxl` alone and `rxl help`: xl's layout, `" %-19s %s"` per command (a name longer than
/// 19 columns puts its description on the next line).
pub fn overview() -> String {
    let command = Cli::command();
    let mut out = String::from("Usage rxl [-vfNtT] <subcommand> [args]\n\n");
    out.push_str("rxl full list of subcommands:\n\n");
    for sub in command.get_subcommands() {
        let name = sub.get_name();
        out.push_str(&format!(" {name:<19} "));
        if name.len() > 19 {
            out.push_str(&format!("\n {:<19} ", ""));
        }
        out.push_str(&description(sub));
        out.push('\n');
    }
    out
}

/// A command's one-line description, without a final full stop (xl adds one where it wants).
fn description(sub: &Command) -> String {
    let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
    about.trim_end_matches('.').to_string()
}

/// One command's help in xl's layout: `Usage: rxl [-vtT...] NAME USAGE`, its description, then
/// its options, one per line, their descriptions from column 25.
pub fn command_help(command: &Command, name: &str) -> String {
    let Some(sub) = command.find_subcommand(name) else {
        return format!("command \"{name}\" not implemented\n");
    };
    let flags = format!(
        "-vtT{}{}",
        if MODIFIES.contains(&name) { "f" } else { "" },
        if DRY_RUN.contains(&name) { "N" } else { "" }
    );
    let options: Vec<&clap::Arg> = sub
        .get_arguments()
        .filter(|a| !a.is_positional() && !a.is_global_set() && !a.is_hide_set())
        .collect();
    let mut usage: Vec<String> = Vec::new();
    if options.iter().any(|a| a.get_id() != "help") {
        usage.push("[options]".into());
    }
    for arg in sub.get_positionals() {
        let value = value_name(arg);
        let many = matches!(arg.get_action(), clap::ArgAction::Append);
        let shown = if value.starts_with('[') {
            value
        } else if arg.is_required_set() {
            format!("<{value}>")
        } else {
            format!("[{value}]")
        };
        usage.push(if many && !shown.starts_with('[') {
            format!("{shown} ...")
        } else {
            shown
        });
    }
    let mut out = format!(
        "Usage: rxl [{flags}] {name} {}\n\n{}.\n\n",
        usage.join(" "),
        description(sub)
    );
    if !options.is_empty() {
        out.push_str("Options:\n\n");
        for arg in options {
            let spec = option_spec(arg);
            let text = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            if spec.len() < 24 {
                out.push_str(&format!("{spec:<24}{text}\n"));
            } else {
                out.push_str(&format!("{spec}\n{:<24}{text}\n", ""));
            }
        }
        out.push_str(&format!("{:<24}Print this help.\n\n", "-h, --help"));
    }
    out
}

fn value_name(arg: &clap::Arg) -> String {
    arg.get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
}

/// `-c`, `-w WEIGHT, --weight=WEIGHT`, `--key=FILE`: how an option is written.
fn option_spec(arg: &clap::Arg) -> String {
    let takes_value = arg.get_action().takes_values();
    let value = takes_value.then(|| value_name(arg));
    let mut parts = Vec::new();
    if let Some(s) = arg.get_short() {
        parts.push(match &value {
            Some(v) => format!("-{s} {v}"),
            None => format!("-{s}"),
        });
    }
    if let Some(l) = arg.get_long() {
        parts.push(match &value {
            Some(v) => format!("--{l}={v}"),
            None => format!("--{l}"),
        });
    }
    parts.join(", ")
}

/// The number of arguments a command cannot do without (xl's "requires at least N").
fn required_positionals(command: &Command, name: &str) -> usize {
    command
        .find_subcommand(name)
        .map(|sub| {
            sub.get_positionals()
                .filter(|a| a.is_required_set())
                .count()
        })
        .unwrap_or(0)
}

/// clap's verdict on a command's options and arguments, in xl's words and exit codes: help on
/// stdout with 0; an unknown option `option `x' not supported.` with 2; missing arguments
/// `'rxl CMD' requires at least N arguments.` and the command's help, with 2.
fn from_clap(command: &Command, name: &str, e: &clap::Error) -> Exit {
    let help_text = || command_help(command, name);
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Exit {
            stdout: help_text(),
            stderr: String::new(),
            code: 0,
        },
        ErrorKind::UnknownArgument => {
            let arg = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(s)) => s.clone(),
                _ => String::new(),
            };
            let stderr = if let Some(long) = arg.strip_prefix("--") {
                format!("option `--{long}' not supported.\n")
            } else if let Some(short) = arg.strip_prefix('-') {
                let c = short.chars().next().map(String::from).unwrap_or_default();
                format!("option `{c}' not supported.\n")
            } else {
                format!("'rxl {name}': unexpected argument `{arg}'.\n\n")
            };
            let stdout = if arg.starts_with('-') {
                String::new()
            } else {
                help_text()
            };
            Exit {
                stdout,
                stderr,
                code: 2,
            }
        }
        ErrorKind::MissingRequiredArgument => {
            let n = required_positionals(command, name).max(1);
            Exit {
                stdout: help_text(),
                stderr: format!(
                    "'rxl {name}' requires at least {n} argument{}.\n\n",
                    if n > 1 { "s" } else { "" }
                ),
                code: 2,
            }
        }
        _ => Exit {
            stdout: String::new(),
            stderr: e.render().to_string(),
            code: 2,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{restore_files, Cmd};

    fn run(args: &[&str]) -> (Globals, Cmd) {
        let mut argv = vec!["rxl"];
        argv.extend_from_slice(args);
        match parse(argv) {
            Invocation::Run { globals, cli } => (globals, cli.cmd),
            Invocation::Exit(e) => panic!("{args:?} did not run: {e:?}"),
        }
    }

    fn exit(args: &[&str]) -> Exit {
        let mut argv = vec!["rxl"];
        argv.extend_from_slice(args);
        match parse(argv) {
            Invocation::Exit(e) => e,
            Invocation::Run { cli, .. } => panic!("{args:?} ran {:?}", cli.cmd),
        }
    }

    #[test]
    fn restore_takes_the_config_first_and_the_save_file_last() {
        let (_, cmd) = run(&["restore", "d1.cfg", "d1.sav"]);
        let Cmd::Restore { files, .. } = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(restore_files(&files), Some((Some("d1.cfg"), "d1.sav")));
        let (_, cmd) = run(&["restore", "-p", "d1.sav"]);
        let Cmd::Restore { files, paused, .. } = cmd else {
            panic!("{cmd:?}")
        };
        assert!(paused);
        assert_eq!(restore_files(&files), Some((None, "d1.sav")));
        assert_eq!(restore_files(&["a".into(), "b".into(), "c".into()]), None);
    }

    #[test]
    fn capital_v_is_the_vnc_viewer_on_create_and_restore_and_is_refused() {
        for args in [
            &["create", "-V", "d1.cfg"][..],
            &["create", "--vncviewer-autopass", "d1.cfg"],
            &["restore", "-V", "d1.sav"],
            &["restore", "-A", "d1.cfg", "d1.sav"],
        ] {
            let (_, cmd) = run(args);
            let vnc = match cmd {
                Cmd::Create { vnc, .. } | Cmd::Restore { vnc, .. } => vnc,
                other => panic!("{other:?}"),
            };
            assert!(
                vnc.refusal().is_some_and(|m| m.contains("no VNC")),
                "{args:?}"
            );
        }
        let (_, Cmd::Create { vnc, .. }) = run(&["create", "d1.cfg"]) else {
            panic!("create")
        };
        assert_eq!(vnc.refusal(), None);
    }

    #[test]
    fn config_update_reads_file_and_vars_as_xl() {
        use crate::cli::config_update_args;
        let (_, cmd) = run(&["config-up", "web", "web.cfg", "memory=64", "vcpus=2"]);
        let Cmd::ConfigUpdate {
            domain,
            args,
            defconfig,
            ..
        } = cmd
        else {
            panic!("{cmd:?}")
        };
        assert_eq!(domain, "web");
        assert_eq!(
            config_update_args(defconfig.as_deref(), &args),
            Ok((
                Some("web.cfg".into()),
                vec!["memory=64".into(), "vcpus=2".into()]
            ))
        );
        let (
            _,
            Cmd::ConfigUpdate {
                args, defconfig, ..
            },
        ) = run(&["config-update", "web", "-f", "a.cfg", "memory=64"])
        else {
            panic!("config-update -f")
        };
        assert_eq!(
            config_update_args(defconfig.as_deref(), &args),
            Ok((Some("a.cfg".into()), vec!["memory=64".into()]))
        );
        assert_eq!(
            config_update_args(Some("a.cfg"), &["b.cfg".into()]),
            Err("b.cfg".into())
        );
        assert_eq!(config_update_args(None, &[]), Ok((None, vec![])));
        // xl's table: config-update can dry-run and modifies, vm-list neither.
        let (g, _) = run(&["-N", "config-update", "web", "web.cfg"]);
        assert!(g.dry_run);
        assert!(exit(&["help", "config-update"]).stdout.starts_with(
            "Usage: rxl [-vtTfN] config-update [options] <DOMAIN> [ConfigFile] [vars]"
        ));
        assert!(exit(&["help", "vm-list"])
            .stdout
            .starts_with("Usage: rxl [-vtT] vm-list \n"));
    }

    #[test]
    fn version_is_long_only() {
        let e = exit(&["--version"]);
        assert_eq!(e.stdout, format!("rxl {}\n", env!("CARGO_PKG_VERSION")));
        assert_eq!(e.code, 0);
        // -V is not a global option in xl.
        let e = exit(&["-V"]);
        assert_eq!((e.stderr.as_str(), e.code), ("unknown global option\n", 1));
    }

    #[test]
    fn global_options_come_before_the_command() {
        let (g, cmd) = run(&["-vvtT", "-f", "-N", "create", "d1.cfg"]);
        assert_eq!(
            g,
            Globals {
                verbose: 2,
                force: true,
                dry_run: true,
                progress_cr: true,
                timestamps: true
            }
        );
        assert!(matches!(cmd, Cmd::Create { .. }));
        let (_, cmd) = run(&["--socket", "/x.sock", "-v", "list"]);
        assert!(matches!(cmd, Cmd::List { .. }));
        let e = exit(&["-x", "list"]);
        assert_eq!((e.stderr.as_str(), e.code), ("unknown global option\n", 1));
        let e = exit(&["-N", "list"]);
        assert_eq!(
            (e.stderr.as_str(), e.code),
            ("command does not implement -N (dryrun) option\n", 1)
        );
    }

    #[test]
    fn commands_may_be_abbreviated_to_an_unambiguous_prefix() {
        assert!(matches!(run(&["li"]).1, Cmd::List { .. }));
        assert!(matches!(run(&["vcpu-l"]).1, Cmd::VcpuList { .. }));
        assert!(matches!(run(&["des", "d"]).1, Cmd::Destroy { .. }));
        // An exact name wins over the longer command it prefixes.
        assert!(matches!(run(&["migrate", "d", "h"]).1, Cmd::Migrate { .. }));
        for ambiguous in ["m", "mem", "vcpu-", "frobnicate", "h"] {
            let e = exit(&[ambiguous]);
            assert_eq!(
                (e.stderr.as_str(), e.code),
                ("command not implemented\n", 1),
                "{ambiguous}"
            );
        }
    }

    #[test]
    fn no_command_and_help_print_the_overview_in_xl_layout() {
        let alone = exit(&[]);
        assert_eq!(alone.code, 1);
        let help = exit(&["help"]);
        assert_eq!(help.code, 0);
        assert_eq!(alone.stdout, help.stdout);
        let mut lines = help.stdout.lines();
        assert_eq!(lines.next(), Some("Usage rxl [-vfNtT] <subcommand> [args]"));
        assert!(help
            .stdout
            .contains("\n create              Create a domain from a config file\n"));
        assert!(help.stdout.contains("\n migrate-receive     Receive"));
        let one = exit(&["help", "unp"]);
        assert!(
            one.stdout
                .starts_with("Usage: rxl [-vtT] unpause <DOMAIN>\n\nUnpause a domain.\n\n"),
            "{}",
            one.stdout
        );
        assert_eq!(
            exit(&["help", "nosuch"]).stdout,
            "command \"nosuch\" not implemented\n"
        );
        let h = exit(&["create", "-h"]);
        assert!(
            h.stdout.starts_with("Usage: rxl [-vtTfN] create "),
            "{}",
            h.stdout
        );
        assert_eq!(h.code, 0);
    }

    #[test]
    fn bad_options_and_missing_arguments_get_xl_messages_and_status_2() {
        let e = exit(&["list", "-z"]);
        assert_eq!(
            (e.stderr.as_str(), e.code),
            ("option `z' not supported.\n", 2)
        );
        let e = exit(&["pause"]);
        assert_eq!(e.stderr, "'rxl pause' requires at least 1 argument.\n\n");
        assert!(e.stdout.starts_with("Usage: rxl [-vtT] pause <DOMAIN>"));
        assert_eq!(e.code, 2);
        let e = exit(&["rename", "a"]);
        assert_eq!(e.stderr, "'rxl rename' requires at least 2 arguments.\n\n");
    }
}
