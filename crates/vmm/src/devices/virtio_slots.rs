//! The 16 virtio-mmio slots reserved at boot (0xD000_0000 + i * 0x1000, GSIs from [`slot_gsi`]), the devices
//! in them (virtio-blk, virtio-net), their irqfds, ioeventfds and I/O threads, and hotplug.
//!
//! Each device gets one I/O thread (see `docs/internals.md` for why): it waits on the device's
//! queue ioeventfds (and, for a NIC, its TAP and rate-limit timer) and runs the device model.
//! vCPU threads reach the register window through [`VirtioSlots::mmio_read`] / `mmio_write`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{IoEventAddress, VmFd};
use rxen_proto::vmctl::{DirtyDisk, DiskStats, NicStats};
use rxen_proto::vmspec::{DiskDevice, ImageFormat, NicDevice};
use rxen_virtio::block::qcow2::Qcow2Image;
use rxen_virtio::block::{BlockStats, DiskImage};
use rxen_virtio::net::tap::Tap;
use rxen_virtio::net::{NetStats, RX_QUEUE, TX_QUEUE};
use rxen_virtio::{
    Block, BlockConfig, Interrupt, InterruptKind, MmioTransport, Net, NetConfig,
    QUEUE_NOTIFY_OFFSET,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::PioDevice;
use crate::lock;
use crate::memory::GuestMemory;

/// Guest physical address of slot 0.
pub const SLOT_BASE: u64 = 0xD000_0000;
/// Size of one slot's window.
pub const SLOT_SIZE: u64 = 0x1000;
/// Number of slots.
pub const SLOT_COUNT: usize = 16;
/// Each slot's GSI (IOAPIC pin): 5 + the slot's number, except slot 3, whose 5 + 3 = 8 is
/// the RTC's ISA IRQ (Linux's rtc_cmos holds IRQ 8 unshared, so a fourth virtio device's
/// interrupt was refused: "genirq: Flags mismatch ... (virtio) vs. (rtc0)"); it takes 21, the
/// first pin after the others. The other slots keep their pins, so a domain saved before the
/// change restores with the interrupts its guest programmed. Pin 22 is free and 23 is the GED's.
const SLOT_GSIS: [u32; SLOT_COUNT] = [5, 6, 7, 21, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20];

/// The GSI (IOAPIC pin) of `slot`'s interrupt.
pub fn slot_gsi(slot: usize) -> u32 {
    SLOT_GSIS.get(slot).copied().unwrap_or(SLOT_GSIS[0])
}
/// Stack reserved for each device thread (touched pages only are ever backed). imago's
/// qcow2 cluster allocation recurses once per refcount block it must allocate, and a damaged
/// refcount table can ask for many: the 2 MiB default overflowed in a property test.
pub const DEVICE_THREAD_STACK: usize = 64 << 20;
/// Hotplug generation port (read u32).
pub const HOTPLUG_GEN_PORT: u16 = 0x514;
/// Hotplug detach-request port (read u32, bit i = slot i).
pub const HOTPLUG_DETACH_PORT: u16 = 0x515;
/// How long a guest has to let go of a device before it is removed anyway.
pub const DETACH_GRACE: Duration = Duration::from_secs(5);

/// Errors setting up or changing devices.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// A medium change for a drive that is not a cdrom.
    #[error("{0} is not a cdrom drive")]
    NotCdrom(String),
    /// The drive did not take the new medium.
    #[error("{0}: {1}")]
    Media(String, String),
    /// Every slot is taken.
    #[error("no free virtio-mmio slot (all {SLOT_COUNT} are in use)")]
    Full,
    /// The disk image could not be opened.
    #[error("cannot open disk {path}: {source}")]
    OpenDisk {
        /// The path.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// Another domain holds the disk.
    #[error("disk {0} is already in use by another domain (a writable disk is exclusive; access 'w!' shares it)")]
    DiskInUse(String),
    /// A qcow2 image or its backing chain is unusable.
    #[error("disk {vdev}: {source}")]
    Qcow2 {
        /// The disk.
        vdev: String,
        /// Why.
        source: rxen_virtio::block::qcow2::Qcow2Error,
    },
    /// Another domain writes a backing file of this disk.
    #[error("disk {vdev}: backing file {path} is in use as a writable disk by another domain (backing files are read-only)")]
    BackingInUse {
        /// The disk.
        vdev: String,
        /// The backing file.
        path: String,
    },
    /// The block device could not be built.
    #[error("disk {path}: {source}")]
    Block {
        /// The path.
        path: String,
        /// The device error.
        source: rxen_virtio::BlockError,
    },
    /// The TAP could not be opened.
    #[error(transparent)]
    Tap(#[from] rxen_virtio::net::TapError),
    /// The NIC could not be built.
    #[error(transparent)]
    Net(#[from] rxen_virtio::NetError),
    /// The MAC is not `xx:xx:xx:xx:xx:xx`.
    #[error("bad MAC address {0:?}")]
    BadMac(String),
    /// The transport could not be built.
    #[error(transparent)]
    Mmio(#[from] rxen_virtio::MmioError),
    /// A KVM or epoll call failed.
    #[error("cannot {what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// A device with this ID is already attached.
    #[error("a {kind} with device ID {devid} is already attached")]
    Duplicate {
        /// `disk` or `nic`.
        kind: &'static str,
        /// The device ID.
        devid: u32,
    },
    /// A saved device state does not fit the device here.
    #[error("virtio slot {slot}: {why}")]
    Restore {
        /// The slot.
        slot: usize,
        /// What does not fit.
        why: String,
    },
    /// No device with this ID.
    #[error("no {kind} with device ID {devid}")]
    NotFound {
        /// `disk` or `nic`.
        kind: &'static str,
        /// The device ID.
        devid: u32,
    },
}

fn sys(what: &'static str) -> impl FnOnce(io::Error) -> SlotError {
    move |source| SlotError::Sys { what, source }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SlotError {
    move |e| SlotError::Sys {
        what,
        source: io::Error::from_raw_os_error(e.errno()),
    }
}

/// Raises a device's interrupt by writing its irqfd.
struct IrqFd(EventFd);

impl Interrupt for IrqFd {
    fn trigger(&self, _kind: InterruptKind) -> io::Result<()> {
        self.0.write(1)
    }
}

/// What sits in a slot, for stats and lookups.
#[derive(Clone)]
pub enum SlotKind {
    /// A virtio-blk disk.
    Disk {
        /// Its launch description.
        spec: DiskDevice,
        /// Its counters.
        stats: Arc<BlockStats>,
        /// The blocks the guest changed since the last backup.
        dirty: Arc<rxen_virtio::block::DirtyMap>,
        /// The open image that carries its sharing lock (none for `w!`); a cdrom's changes
        /// with its medium.
        lock: Option<Arc<Mutex<std::fs::File>>>,
    },
    /// A virtio-net NIC.
    Nic {
        /// Its launch description.
        spec: NicDevice,
        /// Its counters.
        stats: Arc<NetStats>,
    },
    /// The virtio-balloon (in [`BALLOON_SLOT`]).
    Balloon {
        /// The VMM's side of it.
        handle: rxen_virtio::BalloonHandle,
    },
}

/// How a slot's device is named in saved state: `disk:xvda`, `nic:0`, `balloon`.
fn describe(kind: &SlotKind) -> String {
    match kind {
        SlotKind::Disk { spec, .. } => format!("disk:{}", spec.vdev),
        SlotKind::Nic { spec, .. } => format!("nic:{}", spec.devid),
        SlotKind::Balloon { .. } => "balloon".into(),
    }
}

/// Registers (or with `on` false, unregisters) a device's irqfd and
/// queue-notify ioeventfds for `slot`.
fn wire(vm: &VmFd, dev: &SlotDev, slot: usize, on: bool) -> Result<(), SlotError> {
    let gsi = slot_gsi(slot);
    let notify_addr = IoEventAddress::Mmio(slot_addr(slot) + QUEUE_NOTIFY_OFFSET);
    let registered = if notify_mode() == NotifyMode::Inline {
        &dev.notifies[..0]
    } else {
        &dev.notifies[..]
    };
    if on {
        vm.register_irqfd(&dev.irq, gsi)
            .map_err(kvm_err("register an irqfd"))?;
        for (q, evt) in registered.iter().enumerate() {
            vm.register_ioevent(evt, &notify_addr, q as u32)
                .map_err(kvm_err("register an ioeventfd"))?;
        }
    } else {
        // Undo everything even if one step fails; report the first failure.
        let mut first = Ok(());
        for (q, evt) in registered.iter().enumerate() {
            let r = vm
                .unregister_ioevent(evt, &notify_addr, q as u32)
                .map_err(kvm_err("unregister an ioeventfd"));
            first = first.and(r);
        }
        let r = vm
            .unregister_irqfd(&dev.irq, gsi)
            .map_err(kvm_err("unregister an irqfd"));
        return first.and(r);
    }
    Ok(())
}

/// One slot's saved device.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotState {
    /// The slot.
    pub slot: usize,
    /// Which device (`disk:xvda`, `nic:0`, `balloon`), checked on restore.
    pub device: String,
    /// Its registers, queues and model state.
    pub transport: rxen_virtio::TransportState,
}

/// The slot the balloon takes: the last one, so that disks and NICs keep slots from 0.
pub const BALLOON_SLOT: usize = SLOT_COUNT - 1;

struct SlotDev {
    transport: Arc<Mutex<MmioTransport>>,
    kind: SlotKind,
    irq: EventFd,
    notifies: Vec<EventFd>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// The reserved slots and the hotplug registers.
pub struct VirtioSlots {
    slots: RwLock<Vec<Option<Arc<SlotDev>>>>,
    generation: AtomicU32,
    detach_mask: AtomicU32,
    mem: Arc<GuestMemory>,
    on_change: std::sync::Mutex<Option<ChangeHook>>,
    /// Free slots a new device should not take while others are free (the guest still holds
    /// a stale binding for them).
    avoid: AtomicU32,
}

/// Device status bit: a driver is bound (virtio 1.x, 2.1).
const VIRTIO_STATUS_DRIVER: u32 = 2;

/// Called when a slot gains a device or the host asks the guest to let go of one.
pub type ChangeHook = Box<dyn Fn() + Send>;

fn slot_addr(slot: usize) -> u64 {
    SLOT_BASE + slot as u64 * SLOT_SIZE
}

/// `virtio_mmio.device=` entries for a Linux command line, one per occupied slot.
pub fn linux_cmdline_entries(slots: usize) -> String {
    (0..slots.min(SLOT_COUNT))
        .map(|i| format!(" virtio_mmio.device=4K@{:#x}:{}", slot_addr(i), slot_gsi(i)))
        .collect()
}

/// Parses `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The `flock` operation that guards disk `d`: exclusive for `w`, shared for `r`.
fn lock_op(d: &DiskDevice) -> libc::c_int {
    if d.read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    }
}

/// Takes (or with `LOCK_UN` drops) the sharing lock of an open disk.
fn flock(file: &std::fs::File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on an fd we own; no pointers.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a disk (or takes `opened`, the image rxend opened for a hot-plug)
/// and takes its sharing lock: exclusive for `w`, shared for `r`, none for `w!`.
/// Opens a disk's image or block device as the VMM uses it (read-only for `r` disks), without
/// its lock: what the VMM opens before it confines itself.
pub fn open_disk_file(d: &DiskDevice) -> Result<std::fs::File, SlotError> {
    if d.cdrom && d.path.as_os_str().is_empty() {
        return empty_medium().map_err(|source| SlotError::OpenDisk {
            path: format!("(empty {})", d.vdev),
            source,
        });
    }
    OpenOptions::new()
        .read(true)
        .write(!d.read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(&d.path)
        .map_err(|source| SlotError::OpenDisk {
            path: d.path.display().to_string(),
            source,
        })
}

/// Opens disk `d` as the VMM serves it (before it confines itself): a raw image or device, or
/// a qcow2 image with every backing file of its chain (read-only).
pub fn open_disk_image(d: &DiskDevice) -> Result<DiskImage, SlotError> {
    let file = open_disk_file(d)?;
    disk_image(d, file, &mut |p| rxen_virtio::block::qcow2::open_backing(p))
}

/// Wraps the opened `file` of disk `d` as its format wants, opening backing files through `open`.
pub fn disk_image(
    d: &DiskDevice,
    file: std::fs::File,
    open: &mut dyn FnMut(&std::path::Path) -> io::Result<std::fs::File>,
) -> Result<DiskImage, SlotError> {
    match d.format {
        ImageFormat::Raw => Ok(DiskImage::Raw(file)),
        ImageFormat::Qcow2 => Qcow2Image::open(file, &d.path, !d.read_only, open)
            .map(|q| DiskImage::Qcow2(Box::new(q)))
            .map_err(|source| SlotError::Qcow2 {
                vdev: d.vdev.clone(),
                source,
            }),
    }
}

/// What an empty cdrom drive reads: an empty anonymous file (capacity 0).
pub fn empty_medium() -> io::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(
        c"rxen-empty-cdrom",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    Ok(std::fs::File::from(fd))
}

fn open_disk(
    d: &DiskDevice,
    shared_writable: bool,
    opened: Option<DiskImage>,
) -> Result<DiskImage, SlotError> {
    let path = d.path.display().to_string();
    let image = match opened {
        Some(f) => f,
        None => open_disk_image(d)?,
    };
    if !shared_writable && flock(image.file(), lock_op(d)).is_err() {
        return Err(SlotError::DiskInUse(path));
    }
    // Backing files are shared and read-only for everyone: a domain that writes one holds it
    // exclusively and refuses this lock (and is refused while this one holds it). The lock
    // lasts as long as the image keeps the file open.
    for b in image.backing() {
        if flock(&b.file, libc::LOCK_SH).is_err() {
            return Err(SlotError::BackingInUse {
                vdev: d.vdev.clone(),
                path: b.path.display().to_string(),
            });
        }
    }
    Ok(image)
}

fn epoll_add(epoll: &Epoll, fd: RawFd, token: u64, edge: bool) -> io::Result<()> {
    let mut set = EventSet::IN;
    if edge {
        set |= EventSet::EDGE_TRIGGERED;
    }
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, token))
}

/// Where queue notifications are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyMode {
    /// An ioeventfd per queue wakes the device's I/O thread (the default).
    IoEventFd,
    /// The vCPU that writes QueueNotify runs the device itself (`RXEN_VIRTIO_NOTIFY=inline`,
    /// for measurements).
    Inline,
}

/// The notification mode of this VMM, from `RXEN_VIRTIO_NOTIFY`.
pub fn notify_mode() -> NotifyMode {
    static MODE: std::sync::OnceLock<NotifyMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("RXEN_VIRTIO_NOTIFY").as_deref() {
        Ok("inline") => NotifyMode::Inline,
        _ => NotifyMode::IoEventFd,
    })
}

/// Token of the stop event in an I/O thread's epoll.
const TOKEN_STOP: u64 = u64::MAX;
/// Token of a NIC's TAP.
const TOKEN_TAP: u64 = 1000;
/// Token of a NIC's rate timer.
const TOKEN_TIMER: u64 = 1001;
/// A rate-limited disk's timer: its request queue (0) may go on.
const TOKEN_DISK_TIMER: u64 = 1002;

/// The loop of one device's I/O thread.
fn io_loop(
    epoll: Epoll,
    transport: Arc<Mutex<MmioTransport>>,
    notifies: Vec<EventFd>,
    stop: EventFd,
) {
    // Confined before it reads a single descriptor the guest wrote.
    if let Err(e) = crate::sandbox::enter(crate::sandbox::ThreadKind::DeviceIo) {
        tracing::error!("device I/O thread: {e}");
        return;
    }
    let mut events = vec![EpollEvent::default(); 16];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("device I/O thread: epoll failed: {e}");
                return;
            }
        };
        for ev in events.iter().take(n) {
            match ev.data() {
                TOKEN_STOP => {
                    let _ = stop.read();
                    return;
                }
                TOKEN_TAP => lock(&transport).notify(RX_QUEUE),
                TOKEN_TIMER => lock(&transport).notify(TX_QUEUE),
                TOKEN_DISK_TIMER => lock(&transport).notify(0),
                q => {
                    if let Some(evt) = usize::try_from(q).ok().and_then(|i| notifies.get(i)) {
                        let _ = evt.read();
                    }
                    if let Ok(q) = u16::try_from(q) {
                        lock(&transport).notify(q);
                    }
                }
            }
        }
    }
}

