//! The CPUID each vCPU sees: what KVM supports, with per-vCPU APIC IDs, a
//! consistent topology (one thread per core, all cores in one package), and
//! the hypervisor, x2APIC and TSC-deadline bits.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 ECX: TSC-deadline timer.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: x2APIC.
const ECX_X2APIC: u32 = 1 << 21;
/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Extended topology level type: SMT.
const LEVEL_SMT: u32 = 1;
/// Extended topology level type: core.
const LEVEL_CORE: u32 = 2;

/// Number of bits needed for APIC IDs 0..n.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts one CPUID entry for vCPU `id` of `count`.
pub fn patch_entry(entry: &mut kvm_cpuid_entry2, id: u32, count: u32, tsc_deadline: bool) {
    let count = count.max(1);
    match entry.function {
        1 => {
            entry.ebx = (entry.ebx & 0x0000_FFFF) | ((id & 0xFF) << 24) | ((count.min(255)) << 16);
            entry.ecx |= ECX_HYPERVISOR | ECX_X2APIC;
            if tsc_deadline {
                entry.ecx |= ECX_TSC_DEADLINE;
            }
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        4 => {
            // EAX[31:26]: addressable core IDs in the package, minus one.
            let cores = (1u32 << id_bits(count)).saturating_sub(1).min(63);
            entry.eax = (entry.eax & 0x03FF_FFFF) | (cores << 26);
        }
        0xB | 0x1F => {
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (LEVEL_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = id_bits(count);
                    entry.ebx = count;
                    entry.ecx = (LEVEL_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
            entry.edx = id;
        }
        _ => {}
    }
}

/// Returns `base` adjusted for vCPU `id` of `count`.
pub fn for_vcpu(base: &CpuId, id: u32, count: u32, tsc_deadline: bool) -> CpuId {
    let mut cpuid = base.clone();
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, id, count, tsc_deadline);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_and_bits() {
        let mut e = leaf(1, 0);
        e.ebx = 0xFF00_0800;
        patch_entry(&mut e, 3, 4, true);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xFF, 4);
        assert_eq!(e.ebx & 0xFFFF, 0x0800);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.ecx & ECX_X2APIC, 0);
        assert_ne!(e.ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaves_carry_x2apic_id() {
        for f in [0xB, 0x1F] {
            let mut smt = leaf(f, 0);
            let mut core = leaf(f, 1);
            patch_entry(&mut smt, 5, 6, false);
            patch_entry(&mut core, 5, 6, false);
            assert_eq!((smt.edx, core.edx), (5, 5));
            assert_eq!((smt.ebx, core.ebx), (1, 6));
            assert_eq!(core.eax, 3);
            assert_eq!(core.ecx, 0x201);
        }
    }

    #[test]
    fn id_bits_values() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
