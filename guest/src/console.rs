//! The console language (docs/internals.md), run by vCPU 0 between ticks.

use core::sync::atomic::Ordering;

use crate::blkcmd;
use crate::cpu::{halt_forever, inb, outb};
use crate::devices::Devices;
use crate::freemem;
use crate::hotplug::Hotplug;
use crate::idt::PVPANIC_PORT;
use crate::mailbox::{self, CHECKED_IN, DIRTY_MIB_PER_S, TICKS};
use crate::netcmd;
use crate::pvh;
use crate::vcpus;
use crate::work::Vcpu;
use crate::{print, println, serial};

/// The rxen power port: 0 = power off, 1 = reboot.
const POWER_PORT: u16 = 0x510;
/// The host request port: 0 = none, 1 = shut down, 2 = reboot.
const HOST_REQUEST_PORT: u16 = 0x512;
/// Ticks vCPU 0 waits for the others to check in before printing the banner anyway.
const CHECK_IN_TIMEOUT_TICKS: u64 = 300;
/// Ticks between polls of the hotplug, balloon and vCPU ports (100 ms).
const SLOW_POLL_TICKS: u64 = 10;
/// Longest command line kept; further characters are dropped.
const LINE_MAX: usize = 120;

const HELP: &str = "\
commands:
  heartbeat    print the heartbeat (100 ms ticks of running time)
  shutdown     power off
  reboot       reboot
  crash        crash (pvpanic)
  burn S [V]   spin vCPU V (default: the last) for S seconds
  dirty R      rewrite free memory at R MiB/s (0 stops)
  memsum       hash the free memory
  memfill SEED fill the free memory with a pattern
  disks        list the disks
  blkwrite SERIAL SECTOR COUNT SEED   write a pattern
  blkread SERIAL SECTOR COUNT         read and print the CRC-32
  blkflush SERIAL                     flush the disk
  blkbench SERIAL read|write|randread MIB  measure throughput (randread: 4 KiB at random places)
  blkbad SERIAL                       send malformed requests
  nics                                list the network cards
  ip ADDR/PREFIX [SLOT]               set a card's address
  ping ADDR [COUNT]                   ICMP echo
  udpsend ADDR PORT MIB               send UDP datagrams
  spoof SRC DST                       one echo request from a forged source
  vcpus                               list the vCPUs online
  balloon                             pages given back to the host
  help         this list";

/// The line editor and command interpreter.
struct Console {
    line: [u8; LINE_MAX],
    len: usize,
    after_cr: bool,
    /// A BREAK was received: the next byte is a magic SysRq key, not input.
    sysrq: bool,
    devices: &'static mut Devices,
}

/// The device table. With 24 slots (QEMU microvm's transports) it is tens of KiB, too big for
/// vCPU 0's 32 KiB stack next to what the commands put there, so it is a static that vCPU 0's
/// console takes once.
static mut DEVICES: Devices = Devices::new();

/// Runs vCPU 0: prints the banner, then serves the console and host requests forever.
pub fn run(mut vcpu: Vcpu) -> ! {
    let info = mailbox::boot_info();
    let expected = info.vcpus as u32;
    while CHECKED_IN.load(Ordering::Acquire) < expected
        && TICKS.load(Ordering::Relaxed) < CHECK_IN_TIMEOUT_TICKS
    {
        vcpu.next_tick();
    }
    let online = vcpus::online().min(CHECKED_IN.load(Ordering::Acquire));
    println!(
        "rxen testguest: booted on {online} vCPUs with {} MiB",
        info.mem_bytes >> 20
    );
    vcpus::report();
    let mut console = Console {
        line: [0; LINE_MAX],
        len: 0,
        after_cr: false,
        sysrq: false,
        // SAFETY: `run` is vCPU 0's loop, entered once and never left, and nothing else
        // touches DEVICES: this is the only reference ever made to it.
        devices: unsafe { &mut *core::ptr::addr_of_mut!(DEVICES) },
    };
    let mut hotplug = Hotplug::new();
    let mut last_slow_poll = TICKS.load(Ordering::Relaxed);
    console.devices.scan(false, 0);
    loop {
        match inb(HOST_REQUEST_PORT) {
            1 => {
                println!("shutdown requested by host");
                power_off();
            }
            2 => {
                println!("reboot requested by host");
                reboot();
            }
            _ => {}
        }
        netcmd::poll(console.devices);
        let ticks = TICKS.load(Ordering::Relaxed);
        if ticks.wrapping_sub(last_slow_poll) >= SLOW_POLL_TICKS {
            last_slow_poll = ticks;
            hotplug.poll(console.devices);
            for disk in console.devices.disks_mut() {
                if disk.media_changed() {
                    println!("media: {} {}", disk.serial(), disk.sectors);
                }
            }
            vcpus::poll();
            if let Some(balloon) = console.devices.balloon() {
                balloon.poll();
            }
        }
        while let Some(got) = serial::try_read() {
            match got {
                serial::Received::Break => console.sysrq = true,
                serial::Received::Byte(key) if core::mem::take(&mut console.sysrq) => {
                    // A magic SysRq key (a BREAK, then the key): named, not typed.
                    if console.len > 0 {
                        print!("\n");
                    }
                    if key.is_ascii_graphic() {
                        println!("sysrq: {}", char::from(key));
                    } else {
                        println!("sysrq: {key:#04x}");
                    }
                }
                serial::Received::Byte(byte) => console.input(byte, &mut vcpu),
            }
        }
        vcpu.next_tick();
    }
}

