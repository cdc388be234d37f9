//! The PVH entry (Xen's `XEN_ELFNOTE_PHYS32_ENTRY`), so that QEMU (`-M microvm -kernel`) and
//! other PVH loaders can boot the guest: the 32-bit entry builds page tables and a GDT, enters
//! long mode, and joins `_start` with a boot info made from `hvm_start_info`.
//!
//! Everything here runs before `_start` clears `.bss`, so its statics live in `.data`.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::bootinfo::{RawBootInfo, MAGIC};
use crate::cpu::{cpuid, inb, outb, rdtsc};
use crate::entry::STACK_SIZE;

/// `hvm_start_info.magic`.
const START_INFO_MAGIC: u32 = 0x336E_C578;
/// E820 type of usable RAM.
const E820_RAM: u32 = 1;
/// Largest memory map taken into account.
const MAX_MEMMAP: u64 = 128;
/// PIT input clock in Hz.
const PIT_HZ: u64 = 1_193_182;

// The 32-bit entry: EBX = physical address of hvm_start_info, flat 32-bit protected mode,
// paging off, interrupts off. It builds identity page tables for the first 4 GiB (2 MiB
// pages), loads a GDT whose 0x08/0x10 match the rxen boot protocol, enables long mode, and
// calls `rxen_pvh_boot_info(start_info)` on vCPU 0's stack; then it enters `_start` as the
// rxen loader would (RDI = 0, RSI = the boot info).
global_asm!(
    r#"
    .section .text.pvh, "ax", @progbits
    .code32
    .global rxen_pvh_start
rxen_pvh_start:
    cli
    cld
    mov esi, ebx

    mov edi, offset rxen_pvh_pml4
    xor eax, eax
    mov ecx, 6 * 1024
    rep stosd

    mov edi, offset rxen_pvh_pml4
    mov eax, offset rxen_pvh_pdpt
    or eax, 3
    mov [edi], eax

    mov edi, offset rxen_pvh_pdpt
    mov eax, offset rxen_pvh_pd
    or eax, 3
    mov ecx, 4
6:
    mov [edi], eax
    add eax, 4096
    add edi, 8
    dec ecx
    jnz 6b

    mov edi, offset rxen_pvh_pd
    mov eax, 0x83
    mov ecx, 2048
7:
    mov [edi], eax
    add eax, 0x200000
    add edi, 8
    dec ecx
    jnz 7b

    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, offset rxen_pvh_pml4
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    lgdt [rxen_pvh_gdt_ptr]
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax
    .byte 0xEA
    .long rxen_pvh_long
    .word 0x08

    .code64
rxen_pvh_long:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov rsp, offset rxen_stacks + {stack_size}
    mov edi, esi
    call rxen_pvh_boot_info
    mov rsi, rax
    xor edi, edi
    xor esp, esp
    jmp _start

    .section .data.rxen_pvh_gdt, "aw", @progbits
    .balign 16
rxen_pvh_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
rxen_pvh_gdt_ptr:
    .word 3 * 8 - 1
    .long rxen_pvh_gdt

    .section .pvh_tables, "aw", @nobits
    .balign 4096
rxen_pvh_pml4:
    .skip 4096
rxen_pvh_pdpt:
    .skip 4096
rxen_pvh_pd:
    .skip 4 * 4096

    .section .note.rxen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad rxen_pvh_start
    .text
    "#,
    stack_size = const STACK_SIZE,
);

/// Set when the guest came in through the PVH entry (not the rxen loader).
#[link_section = ".data.rxen_pvh_flag"]
static VIA_PVH: AtomicBool = AtomicBool::new(false);

/// The boot info made from `hvm_start_info` (in `.data`: `_start` clears `.bss` after it is written).
#[link_section = ".data.rxen_pvh_boot_info"]
static mut PVH_BOOT_INFO: RawBootInfo = RawBootInfo {
    magic: 1,
    version: 0,
    vcpus: 0,
    mem_bytes: 0,
    tsc_khz: 0,
    kernel_end: 0,
};

/// Whether the guest was booted through the PVH entry.
pub fn booted_via_pvh() -> bool {
    VIA_PVH.load(Ordering::Relaxed)
}

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: callers pass addresses from hvm_start_info, which the loader placed in RAM
    // below 4 GiB (identity-mapped by the PVH page tables); reads have no side effects.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// Called from the PVH entry: turns `hvm_start_info` into an `RxenBootInfo`; returns its address.
