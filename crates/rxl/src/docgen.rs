//! Manual pages and shell completion generated from the code, so that they never drift from
//! it: `rxl(1)` and one page per command (`rxl-create(1)`, ...) from rxl's clap definitions,
//! `rxen-shell(1)` from the shell's own command words, `rxl.cfg(5)` from the config parser's key
//! tables, `rxend(8)` from rxend's clap definitions, and bash and zsh completion for `rxl`
//! (commands, options, and domain names from `rxl list`). `rxl-gen-man DIR` writes them all.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Arg, Command, CommandFactory};
use clap_complete::Shell;

use crate::cli::Cli;
use crate::shell::command::Action;

/// Errors of writing the generated files.
#[derive(Debug, thiserror::Error)]
pub enum DocgenError {
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// rxl's clap command, as the manual pages and completion describe it.
fn rxl_command() -> Command {
    Cli::command()
        .version(env!("CARGO_PKG_VERSION"))
        .long_about(
            "rxl manages rxen domains with xl's commands, options and output formats. \
             Global options (-v, -f, -N, -t, -T) come before the command; a command may be \
             abbreviated to any unambiguous prefix; DOMAIN is a name or a numeric ID. \
             rxl talks to rxend over its Unix socket (--socket or $RXEN_SOCKET) and starts it \
             when nothing listens there, unless RXEN_NO_AUTOSTART=1.",
        )
}

/// The commands of rxen-shell's prompt with their descriptions, in `help`'s order: the words
/// of [`crate::shell::command::parse`].
pub fn shell_words() -> Vec<(String, &'static str)> {
    let mut words = vec![
        ("help".to_string(), "list the commands"),
        ("list".to_string(), "the domains you may manage"),
        (
            "control DOMAIN".to_string(),
            "make DOMAIN the one the other commands act on",
        ),
    ];
    for a in Action::ALL {
        words.push((format!("{} [DOMAIN]", a.word()), a.help()));
    }
    words.push(("exit, quit, logout".to_string(), "leave the shell"));
    words
}

/// rxen-shell's command line as a clap command (the shell reads it itself, see
/// [`crate::shell::args`]), for its manual page.
fn shell_command() -> Command {
    Command::new("rxen-shell")
        .version(env!("CARGO_PKG_VERSION"))
        .about("The restricted login shell of rxen's customers")
        .long_about(
            "rxen-shell is the login shell for customers: it lets a user boot, stop, reboot, \
             pause and attach to the console of the domains whose config names him in \
             xen_shell, and nothing else. Started with no arguments it prompts; with -c (as \
             sshd passes a command, or SSH_ORIGINAL_COMMAND under ForceCommand) it runs one \
             command line and exits.",
        )
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(
            Arg::new("socket")
                .long("socket")
                .value_name("PATH")
                .help("rxend's socket (for the administrator; no environment variable changes it)"),
        )
        .arg(
            Arg::new("command")
                .short('c')
                .value_name("COMMAND")
                .help("Run this command line instead of prompting"),
        )
}

/// `rxen-shell(1)`: the page clap_mangen makes, with a COMMANDS section of the prompt's words.
pub fn shell_man() -> Vec<u8> {
    let man = clap_mangen::Man::new(shell_command());
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    let _ = man.render_options_section(&mut out);
    out.extend_from_slice(b".SH COMMANDS\n");
    for (word, help) in shell_words() {
        out.extend_from_slice(
            format!(
                ".TP\n\\fB{}\\fR\n{}\n",
                roff_escape(&word),
                roff_escape(help)
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b".SH \"SEE ALSO\"\n\\fBrxl\\fR(1)\n");
    let _ = man.render_version_section(&mut out);
    // Each part starts with the same two lines defining `Aq`; keep the first pair.
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_at(text.find(".TH").unwrap_or(0));
    let rest = rest.replace(AQ_PREAMBLE, "");
    format!("{head}{rest}").into_bytes()
}

/// The lines clap_mangen starts each rendered part with.
const AQ_PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// Text safe in a roff line: backslashes doubled, no line starting with a control character.
fn roff_escape(text: &str) -> String {
    let t = text.replace('\\', "\\\\");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// `rxl.cfg(5)`: every key rxen models with its default (`xlcfg::reference`), then every key of
/// xl's that rxen refuses, ignores or reads as an old spelling, with the reason (`xlcfg::keys`).
pub fn config_man() -> Vec<u8> {
    use xlcfg::keys::{Class, RULES};
    let version = env!("CARGO_PKG_VERSION");
    let mut out = format!(
        ".TH rxl.cfg 5 \"rxl.cfg {version}\"\n\
         .SH NAME\nrxl.cfg \\- rxen domain configuration files (xl.cfg syntax)\n\
         .SH DESCRIPTION\n\
         rxen reads the domain configuration files of Xen's xl (xl.cfg(5)) with the same syntax: \
         KEY = VALUE lines, numbers, quoted strings and lists. An error names the file, line and \
         column and starts nothing. A key rxen does not know is kept and reported; a Xen feature \
         rxen lacks stops rxl create unless given --ignore-unsupported.\n\
         .SH KEYS\n"
    );
    for d in xlcfg::reference::KEYS {
        out.push_str(&format!(
            ".TP\n\\fB{}\\fR (default: {})\n{}\n",
            roff_escape(d.key),
            roff_escape(d.default),
            roff_escape(d.meaning)
        ));
    }
    type Reason = fn(&Class) -> Option<&'static str>;
    let sections: [(&str, Reason); 3] = [
        ("UNSUPPORTED KEYS", |c| match c {
            Class::Unsupported { why, .. } => Some(why),
            _ => None,
        }),
        ("IGNORED KEYS", |c| match c {
            Class::Ignored { why } => Some(why),
            _ => None,
        }),
        ("OLD SPELLINGS", |c| match c {
            Class::Deprecated { instead } => Some(instead),
            _ => None,
        }),
    ];
    for (title, reason) in sections {
        out.push_str(&format!(".SH \"{title}\"\n"));
        for rule in RULES {
            if let Some(why) = reason(&rule.class) {
                let keys: Vec<String> = rule.keys.iter().map(|k| roff_escape(k)).collect();
                let benign = match rule.class {
                    Class::Unsupported { benign, .. } if !benign.is_empty() => {
                        format!(" Accepted when set to {}.", benign.join(" or "))
                    }
                    _ => String::new(),
                };
                out.push_str(&format!(
                    ".TP\n\\fB{}\\fR\n{}.{}\n",
                    keys.join("\\fR, \\fB"),
                    roff_escape(why),
                    roff_escape(&benign)
                ));
            }
        }
    }
    out.push_str(".SH \"SEE ALSO\"\n\\fBrxl\\fR(1), \\fBrxend\\fR(8), \\fBxl.cfg\\fR(5)\n");
    out.into_bytes()
}

/// `rxend(8)`: the page clap_mangen makes from rxend's own options.
pub fn rxend_man() -> Vec<u8> {
    let cmd = rxend::cli::Args::command().version(env!("CARGO_PKG_VERSION"));
    let mut out = Vec::new();
    let _ = clap_mangen::Man::new(cmd).section("8").render(&mut out);
    out
}

/// The manual pages: `(file name, contents)`, `rxl.1` first, then `rxl-COMMAND.1` for each
/// command, then `rxen-shell.1`, `rxl.cfg.5` and `rxend.8`.
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    let mut cmd = rxl_command();
    cmd.build();
    let mut pages = Vec::new();
    let mut top = Vec::new();
    let _ = clap_mangen::Man::new(cmd.clone()).render(&mut top);
    pages.push(("rxl.1".to_string(), top));
    for sub in cmd.get_subcommands() {
        // After `build`, a command's display name is `rxl-NAME`: its page's title.
        let name = format!("rxl-{}", sub.get_name());
        let sub = sub.clone().version(env!("CARGO_PKG_VERSION"));
        let mut page = Vec::new();
        let _ = clap_mangen::Man::new(sub).render(&mut page);
        pages.push((format!("{name}.1"), page));
    }
    pages.push(("rxen-shell.1".to_string(), shell_man()));
    pages.push(("rxl.cfg.5".to_string(), config_man()));
    pages.push(("rxend.8".to_string(), rxend_man()));
    pages
}

/// The shell function that lists domain names, for completion.
const BASH_DOMAINS: &str = r#"
# Domain names for the arguments that take one, from `rxl list` (without starting rxend).
_rxl_domain_names() {
    RXEN_NO_AUTOSTART=1 command rxl list 2>/dev/null | awk 'NR > 1 { print $1 }'
}

_rxl_with_domains() {
    _rxl "$@"
    local cur="${COMP_WORDS[COMP_CWORD]}"
    local i word cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        case "$word" in
            -*) ;;
            *) cmd="$word"; break ;;
        esac
    done
    [[ -z "$cmd" || "$cur" == -* ]] && return 0
    case " __RXL_DOMAIN_COMMANDS__ " in
        *" $cmd "*)
            local names
            names="$(_rxl_domain_names)"
            COMPREPLY+=( $(compgen -W "${names}" -- "${cur}") )
            ;;
    esac
    return 0
}

