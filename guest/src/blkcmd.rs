//! The disk commands of the console: `disks`, `blkwrite`, `blkread`, `blkflush`, `blkbench`, `blkbad`.

use crate::crc32::{fill_pattern, Crc32};
use crate::devices::Devices;
use crate::mailbox;
use crate::println;
use crate::time::Instant;
use crate::virtio::blk::{Direction, RawDesc, CHUNK_SECTORS, SECTOR};
use crate::virtio::queue::{DESC_NEXT, DESC_WRITE};
use crate::work::Vcpu;

/// `disks`: one line per disk.
pub fn disks(devices: &Devices) {
    let mut any = false;
    for disk in devices.disks() {
        any = true;
        println!(
            "disk {} {} {} {}",
            disk.slot,
            disk.serial(),
            disk.sectors,
            if disk.read_only { "ro" } else { "rw" }
        );
    }
    if !any {
        println!("no disks");
    }
}

/// `blkwrite SERIAL SECTOR COUNT SEED`: writes the pattern for SEED.
pub fn blkwrite(
    devices: &mut Devices,
    serial: &str,
    sector: u64,
    count: u64,
    seed: u64,
    vcpu: &mut Vcpu,
) {
    let Some(disk) = devices.disk(serial) else {
        println!("blkwrite error: nodev");
        return;
    };
    let mut done = 0;
    while done < count {
        let n = (count - done).min(CHUNK_SECTORS);
        let len = (n * SECTOR) as usize;
        fill_pattern(
            disk.buffer().get_mut(..len).unwrap_or_default(),
            seed,
            done * SECTOR,
        );
        if let Err(e) = disk.io(Direction::ToDevice, sector.saturating_add(done), n) {
            println!("blkwrite error: {}", e.name());
            return;
        }
        done += n;
        vcpu.poll_tick();
    }
    println!("blkwrite ok");
}

/// `blkread SERIAL SECTOR COUNT`: reads and prints the CRC-32 of the data.
pub fn blkread(devices: &mut Devices, serial: &str, sector: u64, count: u64, vcpu: &mut Vcpu) {
    let Some(disk) = devices.disk(serial) else {
        println!("blkread error: nodev");
        return;
    };
    let mut crc = Crc32::new();
    let mut done = 0;
    while done < count {
        let n = (count - done).min(CHUNK_SECTORS);
        if let Err(e) = disk.io(Direction::FromDevice, sector.saturating_add(done), n) {
            println!("blkread error: {}", e.name());
            return;
        }
        crc.update(
            disk.buffer()
                .get(..(n * SECTOR) as usize)
                .unwrap_or_default(),
        );
        done += n;
        vcpu.poll_tick();
    }
    println!("blkread crc32={:08x}", crc.finish());
}

/// `blkflush SERIAL`.
pub fn blkflush(devices: &mut Devices, serial: &str) {
    match devices.disk(serial).map(|disk| disk.flush()) {
        None => println!("blkflush error: nodev"),
        Some(Ok(())) => println!("blkflush ok"),
        Some(Err(e)) => println!("blkflush error: {}", e.name()),
    }
}

/// `blkbench SERIAL read|write MIB`: moves MIB MiB in 64 KiB requests, wrapping around the disk.
pub fn blkbench(devices: &mut Devices, serial: &str, write: bool, mib: u64, vcpu: &mut Vcpu) {
    let word = if write { "write" } else { "read" };
    let Some(disk) = devices.disk(serial) else {
        println!("blkbench error: nodev");
        return;
    };
    let chunk = CHUNK_SECTORS.min(disk.sectors);
    if chunk == 0 {
        println!("blkbench error: ioerr");
        return;
    }
    if write {
        fill_pattern(disk.buffer(), 0, 0);
    }
    let direction = if write {
        Direction::ToDevice
    } else {
        Direction::FromDevice
    };
    let total = mib.saturating_mul(1 << 20) / SECTOR;
    let span = disk.sectors / chunk * chunk;
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        let n = (total - done).min(chunk);
        if let Err(e) = disk.io(direction, done % span, n) {
            println!("blkbench error: {}", e.name());
            return;
        }
        done += n;
        vcpu.poll_tick();
    }
    println!("blkbench {word} {mib} MiB in {} ms", start.elapsed_ms());
}

/// Sectors per request of `blkbench SERIAL randread MIB` (4 KiB).
const RAND_SECTORS: u64 = 8;

/// `blkbench SERIAL randread MIB`: reads MIB MiB in 4 KiB requests at random 4 KiB-aligned
/// places of the disk (a fixed xorshift sequence, the same on every run and monitor).
pub fn blkbench_randread(devices: &mut Devices, serial: &str, mib: u64, vcpu: &mut Vcpu) {
    let Some(disk) = devices.disk(serial) else {
        println!("blkbench error: nodev");
        return;
    };
    let places = disk.sectors / RAND_SECTORS;
    if places == 0 {
        println!("blkbench error: ioerr");
        return;
    }
    let total = mib.saturating_mul(1 << 20) / (RAND_SECTORS * SECTOR);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let start = Instant::now();
    for _ in 0..total {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let sector = state % places * RAND_SECTORS;
        if let Err(e) = disk.io(Direction::FromDevice, sector, RAND_SECTORS) {
            println!("blkbench error: {}", e.name());
            return;
        }
        vcpu.poll_tick();
    }
    println!("blkbench randread {mib} MiB in {} ms", start.elapsed_ms());
}

/// `blkbad SERIAL`: malformed chains, each of which the device must fail cleanly.
pub fn blkbad(devices: &mut Devices, serial: &str) {
    let Some(disk) = devices.disk(serial) else {
        println!("blkbad error: nodev");
        return;
    };
    let (header, status) = disk.request_addrs(true);
    let data = disk.buffer_addr();
    let beyond_ram = mailbox::boot_info().mem_bytes.saturating_add(1 << 40);
    let r = |addr, len, next| RawDesc {
        addr,
        len,
        flags: DESC_NEXT,
        next,
    };
    let w = |addr, len, flags, next| RawDesc {
        addr,
        len,
        flags: DESC_WRITE | flags,
        next,
    };
    let chains: [&[RawDesc]; 4] = [
        // A data buffer far beyond guest RAM.
        &[
            r(header, 16, 1),
            w(beyond_ram, 512, DESC_NEXT, 2),
            w(status, 1, 0, 0),
        ],
        // A chain whose `next` loops back to its head.
        &[r(header, 16, 1), w(data, 512, DESC_NEXT, 0)],
        // Lengths whose sum overflows 32 bits.
        &[
            r(header, 16, 1),
            w(data, 0xFFFF_FE00, DESC_NEXT, 2),
            w(data, 0x400, DESC_NEXT, 3),
            w(status, 1, 0, 0),
        ],
        // No writable status byte at all.
        &[RawDesc {
            addr: header,
            len: 16,
            flags: 0,
            next: 0,
        }],
    ];
    let mut sent = 0;
    let mut clean = 0;
    for chain in chains {
        // Each chain rewrites the header (a read of sector 0).
        let _ = disk.request_addrs(true);
        sent += 1;
        match disk.submit_raw(chain) {
            Ok(used) if used == 0 || disk.last_status() != 0 => clean += 1,
            Ok(_) | Err(_) => {}
        }
    }
    let ok = disk.usable() && disk.io(Direction::FromDevice, 0, 1).is_ok();
    println!(
        "blkbad: {sent} sent, {clean} failed cleanly, device {}",
        if ok { "ok" } else { "broken" }
    );
}
