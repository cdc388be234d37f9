//! QEMU under test: `qemu-system-x86_64 -M microvm -enable-kvm` running the
//! same test guest (through its PVH note), driven over QMP.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::console::Console;
use crate::error::{BenchError, Result};

/// How QEMU is started: the binary and the CPU model.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The binary (`RXEN_BENCH_QEMU`, default `qemu-system-x86_64`).
    pub binary: String,
    /// `-cpu` (`RXEN_BENCH_QEMU_CPU`, default `host,-arch-capabilities`: PVM
    /// refuses MSR 0x10a, which `-cpu host` would set).
    pub cpu: String,
    /// The guest ELF.
    pub kernel: PathBuf,
}

/// One guest's shape and how it starts.
#[derive(Debug, Clone, Default)]
pub struct QemuSpec {
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// `-incoming URI` (`defer` or `tcp:HOST:PORT`), for restore and migration targets.
    pub incoming: Option<String>,
}

/// A running QEMU with its serial console and QMP.
pub struct Qemu {
    child: Child,
    /// The guest's serial console (QEMU's stdio).
    pub console: Console,
    qmp: Option<Qmp>,
    qmp_path: PathBuf,
    stderr_path: PathBuf,
}

impl Qemu {
    /// Starts QEMU; returns once the process is spawned (not booted).
    pub fn spawn(cfg: &QemuConfig, spec: &QemuSpec, dir: &Path, tag: &str) -> Result<Qemu> {
        Qemu::spawn_with(cfg, spec, &[], dir, tag)
    }

