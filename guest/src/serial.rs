//! The console: a polled 16550 UART on COM1, shared by all vCPUs under a lock.

use core::fmt::{self, Write};
use core::hint::spin_loop;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::cpu::{inb, outb};

const BASE: u16 = 0x3F8;
const DATA: u16 = BASE;
const IER: u16 = BASE + 1;
const FCR: u16 = BASE + 2;
const LCR: u16 = BASE + 3;
const MCR: u16 = BASE + 4;
const LSR: u16 = BASE + 5;

const LSR_DATA_READY: u8 = 1 << 0;
const LSR_THR_EMPTY: u8 = 1 << 5;

/// Held while a vCPU writes a whole message, so lines from vCPUs never mix.
static LOCK: AtomicBool = AtomicBool::new(false);

/// Programs the UART: 115200 baud, 8N1, FIFOs on, no interrupts.
pub fn init() {
    outb(IER, 0x00);
    outb(LCR, 0x80); // DLAB on: the next two registers are the divisor
    outb(DATA, 0x01);
    outb(IER, 0x00);
    outb(LCR, 0x03); // 8 data bits, no parity, one stop bit, DLAB off
    outb(FCR, 0xC7); // enable and clear FIFOs, 14-byte trigger
    outb(MCR, 0x03); // DTR and RTS; OUT2 off, so the UART never interrupts
}

/// LSR: break interrupt, set with the NUL byte a BREAK condition leaves in the FIFO.
const LSR_BREAK: u8 = 1 << 4;

/// What the UART received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A byte.
    Byte(u8),
    /// A BREAK condition (its NUL byte is taken with it), as a terminal sends before a
    /// magic SysRq key.
    Break,
}

/// A BREAK seen in LSR while writing: reading LSR clears its BI bit, so it is kept here for the
/// next read of the byte it belongs to (as Linux's 8250 driver keeps `lsr_saved_flags`).
static SAVED_BREAK: AtomicBool = AtomicBool::new(false);

/// Reads LSR, keeping a BREAK it reports for [`try_read`].
fn read_lsr() -> u8 {
    let lsr = inb(LSR);
    if lsr & LSR_BREAK != 0 {
        SAVED_BREAK.store(true, Ordering::Relaxed);
    }
    lsr
}

/// Returns what was received, if anything is waiting.
pub fn try_read() -> Option<Received> {
    let lsr = read_lsr();
    if lsr & LSR_DATA_READY == 0 {
        return None;
    }
    let byte = inb(DATA);
    if SAVED_BREAK.swap(false, Ordering::Relaxed) {
        Some(Received::Break)
    } else {
        Some(Received::Byte(byte))
    }
}

fn write_byte(byte: u8) {
    // Bounded, so that a missing UART cannot hang the guest.
    for _ in 0..100_000 {
        if read_lsr() & LSR_THR_EMPTY != 0 {
            break;
        }
        spin_loop();
    }
    outb(DATA, byte);
}

/// Writes to the UART; used only while holding the console lock.
struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            write_byte(byte);
        }
        Ok(())
    }
}

/// Writes formatted text to the console, holding the lock for the whole message.
pub fn print(args: fmt::Arguments<'_>) {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        spin_loop();
    }
    let _ = Uart.write_fmt(args);
    LOCK.store(false, Ordering::Release);
}

/// Writes formatted text even if the lock looks stuck (for crash reports).
pub fn print_urgent(args: fmt::Arguments<'_>) {
    let mut taken = false;
    for _ in 0..10_000_000 {
        if LOCK
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            taken = true;
            break;
        }
        spin_loop();
    }
    let _ = Uart.write_fmt(args);
    if taken {
        LOCK.store(false, Ordering::Release);
    }
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::serial::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints to the console without a newline.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::serial::print(format_args!($($arg)*))
    };
}
