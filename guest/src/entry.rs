//! The entry point every vCPU starts at, the per-vCPU stacks and the RXEN ELF note.

use core::arch::global_asm;

/// Most vCPUs the guest supports (one stack each).
pub const MAX_VCPUS: usize = 64;

/// Bytes of stack per vCPU.
pub const STACK_SIZE: usize = 32 * 1024;

// Every vCPU enters here in 64-bit mode with RDI = vCPU index, RSI = boot
// info address and RSP = 0. vCPU 0 zeroes .bss and then releases the others
// (the flag lives in .data, so it is valid before .bss is cleared). Each vCPU
// takes its own stack, enables SSE and calls `rxen_main(index, boot_info)`.
global_asm!(
    r#"
    .section .text.entry, "ax", @progbits
    .global _start
    .type _start, @function
_start:
    cli
    cld
    mov r8, rdi
    mov r9, rsi
    test r8, r8
    jnz 2f

    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    xor eax, eax
    rep stosb
    mov eax, 1
    xchg dword ptr [rip + rxen_bss_ready], eax
    jmp 3f

2:
    pause
    cmp dword ptr [rip + rxen_bss_ready], 0
    je 2b

3:
    cmp r8, {max_vcpus}
    jae 5f
    lea rax, [r8 + 1]
    imul rax, rax, {stack_size}
    lea rsp, [rip + rxen_stacks]
    add rsp, rax
    xor ebp, ebp

    mov rax, cr0
    and rax, ~(1 << 2)
    or rax, (1 << 1)
    mov cr0, rax
    mov rax, cr4
    or rax, (3 << 9)
    mov cr4, rax

    mov rdi, r8
    mov rsi, r9
    call rxen_main

5:
    cli
    hlt
    jmp 5b
    .size _start, . - _start

    .section .data.rxen_bss_ready, "aw", @progbits
    .balign 4
rxen_bss_ready:
    .long 0

    .section .stacks, "aw", @nobits
    .balign 4096
rxen_stacks:
    .skip {max_vcpus} * {stack_size}

    .section .note.rxen, "a", @note
    .balign 4
    .long 5
    .long 4
    .long 1
    .asciz "RXEN"
    .balign 4
    .long 1
    .balign 4
    .text
    "#,
    max_vcpus = const MAX_VCPUS,
    stack_size = const STACK_SIZE,
);