    /// Like `spawn`, with `extra` arguments at the end of QEMU's command line (devices).
    pub fn spawn_with(
        cfg: &QemuConfig,
        spec: &QemuSpec,
        extra: &[String],
        dir: &Path,
        tag: &str,
    ) -> Result<Qemu> {
        let qmp_path = dir.join(format!("qmp-{tag}.sock"));
        let stderr_path = dir.join(format!("qemu-{tag}.err"));
        let _ = std::fs::remove_file(&qmp_path);
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| BenchError::io("create QEMU's stderr file", e))?;
        let mut cmd = Command::new(&cfg.binary);
        cmd.args(["-M", "microvm", "-enable-kvm", "-cpu", &cfg.cpu])
            .args([
                "-m",
                &spec.memory_mib.to_string(),
                "-smp",
                &spec.vcpus.to_string(),
            ])
            .arg("-kernel")
            .arg(&cfg.kernel)
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
        if let Some(i) = &spec.incoming {
            cmd.args(["-incoming", i]);
        }
        cmd.args(extra);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|source| BenchError::Spawn {
                program: cfg.binary.clone(),
                source,
            })?;
        let out = child.stdout.take();
        let input = child
            .stdin
            .take()
            .map(|i| Box::new(i) as Box<dyn Write + Send>);
        let Some(out) = out else {
            return Err(BenchError::Unexpected("QEMU has no stdout".into()));
        };
        Ok(Qemu {
            child,
            console: Console::new(out, input),
            qmp: None,
            qmp_path,
            stderr_path,
        })
    }

    /// Starts QEMU and waits for the guest's banner.
    pub fn boot(cfg: &QemuConfig, spec: &QemuSpec, dir: &Path, tag: &str) -> Result<Qemu> {
        Qemu::boot_with(cfg, spec, &[], dir, tag)
    }

    /// Like `boot`, with `extra` arguments (see `spawn_with`).
    pub fn boot_with(
        cfg: &QemuConfig,
        spec: &QemuSpec,
        extra: &[String],
        dir: &Path,
        tag: &str,
    ) -> Result<Qemu> {
        let mut q = Qemu::spawn_with(cfg, spec, extra, dir, tag)?;
        let r = q
            .console
            .wait_contains("rxen testguest: booted", Duration::from_secs(30));
        q.explain(r)?;
        Ok(q)
    }

    /// Adds QEMU's own error output to a failure.
    pub fn explain<T>(&mut self, r: Result<T>) -> Result<T> {
        r.map_err(|e| {
            let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
            let err: Vec<&str> = err
                .lines()
                .filter(|l| !l.contains("host doesn't support requested feature"))
                .collect();
            if err.is_empty() {
                e
            } else {
                BenchError::Unexpected(format!("{e}; QEMU says: {}", err.join(" ")))
            }
        })
    }

    /// The QEMU process's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs a QMP command (connecting on first use) and returns its `return` value.
    pub fn qmp(&mut self, command: &str, args: Value) -> Result<Value> {
        if self.qmp.is_none() {
            let q = Qmp::connect(&self.qmp_path, Duration::from_secs(10));
            let q = self.explain(q)?;
            self.qmp = Some(q);
        }
        match self.qmp.as_mut() {
            Some(q) => q.execute(command, args),
            None => Err(BenchError::Unexpected("no QMP connection".into())),
        }
    }

    /// When QEMU last sent the event `name` (e.g. `STOP`, `RESUME`), in microseconds since the
    /// Unix epoch by its own timestamp, among the events read so far.
    pub fn event_unix_us(&self, name: &str) -> Option<u64> {
        let e = self
            .qmp
            .as_ref()?
            .events
            .iter()
            .rev()
            .find(|e| e["event"].as_str() == Some(name))?;
        let ts = &e["timestamp"];
        Some(ts["seconds"].as_u64()? * 1_000_000 + ts["microseconds"].as_u64()?)
    }

    /// Polls `query-migrate` until it completes or fails; returns its last answer.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.qmp("query-migrate", json!({}))?;
            match v["status"].as_str().unwrap_or("") {
                "completed" => return Ok(v),
                "failed" | "cancelled" => {
                    return Err(BenchError::Unexpected(format!(
                        "migration {}: {}",
                        v["status"].as_str().unwrap_or(""),
                        v["error-desc"].as_str().unwrap_or("no reason given")
                    )))
                }
                _ => {}
            }
            if Instant::now() > deadline {
                let _ = self.qmp("migrate_cancel", json!({}));
                return Err(BenchError::timeout("migration completion", timeout));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `query-status` until the VM runs; an incoming VM that arrives
    /// paused (it was saved stopped) is continued, as `xl restore` unpauses.
    pub fn wait_running(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.qmp("query-status", json!({}))?;
            if v["running"].as_bool() == Some(true) {
                return Ok(());
            }
            if v["status"].as_str() == Some("paused") {
                self.qmp("cont", json!({}))?;
                continue;
            }
            if Instant::now() > deadline {
                return Err(BenchError::timeout(
                    format!("running state (last: {})", v["status"]),
                    timeout,
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.qmp_path);
    }
}

/// QEMU arguments for a virtio-blk disk over the image `path` of `format` (`raw`, `qcow2`),
/// serial `serial` (the name the test guest's disk commands take), on a microvm virtio-mmio
/// transport that speaks version 2 (QEMU's virtio-mmio is legacy by default, and the test
/// guest drives version 2).
pub fn disk_args(path: &Path, format: &str, serial: &str) -> Vec<String> {
    vec![
        "-global".into(),
        "virtio-mmio.force-legacy=false".into(),
        "-drive".into(),
        format!(
            "file={},if=none,id=disk0,format={format},cache=writeback",
            path.display()
        ),
        "-device".into(),
        format!("virtio-blk-device,drive=disk0,serial={serial}"),
    ]
}

/// QEMU arguments for a virtio-net card on the existing TAP `tap` with MAC `mac`.
pub fn nic_args(tap: &str, mac: &str) -> Vec<String> {
    vec![
        "-global".into(),
        "virtio-mmio.force-legacy=false".into(),
        "-netdev".into(),
        format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={mac}"),
    ]
}

/// A QMP connection: JSON lines over a Unix socket.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The events read so far (QEMU sends them between answers), oldest first.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying until `timeout`), reads the greeting and negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(BenchError::io("connect to QMP", e))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| BenchError::io("QMP timeout", e))?;
        let writer = stream
            .try_clone()
            .map_err(|e| BenchError::io("clone QMP socket", e))?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(BenchError::Unexpected(format!("QMP greeting: {greeting}")));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| BenchError::io("read QMP", e))?;
        if n == 0 {
            return Err(BenchError::Unexpected("QMP connection closed".into()));
        }
        serde_json::from_str(&line)
            .map_err(|e| BenchError::Unexpected(format!("QMP answered non-JSON {line:?}: {e}")))
    }

    /// Sends one command and waits for its answer, skipping events.
    pub fn execute(&mut self, command: &str, args: Value) -> Result<Value> {
        let msg = if args.as_object().is_some_and(|o| o.is_empty()) {
            json!({ "execute": command })
        } else {
            json!({ "execute": command, "arguments": args })
        };
        writeln!(self.writer, "{msg}").map_err(|e| BenchError::io("write QMP", e))?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(BenchError::Qmp {
                    command: command.into(),
                    detail: e["desc"].as_str().unwrap_or("unknown error").into(),
                });
            }
        }
    }
}
