//! ACPI tables that describe an rxen machine to a guest kernel (RSDP, XSDT, FADT, MADT, DSDT).
//!
//! Built with the rust-vmm `acpi_tables` crate and written into the BIOS area of guest memory
//! (the RSDP at [`RSDP_START`], where Linux also looks for it by scanning, and through
//! `boot_params.acpi_rsdp_addr`). The machine is "hardware-reduced" in ACPI's sense: no PM1
//! blocks, no GPEs, no SCI. Instead:
//!
//! - power off: the FADT's sleep control register ([`SLEEP_CONTROL_PORT`]); `\_S5_` names
//!   sleep type [`S5_SLEEP_TYPE`];
//! - reboot: the FADT's reset register ([`RESET_PORT`], value [`RESET_VALUE`]);
//! - events from the host (the power button, devices coming and going): a generic event device
//!   (GED, `ACPI0013`) whose interrupt makes the guest run `_EVT`, which reads the event
//!   register ([`GED_EVENT_PORT`], cleared by the read) and notifies the power button
//!   (`PNP0C0C`), or the containers of the slots that gained a device ([`SLOT_CHANGED_PORT`]);
//! - the virtio-mmio transports: one `LNRO0005` device per slot, each inside a container
//!   (`ACPI0004`) of its own that is present while its bit in [`SLOT_PRESENT_PORT`] is set.
//!
//! The port and interrupt numbers are the contract with the VMM's devices (`docs/internals.md`).

mod dsdt;
mod madt;

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Where the RSDP is written: the start of the BIOS area Linux scans (0xE0000..0x100000).
pub const RSDP_START: u64 = 0x000E_0000;

/// The first of the ACPI platform ports.
pub const ACPI_PORT_BASE: u16 = 0x600;
/// Sleep control register (write u8): SLP_TYP in bits 2..4, SLP_EN in bit 5.
pub const SLEEP_CONTROL_PORT: u16 = ACPI_PORT_BASE;
/// Sleep status register (u8; reads 0, writes ignored).
pub const SLEEP_STATUS_PORT: u16 = ACPI_PORT_BASE + 1;
/// Reset register (write [`RESET_VALUE`] to reboot).
pub const RESET_PORT: u16 = ACPI_PORT_BASE + 2;
/// GED event register (read u32; reading clears the events it returns).
pub const GED_EVENT_PORT: u16 = ACPI_PORT_BASE + 4;
/// Virtio slot presence (read u32): bit i set while slot i holds a device the guest may use.
pub const SLOT_PRESENT_PORT: u16 = ACPI_PORT_BASE + 8;
/// Changed virtio slots (read u32; reading clears): bit i set when slot i gained a device.
pub const SLOT_CHANGED_PORT: u16 = ACPI_PORT_BASE + 12;
/// How many ports from [`ACPI_PORT_BASE`] the platform device answers.
pub const ACPI_PORT_LEN: u16 = 16;

/// The value of the reset register that reboots.
pub const RESET_VALUE: u8 = 1;
/// The sleep type `\_S5_` names (soft off).
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN: bit 5 of the sleep control register.
pub const SLEEP_ENABLE: u8 = 1 << 5;
/// GED event bit: the power button was pressed.
pub const GED_EVENT_POWER_BUTTON: u32 = 1 << 0;
/// GED event bit: a virtio slot gained a device (removals are not announced, see the VMM's
/// `devices::acpi::GedEvents::slots_now`).
pub const GED_EVENT_DEVICES: u32 = 1 << 1;

/// The OEM ID in every table.
pub const OEM_ID: [u8; 6] = *b"RXEN  ";
const OEM_REVISION: u32 = 1;
/// ACPI 6.5 tables; the DSDT revision 2 means 64-bit integers in AML.
pub(crate) const DSDT_REVISION: u8 = 2;

/// One virtio-mmio transport window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest physical address of the register window.
    pub base: u32,
    /// Length of the window in bytes.
    pub len: u32,
    /// Its interrupt (GSI, an I/O APIC pin; edge-triggered, active high).
    pub gsi: u32,
}

/// A legacy port-I/O device the DSDT names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyDevice {
    /// First port.
    pub port: u16,
    /// Number of ports.
    pub len: u8,
    /// Its ISA interrupt.
    pub irq: u8,
}

/// What the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// vCPUs present at boot (local APIC IDs 0..vcpus).
    pub vcpus: u8,
    /// Every virtio-mmio slot, occupied or not (at most 16).
    pub virtio: Vec<MmioSlot>,
    /// The GED's interrupt (GSI; edge-triggered, active high).
    pub ged_gsi: u32,
    /// COM1.
    pub serial: LegacyDevice,
    /// The i8042 keyboard controller (data port; the command port is data + 4).
    pub keyboard: LegacyDevice,
    /// The CMOS RTC.
    pub rtc: LegacyDevice,
}

/// Errors while building or writing the tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// The machine cannot be described (too many CPUs or slots).
    #[error("cannot describe the machine in ACPI: {0}")]
    BadMachine(String),
    /// The tables do not fit between [`RSDP_START`] and [`RESET_VECTOR`].
    #[error("the ACPI tables take {0} bytes, more than the BIOS area holds")]
    TooLarge(u64),
    /// Guest memory could not be written.
    #[error("cannot write the ACPI tables into guest memory at {0:#x}")]
    Write(u64),
}

