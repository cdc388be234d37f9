//! COM1: a 16550A UART (vm-superio) at 0x3F8, interrupting on GSI 4 through an irqfd.

use std::io::Write;

use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::PioDevice;

/// First port of COM1.
pub const COM1_PORT: u16 = 0x3F8;
/// Number of COM1 ports.
pub const COM1_LEN: u16 = 8;
/// Interrupt line of COM1.
pub const COM1_GSI: u32 = 4;

/// Raises the UART interrupt by signalling an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Tells the console loop that the guest emptied the receive FIFO.
pub struct InputDrained(pub EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.0.write(1) {
            tracing::warn!("cannot signal serial input drain: {e}");
        }
    }
}

/// The UART's registers and receive FIFO, as saved in the stream's `serial` device record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSnapshot {
    /// Divisor latch, low and high bytes.
    pub divisor: [u8; 2],
    /// IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub regs: [u8; 7],
    /// Bytes received and not yet read by the guest.
    pub fifo: Vec<u8>,
    /// Console input typed but not yet in the FIFO (the VMM's queue).
    #[serde(default)]
    pub queued_input: Vec<u8>,
    /// Where a BREAK (`rxl sysrq`) waits before a byte of `queued_input`, in order.
    #[serde(default)]
    pub queued_breaks: Vec<usize>,
    /// A received BREAK whose BI bit the guest has not read yet from LSR.
    #[serde(default)]
    pub break_pending: bool,
}

/// LSR: break interrupt (a BREAK condition was received with the byte at the FIFO's head).
const LSR_BREAK: u8 = 1 << 4;
/// The offset of the line status register.
const LSR_OFFSET: u8 = 5;

/// The COM1 device on the port bus.
pub struct SerialDevice<W: Write + Send> {
    uart: Serial<IrqTrigger, InputDrained, W>,
    /// A BREAK was received (its NUL is at the FIFO's head) and the guest has not yet read
    /// LSR, whose BI bit it sets; reading LSR clears it, as on a 16550.
    break_pending: bool,
}

impl<W: Write + Send> SerialDevice<W> {
    /// Creates the UART; output goes to `out`.
    pub fn new(irq: EventFd, drained: EventFd, out: W) -> Self {
        Self {
            uart: Serial::with_events(IrqTrigger(irq), InputDrained(drained), out),
            break_pending: false,
        }
    }

    /// Creates the UART in a saved state.
    pub fn from_snapshot(
        irq: EventFd,
        drained: EventFd,
        out: W,
        snap: &SerialSnapshot,
    ) -> Result<Self, String> {
        let [ier, iir, lcr, lsr, mcr, msr, scr] = snap.regs;
        let state = SerialState {
            baud_divisor_low: snap.divisor[0],
            baud_divisor_high: snap.divisor[1],
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: snap.fifo.clone(),
        };
        let uart = Serial::from_state(&state, IrqTrigger(irq), InputDrained(drained), out)
            .map_err(|e| format!("serial state: {e:?}"))?;
        Ok(Self {
            uart,
            break_pending: snap.break_pending,
        })
    }

    /// The UART's state.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            divisor: [s.baud_divisor_low, s.baud_divisor_high],
            regs: [
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            fifo: s.in_buffer,
            queued_input: Vec::new(),
            queued_breaks: Vec::new(),
            break_pending: self.break_pending,
        }
    }

    /// Free room in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Puts as much of `input` into the receive FIFO as fits; returns how many bytes were taken.
    pub fn enqueue(&mut self, input: &[u8]) -> usize {
        if input.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("serial input: {e:?}");
                0
            }
        }
    }
}

impl<W: Write + Send> SerialDevice<W> {
    /// Receives a BREAK condition, as a 16550 does: a NUL byte in the FIFO with LSR's BI
    /// bit set until the guest reads LSR. Only into an empty FIFO, so that the NUL is the
    /// byte BI belongs to; false (nothing done) while the guest still has bytes to read.
    pub fn receive_break(&mut self) -> bool {
        if !self.uart.state().in_buffer.is_empty() || self.enqueue(&[0]) != 1 {
            return false;
        }
        self.break_pending = true;
        true
    }
}

impl<W: Write + Send> PioDevice for SerialDevice<W> {
    fn read(&mut self, _base: u16, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(off);
            if off == LSR_OFFSET && self.break_pending {
                *first |= LSR_BREAK;
                self.break_pending = false;
            }
        }
    }

    fn write(&mut self, _base: u16, offset: u16, data: &[u8]) {
        if let (Some(&v), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, v) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_input_and_interrupts() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("evt");
        let drained = EventFd::new(libc::EFD_NONBLOCK).expect("evt");
        let mut s = SerialDevice::new(
            irq.try_clone().expect("clone"),
            drained.try_clone().expect("clone"),
            Vec::new(),
        );
        // Enable the received-data interrupt, then feed two bytes.
        s.write(COM1_PORT, 1, &[1]);
        assert_eq!(s.enqueue(b"hi"), 2);
        assert!(irq.read().expect("irq") >= 1);
        let mut lsr = [0u8];
        s.read(COM1_PORT, 5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1);
        let mut b = [0u8];
        s.read(COM1_PORT, 0, &mut b);
        assert_eq!(b, [b'h']);
        s.read(COM1_PORT, 0, &mut b);
        assert_eq!(b, [b'i']);
        assert_eq!(drained.read().expect("drained"), 1);
        s.write(COM1_PORT, 0, b"x");
        assert_eq!(s.uart.writer(), b"x");
        // Out-of-range offsets are harmless.
        s.write(COM1_PORT, 300, &[1]);
        s.read(COM1_PORT, 300, &mut b);
    }

    #[test]
    fn a_break_is_a_nul_with_bi_until_lsr_is_read() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("evt");
        let drained = EventFd::new(libc::EFD_NONBLOCK).expect("evt");
        let mut s = SerialDevice::new(irq, drained, Vec::new());
        assert_eq!(s.enqueue(b"x"), 1);
        assert!(!s.receive_break(), "not behind unread input");
        let mut b = [0u8];
        s.read(COM1_PORT, 0, &mut b);
        assert!(s.receive_break());
        let mut lsr = [0u8];
        s.read(COM1_PORT, 5, &mut lsr);
        assert_eq!(lsr[0] & (LSR_BREAK | 1), LSR_BREAK | 1);
        s.read(COM1_PORT, 5, &mut lsr);
        assert_eq!(lsr[0] & LSR_BREAK, 0, "reading LSR cleared BI");
        s.read(COM1_PORT, 0, &mut b);
        assert_eq!(b, [0]);
    }
}
