//! The interrupt descriptor table: exceptions are fatal, the timer only wakes `hlt`, an NMI
//! is counted (and reported on the vCPU's next tick, see [`report_nmis`]).

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::cpu::{halt_forever, outb, rdmsr};
use crate::println;
use crate::serial::print_urgent;

/// The NMI vector.
pub const NMI_VECTOR: u8 = 2;

/// The APIC base MSR and its x2APIC-enabled bit.
const IA32_APIC_BASE: u32 = 0x1B;
const X2APIC_ENABLE: u64 = 1 << 10;

/// The x2APIC ID register (the vCPU index, by the rxen boot contract).
const X2APIC_ID_MSR: u32 = 0x802;

/// vCPUs whose NMIs are counted (the others' are ignored).
const MAX_NMI_CPUS: usize = 256;

/// The vector of the local APIC timer.
pub const TIMER_VECTOR: u8 = 0x20;

/// The APIC's spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// The pvpanic port: a non-zero write tells the VMM the guest crashed.
pub const PVPANIC_PORT: u16 = 0x505;

// Exception stubs push a dummy error code where the CPU pushes none, then the
// vector, and hand (vector, RIP) to `rxen_exception`, which never returns.
// The timer stub only signals end-of-interrupt (x2APIC EOI MSR) and returns;
// the vCPU loop checks the TSC itself. Other vectors are acknowledged and ignored.
// The NMI stub saves the registers a call may clobber (the guest has no SSE state), calls
// `rxen_nmi` with the stack 16-byte aligned (the CPU aligns it before pushing its 5-quadword
// frame; 9 pushes more make 0 mod 16) and returns with iretq, which also ends NMI blocking.
// An NMI can arrive at any instruction, so the guest is built without a red zone.
global_asm!(
    r#"
    .macro EXC_NOERR v
    .balign 16
exc_stub_\v:
    push 0
    push \v
    jmp exc_common
    .endm

    .macro EXC_ERR v
    .balign 16
exc_stub_\v:
    push \v
    jmp exc_common
    .endm

    .text
    EXC_NOERR 0
    EXC_NOERR 1
    EXC_NOERR 2
    EXC_NOERR 3
    EXC_NOERR 4
    EXC_NOERR 5
    EXC_NOERR 6
    EXC_NOERR 7
    EXC_ERR 8
    EXC_NOERR 9
    EXC_ERR 10
    EXC_ERR 11
    EXC_ERR 12
    EXC_ERR 13
    EXC_ERR 14
    EXC_NOERR 15
    EXC_NOERR 16
    EXC_ERR 17
    EXC_NOERR 18
    EXC_NOERR 19
    EXC_NOERR 20
    EXC_ERR 21
    EXC_NOERR 22
    EXC_NOERR 23
    EXC_NOERR 24
    EXC_NOERR 25
    EXC_NOERR 26
    EXC_NOERR 27
    EXC_NOERR 28
    EXC_ERR 29
    EXC_ERR 30
    EXC_NOERR 31

exc_common:
    cli
    mov rdi, [rsp]
    mov rsi, [rsp + 16]
    and rsp, -16
    call rxen_exception
1:
    cli
    hlt
    jmp 1b

    .balign 16
    .global rxen_timer_isr
rxen_timer_isr:
    push rax
    push rcx
    push rdx
    mov ecx, 0x80B
    xor eax, eax
    xor edx, edx
    wrmsr
    pop rdx
    pop rcx
    pop rax
    iretq

    .balign 16
    .global rxen_other_isr
rxen_other_isr:
    push rax
    push rcx
    push rdx
    mov ecx, 0x80B
    xor eax, eax
    xor edx, edx
    wrmsr
    pop rdx
    pop rcx
    pop rax
    iretq

    .balign 16
    .global rxen_nmi_isr
rxen_nmi_isr:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    cld
    call rxen_nmi
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq

    .balign 16
    .global rxen_spurious_isr
rxen_spurious_isr:
    iretq

    .section .rodata.rxen_exception_stubs, "a", @progbits
    .balign 8
    .global rxen_exception_stubs
rxen_exception_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_stub_\v
    .endr
    .text
    "#
);

