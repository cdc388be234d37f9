//! rxen-shell and rxend's authorization, driven as real Unix users: the
//! shell runs as the user on a pseudo-terminal, `rxl` runs as the user, and
//! every refusal must show up in rxend's log with the user and the domain.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rxen_e2e::{bin, wait_until, Host};

const BOOT: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(20);

/// A name no other test (or earlier run) uses: a prefix, this process, a counter.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 1_000_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Unix group, removed on drop.
struct Group {
    name: String,
}

impl Group {
    fn new() -> Group {
        let name = unique("rxg");
        run_ok(Command::new("groupadd").arg(&name));
        Group { name }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// A Unix user whose login shell is rxen-shell, removed on drop.
struct User {
    name: String,
    uid: u32,
    group: String,
}

impl User {
    /// A user in `group` (the group that may open rxend's socket), or in a group of his own.
    fn new(prefix: &str, group: Option<&Group>) -> User {
        let name = unique(prefix);
        let shell = bin("rxen-shell");
        let mut cmd = Command::new("useradd");
        cmd.args(["-M", "-d", "/nonexistent", "-s"]).arg(&shell);
        if let Some(g) = group {
            cmd.args(["-G", &g.name]);
        }
        run_ok(cmd.args(["-U", &name]));
        let uid = nix::unistd::User::from_name(&name)
            .ok()
            .flatten()
            .expect("the new user exists")
            .uid
            .as_raw();
        User {
            group: name.clone(),
            name,
            uid,
        }
    }

    /// `setpriv` that becomes this user with his groups, then runs `program`.
    fn command(&self, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            &self.name,
            "--regid",
            &self.group,
            "--init-groups",
            "--",
        ])
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TERM", "xterm")
        .env("HOME", "/nonexistent");
        cmd
    }

    /// Runs `rxl ARGS` as this user against `host`.
    fn rxl(&self, host: &Host, args: &[&str]) -> Output {
        self.command(&bin("rxl"))
            .args(args)
            .env("RXEN_SOCKET", host.socket())
            .stdin(Stdio::null())
            .output()
            .expect("rxl as the user")
    }

