//! A polled virtio-blk driver (virtio 1.2 §5.2): one request in flight at a time.

use core::hint::spin_loop;
use core::ptr::{read_volatile, write_volatile};

use super::mmio::{InitError, Mmio};
use super::queue::{Virtq, DESC_NEXT, DESC_WRITE};
use crate::dma::{Dma, PAGE};
use crate::time::Instant;

/// virtio device type of a block device.
pub const DEVICE_TYPE: u32 = 2;
/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// Bytes of data one request carries at most.
pub const CHUNK: usize = 64 * 1024;
/// Sectors one request carries at most.
pub const CHUNK_SECTORS: u64 = CHUNK as u64 / SECTOR;

const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const S_UNSUPP: u8 = 2;

/// How long a request may take before the device is declared broken.
const TIMEOUT_MS: u64 = 10_000;
/// Length of the serial returned by GET_ID.
pub const SERIAL_LEN: usize = 20;

/// Offsets in the request page: header, status byte, GET_ID answer.
const HEADER_AT: u64 = 0;
const STATUS_AT: u64 = 16;
const ID_AT: u64 = 32;

/// Why a request failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlkError {
    /// The device answered VIRTIO_BLK_S_IOERR (or an unknown status).
    Io,
    /// The device answered VIRTIO_BLK_S_UNSUPP.
    Unsupported,
    /// The device did not answer in time; it has been reset and is no longer used.
    Timeout,
    /// The device needs a reset or was given up.
    Broken,
}

impl BlkError {
    /// The word the console prints for this error.
    pub fn name(&self) -> &'static str {
        match self {
            BlkError::Io => "ioerr",
            BlkError::Unsupported => "unsupp",
            BlkError::Timeout => "timeout",
            BlkError::Broken => "broken",
        }
    }
}

/// Which way data moves in a request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The device reads the buffer (a write to the disk).
    ToDevice,
    /// The device writes the buffer (a read from the disk).
    FromDevice,
}

/// One descriptor of a hand-built chain (for `blkbad`).
#[derive(Clone, Copy)]
pub struct RawDesc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// VIRTQ_DESC_F_* flags.
    pub flags: u16,
    /// Next descriptor index.
    pub next: u16,
}

/// A virtio-blk disk in one slot.
pub struct Disk {
    /// The slot it sits in.
    pub slot: usize,
    mmio: Mmio,
    queue: Virtq,
    serial: [u8; SERIAL_LEN],
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    /// Whether the device refuses writes.
    pub read_only: bool,
    request: u64,
    data: u64,
    broken: bool,
}

impl Disk {
    /// Brings up the disk in `slot` (already probed as a block device).
    pub fn init(slot: usize, dma: &mut Dma) -> Result<Disk, InitError> {
        let mmio = Mmio::slot(slot);
        let features = mmio.negotiate(F_RO | F_FLUSH)?;
        let size = mmio.queue_size(0, 16).ok_or(InitError::Queue)?;
        let queue = Virtq::new(dma, size).ok_or(InitError::NoMemory)?;
        let Some(request) = dma.alloc(1) else {
            queue.free(dma);
            return Err(InitError::NoMemory);
        };
        let Some(data) = dma.alloc(CHUNK / PAGE) else {
            queue.free(dma);
            dma.free(request, 1);
            return Err(InitError::NoMemory);
        };
        mmio.setup_queue(0, &queue);
        let mut disk = Disk {
            slot,
            mmio,
            queue,
            serial: [0; SERIAL_LEN],
            sectors: u64::from_le_bytes(mmio.config::<8>(0)),
            read_only: features & F_RO != 0,
            request,
            data,
            broken: false,
        };
        if let Err(e) = mmio.driver_ok() {
            disk.release(dma);
            return Err(e);
        }
        if disk
            .transfer(T_GET_ID, 0, disk.request + ID_AT, SERIAL_LEN as u32, true)
            .is_ok()
        {
            for (i, byte) in disk.serial.iter_mut().enumerate() {
                // SAFETY: the ID bytes lie in the request page, which the device no longer uses.
                *byte = unsafe { read_volatile((disk.request + ID_AT + i as u64) as *const u8) };
            }
        }
        Ok(disk)
    }

    /// Resets the device and returns its memory to the pool.
    pub fn release(self, dma: &mut Dma) {
        self.mmio.reset();
        self.queue.free(dma);
        dma.free(self.request, 1);
        dma.free(self.data, CHUNK / PAGE);
    }

    /// The serial (GET_ID), printable ASCII up to the first NUL.
    pub fn serial(&self) -> &str {
        let len = self
            .serial
            .iter()
            .position(|&b| !(0x21..=0x7E).contains(&b))
            .unwrap_or(SERIAL_LEN);
        core::str::from_utf8(self.serial.get(..len).unwrap_or_default()).unwrap_or_default()
    }

    /// The data buffer (`CHUNK` bytes), for the caller to fill or read between requests.
    pub fn buffer(&mut self) -> &mut [u8] {
        // SAFETY: the data pages belong to this disk, and no request is in flight
        // between calls (every request waits for its completion or resets the device).
        unsafe { crate::dma::slice_mut(self.data, CHUNK) }
    }

