//! rxen under test: an `rxend` in a temporary directory, driven with `rxl`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::console::Console;
use crate::error::{BenchError, Result};

/// The directory of the rxen binaries: beside this benchmark's own binary.
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

/// A running `rxend` with its own socket and state directory.
pub struct RxenHost {
    dir: tempfile::TempDir,
    rxend: Child,
    cgroup: Option<String>,
}

/// A domain created by the benchmark, with its console attached.
pub struct Domain {
    /// Its console (`rxl create -c` or `rxl console`).
    pub console: Console,
    child: Child,
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RxenHost {
    /// Starts `rxend` and waits for its socket.
    pub fn start() -> Result<RxenHost> {
        RxenHost::start_with(None, true)
    }

    /// Starts `rxend` with its VMMs confined (`sandbox`, rxend's default) or
    /// not (`rxend --no-sandbox`).
    pub fn start_sandbox(sandbox: bool) -> Result<RxenHost> {
        RxenHost::start_with(None, sandbox)
    }

    /// Starts an `rxend` whose relocation server listens on ADDRESS:PORT with
    /// KEY, its VMMs confined (`sandbox`) or not (`--no-sandbox`). Storage
    /// migrations to it create their disks in [`RxenHost::storage_dir_of`]`(key)`.
    pub fn start_relocation_sandbox(
        address: &str,
        port: u16,
        key: &Path,
        sandbox: bool,
    ) -> Result<RxenHost> {
        let storage = RxenHost::storage_dir_of(key);
        std::fs::create_dir_all(&storage)
            .map_err(|e| BenchError::io("make the target's storage directory", e))?;
        RxenHost::start_with(
            Some(format!(
                "[relocation]\nserver = true\naddress = \"{address}\"\nport = {port}\nkey-file = \"{}\"\nstorage-dir = \"{}\"\n",
                key.display(),
                storage.display()
            )),
            sandbox,
        )
    }

    /// Starts `rxend` with `config` as its rxend.toml (e.g. a `[pool]` section).
    pub fn start_configured(config: &str) -> Result<RxenHost> {
        RxenHost::start_with(Some(config.to_string()), true)
    }

    /// Kills this host as a crash would: its rxend and every VMM it started, with SIGKILL.
    pub fn kill_all(&mut self) {
        let _ = self.rxend.kill();
        let _ = self.rxend.wait();
        let marker = self.dir.path().to_string_lossy().into_owned();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("rxen-vmm") && cmdline.contains(&marker) {
                // SAFETY: kill(2) takes no pointers; a PID that has gone meanwhile only
                // makes it fail.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// The `storage-dir` of a relocation target started with `key`: beside the key.
    pub fn storage_dir_of(key: &Path) -> std::path::PathBuf {
        key.with_extension("images")
    }

    /// Whether this build's `rxend` has `--no-sandbox` (its help lists it).
    pub fn can_unsandbox() -> bool {
        rxend_help().contains("--no-sandbox")
    }

    fn start_with(config: Option<String>, sandbox: bool) -> Result<RxenHost> {
        let dir = tempfile::Builder::new()
            .prefix("rxen-bench-")
            .tempdir()
            .map_err(|e| BenchError::io("make a temporary directory", e))?;
        let rxend_bin = bin_dir().join("rxend");
        let cgroup = rxend_help().contains("--cgroup").then(|| {
            format!(
                "{}",
                dir.path().file_name().unwrap_or_default().to_string_lossy()
            )
        });
        let mut cmd = Command::new(&rxend_bin);
        cmd.arg("--socket")
            .arg(dir.path().join("rxend.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"));
        if let Some(c) = &cgroup {
            cmd.arg("--cgroup").arg(c);
        }
        if !sandbox {
            cmd.arg("--no-sandbox");
        }
        if let Some(text) = config {
            let p = dir.path().join("rxend.toml");
            std::fs::write(&p, text).map_err(|e| BenchError::io("write rxend.toml", e))?;
            cmd.arg("--config").arg(p);
        }
        let rxend = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| BenchError::Spawn {
                program: rxend_bin.display().to_string(),
                source,
            })?;
        let h = RxenHost { dir, rxend, cgroup };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(h.socket()).is_err() {
            if Instant::now() > deadline {
                return Err(BenchError::timeout("rxend socket", Duration::from_secs(10)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(h)
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("rxend.sock")
    }

    /// Runs `rxl ARGS`; an error unless it exits 0. Returns stdout.
    pub fn rxl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin_dir().join("rxl"))
            .args(args)
            .env("RXEN_SOCKET", self.socket())
            .stdin(Stdio::null())
            .output()
            .map_err(|source| BenchError::Spawn {
                program: "rxl".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(BenchError::Command {
                command: format!("rxl {}", args.join(" ")),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `rxl migrate FLAGS --port PORT --key KEY NAME 127.0.0.2`: a live migration to the
    /// benchmark's relocation target on 127.0.0.2; returns what rxl printed.
    pub fn migrate_to_target(
        &self,
        flags: &[&str],
        port: u16,
        key: &Path,
        name: &str,
    ) -> Result<String> {
        let port = port.to_string();
        let key = key.to_string_lossy();
        let mut args = vec!["migrate"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--port", &port, "--key", &key, name, "127.0.0.2"]);
        self.rxl_all(&args)
    }

    /// Runs `rxl ARGS`; an error unless it exits 0. Returns stdout and stderr together.
    pub fn rxl_all(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin_dir().join("rxl"))
            .args(args)
            .env("RXEN_SOCKET", self.socket())
            .stdin(Stdio::null())
            .output()
            .map_err(|source| BenchError::Spawn {
                program: "rxl".into(),
                source,
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(BenchError::Command {
                command: format!("rxl {}", args.join(" ")),
                detail: text.trim().to_string(),
            });
        }
        Ok(text)
    }

    /// Whether `rxl` knows a subcommand (its help lists it).
    pub fn rxl_has(&self, subcommand: &str) -> bool {
        let out = Command::new(bin_dir().join("rxl"))
            .arg("help")
            .env("RXEN_SOCKET", self.socket())
            .output()
            .map(|o| [o.stdout, o.stderr].concat())
            .unwrap_or_default();
        // `rxl help` lists one subcommand per line, as xl: ` NAME  Description`.
        String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| l.starts_with(' '))
            .any(|l| l.split_whitespace().next() == Some(subcommand))
    }

    /// Writes a test-guest config with extra lines and returns its path.
    pub fn config(&self, name: &str, memory: u64, vcpus: u32, extra: &str) -> Result<PathBuf> {
        let p = self.dir.path().join(format!("{name}.cfg"));
        std::fs::write(
            &p,
            format!("name = \"{name}\"\nkernel = \"builtin:testguest\"\nmemory = {memory}\nvcpus = {vcpus}\n{extra}\n"),
        )
        .map_err(|e| BenchError::io("write a config", e))?;
        Ok(p)
    }

    /// `rxl create -c CFG` with its console piped; returns at once.
    pub fn create(&self, name: &str, memory: u64, vcpus: u32, extra: &str) -> Result<Domain> {
        let cfg = self.config(name, memory, vcpus, extra)?;
        let mut args: Vec<std::ffi::OsString> = vec!["create".into(), "-q".into(), "-c".into()];
        args.push(cfg.into_os_string());
        self.console_command("rxl create", &args, &self.stderr_path(name))
    }

    /// Runs `rxl ARGS` whose stdin and stdout are a guest console, its
    /// stderr going to `stderr_file`.
    fn console_command(
        &self,
        what: &str,
        args: &[std::ffi::OsString],
        stderr_file: &std::path::Path,
    ) -> Result<Domain> {
        let err = std::fs::File::create(stderr_file)
            .map_err(|e| BenchError::io("create rxl's stderr file", e))?;
        let mut child = Command::new(bin_dir().join("rxl"))
            .args(args)
            .env("RXEN_SOCKET", self.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|source| BenchError::Spawn {
                program: what.into(),
                source,
            })?;
        let out = child.stdout.take();
        let input = child
            .stdin
            .take()
            .map(|i| Box::new(i) as Box<dyn std::io::Write + Send>);
        let Some(out) = out else {
            return Err(BenchError::Unexpected(format!("{what} has no stdout")));
        };
        Ok(Domain {
            console: Console::new(out, input),
            child,
        })
    }

    /// Creates a domain and waits for its banner.
    pub fn boot(&self, name: &str, memory: u64, vcpus: u32, extra: &str) -> Result<Domain> {
        let mut d = self.create(name, memory, vcpus, extra)?;
        match d
            .console
            .wait_contains("rxen testguest: booted", Duration::from_secs(30))
        {
            Ok(_) => Ok(d),
            Err(e) => {
                let err = std::fs::read_to_string(self.stderr_path(name)).unwrap_or_default();
                if err.trim().is_empty() {
                    Err(e)
                } else {
                    Err(BenchError::Command {
                        command: "rxl create".into(),
                        detail: err.trim().to_string(),
                    })
                }
            }
        }
    }

    fn stderr_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.rxl-create.err"))
    }

    /// Attaches `rxl console NAME` (after a restore or migration).
    pub fn attach(&self, name: &str) -> Result<Domain> {
        let args: Vec<std::ffi::OsString> = vec!["console".into(), name.into()];
        let stderr_file = self.dir.path().join(format!("{name}.rxl-console.err"));
        self.console_command("rxl console", &args, &stderr_file)
    }

    /// The last lines of this rxend's log.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("state/rxend.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(6)..].join(" / ")
    }

    /// Destroys a domain, ignoring errors (it may be gone).
    pub fn destroy(&self, name: &str) {
        let _ = self.rxl(&["destroy", name]);
    }

    /// The PID of a domain's VMM, from rxend's record.
    pub fn vmm_pid(&self, name: &str) -> Result<u32> {
        let id = self.rxl(&["domid", name])?;
        let path = self
            .dir
            .path()
            .join("state/domains")
            .join(format!("{}.json", id.trim()));
        let rec: serde_json::Value = std::fs::read(&path)
            .map_err(|e| BenchError::io(format!("read {}", path.display()), e))
            .and_then(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| BenchError::Unexpected(format!("record: {e}")))
            })?;
        rec["state"]["pid"]
            .as_u64()
            .filter(|p| *p > 0)
            .map(|p| p as u32)
            .ok_or_else(|| BenchError::Unexpected(format!("no VMM pid in {}", path.display())))
    }
}

impl Drop for RxenHost {
    fn drop(&mut self) {
        if let Ok(list) = self.rxl(&["list"]) {
            for l in list.lines().skip(1) {
                if let Some(name) = l.split_whitespace().next() {
                    if name != "Domain-0" {
                        self.destroy(name);
                    }
                }
            }
        }
        let _ = self.rxend.kill();
        let _ = self.rxend.wait();
        if let Some(c) = &self.cgroup {
            remove_cgroups(c);
        }
    }
}

/// `rxend --help`, or nothing if it cannot run.
fn rxend_help() -> String {
    Command::new(bin_dir().join("rxend"))
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Removes the CPU cgroup directories an rxend made under `name`, deepest first.
pub fn remove_cgroups(name: &str) {
    for root in [
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/cpuacct",
        "/sys/fs/cgroup/cpuset",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ] {
        let top = Path::new(root).join(name);
        if let Ok(rd) = std::fs::read_dir(&top) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(&top);
        }
    }
}
