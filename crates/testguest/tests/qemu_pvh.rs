//! Boots the test guest under QEMU through its PVH entry (`-M microvm -kernel`), drives its
//! console and powers it off. Needs `qemu-system-x86_64` (Debian: `qemu-system-x86`), so it is
//! ignored by default: `cargo test -p rxen-testguest --test qemu_pvh -- --ignored`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs qemu-system-x86"]
fn boots_under_qemu_microvm_through_pvh_and_powers_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kernel = dir.path().join("rxen-testguest.elf");
    std::fs::write(&kernel, rxen_testguest::image()).expect("write the image");
    let mut qemu = Command::new("qemu-system-x86_64")
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
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run qemu-system-x86_64");
    let mut stdin = qemu.stdin.take().expect("stdin");
    let stdout = qemu.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let expect = |prefix: &str| -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.trim_end().starts_with(prefix) => {
                    return line.trim_end().to_string()
                }
                Ok(_) => {}
                Err(e) => panic!("no line starting with {prefix:?}: {e}"),
            }
        }
    };
    assert_eq!(
        expect("rxen testguest: booted"),
        "rxen testguest: booted on 1 vCPUs with 64 MiB"
    );
    stdin.write_all(b"vcpus\r").expect("type");
    assert_eq!(expect("vcpus "), "vcpus online=1 mask=0x1");
    stdin.write_all(b"heartbeat\r").expect("type");
    assert!(expect("heartbeat ").starts_with("heartbeat "));
    stdin.write_all(b"shutdown\r").expect("type");
    assert_eq!(expect("powering off"), "powering off");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = qemu.try_wait().expect("wait for qemu") {
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
