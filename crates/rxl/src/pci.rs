//! xl's PCI passthrough commands (`pci-attach`, `pci-detach`, `pci-list`,
//! `pci-assignable-add`, `-remove`, `-list`): rxen has no passthrough, which on KVM needs VFIO
//! (an IOMMU and the vfio-pci driver) and the VMM's support for it; each command says so.

/// Why every PCI passthrough command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{command}: PCI passthrough is not supported: on KVM it needs VFIO (an IOMMU and the vfio-pci driver), which rxen does not use on these hosts; no device is attached, detached or made assignable")]
pub struct NoPassthrough {
    /// The command refused.
    pub command: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_command_and_vfio() {
        let e = NoPassthrough {
            command: "pci-attach",
        }
        .to_string();
        assert!(e.starts_with("pci-attach: PCI passthrough is not supported"));
        assert!(e.contains("VFIO"));
    }
}
