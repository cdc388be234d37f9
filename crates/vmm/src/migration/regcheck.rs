//! Which saved vCPU states a vCPU could really be in: the register checks a
//! restore makes before anything reaches KVM.
//!
//! KVM's setters refuse some impossible values (CR0.PG without PE, CR4 bits
//! the vCPU lacks, EFER.LMA outside long mode) but take others as they are:
//! EFER with reserved bits, segment attributes wider than their fields (KVM
//! packs them into the access rights, so a type of 0xFF also sets S, DPL and
//! P), several pending interrupts at once, CR8 above 15. A guest restored
//! from such a state fails VM entry or runs in a state no CPU can be in, and
//! an error from KVM halfway through a restore names neither the vCPU nor the
//! register. So every value is checked here first, following the Intel SDM
//! (vol. 3, §2.5 and the guest-state checks of §27.3.1) and KVM's own checks
//! (`kvm_is_valid_sregs`, `kvm_valid_efer`, `__kvm_set_xcr`,
//! `kvm_vcpu_ioctl_x86_set_vcpu_events`). The limits come from the CPUID the
//! vCPU is given ([`CpuLimits`]), so that every state a guest can reach on
//! this host passes.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_mp_state, kvm_regs, kvm_segment, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVM_MAX_XCRS, KVM_MP_STATE_SIPI_RECEIVED,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
    KVM_VCPUEVENT_VALID_SMM,
};

use super::vcpu_state::SnapshotError;

/// CR0 bits (SDM vol. 3 §2.5).
mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
    /// Every bit that exists.
    pub const VALID: u64 = PE | MP | EM | TS | ET | NE | WP | AM | NW | CD | PG;
}

/// CR4 bits (SDM vol. 3 §2.5).
mod cr4 {
    pub const PAE: u64 = 1 << 5;
    pub const UMIP: u64 = 1 << 11;
    pub const LA57: u64 = 1 << 12;
    pub const VMXE: u64 = 1 << 13;
    pub const FSGSBASE: u64 = 1 << 16;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const SMEP: u64 = 1 << 20;
    pub const SMAP: u64 = 1 << 21;
    pub const PKE: u64 = 1 << 22;
    pub const CET: u64 = 1 << 23;
    pub const SMXE: u64 = 1 << 14;
    pub const KL: u64 = 1 << 19;
    pub const PKS: u64 = 1 << 24;
    pub const UINTR: u64 = 1 << 25;
    pub const LASS: u64 = 1 << 27;
    pub const LAM_SUP: u64 = 1 << 28;
    pub const FRED: u64 = 1 << 32;
    /// VME, PVI, TSD, DE, PSE, PAE, MCE, PGE, PCE, OSFXSR, OSXMMEXCPT: KVM
    /// lets a guest set these whatever its CPUID says.
    pub const ALWAYS: u64 = 0x7FF;
}

/// EFER bits (SDM vol. 3 §2.2.1; AMD APM vol. 2 §3.1.7).
mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
    pub const SVME: u64 = 1 << 12;
    pub const LMSLE: u64 = 1 << 13;
    pub const FFXSR: u64 = 1 << 14;
    pub const TCE: u64 = 1 << 15;
    pub const AUTOIBRS: u64 = 1 << 21;
}

/// XCR0 (XSAVE feature) bits.
mod xcr0 {
    pub const FP: u64 = 1 << 0;
    pub const SSE: u64 = 1 << 1;
    pub const YMM: u64 = 1 << 2;
    pub const BNDREGS: u64 = 1 << 3;
    pub const BNDCSR: u64 = 1 << 4;
    pub const AVX512: u64 = 0b111 << 5;
    pub const XTILE: u64 = 0b11 << 17;
}

