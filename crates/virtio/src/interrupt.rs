//! Interrupts from a device to its driver: the delivery the VMM provides and the
//! InterruptStatus register the transport reports.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

/// Why a device interrupts its driver; each kind has its own InterruptStatus bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// The device used buffers in one of its queues (InterruptStatus bit 0).
    Queue,
    /// The device configuration space changed or the device needs a reset (bit 1).
    Config,
}

impl InterruptKind {
    /// The InterruptStatus bit this kind sets.
    pub fn status_bit(self) -> u32 {
        match self {
            InterruptKind::Queue => VIRTIO_MMIO_INT_VRING,
            InterruptKind::Config => VIRTIO_MMIO_INT_CONFIG,
        }
    }
}

/// How the VMM delivers a device's interrupt to the guest (typically an irqfd on the device's GSI).
pub trait Interrupt: Send {
    /// Raises the device's interrupt line once for `kind`.
    fn trigger(&self, kind: InterruptKind) -> io::Result<()>;
}

/// A device's interrupt line: its InterruptStatus register plus the VMM's delivery, shared by
/// the transport (which reads and acknowledges it) and the device (which signals it).
pub struct IrqLine {
    status: AtomicU32,
    interrupt: Mutex<Box<dyn Interrupt>>,
}

impl IrqLine {
    /// Wraps the VMM's delivery; InterruptStatus starts at 0.
    pub fn new(interrupt: Box<dyn Interrupt>) -> Self {
        IrqLine {
            status: AtomicU32::new(0),
            interrupt: Mutex::new(interrupt),
        }
    }

    /// Sets the InterruptStatus bit for `kind` and raises the interrupt.
    pub fn signal(&self, kind: InterruptKind) -> io::Result<()> {
        self.status.fetch_or(kind.status_bit(), Ordering::SeqCst);
        // A poisoned lock only means another thread panicked while triggering; the boxed
        // delivery holds no invariant that the panic could have broken.
        let interrupt = self
            .interrupt
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        interrupt.trigger(kind)
    }

    /// The current InterruptStatus register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the InterruptStatus bits set in `bits` (the InterruptACK register).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every InterruptStatus bit (on device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for IrqLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrqLine")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Recorder(Arc<Mutex<Vec<InterruptKind>>>);

    impl Interrupt for Recorder {
        fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
            self.0.lock().expect("lock").push(kind);
            Ok(())
        }
    }

    #[test]
    fn signal_sets_bits_and_triggers_ack_clears() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let irq = IrqLine::new(Box::new(Recorder(log.clone())));
        assert_eq!(irq.status(), 0);
        irq.signal(InterruptKind::Queue).expect("signal");
        assert_eq!(irq.status(), 1);
        irq.signal(InterruptKind::Config).expect("signal");
        assert_eq!(irq.status(), 3);
        irq.ack(1);
        assert_eq!(irq.status(), 2);
        irq.clear();
        assert_eq!(irq.status(), 0);
        assert_eq!(
            *log.lock().expect("lock"),
            vec![InterruptKind::Queue, InterruptKind::Config]
        );
    }
}
