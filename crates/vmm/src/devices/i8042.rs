//! The i8042 PS/2 controller on ports 0x60/0x64 with an AT keyboard behind it and no AUX port.
//!
//! Modelled on what Linux's `i8042.c` and `atkbd.c` expect, so that a stock
//! kernel probes it at once (no timeouts) and the host can send Ctrl-Alt-Del:
//!
//! * Status (read 0x64): OBF (bit 0) while a byte waits in the output buffer,
//!   IBF (bit 1) never (every write is handled at once), SYS (bit 2) as the
//!   command byte's SYS bit, CMD/DATA (bit 3) for the last port written,
//!   "not inhibited" (bit 4, or Linux warns about a keylock), AUX data (bit 5)
//!   never.
//! * The command byte (CTR) starts as [`DEFAULT_CTR`]: keyboard interrupt on,
//!   SYS set, translation (XLATE) **off**. Linux keeps a firmware's untranslated
//!   setting (`i8042_direct`), so the keyboard stays in its power-on scan code
//!   set 2 and its bytes reach `atkbd` untouched; the VMM needs no translation
//!   table. A guest that turns XLATE on gets set 1 codes instead.
//! * No AUX port: the loopback command 0xD3 answers on the keyboard side (AUX
//!   data bit clear) and the AUX interface test 0xA9 reports a stuck clock line,
//!   which makes `i8042_check_aux` give up after two commands instead of waiting
//!   for timeouts.
//! * Output goes through one bounded queue ([`FIFO_CAPACITY`] bytes with the
//!   output buffer) that feeds the output buffer one byte at a time: the next
//!   byte moves in when the guest has read the previous one. Each time a byte
//!   moves in while the CTR's keyboard interrupt bit is set, the device writes 1
//!   to its irqfd (IRQ 1, edge).
//! * Reboot: controller command 0xFE (as Linux resets the machine; any pulse
//!   command 0xF0-0xFE with bit 0 clear pulses the reset line; 0xFF, Linux's
//!   null command, does nothing) or an output port write (0xD1) with bit 0
//!   clear.

use std::collections::VecDeque;
use std::sync::Arc;

use rxen_proto::vmspec::ExitReason;
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use super::pio_bus::BytePortDevice;
use crate::exit::ExitSignal;

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Command/status port.
pub const COMMAND_PORT: u16 = 0x64;
/// The keyboard's interrupt line (ISA IRQ 1).
pub const KEYBOARD_GSI: u32 = 1;
/// Most bytes waiting for the guest, the output buffer included.
pub const FIFO_CAPACITY: usize = 16;
/// The command byte at power-on: keyboard interrupt, SYS flag, no translation.
pub const DEFAULT_CTR: u8 = CTR_KBD_INT | CTR_SYS;

// Status register bits.
const STS_OBF: u8 = 0x01;
const STS_SYS: u8 = 0x04;
const STS_CMD: u8 = 0x08;
const STS_NOT_INHIBITED: u8 = 0x10;

// Command byte (CTR) bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DIS: u8 = 0x10;
const CTR_AUX_DIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

// Output port bits.
const OUT_RESET: u8 = 0x01;
const OUT_A20: u8 = 0x02;

// Controller answers.
const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
/// AUX interface test: "clock line stuck high", i.e. nothing there.
const AUX_TEST_NO_PORT: u8 = 0x02;

// Keyboard answers.
const KBD_ACK: u8 = 0xFA;
const KBD_BAT_OK: u8 = 0xAA;
const KBD_ECHO: u8 = 0xEE;
const KBD_ID: [u8; 2] = [0xAB, 0x83];
/// The ID's second byte as a translating controller passes it on.
const KBD_ID_XLATED: u8 = 0x41;
const KBD_DEFAULT_SET: u8 = 2;
const KBD_DEFAULT_TYPEMATIC: u8 = 0x2B;

/// Left Ctrl, Left Alt, Delete pressed, then released in reverse order.
const CAD_SET1: &[u8] = &[0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D];
const CAD_SET2: &[u8] = &[
    0x14, 0x11, 0xE0, 0x71, 0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14,
];
const CAD_SET3: &[u8] = &[0x11, 0x19, 0x64, 0xF0, 0x64, 0xF0, 0x19, 0xF0, 0x11];

