//! vCPU and VM state as stream record bodies: capture from KVM and restore into it.
//!
//! A body is a sequence of sections `tag (u32) | length (u32) | bytes`. The
//! bytes of most sections are the KVM structure itself (`kvm_regs`,
//! `kvm_sregs`, ...); MSRs are `(index u32, reserved u32, value u64)` triples.
//! Every section is checked for its exact size before anything is applied.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};

use super::regcheck::{self, CpuLimits};

/// Errors while capturing or restoring state.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A KVM ioctl failed.
    #[error("KVM: cannot {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// A body does not have the expected shape.
    #[error("malformed {what} state: {why}")]
    Malformed {
        /// Which body.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A register value no vCPU could hold, or that this host's vCPUs cannot.
    #[error("vCPU {vcpu}: impossible {register}: {why}")]
    Impossible {
        /// The vCPU.
        vcpu: u32,
        /// The register (or state) at fault.
        register: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { what, source }
}

fn malformed(what: &'static str, why: impl Into<String>) -> SnapshotError {
    SnapshotError::Malformed {
        what,
        why: why.into(),
    }
}

/// KVM structures made of plain integers, for which every bit pattern is valid.
///
/// # Safety
/// Implement only for `#[repr(C)]` types without pointers, references,
/// `bool`s or enums, so that any bytes of the right length are a valid value.
unsafe trait Pod: Default {}
// SAFETY: all of these are kvm-bindings' repr(C) integer structures (and unions of integers).
unsafe impl Pod for kvm_regs {}
// SAFETY: as above.
unsafe impl Pod for kvm_sregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_fpu {}
// SAFETY: as above.
unsafe impl Pod for kvm_xsave {}
// SAFETY: as above.
unsafe impl Pod for kvm_xcrs {}
// SAFETY: as above.
unsafe impl Pod for kvm_lapic_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_vcpu_events {}
// SAFETY: as above.
unsafe impl Pod for kvm_mp_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_debugregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_irqchip {}
// SAFETY: as above.
unsafe impl Pod for kvm_pit_state2 {}
// SAFETY: as above.
unsafe impl Pod for kvm_clock_data {}

fn pod_bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: `v` is a valid, initialised T of size_of::<T>() bytes; reading its bytes is sound
    // (Pod types are plain integers; padding, if any, was zeroed by Default before KVM filled them).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// `bytes` as a `T`, if they are exactly its size; else why not, naming the section.
fn pod_from<T: Pod>(section: &str, bytes: &[u8]) -> Result<T, String> {
    if bytes.len() != std::mem::size_of::<T>() {
        return Err(format!(
            "the {section} section is {} bytes long where {} are expected",
            bytes.len(),
            std::mem::size_of::<T>()
        ));
    }
    let mut v = T::default();
    // SAFETY: the lengths match, and any bytes are a valid T (Pod).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut v as *mut T).cast::<u8>(), bytes.len())
    };
    Ok(v)
}

/// Section tags.
mod tag {
    pub const REGS: u32 = 1;
    pub const SREGS: u32 = 2;
    pub const FPU: u32 = 3;
    pub const XSAVE: u32 = 4;
    pub const XCRS: u32 = 5;
    pub const LAPIC: u32 = 6;
    pub const EVENTS: u32 = 7;
    pub const MP_STATE: u32 = 8;
    pub const DEBUGREGS: u32 = 9;
    pub const MSRS: u32 = 10;
    pub const PIC_MASTER: u32 = 20;
    pub const PIC_SLAVE: u32 = 21;
    pub const IOAPIC: u32 = 22;
    pub const PIT2: u32 = 23;
    pub const CLOCK: u32 = 24;
}

fn put(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The section's name for messages: the KVM structure it holds.
fn section_name(t: u32) -> String {
    match t {
        tag::REGS => "kvm_regs",
        tag::SREGS => "kvm_sregs",
        tag::FPU => "kvm_fpu",
        tag::XSAVE => "kvm_xsave",
        tag::XCRS => "kvm_xcrs",
        tag::LAPIC => "kvm_lapic_state",
        tag::EVENTS => "kvm_vcpu_events",
        tag::MP_STATE => "kvm_mp_state",
        tag::DEBUGREGS => "kvm_debugregs",
        tag::MSRS => "MSR",
        tag::PIC_MASTER => "master PIC kvm_irqchip",
        tag::PIC_SLAVE => "slave PIC kvm_irqchip",
        tag::IOAPIC => "IOAPIC kvm_irqchip",
        tag::PIT2 => "kvm_pit_state2",
        tag::CLOCK => "kvm_clock_data",
        other => return format!("unknown {other}"),
    }
    .to_string()
}

/// Splits a body into `(tag, bytes)` sections; else says what is wrong.
fn sections(mut body: &[u8]) -> Result<Vec<(u32, &[u8])>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let word = |at: usize| {
            body.get(at..at + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| "a section header is cut short".to_string())
        };
        let (tag, len) = (word(0)?, word(4)? as usize);
        let bytes = body.get(8..8usize.saturating_add(len)).ok_or_else(|| {
            format!(
                "the {} section claims {len} bytes where {} are left",
                section_name(tag),
                body.len() - 8
            )
        })?;
        // Each section at most once: a second one would override the first
        // (and two PIC master states stood in for both PICs).
        if out.iter().any(|&(seen, _)| seen == tag) {
            return Err(format!("the {} section appears twice", section_name(tag)));
        }
        out.push((tag, bytes));
        body = body.get(8 + len..).unwrap_or_default();
    }
    Ok(out)
}

