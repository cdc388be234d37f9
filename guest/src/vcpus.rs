//! vCPUs online and offline (`vcpu-set`): port 0x516 says which vCPUs the host wants online,
//! port 0x517 hears which the guest has online. vCPU 0 polls it every 100 ms.

use core::sync::atomic::Ordering;

use crate::cpu::{inl, outl};
use crate::mailbox::{self, WANTED};
use crate::println;

/// Read u32: mask of vCPUs the host wants online (all ones if the port is absent).
const WANTED_PORT: u16 = 0x516;
/// Write u32: mask of vCPUs the guest has online.
const ONLINE_PORT: u16 = 0x517;

/// The mask of vCPUs that exist.
fn present() -> u64 {
    match mailbox::boot_info().vcpus {
        n if n >= 64 => u64::MAX,
        n => (1u64 << n) - 1,
    }
}

/// The host's wish, limited to vCPUs that exist; vCPU 0, and vCPUs 32 and up (which a
/// 32-bit port cannot name), are always online.
fn read_wanted() -> u64 {
    ((u64::from(inl(WANTED_PORT)) | 0xFFFF_FFFF_0000_0000) & present()) | 1
}

/// Reads the boot-time wish (vCPU 0, before the others are released).
pub fn init() {
    WANTED.store(read_wanted(), Ordering::Release);
}

/// Tells the host the mask the guest has online.
pub fn report() {
    outl(ONLINE_PORT, WANTED.load(Ordering::Acquire) as u32);
}

/// Rereads the host's wish and brings vCPUs online or offline.
pub fn poll() {
    let wanted = read_wanted();
    let old = WANTED.swap(wanted, Ordering::AcqRel);
    if wanted == old {
        return;
    }
    for vcpu in 0..64 {
        let bit = 1u64 << vcpu;
        if (old ^ wanted) & bit != 0 {
            let state = if wanted & bit != 0 {
                "online"
            } else {
                "offline"
            };
            println!("vcpu {vcpu} {state}");
        }
    }
    report();
}

/// vCPUs online now.
pub fn online() -> u32 {
    WANTED.load(Ordering::Acquire).count_ones()
}

/// `vcpus`.
pub fn show() {
    let mask = WANTED.load(Ordering::Acquire);
    println!("vcpus online={} mask={mask:#x}", mask.count_ones());
}
