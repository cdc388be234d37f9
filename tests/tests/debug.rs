//! Looking into a running guest as a Xen administrator does: `rxl dump-core` (an ELF core file
//! read back here and by binutils' `readelf`) and `rxl sysrq` (a BREAK and a key on the serial
//! console).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use rxen_e2e::{wait_until, Host};

const WAIT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The parts of an ELF64 file this test reads, parsed by hand (the test must not trust the
/// writer's code).
struct Elf {
    kind: u16,
    machine: u16,
    /// (p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz)
    segments: Vec<(u32, u64, u64, u64, u64, u64)>,
}

fn u16_at(b: &[u8], o: u64) -> u16 {
    let o = o as usize;
    u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], o: u64) -> u32 {
    let o = o as usize;
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: u64) -> u64 {
    let o = o as usize;
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn parse(data: &[u8]) -> Elf {
    assert_eq!(
        &data[..6],
        b"\x7fELF\x02\x01",
        "an ELF64 little-endian file"
    );
    let phoff = u64_at(data, 32);
    let phentsize = u64::from(u16_at(data, 54));
    let phnum = u64::from(u16_at(data, 56));
    let segments = (0..phnum)
        .map(|i| {
            let p = phoff + i * phentsize;
            (
                u32_at(data, p),
                u64_at(data, p + 8),
                u64_at(data, p + 16),
                u64_at(data, p + 24),
                u64_at(data, p + 32),
                u64_at(data, p + 40),
            )
        })
        .collect();
    Elf {
        kind: u16_at(data, 16),
        machine: u16_at(data, 18),
        segments,
    }
}

/// The notes of a PT_NOTE segment: (name, type, descriptor).
fn notes(data: &[u8], offset: u64, size: u64) -> Vec<(Vec<u8>, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut p = offset;
    while p + 12 <= offset + size {
        let namesz = u64::from(u32_at(data, p));
        let descsz = u64::from(u32_at(data, p + 4));
        let kind = u32_at(data, p + 8);
        let name = data[(p + 12) as usize..(p + 12 + namesz) as usize].to_vec();
        let desc_at = p + 12 + namesz.div_ceil(4) * 4;
        let desc = data[desc_at as usize..(desc_at + descsz) as usize].to_vec();
        out.push((name, kind, desc));
        p = desc_at + descsz.div_ceil(4) * 4;
    }
    out
}

/// What `memfill SEED` writes at u64 address `addr` (docs/internals.md).
fn memfill_word(seed: u64, addr: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ addr.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// Reads guest-physical `len` bytes at `gpa` from a core file's PT_LOAD segments.
fn read_phys<'a>(data: &'a [u8], elf: &Elf, gpa: u64, len: u64) -> &'a [u8] {
    let &(_, off, _, paddr, filesz, _) = elf
        .segments
        .iter()
        .find(|s| s.0 == 1 && s.3 <= gpa && gpa + len <= s.3 + s.4)
        .unwrap_or_else(|| panic!("no PT_LOAD holds {gpa:#x}+{len:#x}"));
    let _ = filesz;
    let at = (off + gpa - paddr) as usize;
    &data[at..at + len as usize]
}