/// RFLAGS bits that exist (3, 5, 15 and 22 up are reserved; bit 1 reads as one).
const RFLAGS_VALID: u64 = 0x003F_7FD7;
/// RFLAGS.VM (virtual-8086 mode).
const RFLAGS_VM: u64 = 1 << 17;
/// IA32_APIC_BASE: x2APIC mode.
const APIC_BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE: the APIC is enabled.
const APIC_BASE_EN: u64 = 1 << 11;
/// IA32_APIC_BASE bits 0..=7 and 9, reserved.
const APIC_BASE_RESERVED: u64 = 0x2FF;
/// CR3 bits 61 and 62: LAM for user pointers (only with LAM, in long mode).
const CR3_LAM: u64 = (1 << 61) | (1 << 62);
/// The NMI vector, which KVM refuses as an exception.
const NMI_VECTOR: u8 = 2;
/// Most MSR entries a vCPU record may carry (KVM lists a few dozen to a few hundred).
pub const MAX_MSRS: usize = 4096;

/// The MSRs that repeat a special register: a record may carry them only
/// with the value its `kvm_sregs` has (else the later write would undo the
/// checks made on the special registers).
const MSR_EFER: u32 = 0xC000_0080;
const MSR_FS_BASE: u32 = 0xC000_0100;
const MSR_GS_BASE: u32 = 0xC000_0101;
const MSR_APIC_BASE: u32 = 0x1B;

/// What the vCPUs of this VM can hold, from the CPUID they are given: the
/// control register and XSAVE bits a guest could have set, and its address widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuLimits {
    /// CR4 bits a guest may set.
    pub cr4: u64,
    /// EFER bits a guest may set.
    pub efer: u64,
    /// XCR0 bits (XSAVE features) a guest may enable; x87 always.
    pub xcr0: u64,
    /// Guest physical address width (MAXPHYADDR).
    pub phys_bits: u32,
    /// 5-level paging: linear addresses are 57 bits wide, else 48.
    pub la57: bool,
    /// Linear address masking: CR3 may carry its LAM bits.
    pub lam: bool,
    /// x2APIC mode is available.
    pub x2apic: bool,
}

impl CpuLimits {
    /// The limits of a vCPU with these CPUID entries (as given to `KVM_SET_CPUID2`).
    pub fn from_cpuid(entries: &[kvm_cpuid_entry2]) -> CpuLimits {
        let leaf = |function: u32, index: u32| {
            entries
                .iter()
                .find(|e| e.function == function && e.index == index)
                .copied()
                .unwrap_or_default()
        };
        let has = |reg: u32, bit: u32| reg & (1 << bit) != 0;
        let (l1, l7, l7_1, ld) = (leaf(1, 0), leaf(7, 0), leaf(7, 1), leaf(0xD, 0));
        let (e1, e8, e21) = (
            leaf(0x8000_0001, 0),
            leaf(0x8000_0008, 0),
            leaf(0x8000_0021, 0),
        );
        let pick = |bits: &[(bool, u64)]| {
            bits.iter()
                .filter(|(on, _)| *on)
                .fold(0u64, |acc, (_, b)| acc | b)
        };
        let cr4 = cr4::ALWAYS
            | pick(&[
                (has(l7.ecx, 2), cr4::UMIP),
                (has(l7.ecx, 16), cr4::LA57),
                (has(l1.ecx, 5), cr4::VMXE),
                (has(l7.ebx, 0), cr4::FSGSBASE),
                (has(l1.ecx, 17), cr4::PCIDE),
                (has(l1.ecx, 26), cr4::OSXSAVE),
                (has(l7.ebx, 7), cr4::SMEP),
                (has(l7.ebx, 20), cr4::SMAP),
                (has(l7.ecx, 3), cr4::PKE),
                (has(l7.ecx, 7) || has(l7.edx, 20), cr4::CET),
                (has(l7_1.eax, 26), cr4::LAM_SUP),
                // Bits KVM does not offer today; were its CPUID to offer the
                // feature, a guest could set them.
                (has(l1.ecx, 6), cr4::SMXE),
                (has(l7.ecx, 23), cr4::KL),
                (has(l7.ecx, 31), cr4::PKS),
                (has(l7.edx, 5), cr4::UINTR),
                (has(l7_1.eax, 6), cr4::LASS),
                (has(l7_1.eax, 17), cr4::FRED),
            ]);
        let svm = has(e1.ecx, 2);
        let efer = efer::SCE
            | pick(&[
                (has(e1.edx, 29), efer::LME | efer::LMA),
                (has(e1.edx, 20), efer::NXE),
                (has(e1.edx, 25), efer::FFXSR),
                (svm, efer::SVME | efer::LMSLE),
                (has(e1.ecx, 17), efer::TCE),
                (has(e21.eax, 8), efer::AUTOIBRS),
            ]);
        // KVM assumes 36 bits where the leaf is missing.
        let phys_bits = match e8.eax & 0xFF {
            0 => 36,
            n => n.min(52),
        };
        CpuLimits {
            cr4,
            efer,
            xcr0: xcr0::FP | u64::from(ld.eax) | (u64::from(ld.edx) << 32),
            phys_bits,
            la57: has(l7.ecx, 16),
            lam: has(l7_1.eax, 26),
            x2apic: has(l1.ecx, 21),
        }
    }

