//! Helpers shared by the VMM integration tests: run dirs, spawning the
//! binary, and talking to its sockets. These tests need /dev/kvm and fail
//! (never skip) without it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rxen_proto::vmctl::{VmRequest, VmResponse};
use rxen_proto::vmspec::{ExitRecord, KernelSource, VmSpec};

/// Fails the test when KVM is missing.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: these tests need KVM"
    );
}

/// A VMM process running in a temporary run directory.
pub struct Domain {
    pub dir: tempfile::TempDir,
    pub child: Child,
}

/// Spec for a domain in `dir`.
pub fn spec(dir: &Path, kernel: KernelSource, vcpus: u32, memory_mib: u64) -> VmSpec {
    VmSpec {
        name: "test".into(),
        domid: 1,
        uuid: "00000000-0000-0000-0000-000000000001".into(),
        memory_mib,
        vcpus,
        kernel,
        initrd: None,
        cmdline: String::new(),
        run_dir: dir.to_path_buf(),
        start_paused: false,
        restore_from: None,
        restore_fd: None,
        incoming_fd: None,
        // The monitor runs in the test's own process, which must stay free.
        sandbox: false,
        sandbox_uid: None,
        disks: Vec::new(),
        nics: Vec::new(),
        balloon: false,
        balloon_target_mib: None,
        max_vcpus: 0,
    }
}

