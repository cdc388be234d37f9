//! Initial vCPU register state: 64-bit long mode at the kernel entry point.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;

use super::gdt::{self, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use super::{GDT_ADDR, PML4_ADDR};

/// CR0 protection enable.
pub const CR0_PE: u64 = 1 << 0;
/// CR0 monitor coprocessor.
pub const CR0_MP: u64 = 1 << 1;
/// CR0 extension type.
pub const CR0_ET: u64 = 1 << 4;
/// CR0 numeric error.
pub const CR0_NE: u64 = 1 << 5;
/// CR0 write protect.
pub const CR0_WP: u64 = 1 << 16;
/// CR0 paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4 physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// EFER long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// Errors while setting registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("cannot set {what}: {source}")]
    Kvm {
        /// Which register set.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// Building the MSR list failed.
    #[error("cannot build the MSR list")]
    MsrList,
    /// KVM accepted fewer MSRs than given.
    #[error("KVM set only {0} of the boot MSRs")]
    MsrsPartial(usize),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// Applies the long-mode special registers of docs/internals.md to `sregs`.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    let table = gdt::table();
    let code = gdt::segment(table[1], CODE_SELECTOR);
    let data = gdt::segment(table[2], DATA_SELECTOR);
    let tss = gdt::segment(table[3], TSS_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = gdt::limit();
    // No IDT: the guest loads its own.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
}

/// General registers at entry: RIP = `entry`, RDI/RSI as the boot protocol says, RSP = 0.
pub fn entry_regs(entry: u64, rdi: u64, rsi: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rdi,
        rsi,
        rsp: 0,
        rbp: 0,
        rflags: 0x2,
        ..Default::default()
    }
}

/// Sets the special registers of `vcpu` for 64-bit entry.
pub fn setup_sregs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    long_mode_sregs(&mut sregs);
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))
}

/// Sets the general registers of `vcpu`.
pub fn setup_regs(vcpu: &VcpuFd, regs: &kvm_regs) -> Result<(), RegsError> {
    vcpu.set_regs(regs).map_err(kvm("registers"))
}

/// Sets the x87/SSE control state to its reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37F,
        mxcsr: 0x1F80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))
}

/// The MSRs set at boot (index, value).
pub fn boot_msrs() -> Vec<(u32, u64)> {
    const IA32_SYSENTER_CS: u32 = 0x174;
    const IA32_SYSENTER_ESP: u32 = 0x175;
    const IA32_SYSENTER_EIP: u32 = 0x176;
    const STAR: u32 = 0xC000_0081;
    const LSTAR: u32 = 0xC000_0082;
    const CSTAR: u32 = 0xC000_0083;
    const SYSCALL_MASK: u32 = 0xC000_0084;
    const KERNEL_GS_BASE: u32 = 0xC000_0102;
    const IA32_TSC: u32 = 0x10;
    const IA32_MISC_ENABLE: u32 = 0x1A0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_DEF_TYPE: u32 = 0x2FF;
    // MTRRs enabled, default type write-back.
    const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;
    vec![
        (IA32_SYSENTER_CS, 0),
        (IA32_SYSENTER_ESP, 0),
        (IA32_SYSENTER_EIP, 0),
        (STAR, 0),
        (CSTAR, 0),
        (KERNEL_GS_BASE, 0),
        (SYSCALL_MASK, 0),
        (LSTAR, 0),
        (IA32_TSC, 0),
        (IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// Sets the boot MSRs of `vcpu`.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries: Vec<kvm_msr_entry> = boot_msrs()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::MsrList)?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set != entries.len() {
        return Err(RegsError::MsrsPartial(set));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_state() {
        let mut s = kvm_sregs::default();
        long_mode_sregs(&mut s);
        assert_eq!(s.cr0, 0x8001_0033);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr4, 0x20);
        assert_eq!(s.efer, 0x500);
        assert_eq!(s.cs.selector, 0x08);
        assert_eq!(s.cs.l, 1);
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(seg.selector, 0x10);
        }
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 31));
        assert_eq!(s.tr.selector, 0x18);
    }

    #[test]
    fn entry_registers() {
        let r = entry_regs(0x10_0000, 1, 0x6000);
        assert_eq!(
            (r.rip, r.rdi, r.rsi, r.rsp, r.rflags),
            (0x10_0000, 1, 0x6000, 0, 2)
        );
    }
}
