//! The `RxenBootInfo` block the VMM leaves at 0x6000.

use crate::entry::MAX_VCPUS;

/// `RXENBOOT` as a little-endian u64.
pub const MAGIC: u64 = 0x544F_4F42_4E45_5852;

/// The boot info as the VMM writes it (docs/internals.md).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawBootInfo {
    /// Must be `MAGIC`.
    pub magic: u64,
    /// Must be 1.
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

/// What the guest uses from the boot info, checked and clamped.
#[derive(Clone, Copy)]
pub struct BootInfo {
    /// vCPUs started at boot (1..=MAX_VCPUS).
    pub vcpus: usize,
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// TSC ticks per millisecond.
    pub tsc_khz: u64,
    /// First byte after the loaded image.
    pub kernel_end: u64,
}

/// Why the boot info could not be used.
pub enum BootInfoError {
    /// The magic number is wrong.
    BadMagic(u64),
    /// The version is not 1.
    BadVersion(u32),
}

extern "C" {
    static __kernel_end: u8;
}

impl BootInfo {
    /// Reads and checks the boot info at `addr`.
    pub fn read(addr: u64) -> Result<BootInfo, BootInfoError> {
        // SAFETY: the boot protocol puts an identity-mapped RxenBootInfo at
        // `addr`; a volatile read copies it out without assuming alignment
        // beyond what the VMM guarantees (8 bytes at 0x6000).
        let raw = unsafe { core::ptr::read_volatile(addr as *const RawBootInfo) };
        if raw.magic != MAGIC {
            return Err(BootInfoError::BadMagic(raw.magic));
        }
        if raw.version != 1 {
            return Err(BootInfoError::BadVersion(raw.version));
        }
        let image_end = core::ptr::addr_of!(__kernel_end) as u64;
        Ok(BootInfo {
            vcpus: (raw.vcpus as usize).clamp(1, MAX_VCPUS),
            mem_bytes: raw.mem_bytes,
            tsc_khz: if raw.tsc_khz == 0 {
                1_000_000
            } else {
                raw.tsc_khz
            },
            kernel_end: raw.kernel_end.max(image_end),
        })
    }
}
