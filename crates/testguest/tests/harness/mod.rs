//! A minimal KVM harness for the test guest (not the VMM): memory, boot structures,
//! vCPU threads, the console, the power ports, and virtio-mmio devices in the 16 slots.

#![allow(dead_code)]

#[path = "../../src/elf.rs"]
pub mod elf;

use std::collections::VecDeque;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_mp_state, kvm_pit_config, kvm_regs, kvm_segment, kvm_userspace_memory_region,
    KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use rxen_virtio::{GuestMemoryMmap, Interrupt, InterruptKind, MmioTransport, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const GDT_ADDR: u64 = 0x500;
const BOOT_INFO_ADDR: u64 = 0x6000;
const PML4_ADDR: u64 = 0x9000;
const PDPT_ADDR: u64 = 0xA000;
const PD_ADDR: u64 = 0xB000;
const BOOT_MAGIC: u64 = 0x544F_4F42_4E45_5852;

const COM1: u16 = 0x3F8;
const PVPANIC_PORT: u16 = 0x505;
const POWER_PORT: u16 = 0x510;
const HOST_REQUEST_PORT: u16 = 0x512;

pub const LONG_WAIT: Duration = Duration::from_secs(20);

/// Something that ended (or broke) the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A write to the power port (0 = off, 1 = reboot).
    Power(u8),
    /// A write to the pvpanic port.
    Panic(u8),
    /// KVM_EXIT_SHUTDOWN (triple fault).
    TripleFault,
    /// Anything the harness does not expect.
    Error(String),
}

#[derive(Default)]
struct State {
    output: Vec<u8>,
    /// How far `expect_line` has read `output`.
    read_to: usize,
    input: VecDeque<u8>,
    dlab: bool,
    host_request: u8,
    events: Vec<Event>,
    /// While set, vCPU threads stay out of KVM_RUN (the VM is paused).
    paused: bool,
    /// vCPU threads currently parked because of `paused`.
    parked: usize,
    /// Values of the 32-bit host ports (hotplug 0x514/0x515, vCPU mask 0x516); others read all ones.
    ports: std::collections::HashMap<u16, u32>,
    /// Every 32-bit write to a port other than the console and power ports.
    port_writes: Vec<(u16, u32)>,
}

struct Shared {
    state: Mutex<State>,
    /// The virtio-mmio slots.
    slots: Mutex<Vec<Option<MmioTransport>>>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("harness state lock")
    }

    fn end(&self, event: Event) {
        self.lock().events.push(event);
        self.stop.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }
}

/// A running guest: its memory, its vCPU threads and what it printed.
pub struct Machine {
    shared: Arc<Shared>,
    /// The vCPU threads' CPU-time clocks.
    cpu_clocks: Vec<libc::clockid_t>,
    threads: Vec<JoinHandle<()>>,
    pub memory: Arc<GuestMemoryMmap>,
    pub mem_bytes: u64,
    pub kernel_end: u64,
    _vm: VmFd,
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs a no-op SIGUSR1 handler, used to kick vCPU threads out of KVM_RUN.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a handler that does nothing is valid.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
                0
            );
        }
    });
}

fn write_u64(memory: &GuestMemoryMmap, addr: u64, value: u64) {
    memory
        .write_obj(value, GuestAddress(addr))
        .expect("write guest memory");
}

/// Loads the PT_LOAD segments; returns the entry point and the 4 KiB-aligned end.
fn load_image(memory: &GuestMemoryMmap) -> (u64, u64) {
    let image = rxen_testguest::image();
    let parsed = elf::parse(image).expect("embedded image parses");
    let mut end = 0;
    for segment in parsed.segments.iter().filter(|s| s.kind == elf::PT_LOAD) {
        let bytes = elf::segment_bytes(image, segment).expect("segment bytes");
        memory
            .write_slice(bytes, GuestAddress(segment.paddr))
            .expect("load segment");
        end = end.max(segment.paddr + segment.memsz);
    }
    (parsed.entry, end.div_ceil(4096) * 4096)
}

