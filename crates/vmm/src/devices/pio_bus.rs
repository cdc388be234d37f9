//! The port-I/O bus: maps port ranges to devices; unclaimed ports read all ones.

use std::sync::{Arc, Mutex};

use crate::lock;

/// A device reachable through port I/O.
pub trait PioDevice: Send {
    /// Handles a guest read of `data.len()` bytes at `offset` into the range based at `base`.
    fn read(&mut self, base: u16, offset: u16, data: &mut [u8]);
    /// Handles a guest write at `offset` into the range based at `base`.
    fn write(&mut self, base: u16, offset: u16, data: &[u8]);
}

/// A device whose registers are single bytes at fixed ports. A wider access reads the byte
/// in its first position (the rest as zeros) and writes its first byte.
pub trait BytePortDevice: Send {
    /// The guest reads the register at `port`.
    fn read_port(&mut self, port: u16) -> u8;
    /// The guest writes `value` to the register at `port`.
    fn write_port(&mut self, port: u16, value: u8);
}

impl<T: BytePortDevice> PioDevice for T {
    fn read(&mut self, base: u16, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.read_port(base.wrapping_add(offset));
        }
    }

    fn write(&mut self, base: u16, offset: u16, data: &[u8]) {
        if let Some(&v) = data.first() {
            self.write_port(base.wrapping_add(offset), v);
        }
    }
}

/// Errors while building the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PioBusError {
    /// The range is empty or wraps around the port space.
    #[error("invalid port range {base:#x}+{len}")]
    BadRange {
        /// First port.
        base: u16,
        /// Number of ports.
        len: u16,
    },
    /// The range overlaps a device already on the bus.
    #[error("port range {base:#x}+{len} overlaps another device")]
    Overlap {
        /// First port.
        base: u16,
        /// Number of ports.
        len: u16,
    },
}

struct Range {
    base: u16,
    len: u16,
    dev: Arc<Mutex<dyn PioDevice>>,
}

impl Range {
    fn end(&self) -> u32 {
        u32::from(self.base) + u32::from(self.len)
    }
}

/// Port ranges and their devices, sorted by base port.
#[derive(Default)]
pub struct PioBus {
    ranges: Vec<Range>,
}

impl PioBus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `dev` at ports `base..base + len`.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        dev: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), PioBusError> {
        let end = u32::from(base) + u32::from(len);
        if len == 0 || end > 0x1_0000 {
            return Err(PioBusError::BadRange { base, len });
        }
        if self
            .ranges
            .iter()
            .any(|r| u32::from(base) < r.end() && u32::from(r.base) < end)
        {
            return Err(PioBusError::Overlap { base, len });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, Range { base, len, dev });
        Ok(())
    }

    fn find(&self, port: u16) -> Option<&Range> {
        let idx = self.ranges.partition_point(|r| r.base <= port);
        let r = self.ranges.get(idx.checked_sub(1)?)?;
        (u32::from(port) < r.end()).then_some(r)
    }

    /// Dispatches a guest read; unclaimed ports read as all ones. Returns whether a device answered.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some(r) => {
                lock(&r.dev).read(r.base, port - r.base, data);
                true
            }
            None => {
                data.fill(0xFF);
                false
            }
        }
    }

    /// Dispatches a guest write; writes to unclaimed ports are ignored. Returns whether a device took it.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match self.find(port) {
            Some(r) => {
                lock(&r.dev).write(r.base, port - r.base, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u16, u16, u8)>);
    impl PioDevice for Echo {
        fn read(&mut self, _base: u16, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u16, offset: u16, data: &[u8]) {
            self.0
                .push((base, offset, data.first().copied().unwrap_or(0)));
        }
    }

    #[test]
    fn dispatch_and_default() {
        let mut bus = PioBus::new();
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        bus.insert(0x3F8, 8, dev.clone()).expect("insert");
        bus.insert(0x60, 1, dev.clone()).expect("insert");
        let mut b = [0u8; 1];
        assert!(bus.read(0x3FD, &mut b));
        assert_eq!(b, [5]);
        let mut w = [0u8; 2];
        assert!(!bus.read(0x400, &mut w));
        assert_eq!(w, [0xFF, 0xFF]);
        assert!(!bus.read(0x3F7, &mut b));
        assert!(bus.write(0x3F8, b"x"));
        assert!(!bus.write(0x61, &[1]));
        assert_eq!(lock(&dev).0, vec![(0x3F8, 0, b'x')]);
    }

    #[test]
    fn overlaps_and_bad_ranges_rejected() {
        let mut bus = PioBus::new();
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        bus.insert(0x3F8, 8, dev.clone()).expect("insert");
        assert!(bus.insert(0x3FF, 1, dev.clone()).is_err());
        assert!(bus.insert(0x3F0, 9, dev.clone()).is_err());
        assert!(bus.insert(0xFFFF, 2, dev.clone()).is_err());
        assert!(bus.insert(0x10, 0, dev.clone()).is_err());
        assert!(bus.insert(0xFFFF, 1, dev).is_ok());
    }
}