complete -F _rxl_with_domains -o bashdefault -o default rxl
"#;

const ZSH_DOMAINS: &str = r#"
# Domain names from `rxl list` (without starting rxend).
(( $+functions[_rxl_domains] )) ||
_rxl_domains() {
    local -a names
    names=(${(f)"$(RXEN_NO_AUTOSTART=1 command rxl list 2>/dev/null | awk 'NR > 1 { print $1 }')"})
    _describe -t domains 'domain' names
}
"#;

/// Whether `arg` names domains (its id is `domain` or `domains`).
fn is_domain_arg(arg: &Arg) -> bool {
    matches!(arg.get_id().as_str(), "domain" | "domains")
}

/// The commands that take a domain as an argument, by name.
pub fn domain_commands() -> Vec<String> {
    let cmd = rxl_command();
    cmd.get_subcommands()
        .filter(|s| s.get_arguments().any(is_domain_arg))
        .map(|s| s.get_name().to_string())
        .collect()
}

/// Completion for `rxl` in `shell` (bash or zsh): clap_complete's script, with domain names
/// completed from `rxl list` where a command takes a domain.
pub fn completion(shell: Shell) -> String {
    let mut cmd = rxl_command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "rxl", &mut out);
    let mut script = String::from_utf8_lossy(&out).into_owned();
    match shell {
        Shell::Bash => {
            // Our wrapper's `complete` line comes after clap's: the last one wins.
            script.push_str(
                &BASH_DOMAINS.replace("__RXL_DOMAIN_COMMANDS__", &domain_commands().join(" ")),
            );
        }
        Shell::Zsh => {
            // clap writes a domain argument as `:domain -- HELP:_default'`; complete names there.
            let mut lines: Vec<String> = Vec::new();
            for line in script.lines() {
                let domainish = line.contains("':domain -- ")
                    || line.contains("'::domain -- ")
                    || line.contains("'*::domains -- ")
                    || line.contains("'*::domains -- ")
                    || line.contains("':domains -- ");
                if domainish && line.ends_with(":_default' \\") {
                    lines.push(line.replace(":_default' \\", ":_rxl_domains' \\"));
                } else if domainish && line.ends_with(":_default'") {
                    lines.push(line.replace(":_default'", ":_rxl_domains'"));
                } else {
                    lines.push(line.to_string());
                }
            }
            script = lines.join("\n");
            script.push('\n');
            // Before the final `_rxl "$@"`/compdef lines is fine: functions are looked up at call time.
            script.push_str(ZSH_DOMAINS);
        }
        _ => {}
    }
    script
}