    /// Width of a linear address.
    fn va_bits(&self) -> u32 {
        if self.la57 {
            57
        } else {
            48
        }
    }

    /// Bits of a physical address.
    fn phys_mask(&self) -> u64 {
        (1u64 << self.phys_bits.min(63)) - 1
    }
}

fn bad(vcpu: u32, register: &'static str, why: impl Into<String>) -> SnapshotError {
    SnapshotError::Impossible {
        vcpu,
        register,
        why: why.into(),
    }
}

/// Whether `addr` is canonical for `bits`-bit linear addresses.
fn canonical(addr: u64, bits: u32) -> bool {
    let shift = 64 - bits;
    (((addr << shift) as i64) >> shift) as u64 == addr
}

/// Whether the vCPU runs in IA-32e (long) mode.
fn long_mode(s: &kvm_sregs) -> bool {
    s.efer & efer::LMA != 0
}

/// Checks the special registers: control registers, EFER, APIC base, segments,
/// descriptor tables and the pending interrupt.
pub fn check_sregs(id: u32, s: &kvm_sregs, cpu: &CpuLimits) -> Result<(), SnapshotError> {
    let extra = s.cr0 & !cr0::VALID;
    if extra != 0 {
        return Err(bad(
            id,
            "CR0",
            format!("{:#x} has reserved bits {extra:#x} set", s.cr0),
        ));
    }
    if s.cr0 & cr0::PG != 0 && s.cr0 & cr0::PE == 0 {
        return Err(bad(
            id,
            "CR0",
            format!("{:#x} has paging (PG) on without protection (PE)", s.cr0),
        ));
    }
    if s.cr0 & cr0::NW != 0 && s.cr0 & cr0::CD == 0 {
        return Err(bad(
            id,
            "CR0",
            format!("{:#x} has NW set without CD", s.cr0),
        ));
    }
    let extra = s.cr4 & !cpu.cr4;
    if extra != 0 {
        return Err(bad(
            id,
            "CR4",
            format!(
                "{:#x} has bits {extra:#x} set that are reserved or that this host's vCPUs lack",
                s.cr4
            ),
        ));
    }
    let extra = s.efer & !cpu.efer;
    if extra != 0 {
        return Err(bad(
            id,
            "EFER",
            format!(
                "{:#x} has bits {extra:#x} set that are reserved or that this host's vCPUs lack",
                s.efer
            ),
        ));
    }
    let paging_long = s.efer & efer::LME != 0 && s.cr0 & cr0::PG != 0;
    if paging_long != long_mode(s) {
        return Err(bad(
            id,
            "EFER",
            format!(
                "{:#x} with CR0 {:#x}: LMA must be set exactly when LME and CR0.PG are",
                s.efer, s.cr0
            ),
        ));
    }
    if paging_long && s.cr4 & cr4::PAE == 0 {
        return Err(bad(
            id,
            "CR4",
            format!("{:#x}: long mode without PAE", s.cr4),
        ));
    }
    if !long_mode(s) && s.cr4 & cr4::PCIDE != 0 {
        return Err(bad(
            id,
            "CR4",
            format!("{:#x}: PCIDE outside long mode", s.cr4),
        ));
    }
    let mut cr3_ok = cpu.phys_mask();
    if long_mode(s) && cpu.lam {
        cr3_ok |= CR3_LAM;
    }
    let extra = s.cr3 & !cr3_ok;
    if extra != 0 {
        return Err(bad(
            id,
            "CR3",
            format!(
                "{:#x} has bits {extra:#x} set beyond the {}-bit physical address width",
                s.cr3, cpu.phys_bits
            ),
        ));
    }
    if s.cr8 > 0xF {
        return Err(bad(
            id,
            "CR8",
            format!("{} does not fit the 4-bit task priority", s.cr8),
        ));
    }
    let mut reserved = APIC_BASE_RESERVED | !cpu.phys_mask();
    if !cpu.x2apic {
        reserved |= APIC_BASE_EXTD;
    }
    if s.apic_base & reserved != 0 {
        return Err(bad(
            id,
            "APIC base",
            format!("{:#x} has reserved bits set", s.apic_base),
        ));
    }
    if s.apic_base & APIC_BASE_EXTD != 0 && s.apic_base & APIC_BASE_EN == 0 {
        return Err(bad(
            id,
            "APIC base",
            format!("{:#x}: x2APIC mode with the APIC disabled", s.apic_base),
        ));
    }
    let segments = [
        ("CS", &s.cs),
        ("DS", &s.ds),
        ("ES", &s.es),
        ("FS", &s.fs),
        ("GS", &s.gs),
        ("SS", &s.ss),
        ("TR", &s.tr),
        ("LDTR", &s.ldt),
    ];
    for (name, seg) in segments {
        check_segment(id, name, seg, cpu)?;
    }
    if !long_mode(s) && s.cs.l != 0 {
        return Err(bad(id, "CS", "64-bit code (L) outside long mode"));
    }
    if long_mode(s) && s.cs.l != 0 && s.cs.db != 0 {
        return Err(bad(id, "CS", "both L and D/B set"));
    }
    for (name, base) in [("GDTR", s.gdt.base), ("IDTR", s.idt.base)] {
        if !canonical(base, cpu.va_bits()) {
            return Err(bad(
                id,
                name,
                format!("base {base:#x} is not a canonical address"),
            ));
        }
    }
    let pending: u32 = s.interrupt_bitmap.iter().map(|w| w.count_ones()).sum();
    if pending > 1 {
        return Err(bad(
            id,
            "interrupt bitmap",
            format!("{pending} external interrupts being injected where at most one can be"),
        ));
    }
    Ok(())
}

