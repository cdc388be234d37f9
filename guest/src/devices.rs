//! The table of virtio-mmio slots and the drivers bound to them (vCPU 0 only).

use crate::dma::Dma;
use crate::net::{Link, Stack};
use crate::netcmd::MacText;
use crate::println;
use crate::virtio::blk::{self, Disk};
use crate::virtio::mmio::{Mmio, SLOTS};
use crate::virtio::net::{self, Nic};

/// What sits in a slot.
pub enum Device {
    /// A virtio-blk disk.
    Disk(Disk),
    /// A virtio-net card and its stack.
    Nic(Link),
    /// A device this guest has no driver for (its type), or one whose driver failed.
    Other(u32),
}

impl Device {
    /// The kind word used in hotplug lines.
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Disk(_) => "disk",
            Device::Nic(_) => "nic",
            Device::Other(_) => "device",
        }
    }

    /// Resets the device and frees its memory.
    fn release(self, dma: &mut Dma, slot: usize) {
        match self {
            Device::Disk(disk) => disk.release(dma),
            Device::Nic(link) => link.nic.release(dma),
            Device::Other(_) => Mmio::slot(slot).reset(),
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
        for slot in 0..SLOTS {
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
                        if announce {
                            println!(
                                "hotplug: {} {slot} {} detached",
                                device.kind(),
                                name(&device)
                            );
                        }
                        device.release(&mut self.dma, slot);
                    }
                }
                (Some(kind), false) => {
                    let device = bind(slot, kind, &mut self.dma);
                    if announce {
                        match &device {
                            Device::Disk(disk) => {
                                println!("hotplug: disk {slot} {} attached", disk.serial())
                            }
                            Device::Nic(link) => {
                                println!("hotplug: nic {slot} {} attached", MacText(link.nic.mac))
                            }
                            Device::Other(_) => {}
                        }
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
        let line_name = name(&device);
        let kind = device.kind();
        // Reset before saying so: the host removes the device once it reads Status 0.
        device.release(&mut self.dma, slot);
        if kind != "device" {
            println!("hotplug: {kind} {slot} {line_name} detached");
        }
    }

    /// The disks, in slot order.
    pub fn disks(&self) -> impl Iterator<Item = &Disk> {
        self.slots.iter().filter_map(|slot| match slot {
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

    /// The disk whose serial is `serial`.
    pub fn disk(&mut self, serial: &str) -> Option<&mut Disk> {
        self.slots.iter_mut().find_map(|slot| match slot {
            Some(Device::Disk(disk)) if disk.serial() == serial => Some(disk),
            _ => None,
        })
    }
}

/// A short name for hotplug lines: a disk's serial, a NIC's MAC.
fn name(device: &Device) -> Name {
    let mut out = Name::default();
    match device {
        Device::Disk(disk) => out.push(disk.serial()),
        Device::Nic(link) => {
            let _ =
                core::fmt::Write::write_fmt(&mut out, format_args!("{}", MacText(link.nic.mac)));
        }
        Device::Other(kind) => {
            let _ = core::fmt::Write::write_fmt(&mut out, format_args!("type{kind}"));
        }
    }
    out
}

/// Binds the driver for a device of type `kind` in `slot`.
fn bind(slot: usize, kind: u32, dma: &mut Dma) -> Device {
    match kind {
        blk::DEVICE_TYPE => match Disk::init(slot, dma) {
            Ok(disk) => Device::Disk(disk),
            Err(error) => {
                println!("virtio: disk in slot {slot} failed to start: {error:?}");
                Device::Other(kind)
            }
        },
        net::DEVICE_TYPE => match Nic::init(slot, dma) {
            Ok(nic) => Device::Nic(Link {
                nic,
                stack: Stack::new(),
            }),
            Err(error) => {
                println!("virtio: nic in slot {slot} failed to start: {error:?}");
                Device::Other(kind)
            }
        },
        other => Device::Other(other),
    }
}

/// A small inline string (device names).
#[derive(Default)]
pub struct Name {
    bytes: [u8; 24],
    len: usize,
}

impl Name {
    fn push(&mut self, s: &str) {
        let _ = core::fmt::Write::write_str(self, s);
    }
}

impl core::fmt::Write for Name {
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
