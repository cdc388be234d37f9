//! The ACPI platform ports of a Linux guest: sleep control (power off), reset, and the
//! generic event device (GED) that brings the power button and device changes to the guest.
//!
//! The layout is `rxen_linuxboot::acpi`'s: the DSDT there names these ports and the GED's
//! interrupt, so the two must agree (they share the constants).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rxen_linuxboot::acpi::{
    ACPI_PORT_BASE, GED_EVENT_PORT, RESET_PORT, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_PORT,
    SLEEP_ENABLE, SLOT_CHANGED_PORT, SLOT_PRESENT_PORT,
};
use rxen_proto::vmspec::ExitReason;
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use super::PioDevice;
use crate::exit::ExitSignal;

pub use rxen_linuxboot::acpi::{ACPI_PORT_LEN, GED_EVENT_DEVICES, GED_EVENT_POWER_BUTTON};

/// The GED's interrupt line (I/O APIC pin 23; 5..20 are the virtio slots').
pub const GED_GSI: u32 = 23;

/// Events raised by the host and not yet read by the guest, shared with the control side.
pub struct GedEvents {
    pending: AtomicU32,
    /// The slot presence mask the guest was last told about.
    seen: AtomicU32,
    /// Slots whose presence changed since the guest last read the changed register.
    changed: AtomicU32,
    irq: EventFd,
}

impl GedEvents {
    /// Events go to the guest through `irq` (an irqfd on [`GED_GSI`]).
    pub fn new(irq: EventFd) -> Self {
        Self {
            pending: AtomicU32::new(0),
            seen: AtomicU32::new(0),
            changed: AtomicU32::new(0),
            irq,
        }
    }

    /// Records the slot presence the guest finds at boot (no event).
    pub fn set_seen(&self, present: u32) {
        self.seen.store(present, Ordering::SeqCst);
    }

    /// The virtio slots now present are `present`: marks the slots that gained a device since
    /// the guest last looked and raises [`GED_EVENT_DEVICES`] if any did.
    ///
    /// Slots that lost their device are not announced: Linux (6.1 and later) drops the ACPI
    /// device of a slot that went away but keeps its platform device and driver, so the guest
    /// would hold a device that no longer exists either way. Such slots stay in the guest's
    /// view ([`Self::stale`]) and new devices go elsewhere first.
    pub fn slots_now(&self, present: u32) {
        let added = present & !self.seen.fetch_or(present, Ordering::SeqCst);
        if added != 0 {
            self.changed.fetch_or(added, Ordering::SeqCst);
            self.raise(GED_EVENT_DEVICES);
        }
    }

    /// Slots the guest has been told about that hold no device now.
    pub fn stale(&self, present: u32) -> u32 {
        self.seen.load(Ordering::SeqCst) & !present
    }

    /// Raises `event` (a `GED_EVENT_*` bit) and interrupts the guest.
    pub fn raise(&self, event: u32) {
        self.pending.fetch_or(event, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            tracing::warn!("cannot raise the GED interrupt: {e}");
        }
    }

    /// Takes (and clears) the pending events, as the guest's read of the event register does.
    fn take(&self) -> u32 {
        self.pending.swap(0, Ordering::SeqCst)
    }

    /// The saved state.
    pub fn snapshot(&self) -> AcpiState {
        AcpiState {
            pending: self.pending.load(Ordering::SeqCst),
            seen: self.seen.load(Ordering::SeqCst),
            changed: self.changed.load(Ordering::SeqCst),
        }
    }

    /// Puts back saved state; pending events interrupt the guest again.
    pub fn restore(&self, st: &AcpiState) {
        self.seen.store(st.seen, Ordering::SeqCst);
        self.changed.store(st.changed, Ordering::SeqCst);
        if st.pending != 0 {
            self.raise(st.pending);
        }
    }
}

/// What a save file keeps of the ACPI platform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcpiState {
    /// GED events raised and not yet read by the guest.
    pub pending: u32,
    /// The slot presence mask the guest was last told about.
    pub seen: u32,
    /// Slots changed and not yet read by the guest.
    pub changed: u32,
}

