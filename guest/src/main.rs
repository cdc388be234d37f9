//! rxen's paravirtual test guest: a small kernel that every vCPU enters in
//! 64-bit mode, with a console language for the host's tests
//! (see docs/internals.md in the rxen repository).

#![no_std]
#![no_main]

mod apic;
mod blkcmd;
mod bootinfo;
mod console;
mod cpu;
mod crc32;
mod devices;
mod dma;
mod entry;
mod freemem;
mod hotplug;
mod idt;
mod mailbox;
mod mem;
mod net;
mod netcmd;
mod pvh;
mod serial;
mod time;
mod vcpus;
mod virtio;
mod work;

use core::hint::spin_loop;
use core::sync::atomic::Ordering;

use crate::apic::{Mode, Timer};
use crate::bootinfo::{BootInfo, BootInfoError};
use crate::cpu::{halt_forever, outb};
use crate::idt::PVPANIC_PORT;
use crate::mailbox::{CHECKED_IN, SETUP_DONE};
use crate::work::Vcpu;

/// The Rust entry point, called from `_start` on every vCPU with its own stack.
#[no_mangle]
extern "C" fn rxen_main(index: u64, boot_info: u64) -> ! {
    let index = index as usize;
    if index == 0 {
        setup(boot_info);
    } else {
        while !SETUP_DONE.load(Ordering::Acquire) {
            spin_loop();
        }
    }
    idt::load();
    let mode = if apic::has_deadline_timer() {
        Mode::Deadline
    } else {
        Mode::Polling
    };
    let timer = Timer::start(mailbox::boot_info().tsc_khz, mode);
    let vcpu = Vcpu::new(index, timer);
    CHECKED_IN.fetch_add(1, Ordering::AcqRel);
    if index == 0 {
        console::run(vcpu)
    } else {
        let mut vcpu = vcpu;
        vcpu.run_secondary()
    }
}

/// vCPU 0's one-time setup: console, boot info, interrupt controllers, IDT.
fn setup(boot_info: u64) {
    serial::init();
    let info = match BootInfo::read(boot_info) {
        Ok(info) => info,
        Err(error) => {
            match error {
                BootInfoError::BadMagic(magic) => {
                    println!("rxen testguest: bad boot info magic {magic:#x} at {boot_info:#x}")
                }
                BootInfoError::BadVersion(version) => {
                    println!("rxen testguest: unsupported boot info version {version}")
                }
            }
            outb(PVPANIC_PORT, 1);
            halt_forever();
        }
    };
    // Mask both 8259 PICs: only the local APIC timer may interrupt.
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
    idt::build();
    mailbox::set_boot_info(info);
    vcpus::init();
    if !apic::has_deadline_timer() {
        println!("rxen testguest: no x2APIC TSC-deadline timer, polling with pause");
    }
    SETUP_DONE.store(true, Ordering::Release);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    serial::print_urgent(format_args!("rxen testguest: {info}\n"));
    outb(PVPANIC_PORT, 1);
    halt_forever()
}
