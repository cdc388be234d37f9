//! The KVM VM: `/dev/kvm`, the VM fd, in-kernel irqchip and PIT, memory slots.

use crate::memory::GuestMemory;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::{memslots, MemSlot};

/// Guest physical address of the three pages KVM needs for the TSS (in the hole below 4 GiB).
pub const TSS_ADDR: usize = 0xFFFB_D000;
/// Guest physical address of the identity-map page KVM needs on Intel.
pub const IDENTITY_MAP_ADDR: u64 = 0xFFFB_C000;

/// Errors while setting up the KVM VM.
#[derive(Debug, thiserror::Error)]
pub enum KvmVmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM: cannot {what}: {source}")]
    Ioctl {
        /// What was being done.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// Too many vCPUs for this host.
    #[error("{0} vCPUs requested; this host's KVM supports 1..={1}")]
    TooManyVcpus(u32, usize),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmVmError {
    move |source| KvmVmError::Ioctl { what, source }
}

/// An open KVM VM with its interrupt controllers.
pub struct KvmVm {
    /// The `/dev/kvm` handle.
    pub kvm: Kvm,
    /// The VM fd.
    pub fd: VmFd,
    /// CPUID as KVM supports it (patched per vCPU by [`crate::cpuid`]).
    pub supported_cpuid: CpuId,
    /// Whether the in-kernel LAPIC provides the TSC-deadline timer.
    pub tsc_deadline: bool,
}

impl KvmVm {
    /// Opens `/dev/kvm` and creates a VM with in-kernel irqchip and PIT.
    pub fn new() -> Result<Self, KvmVmError> {
        let kvm = Kvm::new().map_err(KvmVmError::Open)?;
        let fd = kvm.create_vm().map_err(ioctl("create a VM"))?;
        fd.set_tss_address(TSS_ADDR)
            .map_err(ioctl("set the TSS address"))?;
        fd.set_identity_map_address(IDENTITY_MAP_ADDR)
            .map_err(ioctl("set the identity map address"))?;
        fd.create_irq_chip()
            .map_err(ioctl("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(ioctl("create the in-kernel PIT"))?;
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("read the supported CPUID"))?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        Ok(Self {
            kvm,
            fd,
            supported_cpuid,
            tsc_deadline,
        })
    }

    /// Checks that `vcpus` vCPUs can be created.
    pub fn check_vcpus(&self, vcpus: u32) -> Result<(), KvmVmError> {
        let max = self.kvm.get_max_vcpus();
        if vcpus == 0 || vcpus as usize > max || vcpus > 255 {
            return Err(KvmVmError::TooManyVcpus(vcpus, max.min(255)));
        }
        Ok(())
    }

    /// Registers one memory slot, dirty logging on (see [`Self::register_memory`]).
    pub fn set_memslot(&self, slot: &MemSlot) -> Result<(), KvmVmError> {
        let region = kvm_userspace_memory_region {
            slot: slot.slot,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: slot.guest_addr,
            memory_size: slot.size,
            userspace_addr: slot.host_addr,
        };
        // SAFETY: the host range comes from a live mapping owned by the guest memory
        // that the VMM keeps alive for as long as the VM exists.
        unsafe { self.fd.set_user_memory_region(region) }.map_err(ioctl("register guest memory"))
    }

    /// Registers all of `mem` as KVM memory slots; returns the slots.
    ///
    /// Every slot logs dirty pages (`KVM_MEM_LOG_DIRTY_PAGES`) from its
    /// creation, before the guest's first instruction, and never stops: no
    /// writable mapping of guest memory predates the log, and a live migration
    /// starts by clearing the log instead of switching it on (which
    /// write-protected all of RAM at once). The cost
    /// while no migration runs is one fault per page on its first write and
    /// no huge pages in KVM's mappings.
    pub fn register_memory(&self, mem: &GuestMemory) -> Result<Vec<MemSlot>, KvmVmError> {
        let slots = memslots(mem);
        for slot in &slots {
            self.set_memslot(slot)?;
        }
        Ok(slots)
    }

    /// Routes `evt` to the interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), KvmVmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(ioctl("register an irqfd"))
    }

    /// Creates vCPU `id`.
    pub fn create_vcpu(&self, id: u32) -> Result<VcpuFd, KvmVmError> {
        self.fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl("create a vCPU"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_logs_dirty_pages_from_its_registration() {
        let vm = KvmVm::new().expect("KVM VM");
        let mem = crate::memory::create_guest_memory(8).expect("memory");
        let slots = vm.register_memory(&mem).expect("register");
        // KVM refuses the log of a slot registered without KVM_MEM_LOG_DIRTY_PAGES (ENOENT).
        let bits = vm
            .fd
            .get_dirty_log(slots[0].slot, 8 << 20)
            .expect("the slot logs dirty pages without being asked to");
        assert_eq!(bits.len(), (8 << 20) / 4096 / 64);
    }
}
