//! Kernels embedded in the VMM.

/// Name of the built-in test guest (`kernel = "builtin:testguest"`).
pub const TESTGUEST: &str = rxen_testguest::BUILTIN_NAME;

/// The embedded test guest ELF, when this build carries one.
pub fn testguest() -> Option<&'static [u8]> {
    let image = rxen_testguest::image();
    (!image.is_empty()).then_some(image)
}
