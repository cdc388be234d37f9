//! The vCPU online/offline ports of the test guest: 0x516 (read u32) is the
//! mask of vCPUs the host wants online, 0x517 (write u32) is the mask the
//! guest reports online. `rxl vcpu-set` moves the wanted mask.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use crate::devices::PioDevice;

/// The first port: the wanted mask (0x517, the reported mask, follows).
pub const VCPU_WANTED_PORT: u16 = 0x516;

/// The mask with the lowest `n` vCPUs set (vCPUs 32 and up cannot be named and stay online).
pub fn mask_of(n: u32) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// What the host wants and what the guest says, shared with the control socket.
#[derive(Debug)]
pub struct VcpuMasks {
    wanted: AtomicU32,
    reported: AtomicU32,
    has_reported: AtomicBool,
}

impl VcpuMasks {
    /// Masks with the first `online` vCPUs wanted online.
    pub fn new(online: u32) -> Arc<VcpuMasks> {
        Arc::new(VcpuMasks {
            wanted: AtomicU32::new(mask_of(online)),
            reported: AtomicU32::new(0),
            has_reported: AtomicBool::new(false),
        })
    }

    /// Asks for the first `n` vCPUs online.
    pub fn set_online(&self, n: u32) {
        self.wanted.store(mask_of(n), Ordering::SeqCst);
    }

    /// The mask the host wants.
    pub fn wanted(&self) -> u32 {
        self.wanted.load(Ordering::SeqCst)
    }

    /// Puts back masks saved with a domain (the guest keeps its vCPUs as they were).
    pub fn restore(&self, wanted: u32, reported: Option<u32>) {
        self.wanted.store(wanted, Ordering::SeqCst);
        if let Some(r) = reported {
            self.reported.store(r, Ordering::SeqCst);
            self.has_reported.store(true, Ordering::SeqCst);
        }
    }

    /// The mask the guest last reported, if it ever did.
    pub fn reported(&self) -> Option<u32> {
        self.has_reported
            .load(Ordering::SeqCst)
            .then(|| self.reported.load(Ordering::SeqCst))
    }

    /// Both masks, for a save file or migration.
    pub fn snapshot(&self) -> VcpuMaskState {
        VcpuMaskState {
            wanted: self.wanted(),
            reported: self.reported(),
        }
    }
}

/// The saved masks behind ports 0x516/0x517.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuMaskState {
    /// The vCPUs the host wants online.
    pub wanted: u32,
    /// What the guest last reported online (none if it never did).
    pub reported: Option<u32>,
}

impl VcpuMaskState {
    /// Refuses a wanted mask the host never sets: the first 1 to `vcpus` vCPUs.
    pub fn check(&self, vcpus: u32) -> Result<(), String> {
        let n = self.wanted.count_ones();
        if self.wanted == 0 || self.wanted != mask_of(n) || n > vcpus {
            return Err(format!(
                "wanted mask {:#x} is not the first 1 to {vcpus} vCPUs",
                self.wanted
            ));
        }
        Ok(())
    }
}

/// The port device over [`VcpuMasks`].
pub struct VcpuPorts(pub Arc<VcpuMasks>);

impl PioDevice for VcpuPorts {
    fn read(&mut self, _base: u16, offset: u16, data: &mut [u8]) {
        let value = if offset == 0 {
            self.0.wanted()
        } else {
            u32::MAX
        };
        let bytes = value.to_le_bytes();
        for (d, s) in data
            .iter_mut()
            .zip(bytes.iter().chain(std::iter::repeat(&0xFF)))
        {
            *d = *s;
        }
    }

    fn write(&mut self, _base: u16, offset: u16, data: &[u8]) {
        if offset != 1 {
            return;
        }
        let mut b = [0u8; 4];
        for (d, s) in b.iter_mut().zip(data) {
            *d = *s;
        }
        self.0
            .reported
            .store(u32::from_le_bytes(b), Ordering::SeqCst);
        self.0.has_reported.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_ports() {
        assert_eq!(mask_of(1), 1);
        assert_eq!(mask_of(3), 0b111);
        assert_eq!(mask_of(32), u32::MAX);
        let m = VcpuMasks::new(2);
        let mut p = VcpuPorts(m.clone());
        let mut buf = [0u8; 4];
        p.read(VCPU_WANTED_PORT, 0, &mut buf);
        assert_eq!(u32::from_le_bytes(buf), 0b11);
        assert_eq!(m.reported(), None);
        p.write(VCPU_WANTED_PORT, 1, &5u32.to_le_bytes());
        assert_eq!(m.reported(), Some(5));
        m.set_online(1);
        p.read(VCPU_WANTED_PORT, 0, &mut buf);
        assert_eq!(u32::from_le_bytes(buf), 1);
    }
}