impl VirtioSlots {
    /// Empty slots over guest memory `mem`.
    pub fn new(mem: Arc<GuestMemory>) -> Self {
        VirtioSlots {
            slots: RwLock::new((0..SLOT_COUNT).map(|_| None).collect()),
            generation: AtomicU32::new(0),
            detach_mask: AtomicU32::new(0),
            mem,
            on_change: std::sync::Mutex::new(None),
            avoid: AtomicU32::new(0),
        }
    }

    /// Sets the free slots new devices should take only when no other slot is free.
    pub fn set_avoid(&self, mask: u32) {
        self.avoid.store(mask, Ordering::SeqCst);
    }

    /// Sets what to call when the set of present devices changes (the ACPI GED for Linux).
    pub fn set_change_hook(&self, hook: ChangeHook) {
        *lock(&self.on_change) = Some(hook);
    }

    fn changed(&self) {
        if let Some(hook) = lock(&self.on_change).as_ref() {
            hook();
        }
    }

    /// Bit i set: slot i holds a device and the host has not asked the guest to let go of it
    /// (the ACPI `_STA` of the slot's device).
    pub fn present_mask(&self) -> u32 {
        let detach = self.detach_mask.load(Ordering::SeqCst);
        let held = self
            .read_slots()
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_some())
            .fold(0u32, |m, (i, _)| m | (1 << i));
        held & !detach
    }

    fn read_slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<Option<Arc<SlotDev>>>> {
        self.slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_slots(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Option<Arc<SlotDev>>>> {
        self.slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `addr` is in the slot windows.
    pub fn contains(addr: u64) -> bool {
        (SLOT_BASE..SLOT_BASE + SLOT_COUNT as u64 * SLOT_SIZE).contains(&addr)
    }

    fn find(&self, addr: u64) -> Option<(Arc<SlotDev>, u64)> {
        if !Self::contains(addr) {
            return None;
        }
        let offset = addr - SLOT_BASE;
        let idx = usize::try_from(offset / SLOT_SIZE).ok()?;
        let dev = self.read_slots().get(idx)?.clone()?;
        Some((dev, offset % SLOT_SIZE))
    }

    /// A vCPU's read in the slot windows; empty slots read as zeros.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((dev, off)) => lock(&dev.transport).read(off, data),
            None => data.fill(0),
        }
    }

    /// A vCPU's write in the slot windows; writes to empty slots are ignored.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some((dev, off)) = self.find(addr) {
            lock(&dev.transport).write(off, data);
        }
    }

    /// The number of occupied slots (boot devices take slots 0..n; the balloon is not counted).
    pub fn occupied(&self) -> usize {
        self.read_slots()
            .iter()
            .flatten()
            .filter(|d| !matches!(d.kind, SlotKind::Balloon { .. }))
            .count()
    }

    /// The `virtio_mmio.device=` entry of one slot, for a Linux command line.
    pub fn linux_cmdline_entry(slot: usize) -> String {
        format!(
            " virtio_mmio.device=4K@{:#x}:{}",
            slot_addr(slot),
            slot_gsi(slot)
        )
    }

    fn has(&self, disk: bool, devid: u32) -> bool {
        self.read_slots().iter().flatten().any(|d| match &d.kind {
            SlotKind::Disk { spec, .. } => disk && spec.devid == devid,
            SlotKind::Nic { spec, .. } => !disk && spec.devid == devid,
            SlotKind::Balloon { .. } => false,
        })
    }

    /// Opens a disk (at start-up; a hot-plugged one comes `opened` by rxend)
    /// and puts it in the lowest free slot; returns the slot.
    /// `shared` (`w!`) takes no lock; `defer_lock` opens it without the lock
    /// for now (an incoming migration, whose source still holds it), to be
    /// taken by [`Self::take_disk_locks`].
    pub fn add_disk(
        &self,
        vm: &VmFd,
        d: &DiskDevice,
        shared: bool,
        defer_lock: bool,
        opened: Option<DiskImage>,
    ) -> Result<usize, SlotError> {
        if self.has(true, d.devid) {
            return Err(SlotError::Duplicate {
                kind: "disk",
                devid: d.devid,
            });
        }
        let image = open_disk(d, shared || defer_lock, opened)?;
        let lock = if shared {
            None
        } else {
            Some(Arc::new(Mutex::new(
                image
                    .file()
                    .try_clone()
                    .map_err(sys("duplicate a disk fd"))?,
            )))
        };
        let block = Block::with_image(
            image,
            BlockConfig {
                read_only: d.read_only || d.cdrom,
                serial: d.vdev.chars().take(rxen_virtio::block::ID_BYTES).collect(),
                backend_discard: d.discard,
                rate: rxen_virtio::block::limits::BlockRate {
                    bytes_per_sec: d.bytes_per_sec,
                    ops_per_sec: d.ops_per_sec,
                },
                ..BlockConfig::default()
            },
        )
        .map_err(|source| SlotError::Block {
            path: d.path.display().to_string(),
            source,
        })?;
        let stats = block.stats();
        let dirty = block.dirty();
        let extra = block
            .rate_timer_fd()
            .map(|fd| vec![(fd, TOKEN_DISK_TIMER, false)])
            .unwrap_or_default();
        self.install(
            vm,
            Box::new(block),
            SlotKind::Disk {
                spec: d.clone(),
                stats,
                dirty,
                lock,
            },
            extra,
        )
    }

    /// Opens a NIC's TAP (at start-up; a hot-plugged NIC comes with the TAP
    /// queue rxend `opened`) and puts the NIC in the lowest free slot; returns the slot.
    pub fn add_nic(
        &self,
        vm: &VmFd,
        n: &NicDevice,
        opened: Option<std::fs::File>,
    ) -> Result<usize, SlotError> {
        if self.has(false, n.devid) {
            return Err(SlotError::Duplicate {
                kind: "nic",
                devid: n.devid,
            });
        }
        let mac = parse_mac(&n.mac).ok_or_else(|| SlotError::BadMac(n.mac.clone()))?;
        let tap = match opened {
            Some(f) => Tap::from_file(f, &n.tap)?,
            None => Tap::open(&n.tap)?,
        };
        let tap_fd = tap.as_raw_fd();
        let net = Net::new(
            Box::new(tap),
            NetConfig {
                mac,
                rate: n
                    .rate
                    .map(|r| (r.bytes, Duration::from_micros(r.interval_us.max(1)))),
                allowed_ips: n.allowed_ips.clone(),
            },
        )?;
        let stats = net.stats();
        let mut extra = vec![(tap_fd, TOKEN_TAP, true)];
        if let Some(fd) = net.rate_timer_fd() {
            extra.push((fd, TOKEN_TIMER, false));
        }
        self.install(
            vm,
            Box::new(net),
            SlotKind::Nic {
                spec: n.clone(),
                stats,
            },
            extra,
        )
    }

    /// Puts a virtio-balloon with an initial target of `pages` 4 KiB pages in [`BALLOON_SLOT`].
    pub fn add_balloon(
        &self,
        vm: &VmFd,
        pages: u32,
    ) -> Result<rxen_virtio::BalloonHandle, SlotError> {
        let balloon = rxen_virtio::Balloon::new(pages);
        let handle = balloon.handle();
        self.install_in(
            vm,
            Box::new(balloon),
            SlotKind::Balloon {
                handle: handle.clone(),
            },
            Vec::new(),
            Some(BALLOON_SLOT),
        )?;
        Ok(handle)
    }

    /// Wires a device into the lowest free slot. `extra` fds (owned by the device, which outlives
    /// the I/O thread) are watched too.
    fn install(
        &self,
        vm: &VmFd,
        device: Box<dyn rxen_virtio::VirtioDevice>,
        kind: SlotKind,
        extra: Vec<(RawFd, u64, bool)>,
    ) -> Result<usize, SlotError> {
        self.install_in(vm, device, kind, extra, None)
    }

    /// [`VirtioSlots::install`] into slot `at` (which must be free), or the lowest free one.
    fn install_in(
        &self,
        vm: &VmFd,
        device: Box<dyn rxen_virtio::VirtioDevice>,
        kind: SlotKind,
        extra: Vec<(RawFd, u64, bool)>,
        at: Option<usize>,
    ) -> Result<usize, SlotError> {
        let mut slots = self.write_slots();
        let idx = match at {
            Some(i) => Some(i).filter(|&i| slots.get(i).is_some_and(Option::is_none)),
            None => {
                let avoid = self.avoid.load(Ordering::SeqCst);
                slots
                    .iter()
                    .enumerate()
                    .position(|(i, s)| s.is_none() && avoid & (1 << i) == 0)
                    .or_else(|| slots.iter().position(Option::is_none))
            }
        }
        .ok_or(SlotError::Full)?;
        let gsi = slot_gsi(idx);
        let new_evt = || EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
        let irq = new_evt().map_err(sys("create an event fd"))?;
        let queues = device.queue_max_sizes().len();
        let transport = MmioTransport::new(
            device,
            Arc::new((*self.mem).clone()),
            Box::new(IrqFd(irq.try_clone().map_err(sys("clone an event fd"))?)),
        )?;
        let transport = Arc::new(Mutex::new(transport));
        let epoll = Epoll::new().map_err(sys("create an epoll"))?;
        let stop = new_evt().map_err(sys("create an event fd"))?;
        epoll_add(&epoll, stop.as_raw_fd(), TOKEN_STOP, false).map_err(sys("watch an fd"))?;
        let notify_addr = IoEventAddress::Mmio(slot_addr(idx) + QUEUE_NOTIFY_OFFSET);
        let mut notifies = Vec::new();
        for q in 0..queues {
            let evt = new_evt().map_err(sys("create an event fd"))?;
            epoll_add(&epoll, evt.as_raw_fd(), q as u64, false).map_err(sys("watch an fd"))?;
            notifies.push(evt);
        }
        for (fd, token, edge) in extra {
            epoll_add(&epoll, fd, token, edge).map_err(sys("watch an fd"))?;
        }
        // KVM registrations last, undone on failure.
        vm.register_irqfd(&irq, gsi)
            .map_err(kvm_err("register an irqfd"))?;
        let registered = if notify_mode() == NotifyMode::Inline {
            &notifies[..0]
        } else {
            &notifies[..]
        };
        for (q, evt) in registered.iter().enumerate() {
            if let Err(e) = vm.register_ioevent(evt, &notify_addr, q as u32) {
                for (q, evt) in notifies.iter().enumerate().take(q) {
                    let _ = vm.unregister_ioevent(evt, &notify_addr, q as u32);
                }
                let _ = vm.unregister_irqfd(&irq, gsi);
                return Err(kvm_err("register an ioeventfd")(e));
            }
        }
        let thread_notifies = notifies
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()
            .map_err(sys("clone an event fd"))?;
        let thread_stop = stop.try_clone().map_err(sys("clone an event fd"))?;
        let thread_transport = transport.clone();
        let name = match &kind {
            SlotKind::Disk { spec, .. } => format!("blk-{}", spec.vdev),
            SlotKind::Nic { spec, .. } => format!("net-{}", spec.devid),
            SlotKind::Balloon { .. } => "balloon".to_string(),
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .stack_size(DEVICE_THREAD_STACK)
            .spawn(move || io_loop(epoll, thread_transport, thread_notifies, thread_stop))
            .map_err(sys("start a device thread"))?;
        if let Some(s) = slots.get_mut(idx) {
            *s = Some(Arc::new(SlotDev {
                transport,
                kind,
                irq,
                notifies,
                stop,
                thread: Some(thread),
            }));
        }
        Ok(idx)
    }

    fn devices(&self) -> Vec<(usize, Arc<SlotDev>)> {
        self.read_slots()
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((i, d.clone()?)))
            .collect()
    }

    /// Stops every device from touching guest memory (see [`MmioTransport::freeze`]).
    pub fn freeze_all(&self) {
        for (_, d) in self.devices() {
            lock(&d.transport).freeze();
        }
    }

    /// Lets every device run again.
    pub fn thaw_all(&self) {
        for (_, d) in self.devices() {
            lock(&d.transport).thaw();
        }
    }

    /// Every device's state, in slot order (devices frozen, guest paused).
    pub fn save_states(&self) -> Vec<SlotState> {
        self.devices()
            .into_iter()
            .map(|(slot, d)| SlotState {
                slot,
                device: describe(&d.kind),
                transport: lock(&d.transport).save_state(),
            })
            .collect()
    }

    /// Applies saved device states; each must find the same device here
    /// (the target was built from the same config), which is first moved to
    /// the slot the guest knows it in (hot-plugged devices may sit in other
    /// slots than a fresh build gives them).
    pub fn restore_states(&self, vm: &VmFd, states: &[SlotState]) -> Result<(), SlotError> {
        self.arrange(vm, states)?;
        let here = self.devices();
        for st in states {
            let dev = here
                .iter()
                .find(|(slot, _)| *slot == st.slot)
                .map(|(_, d)| d)
                .filter(|d| describe(&d.kind) == st.device)
                .ok_or_else(|| SlotError::Restore {
                    slot: st.slot,
                    why: format!("no {} in this slot here", st.device),
                })?;
            lock(&dev.transport)
                .restore_state(&st.transport)
                .map_err(|e| SlotError::Restore {
                    slot: st.slot,
                    why: e.to_string(),
                })?;
        }
        if let Some((slot, d)) = here
            .iter()
            .find(|(slot, _)| !states.iter().any(|s| s.slot == *slot))
        {
            return Err(SlotError::Restore {
                slot: *slot,
                why: format!("{} is not in the saved state", describe(&d.kind)),
            });
        }
        Ok(())
    }

    /// Tells every device the guest runs here after a migration (NICs announce their MACs).
    pub fn after_migration(&self) {
        for (_, d) in self.devices() {
            lock(&d.transport).after_migration();
        }
    }

    /// Moves devices into the slots `states` has them in: unwires each from
    /// its slot, then wires it at the saved one (IRQ and notify address).
    fn arrange(&self, vm: &VmFd, states: &[SlotState]) -> Result<(), SlotError> {
        let mut slots = self.write_slots();
        let mut taken = Vec::new();
        for st in states {
            let from = slots
                .iter()
                .position(|d| d.as_ref().is_some_and(|d| describe(&d.kind) == st.device));
            if let Some(from) = from.filter(|&f| f != st.slot) {
                if let Some(dev) = slots.get_mut(from).and_then(Option::take) {
                    wire(vm, &dev, from, false)?;
                    taken.push((dev, st.slot));
                }
            }
        }
        for (dev, to) in taken {
            let free = slots.get(to).is_some_and(Option::is_none);
            if !free {
                return Err(SlotError::Restore {
                    slot: to,
                    why: format!(
                        "{} cannot move here: the slot is taken",
                        describe(&dev.kind)
                    ),
                });
            }
            wire(vm, &dev, to, true)?;
            tracing::info!(slot = to, device = %describe(&dev.kind), "device moved to its saved slot");
            if let Some(s) = slots.get_mut(to) {
                *s = Some(dev);
            }
        }
        Ok(())
    }

    /// Writes every disk's cached state back and makes it durable: as the VMM ends (a qcow2
    /// image's tables would otherwise be lost with the process), and before a live
    /// migration's pause (so that the flush inside it has little left to write).
    pub fn flush_disks(&self) {
        for (_, d) in self.devices() {
            if let SlotKind::Disk { .. } = &d.kind {
                lock(&d.transport).flush_device();
            }
        }
    }

    /// Drops every disk's sharing lock (a migration's source, once its
    /// devices are saved: the target takes them).
    pub fn release_disk_locks(&self) {
        for (_, d) in self.devices() {
            if let SlotKind::Disk {
                lock: Some(file), ..
            } = &d.kind
            {
                let _ = flock(&lock(file), libc::LOCK_UN);
            }
        }
    }

    /// Takes every disk's sharing lock, waiting up to `wait` for a
    /// migration's source to let go of it. A migration's target tries right after the end
    /// record, a moment before the source lets go: it tries again every millisecond (each miss
    /// of a 20 ms wait would add 20 ms to the downtime of a domain with a shared disk).
    pub fn take_disk_locks(&self, wait: Duration) -> Result<(), SlotError> {
        let until = Instant::now() + wait;
        for (_, d) in self.devices() {
            if let SlotKind::Disk {
                spec,
                lock: Some(file),
                ..
            } = &d.kind
            {
                while flock(&lock(file), lock_op(spec)).is_err() {
                    if Instant::now() >= until {
                        return Err(SlotError::DiskInUse(spec.path.display().to_string()));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        Ok(())
    }

    /// Asks the guest to let go of the device in `slot` (hotplug port 0x515) and bumps the generation.
    fn request_detach(&self, slot: usize) {
        self.detach_mask.fetch_or(1 << slot, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.changed();
    }

    /// Announces an attach to the guest.
    pub fn announce_attach(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.changed();
    }

    /// Puts a new medium (`file`; an empty file for none) in the cdrom drive `devid`, taking
    /// its shared sharing lock, and tells the guest (a configuration-change interrupt with the
    /// new capacity). Returns the capacity in 512-byte sectors.
    pub fn change_media(&self, devid: u32, file: std::fs::File) -> Result<u64, SlotError> {
        let slot = self.slot_of(true, devid)?;
        let Some(dev) = self.read_slots().get(slot).cloned().flatten() else {
            return Err(SlotError::NotFound {
                kind: "disk",
                devid,
            });
        };
        let SlotKind::Disk {
            spec, lock: held, ..
        } = &dev.kind
        else {
            return Err(SlotError::NotFound {
                kind: "disk",
                devid,
            });
        };
        if !spec.cdrom {
            return Err(SlotError::NotCdrom(spec.vdev.clone()));
        }
        if held.is_some() && flock(&file, libc::LOCK_SH | libc::LOCK_NB).is_err() {
            return Err(SlotError::DiskInUse(format!(
                "the medium for {}",
                spec.vdev
            )));
        }
        let keep = file.try_clone().map_err(sys("duplicate a medium's fd"))?;
        let mut t = lock(&dev.transport);
        let sectors = t
            .device_mut()
            .change_media(file)
            .map_err(|e| SlotError::Media(spec.vdev.clone(), e.to_string()))?;
        if let Some(h) = held {
            // The old medium's lock goes with its last descriptor.
            *lock(h) = keep;
        }
        if let Err(e) = t.config_changed() {
            tracing::warn!(vdev = %spec.vdev, "cannot raise the configuration interrupt: {e}");
        }
        Ok(sectors)
    }

    /// Finds the slot of the disk or NIC `devid`.
    pub fn slot_of(&self, disk: bool, devid: u32) -> Result<usize, SlotError> {
        self.read_slots()
            .iter()
            .position(|s| {
                s.as_ref().is_some_and(|d| match &d.kind {
                    SlotKind::Disk { spec, .. } => disk && spec.devid == devid,
                    SlotKind::Nic { spec, .. } => !disk && spec.devid == devid,
                    SlotKind::Balloon { .. } => false,
                })
            })
            .ok_or(SlotError::NotFound {
                kind: if disk { "disk" } else { "nic" },
                devid,
            })
    }

    /// Detaches the device in `slot`: asks the guest, waits until it resets the device (or
    /// [`DETACH_GRACE`] passes), then removes it. Returns whether the guest let go in time.
    pub fn detach(&self, vm: &VmFd, slot: usize) -> bool {
        let Some(dev) = self.read_slots().get(slot).cloned().flatten() else {
            return true;
        };
        self.request_detach(slot);
        let deadline = Instant::now() + DETACH_GRACE;
        let mut clean = false;
        while Instant::now() < deadline {
            // Released: reset (0), or reset and acknowledged again with no driver bound
            // (Linux sets ACKNOWLEDGE after its driver lets go).
            if lock(&dev.transport).status() & VIRTIO_STATUS_DRIVER == 0 {
                clean = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(dev);
        self.remove(vm, slot);
        self.detach_mask.fetch_and(!(1 << slot), Ordering::SeqCst);
        clean
    }

    /// Takes the device out of `slot` and undoes its wiring.
    fn remove(&self, vm: &VmFd, slot: usize) {
        let taken = self.write_slots().get_mut(slot).and_then(Option::take);
        let Some(dev) = taken else {
            return;
        };
        if let Err(e) = wire(vm, &dev, slot, false) {
            tracing::warn!(slot, "{e}");
        }
        let _ = dev.stop.write(1);
        // vCPU threads may hold a clone for a moment; wait for them.
        let mut dev = dev;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match Arc::try_unwrap(dev) {
                Ok(mut owned) => {
                    if let Some(t) = owned.thread.take() {
                        let _ = t.join();
                    }
                    break;
                }
                Err(shared) if Instant::now() < deadline => {
                    dev = shared;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => {
                    tracing::warn!(slot, "device still referenced; its thread stops on its own");
                    break;
                }
            }
        }
        tracing::info!(slot, "device removed");
    }

    /// Every disk: its launch description and dirty map (a storage migration's list).
    pub fn disk_maps(&self) -> Vec<(DiskDevice, Arc<rxen_virtio::block::DirtyMap>)> {
        self.read_slots()
            .iter()
            .flatten()
            .filter_map(|dev| match &dev.kind {
                SlotKind::Disk { spec, dirty, .. } => Some((spec.clone(), dirty.clone())),
                _ => None,
            })
            .collect()
    }

    /// Runs `f` on the disk with Xen device ID `devid`, its transport locked (no request of
    /// the guest's runs meanwhile); `None` when no such disk is attached.
    pub fn with_disk<R>(
        &self,
        devid: u32,
        f: impl FnOnce(&rxen_virtio::block::Disk) -> R,
    ) -> Option<R> {
        let dev = self
            .read_slots()
            .iter()
            .flatten()
            .find_map(|dev| match &dev.kind {
                SlotKind::Disk { spec, .. } if spec.devid == devid => Some(dev.clone()),
                _ => None,
            })?;
        let t = lock(&dev.transport);
        t.device().disk().map(f)
    }

    /// Reads and clears every disk's dirty map, all under the slots' lock (no disk is added
    /// or removed meanwhile).
    pub fn take_dirty(&self) -> Vec<DirtyDisk> {
        let mut out = Vec::new();
        for dev in self.read_slots().iter().flatten() {
            if let SlotKind::Disk { spec, dirty, .. } = &dev.kind {
                let t = dirty.take();
                out.push(DirtyDisk {
                    devid: spec.devid,
                    vdev: spec.vdev.clone(),
                    epoch: t.epoch,
                    generation: t.generation,
                    block_bytes: rxen_virtio::block::DIRTY_BLOCK,
                    blocks: dirty.blocks(),
                    runs: t.runs.iter().map(|r| [r.first, r.count]).collect(),
                });
            }
        }
        out
    }

    /// Gives a disk's taken dirty map back (its backup failed).
    pub fn merge_dirty(&self, d: &DirtyDisk) -> Result<(), String> {
        let slots = self.read_slots();
        let map = slots.iter().flatten().find_map(|dev| match &dev.kind {
            SlotKind::Disk { spec, dirty, .. } if spec.devid == d.devid => Some(dirty.clone()),
            _ => None,
        });
        let Some(map) = map else {
            return Err(format!("no disk with device ID {}", d.devid));
        };
        if d.block_bytes != rxen_virtio::block::DIRTY_BLOCK {
            return Err(format!(
                "dirty blocks of {} bytes given back; this VMM tracks {}",
                d.block_bytes,
                rxen_virtio::block::DIRTY_BLOCK
            ));
        }
        let runs: Vec<rxen_virtio::block::DirtyRun> = d
            .runs
            .iter()
            .map(|&[first, count]| rxen_virtio::block::DirtyRun { first, count })
            .collect();
        map.merge(d.epoch, d.generation, &runs)
            .map_err(|e| format!("disk {}: {e}", d.vdev))
    }

    /// Counters of every disk and NIC.
    pub fn stats(&self) -> (Vec<DiskStats>, Vec<NicStats>) {
        let mut disks = Vec::new();
        let mut nics = Vec::new();
        for (slot, dev) in self.read_slots().iter().enumerate() {
            let Some(dev) = dev else { continue };
            match &dev.kind {
                SlotKind::Disk { spec, stats, .. } => {
                    let s = stats.snapshot();
                    disks.push(DiskStats {
                        devid: spec.devid,
                        vdev: spec.vdev.clone(),
                        slot: slot as u32,
                        read_reqs: s.read_requests,
                        read_sectors: s.read_sectors,
                        write_reqs: s.write_requests,
                        write_sectors: s.write_sectors,
                        flush_reqs: s.flushes,
                        errors: s.errors,
                    });
                }
                SlotKind::Nic { spec, stats } => {
                    let s = stats.snapshot();
                    nics.push(NicStats {
                        devid: spec.devid,
                        mac: spec.mac.clone(),
                        tap: spec.tap.clone(),
                        slot: slot as u32,
                        tx_bytes: s.tx_bytes,
                        tx_packets: s.tx_packets,
                        rx_bytes: s.rx_bytes,
                        rx_packets: s.rx_packets,
                        tx_spoof_drops: s.tx_spoof_drops,
                        tx_drops: s.tx_drops,
                        rx_drops: s.rx_drops,
                    });
                }
                SlotKind::Balloon { .. } => {}
            }
        }
        (disks, nics)
    }
}

/// The hotplug ports 0x514 (generation) and 0x515 (detach requests).
pub struct HotplugPorts(pub Arc<VirtioSlots>);

impl PioDevice for HotplugPorts {
    fn read(&mut self, _base: u16, offset: u16, data: &mut [u8]) {
        let value = match offset {
            0 => self.0.generation.load(Ordering::SeqCst),
            _ => self.0.detach_mask.load(Ordering::SeqCst),
        };
        let bytes = value.to_le_bytes();
        for (d, s) in data
            .iter_mut()
            .zip(bytes.iter().chain(std::iter::repeat(&0)))
        {
            *d = *s;
        }
    }

    fn write(&mut self, _base: u16, _offset: u16, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_a_pin_of_its_own_that_no_legacy_device_holds() {
        use crate::devices::acpi::GED_GSI;
        use crate::devices::i8042::KEYBOARD_GSI;
        use crate::devices::rtc::RTC_IRQ;
        use crate::devices::serial::COM1_GSI;
        let pins: Vec<u32> = (0..SLOT_COUNT).map(slot_gsi).collect();
        let mut distinct = pins.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), SLOT_COUNT, "{pins:?}");
        // 0: the PIT, 2: the PICs' cascade; 24 pins on the IOAPIC.
        let taken = [0, 2, KEYBOARD_GSI, COM1_GSI, u32::from(RTC_IRQ), GED_GSI];
        for (slot, pin) in pins.iter().enumerate() {
            assert!(!taken.contains(pin), "slot {slot} on pin {pin}");
            assert!(*pin < 24, "slot {slot} on pin {pin}");
        }
        // Slots other than 3 keep the pins domains saved before the change were given.
        for slot in (0..SLOT_COUNT).filter(|s| *s != 3) {
            assert_eq!(slot_gsi(slot), 5 + slot as u32);
        }
        assert!(linux_cmdline_entries(4).ends_with(" virtio_mmio.device=4K@0xd0003000:21"));
    }

    #[test]
    fn cmdline_entries() {
        assert_eq!(linux_cmdline_entries(0), "");
        assert_eq!(
            linux_cmdline_entries(2),
            " virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("00:16:3e:0a:ff:01"),
            Some([0, 0x16, 0x3e, 0x0a, 0xff, 1])
        );
        assert_eq!(parse_mac("00:16:3e:0a:ff"), None);
        assert_eq!(parse_mac("00:16:3e:0a:ff:01:02"), None);
        assert_eq!(parse_mac("zz:16:3e:0a:ff:01"), None);
    }
}