/// Checks one segment register: each attribute fits its field; the bases VM
/// entry requires canonical (FS, GS, TR, LDTR) or 32-bit (CS, SS, DS, ES) are.
fn check_segment(
    id: u32,
    name: &'static str,
    seg: &kvm_segment,
    cpu: &CpuLimits,
) -> Result<(), SnapshotError> {
    let fields = [
        ("type", seg.type_, 15),
        ("DPL", seg.dpl, 3),
        ("P", seg.present, 1),
        ("D/B", seg.db, 1),
        ("S", seg.s, 1),
        ("L", seg.l, 1),
        ("G", seg.g, 1),
        ("AVL", seg.avl, 1),
        ("unusable", seg.unusable, 1),
    ];
    for (field, value, max) in fields {
        if value > max {
            return Err(bad(
                id,
                name,
                format!("{field} is {value}, more than its field holds ({max})"),
            ));
        }
    }
    let usable = seg.unusable == 0;
    let canonical_base = matches!(name, "FS" | "GS" | "TR") || (name == "LDTR" && usable);
    let base_32 = name == "CS" || (matches!(name, "SS" | "DS" | "ES") && usable);
    if canonical_base && !canonical(seg.base, cpu.va_bits()) {
        return Err(bad(
            id,
            name,
            format!("base {:#x} is not a canonical address", seg.base),
        ));
    }
    if base_32 && seg.base >> 32 != 0 {
        return Err(bad(
            id,
            name,
            format!("base {:#x} has bits above 31 set", seg.base),
        ));
    }
    Ok(())
}

