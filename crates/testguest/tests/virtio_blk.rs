//! The test guest's virtio-blk driver against the real `rxen_virtio::Block` device in slot 0
//! of the harness: `disks`, `blkwrite`, `blkread`, `blkflush`, `blkbench`, `blkbad`.
//!
//! These tests need /dev/kvm and fail without it.

mod harness;

use std::fs::{File, OpenOptions};
use std::io::Write;

use harness::Machine;
use rxen_virtio::{Block, BlockConfig};

/// Sectors in the test image (1 MiB).
const SECTORS: u64 = 2048;

/// A 1 MiB image filled with 0xEE, and the device over it.
fn image(read_only: bool) -> (tempfile::NamedTempFile, Block) {
    let mut file = tempfile::NamedTempFile::new().expect("temp image");
    file.write_all(&vec![0xEE; (SECTORS * 512) as usize])
        .expect("fill image");
    let handle: File = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(file.path())
        .expect("open image");
    let block = Block::new(
        handle,
        BlockConfig {
            read_only,
            serial: "xvda".into(),
            ..BlockConfig::default()
        },
    )
    .expect("block device");
    file.flush().expect("flush");
    (file, block)
}

fn boot_with_disk(read_only: bool) -> (tempfile::NamedTempFile, Machine) {
    let (file, block) = image(read_only);
    let machine = Machine::boot_with(2, 64, vec![(0, Box::new(block))], &[]);
    assert_eq!(
        machine.expect_line("rxen testguest:", harness::LONG_WAIT),
        "rxen testguest: booted on 2 vCPUs with 64 MiB"
    );
    (file, machine)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|k| ((seed + 31 * k) % 256) as u8)
        .collect()
}

#[test]
fn disks_lists_the_disk_with_serial_and_size() {
    let (_file, machine) = boot_with_disk(false);
    assert_eq!(machine.command("disks", "disk"), "disk 0 xvda 2048 rw");
}

#[test]
fn no_disks_without_devices() {
    let machine = Machine::booted();
    assert_eq!(machine.command("disks", "no disks"), "no disks");
    assert_eq!(
        machine.command("blkread xvda 0 1", "blkread"),
        "blkread error: nodev"
    );
}

#[test]
fn blkwrite_puts_the_pattern_on_disk_and_blkread_returns_its_crc() {
    let (file, machine) = boot_with_disk(false);
    // 300 sectors: more than one 64 KiB request, so the pattern must continue across them.
    assert_eq!(
        machine.command("blkwrite xvda 5 300 7", "blkwrite"),
        "blkwrite ok"
    );
    assert_eq!(machine.command("blkflush xvda", "blkflush"), "blkflush ok");
    let bytes = std::fs::read(file.path()).expect("read image");
    assert_eq!(&bytes[5 * 512..305 * 512], pattern(7, 300 * 512).as_slice());
    assert!(
        bytes[..5 * 512].iter().all(|&b| b == 0xEE),
        "wrote before sector 5"
    );
    assert!(
        bytes[305 * 512..].iter().all(|&b| b == 0xEE),
        "wrote past sector 305"
    );

    let expected = crc32fast::hash(&bytes[3 * 512..403 * 512]);
    assert_eq!(
        machine.command("blkread xvda 3 400", "blkread"),
        format!("blkread crc32={expected:08x}")
    );
    // Beyond the end of the disk: the device answers IOERR.
    assert_eq!(
        machine.command("blkread xvda 2047 2", "blkread"),
        "blkread error: ioerr"
    );
}

#[test]
fn read_only_disk_refuses_writes() {
    let (file, machine) = boot_with_disk(true);
    assert_eq!(machine.command("disks", "disk"), "disk 0 xvda 2048 ro");
    assert_eq!(
        machine.command("blkwrite xvda 0 1 1", "blkwrite"),
        "blkwrite error: ioerr"
    );
    let bytes = std::fs::read(file.path()).expect("read image");
    assert!(
        bytes.iter().all(|&b| b == 0xEE),
        "a read-only image changed"
    );
    let expected = crc32fast::hash(&bytes[..512]);
    assert_eq!(
        machine.command("blkread xvda 0 1", "blkread"),
        format!("blkread crc32={expected:08x}")
    );
}

#[test]
fn blkbad_chains_fail_cleanly_and_the_device_survives() {
    let (file, machine) = boot_with_disk(false);
    assert_eq!(
        machine.command("blkbad xvda", "blkbad"),
        "blkbad: 4 sent, 4 failed cleanly, device ok"
    );
    // And it still does real work.
    assert_eq!(
        machine.command("blkwrite xvda 0 1 3", "blkwrite"),
        "blkwrite ok"
    );
    let bytes = std::fs::read(file.path()).expect("read image");
    assert_eq!(&bytes[..512], pattern(3, 512).as_slice());
}

#[test]
fn blkbench_reports_both_directions() {
    let (_file, machine) = boot_with_disk(false);
    for dir in ["read", "write"] {
        let line = machine.command(&format!("blkbench xvda {dir} 2"), "blkbench");
        let rest = line
            .strip_prefix(&format!("blkbench {dir} 2 MiB in "))
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let ms = rest.strip_suffix(" ms").expect("ms suffix");
        ms.parse::<u64>().expect("a number of ms");
    }
}

#[test]
fn blkbench_randread_reads_in_4_kib_requests() {
    let (_file, block) = image(false);
    let stats = block.stats();
    let machine = Machine::boot_with(1, 64, vec![(0, Box::new(block))], &[]);
    machine.expect_line("rxen testguest:", harness::LONG_WAIT);
    let before = stats.snapshot();
    let line = machine.command("blkbench xvda randread 2", "blkbench");
    let ms = line
        .strip_prefix("blkbench randread 2 MiB in ")
        .and_then(|rest| rest.strip_suffix(" ms"))
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    ms.parse::<u64>().expect("a number of ms");
    let after = stats.snapshot();
    // 2 MiB in 4 KiB requests: 512 reads of 8 sectors each (the 64 KiB sequential mode would
    // make 32), none failed.
    assert_eq!(after.read_requests - before.read_requests, 512);
    assert_eq!(after.read_sectors - before.read_sectors, 4096);
    assert_eq!(after.errors, before.errors);
}