#[test]
fn dump_core_writes_an_elf_core_with_the_guests_memory_and_registers_and_it_runs_on() {
    const MEM: u64 = 12;
    const SEED: u64 = 0x5eed_c0de;
    let host = Host::start();
    let mut con = host.create_guest("core", 2, MEM as u32, "");
    con.memfill(SEED);
    let before = con.heartbeat();
    let file = host.dir.path().join("core.elf");
    let f = file.to_str().expect("utf-8");
    host.rxl_ok(&["dump-core", "core", f]);

    // The domain runs on, unpaused.
    let row = host.list_row("core").expect("core still listed");
    assert!(!row[4].contains('p'), "left paused: {row:?}");
    wait_until(WAIT, "the guest's heartbeat goes on", || {
        con.heartbeat() > before
    });

    let meta = std::fs::metadata(&file).expect("the core file exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let data = std::fs::read(&file).expect("read the core");
    let elf = parse(&data);
    assert_eq!((elf.kind, elf.machine), (4, 62), "ET_CORE for EM_X86_64");

    // One PT_LOAD: all of RAM from guest-physical 0.
    let loads: Vec<_> = elf.segments.iter().filter(|s| s.0 == 1).collect();
    assert_eq!(loads.len(), 1, "{:?}", elf.segments);
    assert_eq!((loads[0].3, loads[0].4), (0, MEM * MIB));

    // The memfill pattern, read back at its guest-physical addresses: the free region runs
    // from the first page past the image's end plus 1 MiB to the end of RAM.
    let image = parse(rxen_testguest::image());
    let image_loads: Vec<_> = image.segments.iter().filter(|s| s.0 == 1).collect();
    let kernel_start = image_loads.iter().map(|s| s.2).min().expect("loads");
    let kernel_end = image_loads.iter().map(|s| s.2 + s.5).max().expect("loads");
    let free = kernel_end.div_ceil(4096) * 4096 + MIB + 4096;
    assert!(free < MEM * MIB - MIB, "free region {free:#x}");
    let bytes = read_phys(&data, &elf, free, MEM * MIB - free);
    for (i, word) in bytes.chunks_exact(8).enumerate() {
        let addr = free + 8 * i as u64;
        let got = u64::from_le_bytes(word.try_into().expect("8"));
        assert_eq!(
            got,
            memfill_word(SEED, addr),
            "guest-physical {addr:#x} in the core file"
        );
    }

    // One NT_PRSTATUS note per vCPU, each RIP inside the guest kernel.
    let &(_, off, _, _, size, _) = elf
        .segments
        .iter()
        .find(|s| s.0 == 4)
        .expect("a PT_NOTE segment");
    let prstatus: Vec<_> = notes(&data, off, size)
        .into_iter()
        .filter(|n| n.0 == b"CORE\0" && n.1 == 1)
        .collect();
    assert_eq!(prstatus.len(), 2, "one NT_PRSTATUS per vCPU");
    for (i, (_, _, desc)) in prstatus.iter().enumerate() {
        assert_eq!(desc.len(), 336, "x86_64 elf_prstatus");
        // pr_reg at 112; rip is its 17th register.
        let rip = u64_at(desc, 112 + 16 * 8);
        assert!(
            (kernel_start..kernel_end).contains(&rip),
            "vCPU {i}: RIP {rip:#x} outside the kernel {kernel_start:#x}..{kernel_end:#x}"
        );
        assert_eq!(u64_at(desc, 112 + 17 * 8), 0x08, "vCPU {i}: CS");
    }

    // binutils reads it without a complaint.
    let out = Command::new("readelf")
        .args(["-h", "-l", "-n", f])
        .output()
        .expect("readelf (binutils; scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "readelf: {}\n{text}",
        stderr(&out)
    );
    assert!(text.contains("CORE (Core file)"), "{text}");
    assert_eq!(text.matches("NT_PRSTATUS").count(), 2, "{text}");

    // gdb opens it with the guest's image: a thread per vCPU, in the guest's code, and the
    // memfill pattern at a guest address (the guest's page tables are the identity).
    let img = host.dir.path().join("guest.elf");
    std::fs::write(&img, rxen_testguest::image()).expect("write the guest image");
    let probe = free.div_ceil(8) * 8;
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "info threads", "-ex"])
        .arg(format!("x/1gx {probe:#x}"))
        .args([img.to_str().expect("utf-8"), f])
        .output()
        .expect("gdb (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gdb: {}\n{text}", stderr(&out));
    assert!(text.contains("LWP 2"), "two vCPUs, two threads: {text}");
    assert!(text.contains(" in rxen_guest::"), "{text}");
    let want = format!("{probe:#x}:\t{:#018x}", memfill_word(SEED, probe));
    assert!(text.contains(&want), "want {want:?} in: {text}");

    // An existing file is not replaced; the message is xl's.
    let out = host.rxl(&["dump-core", "core", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).ends_with("core dump failed (rc=-3)\n"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&file).expect("read"), data, "file untouched");
    let out = host.rxl(&["dump-core", "nosuch", f]);
    assert_eq!(
        stderr(&out),
        "nosuch is an invalid domain identifier (rc=-6)\n"
    );

    // A paused domain stays paused.
    host.rxl_ok(&["pause", "core"]);
    let second = host.dir.path().join("core2.elf");
    host.rxl_ok(&["dump-core", "core", second.to_str().expect("utf-8")]);
    let row = host.list_row("core").expect("core");
    assert!(row[4].contains('p'), "no longer paused: {row:?}");
    host.rxl_ok(&["destroy", "core"]);
}

#[test]
fn sysrq_sends_a_break_and_the_key_on_the_serial_console() {
    let host = Host::start();
    let mut con = host.create_guest("sysrq", 1, 12, "");
    con.sync();
    host.rxl_ok(&["sysrq", "sysrq", "h"]);
    con.wait_for("\nsysrq: h", WAIT);
    // The key was not typed: the console still reads lines as before.
    con.sync();
    // A key behind typed input comes after it, and the input goes on after it.
    con.type_text("heart");
    host.rxl_ok(&["sysrq", "sysrq", "s"]);
    con.wait_for("\nsysrq: s", WAIT);
    con.send("beat");
    con.wait_for("\nheartbeat ", WAIT);

    let out = host.rxl(&["sysrq", "sysrq", "hs"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "Invalid sysrq.\n\n");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("Usage: rxl [-vtT] sysrq <DOMAIN> <LETTER>"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = host.rxl(&["sysrq", "nosuch", "h"]);
    assert_eq!(
        stderr(&out),
        "nosuch is an invalid domain identifier (rc=-6)\n"
    );
}
