//! Boots the test guest under QEMU through its PVH entry (`-M microvm -kernel`), drives its
//! console and powers it off; and gives it a virtio-blk disk on one of microvm's virtio-mmio
//! transports. Needs `qemu-system-x86_64` (Debian: `qemu-system-x86`, which `scripts/test.sh`
//! installs): without it each test fails and says so.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
const QEMU: &str = "qemu-system-x86_64";

/// Fails the test, saying what to install, unless QEMU can be run here.
fn require_qemu() {
    match Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) => assert!(
            status.success(),
            "`{QEMU} --version` exited with {status}: this test boots the test guest under QEMU"
        ),
        Err(e) => panic!(
            "cannot run {QEMU} ({e}): this test boots the test guest under QEMU; install \
             qemu-system-x86 (scripts/test.sh does)"
        ),
    }
}

/// A guest under QEMU microvm, its serial console on pipes.
struct Qemu {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Qemu {
    /// Boots the test guest with `extra` arguments and waits for its boot line.
    fn boot(extra: &[&str]) -> Qemu {
        let dir = tempfile::tempdir().expect("temp dir");
        let kernel = dir.path().join("rxen-testguest.elf");
        std::fs::write(&kernel, rxen_testguest::image()).expect("write the image");
        let mut child = Command::new(QEMU)
            .args(["-M", "microvm", "-accel", "kvm", "-accel", "tcg"])
            .args(["-cpu", "qemu64,+x2apic,+tsc-deadline", "-m", "64"])
            .arg("-kernel")
            .arg(&kernel)
            .args([
                "-nodefaults",
                "-no-reboot",
                "-serial",
                "stdio",
                "-display",
                "none",
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run qemu-system-x86_64");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let qemu = Qemu {
            child,
            stdin,
            lines,
            _dir: dir,
        };
        assert_eq!(
            qemu.expect("rxen testguest: booted"),
            "rxen testguest: booted on 1 vCPUs with 64 MiB"
        );
        qemu
    }

    /// The next console line that starts with `prefix`.
    fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.trim_end().starts_with(prefix) => {
                    return line.trim_end().to_string()
                }
                Ok(_) => {}
                Err(e) => panic!("no line starting with {prefix:?}: {e}"),
            }
        }
    }

    /// Types `line` and returns the first answer after its echo that starts with `prefix`.
    fn command(&mut self, line: &str, prefix: &str) -> String {
        self.stdin
            .write_all(format!("{line}\r").as_bytes())
            .expect("type");
        self.expect(line);
        self.expect(prefix)
    }

    /// The guest's heartbeat count.
    fn heartbeat(&mut self) -> u64 {
        let line = self.command("heartbeat", "heartbeat ");
        line.strip_prefix("heartbeat ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad heartbeat line {line:?}"))
    }

    /// Powers the guest off and checks that QEMU exits cleanly.
    fn shutdown(mut self) {
        assert_eq!(self.command("shutdown", "powering off"), "powering off");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for qemu") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "qemu still running after shutdown"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "qemu exited with {status}");
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn boots_under_qemu_microvm_through_pvh_and_powers_off() {
    require_qemu();
    let mut qemu = Qemu::boot(&[]);
    assert_eq!(qemu.command("vcpus", "vcpus "), "vcpus online=1 mask=0x1");
    // The timer runs under PVH too (its TSC frequency comes from CPUID or the PIT there).
    let first = qemu.heartbeat();
    let deadline = Instant::now() + WAIT;
    while qemu.heartbeat() <= first {
        assert!(Instant::now() < deadline, "the heartbeat stayed at {first}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(qemu.command("disks", "no disks"), "no disks");
    qemu.shutdown();
}

/// The guest's block pattern: byte k of a `blkwrite` with SEED is `(SEED + 31 * k) mod 256`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|k| ((seed + 31 * k) % 256) as u8)
        .collect()
}

/// `-drive` and `-device` arguments for a raw image as virtio-blk with serial `xvda`, on a
/// virtio-mmio transport that speaks version 2 (QEMU's default for virtio-mmio is legacy).
fn disk_args(image: &Path) -> Vec<String> {
    vec![
        "-global".into(),
        "virtio-mmio.force-legacy=false".into(),
        "-drive".into(),
        format!("file={},if=none,id=d0,format=raw", image.display()),
        "-device".into(),
        "virtio-blk-device,drive=d0,serial=xvda".into(),
    ]
}

#[test]
fn guest_writes_and_reads_back_a_virtio_blk_disk_on_microvm() {
    require_qemu();
    let image = tempfile::NamedTempFile::new().expect("temp image");
    let size = 4u64 << 20;
    std::fs::write(image.path(), vec![0xEE; size as usize]).expect("fill image");
    let args = disk_args(image.path());
    let mut qemu = Qemu::boot(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // Found on one of microvm's transports at 0xFEB0_0000 (slot = its index there).
    let line = qemu.command("disks", "disk ");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields.get(2..),
        Some(&["xvda", &(size / 512).to_string(), "rw"][..]),
        "bad line {line:?}"
    );
    let (sector, count, seed) = (40u64, 130u64, 11u64);
    assert_eq!(
        qemu.command(
            &format!("blkwrite xvda {sector} {count} {seed}"),
            "blkwrite"
        ),
        "blkwrite ok"
    );
    assert_eq!(qemu.command("blkflush xvda", "blkflush"), "blkflush ok");
    let expected = pattern(seed, (count * 512) as usize);
    assert_eq!(
        qemu.command(&format!("blkread xvda {sector} {count}"), "blkread"),
        format!("blkread crc32={:08x}", crc32fast::hash(&expected))
    );
    assert!(qemu
        .command("blkbench xvda randread 1", "blkbench")
        .starts_with("blkbench randread 1 MiB in "));
    qemu.shutdown();
    // The pattern is on the host's file, where it was written, and nothing else changed.
    let bytes = std::fs::read(image.path()).expect("read image");
    let at = (sector * 512) as usize;
    assert_eq!(&bytes[at..at + expected.len()], &expected[..]);
    assert!(bytes[..at].iter().all(|&b| b == 0xEE));
    assert!(bytes[at + expected.len()..].iter().all(|&b| b == 0xEE));
}