    /// Runs `rxl ARGS` as this user, asserts it failed, and returns stderr.
    fn rxl_refused(&self, host: &Host, args: &[&str]) -> String {
        let out = self.rxl(host, args);
        assert!(
            !out.status.success(),
            "rxl {args:?} as {} succeeded: {}",
            self.name,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The log line rxend writes when it refuses this user something about `domain`.
    fn refusal(&self, what: &str) -> String {
        format!("refused: {} (uid {}) may not {what}", self.name, self.uid)
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

/// rxen-shell running as a user on a pseudo-terminal.
struct Shell {
    child: Child,
    master: File,
    out: Arc<Mutex<String>>,
    seen: usize,
}

impl Shell {
    fn start(user: &User, host: &Host, extra: &[&str]) -> Shell {
        let winsize = nix::pty::Winsize {
            ws_row: 50,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&winsize), None).expect("openpty");
        let slave = File::from(pty.slave);
        let mut cmd = user.command(&bin("rxen-shell"));
        cmd.arg("--socket")
            .arg(host.socket())
            .args(extra)
            .stdin(slave.try_clone().expect("dup"))
            .stdout(slave.try_clone().expect("dup"))
            .stderr(slave);
        // SAFETY: setsid and ioctl are async-signal-safe; they make the pty
        // the controlling terminal of the new session, as a login does.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("rxen-shell as the user");
        let master = File::from(pty.master);
        let mut reader = master.try_clone().expect("dup master");
        let out = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Shell {
            child,
            master,
            out,
            seen: 0,
        }
    }

    fn output(&self) -> String {
        self.out.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Types bytes as the user would.
    fn keys(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("type");
    }

    /// Types a line and Enter.
    fn line(&mut self, line: &str) {
        self.keys(format!("{line}\r").as_bytes());
    }

    /// Waits until `needle` shows after what was consumed, and returns the
    /// output up to and including it.
    fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            let start = self.seen.min(out.len());
            if let Some(pos) = out.get(start..).and_then(|s| s.find(needle)) {
                let end = start + pos + needle.len();
                self.seen = end;
                return out[start..end].to_string();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} from rxen-shell; got:\n{}",
                &out[start..]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the next prompt (`rxen-shell[NAME]> ` or `rxen-shell> `)
    /// and returns the output up to it.
    fn expect_prompt(&mut self) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let out = self.output();
            let start = self.seen.min(out.len());
            let tail = &out[start..];
            let end = tail.match_indices("rxen-shell").find_map(|(i, m)| {
                let rest = &tail[i + m.len()..];
                if rest.starts_with("> ") {
                    return Some(i + m.len() + 2);
                }
                let name = rest.strip_prefix('[')?;
                let close = name.find("]> ")?;
                let ok = name[..close]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                ok.then_some(i + m.len() + 1 + close + 3)
            });
            if let Some(end) = end {
                self.seen = start + end;
                return tail[..end].to_string();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the prompt; got:\n{tail}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one shell command and returns what it printed, up to and
    /// including the next prompt.
    fn cmd(&mut self, line: &str) -> String {
        self.line(line);
        // The end of the echoed line: what follows is the command's output.
        self.expect("\n", STEP);
        self.expect_prompt()
    }

    /// Waits for the shell to exit and returns whether it succeeded.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            assert!(
                Instant::now() < deadline,
                "rxen-shell did not exit; got:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// In a console: waits for the guest's heartbeat answer to `heartbeat`.
    fn heartbeat(&mut self) {
        self.line("heartbeat");
        let deadline = Instant::now() + STEP;
        loop {
            let out = self.output();
            let tail = &out[self.seen.min(out.len())..];
            let found = tail.match_indices("heartbeat ").find(|(i, m)| {
                tail[i + m.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
            });
            if let Some((i, m)) = found {
                self.seen += i + m.len();
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no heartbeat answer; got:\n{tail}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test-guest config that names `users` in `key` (`xen_shell` or `xen-shell`).
fn guest_config(name: &str, key: &str, users: &str) -> String {
    format!(
        "name = \"{name}\"\nkernel = \"builtin:testguest\"\nmemory = 64\nvcpus = 1\n{key} = {users}\n"
    )
}

fn domid(host: &Host, name: &str) -> Option<String> {
    host.list_row(name).map(|r| r[1].clone())
}

/// Creates a domain as root once, so that rxend remembers its file, then destroys it.
fn register(host: &Host, file: &std::path::Path, name: &str) {
    host.rxl_ok(&["create", file.to_str().expect("utf-8")]);
    host.rxl_ok(&["destroy", name]);
}

#[test]
fn a_customer_manages_his_two_domains_and_nothing_else() {
    let group = Group::new();
    let lear = User::new("lear", Some(&group));
    let host = Host::start_with(&["--socket-group", &group.name]);
    let goneril = host.config(
        "goneril.cfg",
        &guest_config("goneril", "xen_shell", &format!("\"{}\"", lear.name)),
    );
    // The old spelling and a list, as old files have it.
    let regan = host.config(
        "regan.cfg",
        &guest_config(
            "regan",
            "xen-shell",
            &format!("[ \"kent\", \"{}\" ]", lear.name),
        ),
    );
    let cordelia = host.config(
        "cordelia.cfg",
        &guest_config("cordelia", "xen_shell", "\"france\""),
    );
    register(&host, &goneril, "goneril");
    register(&host, &regan, "regan");
    host.rxl_ok(&["create", cordelia.to_str().expect("utf-8")]);
    let cordelia_id = domid(&host, "cordelia").expect("cordelia runs");

    let mut sh = Shell::start(&lear, &host, &[]);
    sh.expect("you manage goneril, regan", STEP);
    sh.expect("rxen-shell[goneril]> ", STEP);
    let help = sh.cmd("help");
    assert!(help.contains("control DOMAIN"), "{help}");
    assert!(help.contains("console"), "{help}");
    let list = sh.cmd("list");
    assert!(list.contains("goneril"), "{list}");
    assert!(list.contains("regan"), "{list}");
    assert!(list.contains("(not running)"), "{list}");
    assert!(!list.contains("cordelia"), "{list}");
    assert!(!list.contains("Domain-0"), "{list}");

    // Boot and use the first domain.
    let out = sh.cmd("boot");
    assert!(out.contains("goneril is booting (domain ID"), "{out}");
    assert!(domid(&host, "goneril").is_some());
    sh.line("console");
    sh.expect("[attached to goneril's console", STEP);
    sh.expect("rxen testguest: booted on 1 vCPUs with 64 MiB", BOOT);
    sh.heartbeat();
    sh.keys(&[0x1d]);
    sh.expect("[back in rxen-shell]", STEP);
    sh.expect("rxen-shell[goneril]> ", STEP);
    let up = sh.cmd("uptime");
    assert!(up.contains("Uptime") && up.contains("goneril"), "{up}");
    let out = sh.cmd("pause");
    assert!(out.contains("goneril is paused"), "{out}");
    assert_eq!(host.list_row("goneril").expect("listed")[4], "--p---");
    let out = sh.cmd("unpause");
    assert!(out.contains("goneril runs again"), "{out}");

    // The third domain: not through the shell...
    for line in [
        "control cordelia",
        "boot cordelia",
        "console cordelia",
        "shutdown cordelia",
        "destroy cordelia",
        "pause cordelia",
    ] {
        let out = sh.cmd(line);
        assert!(
            out.contains("cordelia is an invalid domain identifier"),
            "{line}: {out}"
        );
    }
    // ...nor a way out of it.
    for line in ["!sh", "sh", "/bin/sh -i", "exec bash", "create /etc/passwd"] {
        let out = sh.cmd(line);
        assert!(out.contains("unknown command"), "{line}: {out}");
    }
    // Ctrl-C cancels the line being typed.
    sh.keys(b"destroy");
    sh.keys(&[0x03]);
    sh.expect_prompt();
    let out = sh.cmd("list");
    assert!(!out.contains("was destroyed"), "{out}");
    assert!(domid(&host, "goneril").is_some());

    // ...nor through rxl as the same user.
    let rxl_list = lear.rxl(&host, &["list"]);
    assert!(rxl_list.status.success());
    let text = String::from_utf8_lossy(&rxl_list.stdout);
    assert!(text.contains("goneril"), "{text}");
    assert!(!text.contains("cordelia"), "{text}");
    assert!(!text.contains("Domain-0"), "{text}");
    for args in [
        vec!["list", "cordelia"],
        vec!["console", "cordelia"],
        vec!["shutdown", "cordelia"],
        vec!["destroy", "cordelia"],
        vec!["pause", "cordelia"],
        vec!["boot", "cordelia"],
        vec!["destroy", cordelia_id.as_str()],
        vec!["list", "Domain-0"],
        vec!["list", "0"],
    ] {
        let err = lear.rxl_refused(&host, &args);
        assert!(
            err.contains("is an invalid domain identifier"),
            "{args:?}: {err}"
        );
    }
    let err = lear.rxl_refused(&host, &["create", cordelia.to_str().expect("utf-8")]);
    assert!(err.contains("only root may create"), "{err}");
    let err = lear.rxl_refused(&host, &["dmesg"]);
    assert!(err.contains("only root may read rxend's log"), "{err}");
    let err = lear.rxl_refused(&host, &["rename", "goneril", "cordelia2"]);
    assert!(err.contains("only root may rename"), "{err}");
    assert_eq!(
        domid(&host, "cordelia"),
        Some(cordelia_id),
        "cordelia untouched"
    );

    // The second domain, switched to with control.
    let out = sh.cmd("control regan");
    assert!(out.contains("now controlling regan"), "{out}");
    assert!(out.contains("rxen-shell[regan]> "), "{out}");
    let out = sh.cmd("boot");
    assert!(out.contains("regan is booting"), "{out}");
    sh.line("console");
    sh.expect("[attached to regan's console", STEP);
    sh.expect("rxen testguest: booted on 1 vCPUs with 64 MiB", BOOT);
    sh.heartbeat();
    sh.keys(&[0x1d]);
    sh.expect("[back in rxen-shell]", STEP);
    sh.expect_prompt();
    let before = domid(&host, "regan").expect("regan runs");
    let out = sh.cmd("reboot");
    assert!(out.contains("regan was asked to reboot"), "{out}");
    wait_until(BOOT, "regan came back as a new, running domain", || {
        host.list_row("regan")
            .is_some_and(|r| r[1] != before && (r[4] == "-b----" || r[4] == "r-----"))
    });
    let out = sh.cmd("shutdown");
    assert!(out.contains("regan was asked to shut down"), "{out}");
    wait_until(BOOT, "regan is gone", || domid(&host, "regan").is_none());

    let out = sh.cmd("control goneril");
    assert!(
        out.contains("rxen-shell[goneril]> "),
        "{out}\nALL:{:?}",
        sh.output()
    );
    let out = sh.cmd("shutdown");
    assert!(out.contains("goneril was asked to shut down"), "{out}");
    wait_until(BOOT, "goneril is gone", || {
        domid(&host, "goneril").is_none()
    });
    let list = sh.cmd("list");
    assert_eq!(list.matches("(not running)").count(), 2, "{list}");
    let out = sh.cmd("console");
    assert!(
        out.contains("goneril is not running (type boot to start it)"),
        "{out}"
    );

    // Ctrl-D leaves.
    sh.keys(&[0x04]);
    assert!(sh.wait_exit(STEP), "Ctrl-D is a clean exit");
    assert!(domid(&host, "cordelia").is_some(), "cordelia untouched");

    let log = host.rxend_log();
    for what in [
        "manage domain cordelia",
        "boot domain cordelia",
        &format!("manage domain {}", domid(&host, "cordelia").expect("id")),
        "manage domain Domain-0",
        "manage domain 0",
        "create domains from",
        "read rxend's log",
        "rename domain goneril",
    ] {
        assert!(
            log.contains(&lear.refusal(what)),
            "no refusal for {what} in:\n{log}"
        );
    }
}

#[test]
fn a_user_named_nowhere_sees_no_domains() {
    let group = Group::new();
    let edgar = User::new("edgar", Some(&group));
    let outsider = User::new("oswald", None);
    let host = Host::start_with(&["--socket-group", &group.name]);
    host.create_guest("edmund", 1, 64, "xen_shell = \"gloucester\"");

    let mut sh = Shell::start(&edgar, &host, &[]);
    sh.expect("you manage no domains", STEP);
    sh.expect("rxen-shell> ", STEP);
    let list = sh.cmd("list");
    assert!(list.contains("Name"), "{list}");
    assert!(!list.contains("edmund"), "{list}");
    // History: Up recalls the last line.
    sh.keys(b"\x1b[A\r");
    sh.expect("\n", STEP);
    let again = sh.expect_prompt();
    assert!(again.contains("Name"), "{again}");
    let help = sh.cmd("help");
    assert!(
        !help.contains("control"),
        "control is shown only with two domains: {help}"
    );
    let out = sh.cmd("boot");
    assert!(out.contains("you manage no domains"), "{out}");
    for line in ["control edmund", "console edmund", "destroy edmund"] {
        let out = sh.cmd(line);
        assert!(
            out.contains("edmund is an invalid domain identifier"),
            "{line}: {out}"
        );
    }
    sh.line("exit");
    assert!(sh.wait_exit(STEP));

    // One command per login, as `ssh host COMMAND` runs it.
    let once = edgar
        .command(&bin("rxen-shell"))
        .args(["--socket"])
        .arg(host.socket())
        .args(["-c", "list"])
        .output()
        .expect("rxen-shell -c");
    assert!(once.status.success());
    assert!(!String::from_utf8_lossy(&once.stdout).contains("edmund"));
    let once = edgar
        .command(&bin("rxen-shell"))
        .args(["--socket"])
        .arg(host.socket())
        .args(["-c", "/bin/sh -c id"])
        .output()
        .expect("rxen-shell -c");
    assert!(!once.status.success());
    assert!(String::from_utf8_lossy(&once.stderr).contains("unknown command"));

    let out = edgar.rxl(&host, &["list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "only the header: {text}");
    edgar.rxl_refused(&host, &["console", "edmund"]);

    // Outside the socket's group, rxend cannot even be reached.
    let err = outsider.rxl_refused(&host, &["list"]);
    assert!(err.contains("Permission denied"), "{err}");

    let log = host.rxend_log();
    assert!(
        log.contains(&edgar.refusal("manage domain edmund")),
        "{log}"
    );
    assert!(host.list_row("edmund").is_some());
}

#[test]
fn boot_reads_the_file_again_and_refuses_files_a_customer_could_change() {
    let group = Group::new();
    let kent = User::new("kent", Some(&group));
    let mut host = Host::start_with(&["--socket-group", &group.name]);
    let named = guest_config("albany", "xen_shell", &format!("\"{}\"", kent.name));
    let cfg = host.config("albany.cfg", &named);
    register(&host, &cfg, "albany");

    // A file others may write is refused, with the reason in the log.
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let err = kent.rxl_refused(&host, &["boot", "albany"]);
    assert!(
        err.contains("albany is an invalid domain identifier"),
        "{err}"
    );
    assert!(host.rxend_log().contains("writable by group or others"));
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    // The file as it reads now decides: without him, no boot.
    std::fs::write(&cfg, guest_config("albany", "xen_shell", "\"cornwall\"")).expect("edit");
    kent.rxl_refused(&host, &["boot", "albany"]);
    assert!(host
        .rxend_log()
        .contains(&kent.refusal("boot domain albany")));
    std::fs::write(&cfg, &named).expect("edit back");

    // Names rxend never saw stay unknown.
    let err = kent.rxl_refused(&host, &["boot", "goneril"]);
    assert!(
        err.contains("goneril is an invalid domain identifier"),
        "{err}"
    );

    // rxend remembers the file across its own restarts.
    host.kill_rxend();
    host.start_rxend();
    let out = kent.rxl(&host, &["boot", "albany"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(host.list_row("albany").is_some());
    // Booting a running domain again is refused, not doubled.
    let err = kent.rxl_refused(&host, &["boot", "albany"]);
    assert!(err.contains("already exists"), "{err}");
    host.rxl_ok(&["destroy", "albany"]);
}
