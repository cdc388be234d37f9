//! The rxen power ports: pvpanic (0x505), power (0x510), host request (0x512).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use rxen_proto::vmspec::ExitReason;

use super::pio_bus::BytePortDevice;
use crate::exit::ExitSignal;

/// pvpanic port: a non-zero write means the guest crashed.
pub const PVPANIC_PORT: u16 = 0x505;
/// Power port: 0 = power off, 1 = reboot.
pub const POWER_PORT: u16 = 0x510;
/// Host request port: 0 = none, 1 = shut down, 2 = reboot.
pub const HOST_REQUEST_PORT: u16 = 0x512;
/// pvpanic capability bit "panicked", read back from the pvpanic port.
const PVPANIC_PANICKED: u8 = 1;

/// What the host asks the guest to do, as read from [`HOST_REQUEST_PORT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HostRequest {
    /// Nothing pending.
    None = 0,
    /// Shut down.
    Shutdown = 1,
    /// Reboot.
    Reboot = 2,
}

/// The host request register, shared by the control loop and the guest.
#[derive(Debug, Default)]
pub struct HostRequestReg(AtomicU8);

impl HostRequestReg {
    /// Sets the pending request (it stays set until the guest acts).
    pub fn set(&self, req: HostRequest) {
        self.0.store(req as u8, Ordering::SeqCst);
    }

    /// Sets the raw register value (restored from a save file).
    pub fn set_raw(&self, value: u8) {
        self.0.store(value, Ordering::SeqCst);
    }

    /// The pending request as a raw value.
    pub fn get(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }

    /// The register's state for a save file or migration.
    pub fn snapshot(&self) -> PowerState {
        PowerState {
            host_request: self.get(),
        }
    }
}

/// The power ports' saved state: the host request register.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerState {
    /// The pending host request: 0 (none), 1 (shut down) or 2 (reboot).
    pub host_request: u8,
}

impl PowerState {
    /// Refuses a value the register never holds.
    pub fn check(&self) -> Result<(), String> {
        if self.host_request > HostRequest::Reboot as u8 {
            return Err(format!(
                "host_request is {}, not 0 (none), 1 (shut down) or 2 (reboot)",
                self.host_request
            ));
        }
        Ok(())
    }
}

/// The three rxen power ports as one device.
pub struct PowerPorts {
    exit: Arc<ExitSignal>,
    request: Arc<HostRequestReg>,
}

impl PowerPorts {
    /// Creates the ports; exits go to `exit`, host requests come from `request`.
    pub fn new(exit: Arc<ExitSignal>, request: Arc<HostRequestReg>) -> Self {
        Self { exit, request }
    }
}

impl BytePortDevice for PowerPorts {
    fn read_port(&mut self, port: u16) -> u8 {
        match port {
            HOST_REQUEST_PORT => self.request.get(),
            PVPANIC_PORT => PVPANIC_PANICKED,
            _ => 0xFF,
        }
    }

    fn write_port(&mut self, port: u16, value: u8) {
        match port {
            PVPANIC_PORT if value != 0 => self.exit.request(
                ExitReason::Crash,
                format!("guest panic (pvpanic {value:#x})"),
            ),
            POWER_PORT => match value {
                0 => self.exit.request(ExitReason::Poweroff, "guest powered off"),
                1 => self.exit.request(ExitReason::Reboot, "guest rebooted"),
                other => tracing::warn!("ignoring power port value {other:#x}"),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::PioDevice;

    #[test]
    fn ports_behave() {
        let exit = Arc::new(ExitSignal::new().expect("exit"));
        let req = Arc::new(HostRequestReg::default());
        let mut p = PowerPorts::new(exit.clone(), req.clone());
        let mut b = [0u8; 1];
        p.read(HOST_REQUEST_PORT, 0, &mut b);
        assert_eq!(b, [0]);
        req.set(HostRequest::Reboot);
        p.read(HOST_REQUEST_PORT, 0, &mut b);
        assert_eq!(b, [2]);
        p.write(PVPANIC_PORT, 0, &[0]);
        p.write(POWER_PORT, 0, &[7]);
        p.write(POWER_PORT, 0, &[]);
        assert!(!exit.is_requested());
        p.write(POWER_PORT, 0, &[0]);
        assert_eq!(exit.record().map(|r| r.reason), Some(ExitReason::Poweroff));
    }

    #[test]
    fn pvpanic_is_crash() {
        let exit = Arc::new(ExitSignal::new().expect("exit"));
        let mut p = PowerPorts::new(exit.clone(), Arc::default());
        p.write(PVPANIC_PORT, 0, &[1]);
        assert_eq!(exit.record().map(|r| r.reason), Some(ExitReason::Crash));
    }
}
