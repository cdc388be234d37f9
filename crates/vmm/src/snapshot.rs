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

fn read_msr(vcpu: &VcpuFd, index: u32) -> Option<u64> {
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
    for &index in msrs {
        if let Some(value) = read_msr(vcpu, index) {
            m.extend_from_slice(&index.to_le_bytes());
            m.extend_from_slice(&0u32.to_le_bytes());
            m.extend_from_slice(&value.to_le_bytes());
        }
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

/// Decodes a vCPU record body; refuses anything malformed.
pub fn decode_vcpu(body: &[u8]) -> Result<VcpuState, SnapshotError> {
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
                    let mut i = [0u8; 4];
                    i.copy_from_slice(&e[..4]);
                    let mut v = [0u8; 8];
                    v.copy_from_slice(&e[8..]);
                    st.msrs.push((u32::from_le_bytes(i), u64::from_le_bytes(v)));
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
    Ok(st)
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
    for &(index, data) in &st.msrs {
        let ok = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }])
        .ok()
        .and_then(|m| vcpu.set_msrs(&m).ok())
            == Some(1);
        if !ok {
            tracing::debug!(
                vcpu = st.id,
                "MSR {index:#x} = {data:#x} could not be restored"
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(decode_vcpu(&[]).is_err());
        assert!(decode_vcpu(&[0, 0, 0, 0]).is_err(), "nothing in it");
        let mut b = 3u32.to_le_bytes().to_vec();
        put(&mut b, tag::REGS, &[1, 2, 3]);
        let e = decode_vcpu(&b).err().expect("short registers");
        assert_eq!(
            e.to_string(),
            format!(
                "malformed vcpu state: vCPU 3: the kvm_regs section is 3 bytes long where {} are expected",
                std::mem::size_of::<kvm_regs>()
            )
        );
        let mut b = 0u32.to_le_bytes().to_vec();
        put(&mut b, tag::SREGS, &[0; 8]);
        let e = decode_vcpu(&b).err().expect("short special registers");
        assert!(
            e.to_string().contains("the kvm_sregs section is 8 bytes"),
            "{e}"
        );
        let mut b = 0u32.to_le_bytes().to_vec();
        put(&mut b, tag::MSRS, &[0; 24]);
        let e = decode_vcpu(&b).err().expect("a broken MSR list");
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
        assert!(decode_vcpu(&b).is_err(), "section past the end");
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
        let e = decode_vcpu(&b).err().expect("refused");
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
}