impl AcpiState {
    /// Why a saved state cannot be this platform's, if it cannot: events the
    /// GED does not raise, or slots beyond the `slots` virtio slots.
    pub fn check(&self, slots: usize) -> Result<(), String> {
        let events = GED_EVENT_POWER_BUTTON | GED_EVENT_DEVICES;
        if self.pending & !events != 0 {
            return Err(format!(
                "pending events {:#x} include some the GED never raises",
                self.pending
            ));
        }
        let mask = u32::try_from(slots)
            .ok()
            .and_then(|n| 1u32.checked_shl(n))
            .map_or(u32::MAX, |b| b - 1);
        for (what, v) in [("seen", self.seen), ("changed", self.changed)] {
            if v & !mask != 0 {
                return Err(format!(
                    "{what} slot mask {v:#x} names slots beyond the {slots} there are"
                ));
            }
        }
        Ok(())
    }
}

/// The ports from [`ACPI_PORT_BASE`].
pub struct AcpiPorts {
    exit: Arc<ExitSignal>,
    events: Arc<GedEvents>,
    present: Box<dyn Fn() -> u32 + Send>,
}

impl AcpiPorts {
    /// Exits go to `exit`; `present` gives the virtio slots' presence mask.
    pub fn new(
        exit: Arc<ExitSignal>,
        events: Arc<GedEvents>,
        present: Box<dyn Fn() -> u32 + Send>,
    ) -> Self {
        Self {
            exit,
            events,
            present,
        }
    }
}

/// Copies the little-endian bytes of `value` from byte `skip` into `data`.
fn put_bytes(data: &mut [u8], value: u32, skip: u16) {
    let bytes = value.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = bytes.get(usize::from(skip) + i).copied().unwrap_or(0);
    }
}