    /// Address of the data buffer.
    pub fn buffer_addr(&self) -> u64 {
        self.data
    }

    /// Whether the device changed its configuration (a cdrom's new medium): the capacity is
    /// read again.
    pub fn media_changed(&mut self) -> bool {
        if !self.mmio.config_changed() {
            return false;
        }
        self.sectors = u64::from_le_bytes(self.mmio.config::<8>(0));
        true
    }

    /// Reads (`FromDevice`) or writes (`ToDevice`) `sectors` (at most `CHUNK_SECTORS`) at `sector` through the buffer.
    pub fn io(&mut self, direction: Direction, sector: u64, sectors: u64) -> Result<(), BlkError> {
        let len = (sectors.min(CHUNK_SECTORS) * SECTOR) as u32;
        let (kind, writes) = match direction {
            Direction::ToDevice => (T_OUT, false),
            Direction::FromDevice => (T_IN, true),
        };
        self.transfer(kind, sector, self.data, len, writes)
            .map(drop)
    }

    /// Flushes the device's write cache.
    pub fn flush(&mut self) -> Result<(), BlkError> {
        self.transfer(T_FLUSH, 0, 0, 0, false).map(drop)
    }

    fn write_header(&mut self, kind: u32, sector: u64) {
        let at = self.request + HEADER_AT;
        // SAFETY: header and status lie in this disk's request page, not in flight.
        unsafe {
            write_volatile(at as *mut u32, kind);
            write_volatile((at + 4) as *mut u32, 0);
            write_volatile((at + 8) as *mut u64, sector);
            write_volatile((self.request + STATUS_AT) as *mut u8, 0xFF);
        }
    }

    fn status_byte(&self) -> u8 {
        // SAFETY: the status byte lies in this disk's request page.
        unsafe { read_volatile((self.request + STATUS_AT) as *const u8) }
    }

    /// Runs one request: header, optional data buffer, status byte. Returns the used length.
    fn transfer(
        &mut self,
        kind: u32,
        sector: u64,
        addr: u64,
        len: u32,
        device_writes: bool,
    ) -> Result<u32, BlkError> {
        self.write_header(kind, sector);
        let header = self.request + HEADER_AT;
        let status = self.request + STATUS_AT;
        let mut chain = [RawDesc {
            addr: header,
            len: 16,
            flags: DESC_NEXT,
            next: 1,
        }; 3];
        let mut count = 1;
        if len > 0 {
            chain[1] = RawDesc {
                addr,
                len,
                flags: DESC_NEXT | if device_writes { DESC_WRITE } else { 0 },
                next: 2,
            };
            count = 2;
        }
        chain[count] = RawDesc {
            addr: status,
            len: 1,
            flags: DESC_WRITE,
            next: 0,
        };
        chain[count - 1].next = count as u16;
        let used = self.submit_raw(chain.get(..=count).unwrap_or_default())?;
        match self.status_byte() {
            S_OK if used >= 1 => Ok(used),
            S_UNSUPP => Err(BlkError::Unsupported),
            _ => Err(BlkError::Io),
        }
    }

    /// Writes `chain` into descriptors 0.., submits descriptor 0 and waits for it to be used;
    /// returns the used length. The status byte is preset to 0xFF first.
    pub fn submit_raw(&mut self, chain: &[RawDesc]) -> Result<u32, BlkError> {
        if self.broken || !self.mmio.healthy() {
            return Err(BlkError::Broken);
        }
        // SAFETY: the status byte lies in this disk's request page, not in flight.
        unsafe { write_volatile((self.request + STATUS_AT) as *mut u8, 0xFF) };
        for (i, desc) in chain.iter().enumerate() {
            self.queue
                .set_desc(i as u16, desc.addr, desc.len, desc.flags, desc.next);
        }
        self.queue.push(0);
        self.mmio.notify(0);
        let start = Instant::now();
        loop {
            if let Some((id, len)) = self.queue.pop_used() {
                if id == 0 {
                    return Ok(len);
                }
                // Not ours: the device is confused; keep waiting for our head.
                continue;
            }
            if !self.mmio.healthy() {
                self.give_up();
                return Err(BlkError::Broken);
            }
            if start.elapsed_ms() > TIMEOUT_MS {
                self.give_up();
                return Err(BlkError::Timeout);
            }
            spin_loop();
        }
    }

    /// Stops using a device that misbehaved: resets it so it lets go of our buffers.
    fn give_up(&mut self) {
        self.broken = true;
        self.mmio.reset();
    }

    /// Address of the request's header, status byte and a spare writable byte area.
    pub fn request_addrs(&mut self, kind_in: bool) -> (u64, u64) {
        self.write_header(if kind_in { T_IN } else { T_OUT }, 0);
        (self.request + HEADER_AT, self.request + STATUS_AT)
    }

    /// The status byte of the last request.
    pub fn last_status(&self) -> u8 {
        self.status_byte()
    }

    /// Whether the device still works (not reset by us, not asking for a reset).
    pub fn usable(&self) -> bool {
        !self.broken && self.mmio.healthy()
    }
}
