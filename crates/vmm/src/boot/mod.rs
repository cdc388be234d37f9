//! The x86_64 boot state shared by every kernel kind: GDT, identity page
//! tables, the test guest's boot info, and the initial vCPU registers.

pub mod acpi;
pub mod bootinfo;
pub mod gdt;
pub mod lapic;
pub mod paging;
pub mod regs;

/// Guest physical address of the GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Guest physical address of the test guest's `RxenBootInfo`.
pub const BOOT_INFO_ADDR: u64 = 0x6000;
/// Guest physical address of the PML4 (CR3).
pub const PML4_ADDR: u64 = 0x9000;
/// Guest physical address of the PDPT.
pub const PDPT_ADDR: u64 = 0xA000;
/// Guest physical address of the first page directory.
pub const PD_ADDR: u64 = 0xB000;
/// Guest physical address of the Linux command line: the page directories end below it.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Lowest guest physical address a kernel image may be loaded at.
pub const KERNEL_MIN_ADDR: u64 = 0x10_0000;
