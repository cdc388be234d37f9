//! A host TAP device opened by name (rxend created it), without packet information or vnet
//! headers: one read or write is one Ethernet frame.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Errors opening a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name does not fit an interface name.
    #[error("bad TAP name {0:?}")]
    BadName(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// TUNSETIFF failed.
    #[error("cannot attach to TAP {name}: {source}")]
    SetIff {
        /// The TAP's name.
        name: String,
        /// The ioctl error.
        source: io::Error,
    },
}

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens the TAP device `name` (non-blocking).
    pub fn open(name: &str) -> Result<Self, TapError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        if let Some(dst) = req.name.get_mut(..bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        // SAFETY: TUNSETIFF reads and writes an `ifreq`, which `IfReq` lays out (name, flags,
        // padding to the union's size); `req` lives across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// Takes a `/dev/net/tun` descriptor already attached to TAP `name`
    /// (by rxend, with the flags of [`Tap::open`]) and makes it non-blocking.
    pub fn from_file(file: File, name: &str) -> Result<Self, TapError> {
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no pointers.
        let rc = unsafe {
            let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
            }
        };
        if rc < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The attached `/dev/net/tun` descriptor, for handing to another process.
    pub fn into_file(self) -> File {
        self.file
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Where a NIC's frames go and come from: a TAP device, or a fake in tests.
pub trait NetBackend: Send {
    /// Receives one frame into `buf`; `WouldBlock` when there is none.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
}

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = self.file.write(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short TAP write"));
        }
        Ok(())
    }
}
