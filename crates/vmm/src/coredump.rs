//! `rxl dump-core`: an ELF64 core file of the guest (`ET_CORE`, x86_64) as gdb, `crash` and
//! `readelf` read one: a `PT_NOTE` segment with one `NT_PRSTATUS` note per vCPU (its general
//! registers), then one `PT_LOAD` segment per RAM region with the guest-physical address in
//! `p_paddr` (and in `p_vaddr`: rxen's boot page tables identity-map RAM). All-zero pages are
//! left as holes, so the file is sparse where the guest never wrote.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use kvm_bindings::{kvm_regs, kvm_sregs};

/// Size of the ELF64 file header.
const EHDR_SIZE: u64 = 64;
/// Size of one ELF64 program header.
const PHDR_SIZE: u64 = 56;
/// Size of Linux's x86_64 `struct elf_prstatus` (the `NT_PRSTATUS` descriptor).
pub const PRSTATUS_SIZE: usize = 336;
/// Offset of `pr_reg` (the `user_regs_struct`) in `struct elf_prstatus`.
const PR_REG_OFFSET: usize = 112;
/// `NT_PRSTATUS`.
pub const NT_PRSTATUS: u32 = 1;
/// The owner name of the register notes, with its NUL.
const CORE_NAME: &[u8] = b"CORE\0";
/// Page size; memory segments start on a page boundary in the file.
const PAGE: u64 = 4096;
/// Bytes read from guest memory at a time.
const CHUNK: usize = 1 << 20;

/// One RAM region of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A vCPU's registers as KVM gives them.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuRegs {
    /// General registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment registers (selectors and the FS/GS bases).
    pub sregs: kvm_sregs,
}

/// What a core file holds, and where each part goes in the file.
#[derive(Debug, Clone)]
pub struct CoreLayout {
    regions: Vec<RamRegion>,
    cpus: Vec<CpuRegs>,
    notes_offset: u64,
    notes_size: u64,
    data_offset: u64,
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// Linux's `struct elf_prstatus` for x86_64 (include/uapi/linux/elfcore.h with
/// arch/x86/include/asm/user_64.h), 336 bytes:
///
/// | offset | field |
/// |---|---|
/// | 0 | `pr_info`: `si_signo`, `si_code`, `si_errno` (3 × i32) |
/// | 12 | `pr_cursig` (i16), 2 bytes padding |
/// | 16 | `pr_sigpend`, `pr_sighold` (2 × u64) |
/// | 32 | `pr_pid`, `pr_ppid`, `pr_pgrp`, `pr_sid` (4 × i32) |
/// | 48 | `pr_utime`, `pr_stime`, `pr_cutime`, `pr_cstime` (4 × `timeval`, 16 bytes each) |
/// | 112 | `pr_reg`: `user_regs_struct`, 27 × u64: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs |
/// | 328 | `pr_fpvalid` (i32), 4 bytes padding |
///
/// `pr_pid` is the vCPU index + 1 (as QEMU's dumps number them), so that gdb shows one
/// thread per vCPU.
pub fn prstatus(index: u32, cpu: &CpuRegs) -> Vec<u8> {
    let r = &cpu.regs;
    let s = &cpu.sregs;
    let mut b = vec![0u8; PR_REG_OFFSET];
    let pid = index.saturating_add(1).to_le_bytes();
    b[32..36].copy_from_slice(&pid);
    let regs = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        u64::MAX, // orig_rax: not in a system call
        r.rip,
        u64::from(s.cs.selector),
        r.rflags,
        r.rsp,
        u64::from(s.ss.selector),
        s.fs.base,
        s.gs.base,
        u64::from(s.ds.selector),
        u64::from(s.es.selector),
        u64::from(s.fs.selector),
        u64::from(s.gs.selector),
    ];
    for v in regs {
        put64(&mut b, v);
    }
    put32(&mut b, 0); // pr_fpvalid
    put32(&mut b, 0);
    debug_assert_eq!(b.len(), PRSTATUS_SIZE);
    b
}