/// MSR_IA32_TSC: restored first, so that the deadline timer is set against the right TSC.
const MSR_IA32_TSC: u32 = 0x10;

/// The MSRs worth saving: every MSR KVM lists that this vCPU can read.
pub fn msr_list(kvm: &kvm_ioctls::Kvm) -> Vec<u32> {
    let mut list: Vec<u32> = kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();
    list.sort_by_key(|&i| i != MSR_IA32_TSC);
    list
}

/// MSRs one `KVM_GET_MSRS` call reads at most (`Msrs`' capacity).
const MSR_BATCH: usize = 256;

/// Reads every MSR of `indices` that reads back, in order, as (index, value).
///
/// `KVM_GET_MSRS` reads its entries in order and stops at the first it cannot
/// read, returning how many it read: so the list goes in whole, and after a
/// refusal the rest goes again from the entry after it. The result is what
/// one call per MSR gave, in a few calls instead of one per MSR (the
/// difference was most of the state capture in a migration's downtime).
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Vec<(u32, u64)> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MSR_BATCH)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let read = match Msrs::from_entries(&entries) {
            Ok(mut msrs) => match vcpu.get_msrs(&mut msrs) {
                Ok(n) => {
                    let n = n.min(batch.len());
                    out.extend(msrs.as_slice().iter().take(n).map(|e| (e.index, e.data)));
                    n
                }
                Err(_) => 0,
            },
            Err(_) => 0,
        };
        // The entry at `read` (if inside the batch) did not read back: skip it.
        let skip = if read < batch.len() { read + 1 } else { read };
        rest = &rest[skip..];
    }
    out
}

/// Writes every MSR of `msrs`, in order, that KVM takes.
///
/// `KVM_SET_MSRS` writes its entries in order and stops at the first it refuses, returning
/// how many it wrote: so the list goes in whole, and after a refusal the rest goes again from
/// the entry after it, as [`read_msrs`] does. One call per MSR was most of a migration
/// target's restore (some 50 ioctls per vCPU inside the downtime).
fn write_msrs(vcpu: &VcpuFd, id: u32, msrs: &[(u32, u64)]) {
    let mut rest = msrs;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MSR_BATCH)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let written = Msrs::from_entries(&entries)
            .ok()
            .and_then(|m| vcpu.set_msrs(&m).ok())
            .map_or(0, |n| n.min(batch.len()));
        if let Some(&(index, data)) = batch.get(written) {
            tracing::debug!(
                vcpu = id,
                "MSR {index:#x} = {data:#x} could not be restored"
            );
        }
        let skip = if written < batch.len() {
            written + 1
        } else {
            written
        };
        rest = &rest[skip..];
    }
}

/// Captures the state of one vCPU (which must be out of KVM_RUN with no I/O pending).
pub fn capture_vcpu(vcpu: &VcpuFd, id: u32, msrs: &[u32]) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Vec::with_capacity(8192);
    out.extend_from_slice(&id.to_le_bytes());
    let mp = vcpu.get_mp_state().map_err(kvm("read the MP state"))?;
    put(&mut out, tag::MP_STATE, pod_bytes(&mp));
    let regs = vcpu.get_regs().map_err(kvm("read registers"))?;
    put(&mut out, tag::REGS, pod_bytes(&regs));
    let sregs = vcpu.get_sregs().map_err(kvm("read special registers"))?;
    put(&mut out, tag::SREGS, pod_bytes(&sregs));
    match vcpu.get_xsave() {
        Ok(x) => put(&mut out, tag::XSAVE, pod_bytes(&x)),
        Err(_) => {
            let fpu = vcpu.get_fpu().map_err(kvm("read the FPU"))?;
            put(&mut out, tag::FPU, pod_bytes(&fpu));
        }
    }
    if let Ok(x) = vcpu.get_xcrs() {
        put(&mut out, tag::XCRS, pod_bytes(&x));
    }
    if let Ok(d) = vcpu.get_debug_regs() {
        put(&mut out, tag::DEBUGREGS, pod_bytes(&d));
    }
    let lapic = vcpu.get_lapic().map_err(kvm("read the LAPIC"))?;
    put(&mut out, tag::LAPIC, pod_bytes(&lapic));
    let mut m = Vec::with_capacity(msrs.len() * 16);
    for (index, value) in read_msrs(vcpu, msrs) {
        m.extend_from_slice(&index.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&value.to_le_bytes());
    }
    put(&mut out, tag::MSRS, &m);
    let events = vcpu.get_vcpu_events().map_err(kvm("read vCPU events"))?;
    put(&mut out, tag::EVENTS, pod_bytes(&events));
    Ok(out)
}

/// A vCPU's state, decoded and checked, ready to apply.
#[derive(Default)]
pub struct VcpuState {
    /// vCPU index.
    pub id: u32,
    mp: Option<kvm_mp_state>,
    regs: Option<kvm_regs>,
    sregs: Option<kvm_sregs>,
    fpu: Option<kvm_fpu>,
    xsave: Option<Box<kvm_xsave>>,
    xcrs: Option<kvm_xcrs>,
    debugregs: Option<kvm_debugregs>,
    lapic: Option<Box<kvm_lapic_state>>,
    msrs: Vec<(u32, u64)>,
    events: Option<kvm_vcpu_events>,
}