/// Writes the manual pages into `dir/manN/` (N their section) and the completion into `dir/bash-completion/rxl`
/// and `dir/zsh/_rxl`; returns the files written.
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>, DocgenError> {
    let mut written = Vec::new();
    let mut put = |path: PathBuf, data: &[u8]| -> Result<(), DocgenError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| DocgenError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        fs::write(&path, data).map_err(|source| DocgenError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
        Ok(())
    };
    for (name, page) in man_pages() {
        let section = name.rsplit('.').next().unwrap_or("1");
        put(dir.join(format!("man{section}")).join(name), &page)?;
    }
    put(
        dir.join("bash-completion").join("rxl"),
        completion(Shell::Bash).as_bytes(),
    )?;
    put(
        dir.join("zsh").join("_rxl"),
        completion(Shell::Zsh).as_bytes(),
    )?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::command::{parse, Command as ShellCommand};

    fn page(name: &str) -> String {
        let pages = man_pages();
        let (_, p) = pages
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no page {name}"));
        String::from_utf8_lossy(p).into_owned()
    }

    #[test]
    fn the_rxl_page_lists_every_command_and_each_has_its_own_page() {
        let top = page("rxl.1");
        assert!(
            top.starts_with(".ie \\n(.g .ds Aq \\(aq") || top.contains(".TH rxl 1"),
            "{top}"
        );
        for cmd in Cli::command().get_subcommands() {
            let name = cmd.get_name();
            assert!(
                top.contains(&format!("rxl\\-{}", name.replace('-', "\\-"))) || top.contains(name),
                "rxl.1 lacks {name}"
            );
            let own = page(&format!("rxl-{name}.1"));
            assert!(own.contains(&format!(".TH rxl-{name} 1")), "{name}: {own}");
        }
        for name in [
            "host\\-shutdown",
            "sched\\-credit2",
            "config\\-update",
            "vm\\-list",
        ] {
            assert!(top.contains(name), "rxl.1 lacks {name}");
        }
        let credit = page("rxl-sched-credit2.1");
        assert!(credit.contains("\\-\\-weight"), "{credit}");
        assert!(credit.contains("\\-\\-cap"), "{credit}");
    }

    #[test]
    fn the_config_page_has_every_key_with_its_default_and_every_refused_key() {
        let p = page("rxl.cfg.5");
        assert!(p.starts_with(".TH rxl.cfg 5"), "{p}");
        for d in xlcfg::reference::KEYS {
            assert!(
                p.contains(&format!("\\fB{}\\fR (default: ", d.key)),
                "{} missing",
                d.key
            );
        }
        assert!(p.contains("\\fBmemory\\fR (default: 32)"), "{p}");
        for rule in xlcfg::keys::RULES {
            for k in rule.keys {
                assert!(p.contains(&format!("\\fB{k}\\fR")), "{k} missing");
            }
        }
        let unsupported = p.find(".SH \"UNSUPPORTED KEYS\"").expect("section");
        let ignored = p.find(".SH \"IGNORED KEYS\"").expect("section");
        let pci = p.find("\\fBpci\\fR").expect("pci");
        assert!(
            unsupported < pci && pci < ignored,
            "pci is listed as unsupported"
        );
    }

    #[test]
    fn the_rxend_page_is_section_8_with_rxends_options() {
        let p = page("rxend.8");
        assert!(p.contains(".TH rxend 8"), "{p}");
        for opt in ["state\\-dir", "no\\-sandbox", "config", "socket\\-group"] {
            assert!(p.contains(opt), "{opt} missing: {p}");
        }
    }

    #[test]
    fn the_rxen_shell_page_has_its_options_and_every_word_parses() {
        let p = page("rxen-shell.1");
        assert!(p.contains(".TH rxen-shell 1"), "{p}");
        assert!(!p.contains("\\-V"), "rxen-shell has no -V: {p}");
        assert_eq!(p.matches(".ds Aq").count(), 2, "{p}");
        assert!(p.contains("\\-\\-socket") && p.contains("\\-c"), "{p}");
        assert!(p.contains(".SH COMMANDS"));
        for a in Action::ALL {
            assert!(
                p.contains(&format!("\\fB{} [DOMAIN]\\fR", a.word())),
                "{}",
                a.word()
            );
        }
        // Every word the page documents is one the shell understands.
        for (word, _) in shell_words() {
            for w in word.split(", ") {
                let line = w.replace("[DOMAIN]", "web").replace("DOMAIN", "web");
                let parsed = parse(&line);
                assert!(
                    parsed.is_ok() && parsed != Ok(ShellCommand::Nothing),
                    "{line}: {parsed:?}"
                );
            }
        }
    }

    #[test]
    fn bash_completion_has_commands_options_and_domain_names() {
        let b = completion(Shell::Bash);
        for word in [
            "host-shutdown",
            "sched-credit2",
            "config-update",
            "--weight",
            "--vncviewer",
        ] {
            assert!(b.contains(word), "bash completion lacks {word}");
        }
        assert!(b.contains("complete -F _rxl_with_domains"));
        assert!(b.contains("rxl list"));
        let cmds = domain_commands();
        for c in [
            "destroy",
            "console",
            "sched-credit",
            "block-list",
            "config-update",
        ] {
            assert!(
                cmds.iter().any(|x| x == c),
                "{c} not completed with domains: {cmds:?}"
            );
        }
        assert!(!cmds.iter().any(|x| x == "vm-list" || x == "create"));
    }

    #[test]
    fn zsh_completion_has_commands_options_and_domain_names() {
        let z = completion(Shell::Zsh);
        assert!(z.starts_with("#compdef rxl"), "{}", &z[..40.min(z.len())]);
        for word in ["host-shutdown", "sched-credit2", "--weight"] {
            assert!(z.contains(word), "zsh completion lacks {word}");
        }
        assert!(z.contains("_rxl_domains()"));
        assert!(
            z.contains(":_rxl_domains'"),
            "no argument completes domains"
        );
    }
}
