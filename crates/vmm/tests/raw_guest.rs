//! Boots hand-assembled guest code under KVM: long mode, paging, boot info,
//! serial output, the power port, and triple faults.

mod common;

use std::time::Duration;

use common::{raw_elf, raw_guest_elf, spec, Domain};
use rxen_proto::vmspec::{ExitReason, KernelSource};

/// Prints "B" if RSI points at the boot info magic, then "K\n", then powers off.
const HELLO_POWEROFF: &[u8] = &[
    0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
    0x48, 0x8B, 0x06, // mov rax, [rsi]
    0x48, 0xBB, b'R', b'X', b'E', b'N', b'B', b'O', b'O', b'T', // mov rbx, "RXENBOOT"
    0x48, 0x39, 0xD8, // cmp rax, rbx
    0x75, 0x03, // jne +3
    0xB0, b'B', 0xEE, // mov al, 'B'; out dx, al
    0xB0, b'K', 0xEE, // mov al, 'K'; out dx, al
    0xB0, b'\n', 0xEE, // mov al, '\n'; out dx, al
    0x66, 0xBA, 0x10, 0x05, // mov dx, 0x510
    0x30, 0xC0, // xor al, al
    0xEE, // out dx, al
    0xF4, // hlt
    0xEB, 0xFD, // jmp hlt
];

fn start_raw(code: &[u8], vcpus: u32) -> Domain {
    Domain::start(|dir| {
        let kernel = dir.join("guest.elf");
        std::fs::write(&kernel, raw_guest_elf(code)).expect("write guest");
        spec(dir, KernelSource::Path(kernel), vcpus, 32)
    })
}

#[test]
fn raw_guest_prints_and_powers_off() {
    let mut d = start_raw(HELLO_POWEROFF, 1);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    assert_eq!(d.console_log(), "BK\n");
    let rec = d.exit_record();
    assert_eq!(rec.reason, ExitReason::Poweroff, "{rec:?}");
    // The sockets were created with mode 0600.
    use std::os::unix::fs::PermissionsExt;
    for s in ["control.sock", "console.sock"] {
        let mode = std::fs::metadata(d.path(s))
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{s}");
    }
}

#[test]
fn triple_fault_is_reboot() {
    // ud2 with no IDT: #UD -> #GP -> double fault -> triple fault.
    let mut d = start_raw(&[0x0F, 0x0B], 1);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    let rec = d.exit_record();
    assert_eq!(rec.reason, ExitReason::Reboot, "{rec:?}");
    assert!(rec.detail.contains("triple fault"), "{rec:?}");
}

#[test]
fn pvpanic_is_crash_and_i8042_reset_is_reboot() {
    // mov dx, 0x505; mov al, 3; out dx, al; hlt
    let mut d = start_raw(&[0x66, 0xBA, 0x05, 0x05, 0xB0, 0x03, 0xEE, 0xF4], 1);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    assert_eq!(d.exit_record().reason, ExitReason::Crash);
    // mov al, 0xfe; out 0x64, al; hlt
    let mut d = start_raw(&[0xB0, 0xFE, 0xE6, 0x64, 0xF4], 1);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    assert_eq!(d.exit_record().reason, ExitReason::Reboot);
}

#[test]
fn unknown_ports_read_all_ones() {
    // in al, 0x80 (nothing there) -> 0xFF; out it to COM1; power off.
    let code = [
        0xE4, 0x80, // in al, 0x80
        0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xEE, // out dx, al
        0x66, 0xBA, 0x10, 0x05, // mov dx, 0x510
        0x30, 0xC0, 0xEE, 0xF4, // xor al, al; out dx, al; hlt
    ];
    let mut d = start_raw(&code, 1);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    assert_eq!(
        std::fs::read(d.path("console.log")).expect("log"),
        vec![0xFF]
    );
}

#[test]
fn bad_spec_fails_with_one_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, b"{not json").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rxen-vmm"))
        .arg("--spec")
        .arg(&spec_path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid spec"), "{err}");
}

#[test]
fn startup_errors_exit_1_without_ready() {
    type Tweak = fn(&mut rxen_proto::vmspec::VmSpec);
    let cases: [(&str, Tweak); 3] = [
        ("unknown built-in kernel", |s| {
            s.kernel = KernelSource::Builtin("nope".into())
        }),
        ("out of range", |s| s.memory_mib = 0),
        ("vCPUs requested", |s| s.vcpus = 0),
    ];
    for (needle, tweak) in cases {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = spec(dir.path(), KernelSource::Builtin("testguest".into()), 1, 32);
        tweak(&mut s);
        let spec_path = dir.path().join("spec.json");
        std::fs::write(&spec_path, serde_json::to_vec(&s).expect("json")).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rxen-vmm"))
            .arg("--spec")
            .arg(&spec_path)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{needle}");
        assert!(out.stdout.is_empty(), "{needle}");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("rxen-vmm: ") && last.contains(needle),
            "{needle}: {err}"
        );
        // The VMM opens its exit record before it jails itself; a start that fails writes
        // none into it (rxend reads an empty file as no record).
        let record = std::fs::read(dir.path().join("exit.json")).unwrap_or_default();
        assert!(record.is_empty(), "{needle}: an exit record was written");
    }
}

/// Prints "L\n" if RSI is the zero page, waits a little (so that a wrongly
/// runnable AP would print too), then powers off.
const LINUX_LIKE: &[u8] = &[
    0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
    0x48, 0x81, 0xFE, 0x00, 0x70, 0x00, 0x00, // cmp rsi, 0x7000
    0x75, 0x03, // jne +3
    0xB0, b'L', 0xEE, // mov al, 'L'; out dx, al
    0xB0, b'\n', 0xEE, // mov al, '\n'; out dx, al
    0xB9, 0x20, 0x4E, 0x00, 0x00, // mov ecx, 20000
    0xFF, 0xC9, // dec ecx
    0x75, 0xFC, // jnz -4
    0x66, 0xBA, 0x10, 0x05, // mov dx, 0x510
    0x30, 0xC0, 0xEE, 0xF4, // xor al, al; out dx, al; hlt
];

#[test]
fn non_rxen_elf_boots_with_the_linux_protocol_on_the_bsp_only() {
    let mut d = Domain::start(|dir| {
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, raw_elf(LINUX_LIKE, 0x100_0000, false)).expect("write");
        let mut s = spec(dir, KernelSource::Path(kernel), 2, 64);
        s.cmdline = "console=ttyS0".into();
        s
    });
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    assert_eq!(d.console_log(), "L\n");
    assert_eq!(d.exit_record().reason, ExitReason::Poweroff);
}

#[test]
fn stale_exit_record_is_removed_and_kill_leaves_none() {
    // jmp $ : runs until killed.
    let mut d = Domain::start(|dir| {
        std::fs::write(
            dir.join("exit.json"),
            br#"{"reason":"poweroff","detail":"old"}"#,
        )
        .expect("stale");
        let kernel = dir.join("guest.elf");
        std::fs::write(&kernel, raw_guest_elf(&[0xEB, 0xFE])).expect("write guest");
        spec(dir, KernelSource::Path(kernel), 1, 32)
    });
    // The VMM opens its (empty) record at start-up and writes it only as it exits.
    let record = d.path("exit.json");
    let empty = || std::fs::read(&record).map_or(true, |b| b.is_empty());
    assert!(empty(), "the stale record is still there");
    d.child.kill().expect("kill");
    d.child.wait().expect("wait");
    assert!(empty(), "a killed VMM left a record");
}
