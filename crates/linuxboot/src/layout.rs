//! The guest physical addresses used by the Linux boot protocol (see `docs/internals.md`).

/// Where the zero page (`boot_params`) is written; its address goes in RSI.
pub const BOOT_PARAMS_START: u64 = 0x7000;

/// Where the NUL-terminated kernel command line is written.
pub const CMDLINE_START: u64 = 0x2_0000;

/// Start of the extended BIOS data area (639 KiB), reserved in the e820 map up to 1 MiB.
pub const EBDA_START: u64 = 0x9_fc00;

/// Where the Intel MP table (floating pointer, then configuration table) is written.
pub const MPTABLE_START: u64 = EBDA_START;

/// Bytes available for the command line, NUL included (up to the EBDA).
pub const CMDLINE_MAX_SIZE: u64 = EBDA_START - CMDLINE_START;

/// Start of high memory (1 MiB): the kernel is loaded at or above it.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// Default load address of a bzImage protected-mode payload (`code32_start`).
pub const KERNEL_START: u64 = HIGH_MEMORY_START;

/// Offset of the 64-bit entry point from the start of a bzImage payload.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Start of the hole below 4 GiB (3 GiB); RAM beyond it continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xC000_0000;

/// End of the hole below 4 GiB (4 GiB), where the rest of RAM starts.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// Physical address of every local APIC.
pub const LAPIC_START: u32 = 0xFEE0_0000;

/// Physical address of the I/O APIC.
pub const IOAPIC_START: u32 = 0xFEC0_0000;

/// Guest page size, the alignment of the initrd.
pub const PAGE_SIZE: u64 = 0x1000;