/// GDT, identity page tables and the boot info, as docs/internals.md lays them out.
fn write_boot_structures(
    memory: &GuestMemoryMmap,
    vcpus: u32,
    mem_bytes: u64,
    tsc_khz: u64,
    kernel_end: u64,
) {
    let gdt: [u64; 5] = [
        0,
        0x00AF_9B00_0000_FFFF,
        0x00CF_9300_0000_FFFF,
        0x0000_8B00_0000_0067,
        0,
    ];
    for (i, entry) in gdt.iter().enumerate() {
        write_u64(memory, GDT_ADDR + 8 * i as u64, *entry);
    }
    let gib = mem_bytes.div_ceil(1 << 30).max(4);
    write_u64(memory, PML4_ADDR, PDPT_ADDR | 0x3);
    for g in 0..gib {
        let pd = PD_ADDR + g * 0x1000;
        write_u64(memory, PDPT_ADDR + 8 * g, pd | 0x3);
        for j in 0..512 {
            write_u64(memory, pd + 8 * j, ((g * 512 + j) << 21) | 0x83);
        }
    }
    write_u64(memory, BOOT_INFO_ADDR, BOOT_MAGIC);
    memory
        .write_obj(1u32, GuestAddress(BOOT_INFO_ADDR + 8))
        .expect("boot info");
    memory
        .write_obj(vcpus, GuestAddress(BOOT_INFO_ADDR + 12))
        .expect("boot info");
    write_u64(memory, BOOT_INFO_ADDR + 16, mem_bytes);
    write_u64(memory, BOOT_INFO_ADDR + 24, tsc_khz);
    write_u64(memory, BOOT_INFO_ADDR + 32, kernel_end);
}

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn setup_vcpu(kvm: &Kvm, vcpu: &VcpuFd, index: u32, entry: u64) {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported cpuid");
    for leaf in cpuid.as_mut_slice() {
        match leaf.function {
            1 => {
                leaf.ebx = (leaf.ebx & 0x00FF_FFFF) | (index << 24);
                leaf.ecx |= (1 << 21) | (1 << 24);
            }
            0xB | 0x1F => leaf.edx = index,
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).expect("set cpuid");

    let mut sregs = vcpu.get_sregs().expect("get sregs");
    sregs.cs = segment(0x08, 0xB, true);
    let data = segment(0x10, 0x3, false);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = kvm_segment {
        limit: 0x67,
        selector: 0x18,
        type_: 0xB,
        s: 0,
        g: 0,
        db: 0,
        ..segment(0x18, 0xB, false)
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 5 * 8 - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = 0x8001_0033; // PE | MP | ET | NE | WP | PG
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = 0x20; // PAE
    sregs.efer = 0x500; // LME | LMA
    vcpu.set_sregs(&sregs).expect("set sregs");

    let regs = kvm_regs {
        rip: entry,
        rdi: u64::from(index),
        rsi: BOOT_INFO_ADDR,
        rsp: 0,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).expect("set regs");
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    })
    .expect("set mp state");
}

/// Where the 16 virtio-mmio slots start (docs/internals.md).
pub const SLOTS_BASE: u64 = 0xD000_0000;
/// Bytes per slot.
pub const SLOT_SIZE: u64 = 0x1000;

/// The slot and offset of an MMIO address, if it falls in a slot window.
fn slot_of(addr: u64) -> Option<(usize, u64)> {
    let offset = addr.checked_sub(SLOTS_BASE)?;
    let slot = usize::try_from(offset / SLOT_SIZE)
        .ok()
        .filter(|&s| s < 16)?;
    Some((slot, offset % SLOT_SIZE))
}

/// Interrupts go nowhere: the test guest polls its devices.
struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn trigger(&self, _: InterruptKind) -> std::io::Result<()> {
        Ok(())
    }
}