/// Checks the general registers against the mode the special registers put the vCPU in.
pub fn check_regs(
    id: u32,
    r: &kvm_regs,
    s: &kvm_sregs,
    cpu: &CpuLimits,
) -> Result<(), SnapshotError> {
    let extra = r.rflags & !RFLAGS_VALID;
    if extra != 0 {
        return Err(bad(
            id,
            "RFLAGS",
            format!("{:#x} has reserved bits {extra:#x} set", r.rflags),
        ));
    }
    if long_mode(s) && r.rflags & RFLAGS_VM != 0 {
        return Err(bad(
            id,
            "RFLAGS",
            format!("{:#x}: virtual-8086 mode (VM) in long mode", r.rflags),
        ));
    }
    let code64 = long_mode(s) && s.cs.l != 0;
    if code64 && !canonical(r.rip, cpu.va_bits()) {
        return Err(bad(
            id,
            "RIP",
            format!("{:#x} is not a canonical address", r.rip),
        ));
    }
    if !code64 && r.rip >> 32 != 0 {
        return Err(bad(
            id,
            "RIP",
            format!("{:#x} has bits above 31 set outside 64-bit code", r.rip),
        ));
    }
    Ok(())
}

/// Checks the MP state: one KVM knows for x86.
pub fn check_mp_state(id: u32, mp: &kvm_mp_state) -> Result<(), SnapshotError> {
    if mp.mp_state > KVM_MP_STATE_SIPI_RECEIVED {
        return Err(bad(
            id,
            "MP state",
            format!("{} is not an x86 vCPU state", mp.mp_state),
        ));
    }
    Ok(())
}

/// Checks the pending events: flags this VMM's KVM setup reports, flags as
/// flags, exception vectors that are exceptions.
pub fn check_events(id: u32, e: &kvm_vcpu_events) -> Result<(), SnapshotError> {
    let known = KVM_VCPUEVENT_VALID_NMI_PENDING
        | KVM_VCPUEVENT_VALID_SIPI_VECTOR
        | KVM_VCPUEVENT_VALID_SHADOW
        | KVM_VCPUEVENT_VALID_SMM;
    if e.flags & !known != 0 {
        return Err(bad(
            id,
            "vCPU events",
            format!(
                "flags {:#x}: exception payloads and triple fault events are never enabled here",
                e.flags
            ),
        ));
    }
    let flags = [
        ("exception injected", e.exception.injected),
        ("exception pending", e.exception.pending),
        ("exception error code", e.exception.has_error_code),
        ("interrupt injected", e.interrupt.injected),
        ("soft interrupt", e.interrupt.soft),
        ("NMI injected", e.nmi.injected),
        ("NMI pending", e.nmi.pending),
        ("NMI masked", e.nmi.masked),
        ("SMM", e.smi.smm),
        ("SMI pending", e.smi.pending),
        ("SMM inside NMI", e.smi.smm_inside_nmi),
        ("latched INIT", e.smi.latched_init),
        ("triple fault", e.triple_fault.pending),
    ];
    for (what, v) in flags {
        if v > 1 {
            return Err(bad(id, "vCPU events", format!("{what} is {v}, not a flag")));
        }
    }
    let exception = e.exception.injected != 0 || e.exception.pending != 0;
    if exception && (e.exception.nr > 31 || e.exception.nr == NMI_VECTOR) {
        return Err(bad(
            id,
            "vCPU events",
            format!("vector {} is not an exception", e.exception.nr),
        ));
    }
    if e.interrupt.shadow > 3 {
        return Err(bad(
            id,
            "vCPU events",
            format!(
                "interrupt shadow {} is neither MOV SS nor STI",
                e.interrupt.shadow
            ),
        ));
    }
    if e.sipi_vector > 0xFF {
        return Err(bad(
            id,
            "vCPU events",
            format!("SIPI vector {:#x} does not fit 8 bits", e.sipi_vector),
        ));
    }
    Ok(())
}