/// Decodes a vCPU record body; refuses anything malformed, and any register
/// value no vCPU with the limits `cpu` could hold ([`regcheck`]).
pub fn decode_vcpu(body: &[u8], cpu: &CpuLimits) -> Result<VcpuState, SnapshotError> {
    const W: &str = "vcpu";
    let id_bytes: [u8; 4] = body
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed(W, "no vCPU index"))?;
    let id = u32::from_le_bytes(id_bytes);
    let mut st = VcpuState {
        id,
        ..Default::default()
    };
    let bad = |why: String| malformed(W, format!("vCPU {id}: {why}"));
    let rest = body.get(4..).unwrap_or_default();
    for (t, bytes) in sections(rest).map_err(bad)? {
        let name = section_name(t);
        match t {
            tag::MP_STATE => st.mp = Some(pod_from(&name, bytes).map_err(bad)?),
            tag::REGS => st.regs = Some(pod_from(&name, bytes).map_err(bad)?),
            tag::SREGS => st.sregs = Some(pod_from(&name, bytes).map_err(bad)?),
            tag::FPU => st.fpu = Some(pod_from(&name, bytes).map_err(bad)?),
            tag::XSAVE => st.xsave = Some(Box::new(pod_from(&name, bytes).map_err(bad)?)),
            tag::XCRS => st.xcrs = Some(pod_from(&name, bytes).map_err(bad)?),
            tag::DEBUGREGS => st.debugregs = Some(pod_from(&name, bytes).map_err(bad)?),
            tag::LAPIC => st.lapic = Some(Box::new(pod_from(&name, bytes).map_err(bad)?)),
            tag::EVENTS => st.events = Some(pod_from(&name, bytes).map_err(bad)?),
            tag::MSRS => {
                if bytes.len() % 16 != 0 {
                    return Err(bad(format!(
                        "the MSR section is {} bytes long, not a whole number of 16-byte entries",
                        bytes.len()
                    )));
                }
                for e in bytes.chunks_exact(16) {
                    let word = |at: usize, n: usize| {
                        let mut b = [0u8; 8];
                        if let (Some(d), Some(s)) = (b.get_mut(..n), e.get(at..at + n)) {
                            d.copy_from_slice(s);
                        }
                        u64::from_le_bytes(b)
                    };
                    let (index, reserved, value) = (word(0, 4) as u32, word(4, 4), word(8, 8));
                    if reserved != 0 {
                        return Err(bad(format!(
                            "MSR {index:#x}: the reserved word of its entry is {reserved:#x}, not 0"
                        )));
                    }
                    st.msrs.push((index, value));
                }
            }
            other => return Err(bad(format!("unknown section {other}"))),
        }
    }
    if st.regs.is_none() || st.sregs.is_none() || st.lapic.is_none() || st.mp.is_none() {
        return Err(malformed(
            W,
            format!(
                "vCPU {}: registers, special registers, LAPIC or MP state missing",
                st.id
            ),
        ));
    }
    if st.xsave.is_none() && st.fpu.is_none() {
        return Err(malformed(W, format!("vCPU {}: no FPU state", st.id)));
    }
    if st.xsave.is_some() && st.fpu.is_some() {
        return Err(bad("both a kvm_fpu and a kvm_xsave section".into()));
    }
    check_vcpu(&st, cpu)?;
    Ok(st)
}

/// Checks every register of a decoded vCPU state (see [`regcheck`]).
fn check_vcpu(st: &VcpuState, cpu: &CpuLimits) -> Result<(), SnapshotError> {
    let id = st.id;
    let (Some(mp), Some(regs), Some(sregs)) = (&st.mp, &st.regs, &st.sregs) else {
        return Err(malformed("vcpu", format!("vCPU {id}: registers missing")));
    };
    regcheck::check_mp_state(id, mp)?;
    regcheck::check_sregs(id, sregs, cpu)?;
    regcheck::check_regs(id, regs, sregs, cpu)?;
    if let Some(f) = &st.fpu {
        regcheck::check_fpu(id, f)?;
    }
    if let Some(x) = &st.xsave {
        regcheck::check_xsave(id, x, cpu)?;
    }
    if let Some(x) = &st.xcrs {
        regcheck::check_xcrs(id, x, cpu)?;
    }
    if let Some(d) = &st.debugregs {
        regcheck::check_debugregs(id, d)?;
    }
    if let Some(e) = &st.events {
        regcheck::check_events(id, e)?;
    }
    regcheck::check_msrs(id, &st.msrs, sregs)
}

/// Applies a decoded vCPU state (CPUID must already be set).
pub fn restore_vcpu(vcpu: &VcpuFd, st: &VcpuState) -> Result<(), SnapshotError> {
    if let Some(mp) = st.mp {
        vcpu.set_mp_state(mp).map_err(kvm("set the MP state"))?;
    }
    if let Some(r) = &st.regs {
        vcpu.set_regs(r).map_err(kvm("set registers"))?;
    }
    if let Some(s) = &st.sregs {
        vcpu.set_sregs(s).map_err(kvm("set special registers"))?;
    }
    if let Some(x) = &st.xsave {
        // SAFETY: KVM_CAP_XSAVE2 is never enabled on this VM, so the legacy
        // 4 KiB kvm_xsave is the size KVM expects.
        unsafe { vcpu.set_xsave(x) }.map_err(kvm("set the XSAVE area"))?;
    } else if let Some(f) = &st.fpu {
        vcpu.set_fpu(f).map_err(kvm("set the FPU"))?;
    }
    // A CPU without XSAVE has no XCRs: KVM reports none and refuses to set any.
    if let Some(x) = st.xcrs.as_ref().filter(|x| x.nr_xcrs > 0) {
        vcpu.set_xcrs(x).map_err(kvm("set XCRs"))?;
    }
    if let Some(d) = &st.debugregs {
        vcpu.set_debug_regs(d).map_err(kvm("set debug registers"))?;
    }
    if let Some(l) = &st.lapic {
        vcpu.set_lapic(l).map_err(kvm("set the LAPIC"))?;
    }
    write_msrs(vcpu, st.id, &st.msrs);
    if let Some(e) = &st.events {
        vcpu.set_vcpu_events(e).map_err(kvm("set vCPU events"))?;
    }
    Ok(())
}

