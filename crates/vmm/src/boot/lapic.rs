//! Local APIC boot configuration: LINT0 = ExtINT, LINT1 = NMI (as a PC wires them).

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

/// Offset of the LVT LINT0 register in the APIC page.
const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register in the APIC page.
const APIC_LVT1: usize = 0x360;
/// Delivery mode ExtINT.
const DELIVERY_EXTINT: u32 = 0x7;
/// Delivery mode NMI.
const DELIVERY_NMI: u32 = 0x4;

/// Errors while configuring the LAPIC.
#[derive(Debug, thiserror::Error)]
pub enum LapicError {
    /// A LAPIC ioctl failed.
    #[error("cannot access the local APIC: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
}

fn get_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    for (dst, src) in b.iter_mut().zip(state.regs.iter().skip(offset)) {
        *dst = *src as u8;
    }
    u32::from_le_bytes(b)
}

fn set_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in state.regs.iter_mut().skip(offset).zip(value.to_le_bytes()) {
        *dst = src as _;
    }
}

/// Replaces the delivery mode (bits 8..=10) of an LVT entry.
fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Programs LINT0 as ExtINT and LINT1 as NMI in `state`.
pub fn wire_lints(state: &mut kvm_lapic_state) {
    let lvt0 = get_reg(state, APIC_LVT0);
    set_reg(state, APIC_LVT0, with_delivery_mode(lvt0, DELIVERY_EXTINT));
    let lvt1 = get_reg(state, APIC_LVT1);
    set_reg(state, APIC_LVT1, with_delivery_mode(lvt1, DELIVERY_NMI));
}

/// Programs LINT0/LINT1 of `vcpu`'s in-kernel LAPIC.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), LapicError> {
    let mut state = vcpu.get_lapic()?;
    wire_lints(&mut state);
    vcpu.set_lapic(&state)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lints_get_extint_and_nmi() {
        let mut s = kvm_lapic_state::default();
        set_reg(&mut s, APIC_LVT0, 0x0001_0000);
        set_reg(&mut s, APIC_LVT1, 0x0001_0700);
        wire_lints(&mut s);
        assert_eq!(get_reg(&s, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&s, APIC_LVT1), 0x0001_0400);
    }
}