/// Checks the extended control registers: XCR0 only, holding a feature set
/// XSETBV would take on this host.
pub fn check_xcrs(id: u32, x: &kvm_xcrs, cpu: &CpuLimits) -> Result<(), SnapshotError> {
    if x.nr_xcrs > KVM_MAX_XCRS || x.flags != 0 {
        return Err(bad(
            id,
            "XCRs",
            format!("{} registers with flags {:#x}", x.nr_xcrs, x.flags),
        ));
    }
    let used = x.xcrs.get(..x.nr_xcrs as usize).unwrap_or_default();
    for r in used {
        if r.xcr != 0 {
            return Err(bad(id, "XCRs", format!("XCR{} does not exist", r.xcr)));
        }
        let v = r.value;
        let why = if v & xcr0::FP == 0 {
            Some("x87 state (bit 0) off".to_string())
        } else if v & xcr0::YMM != 0 && v & xcr0::SSE == 0 {
            Some("AVX state without SSE state".into())
        } else if v & !cpu.xcr0 != 0 {
            Some(format!(
                "features {:#x} that this host's vCPUs lack",
                v & !cpu.xcr0
            ))
        } else if (v & xcr0::BNDREGS == 0) != (v & xcr0::BNDCSR == 0) {
            Some("only one of the two MPX states".into())
        } else if v & xcr0::AVX512 != 0 && (v & xcr0::AVX512 != xcr0::AVX512 || v & xcr0::YMM == 0)
        {
            Some("part of the AVX-512 state, or AVX-512 without AVX".into())
        } else if v & xcr0::XTILE != 0 && v & xcr0::XTILE != xcr0::XTILE {
            Some("part of the AMX tile state".into())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(bad(id, "XCR0", format!("{v:#x}: {why}")));
        }
    }
    Ok(())
}

/// Checks the debug registers: DR6 and DR7 are 32-bit registers.
pub fn check_debugregs(id: u32, d: &kvm_debugregs) -> Result<(), SnapshotError> {
    if d.flags != 0 {
        return Err(bad(id, "debug registers", format!("flags {:#x}", d.flags)));
    }
    for (name, v) in [("DR6", d.dr6), ("DR7", d.dr7)] {
        if v >> 32 != 0 {
            return Err(bad(id, name, format!("{v:#x} has bits above 31 set")));
        }
    }
    Ok(())
}

fn check_mxcsr(id: u32, mxcsr: u32) -> Result<(), SnapshotError> {
    if mxcsr >> 16 != 0 {
        return Err(bad(
            id,
            "MXCSR",
            format!("{mxcsr:#x} has reserved bits set"),
        ));
    }
    Ok(())
}

/// Checks the legacy FPU state.
pub fn check_fpu(id: u32, f: &kvm_fpu) -> Result<(), SnapshotError> {
    check_mxcsr(id, f.mxcsr)
}

/// Checks an XSAVE area (standard format): MXCSR, and a header that names
/// only features this host's vCPUs have and has its reserved words clear.
pub fn check_xsave(id: u32, x: &kvm_xsave, cpu: &CpuLimits) -> Result<(), SnapshotError> {
    let word = |i: usize| x.region.get(i).copied().unwrap_or(0);
    let qword = |i: usize| u64::from(word(i)) | (u64::from(word(i + 1)) << 32);
    check_mxcsr(id, word(6))?;
    // The header: XSTATE_BV at byte 512, XCOMP_BV at 520, then 48 reserved bytes.
    // x87 and SSE state is always there: a host without XSAVE reports (and
    // takes) the legacy area with XSTATE_BV = x87 | SSE.
    let xstate_bv = qword(128);
    let allowed = cpu.xcr0 | xcr0::FP | xcr0::SSE;
    if xstate_bv & !allowed != 0 {
        return Err(bad(
            id,
            "XSAVE header",
            format!(
                "XSTATE_BV {xstate_bv:#x} has features {:#x} that this host's vCPUs lack",
                xstate_bv & !allowed
            ),
        ));
    }
    if (130..144).any(|i| word(i) != 0) {
        return Err(bad(
            id,
            "XSAVE header",
            "XCOMP_BV or the reserved words are not zero (not the standard format)",
        ));
    }
    Ok(())
}