/// Captures the VM-wide state: both PICs, the IOAPIC, the PIT and the KVM clock.
pub fn capture_vm(vm: &VmFd) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Vec::new();
    for (t, chip) in [
        (tag::PIC_MASTER, KVM_IRQCHIP_PIC_MASTER),
        (tag::PIC_SLAVE, KVM_IRQCHIP_PIC_SLAVE),
        (tag::IOAPIC, KVM_IRQCHIP_IOAPIC),
    ] {
        let mut c = kvm_irqchip {
            chip_id: chip,
            ..Default::default()
        };
        vm.get_irqchip(&mut c).map_err(kvm("read the irqchip"))?;
        put(&mut out, t, pod_bytes(&c));
    }
    let pit = vm.get_pit2().map_err(kvm("read the PIT"))?;
    put(&mut out, tag::PIT2, pod_bytes(&pit));
    if let Ok(clock) = vm.get_clock() {
        put(&mut out, tag::CLOCK, pod_bytes(&clock));
    }
    Ok(out)
}

/// The VM-wide state, decoded and checked.
#[derive(Default)]
pub struct VmState {
    chips: Vec<kvm_irqchip>,
    pit: Option<kvm_pit_state2>,
    clock: Option<kvm_clock_data>,
}

/// Decodes a VM state body.
pub fn decode_vm(body: &[u8]) -> Result<VmState, SnapshotError> {
    const W: &str = "vm";
    let mut st = VmState::default();
    for (t, bytes) in sections(body).map_err(|why| malformed(W, why))? {
        let name = section_name(t);
        match t {
            tag::PIC_MASTER | tag::PIC_SLAVE | tag::IOAPIC => {
                let expected = match t {
                    tag::PIC_MASTER => KVM_IRQCHIP_PIC_MASTER,
                    tag::PIC_SLAVE => KVM_IRQCHIP_PIC_SLAVE,
                    _ => KVM_IRQCHIP_IOAPIC,
                };
                let c: kvm_irqchip = pod_from(&name, bytes).map_err(|why| malformed(W, why))?;
                if c.chip_id != expected {
                    return Err(malformed(
                        W,
                        format!("the {name} section holds irqchip {}", c.chip_id),
                    ));
                }
                st.chips.push(c);
            }
            tag::PIT2 => st.pit = Some(pod_from(&name, bytes).map_err(|why| malformed(W, why))?),
            tag::CLOCK => st.clock = Some(pod_from(&name, bytes).map_err(|why| malformed(W, why))?),
            other => return Err(malformed(W, format!("unknown section {other}"))),
        }
    }
    if st.chips.len() != 3 || st.pit.is_none() {
        return Err(malformed(W, "interrupt controllers or PIT missing"));
    }
    Ok(st)
}

/// Applies a decoded VM state.
pub fn restore_vm(vm: &VmFd, st: &VmState) -> Result<(), SnapshotError> {
    for c in &st.chips {
        vm.set_irqchip(c).map_err(kvm("set the irqchip"))?;
    }
    if let Some(p) = &st.pit {
        vm.set_pit2(p).map_err(kvm("set the PIT"))?;
    }
    if let Some(c) = &st.clock {
        let c = kvm_clock_data {
            clock: c.clock,
            ..Default::default()
        };
        if let Err(e) = vm.set_clock(&c) {
            tracing::warn!("cannot restore the KVM clock: {e}");
        }
    }
    Ok(())
}