extern "C" {
    static rxen_exception_stubs: [u64; 32];
    fn rxen_timer_isr();
    fn rxen_other_isr();
    fn rxen_spurious_isr();
    fn rxen_nmi_isr();
}

/// NMIs taken and not yet reported, per vCPU.
static NMIS: [AtomicU32; MAX_NMI_CPUS] = [const { AtomicU32::new(0) }; MAX_NMI_CPUS];

/// Called by the NMI stub. It only counts: it may have interrupted this vCPU inside a
/// `println!` that holds the console lock, so printing here could deadlock.
#[no_mangle]
extern "C" fn rxen_nmi() {
    // Before this vCPU has enabled its x2APIC (early boot) its ID cannot be read: dropped.
    if rdmsr(IA32_APIC_BASE) & X2APIC_ENABLE == 0 {
        return;
    }
    let cpu = rdmsr(X2APIC_ID_MSR) as usize;
    if let Some(n) = NMIS.get(cpu) {
        n.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints `nmi: cpu N` once for each NMI vCPU `cpu` took since the last call (each vCPU calls
/// this on its ticks, outside any interrupt handler).
pub fn report_nmis(cpu: usize) {
    let taken = NMIS.get(cpu).map_or(0, |n| n.swap(0, Ordering::Relaxed));
    for _ in 0..taken {
        println!("nmi: cpu {cpu}");
    }
}

/// Called by the exception stubs: reports the exception and signals pvpanic.
#[no_mangle]
extern "C" fn rxen_exception(vector: u64, rip: u64) -> ! {
    print_urgent(format_args!("exception {vector} at {rip:#x}\n"));
    outb(PVPANIC_PORT, 1);
    halt_forever()
}

/// 256 gate descriptors, two quadwords each.
struct Table(UnsafeCell<[u64; 512]>);

// SAFETY: written once by vCPU 0 before any other vCPU loads it, read-only after.
unsafe impl Sync for Table {}

static IDT: Table = Table(UnsafeCell::new([0; 512]));

fn gate(handler: u64) -> (u64, u64) {
    const CODE_SELECTOR: u64 = 0x08;
    const PRESENT_INTERRUPT_GATE: u64 = 0x8E;
    let low = (handler & 0xFFFF)
        | (CODE_SELECTOR << 16)
        | (PRESENT_INTERRUPT_GATE << 40)
        | (((handler >> 16) & 0xFFFF) << 48);
    (low, handler >> 32)
}

/// Fills the IDT; vCPU 0 calls this once, before releasing the other vCPUs.
pub fn build() {
    // SAFETY: the stub table is a constant in .rodata.
    let stubs = unsafe { core::ptr::addr_of!(rxen_exception_stubs).read() };
    let table = IDT.0.get();
    for vector in 0..256usize {
        let handler = match vector {
            v if v == usize::from(NMI_VECTOR) => rxen_nmi_isr as *const () as u64,
            0..=31 => stubs.get(vector).copied().unwrap_or(0),
            v if v == usize::from(TIMER_VECTOR) => rxen_timer_isr as *const () as u64,
            v if v == usize::from(SPURIOUS_VECTOR) => rxen_spurious_isr as *const () as u64,
            _ => rxen_other_isr as *const () as u64,
        };
        let (low, high) = gate(handler);
        // SAFETY: vector < 256, so both indices are inside the 512-entry
        // table; no other vCPU reads it until `build` has returned.
        unsafe {
            (*table)[2 * vector] = low;
            (*table)[2 * vector + 1] = high;
        }
    }
}

/// Loads the IDT on the calling vCPU.
pub fn load() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer {
        limit: (512 * 8 - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is fully built (see `build`) and lives forever.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) }
}