impl Console {
    /// Handles one received byte: echo, edit, or run the line.
    fn input(&mut self, byte: u8, vcpu: &mut Vcpu) {
        let after_cr = core::mem::replace(&mut self.after_cr, byte == b'\r');
        match byte {
            b'\n' if after_cr => {}
            b'\r' | b'\n' => {
                print!("\n");
                let len = core::mem::take(&mut self.len);
                // Only printable ASCII is ever stored, so this is valid UTF-8.
                let line = self.line.get(..len).unwrap_or_default();
                execute(
                    core::str::from_utf8(line).unwrap_or_default(),
                    vcpu,
                    self.devices,
                );
            }
            0x08 | 0x7F if self.len > 0 => {
                self.len -= 1;
                print!("\x08 \x08");
            }
            0x20..=0x7E => {
                if let Some(slot) = self.line.get_mut(self.len) {
                    *slot = byte;
                    self.len += 1;
                    print!("{}", char::from(byte));
                }
            }
            _ => {}
        }
    }
}

/// Runs one command line.
fn execute(line: &str, vcpu: &mut Vcpu, devices: &mut Devices) {
    let mut words = line.split_ascii_whitespace();
    let Some(command) = words.next() else {
        return;
    };
    let args: Args = Args::collect(words);
    match (command, args.count) {
        ("heartbeat", 0) => println!("heartbeat {}", TICKS.load(Ordering::Relaxed) / 10),
        ("shutdown", 0) => power_off(),
        ("reboot", 0) => reboot(),
        ("crash", 0) => {
            println!("crashing");
            outb(PVPANIC_PORT, 1);
            halt_forever();
        }
        ("burn", 1 | 2) => burn(&args, vcpu),
        ("dirty", 1) => match args.number(0) {
            Some(0) => {
                DIRTY_MIB_PER_S.store(0, Ordering::Relaxed);
                println!("dirty stopped");
            }
            Some(rate) => {
                DIRTY_MIB_PER_S.store(rate, Ordering::Relaxed);
                println!("dirtying {rate} MiB/s");
            }
            None => println!("usage: dirty R"),
        },
        ("disks", 0) => blkcmd::disks(devices),
        ("blkwrite", 4) => match (args.number(1), args.number(2), args.number(3)) {
            (Some(sector), Some(count), Some(seed)) => {
                blkcmd::blkwrite(devices, args.word(0), sector, count, seed, vcpu)
            }
            _ => println!("usage: blkwrite SERIAL SECTOR COUNT SEED"),
        },
        ("blkread", 3) => match (args.number(1), args.number(2)) {
            (Some(sector), Some(count)) => {
                blkcmd::blkread(devices, args.word(0), sector, count, vcpu)
            }
            _ => println!("usage: blkread SERIAL SECTOR COUNT"),
        },
        ("blkflush", 1) => blkcmd::blkflush(devices, args.word(0)),
        ("blkbench", 3) => match (args.word(1), args.number(2)) {
            ("read", Some(mib)) => blkcmd::blkbench(devices, args.word(0), false, mib, vcpu),
            ("write", Some(mib)) => blkcmd::blkbench(devices, args.word(0), true, mib, vcpu),
            ("randread", Some(mib)) => {
                blkcmd::blkbench_randread(devices, args.word(0), mib, vcpu)
            }
            _ => println!("usage: blkbench SERIAL read|write|randread MIB"),
        },
        ("blkbad", 1) => blkcmd::blkbad(devices, args.word(0)),
        ("memsum", 0) => freemem::memsum(vcpu),
        ("memfill", 1) => match args.number(0) {
            Some(seed) => freemem::memfill(seed, vcpu),
            None => println!("usage: memfill SEED"),
        },
        ("memfill", _) => println!("usage: memfill SEED"),
        ("nics", 0) => netcmd::nics(devices),
        ("ip", 1 | 2) => {
            let slot = if args.count == 2 {
                args.number(1)
            } else {
                None
            };
            if args.count == 2 && slot.is_none() {
                println!("usage: ip ADDR/PREFIX [SLOT]");
            } else {
                netcmd::ip(devices, args.word(0), slot);
            }
        }
        ("ping", 1 | 2) => {
            let count = if args.count == 2 {
                args.number(1)
            } else {
                Some(4)
            };
            match count {
                Some(count) => netcmd::ping(devices, args.word(0), count, vcpu),
                None => println!("usage: ping ADDR [COUNT]"),
            }
        }
        ("udpsend", 3) => match (args.number(1), args.number(2)) {
            (Some(port), Some(mib)) => netcmd::udpsend(devices, args.word(0), port, mib, vcpu),
            _ => println!("usage: udpsend ADDR PORT MIB"),
        },
        ("spoof", 2) => netcmd::spoof(devices, args.word(0), args.word(1), vcpu),
        ("ip", _) => println!("usage: ip ADDR/PREFIX [SLOT]"),
        ("ping", _) => println!("usage: ping ADDR [COUNT]"),
        ("udpsend", _) => println!("usage: udpsend ADDR PORT MIB"),
        ("spoof", _) => println!("usage: spoof SRC DST"),
        ("vcpus", 0) => vcpus::show(),
        ("balloon", 0) => {
            let pages = devices.balloon().map_or(0, |b| b.inflated());
            println!("balloon {pages} pages ({} MiB) given back", pages >> 8);
        }
        ("help", 0) => println!("{HELP}"),
        ("blkwrite", _) => println!("usage: blkwrite SERIAL SECTOR COUNT SEED"),
        ("blkread", _) => println!("usage: blkread SERIAL SECTOR COUNT"),
        ("blkflush", _) => println!("usage: blkflush SERIAL"),
        ("blkbench", _) => println!("usage: blkbench SERIAL read|write|randread MIB"),
        ("blkbad", _) => println!("usage: blkbad SERIAL"),
        ("burn", _) => println!("usage: burn S [V]"),
        ("dirty", _) => println!("usage: dirty R"),
        (
            "heartbeat" | "shutdown" | "reboot" | "crash" | "help" | "disks" | "memsum" | "nics",
            _,
        ) => {
            println!("usage: {command}")
        }
        _ => println!("unknown command: {command}"),
    }
}

