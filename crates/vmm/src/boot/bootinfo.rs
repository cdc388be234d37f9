//! `RxenBootInfo`, the test guest's boot information at [`super::BOOT_INFO_ADDR`].

use crate::memory::GuestMemory;
use vm_memory::{ByteValued, Bytes, GuestAddress};

/// The bytes `RXENBOOT`, little-endian.
pub const BOOT_INFO_MAGIC: u64 = 0x544F_4F42_4E45_5852;
/// Version of the layout below.
pub const BOOT_INFO_VERSION: u32 = 1;

/// The boot information block, as the test guest reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxenBootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// [`BOOT_INFO_VERSION`].
    pub version: u32,
    /// vCPUs started at boot.
    pub vcpus: u32,
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// Guest TSC frequency in kHz.
    pub tsc_khz: u64,
    /// First byte after the loaded image, 4 KiB aligned.
    pub kernel_end: u64,
}

// SAFETY: RxenBootInfo is plain old data with no padding (8+4+4+8+8+8 bytes, all aligned).
unsafe impl ByteValued for RxenBootInfo {}

/// Errors while writing the boot info.
#[derive(Debug, thiserror::Error)]
pub enum BootInfoError {
    /// The block does not fit in guest memory.
    #[error("cannot write the boot info: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

impl RxenBootInfo {
    /// Builds the block for a guest with these properties.
    pub fn new(vcpus: u32, mem_bytes: u64, tsc_khz: u64, kernel_end: u64) -> Self {
        Self {
            magic: BOOT_INFO_MAGIC,
            version: BOOT_INFO_VERSION,
            vcpus,
            mem_bytes,
            tsc_khz,
            kernel_end,
        }
    }

    /// Writes the block at `addr`.
    pub fn write(&self, mem: &GuestMemory, addr: GuestAddress) -> Result<(), BootInfoError> {
        mem.write_obj(*self, addr)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn layout_matches_internals_md() {
        assert_eq!(std::mem::size_of::<RxenBootInfo>(), 40);
        let mem = create_guest_memory(16).expect("memory");
        RxenBootInfo::new(2, 128 << 20, 2_000_000, 0x20_0000)
            .write(&mem, GuestAddress(0x6000))
            .expect("write");
        let mut b = [0u8; 40];
        mem.read_slice(&mut b, GuestAddress(0x6000)).expect("read");
        assert_eq!(&b[0..8], b"RXENBOOT");
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(&b[12..16], &2u32.to_le_bytes());
        assert_eq!(&b[16..24], &(128u64 << 20).to_le_bytes());
        assert_eq!(&b[24..32], &2_000_000u64.to_le_bytes());
        assert_eq!(&b[32..40], &0x20_0000u64.to_le_bytes());
    }
}
