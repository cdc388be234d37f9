//! Save and restore at the VMM level: the test guest's heartbeat goes on
//! from where it was, and a corrupted save file, or a hand-made one whose
//! checksums are right but whose content is impossible, is refused before any
//! guest runs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{spec, Console, Domain};
use kvm_bindings::{kvm_regs, kvm_sregs};
use proptest::prelude::*;
use rxen_proto::stream::{
    self, ConfigRecord, Header, RecordType, StreamReader, StreamWriter, VmInfo,
};
use rxen_proto::vmctl::{AfterSave, VmRequest, VmResponse};
use rxen_proto::vmspec::{ExitReason, KernelSource};
use rxen_vmm::migration::devices::DeviceRecord;

const T: Duration = Duration::from_secs(20);

fn heartbeat(con: &mut Console) -> u64 {
    let from = con.seen.len();
    con.send("heartbeat\n");
    let tail = con.wait_for(from, T, |t| parse(t).is_some());
    parse(&tail).expect("heartbeat")
}

fn parse(text: &str) -> Option<u64> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .find_map(|l| l.trim().strip_prefix("heartbeat ")?.trim().parse().ok())
}

fn config() -> ConfigRecord {
    ConfigRecord {
        config: serde_json::json!({"name": "test"}),
        config_path: None,
    }
}

#[test]
fn save_restore_keeps_the_heartbeat_and_corruption_is_refused() {
    let mut d = Domain::start(|dir| spec(dir, KernelSource::Builtin("testguest".into()), 2, 64));
    let mut con = d.console();
    con.wait_text(0, "booted on 2 vCPUs", T);
    std::thread::sleep(Duration::from_millis(500));
    let before = heartbeat(&mut con);
    let keep = tempfile::tempdir().expect("tmp");
    let file = keep.path().join("guest.save");
    let save = VmRequest::Save {
        path: file.clone(),
        config: config(),
        then: AfterSave::Exit,
    };
    // The VMM opens no path once the guest runs: the file comes with the request.
    let resp = d.control().request(&save);
    assert!(
        matches!(&resp, VmResponse::Error { message } if message.contains("passed with it")),
        "a save without a file: {resp:?}"
    );
    assert!(!file.exists());
    let out = std::fs::File::create(&file).expect("create");
    let resp = d.control().request_with_fd(&save, &out);
    let VmResponse::Transferred(stats) = resp else {
        panic!("save: {resp:?}\n{}", d.vmm_log());
    };
    assert!(stats.pages > 0 && stats.zero_pages > 0, "{stats:?}");
    assert_eq!(d.wait_exit(T), 0);
    assert_eq!(d.exit_record().reason, ExitReason::Saved);
    let size = std::fs::metadata(&file).expect("file").len();
    assert!(size < 32 << 20, "a 64 MiB guest saved into {size} bytes");

    for _ in 0..2 {
        let f = file.clone();
        let r = Domain::start(move |dir| {
            let mut s = spec(dir, KernelSource::Builtin("testguest".into()), 2, 64);
            s.restore_from = Some(f);
            s
        });
        let mut con = r.console();
        let after = heartbeat(&mut con);
        assert!(
            after >= before && after < before + 50,
            "heartbeat {before} before the save, {after} after the restore\n{}",
            r.vmm_log()
        );
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            heartbeat(&mut con) > after,
            "the restored guest does not run"
        );
    }

    let mut bad = std::fs::read(&file).expect("read");
    let at = bad.len() / 2;
    bad[at] ^= 0x20;
    let bad_file = keep.path().join("bad.save");
    std::fs::write(&bad_file, &bad).expect("write");
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = spec(dir.path(), KernelSource::Builtin("testguest".into()), 2, 64);
    s.restore_from = Some(bad_file);
    let e = rxen_vmm::vm::Vm::create(s)
        .err()
        .expect("corrupt file accepted");
    assert!(e.to_string().contains("corrupt"), "{e}");
}

/// A save file of a running 2-vCPU, 64 MiB test guest, in a directory kept with it.
fn saved_guest() -> (tempfile::TempDir, PathBuf) {
    let mut d = Domain::start(|dir| spec(dir, KernelSource::Builtin("testguest".into()), 2, 64));
    let mut con = d.console();
    con.wait_text(0, "booted on 2 vCPUs", T);
    heartbeat(&mut con);
    let keep = tempfile::tempdir().expect("tmp");
    let file = keep.path().join("guest.save");
    let out = std::fs::File::create(&file).expect("create");
    let resp = d.control().request_with_fd(
        &VmRequest::Save {
            path: file.clone(),
            config: config(),
            then: AfterSave::Exit,
        },
        &out,
    );
    assert!(
        matches!(resp, VmResponse::Transferred(_)),
        "save: {resp:?}\n{}",
        d.vmm_log()
    );
    assert_eq!(d.wait_exit(T), 0);
    (keep, file)
}