/// `burn S [V]`: vCPU V (default: the last) spins for S seconds.
fn burn(args: &Args, vcpu: &mut Vcpu) {
    let vcpus = mailbox::boot_info().vcpus;
    let seconds = args.number(0);
    let target = if args.count == 2 {
        args.number(1).and_then(|v| usize::try_from(v).ok())
    } else {
        Some(mailbox::dirty_vcpu())
    };
    match (seconds, target) {
        (Some(_), Some(target)) if target < vcpus && !mailbox::wanted(target) => {
            println!("burn: vcpu {target} is offline")
        }
        (Some(seconds), Some(target)) if target < vcpus => {
            println!("burning vcpu {target} for {seconds} s");
            if target == vcpu.index {
                vcpu.burn(seconds);
            } else {
                mailbox::request_burn(target, seconds);
            }
        }
        _ => println!("usage: burn S [V] (V < {vcpus})"),
    }
}

fn power_off() -> ! {
    println!("powering off");
    outb(POWER_PORT, 0);
    after_power_port()
}

fn reboot() -> ! {
    println!("rebooting");
    outb(POWER_PORT, 1);
    after_power_port()
}

/// Under rxen the power port ends the guest; under another PVH loader (QEMU) a triple fault does.
fn after_power_port() -> ! {
    if pvh::booted_via_pvh() {
        pvh::triple_fault()
    }
    halt_forever()
}

/// Most arguments a command takes.
const MAX_ARGS: usize = 4;

/// Up to `MAX_ARGS` arguments, kept as text, and how many were given.
struct Args<'a> {
    words: [&'a str; MAX_ARGS],
    count: usize,
}

impl<'a> Args<'a> {
    fn collect(words: impl Iterator<Item = &'a str>) -> Args<'a> {
        let mut args = Args {
            words: [""; MAX_ARGS],
            count: 0,
        };
        for word in words {
            if let Some(slot) = args.words.get_mut(args.count) {
                *slot = word;
            }
            args.count += 1;
        }
        args
    }

    /// The argument at `index` ("" if absent).
    fn word(&self, index: usize) -> &'a str {
        self.words.get(index).copied().unwrap_or_default()
    }

    /// The argument at `index` as a decimal number.
    fn number(&self, index: usize) -> Option<u64> {
        self.words.get(index)?.parse().ok()
    }
}