fn aml_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

/// The FADT of a hardware-reduced machine whose DSDT is at `dsdt`.
fn fadt(dsdt: u64) -> Vec<u8> {
    let io8 = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            port.into(),
        )
    };
    let mut f = FADTBuilder::new(OEM_ID, *b"RXENFACP", OEM_REVISION)
        .dsdt_64(dsdt)
        .preferred_pm_profile(PmProfile::EnterpriseServer)
        .flag(Flags::HwReducedAcpi)
        // The power button is a control-method device (PNP0C0C), not a fixed one.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    f.sleep_control_reg = io8(SLEEP_CONTROL_PORT);
    f.sleep_status_reg = io8(SLEEP_STATUS_PORT);
    f.reset_reg = io8(RESET_PORT);
    f.reset_value = RESET_VALUE;
    // The CMOS RTC keeps the century in register 0x32.
    f.century = 0x32;
    // IA-PC boot architecture flags: an 8042 is present (so Linux probes its keyboard),
    // no VGA, no MSI, no ASPM controls.
    const BOOT_8042: u16 = 1 << 1;
    const BOOT_NO_VGA: u16 = 1 << 2;
    const BOOT_NO_MSI: u16 = 1 << 3;
    const BOOT_NO_ASPM: u16 = 1 << 4;
    f.iapc_boot_arch = (BOOT_8042 | BOOT_NO_VGA | BOOT_NO_MSI | BOOT_NO_ASPM).into();
    aml_bytes(&f.finalize())
}

/// The tables for `machine`, laid out from `base`: returns the bytes to write at `base`.
///
/// Layout: RSDP, XSDT, FADT, MADT, DSDT, each 16-byte aligned.
pub fn tables_bytes(base: u64, machine: &Machine) -> Result<Vec<u8>, AcpiError> {
    if machine.vcpus == 0 || machine.vcpus == u8::MAX {
        return Err(AcpiError::BadMachine(format!("{} vCPUs", machine.vcpus)));
    }
    if machine.virtio.len() > 16 {
        return Err(AcpiError::BadMachine(format!(
            "{} virtio slots (at most 16)",
            machine.virtio.len()
        )));
    }
    let madt = madt::madt_bytes(machine);
    let dsdt = dsdt::dsdt_bytes(machine);
    let rsdp_len = Rsdp::len() as u64;
    let xsdt_at = align16(base + rsdp_len);
    let xsdt_len = 36 + 2 * 8;
    let fadt_at = align16(xsdt_at + xsdt_len);
    let fadt_bytes_len = acpi_tables::fadt::FADT::len() as u64;
    let madt_at = align16(fadt_at + fadt_bytes_len);
    let dsdt_at = align16(madt_at + madt.len() as u64);
    let end = dsdt_at + dsdt.len() as u64;

    let mut xsdt = XSDT::new(OEM_ID, *b"RXENXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_at);
    xsdt.add_entry(madt_at);

    let mut out = vec![0u8; (end - base) as usize];
    let mut put = |at: u64, bytes: &[u8]| {
        let off = (at - base) as usize;
        out[off..off + bytes.len()].copy_from_slice(bytes);
    };
    put(base, &aml_bytes(&Rsdp::new(OEM_ID, xsdt_at)));
    put(xsdt_at, &aml_bytes(&xsdt));
    put(fadt_at, &fadt(dsdt_at));
    put(madt_at, &madt);
    put(dsdt_at, &dsdt);
    Ok(out)
}

/// The x86 reset vector (F000:FFF0), where a processor starts after a reset.
pub const RESET_VECTOR: u64 = 0x000F_FFF0;

/// Real-mode code for the reset vector: write [`RESET_VALUE`] to the reset register, then halt.
///
/// Linux on a hardware-reduced ACPI machine reboots through EFI (absent here) and then by
/// jumping to the BIOS's reset vector in real mode (`machine_real_restart`); with nothing
/// there the vCPU would run through zeroed memory forever. These bytes turn that jump into
/// the same reboot the ACPI reset register gives.
pub fn reset_stub() -> [u8; 9] {
    let [lo, hi] = RESET_PORT.to_le_bytes();
    [
        0xBA,
        lo,
        hi, // mov dx, RESET_PORT
        0xB0,
        RESET_VALUE, // mov al, RESET_VALUE
        0xEE,        // out dx, al
        0xF4,        // hlt
        0xEB,
        0xFD, // jmp to the hlt
    ]
}

/// Writes the tables for `machine` at [`RSDP_START`] and the reset stub at [`RESET_VECTOR`];
/// returns the RSDP's address.
pub fn write_acpi_tables<M: GuestMemoryBackend>(
    mem: &M,
    machine: &Machine,
) -> Result<GuestAddress, AcpiError> {
    let bytes = tables_bytes(RSDP_START, machine)?;
    let len = bytes.len() as u64;
    if RSDP_START + len > RESET_VECTOR {
        return Err(AcpiError::TooLarge(len));
    }
    mem.write_slice(&bytes, GuestAddress(RSDP_START))
        .map_err(|_| AcpiError::Write(RSDP_START))?;
    mem.write_slice(&reset_stub(), GuestAddress(RESET_VECTOR))
        .map_err(|_| AcpiError::Write(RESET_VECTOR))?;
    Ok(GuestAddress(RSDP_START))
}

#[cfg(test)]
mod tests;
