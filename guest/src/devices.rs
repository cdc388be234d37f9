//! The table of virtio-mmio slots (rxen's, or QEMU microvm's transports) and the drivers bound
//! to them (vCPU 0 only).

use core::fmt::Write;

use crate::dma::Dma;
use crate::net::{Link, Stack};
use crate::netcmd::MacText;
use crate::println;
use crate::virtio::balloon::{self, Balloon};
use crate::virtio::blk::{self, Disk};
use crate::virtio::mmio::{slot_count, Mmio, SLOTS};
use crate::virtio::net::{self, Nic};

/// What sits in a slot.
// A NIC is much larger than the rest (its transmit buffers' tags); there is no allocator to box
// it in, and the table lives in a static (`console::DEVICES`), not on a stack.
#[allow(clippy::large_enum_variant)]
pub enum Device {
    /// A virtio-blk disk.
    Disk(Disk),
    /// A virtio-net card and its stack.
    Nic(Link),
    /// The memory balloon.
    Balloon(Balloon),
    /// A device this guest has no driver for, or one whose driver failed to start.
    Other,
}

impl Device {
    /// Resets the device and frees its memory.
    fn release(self, dma: &mut Dma, slot: usize) {
        match self {
            Device::Disk(disk) => disk.release(dma),
            Device::Nic(link) => link.nic.release(dma),
            Device::Balloon(balloon) => balloon.release(dma),
            Device::Other => Mmio::slot(slot).reset(),
        }
    }
}

/// Every slot, and the memory their drivers use.
pub struct Devices {
    /// Memory for rings and buffers.
    pub dma: Dma,
    slots: [Option<Device>; SLOTS],
}

impl Devices {
    /// An empty table; call `scan` to find the devices.
    pub const fn new() -> Devices {
        Devices {
            dma: Dma::new(),
            slots: [const { None }; SLOTS],
        }
    }

    /// Probes every empty slot and binds drivers; with `announce`, prints a hotplug line for each new device.
    /// A slot whose device disappeared (reads empty) is forgotten.
    /// Slots whose bit is set in `skip` are left alone (the host asked the guest to let go of them).
    pub fn scan(&mut self, announce: bool, skip: u32) {
        for slot in 0..slot_count().min(SLOTS) {
            if skip & (1 << slot) != 0 {
                continue;
            }
            let present = Mmio::slot(slot).probe();
            let Some(entry) = self.slots.get_mut(slot) else {
                continue;
            };
            match (present, entry.is_some()) {
                (None, true) => {
                    if let Some(device) = entry.take() {
                        let label = label(&device, slot);
                        device.release(&mut self.dma, slot);
                        if let (true, Some(label)) = (announce, label) {
                            println!("hotplug: {label} detached");
                        }
                    }
                }
                (Some(kind), false) => {
                    let device = bind(slot, kind, &mut self.dma);
                    if let (true, Some(label)) = (announce, label(&device, slot)) {
                        println!("hotplug: {label} attached");
                    }
                    *entry = Some(device);
                }
                _ => {}
            }
        }
    }

    /// Lets go of the device in `slot` (reset, memory freed), printing its hotplug line.
    pub fn detach(&mut self, slot: usize) {
        let Some(device) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let label = label(&device, slot);
        // Reset before saying so: the host removes the device once it reads Status 0.
        device.release(&mut self.dma, slot);
        if let Some(label) = label {
            println!("hotplug: {label} detached");
        }
    }

    /// The disks, in slot order.
    pub fn disks(&self) -> impl Iterator<Item = &Disk> {
        self.slots.iter().filter_map(|slot| match slot {
            Some(Device::Disk(disk)) => Some(disk),
            _ => None,
        })
    }

    /// The disks, in slot order, to change.
    pub fn disks_mut(&mut self) -> impl Iterator<Item = &mut Disk> {
        self.slots.iter_mut().filter_map(|slot| match slot {
            Some(Device::Disk(disk)) => Some(disk),
            _ => None,
        })
    }

    /// The network cards, in slot order.
    pub fn links(&mut self) -> impl Iterator<Item = &mut Link> {
        self.slots.iter_mut().filter_map(|slot| match slot {
            Some(Device::Nic(link)) => Some(link),
            _ => None,
        })
    }

    /// The balloon, if there is one.
    pub fn balloon(&mut self) -> Option<&mut Balloon> {
        self.slots.iter_mut().find_map(|slot| match slot {
            Some(Device::Balloon(balloon)) => Some(balloon),
            _ => None,
        })
    }

    /// The disk whose serial is `serial`.
    pub fn disk(&mut self, serial: &str) -> Option<&mut Disk> {
        self.slots.iter_mut().find_map(|slot| match slot {
            Some(Device::Disk(disk)) if disk.serial() == serial => Some(disk),
            _ => None,
        })
    }
}

/// What hotplug lines call a device: `disk SLOT SERIAL`, `nic SLOT MAC`, `balloon SLOT`;
/// devices without a driver get no lines.
fn label(device: &Device, slot: usize) -> Option<Name> {
    let mut out = Name::default();
    let written = match device {
        Device::Disk(disk) => write!(out, "disk {slot} {}", disk.serial()),
        Device::Nic(link) => write!(out, "nic {slot} {}", MacText(link.nic.mac)),
        Device::Balloon(_) => write!(out, "balloon {slot}"),
        Device::Other => return None,
    };
    written.ok().map(|()| out)
}

/// Binds the driver for a device of type `kind` in `slot`.
fn bind(slot: usize, kind: u32, dma: &mut Dma) -> Device {
    match kind {
        blk::DEVICE_TYPE => match Disk::init(slot, dma) {
            Ok(disk) => Device::Disk(disk),
            Err(error) => {
                println!("virtio: disk in slot {slot} failed to start: {error:?}");
                Device::Other
            }
        },
        net::DEVICE_TYPE => match Nic::init(slot, dma) {
            Ok(nic) => Device::Nic(Link {
                nic,
                stack: Stack::new(),
            }),
            Err(error) => {
                println!("virtio: nic in slot {slot} failed to start: {error:?}");
                Device::Other
            }
        },
        balloon::DEVICE_TYPE => match Balloon::init(slot, dma) {
            Ok(balloon) => Device::Balloon(balloon),
            Err(error) => {
                println!("virtio: balloon in slot {slot} failed to start: {error:?}");
                Device::Other
            }
        },
        _ => Device::Other,
    }
}

/// A small inline string (device names).
#[derive(Default)]
pub struct Name {
    bytes: [u8; 32],
    len: usize,
}

impl Write for Name {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &byte in s.as_bytes() {
            if let Some(slot) = self.bytes.get_mut(self.len) {
                *slot = byte;
                self.len += 1;
            }
        }
        Ok(())
    }
}

impl core::fmt::Display for Name {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let bytes = self.bytes.get(..self.len).unwrap_or_default();
        f.write_str(core::str::from_utf8(bytes).unwrap_or("?"))
    }
}
