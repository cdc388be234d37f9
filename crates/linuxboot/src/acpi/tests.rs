//! Tests of the ACPI tables: structure, checksums, and what each table names.

use super::*;
use vm_memory::GuestMemoryMmap;

fn machine(vcpus: u8, slots: usize) -> Machine {
    Machine {
        vcpus,
        virtio: (0..slots)
            .map(|i| MmioSlot {
                base: 0xD000_0000 + (i as u32) * 0x1000,
                len: 0x1000,
                gsi: 5 + i as u32,
            })
            .collect(),
        ged_gsi: 23,
        serial: LegacyDevice {
            port: 0x3F8,
            len: 8,
            irq: 4,
        },
        keyboard: LegacyDevice {
            port: 0x60,
            len: 1,
            irq: 1,
        },
        rtc: LegacyDevice {
            port: 0x70,
            len: 2,
            irq: 8,
        },
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8"))
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
}

/// The table at guest address `at`, checked: its length and checksum.
fn table<'a>(all: &'a [u8], at: u64, sig: &[u8; 4]) -> &'a [u8] {
    let off = (at - RSDP_START) as usize;
    assert_eq!(&all[off..off + 4], sig);
    let len = u32_at(all, off + 4) as usize;
    let t = &all[off..off + len];
    assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(sig));
    t
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn rsdp_xsdt_fadt_madt_dsdt_link_up() {
    let m = machine(2, 16);
    let all = tables_bytes(RSDP_START, &m).expect("tables");
    assert_eq!(&all[..8], b"RSD PTR ");
    assert_eq!(sum(&all[..20]), 0);
    assert_eq!(sum(&all[..36]), 0);
    let xsdt = table(&all, u64_at(&all, 24), b"XSDT");
    assert_eq!(xsdt.len(), 36 + 16);
    let fadt = table(&all, u64_at(xsdt, 36), b"FACP");
    let madt = table(&all, u64_at(xsdt, 44), b"APIC");
    // FADT: hardware-reduced, X_DSDT, sleep control/status and reset registers in I/O space.
    let flags = u32_at(fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_eq!(fadt[116], 1, "reset register in I/O space");
    assert_eq!(u64_at(fadt, 120), u64::from(RESET_PORT));
    assert_eq!(fadt[128], RESET_VALUE);
    assert_eq!(u64_at(fadt, 244 + 4), u64::from(SLEEP_CONTROL_PORT));
    assert_eq!(u64_at(fadt, 256 + 4), u64::from(SLEEP_STATUS_PORT));
    assert_ne!(
        u16::from_le_bytes([fadt[109], fadt[110]]) & 2,
        0,
        "8042 present"
    );
    let dsdt = table(&all, u64_at(fadt, 140), b"DSDT");
    // MADT: two local APICs, the I/O APIC, the NMI entry.
    assert_eq!(u32_at(madt, 36), 0xFEE0_0000);
    assert_eq!(&madt[44..52], &[0, 8, 0, 0, 1, 0, 0, 0]);
    assert_eq!(&madt[52..60], &[0, 8, 1, 1, 1, 0, 0, 0]);
    assert_eq!(&madt[60..64], &[1, 12, 2, 0]);
    assert_eq!(u32_at(madt, 64), 0xFEC0_0000);
    assert_eq!(&madt[72..78], &[4, 6, 0xFF, 0, 0, 1]);
    assert_eq!(madt.len(), 78);
    // DSDT: one LNRO0005 per slot, the GED, the power button, \_S5_.
    assert_eq!(count(dsdt, b"LNRO0005"), 16);
    assert_eq!(count(dsdt, b"ACPI0013"), 1);
    assert_eq!(count(dsdt, b"ACPI0004"), 16);
    assert_eq!(count(dsdt, b"_S5_"), 1);
    assert_eq!(count(dsdt, b"_EVT"), 1);
    assert_eq!(count(dsdt, b"VR0F"), 1);
}

#[test]
fn every_vcpu_gets_a_local_apic() {
    for n in [1u8, 3, 64, 254] {
        let all = tables_bytes(RSDP_START, &machine(n, 4)).expect("tables");
        let xsdt = table(&all, u64_at(&all, 24), b"XSDT");
        let madt = table(&all, u64_at(xsdt, 44), b"APIC");
        assert_eq!(madt.len(), 44 + 8 * usize::from(n) + 12 + 6);
    }
}

#[test]
fn bad_machines_are_refused() {
    assert!(tables_bytes(RSDP_START, &machine(0, 1)).is_err());
    assert!(tables_bytes(RSDP_START, &machine(255, 1)).is_err());
    assert!(tables_bytes(RSDP_START, &machine(1, 17)).is_err());
}

#[test]
fn written_into_the_bios_area() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("mem");
    let at = write_acpi_tables(&mem, &machine(254, 16)).expect("write");
    assert_eq!(at, GuestAddress(RSDP_START));
    let mut sig = [0u8; 8];
    mem.read_slice(&mut sig, at).expect("read");
    assert_eq!(&sig, b"RSD PTR ");
    let mut stub = [0u8; 9];
    mem.read_slice(&mut stub, GuestAddress(RESET_VECTOR))
        .expect("read");
    // mov dx, 0x602; mov al, 1; out dx, al; hlt; jmp -3
    assert_eq!(stub, [0xBA, 0x02, 0x06, 0xB0, 0x01, 0xEE, 0xF4, 0xEB, 0xFD]);
}