/// Checks the MSR list: each MSR once, and the MSRs that repeat a special
/// register with its value.
pub fn check_msrs(id: u32, msrs: &[(u32, u64)], s: &kvm_sregs) -> Result<(), SnapshotError> {
    if msrs.len() > MAX_MSRS {
        return Err(bad(
            id,
            "MSRs",
            format!("{} entries, more than the {MAX_MSRS} allowed", msrs.len()),
        ));
    }
    let mut seen: Vec<u32> = msrs.iter().map(|&(i, _)| i).collect();
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w.first() == w.get(1)) {
        let i = w.first().copied().unwrap_or_default();
        return Err(bad(id, "MSRs", format!("MSR {i:#x} appears twice")));
    }
    let special = [
        (MSR_EFER, "EFER", s.efer),
        (MSR_APIC_BASE, "APIC base", s.apic_base),
        (MSR_FS_BASE, "FS base", s.fs.base),
        (MSR_GS_BASE, "GS base", s.gs.base),
    ];
    for &(index, value) in msrs {
        if let Some((_, name, want)) = special.iter().find(|(i, _, _)| *i == index) {
            if value != *want {
                return Err(bad(
                    id,
                    "MSRs",
                    format!(
                        "MSR {index:#x} ({name}) is {value:#x} where the special registers say {want:#x}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn limits_follow_cpuid() {
        let none = CpuLimits::from_cpuid(&[]);
        assert_eq!(none.cr4, cr4::ALWAYS);
        assert_eq!(none.efer, efer::SCE);
        assert_eq!(none.xcr0, xcr0::FP);
        assert_eq!(none.phys_bits, 36);
        assert!(!none.la57 && !none.lam && !none.x2apic);
        let some = CpuLimits::from_cpuid(&[
            entry(1, 0, 0, 0, (1 << 17) | (1 << 21) | (1 << 26), 0),
            entry(7, 0, 0, 1 | (1 << 7), 1 << 16, 0),
            entry(0xD, 0, 0x7, 0, 0, 0),
            entry(0x8000_0001, 0, 0, 0, 0, (1 << 20) | (1 << 29)),
            entry(0x8000_0008, 0, 0x3030, 0, 0, 0),
        ]);
        assert_eq!(
            some.cr4,
            cr4::ALWAYS | cr4::PCIDE | cr4::OSXSAVE | cr4::FSGSBASE | cr4::SMEP | cr4::LA57
        );
        assert_eq!(some.efer, efer::SCE | efer::NXE | efer::LME | efer::LMA);
        assert_eq!(some.xcr0, 0x7);
        assert_eq!(some.phys_bits, 48);
        let fred = CpuLimits::from_cpuid(&[entry(7, 1, (1 << 17) | (1 << 26), 0, 0, 0)]);
        assert_eq!(fred.cr4, cr4::ALWAYS | cr4::FRED | cr4::LAM_SUP);
        assert!(fred.lam);
        assert!(some.la57 && some.x2apic && !some.lam);
    }

    #[test]
    fn legacy_state_in_an_xsave_area_passes_without_xsave() {
        // A host without XSAVE (no leaf 0xD) saves x87 and SSE state this way.
        let cpu = CpuLimits::from_cpuid(&[]);
        let mut x = kvm_xsave::default();
        x.region[6] = 0x1F80;
        x.region[128] = 0x3;
        assert!(check_xsave(0, &x, &cpu).is_ok());
        x.region[128] = 0x7;
        let e = check_xsave(0, &x, &cpu).expect_err("AVX state without XSAVE");
        assert!(e.to_string().contains("features 0x4"), "{e}");
    }

    #[test]
    fn canonical_addresses() {
        assert!(canonical(0, 48));
        assert!(canonical(0x7FFF_FFFF_FFFF, 48));
        assert!(!canonical(0x8000_0000_0000, 48));
        assert!(canonical(0xFFFF_8000_0000_0000, 48));
        assert!(canonical(0x00FF_FFFF_FFFF_FFFF, 57));
        assert!(!canonical(0x0100_0000_0000_0000, 57));
        assert!(canonical(0xFF00_0000_0000_0000, 57));
    }
}
