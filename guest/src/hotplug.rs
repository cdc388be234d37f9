//! Hotplug through ports 0x514 (generation) and 0x515 (slots to let go of), polled every 100 ms.

use crate::cpu::inl;
use crate::devices::Devices;

/// Read u32: increases on every attach or detach request.
const GENERATION_PORT: u16 = 0x514;
/// Read u32: bit i set asks the guest to let go of the device in slot i.
const RELEASE_PORT: u16 = 0x515;

/// What the guest last saw of the host's hotplug requests.
pub struct Hotplug {
    generation: u32,
    /// Slots let go of and still asked for: not bound again while they stay so.
    released: u32,
}

impl Hotplug {
    /// Remembers the generation at boot (devices present then were found by the boot scan).
    pub fn new() -> Hotplug {
        Hotplug {
            generation: inl(GENERATION_PORT),
            released: 0,
        }
    }

    /// Checks for a new generation; detaches what the host asks for and binds new devices.
    pub fn poll(&mut self, devices: &mut Devices) {
        let generation = inl(GENERATION_PORT);
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        // A port that is not there reads all ones: nothing to release.
        let release = match inl(RELEASE_PORT) {
            u32::MAX => 0,
            mask => mask & 0xFFFF,
        };
        for slot in 0..16 {
            if release & (1 << slot) != 0 {
                devices.detach(slot);
            }
        }
        self.released = release;
        devices.scan(true, self.released);
    }
}