/// The records of a stream.
fn records(bytes: &[u8]) -> Vec<(RecordType, Vec<u8>)> {
    let mut r = StreamReader::new(bytes).expect("header");
    let mut out = Vec::new();
    loop {
        let rec = r.next_record().expect("record");
        let end = rec.kind == RecordType::End;
        out.push((rec.kind, rec.body));
        if end {
            return out;
        }
    }
}

/// `recs` as a stream, every checksum right.
fn write(recs: &[(RecordType, Vec<u8>)]) -> Vec<u8> {
    let mut w = StreamWriter::new(Vec::new(), Header::new(false)).expect("w");
    for (kind, body) in recs {
        w.record(*kind, body).expect("record");
    }
    w.into_inner()
}

/// The sections of a vCPU record body: its index, then `(tag, bytes)`.
fn vcpu_sections(body: &[u8]) -> (u32, Vec<(u32, Vec<u8>)>) {
    let id = u32::from_le_bytes(body[..4].try_into().expect("id"));
    let mut rest = &body[4..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let tag = u32::from_le_bytes(rest[..4].try_into().expect("tag"));
        let len = u32::from_le_bytes(rest[4..8].try_into().expect("len")) as usize;
        out.push((tag, rest[8..8 + len].to_vec()));
        rest = &rest[8 + len..];
    }
    (id, out)
}

fn vcpu_body(id: u32, sections: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = id.to_le_bytes().to_vec();
    for (tag, bytes) in sections {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// Section tags of a vCPU record (crates/vmm/src/migration/vcpu_state.rs).
const REGS: u32 = 1;
const SREGS: u32 = 2;

/// A KVM register structure read from (and written back to) its section bytes.
trait Raw: Copy {
    fn read(b: &[u8]) -> Self {
        assert_eq!(b.len(), std::mem::size_of::<Self>());
        // SAFETY: the length matches, and these KVM structures are plain integers.
        unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<Self>()) }
    }
    fn bytes(&self) -> Vec<u8> {
        // SAFETY: a plain-integer structure of its size, read as bytes.
        unsafe {
            std::slice::from_raw_parts(
                (self as *const Self).cast::<u8>(),
                std::mem::size_of::<Self>(),
            )
        }
        .to_vec()
    }
}
impl Raw for kvm_regs {}
impl Raw for kvm_sregs {}

/// A change to one vCPU's registers.
type Edit = fn(&mut kvm_regs, &mut kvm_sregs);

/// The save file's records with vCPU `id`'s registers changed by `edit`.
fn with_registers(
    recs: &[(RecordType, Vec<u8>)],
    id: u32,
    edit: &dyn Fn(&mut kvm_regs, &mut kvm_sregs),
) -> Vec<(RecordType, Vec<u8>)> {
    let mut recs = recs.to_vec();
    for (kind, body) in recs.iter_mut() {
        if *kind != RecordType::Vcpu {
            continue;
        }
        let (vid, mut secs) = vcpu_sections(body);
        if vid != id {
            continue;
        }
        let ri = secs.iter().position(|(t, _)| *t == REGS).expect("regs");
        let si = secs.iter().position(|(t, _)| *t == SREGS).expect("sregs");
        let mut r = kvm_regs::read(&secs[ri].1);
        let mut s = kvm_sregs::read(&secs[si].1);
        edit(&mut r, &mut s);
        secs[ri].1 = r.bytes();
        secs[si].1 = s.bytes();
        *body = vcpu_body(vid, &secs);
    }
    recs
}

/// The save file's records with device `name`'s state changed by `edit`.
fn with_device(
    recs: &[(RecordType, Vec<u8>)],
    name: &str,
    edit: &dyn Fn(&mut DeviceRecord),
) -> Vec<(RecordType, Vec<u8>)> {
    let mut recs = recs.to_vec();
    let mut found = false;
    for (kind, body) in recs.iter_mut() {
        if *kind != RecordType::Device {
            continue;
        }
        let mut d: DeviceRecord = serde_json::from_slice(body).expect("device");
        if d.name() == name {
            edit(&mut d);
            *body = stream::json_body(&d).expect("json");
            found = true;
        }
    }
    assert!(found, "no {name} record");
    recs
}