/// Offset of RIP within an `NT_PRSTATUS` descriptor.
pub const PRSTATUS_RIP_OFFSET: usize = PR_REG_OFFSET + 16 * 8;

fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

impl CoreLayout {
    /// The layout of a core of `regions` with one register note per entry of `cpus`.
    pub fn new(regions: Vec<RamRegion>, cpus: Vec<CpuRegs>) -> Self {
        let phnum = 1 + regions.len() as u64;
        let notes_offset = EHDR_SIZE + phnum * PHDR_SIZE;
        let note = 12 + align(CORE_NAME.len() as u64, 4) + PRSTATUS_SIZE as u64;
        let notes_size = note * cpus.len() as u64;
        let data_offset = align(notes_offset + notes_size, PAGE);
        Self {
            regions,
            cpus,
            notes_offset,
            notes_size,
            data_offset,
        }
    }

    /// The size of the whole file.
    pub fn file_size(&self) -> u64 {
        self.data_offset + self.regions.iter().map(|r| r.len).sum::<u64>()
    }

    /// The ELF header, the program headers and the notes (everything before the memory).
    pub fn headers(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(usize::try_from(self.data_offset).unwrap_or(0));
        // e_ident: ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE.
        b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        b.extend_from_slice(&[0; 8]);
        put16(&mut b, 4); // e_type: ET_CORE
        put16(&mut b, 62); // e_machine: EM_X86_64
        put32(&mut b, 1); // e_version
        put64(&mut b, 0); // e_entry
        put64(&mut b, EHDR_SIZE); // e_phoff
        put64(&mut b, 0); // e_shoff
        put32(&mut b, 0); // e_flags
        put16(&mut b, EHDR_SIZE as u16); // e_ehsize
        put16(&mut b, PHDR_SIZE as u16); // e_phentsize
        put16(&mut b, (1 + self.regions.len()) as u16); // e_phnum
        put16(&mut b, 64); // e_shentsize
        put16(&mut b, 0); // e_shnum
        put16(&mut b, 0); // e_shstrndx
                          // PT_NOTE.
        put32(&mut b, 4);
        put32(&mut b, 0);
        put64(&mut b, self.notes_offset);
        put64(&mut b, 0);
        put64(&mut b, 0);
        put64(&mut b, self.notes_size);
        put64(&mut b, 0);
        put64(&mut b, 4);
        // One PT_LOAD per region, readable, writable and executable (it is RAM).
        let mut offset = self.data_offset;
        for r in &self.regions {
            put32(&mut b, 1);
            put32(&mut b, 7);
            put64(&mut b, offset);
            put64(&mut b, r.gpa); // p_vaddr: identity-mapped
            put64(&mut b, r.gpa); // p_paddr
            put64(&mut b, r.len);
            put64(&mut b, r.len);
            put64(&mut b, PAGE);
            offset += r.len;
        }
        for (i, cpu) in (0u32..).zip(&self.cpus) {
            put32(&mut b, CORE_NAME.len() as u32);
            put32(&mut b, PRSTATUS_SIZE as u32);
            put32(&mut b, NT_PRSTATUS);
            b.extend_from_slice(CORE_NAME);
            b.resize(align(b.len() as u64, 4) as usize, 0);
            b.extend_from_slice(&prstatus(i, cpu));
        }
        b.resize(usize::try_from(self.data_offset).unwrap_or(b.len()), 0);
        b
    }

