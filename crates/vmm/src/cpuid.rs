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

/// The brand string leaves 0x80000002..=0x80000004 (KVM reports them as zeros).
const BRAND_LEAVES: std::ops::RangeInclusive<u32> = 0x8000_0002..=0x8000_0004;
/// The brand string when the host has none.
const FALLBACK_BRAND: &str = "rxen virtual CPU";

/// The 48-byte brand string the guest sees: the host processor's (as `-cpu host` in QEMU
/// shows it), or [`FALLBACK_BRAND`].
// `__cpuid` is a safe function from Rust 1.94 on and unsafe before (rust-version is 1.85).
#[allow(unused_unsafe)]
pub fn brand_string() -> [u8; 48] {
    let mut out = [0u8; 48];
    // SAFETY: CPUID is available on every x86_64 processor and has no side effects.
    let max = unsafe { std::arch::x86_64::__cpuid(0x8000_0000) }.eax;
    if max >= *BRAND_LEAVES.end() {
        for (i, leaf) in BRAND_LEAVES.enumerate() {
            // SAFETY: the leaf is within the range the processor reports (checked above).
            let r = unsafe { std::arch::x86_64::__cpuid(leaf) };
            for (j, reg) in [r.eax, r.ebx, r.ecx, r.edx].iter().enumerate() {
                let at = i * 16 + j * 4;
                out[at..at + 4].copy_from_slice(&reg.to_le_bytes());
            }
        }
    }
    if out.iter().all(|&b| b == 0 || b == b' ') {
        out = [0u8; 48];
        out[..FALLBACK_BRAND.len()].copy_from_slice(FALLBACK_BRAND.as_bytes());
    }
    out
}

/// Fills the brand string leaves of `entry` from `brand`.
fn fill_brand(entry: &mut kvm_cpuid_entry2, brand: &[u8; 48]) {
    let Some(i) = entry.function.checked_sub(*BRAND_LEAVES.start()) else {
        return;
    };
    let word = |k: usize| {
        let at = i as usize * 16 + k * 4;
        brand
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_le_bytes)
    };
    entry.eax = word(0);
    entry.ebx = word(1);
    entry.ecx = word(2);
    entry.edx = word(3);
}

/// Returns `base` adjusted for vCPU `id` of `count`, with the brand string filled in.
pub fn for_vcpu(base: &CpuId, id: u32, count: u32, tsc_deadline: bool) -> CpuId {
    let mut cpuid = base.clone();
    let brand = brand_string();
    let mut missing: Vec<u32> = BRAND_LEAVES.collect();
    let max_ext = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0000)
        .map_or(0, |e| e.eax);
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, id, count, tsc_deadline);
        if BRAND_LEAVES.contains(&entry.function) {
            fill_brand(entry, &brand);
            missing.retain(|&f| f != entry.function);
        }
    }
    // Leaves KVM left out are added when the extended range reaches them.
    if max_ext >= *BRAND_LEAVES.end() {
        for function in missing {
            let mut e = kvm_cpuid_entry2 {
                function,
                ..Default::default()
            };
            fill_brand(&mut e, &brand);
            if cpuid.push(e).is_err() {
                tracing::warn!(function, "no room for the CPUID brand leaf");
            }
        }
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
    fn brand_string_is_filled_in() {
        let brand = brand_string();
        assert!(brand.iter().any(|&b| b != 0 && b != b' '));
        let mut base = CpuId::new(0).expect("cpuid");
        let mut top = leaf(0x8000_0000, 0);
        top.eax = 0x8000_0008;
        base.push(top).expect("push");
        base.push(leaf(0x8000_0003, 0)).expect("push");
        let out = for_vcpu(&base, 0, 1, false);
        let mut got = Vec::new();
        for f in 0x8000_0002u32..=0x8000_0004 {
            let e = out
                .as_slice()
                .iter()
                .find(|e| e.function == f)
                .expect("brand leaf");
            for r in [e.eax, e.ebx, e.ecx, e.edx] {
                got.extend_from_slice(&r.to_le_bytes());
            }
        }
        assert_eq!(got, brand.to_vec());
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
