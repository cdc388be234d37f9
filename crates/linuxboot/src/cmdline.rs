//! The kernel command line: checked against the kernel's limit and written NUL-terminated.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

/// The limit of a vmlinux, which has no setup header to say: x86 `COMMAND_LINE_SIZE` - 1.
pub const DEFAULT_CMDLINE_LIMIT: u32 = 2047;

/// Errors writing the command line.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// Longer than the kernel (or the room at the command line address) allows.
    #[error("command line is {len} bytes, longer than the {max} bytes the kernel allows")]
    TooLong {
        /// Length of the command line given.
        len: usize,
        /// Largest length allowed, NUL excluded.
        max: usize,
    },
    /// A NUL byte would cut the command line short.
    #[error("command line contains a NUL byte at offset {0}")]
    Nul(usize),
    /// Guest memory could not be written.
    #[error("cannot write the command line into guest memory: {0}")]
    Write(#[from] GuestMemoryError),
}

/// Writes `cmdline` and a NUL at `addr` if it is at most `max_len` bytes; returns its length.
pub fn write_cmdline<M: GuestMemoryBackend>(
    mem: &M,
    addr: GuestAddress,
    cmdline: &str,
    max_len: usize,
) -> Result<usize, CmdlineError> {
    let bytes = cmdline.as_bytes();
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        return Err(CmdlineError::Nul(pos));
    }
    if bytes.len() > max_len {
        return Err(CmdlineError::TooLong {
            len: bytes.len(),
            max: max_len,
        });
    }
    let mut with_nul = Vec::with_capacity(bytes.len() + 1);
    with_nul.extend_from_slice(bytes);
    with_nul.push(0);
    mem.write_slice(&with_nul, addr)?;
    Ok(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
        mem.write_slice(&[0xAA; 64], GuestAddress(0x2_0000))
            .expect("fill");
        mem
    }

    #[test]
    fn written_nul_terminated() {
        let mem = mem();
        let len = write_cmdline(&mem, GuestAddress(0x2_0000), "console=ttyS0 quiet", 2047)
            .expect("write");
        assert_eq!(len, 19);
        let mut buf = [0u8; 21];
        mem.read_slice(&mut buf, GuestAddress(0x2_0000))
            .expect("read");
        assert_eq!(&buf, b"console=ttyS0 quiet\0\xAA");
    }

    #[test]
    fn exactly_the_limit_is_accepted_one_more_is_not() {
        let mem = mem();
        let ok = "x".repeat(16);
        assert_eq!(
            write_cmdline(&mem, GuestAddress(0x2_0000), &ok, 16).expect("write"),
            16
        );
        let mut buf = [0u8; 17];
        mem.read_slice(&mut buf, GuestAddress(0x2_0000))
            .expect("read");
        assert_eq!(buf[16], 0);
        let long = "x".repeat(17);
        let err = write_cmdline(&mem, GuestAddress(0x3_0000), &long, 16).expect_err("too long");
        assert!(matches!(err, CmdlineError::TooLong { len: 17, max: 16 }));
        assert_eq!(
            err.to_string(),
            "command line is 17 bytes, longer than the 16 bytes the kernel allows"
        );
        // Nothing was written for the rejected one.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3_0000)).expect("read"), 0);
    }

    #[test]
    fn nul_inside_is_rejected() {
        let err = write_cmdline(&mem(), GuestAddress(0x2_0000), "a\0b", 100).expect_err("nul");
        assert!(matches!(err, CmdlineError::Nul(1)));
    }

    #[test]
    fn empty_command_line_is_just_a_nul() {
        let mem = mem();
        assert_eq!(
            write_cmdline(&mem, GuestAddress(0x2_0000), "", 0).expect("write"),
            0
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2_0000)).expect("read"), 0);
    }

    #[test]
    fn outside_memory_is_an_error() {
        let err = write_cmdline(&mem(), GuestAddress(0xF_FFFE), "abc", 100).expect_err("oob");
        assert!(matches!(err, CmdlineError::Write(_)));
    }
}