/// Restores the 2-vCPU, 64 MiB guest from `bytes` in this process: the error.
fn restore_error(dir: &Path, bytes: &[u8]) -> String {
    let file = dir.join("edited.save");
    std::fs::write(&file, bytes).expect("write");
    let run = tempfile::tempdir().expect("tmp");
    let mut s = spec(run.path(), KernelSource::Builtin("testguest".into()), 2, 64);
    s.restore_from = Some(file);
    match rxen_vmm::vm::Vm::create(s) {
        Ok(_) => panic!("an impossible save file was restored"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hand_made_impossible_states_are_refused_before_anything_runs() {
    let (keep, file) = saved_guest();
    let recs = records(&std::fs::read(&file).expect("read"));
    let refused = |recs: &[(RecordType, Vec<u8>)], want: &str| {
        let e = restore_error(keep.path(), &write(recs));
        assert!(e.contains(want), "expected {want:?} in: {e}");
    };
    // The file as saved, rewritten: it restores (checks the rewriting, and
    // that the real registers of both vCPUs pass every check).
    let run = tempfile::tempdir().expect("tmp");
    let again = keep.path().join("again.save");
    std::fs::write(&again, write(&recs)).expect("write");
    let mut s = spec(run.path(), KernelSource::Builtin("testguest".into()), 2, 64);
    s.restore_from = Some(again);
    drop(rxen_vmm::vm::Vm::create(s).expect("the saved state restores"));

    let cases: [(&str, Edit, u32); 12] = [
        ("vCPU 1: impossible EFER", |_, s| s.efer |= 1 << 5, 1),
        ("vCPU 0: impossible EFER", |_, s| s.efer |= 1 << 40, 0),
        ("vCPU 1: impossible EFER", |_, s| s.efer &= !(1 << 10), 1),
        ("vCPU 0: impossible CR0", |_, s| s.cr0 &= !1, 0),
        ("vCPU 0: impossible CR4", |_, s| s.cr4 |= 1 << 14, 0),
        ("vCPU 1: impossible CR4", |_, s| s.cr4 &= !(1 << 5), 1),
        ("vCPU 0: impossible CR8", |_, s| s.cr8 = 200, 0),
        ("vCPU 0: impossible CS", |_, s| s.cs.type_ = 0xFF, 0),
        (
            "vCPU 1: impossible TR",
            |_, s| s.tr.base = 0x0000_8000_0000_0000,
            1,
        ),
        (
            "vCPU 0: impossible interrupt bitmap",
            |_, s| s.interrupt_bitmap[0] = 0b11 << 40,
            0,
        ),
        ("vCPU 1: impossible RFLAGS", |r, _| r.rflags |= 1 << 3, 1),
        (
            "vCPU 0: impossible RIP",
            |r, _| r.rip = 0x0000_8000_0000_0000,
            0,
        ),
    ];
    for (want, edit, id) in cases {
        refused(&with_registers(&recs, id, &edit), want);
    }

    // A kvm_regs section cut short, its length word telling the truth.
    let mut short = recs.clone();
    for (kind, body) in short.iter_mut() {
        if *kind == RecordType::Vcpu {
            let (id, mut secs) = vcpu_sections(body);
            if id == 1 {
                let regs = secs.iter_mut().find(|(t, _)| *t == REGS).expect("regs");
                regs.1.truncate(100);
                *body = vcpu_body(id, &secs);
            }
        }
    }
    refused(
        &short,
        "vCPU 1: the kvm_regs section is 100 bytes long where 144 are expected",
    );

    // A third vCPU for a domain of two, and a VmInfo that says three.
    let mut third = recs.clone();
    let at = third
        .iter()
        .position(|(k, _)| *k == RecordType::Vcpu)
        .expect("vcpu");
    let (_, secs) = vcpu_sections(&third[at].1);
    third.insert(at, (RecordType::Vcpu, vcpu_body(2, &secs)));
    refused(
        &third,
        "the stream holds state for vCPU 2, but the domain has vCPUs 0 to 1",
    );
    let mut info = recs.clone();
    let at = info
        .iter()
        .position(|(k, _)| *k == RecordType::VmInfo)
        .expect("info");
    let mut vi: VmInfo = serde_json::from_slice(&info[at].1).expect("info");
    vi.vcpus = 3;
    info[at].1 = stream::json_body(&vi).expect("json");
    refused(&info, "with 3 vCPUs, not 64 MiB with 2");

    // Device states the devices could never have held.
    refused(
        &with_device(&recs, "vcpus", &|d| {
            if let DeviceRecord::Vcpus(s) = d {
                s.wanted = 0b101;
            }
        }),
        "device vcpus: wanted mask 0x5",
    );
    refused(
        &with_device(&recs, "vcpus", &|d| {
            if let DeviceRecord::Vcpus(s) = d {
                s.wanted = 0b111;
            }
        }),
        "device vcpus: wanted mask 0x7",
    );
    refused(
        &with_device(&recs, "acpi", &|d| {
            if let DeviceRecord::Acpi(s) = d {
                s.pending = 4;
            }
        }),
        "device acpi: pending events 0x4",
    );
    refused(
        &with_device(&recs, "acpi", &|d| {
            if let DeviceRecord::Acpi(s) = d {
                s.seen = 1 << 20;
            }
        }),
        "device acpi: seen slot mask",
    );
    refused(
        &with_device(&recs, "power", &|d| {
            if let DeviceRecord::Power(s) = d {
                s.host_request = 7;
            }
        }),
        "device power: host_request is 7, not",
    );
    refused(
        &with_device(&recs, "serial", &|d| {
            if let DeviceRecord::Serial(s) = d {
                s.fifo = vec![b'x'; 65];
            }
        }),
        "device serial: 65 bytes in its 64-byte receive FIFO",
    );
    let mut twice = recs.clone();
    let at = twice
        .iter()
        .position(|(k, _)| *k == RecordType::Device)
        .expect("device");
    twice.insert(at, twice[at].clone());
    refused(&twice, "appears twice in the stream");
}

/// Bits no x86 vCPU can set, in EFER, CR0 and CR4 (with or without any feature).
const EFER_RESERVED: u64 = !((1 << 0) | (0xFF << 8) | (1 << 21));
const CR0_RESERVED: u64 = !0xE005_003F;
const CR4_RESERVED: u64 = !(0x7FFF | (0x3FF << 16) | (0x3 << 27) | (1 << 32));

/// A real save file with one register of one vCPU made impossible: never
/// restored, and the refusal names the vCPU and the register. (One guest is
/// saved, then 24 random cases run against its file.)
#[test]
fn one_impossible_register_in_a_real_save_file_is_refused() {
    let (keep, file) = saved_guest();
    let recs = records(&std::fs::read(&file).expect("read"));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&(0u32..2, 0usize..9, any::<u64>()), |(id, field, seed)| {
        let pick = |mask: u64| {
            let bits: Vec<u32> = (0..64).filter(|b| mask & (1 << b) != 0).collect();
            1u64 << bits[(seed % bits.len() as u64) as usize]
        };
        let (want, edited) = match field {
            0 => (
                "EFER",
                with_registers(&recs, id, &|_, s| s.efer |= pick(EFER_RESERVED)),
            ),
            1 => (
                "CR0",
                with_registers(&recs, id, &|_, s| s.cr0 |= pick(CR0_RESERVED)),
            ),
            2 => (
                "CR4",
                with_registers(&recs, id, &|_, s| s.cr4 |= pick(CR4_RESERVED)),
            ),
            3 => (
                "CR8",
                with_registers(&recs, id, &|_, s| s.cr8 = 16 + seed % 1000),
            ),
            4 => (
                "CS",
                with_registers(&recs, id, &|_, s| s.cs.dpl = 4 + (seed % 252) as u8),
            ),
            5 => (
                "SS",
                with_registers(&recs, id, &|_, s| s.ss.present = 2 + (seed % 254) as u8),
            ),
            6 => (
                "RFLAGS",
                with_registers(&recs, id, &|r, _| r.rflags |= pick(!0x003F_7FD7)),
            ),
            7 => (
                "APIC base",
                with_registers(&recs, id, &|_, s| s.apic_base |= pick(0x2FF)),
            ),
            _ => (
                "interrupt bitmap",
                with_registers(&recs, id, &|_, s| {
                    s.interrupt_bitmap = [0; 4];
                    s.interrupt_bitmap[(seed % 4) as usize] = 0b11 << (seed % 63);
                }),
            ),
        };
        let e = restore_error(keep.path(), &write(&edited));
        let expected = format!("vCPU {id}: impossible {want}");
        prop_assert!(e.contains(&expected), "expected {} in: {}", expected, e);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