/// Where the next byte written to the data port goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
enum DataTarget {
    /// To the keyboard (no controller command pending).
    #[default]
    Keyboard,
    /// The command byte (command 0x60).
    Ctr,
    /// The output port (command 0xD1).
    OutputPort,
    /// The output buffer, as if the keyboard had sent it (command 0xD2).
    KbdOutput,
    /// The AUX loopback (command 0xD3); answered on the keyboard side.
    AuxLoopback,
    /// Dropped: the AUX device (0xD4) or controller RAM (0x61..0x7F).
    Discard,
}

/// The argument the keyboard waits for after a two-byte command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
enum KbdArg {
    /// None: the next byte is a command.
    #[default]
    None,
    /// LED state (after 0xED).
    Leds,
    /// Typematic rate and delay (after 0xF3).
    Typematic,
    /// Scan code set, 0 to query (after 0xF0).
    ScanSet,
}

/// The whole state of the controller and its keyboard, for save/restore and migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042State {
    /// The command byte.
    ctr: u8,
    /// The output port (bit 0 reset line, bit 1 A20).
    output_port: u8,
    /// The last write went to the command port (status bit 3).
    last_write_cmd: bool,
    /// The output buffer register (still readable once read).
    data: u8,
    /// The output buffer holds a byte the guest has not read.
    obf: bool,
    /// That byte came from the keyboard (not a controller answer).
    data_from_kbd: bool,
    /// Keyboard bytes waiting for the output buffer.
    queue: VecDeque<u8>,
    /// Where the next data port write goes.
    target: DataTarget,
    /// The keyboard sends key codes (0xF4/0xF5).
    scanning: bool,
    /// The keyboard's scan code set (1 to 3).
    scan_set: u8,
    /// The keyboard's LEDs.
    leds: u8,
    /// The keyboard's typematic rate and delay.
    typematic: u8,
    /// The argument the keyboard waits for.
    kbd_arg: KbdArg,
}

impl Default for I8042State {
    fn default() -> Self {
        Self {
            ctr: DEFAULT_CTR,
            output_port: OUT_RESET | OUT_A20,
            last_write_cmd: false,
            data: 0,
            obf: false,
            data_from_kbd: false,
            queue: VecDeque::new(),
            target: DataTarget::Keyboard,
            scanning: true,
            scan_set: KBD_DEFAULT_SET,
            leds: 0,
            typematic: KBD_DEFAULT_TYPEMATIC,
            kbd_arg: KbdArg::None,
        }
    }
}

impl I8042State {
    /// Bytes waiting for the guest, the output buffer included.
    fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.obf)
    }
}

/// The i8042 on ports 0x60 and 0x64.
pub struct I8042 {
    exit: Arc<ExitSignal>,
    irq: EventFd,
    s: I8042State,
}

impl I8042 {
    /// Creates the controller at power-on; a reset goes to `exit`, IRQ 1 to the irqfd `irq`.
    pub fn new(exit: Arc<ExitSignal>, irq: EventFd) -> Self {
        Self {
            exit,
            irq,
            s: I8042State::default(),
        }
    }

    /// Creates the controller in a saved state; raises IRQ 1 again if a byte was waiting.
    pub fn from_snapshot(exit: Arc<ExitSignal>, irq: EventFd, state: &I8042State) -> Self {
        let mut s = state.clone();
        if !(1..=3).contains(&s.scan_set) {
            s.scan_set = KBD_DEFAULT_SET;
        }
        while s.pending() > FIFO_CAPACITY {
            s.queue.pop_back();
        }
        let mut dev = Self { exit, irq, s };
        if dev.s.obf {
            dev.raise();
        } else {
            dev.refill();
        }
        dev
    }

    /// The controller's and keyboard's state.
    pub fn snapshot(&self) -> I8042State {
        self.s.clone()
    }

    /// Queues Ctrl-Alt-Del (press and release) in the scan codes the guest gets.
    ///
    /// Returns false, queuing nothing, if the keyboard is not scanning (the
    /// guest disabled it, e.g. while its driver probes) or the queue lacks room.
    pub fn send_ctrl_alt_del(&mut self) -> bool {
        if !self.s.scanning {
            return false;
        }
        let seq = if self.s.ctr & CTR_XLATE != 0 {
            CAD_SET1
        } else {
            match self.s.scan_set {
                1 => CAD_SET1,
                3 => CAD_SET3,
                _ => CAD_SET2,
            }
        };
        if self.s.pending() + seq.len() > FIFO_CAPACITY {
            return false;
        }
        self.kbd_send(seq);
        true
    }