impl PioDevice for AcpiPorts {
    fn read(&mut self, base: u16, offset: u16, data: &mut [u8]) {
        let port = base.wrapping_add(offset);
        match port {
            // A read at the register's first byte takes every pending event (AML reads the
            // field as one DWord); reads of its other bytes see nothing.
            p if p == GED_EVENT_PORT => put_bytes(data, self.events.take(), 0),
            p if (SLOT_PRESENT_PORT..SLOT_PRESENT_PORT + 4).contains(&p) => {
                put_bytes(data, (self.present)(), p - SLOT_PRESENT_PORT)
            }
            p if p == SLOT_CHANGED_PORT => {
                put_bytes(data, self.events.changed.swap(0, Ordering::SeqCst), 0)
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, base: u16, offset: u16, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match base.wrapping_add(offset) {
            SLEEP_CONTROL_PORT if value & SLEEP_ENABLE != 0 => {
                let kind = (value >> 2) & 0x7;
                if kind == S5_SLEEP_TYPE {
                    self.exit
                        .request(ExitReason::Poweroff, "guest powered off (ACPI S5)");
                } else {
                    tracing::warn!(kind, "ignoring a request for ACPI sleep type {kind}");
                }
            }
            RESET_PORT if value == RESET_VALUE => self
                .exit
                .request(ExitReason::Reboot, "guest rebooted (ACPI reset)"),
            _ => {}
        }
    }
}

/// The base port the bus maps [`AcpiPorts`] at.
pub const PORT_BASE: u16 = ACPI_PORT_BASE;

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(present: u32) -> (AcpiPorts, Arc<ExitSignal>, Arc<GedEvents>) {
        let exit = Arc::new(ExitSignal::new().expect("exit"));
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let events = Arc::new(GedEvents::new(irq));
        let p = AcpiPorts::new(exit.clone(), events.clone(), Box::new(move || present));
        (p, exit, events)
    }

    #[test]
    fn s5_powers_off_other_sleep_types_do_not() {
        let (mut p, exit, _) = ports(0);
        p.write(
            PORT_BASE,
            SLEEP_CONTROL_PORT - PORT_BASE,
            &[(3 << 2) | SLEEP_ENABLE],
        );
        p.write(PORT_BASE, SLEEP_CONTROL_PORT - PORT_BASE, &[5 << 2]);
        assert!(!exit.is_requested());
        p.write(
            PORT_BASE,
            SLEEP_CONTROL_PORT - PORT_BASE,
            &[(5 << 2) | SLEEP_ENABLE],
        );
        assert_eq!(exit.record().map(|r| r.reason), Some(ExitReason::Poweroff));
    }

    #[test]
    fn reset_register_reboots() {
        let (mut p, exit, _) = ports(0);
        p.write(PORT_BASE, RESET_PORT - PORT_BASE, &[0]);
        assert!(!exit.is_requested());
        p.write(PORT_BASE, RESET_PORT - PORT_BASE, &[RESET_VALUE]);
        assert_eq!(exit.record().map(|r| r.reason), Some(ExitReason::Reboot));
    }

    #[test]
    fn events_interrupt_and_clear_on_read() {
        let (mut p, _, events) = ports(0b101);
        events.raise(GED_EVENT_POWER_BUTTON);
        events.raise(GED_EVENT_DEVICES);
        assert_eq!(events.irq.read().expect("irq"), 2);
        let mut b = [0u8; 4];
        p.read(PORT_BASE, GED_EVENT_PORT - PORT_BASE, &mut b);
        assert_eq!(u32::from_le_bytes(b), 3);
        p.read(PORT_BASE, GED_EVENT_PORT - PORT_BASE, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0);
        p.read(PORT_BASE, SLOT_PRESENT_PORT - PORT_BASE, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0b101);
        let mut one = [0u8; 1];
        p.read(PORT_BASE, SLOT_PRESENT_PORT + 1 - PORT_BASE, &mut one);
        assert_eq!(one, [0]);
    }

    #[test]
    fn slot_changes_are_reported_once() {
        let (mut p, _, events) = ports(0);
        events.set_seen(0b1);
        events.slots_now(0b1);
        assert_eq!(
            events.pending.load(Ordering::SeqCst),
            0,
            "no change, no event"
        );
        events.slots_now(0b11);
        events.slots_now(0b10);
        let mut b = [0u8; 4];
        p.read(PORT_BASE, GED_EVENT_PORT - PORT_BASE, &mut b);
        assert_eq!(u32::from_le_bytes(b), GED_EVENT_DEVICES);
        p.read(PORT_BASE, SLOT_CHANGED_PORT - PORT_BASE, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0b10, "only the added slot");
        assert_eq!(events.stale(0b10), 0b01, "slot 0 went away unannounced");
        events.slots_now(0b10);
        p.read(PORT_BASE, GED_EVENT_PORT - PORT_BASE, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0, "a removal raises nothing");
        p.read(PORT_BASE, SLOT_CHANGED_PORT - PORT_BASE, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0);
    }

    #[test]
    fn pending_events_survive_a_snapshot() {
        let (_, _, events) = ports(0);
        events.raise(GED_EVENT_POWER_BUTTON);
        let st = events.snapshot();
        let (mut p2, _, events2) = ports(0);
        events2.restore(&st);
        let mut b = [0u8; 4];
        p2.read(PORT_BASE, GED_EVENT_PORT - PORT_BASE, &mut b);
        assert_eq!(u32::from_le_bytes(b), GED_EVENT_POWER_BUTTON);
        assert_eq!(st.check(16), Ok(()));
    }

    #[test]
    fn impossible_saved_states_are_told_apart() {
        let ok = AcpiState {
            pending: GED_EVENT_POWER_BUTTON | GED_EVENT_DEVICES,
            seen: 0xFFFF,
            changed: 0x8001,
        };
        assert_eq!(ok.check(16), Ok(()));
        assert_eq!(AcpiState::default().check(32), Ok(()));
        for bad in [
            AcpiState {
                pending: 1 << 2,
                ..ok
            },
            AcpiState {
                seen: 1 << 16,
                ..ok
            },
            AcpiState {
                changed: u32::MAX,
                ..ok
            },
        ] {
            assert!(bad.check(16).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let (mut p, _, _) = ports(u32::MAX);
        for off in 0..ACPI_PORT_LEN {
            for len in [0usize, 1, 2, 4, 8] {
                let mut d = vec![0u8; len];
                p.read(PORT_BASE, off, &mut d);
                p.write(PORT_BASE, off, &d);
            }
        }
    }
}
