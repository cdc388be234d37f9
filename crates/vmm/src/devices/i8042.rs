//! A minimal i8042 keyboard controller: only CPU reset (0xFE on port 0x64), which reboots.

use std::sync::Arc;

use rxen_proto::vmspec::ExitReason;
use vm_superio::{I8042Device, Trigger};

use super::PioDevice;
use crate::exit::ExitSignal;

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Command/status port.
pub const COMMAND_PORT: u16 = 0x64;

/// Turns the i8042 reset line into a reboot request.
pub struct ResetTrigger(Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reboot, "i8042 reset");
        Ok(())
    }
}

/// The i8042 on ports 0x60 and 0x64.
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    /// Creates the controller; a reset goes to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self(I8042Device::new(ResetTrigger(exit)))
    }

    fn offset(base: u16, offset: u16) -> u8 {
        base.wrapping_add(offset).wrapping_sub(DATA_PORT) as u8
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, base: u16, offset: u16, data: &mut [u8]) {
        let v = self.0.read(Self::offset(base, offset));
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = v;
        }
    }

    fn write(&mut self, base: u16, offset: u16, data: &[u8]) {
        if let Some(&v) = data.first() {
            let Ok(()) = self.0.write(Self::offset(base, offset), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_reboots() {
        let exit = Arc::new(ExitSignal::new().expect("exit"));
        let mut k = I8042::new(exit.clone());
        k.write(DATA_PORT, 0, &[0xFE]);
        k.write(COMMAND_PORT, 0, &[0x20]);
        assert!(!exit.is_requested());
        k.write(COMMAND_PORT, 0, &[0xFE]);
        assert_eq!(exit.record().map(|r| r.reason), Some(ExitReason::Reboot));
    }
}