    /// Signals IRQ 1 if the command byte enables the keyboard interrupt.
    fn raise(&self) {
        if self.s.ctr & CTR_KBD_INT != 0 {
            if let Err(e) = self.irq.write(1) {
                tracing::warn!("i8042: cannot raise IRQ 1: {e}");
            }
        }
    }

    /// Moves the next keyboard byte into an empty output buffer.
    fn refill(&mut self) {
        if self.s.obf || self.s.ctr & CTR_KBD_DIS != 0 {
            return;
        }
        if let Some(b) = self.s.queue.pop_front() {
            self.s.data = b;
            self.s.obf = true;
            self.s.data_from_kbd = true;
            self.raise();
        }
    }

    /// The keyboard sends `bytes`; what does not fit is lost.
    fn kbd_send(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.s.pending() >= FIFO_CAPACITY {
                tracing::debug!("i8042: keyboard queue full, byte {b:#04x} lost");
                break;
            }
            self.s.queue.push_back(b);
        }
        self.refill();
    }

    /// Puts a controller answer into the output buffer, ahead of the keyboard's bytes.
    fn reply(&mut self, b: u8) {
        if self.s.obf && self.s.data_from_kbd {
            // The keyboard byte was not read yet: it goes back to the head of the queue.
            self.s.queue.push_front(self.s.data);
        }
        self.s.data = b;
        self.s.obf = true;
        self.s.data_from_kbd = false;
        while self.s.pending() > FIFO_CAPACITY {
            self.s.queue.pop_back();
        }
        self.raise();
    }

    fn reset_machine(&self) {
        self.exit.request(ExitReason::Reboot, "i8042 reset");
    }

    fn set_ctr(&mut self, v: u8) {
        let old = self.s.ctr;
        self.s.ctr = v;
        if self.s.obf && old & CTR_KBD_INT == 0 {
            // The interrupt line rises now that it is enabled.
            self.raise();
        }
        self.refill();
    }

    fn status(&self) -> u8 {
        let mut st = STS_NOT_INHIBITED;
        if self.s.obf {
            st |= STS_OBF;
        }
        if self.s.ctr & CTR_SYS != 0 {
            st |= STS_SYS;
        }
        if self.s.last_write_cmd {
            st |= STS_CMD;
        }
        st
    }

    fn read_data(&mut self) -> u8 {
        let v = self.s.data;
        if self.s.obf {
            self.s.obf = false;
            self.s.data_from_kbd = false;
            self.refill();
        }
        v
    }

    fn command(&mut self, cmd: u8) {
        self.s.last_write_cmd = true;
        // A new command cancels one still waiting for its data byte.
        self.s.target = DataTarget::Keyboard;
        match cmd {
            0x20 => self.reply(self.s.ctr),
            0x21..=0x3F => self.reply(0),
            0x60 => self.s.target = DataTarget::Ctr,
            0x61..=0x7F => self.s.target = DataTarget::Discard,
            0xA7 => self.s.ctr |= CTR_AUX_DIS,
            0xA8 => self.s.ctr &= !CTR_AUX_DIS,
            0xA9 => self.reply(AUX_TEST_NO_PORT),
            0xAA => self.reply(SELF_TEST_OK),
            0xAB => self.reply(PORT_TEST_OK),
            0xAD => self.s.ctr |= CTR_KBD_DIS,
            0xAE => {
                self.s.ctr &= !CTR_KBD_DIS;
                self.refill();
            }
            0xD0 => self.reply(self.s.output_port),
            0xD1 => self.s.target = DataTarget::OutputPort,
            0xD2 => self.s.target = DataTarget::KbdOutput,
            0xD3 => self.s.target = DataTarget::AuxLoopback,
            0xD4 => self.s.target = DataTarget::Discard,
            // Pulse output port lines 0-3 low where the command's bit is 0; bit 0 is reset.
            0xF0..=0xFF if cmd & 1 == 0 => self.reset_machine(),
            0xF0..=0xFF => {}
            _ => tracing::debug!("i8042: unsupported controller command {cmd:#04x}"),
        }
    }

    fn write_data(&mut self, v: u8) {
        self.s.last_write_cmd = false;
        match std::mem::take(&mut self.s.target) {
            DataTarget::Keyboard => self.kbd_command(v),
            DataTarget::Ctr => self.set_ctr(v),
            DataTarget::OutputPort => {
                self.s.output_port = v;
                if v & OUT_RESET == 0 {
                    self.reset_machine();
                }
            }
            DataTarget::KbdOutput | DataTarget::AuxLoopback => self.reply(v),
            DataTarget::Discard => {}
        }
    }

    fn kbd_defaults(&mut self) {
        self.s.leds = 0;
        self.s.typematic = KBD_DEFAULT_TYPEMATIC;
    }

    /// A byte for the keyboard: a command, or the argument of the previous one.
    fn kbd_command(&mut self, v: u8) {
        let xlate = self.s.ctr & CTR_XLATE != 0;
        match std::mem::take(&mut self.s.kbd_arg) {
            KbdArg::Leds => {
                self.s.leds = v & 0x07;
                return self.kbd_send(&[KBD_ACK]);
            }
            KbdArg::Typematic => {
                self.s.typematic = v & 0x7F;
                return self.kbd_send(&[KBD_ACK]);
            }
            KbdArg::ScanSet => {
                if v == 0 {
                    let set = self.s.scan_set;
                    // A translating controller passes on the set number translated.
                    let code = match (xlate, set) {
                        (false, _) => set,
                        (true, 1) => 0x43,
                        (true, 3) => 0x3F,
                        (true, _) => 0x41,
                    };
                    return self.kbd_send(&[KBD_ACK, code]);
                }
                if (1..=3).contains(&v) {
                    self.s.scan_set = v;
                }
                return self.kbd_send(&[KBD_ACK]);
            }
            KbdArg::None => {}
        }
        match v {
            0xED => {
                self.s.kbd_arg = KbdArg::Leds;
                self.kbd_send(&[KBD_ACK]);
            }
            0xEE => self.kbd_send(&[KBD_ECHO]),
            0xF0 => {
                self.s.kbd_arg = KbdArg::ScanSet;
                self.kbd_send(&[KBD_ACK]);
            }
            0xF2 => {
                let second = if xlate { KBD_ID_XLATED } else { KBD_ID[1] };
                self.kbd_send(&[KBD_ACK, KBD_ID[0], second]);
            }
            0xF3 => {
                self.s.kbd_arg = KbdArg::Typematic;
                self.kbd_send(&[KBD_ACK]);
            }
            0xF4 => {
                self.s.queue.clear();
                self.s.scanning = true;
                self.kbd_send(&[KBD_ACK]);
            }
            0xF5 => {
                self.s.queue.clear();
                self.s.scanning = false;
                self.kbd_defaults();
                self.kbd_send(&[KBD_ACK]);
            }
            0xF6 => {
                self.s.queue.clear();
                self.kbd_defaults();
                self.kbd_send(&[KBD_ACK]);
            }
            0xFF => {
                self.s.queue.clear();
                self.s.scanning = true;
                self.s.scan_set = KBD_DEFAULT_SET;
                self.kbd_defaults();
                self.kbd_send(&[KBD_ACK, KBD_BAT_OK]);
            }
            _ => self.kbd_send(&[KBD_ACK]),
        }
    }
}