impl Domain {
    /// Starts the VMM with the spec made by `make` and waits for `ready`.
    pub fn start(make: impl FnOnce(&Path) -> VmSpec) -> Domain {
        require_kvm();
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = make(dir.path());
        let spec_path = dir.path().join("spec.json");
        std::fs::write(&spec_path, serde_json::to_vec(&spec).expect("json")).expect("spec");
        let log = std::fs::File::create(dir.path().join("vmm.log")).expect("log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_rxen-vmm"))
            .arg("--spec")
            .arg(&spec_path)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn rxen-vmm");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read ready");
        let d = Domain { dir, child };
        assert_eq!(
            line,
            "ready\n",
            "VMM did not get ready; log:\n{}",
            d.vmm_log()
        );
        // Nothing else may ever come on stdout.
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = out.read_to_string(&mut rest);
            assert!(rest.is_empty(), "VMM wrote more to stdout: {rest:?}");
        });
        d
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn vmm_log(&self) -> String {
        std::fs::read_to_string(self.path("vmm.log")).unwrap_or_default()
    }

    pub fn console_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.path("console.log")).unwrap_or_default())
            .into_owned()
    }

    /// Waits until console.log contains `needle`.
    pub fn wait_console_log(&self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let text = self.console_log();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {needle:?} in console.log:\n{text}\nvmm.log:\n{}",
                self.vmm_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                panic!("VMM did not exit in time; log:\n{}", self.vmm_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads the exit record.
    pub fn exit_record(&self) -> ExitRecord {
        let text = std::fs::read_to_string(self.path("exit.json"))
            .unwrap_or_else(|e| panic!("no exit.json ({e}); log:\n{}", self.vmm_log()));
        serde_json::from_str(&text).expect("exit.json")
    }

    pub fn control(&self) -> Control {
        Control::connect(&self.path("control.sock"))
    }

    pub fn console(&self) -> Console {
        Console::connect(&self.path("console.sock"))
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control socket connection.
pub struct Control {
    stream: BufReader<UnixStream>,
}

impl Control {
    pub fn connect(path: &Path) -> Control {
        let s = UnixStream::connect(path).expect("connect control.sock");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Control {
            stream: BufReader::new(s),
        }
    }

    pub fn raw(&mut self, line: &[u8]) -> String {
        self.stream.get_mut().write_all(line).expect("send");
        let mut resp = String::new();
        self.stream.read_line(&mut resp).expect("response");
        resp
    }

    /// Sends `req` with `fd` attached (SCM_RIGHTS), as rxend passes files.
    pub fn request_with_fd(
        &mut self,
        req: &VmRequest,
        fd: &impl std::os::fd::AsRawFd,
    ) -> VmResponse {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::AsRawFd;
        let mut line = serde_json::to_vec(req).expect("json");
        line.push(b'\n');
        let fds = [fd.as_raw_fd()];
        let sock = self.stream.get_ref().as_raw_fd();
        let n = sendmsg::<()>(
            sock,
            &[std::io::IoSlice::new(&line)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        self.stream.get_mut().write_all(&line[n..]).expect("send");
        let mut resp = String::new();
        self.stream.read_line(&mut resp).expect("response");
        serde_json::from_str(&resp).unwrap_or_else(|e| panic!("bad response {resp:?}: {e}"))
    }

    pub fn request(&mut self, req: &VmRequest) -> VmResponse {
        let mut line = serde_json::to_vec(req).expect("json");
        line.push(b'\n');
        let resp = self.raw(&line);
        serde_json::from_str(&resp).unwrap_or_else(|e| panic!("bad response {resp:?}: {e}"))
    }
}

/// A console socket connection that accumulates what it reads.
pub struct Console {
    stream: UnixStream,
    pub seen: Vec<u8>,
}

impl Console {
    pub fn connect(path: &Path) -> Console {
        let s = UnixStream::connect(path).expect("connect console.sock");
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        Console {
            stream: s,
            seen: Vec::new(),
        }
    }

    pub fn send(&mut self, text: &str) {
        self.stream
            .write_all(text.as_bytes())
            .expect("console send");
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Reads whatever arrives during `d`.
    pub fn pump_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.pump();
        }
    }

    fn pump(&mut self) {
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(n) => self.seen.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("console read: {e}"),
        }
    }

    /// Reads until the text seen so far, from byte `from` on, satisfies `pred`.
    pub fn wait_for(
        &mut self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let end = Instant::now() + timeout;
        loop {
            let tail = String::from_utf8_lossy(self.seen.get(from..).unwrap_or(&[])).into_owned();
            if pred(&tail) {
                return tail;
            }
            assert!(
                Instant::now() < end,
                "timed out on console; saw:\n{}",
                self.text()
            );
            self.pump();
        }
    }

    /// Reads until `needle` appears after byte `from`.
    pub fn wait_text(&mut self, from: usize, needle: &str, timeout: Duration) -> String {
        self.wait_for(from, timeout, |t| t.contains(needle))
    }
}

/// Builds a minimal x86_64 ELF: `code` loaded and entered at 1 MiB, with the RXEN note.
pub fn raw_guest_elf(code: &[u8]) -> Vec<u8> {
    raw_elf(code, 0x10_0000, true)
}

/// Builds a minimal x86_64 ELF with `code` at `paddr`; with the RXEN note or (as a
/// Linux vmlinux would be) a different note.
pub fn raw_elf(code: &[u8], paddr: u64, rxen_note: bool) -> Vec<u8> {
    let mut note = Vec::new();
    note.extend_from_slice(&5u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&1u32.to_le_bytes());
    note.extend_from_slice(if rxen_note {
        b"RXEN\0\0\0\0"
    } else {
        b"XNUL\0\0\0\0"
    });
    note.extend_from_slice(&1u32.to_le_bytes());
    let data_off: u64 = 64 + 56 * 2;
    let note_off = data_off + code.len() as u64;
    let mut b = vec![0u8; 64];
    b[0..4].copy_from_slice(b"\x7FELF");
    b[4] = 2;
    b[5] = 1;
    b[6] = 1;
    b[16..18].copy_from_slice(&2u16.to_le_bytes());
    b[18..20].copy_from_slice(&62u16.to_le_bytes());
    b[24..32].copy_from_slice(&paddr.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&2u16.to_le_bytes());
    for (t, off, addr, size) in [
        (1u32, data_off, paddr, code.len() as u64),
        (4u32, note_off, 0, note.len() as u64),
    ] {
        let mut p = vec![0u8; 56];
        p[0..4].copy_from_slice(&t.to_le_bytes());
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&addr.to_le_bytes());
        p[24..32].copy_from_slice(&addr.to_le_bytes());
        p[32..40].copy_from_slice(&size.to_le_bytes());
        p[40..48].copy_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&p);
    }
    b.extend_from_slice(code);
    b.extend_from_slice(&note);
    b
}