    /// Writes the whole core to `out` (from offset 0), reading guest memory through `read`
    /// (guest-physical address, buffer to fill). Returns the file size.
    pub fn write(
        &self,
        out: &File,
        mut read: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<u64> {
        out.set_len(0)?;
        out.write_all_at(&self.headers(), 0)?;
        let mut offset = self.data_offset;
        let mut buf = vec![0u8; CHUNK];
        for r in &self.regions {
            let mut done = 0u64;
            while done < r.len {
                let n = usize::try_from((r.len - done).min(CHUNK as u64)).unwrap_or(CHUNK);
                let chunk = &mut buf[..n];
                read(r.gpa + done, chunk)?;
                // Pages of zeros stay holes in the file.
                for (k, page) in chunk.chunks(PAGE as usize).enumerate() {
                    if page.iter().any(|&x| x != 0) {
                        out.write_all_at(page, offset + done + (k as u64) * PAGE)?;
                    }
                }
                done += n as u64;
            }
            offset += r.len;
        }
        let size = self.file_size();
        out.set_len(size)?;
        out.sync_all()?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().expect("2"))
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().expect("4"))
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().expect("8"))
    }

    #[test]
    fn headers_notes_and_memory_land_where_the_program_headers_say() {
        let regions = vec![
            RamRegion {
                gpa: 0,
                len: 3 * PAGE,
            },
            RamRegion {
                gpa: 0x1_0000_0000,
                len: 2 * PAGE,
            },
        ];
        let mut cpu = CpuRegs::default();
        cpu.regs.rip = 0x10_1234;
        cpu.regs.rsp = 0x7000;
        cpu.sregs.cs.selector = 8;
        let layout = CoreLayout::new(regions, vec![CpuRegs::default(), cpu]);
        let f = tempfile::tempfile().expect("tmp");
        let size = layout
            .write(&f, |gpa, buf| {
                // Page 1 of the first region is zeros (a hole); the rest carry their address.
                for (i, b) in buf.iter_mut().enumerate() {
                    let a = gpa + i as u64;
                    *b = if (PAGE..2 * PAGE).contains(&a) {
                        0
                    } else {
                        (a / PAGE) as u8 + 1
                    };
                }
                Ok(())
            })
            .expect("write");
        let mut data = Vec::new();
        use std::io::Read;
        (&f).read_to_end(&mut data).expect("read");
        assert_eq!(data.len() as u64, size);
        assert_eq!(&data[..4], b"\x7fELF");
        assert_eq!(u16_at(&data, 16), 4);
        assert_eq!(u16_at(&data, 18), 62);
        assert_eq!(u16_at(&data, 56), 3);
        // The note segment: two NT_PRSTATUS notes, the second with vCPU 1's RIP.
        let note_off = u64_at(&data, 64 + 8) as usize;
        assert_eq!(u32_at(&data, 64), 4);
        assert_eq!(
            u64_at(&data, 64 + 32) as usize,
            2 * (12 + 8 + PRSTATUS_SIZE)
        );
        let second = note_off + 12 + 8 + PRSTATUS_SIZE;
        assert_eq!(u32_at(&data, second + 8), NT_PRSTATUS);
        assert_eq!(&data[second + 12..second + 17], b"CORE\0");
        let desc = second + 20;
        assert_eq!(u32_at(&data, desc + 32), 2, "pr_pid is the vCPU index + 1");
        assert_eq!(u64_at(&data, desc + PRSTATUS_RIP_OFFSET), 0x10_1234);
        assert_eq!(u64_at(&data, desc + PRSTATUS_RIP_OFFSET + 8), 8, "cs");
        // The second PT_LOAD: its bytes carry its guest-physical address.
        let ph = 64 + 2 * 56;
        assert_eq!(u32_at(&data, ph), 1);
        assert_eq!(u64_at(&data, ph + 24), 0x1_0000_0000);
        let off = u64_at(&data, ph + 8) as usize;
        assert_eq!(off % PAGE as usize, 0);
        assert_eq!(data[off], (0x1_0000_0000u64 / PAGE) as u8 + 1);
        // The zero page of the first region reads as zeros.
        let first = u64_at(&data, 64 + 56 + 8) as usize;
        assert!(data[first + PAGE as usize..first + 2 * PAGE as usize]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(data[first + 2 * PAGE as usize], 3);
    }
}
