//! Hotplug through ports 0x514/0x515: the guest binds devices that appear, and lets go of
//! (resets) the ones the host asks for, printing the lines of docs/internals.md.
//!
//! These tests need /dev/kvm and fail without it.

mod harness;

use std::io;
use std::time::{Duration, Instant};

use harness::{Machine, LONG_WAIT};
use rxen_virtio::net::NetBackend;
use rxen_virtio::{Block, BlockConfig, Net, NetConfig};

const GENERATION: u16 = 0x514;
const RELEASE: u16 = 0x515;

fn disk(serial: &str) -> (tempfile::NamedTempFile, Box<Block>) {
    let file = tempfile::NamedTempFile::new().expect("temp image");
    file.as_file().set_len(1 << 20).expect("size image");
    let block = Block::new(
        file.reopen().expect("reopen"),
        BlockConfig {
            serial: serial.into(),
            ..BlockConfig::default()
        },
    )
    .expect("block device");
    (file, Box::new(block))
}

/// A network backend with nothing on the other side.
struct Nowhere;

impl NetBackend for Nowhere {
    fn recv(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn send(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

fn wait_for_status_zero(machine: &Machine, slot: usize) {
    let deadline = Instant::now() + LONG_WAIT;
    while machine.with_slot(slot, |t| t.status()) != Some(0) {
        assert!(Instant::now() < deadline, "slot {slot} was never reset");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn disks_and_nics_come_and_go() {
    let (_boot_file, boot_disk) = disk("xvda");
    let machine = Machine::boot_with(
        1,
        16,
        vec![(0, boot_disk)],
        &[(GENERATION, 7), (RELEASE, 0)],
    );
    machine.expect_line("rxen testguest:", LONG_WAIT);
    // Devices present at boot are bound quietly.
    assert_eq!(machine.command("disks", "disk"), "disk 0 xvda 2048 rw");

    let (_file, hot_disk) = disk("xvdb");
    machine.attach(1, hot_disk);
    machine.set_port(GENERATION, 8);
    assert_eq!(
        machine.expect_line("hotplug:", LONG_WAIT),
        "hotplug: disk 1 xvdb attached"
    );
    assert_eq!(
        machine.command("blkwrite xvdb 0 8 5", "blkwrite"),
        "blkwrite ok"
    );

    let net = Net::new(
        Box::new(Nowhere),
        NetConfig {
            mac: [0x52, 0x54, 0x00, 0x00, 0x00, 0x42],
            rate: None,
            allowed_ips: Vec::new(),
        },
    )
    .expect("net device");
    machine.attach(2, Box::new(net));
    machine.set_port(GENERATION, 9);
    assert_eq!(
        machine.expect_line("hotplug:", LONG_WAIT),
        "hotplug: nic 2 52:54:00:00:00:42 attached"
    );
    assert_eq!(machine.command("nics", "nic"), "nic 2 52:54:00:00:00:42");

    // The host asks for slot 1 back: the guest resets it before it says detached.
    machine.set_port(RELEASE, 1 << 1);
    machine.set_port(GENERATION, 10);
    assert_eq!(
        machine.expect_line("hotplug:", LONG_WAIT),
        "hotplug: disk 1 xvdb detached"
    );
    assert_eq!(machine.with_slot(1, |t| t.status()), Some(0));
    assert!(!machine
        .with_slot(1, |t| t.is_activated())
        .expect("still there"));
    machine.remove(1);
    machine.set_port(RELEASE, 0);
    machine.set_port(GENERATION, 11);

    machine.set_port(RELEASE, 1 << 2);
    machine.set_port(GENERATION, 12);
    assert_eq!(
        machine.expect_line("hotplug:", LONG_WAIT),
        "hotplug: nic 2 52:54:00:00:00:42 detached"
    );
    wait_for_status_zero(&machine, 2);
    machine.remove(2);
    machine.set_port(RELEASE, 0);
    machine.set_port(GENERATION, 13);

    assert_eq!(machine.command("nics", "no nics"), "no nics");
    machine.send("disks\n");
    assert_eq!(
        machine.expect_line("disk ", LONG_WAIT),
        "disk 0 xvda 2048 rw"
    );
    assert_eq!(
        machine.command("blkread xvdb 0 1", "blkread"),
        "blkread error: nodev"
    );
    // No stray hotplug lines were printed for the empty slots.
    assert!(!machine.console().contains("hotplug: disk 0"));
}