/// Handles one exit; returns the event that ends the guest, if any.
fn handle_exit(shared: &Shared, exit: VcpuExit<'_>) -> Option<Event> {
    match exit {
        VcpuExit::IoOut(port, data) if data.len() != 4 => {
            let value = data.first().copied().unwrap_or(0);
            match port {
                COM1 => {
                    let mut state = shared.lock();
                    if !state.dlab {
                        state.output.push(value);
                        drop(state);
                        shared.changed.notify_all();
                    }
                }
                0x3FB => shared.lock().dlab = value & 0x80 != 0,
                PVPANIC_PORT => return Some(Event::Panic(value)),
                POWER_PORT => return Some(Event::Power(value)),
                _ => {}
            }
            None
        }
        VcpuExit::IoIn(port, data) if data.len() == 4 => {
            let value = shared.lock().ports.get(&port).copied().unwrap_or(u32::MAX);
            data.copy_from_slice(&value.to_le_bytes());
            None
        }
        VcpuExit::IoOut(port, data) if data.len() == 4 => {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(data);
            shared
                .lock()
                .port_writes
                .push((port, u32::from_le_bytes(bytes)));
            shared.changed.notify_all();
            None
        }
        VcpuExit::IoIn(port, data) => {
            let mut state = shared.lock();
            let value = match port {
                0x3FD => 0x60 | u8::from(!state.input.is_empty()),
                COM1 => state.input.pop_front().unwrap_or(0),
                HOST_REQUEST_PORT => state.host_request,
                _ => 0xFF,
            };
            data.fill(value);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            data.fill(0);
            if let Some((slot, offset)) = slot_of(addr) {
                if let Some(Some(device)) = shared.slots.lock().expect("slots lock").get_mut(slot) {
                    device.read(offset, data);
                }
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            if let Some((slot, offset)) = slot_of(addr) {
                let mut slots = shared.slots.lock().expect("slots lock");
                if let Some(Some(device)) = slots.get_mut(slot) {
                    device.write(offset, data);
                }
                drop(slots);
                shared.changed.notify_all();
            }
            None
        }
        VcpuExit::Shutdown => Some(Event::TripleFault),
        other => Some(Event::Error(format!("unexpected exit {other:?}"))),
    }
}

/// Parks the calling vCPU thread while the VM is paused.
fn park_while_paused(shared: &Shared) {
    let mut state = shared.lock();
    if !state.paused {
        return;
    }
    state.parked += 1;
    shared.changed.notify_all();
    while state.paused && !shared.stop.load(Ordering::SeqCst) {
        state = shared.changed.wait(state).expect("harness state lock");
    }
    state.parked -= 1;
}

fn run_vcpu(mut vcpu: VcpuFd, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        park_while_paused(&shared);
        let ended = match vcpu.run() {
            Ok(exit) => {
                if std::env::var_os("RXEN_TRACE").is_some() {
                    eprintln!("exit: {exit:?}");
                }
                handle_exit(&shared, exit)
            }
            Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => None,
            Err(error) => Some(Event::Error(format!("KVM_RUN: {error}"))),
        };
        if let Some(mut event) = ended {
            if let Event::Error(message) = &mut event {
                let regs = vcpu.get_regs().map(|r| (r.rip, r.rsp, r.rdi));
                let sregs = vcpu.get_sregs().map(|s| (s.cr0, s.cr4, s.efer));
                // SAFETY: reading the union's `internal` view only for diagnostics.
                let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
                message.push_str(&format!(
                    " (rip, rsp, rdi) {regs:?} (cr0, cr4, efer) {sregs:?} suberror {} data {:x?}",
                    internal.suberror,
                    &internal.data[..internal.ndata.min(16) as usize]
                ));
            }
            shared.end(event);
        }
    }
}

impl Machine {
    /// Creates a VM with `vcpus` vCPUs and `mem_mib` MiB, loads the guest and starts it.
    pub fn boot(vcpus: u32, mem_mib: u64) -> Machine {
        Machine::boot_with(vcpus, mem_mib, Vec::new(), &[])
    }