/// A plausible vCPU state (a 64-bit guest at its entry point) and the limits
/// of a common x86_64 vCPU, for tests that build records and streams.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use kvm_bindings::KVM_MP_STATE_RUNNABLE;

    /// Every section of a vCPU record, as plain KVM structures.
    #[derive(Clone)]
    pub struct Parts {
        pub id: u32,
        pub mp: kvm_mp_state,
        pub regs: kvm_regs,
        pub sregs: kvm_sregs,
        pub fpu: kvm_fpu,
        pub xcrs: kvm_xcrs,
        pub debugregs: kvm_debugregs,
        pub lapic: kvm_lapic_state,
        pub events: kvm_vcpu_events,
        pub msrs: Vec<(u32, u64)>,
    }

    impl Parts {
        /// vCPU `id` at a 64-bit entry point, as rxen boots it.
        pub fn sample(id: u32) -> Parts {
            let mut sregs = kvm_sregs {
                apic_base: 0xFEE0_0900,
                ..Default::default()
            };
            crate::boot::regs::long_mode_sregs(&mut sregs);
            let mut xcrs = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0].value = 0x7;
            Parts {
                id,
                mp: kvm_mp_state {
                    mp_state: KVM_MP_STATE_RUNNABLE,
                },
                regs: crate::boot::regs::entry_regs(0x10_0000, u64::from(id), 0x9000),
                sregs,
                fpu: kvm_fpu {
                    fcw: 0x37F,
                    mxcsr: 0x1F80,
                    ..Default::default()
                },
                xcrs,
                debugregs: kvm_debugregs {
                    dr6: 0xFFFF_0FF0,
                    dr7: 0x400,
                    ..Default::default()
                },
                lapic: kvm_lapic_state::default(),
                events: kvm_vcpu_events {
                    flags: kvm_bindings::KVM_VCPUEVENT_VALID_NMI_PENDING
                        | kvm_bindings::KVM_VCPUEVENT_VALID_SHADOW
                        | kvm_bindings::KVM_VCPUEVENT_VALID_SMM,
                    ..Default::default()
                },
                msrs: crate::boot::regs::boot_msrs(),
            }
        }

        /// The record body, sections in the order `capture_vcpu` writes them.
        pub fn encode(&self) -> Vec<u8> {
            let mut out = self.id.to_le_bytes().to_vec();
            put(&mut out, tag::MP_STATE, pod_bytes(&self.mp));
            put(&mut out, tag::REGS, pod_bytes(&self.regs));
            put(&mut out, tag::SREGS, pod_bytes(&self.sregs));
            put(&mut out, tag::FPU, pod_bytes(&self.fpu));
            put(&mut out, tag::XCRS, pod_bytes(&self.xcrs));
            put(&mut out, tag::DEBUGREGS, pod_bytes(&self.debugregs));
            put(&mut out, tag::LAPIC, pod_bytes(&self.lapic));
            let mut m = Vec::new();
            for &(index, value) in &self.msrs {
                m.extend_from_slice(&index.to_le_bytes());
                m.extend_from_slice(&0u32.to_le_bytes());
                m.extend_from_slice(&value.to_le_bytes());
            }
            put(&mut out, tag::MSRS, &m);
            put(&mut out, tag::EVENTS, pod_bytes(&self.events));
            out
        }
    }

    /// A VM state body: both PICs, the IOAPIC, the PIT.
    pub fn vm_body() -> Vec<u8> {
        let mut out = Vec::new();
        for (t, chip) in [
            (tag::PIC_MASTER, KVM_IRQCHIP_PIC_MASTER),
            (tag::PIC_SLAVE, KVM_IRQCHIP_PIC_SLAVE),
            (tag::IOAPIC, KVM_IRQCHIP_IOAPIC),
        ] {
            let c = kvm_irqchip {
                chip_id: chip,
                ..Default::default()
            };
            put(&mut out, t, pod_bytes(&c));
        }
        put(&mut out, tag::PIT2, pod_bytes(&kvm_pit_state2::default()));
        out
    }

    /// How many kinds of impossible field [`break_one`] knows.
    pub const BREAKS: usize = 24;

    /// Makes one field of `p` impossible, chosen by `which` and `seed`; returns
    /// the register the refusal must name.
    pub fn break_one(p: &mut Parts, which: usize, seed: u64, cpu: &CpuLimits) -> &'static str {
        const CR0_VALID: u64 = 0xE005_003F;
        // The `seed`-th bit (modulo their count) of those not in `allowed`.
        let bit = |allowed: u64| {
            let bad: Vec<u32> = (0..64).filter(|b| allowed & (1 << b) == 0).collect();
            1u64 << bad[(seed % bad.len() as u64) as usize]
        };
        let non_canonical = (seed & 0x0000_7FFF_FFFF_FFFF) | 0x0000_8000_0000_0000;
        match which % BREAKS {
            0 => {
                p.sregs.cr0 |= bit(CR0_VALID);
                "CR0"
            }
            1 => {
                p.sregs.cr0 &= !1;
                "CR0"
            }
            2 => {
                p.sregs.cr0 = (p.sregs.cr0 | 1 << 29) & !(1 << 30);
                "CR0"
            }
            3 => {
                p.sregs.cr4 |= bit(cpu.cr4);
                "CR4"
            }
            4 => {
                p.sregs.efer |= bit(cpu.efer);
                "EFER"
            }
            5 => {
                p.sregs.efer &= !(1 << 10);
                "EFER"
            }
            6 => {
                p.sregs.cr4 &= !(1 << 5);
                "CR4"
            }
            7 => {
                p.sregs.cr3 |= bit((1 << cpu.phys_bits) - 1);
                "CR3"
            }
            8 => {
                p.sregs.cr8 = 16 + seed % (u64::MAX - 16);
                "CR8"
            }
            9 => {
                p.sregs.apic_base |= bit(!(0x2FF | !((1u64 << cpu.phys_bits) - 1)));
                "APIC base"
            }
            10 => {
                let names = ["CS", "DS", "ES", "FS", "GS", "SS", "TR", "LDTR"];
                let i = (seed % 8) as usize;
                let s = &mut [
                    &mut p.sregs.cs,
                    &mut p.sregs.ds,
                    &mut p.sregs.es,
                    &mut p.sregs.fs,
                    &mut p.sregs.gs,
                    &mut p.sregs.ss,
                    &mut p.sregs.tr,
                    &mut p.sregs.ldt,
                ][i];
                let f = (seed >> 8) % 9;
                let max = match f {
                    0 => 15,
                    1 => 3,
                    _ => 1,
                };
                let v = (max + 1 + (seed >> 16) % (255 - max)) as u8;
                match f {
                    0 => s.type_ = v,
                    1 => s.dpl = v,
                    2 => s.present = v,
                    3 => s.db = v,
                    4 => s.s = v,
                    5 => s.l = v,
                    6 => s.g = v,
                    7 => s.avl = v,
                    _ => s.unusable = v,
                }
                names[i]
            }
            11 => {
                p.sregs.cs.db = 1;
                "CS"
            }
            12 => match seed % 5 {
                0 => {
                    p.sregs.gdt.base = non_canonical;
                    "GDTR"
                }
                1 => {
                    p.sregs.idt.base = non_canonical;
                    "IDTR"
                }
                2 => {
                    p.sregs.fs.base = non_canonical;
                    "FS"
                }
                3 => {
                    p.sregs.gs.base = non_canonical;
                    "GS"
                }
                _ => {
                    p.sregs.tr.base = non_canonical;
                    "TR"
                }
            },
            13 => {
                let a = (seed % 256) as usize;
                let b = (a + 1 + ((seed >> 8) % 255) as usize) % 256;
                p.sregs.interrupt_bitmap = [0; 4];
                p.sregs.interrupt_bitmap[a / 64] |= 1 << (a % 64);
                p.sregs.interrupt_bitmap[b / 64] |= 1 << (b % 64);
                "interrupt bitmap"
            }
            14 => {
                p.regs.rflags |= bit(0x003F_7FD7);
                "RFLAGS"
            }
            15 => {
                p.regs.rip = non_canonical;
                "RIP"
            }
            16 => {
                p.mp.mp_state = 5 + (seed % u64::from(u32::MAX - 5)) as u32;
                "MP state"
            }
            17 => {
                p.events.exception.injected = 1;
                p.events.exception.nr = if seed % 2 == 0 {
                    2
                } else {
                    (32 + seed % 224) as u8
                };
                "vCPU events"
            }
            18 => {
                p.xcrs.xcrs[0].value = if seed % 2 == 0 {
                    (seed & cpu.xcr0) & !1
                } else {
                    1 | bit(cpu.xcr0)
                };
                "XCR0"
            }
            19 => {
                let high = 1u64 << (32 + seed % 32);
                if seed & (1 << 40) == 0 {
                    p.debugregs.dr6 |= high;
                    "DR6"
                } else {
                    p.debugregs.dr7 |= high;
                    "DR7"
                }
            }
            20 => {
                p.fpu.mxcsr |= 1 << (16 + seed % 16);
                "MXCSR"
            }
            21 => {
                let m = p.msrs[(seed % p.msrs.len() as u64) as usize];
                p.msrs.push(m);
                "MSRs"
            }
            22 => {
                p.msrs
                    .push((0xC000_0080, p.sregs.efer ^ (1 << (seed % 64))));
                "MSRs"
            }
            _ => {
                let v = (2 + seed % 254) as u8;
                match (seed >> 8) % 4 {
                    0 => p.events.nmi.pending = v,
                    1 => p.events.interrupt.injected = v,
                    2 => p.events.smi.smm = v,
                    _ => p.events.exception.has_error_code = v,
                }
                "vCPU events"
            }
        }
    }

    /// A 64-bit vCPU with NX, PCID, XSAVE (x87, SSE, AVX), FSGSBASE, SMEP,
    /// SMAP, x2APIC and 46-bit physical addresses; no LA57, LAM, VMX or SVM.
    pub fn limits() -> CpuLimits {
        let entries = [
            kvm_bindings::kvm_cpuid_entry2 {
                function: 1,
                ecx: (1 << 17) | (1 << 21) | (1 << 26),
                ..Default::default()
            },
            kvm_bindings::kvm_cpuid_entry2 {
                function: 7,
                ebx: 1 | (1 << 7) | (1 << 20),
                ..Default::default()
            },
            kvm_bindings::kvm_cpuid_entry2 {
                function: 0xD,
                eax: 0x7,
                ..Default::default()
            },
            kvm_bindings::kvm_cpuid_entry2 {
                function: 0x8000_0001,
                ecx: 0,
                edx: (1 << 11) | (1 << 20) | (1 << 29),
                ..Default::default()
            },
            kvm_bindings::kvm_cpuid_entry2 {
                function: 0x8000_0008,
                eax: 0x302E,
                ..Default::default()
            },
        ];
        CpuLimits::from_cpuid(&entries)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{break_one, limits, Parts, BREAKS};
    use super::*;
    use proptest::prelude::*;

    /// One MSR read on its own, as the capture did before it batched them.
    fn read_one(vcpu: &VcpuFd, index: u32) -> Option<u64> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .ok()?;
        match vcpu.get_msrs(&mut msrs) {
            Ok(1) => msrs.as_slice().first().map(|e| e.data),
            _ => None,
        }
    }

    #[test]
    fn batched_msr_reads_give_what_one_read_per_msr_gave() {
        let vm = crate::kvm_vm::KvmVm::new().expect("KVM VM");
        let vcpu = vm.create_vcpu(0).expect("vCPU");
        let cpuid = crate::cpuid::for_vcpu(&vm.supported_cpuid, 0, 1, vm.tsc_deadline);
        vcpu.set_cpuid2(&cpuid).expect("CPUID");
        // KVM's list, with MSRs that do not exist at the start, between others and at the end.
        let mut list = vec![0xDEAD_0000];
        for (i, m) in msr_list(&vm.kvm).into_iter().enumerate() {
            list.push(m);
            if i % 7 == 3 {
                list.extend([0xDEAD_0001 + i as u32, 0xDEAD_8001 + i as u32]);
            }
        }
        list.push(0xDEAD_FFFF);
        let batched = read_msrs(&vcpu, &list);
        let single: Vec<(u32, u64)> = list
            .iter()
            .filter_map(|&i| read_one(&vcpu, i).map(|v| (i, v)))
            .collect();
        let indices = |v: &[(u32, u64)]| v.iter().map(|e| e.0).collect::<Vec<_>>();
        assert_eq!(indices(&batched), indices(&single));
        assert!(batched.len() > 10, "{batched:?}");
        for ((i, a), (_, b)) in batched.iter().zip(&single) {
            // Counters (the TSC) move between the reads; the rest must agree.
            if read_one(&vcpu, *i) == Some(*b) {
                assert_eq!(a, b, "MSR {i:#x}");
            }
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(decode_vcpu(&[], &limits()).is_err());
        assert!(
            decode_vcpu(&[0, 0, 0, 0], &limits()).is_err(),
            "nothing in it"
        );
        let mut b = 3u32.to_le_bytes().to_vec();
        put(&mut b, tag::REGS, &[1, 2, 3]);
        let e = decode_vcpu(&b, &limits()).err().expect("short registers");
        assert_eq!(
            e.to_string(),
            format!(
                "malformed vcpu state: vCPU 3: the kvm_regs section is 3 bytes long where {} are expected",
                std::mem::size_of::<kvm_regs>()
            )
        );
        let mut b = 0u32.to_le_bytes().to_vec();
        put(&mut b, tag::SREGS, &[0; 8]);
        let e = decode_vcpu(&b, &limits())
            .err()
            .expect("short special registers");
        assert!(
            e.to_string().contains("the kvm_sregs section is 8 bytes"),
            "{e}"
        );
        let mut b = 0u32.to_le_bytes().to_vec();
        put(&mut b, tag::MSRS, &[0; 24]);
        let e = decode_vcpu(&b, &limits()).err().expect("a broken MSR list");
        assert!(e.to_string().contains("MSR section is 24 bytes"), "{e}");
        let mut b = Vec::new();
        put(&mut b, tag::PIT2, &[0; 4]);
        let e = decode_vm(&b).err().expect("short PIT");
        assert!(
            e.to_string()
                .contains("the kvm_pit_state2 section is 4 bytes"),
            "{e}"
        );
        let mut b = 0u32.to_le_bytes().to_vec();
        b.extend_from_slice(&tag::REGS.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_vcpu(&b, &limits()).is_err(), "section past the end");
        assert!(decode_vm(&[]).is_err());
        assert!(decode_vm(&[1, 2, 3]).is_err());
    }

    #[test]
    fn a_section_twice_is_refused() {
        // Two PIC master states and no slave: three irqchips, but not the three.
        let mut b = Vec::new();
        for (t, chip) in [
            (tag::PIC_MASTER, KVM_IRQCHIP_PIC_MASTER),
            (tag::PIC_MASTER, KVM_IRQCHIP_PIC_MASTER),
            (tag::IOAPIC, KVM_IRQCHIP_IOAPIC),
        ] {
            let c = kvm_irqchip {
                chip_id: chip,
                ..Default::default()
            };
            put(&mut b, t, pod_bytes(&c));
        }
        put(&mut b, tag::PIT2, pod_bytes(&kvm_pit_state2::default()));
        let e = decode_vm(&b).err().expect("refused");
        assert!(e.to_string().contains("twice"), "{e}");
        let mut b = 0u32.to_le_bytes().to_vec();
        put(&mut b, tag::MSRS, &[]);
        put(&mut b, tag::MSRS, &[]);
        let e = decode_vcpu(&b, &limits()).err().expect("refused");
        assert!(e.to_string().contains("twice"), "{e}");
    }

    #[test]
    fn pod_round_trip() {
        let r = kvm_regs {
            rip: 0x1234,
            rax: 7,
            ..Default::default()
        };
        let back: kvm_regs = pod_from("kvm_regs", pod_bytes(&r)).expect("decode");
        assert_eq!(back.rip, 0x1234);
        assert_eq!(back.rax, 7);
    }

    #[test]
    fn a_plausible_state_passes() {
        let st = decode_vcpu(&Parts::sample(1).encode(), &limits()).expect("sample");
        assert_eq!(st.id, 1);
        // So does the same vCPU before it was started (an AP waiting for its SIPI).
        let mut p = Parts::sample(2);
        p.mp.mp_state = kvm_bindings::KVM_MP_STATE_UNINITIALIZED;
        p.sregs.cr0 = 0x6000_0010;
        p.sregs.cr4 = 0;
        p.sregs.efer = 0;
        p.sregs.cs.l = 0;
        p.sregs.cs.base = 0xFFFF_0000;
        p.regs.rip = 0xFFF0;
        decode_vcpu(&p.encode(), &limits()).expect("reset AP");
        // And one with an XSAVE area instead of the legacy FPU state.
        let mut b = p.id.to_le_bytes().to_vec();
        let full = p.encode();
        b.clear();
        b.extend_from_slice(&full[..4]);
        let mut x = kvm_xsave::default();
        x.region[6] = 0x1F80;
        x.region[128] = 0x3;
        for (t, bytes) in sections(&full[4..]).expect("sections") {
            if t == tag::FPU {
                put(&mut b, tag::XSAVE, pod_bytes(&x));
            } else {
                put(&mut b, t, bytes);
            }
        }
        decode_vcpu(&b, &limits()).expect("xsave");
        x.region[128] = 0x1_0003;
        let mut c = b.clone();
        let at = c.len() - b.len();
        assert_eq!(at, 0);
        c.clear();
        c.extend_from_slice(&full[..4]);
        for (t, bytes) in sections(&b[4..]).expect("sections") {
            if t == tag::XSAVE {
                put(&mut c, t, pod_bytes(&x));
            } else {
                put(&mut c, t, bytes);
            }
        }
        let e = decode_vcpu(&c, &limits()).err().expect("AMX state");
        assert!(e.to_string().contains("impossible XSAVE header"), "{e}");
    }

    #[test]
    fn each_kind_of_impossible_register_is_refused() {
        let cpu = limits();
        for which in 0..BREAKS {
            for seed in [0, 1, 7, 0x1234_5678_9ABC_DEF0, u64::MAX] {
                let mut p = Parts::sample(3);
                let reg = break_one(&mut p, which, seed, &cpu);
                let e = decode_vcpu(&p.encode(), &cpu)
                    .err()
                    .unwrap_or_else(|| panic!("case {which}, seed {seed:#x} accepted"));
                assert!(
                    e.to_string()
                        .starts_with(&format!("vCPU 3: impossible {reg}")),
                    "case {which}, seed {seed:#x}: {e}"
                );
            }
        }
    }

    /// The size of each vCPU section's structure.
    fn section_size(t: u32) -> usize {
        match t {
            tag::MP_STATE => std::mem::size_of::<kvm_mp_state>(),
            tag::REGS => std::mem::size_of::<kvm_regs>(),
            tag::SREGS => std::mem::size_of::<kvm_sregs>(),
            tag::FPU => std::mem::size_of::<kvm_fpu>(),
            tag::XSAVE => std::mem::size_of::<kvm_xsave>(),
            tag::XCRS => std::mem::size_of::<kvm_xcrs>(),
            tag::DEBUGREGS => std::mem::size_of::<kvm_debugregs>(),
            tag::LAPIC => std::mem::size_of::<kvm_lapic_state>(),
            tag::EVENTS => std::mem::size_of::<kvm_vcpu_events>(),
            tag::PIC_MASTER | tag::PIC_SLAVE | tag::IOAPIC => std::mem::size_of::<kvm_irqchip>(),
            tag::PIT2 => std::mem::size_of::<kvm_pit_state2>(),
            tag::CLOCK => std::mem::size_of::<kvm_clock_data>(),
            _ => 16,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// One impossible field in an otherwise plausible state: always refused, naming it.
        #[test]
        fn one_impossible_field_is_refused(id in 0u32..64, which in 0usize..BREAKS, seed in any::<u64>()) {
            let cpu = limits();
            let mut p = Parts::sample(id);
            let reg = break_one(&mut p, which, seed, &cpu);
            let e = decode_vcpu(&p.encode(), &cpu);
            prop_assert!(e.is_err(), "case {} accepted", which);
            let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
            let want = format!("vCPU {id}: impossible {reg}");
            prop_assert!(msg.starts_with(&want), "{}", msg);
        }

        /// Random sections (known tags, exact or random sizes, random bytes): an
        /// error or a state, never a panic; a state that passes was checked.
        #[test]
        fn random_bodies_never_panic(
            id in any::<u32>(),
            secs in proptest::collection::vec(
                (0u32..26, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64), 0usize..5000),
                0..14,
            ),
        ) {
            let mut body = id.to_le_bytes().to_vec();
            let mut vm = Vec::new();
            for (t, exact, seed, len) in secs {
                let len = if exact { section_size(t) } else { len };
                let bytes: Vec<u8> = if seed.is_empty() {
                    vec![0; len]
                } else {
                    seed.iter().copied().cycle().take(len).collect()
                };
                put(&mut body, t, &bytes);
                put(&mut vm, t, &bytes);
            }
            let _ = decode_vcpu(&body, &limits());
            let _ = decode_vm(&vm);
            for cut in [0, 1, 5, body.len() / 2] {
                let _ = decode_vcpu(body.get(..body.len().saturating_sub(cut)).unwrap_or_default(), &limits());
                let _ = decode_vm(vm.get(..vm.len().saturating_sub(cut)).unwrap_or_default());
            }
        }

        /// One section of a plausible state replaced by random bytes of its
        /// size: refused or accepted, never a panic; what is accepted keeps
        /// to the limits (checked again field by field).
        #[test]
        fn random_section_contents_never_panic(
            which in 0usize..9,
            bytes in proptest::collection::vec(any::<u8>(), 1024..=1024),
        ) {
            let cpu = limits();
            let p = Parts::sample(0);
            let full = p.encode();
            let mut body = full[..4].to_vec();
            let mut replaced = None;
            for (i, (t, b)) in sections(&full[4..]).expect("sections").into_iter().enumerate() {
                if i == which {
                    let n = section_size(t).min(bytes.len());
                    put(&mut body, t, &bytes[..n]);
                    replaced = Some(t);
                } else {
                    put(&mut body, t, b);
                }
            }
            if let Ok(st) = decode_vcpu(&body, &cpu) {
                prop_assert!(replaced.is_some());
                let s = st.sregs.expect("sregs");
                prop_assert_eq!(s.cr4 & !cpu.cr4, 0);
                prop_assert_eq!(s.efer & !cpu.efer, 0);
                prop_assert!(s.cr8 <= 15);
            }
        }
    }
}
