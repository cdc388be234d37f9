//! Kernels embedded in the VMM.

/// Name of the built-in test guest (`kernel = "builtin:testguest"`).
pub const TESTGUEST: &str = "testguest";

/// The embedded test guest ELF, when this build carries one.
pub fn testguest() -> Option<&'static [u8]> {
    None
}