    /// Like `boot`, with virtio devices in the given slots and initial values of 32-bit host ports.
    pub fn boot_with(
        vcpus: u32,
        mem_mib: u64,
        devices: Vec<(usize, Box<dyn VirtioDevice>)>,
        ports: &[(u16, u32)],
    ) -> Machine {
        install_kick_handler();
        let kvm = Kvm::new().expect("open /dev/kvm (these tests need KVM)");
        let vm = kvm.create_vm().expect("create VM");
        vm.set_tss_address(0xFFFB_D000).expect("set TSS address");
        vm.create_irq_chip().expect("create irqchip");
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .expect("create PIT");

        let mem_bytes = mem_mib << 20;
        let memory = Arc::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_bytes as usize)])
                .expect("guest memory"),
        );
        let host = memory
            .get_host_address(GuestAddress(0))
            .expect("host address") as u64;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem_bytes,
            userspace_addr: host,
        };
        // SAFETY: the region is a live mapping of `mem_bytes` that outlives the VM
        // (the Machine holds both, and the VM is dropped with the vCPU threads joined).
        unsafe { vm.set_user_memory_region(region) }.expect("set memory region");

        let (entry, kernel_end) = load_image(&memory);
        let vcpu_fds: Vec<VcpuFd> = (0..vcpus)
            .map(|i| vm.create_vcpu(u64::from(i)).expect("create vCPU"))
            .collect();
        let tsc_khz = u64::from(vcpu_fds[0].get_tsc_khz().expect("TSC frequency"));
        write_boot_structures(&memory, vcpus, mem_bytes, tsc_khz, kernel_end);
        for (i, vcpu) in vcpu_fds.iter().enumerate() {
            setup_vcpu(&kvm, vcpu, i as u32, entry);
        }

        let mut slots: Vec<Option<MmioTransport>> = (0..16).map(|_| None).collect();
        for (slot, device) in devices {
            slots[slot] = Some(
                MmioTransport::new(device, memory.clone(), Box::new(NoInterrupt))
                    .expect("virtio transport"),
            );
        }
        let state = State {
            ports: ports.iter().copied().collect(),
            ..State::default()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            slots: Mutex::new(slots),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let threads = vcpu_fds
            .into_iter()
            .map(|vcpu| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || run_vcpu(vcpu, shared))
            })
            .collect::<Vec<JoinHandle<()>>>();
        let cpu_clocks = threads
            .iter()
            .map(|thread| {
                let mut clock: libc::clockid_t = 0;
                // SAFETY: the thread is alive (it only ends when the guest does) and `clock` is writable.
                let rc = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
                assert_eq!(rc, 0, "pthread_getcpuclockid");
                clock
            })
            .collect();
        Machine {
            shared,
            cpu_clocks,
            threads,
            memory,
            mem_bytes,
            kernel_end,
            _vm: vm,
        }
    }

    /// Puts `device` in `slot` (replacing what was there).
    pub fn attach(&self, slot: usize, device: Box<dyn VirtioDevice>) {
        let transport = MmioTransport::new(device, self.memory.clone(), Box::new(NoInterrupt))
            .expect("virtio transport");
        self.shared.slots.lock().expect("slots lock")[slot] = Some(transport);
    }

    /// Empties `slot`; returns the transport that was there.
    pub fn remove(&self, slot: usize) -> Option<MmioTransport> {
        self.shared.slots.lock().expect("slots lock")[slot].take()
    }

    /// Runs `f` on the transport in `slot` (None if the slot is empty).
    pub fn with_slot<R>(&self, slot: usize, f: impl FnOnce(&mut MmioTransport) -> R) -> Option<R> {
        self.shared.slots.lock().expect("slots lock")[slot]
            .as_mut()
            .map(f)
    }

    /// Calls `notify(queue)` on the device in `slot` every millisecond until the guest ends,
    /// as a VMM does when a TAP becomes readable.
    pub fn pump(&self, slot: usize, queue: u16) {
        let shared = Arc::clone(&self.shared);
        std::thread::spawn(move || {
            while !shared.stop.load(Ordering::SeqCst) {
                if let Some(Some(device)) = shared.slots.lock().expect("slots lock").get_mut(slot) {
                    device.notify(queue);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    }

    /// Sets the value the guest reads from a 32-bit host port.
    pub fn set_port(&self, port: u16, value: u32) {
        self.shared.lock().ports.insert(port, value);
    }

    /// The 32-bit values the guest wrote to `port`, oldest first.
    pub fn port_writes(&self, port: u16) -> Vec<u32> {
        self.shared
            .lock()
            .port_writes
            .iter()
            .filter(|(p, _)| *p == port)
            .map(|(_, v)| *v)
            .collect()
    }

    /// Types `text` on the console.
    pub fn send(&self, text: &str) {
        self.shared.lock().input.extend(text.bytes());
    }

    /// Sets the value the guest reads from the host request port.
    pub fn set_host_request(&self, value: u8) {
        self.shared.lock().host_request = value;
    }

    /// Waits for the next complete output line starting with `prefix`; returns it.
    pub fn expect_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            while let Some(newline) = state.output[state.read_to..]
                .iter()
                .position(|&b| b == b'\n')
            {
                let start = state.read_to;
                state.read_to = start + newline + 1;
                let line =
                    String::from_utf8_lossy(&state.output[start..start + newline]).into_owned();
                if line.starts_with(prefix) {
                    return line;
                }
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "no line starting with {prefix:?} within {timeout:?}; events {:?}; console so far:\n{}",
                state.events,
                String::from_utf8_lossy(&state.output)
            );
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .expect("harness state lock")
                .0;
        }
    }

    /// Waits for the event that ends the guest.
    pub fn expect_end(&self, timeout: Duration) -> Event {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(event) = state.events.first() {
                return event.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "guest still running after {timeout:?}; console so far:\n{}",
                String::from_utf8_lossy(&state.output)
            );
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .expect("harness state lock")
                .0;
        }
    }

    /// Interrupts SIGUSR1 into every vCPU thread still inside KVM_RUN.
    pub fn kick(&self) {
        for thread in self.threads.iter().filter(|t| !t.is_finished()) {
            // SAFETY: the thread is alive (not finished) and SIGUSR1 has a no-op handler.
            unsafe { libc::pthread_kill(thread.as_pthread_t(), libc::SIGUSR1) };
        }
    }

    /// Stops every vCPU (as a VMM's pause does) and waits until all are out of KVM_RUN.
    pub fn pause(&self) {
        self.shared.lock().paused = true;
        let deadline = Instant::now() + LONG_WAIT;
        while self.shared.lock().parked < self.threads.len() {
            assert!(Instant::now() < deadline, "vCPUs did not stop");
            self.kick();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.shared.lock().paused = false;
        self.shared.changed.notify_all();
    }

    /// CPU time used so far by all vCPU threads together.
    pub fn vcpu_cpu_time(&self) -> Duration {
        self.cpu_clocks
            .iter()
            .map(|&clock| {
                let mut time = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: `clock` came from pthread_getcpuclockid and `time` is writable.
                let rc = unsafe { libc::clock_gettime(clock, &mut time) };
                assert_eq!(rc, 0, "clock_gettime");
                Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
            })
            .sum()
    }

    /// Writes bytes into guest memory (to break the guest on purpose).
    pub fn poke(&self, addr: u64, bytes: &[u8]) {
        self.memory
            .write_slice(bytes, GuestAddress(addr))
            .expect("write guest memory");
    }

    /// Everything the guest printed so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.shared.lock().output).into_owned()
    }

    /// Boots a 2-vCPU, 64 MiB guest and waits for its banner.
    pub fn booted() -> Machine {
        let machine = Machine::boot(2, 64);
        let banner = machine.expect_line("rxen testguest:", LONG_WAIT);
        assert_eq!(banner, "rxen testguest: booted on 2 vCPUs with 64 MiB");
        machine
    }

    /// Sends a command and returns the next line starting with `prefix`.
    pub fn command(&self, line: &str, prefix: &str) -> String {
        self.send(&format!("{line}\n"));
        // Skip the echo of the command itself, which may start with `prefix` too.
        let echo = self.expect_line(line, LONG_WAIT);
        assert_eq!(echo, line, "the command was not echoed as typed");
        self.expect_line(prefix, LONG_WAIT)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        while self.threads.iter().any(|t| !t.is_finished()) {
            self.kick();
            std::thread::sleep(Duration::from_millis(5));
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

pub fn heartbeat(machine: &Machine) -> u64 {
    let line = machine.command("heartbeat", "heartbeat ");
    line.strip_prefix("heartbeat ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad heartbeat line {line:?}"))
}