impl BytePortDevice for I8042 {
    fn read_port(&mut self, port: u16) -> u8 {
        match port {
            DATA_PORT => self.read_data(),
            COMMAND_PORT => self.status(),
            _ => 0xFF,
        }
    }

    fn write_port(&mut self, port: u16, v: u8) {
        match port {
            DATA_PORT => self.write_data(v),
            COMMAND_PORT => self.command(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::PioDevice;

    fn evt() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
    }

    /// A controller, its exit signal, and the other end of its irqfd.
    fn dev() -> (I8042, Arc<ExitSignal>, EventFd) {
        let exit = Arc::new(ExitSignal::new().expect("exit"));
        let irq = evt();
        let k = I8042::new(exit.clone(), irq.try_clone().expect("clone"));
        (k, exit, irq)
    }

    /// Interrupts raised since the last call.
    fn irqs(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    fn inb(k: &mut I8042, port: u16) -> u8 {
        let mut b = [0u8];
        k.read(port, 0, &mut b);
        b[0]
    }

    fn outb(k: &mut I8042, port: u16, v: u8) {
        k.write(port, 0, &[v]);
    }

    /// What Linux's `__i8042_command` does: command, parameters, then one read per result.
    fn command(k: &mut I8042, cmd: u8, params: &[u8], results: usize) -> Vec<u8> {
        assert_eq!(inb(k, COMMAND_PORT) & 0x02, 0, "IBF never set");
        outb(k, COMMAND_PORT, cmd);
        for &p in params {
            outb(k, DATA_PORT, p);
        }
        (0..results)
            .map(|_| {
                assert_ne!(inb(k, COMMAND_PORT) & STS_OBF, 0, "answer to {cmd:#x}");
                inb(k, DATA_PORT)
            })
            .collect()
    }

    /// Everything in the output buffer, read the way `i8042_flush` does.
    fn drain(k: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while inb(k, COMMAND_PORT) & STS_OBF != 0 {
            out.push(inb(k, DATA_PORT));
            assert!(out.len() <= FIFO_CAPACITY, "output never ends");
        }
        out
    }

    #[test]
    fn reset_command_reboots() {
        let exit = Arc::new(ExitSignal::new().expect("exit"));
        let mut k = I8042::new(exit.clone(), evt());
        k.write(DATA_PORT, 0, &[0xFE]);
        k.write(COMMAND_PORT, 0, &[0x20]);
        assert!(!exit.is_requested());
        k.write(COMMAND_PORT, 0, &[0xFE]);
        assert_eq!(exit.record().map(|r| r.reason), Some(ExitReason::Reboot));
    }

    #[test]
    fn linux_null_command_and_a20_do_not_reset() {
        let (mut k, exit, _irq) = dev();
        // i8042_platform_init: A20 on through the output port, then the null command.
        command(&mut k, 0xD1, &[0xDF], 0);
        command(&mut k, 0xFF, &[], 0);
        assert!(!exit.is_requested());
        assert_eq!(command(&mut k, 0xD0, &[], 1), vec![0xDF]);
        command(&mut k, 0xD1, &[0xDE], 0);
        assert_eq!(exit.record().map(|r| r.reason), Some(ExitReason::Reboot));
    }

    #[test]
    fn linux_probe_sequence() {
        let (mut k, exit, irq) = dev();
        let st = inb(&mut k, COMMAND_PORT);
        assert_eq!(st & STS_OBF, 0, "nothing to flush at power-on");
        assert_ne!(st & STS_NOT_INHIBITED, 0, "no keylock");
        assert_ne!(st & STS_SYS, 0);
        // i8042_controller_selftest.
        assert_eq!(command(&mut k, 0xAA, &[], 1), vec![0x55]);
        // i8042_controller_init: two equal CTR reads, then write it back.
        let ctr = command(&mut k, 0x20, &[], 1)[0];
        assert_eq!(command(&mut k, 0x20, &[], 1)[0], ctr);
        assert_eq!(ctr, DEFAULT_CTR);
        assert_eq!(ctr & CTR_XLATE, 0, "untranslated: Linux goes direct");
        let ctr = (ctr | CTR_KBD_DIS) & !CTR_KBD_INT;
        command(&mut k, 0x60, &[ctr], 0);
        assert_eq!(command(&mut k, 0x20, &[], 1), vec![ctr]);
        assert_eq!(inb(&mut k, COMMAND_PORT) & STS_CMD, STS_CMD);
        assert!(drain(&mut k).is_empty());
        irqs(&irq);
        // i8042_check_aux: loopback answers without the AUX bit (auxerr, byte left
        // unread), then the AUX test says the port is not there.
        outb(&mut k, COMMAND_PORT, 0xD3);
        outb(&mut k, DATA_PORT, 0x5A);
        let st = inb(&mut k, COMMAND_PORT);
        assert_eq!(st & (STS_OBF | 0x20), STS_OBF);
        let aux = command(&mut k, 0xA9, &[], 1)[0];
        assert!(aux != 0 && aux != 0xFA && aux != 0xFF, "{aux:#x}");
        assert!(drain(&mut k).is_empty(), "the loopback byte was replaced");
        // Keyboard port test.
        assert_eq!(command(&mut k, 0xAB, &[], 1), vec![0x00]);
        assert_eq!(irqs(&irq), 0, "keyboard interrupt off while probing");
        // i8042_enable_kbd_port, then atkbd_probe's GET ID through interrupts.
        let ctr = (ctr & !CTR_KBD_DIS) | CTR_KBD_INT;
        command(&mut k, 0x60, &[ctr], 0);
        outb(&mut k, DATA_PORT, 0xF2);
        let mut got = Vec::new();
        for _ in 0..3 {
            assert_eq!(irqs(&irq), 1, "one interrupt per byte");
            assert_eq!(inb(&mut k, COMMAND_PORT) & STS_CMD, 0);
            got.push(inb(&mut k, DATA_PORT));
        }
        assert_eq!(got, vec![0xFA, 0xAB, 0x83]);
        assert_eq!(irqs(&irq), 0);
        assert!(drain(&mut k).is_empty());
        // atkbd: deactivate, LEDs, typematic rate, activate; each byte ACKed.
        for b in [0xF5, 0xED, 0x00, 0xF3, 0x20, 0xF4] {
            outb(&mut k, DATA_PORT, b);
            assert_eq!(drain(&mut k), vec![0xFA], "after {b:#x}");
        }
        outb(&mut k, DATA_PORT, 0xEE);
        assert_eq!(drain(&mut k), vec![0xEE]);
        outb(&mut k, DATA_PORT, 0xFF);
        assert_eq!(drain(&mut k), vec![0xFA, 0xAA]);
        assert!(!exit.is_requested());
    }

    #[test]
    fn scan_code_set_query_and_change() {
        let (mut k, _exit, _irq) = dev();
        outb(&mut k, DATA_PORT, 0xF0);
        outb(&mut k, DATA_PORT, 0x00);
        assert_eq!(drain(&mut k), vec![0xFA, 0xFA, 0x02]);
        outb(&mut k, DATA_PORT, 0xF0);
        outb(&mut k, DATA_PORT, 0x01);
        assert_eq!(drain(&mut k), vec![0xFA, 0xFA]);
        outb(&mut k, DATA_PORT, 0xF0);
        outb(&mut k, DATA_PORT, 0x00);
        assert_eq!(drain(&mut k), vec![0xFA, 0xFA, 0x01]);
        assert!(k.send_ctrl_alt_del());
        assert_eq!(drain(&mut k), CAD_SET1);
    }

    fn enable_kbd_irq(k: &mut I8042) {
        command(k, 0x60, &[CTR_KBD_INT | CTR_SYS], 0);
    }

    #[test]
    fn ctrl_alt_del_arrives_in_order_one_interrupt_per_byte() {
        let (mut k, _exit, irq) = dev();
        enable_kbd_irq(&mut k);
        irqs(&irq);
        assert!(k.send_ctrl_alt_del());
        let want = [
            0x14, 0x11, 0xE0, 0x71, 0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14,
        ];
        let mut got = Vec::new();
        for _ in 0..want.len() {
            assert_eq!(irqs(&irq), 1, "interrupt for byte {}", got.len());
            // Status reads do not consume anything.
            assert_eq!(inb(&mut k, COMMAND_PORT) & STS_OBF, STS_OBF);
            assert_eq!(inb(&mut k, COMMAND_PORT) & STS_OBF, STS_OBF);
            got.push(inb(&mut k, DATA_PORT));
        }
        assert_eq!(got, want);
        assert_eq!(irqs(&irq), 0);
        assert_eq!(inb(&mut k, COMMAND_PORT) & STS_OBF, 0);
    }

    #[test]
    fn ctrl_alt_del_in_set_1_when_translating() {
        let (mut k, _exit, irq) = dev();
        command(&mut k, 0x60, &[CTR_KBD_INT | CTR_SYS | CTR_XLATE], 0);
        outb(&mut k, DATA_PORT, 0xF2);
        assert_eq!(drain(&mut k), vec![0xFA, 0xAB, 0x41]);
        irqs(&irq);
        assert!(k.send_ctrl_alt_del());
        let mut got = Vec::new();
        while irqs(&irq) == 1 {
            got.push(inb(&mut k, DATA_PORT));
        }
        assert_eq!(got, vec![0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D]);
    }

    #[test]
    fn ctrl_alt_del_waits_for_an_enabled_port_and_needs_scanning() {
        let (mut k, _exit, irq) = dev();
        command(&mut k, 0x60, &[CTR_SYS | CTR_KBD_DIS], 0);
        assert!(k.send_ctrl_alt_del());
        assert_eq!(inb(&mut k, COMMAND_PORT) & STS_OBF, 0, "port disabled");
        assert_eq!(irqs(&irq), 0);
        // Enabling the port and its interrupt delivers the first byte.
        command(&mut k, 0x60, &[CTR_SYS | CTR_KBD_INT], 0);
        assert_eq!(irqs(&irq), 1);
        assert_eq!(drain(&mut k), CAD_SET2);
        // A keyboard with scanning disabled sends nothing.
        outb(&mut k, DATA_PORT, 0xF5);
        assert_eq!(drain(&mut k), vec![0xFA]);
        assert!(!k.send_ctrl_alt_del());
        assert!(drain(&mut k).is_empty());
    }

    #[test]
    fn controller_answer_goes_ahead_of_unread_keyboard_bytes() {
        let (mut k, _exit, _irq) = dev();
        assert!(k.send_ctrl_alt_del());
        assert_eq!(command(&mut k, 0xAA, &[], 1), vec![0x55]);
        assert_eq!(drain(&mut k), CAD_SET2);
    }

    #[test]
    fn fifo_is_bounded() {
        let (mut k, _exit, _irq) = dev();
        for i in 0..10_000u32 {
            outb(&mut k, DATA_PORT, 0xEE);
            if i % 7 == 0 {
                outb(&mut k, COMMAND_PORT, 0x20);
            }
            assert!(k.s.pending() <= FIFO_CAPACITY);
        }
        assert!(!k.send_ctrl_alt_del(), "no room");
        let out = drain(&mut k);
        assert_eq!(out.len(), FIFO_CAPACITY);
        assert!(k.send_ctrl_alt_del());
    }

    #[test]
    fn no_panic_for_any_write_sequence() {
        let (mut k, exit, _irq) = dev();
        // Every command byte followed by every data byte, reading in between.
        for cmd in 0..=0xFFu8 {
            for v in (0..=0xFFu8).step_by(3) {
                if cmd & 0xF1 == 0xF0 {
                    continue; // reset pulses, tested elsewhere
                }
                outb(&mut k, COMMAND_PORT, cmd);
                outb(&mut k, DATA_PORT, v);
                inb(&mut k, DATA_PORT);
                assert!(k.s.pending() <= FIFO_CAPACITY);
            }
        }
        k.send_ctrl_alt_del();
        // Odd sizes and ports through the bus interface.
        let mut empty: [u8; 0] = [];
        k.read(DATA_PORT, 0, &mut empty);
        k.write(DATA_PORT, 0, &[]);
        let mut wide = [0xAAu8; 4];
        k.read(0x61, 0, &mut wide);
        assert_eq!(wide, [0xFF, 0, 0, 0]);
        // Output port writes with bit 0 clear asked for resets on the way.
        assert_eq!(exit.record().map(|r| r.reason), Some(ExitReason::Reboot));
    }

    #[test]
    fn snapshot_round_trip() {
        let (mut k, _exit, irq) = dev();
        enable_kbd_irq(&mut k);
        command(&mut k, 0xD1, &[0x03], 0);
        outb(&mut k, DATA_PORT, 0xED); // waits for the LED argument
        assert_eq!(drain(&mut k), vec![0xFA]);
        assert!(k.send_ctrl_alt_del());
        let first = inb(&mut k, DATA_PORT);
        assert_eq!(first, 0x14);
        irqs(&irq);
        let state = k.snapshot();
        let json = serde_json::to_string(&state).expect("encode");
        let back: I8042State = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, state);

        let exit2 = Arc::new(ExitSignal::new().expect("exit"));
        let irq2 = evt();
        let mut k2 = I8042::from_snapshot(exit2, irq2.try_clone().expect("clone"), &back);
        assert_eq!(irqs(&irq2), 1, "the waiting byte interrupts again");
        assert_eq!(k2.snapshot(), state);
        // The pending LED argument and the rest of the sequence survive.
        outb(&mut k2, DATA_PORT, 0x07);
        let rest = drain(&mut k2);
        assert_eq!(&rest[..10], &CAD_SET2[1..]);
        assert_eq!(&rest[10..], &[0xFA]);
        assert_eq!(k2.s.leds, 0x07);
        // The original goes on the same way.
        outb(&mut k, DATA_PORT, 0x07);
        assert_eq!(drain(&mut k), rest);
    }

    #[test]
    fn snapshot_with_bad_values_is_sanitised() {
        let mut state = I8042State {
            scan_set: 9,
            ..I8042State::default()
        };
        state.queue = (0..100u8).collect();
        let exit = Arc::new(ExitSignal::new().expect("exit"));
        let mut k = I8042::from_snapshot(exit, evt(), &state);
        assert_eq!(k.s.scan_set, KBD_DEFAULT_SET);
        assert_eq!(drain(&mut k).len(), FIFO_CAPACITY);
    }
}