#[no_mangle]
extern "C" fn rxen_pvh_boot_info(start_info: u64) -> u64 {
    VIA_PVH.store(true, Ordering::Relaxed);
    let mut mem_bytes = 0;
    if read::<u32>(start_info) == START_INFO_MAGIC && read::<u32>(start_info + 4) >= 1 {
        let memmap: u64 = read(start_info + 40);
        let entries = u64::from(read::<u32>(start_info + 48)).min(MAX_MEMMAP);
        for i in 0..entries {
            let entry = memmap + 24 * i;
            let (addr, size, kind): (u64, u64, u32) =
                (read(entry), read(entry + 8), read(entry + 16));
            if kind == E820_RAM {
                mem_bytes = mem_bytes.max(addr.saturating_add(size));
            }
        }
    }
    let info = RawBootInfo {
        magic: MAGIC,
        version: 1,
        vcpus: 1,
        mem_bytes,
        tsc_khz: tsc_khz(),
        kernel_end: 0,
    };
    let slot = core::ptr::addr_of_mut!(PVH_BOOT_INFO);
    // SAFETY: only vCPU 0 runs this, once, before anything reads the boot info.
    unsafe { slot.write(info) };
    slot as u64
}

/// The TSC frequency: CPUID 0x40000010 (hypervisor), 0x15, 0x16, else measured with the PIT.
fn tsc_khz() -> u64 {
    let (max_hv, ..) = cpuid(0x4000_0000);
    if (0x4000_0010..0x4001_0000).contains(&max_hv) {
        let (khz, ..) = cpuid(0x4000_0010);
        if khz != 0 {
            return u64::from(khz);
        }
    }
    let (max, ..) = cpuid(0);
    if max >= 0x15 {
        let (denominator, numerator, crystal_hz, _) = cpuid(0x15);
        if denominator != 0 && numerator != 0 && crystal_hz != 0 {
            return u64::from(crystal_hz) * u64::from(numerator) / u64::from(denominator) / 1000;
        }
    }
    if max >= 0x16 {
        let (base_mhz, ..) = cpuid(0x16);
        if base_mhz != 0 {
            return u64::from(base_mhz) * 1000;
        }
    }
    pit_tsc_khz().unwrap_or(1_000_000)
}

/// Reads PIT channel 0's counter.
fn pit_count() -> u16 {
    outb(0x43, 0x00);
    let low = inb(0x40);
    let high = inb(0x40);
    u16::from_le_bytes([low, high])
}

/// Measures the TSC against PIT channel 0 for about 20 ms.
fn pit_tsc_khz() -> Option<u64> {
    // Channel 0, low then high byte, mode 2 (rate generator), reload 65536.
    outb(0x43, 0x34);
    outb(0x40, 0);
    outb(0x40, 0);
    let target = PIT_HZ / 50;
    let mut last = pit_count();
    let start = rdtsc();
    let mut elapsed: u64 = 0;
    let mut unchanged: u64 = 0;
    while elapsed < target {
        let now = pit_count();
        if now == last {
            unchanged += 1;
            if unchanged > 10_000_000 {
                return None;
            }
            continue;
        }
        unchanged = 0;
        // The counter counts down and reloads at 0.
        elapsed += u64::from(last.wrapping_sub(now));
        last = now;
    }
    let cycles = rdtsc().wrapping_sub(start);
    Some(cycles.saturating_mul(PIT_HZ) / elapsed.max(1) / 1000)
}

/// Ends the machine under a PVH loader that ignores the rxen power port: a triple fault
/// (QEMU exits with `-no-reboot`, reboots without it).
pub fn triple_fault() -> ! {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let empty = Pointer { limit: 0, base: 0 };
    // SAFETY: deliberately loads an empty IDT and raises an exception, which the CPU cannot
    // deliver: the machine resets. Nothing runs after it. The spin between them lets PVM
    // leave the emulator it enters after `lidt` traps (it cannot emulate the fault).
    unsafe {
        core::arch::asm!(
            "lidt [{ptr}]",
            "mov ecx, 20000",
            "8:",
            "dec ecx",
            "jnz 8b",
            "ud2",
            ptr = in(reg) &empty,
            options(noreturn)
        )
    }
}