/// ACPICA's disassembler (`iasl`, Debian's acpica-tools) reads the DSDT without errors and
/// finds what it should name.
#[test]
fn dsdt_disassembles_cleanly_with_iasl() {
    let out = std::process::Command::new("iasl")
        .arg("-v")
        .output()
        .expect("iasl (Debian's acpica-tools; scripts/test.sh installs it) must be installed");
    assert!(out.status.success() || !out.stdout.is_empty());
    let all = tables_bytes(RSDP_START, &machine(2, 16)).expect("tables");
    let xsdt = table(&all, u64_at(&all, 24), b"XSDT");
    let fadt = table(&all, u64_at(xsdt, 36), b"FACP");
    let dsdt = table(&all, u64_at(fadt, 140), b"DSDT");
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("dsdt.dat");
    std::fs::write(&path, dsdt).expect("write");
    let out = std::process::Command::new("iasl")
        .arg("-d")
        .arg(&path)
        .output()
        .expect("iasl");
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "iasl -d failed: {log}");
    let dsl = std::fs::read_to_string(dir.path().join("dsdt.dsl")).expect("dsl");
    for want in [
        "LNRO0005",
        "ACPI0013",
        "PNP0C0C",
        "PNP0501",
        "PNP0303",
        "PNP0B00",
        "_S5_",
        "Notify (\\_SB.PWRB, 0x80)",
    ] {
        assert!(dsl.contains(want), "{want} missing from\n{dsl}");
    }
}

#[test]
#[ignore = "development aid: writes the tables to /tmp/rxen-acpi"]
fn dump_tables() {
    let all = tables_bytes(RSDP_START, &machine(2, 16)).expect("tables");
    let xsdt = table(&all, u64_at(&all, 24), b"XSDT");
    let fadt = table(&all, u64_at(xsdt, 36), b"FACP");
    let madt = table(&all, u64_at(xsdt, 44), b"APIC");
    let dsdt = table(&all, u64_at(fadt, 140), b"DSDT");
    std::fs::create_dir_all("/tmp/rxen-acpi").expect("dir");
    for (n, t) in [("facp", fadt), ("apic", madt), ("dsdt", dsdt)] {
        std::fs::write(format!("/tmp/rxen-acpi/{n}.dat"), t).expect("write");
    }
}
