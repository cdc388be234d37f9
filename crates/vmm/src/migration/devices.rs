//! The device records of a stream: what the VMM's devices save, and the
//! checks a restore makes on them before any device is built from them.

use rxen_proto::stream::DeviceRecord;
use rxen_proto::vmspec::VmSpec;

use super::TransferError;
use crate::devices::acpi::AcpiState;
use crate::devices::i8042::I8042State;
use crate::devices::power::HostRequest;
use crate::devices::rtc::RtcState;
use crate::devices::serial::SerialSnapshot;
use crate::devices::vcpu_ports::mask_of;
use crate::devices::virtio_slots;
use crate::vmm::VmmError;

/// Device state read from a save file or migration stream (all absent on a fresh boot).
#[derive(Default)]
pub(crate) struct SavedDevices {
    pub(crate) serial: Option<SerialSnapshot>,
    pub(crate) host_request: u8,
    pub(crate) acpi: Option<AcpiState>,
    pub(crate) i8042: Option<I8042State>,
    pub(crate) rtc: Option<RtcState>,
    /// The masks behind ports 0x516/0x517: wanted, and what the guest last reported.
    pub(crate) vcpu_masks: Option<(u32, Option<u32>)>,
    /// The virtio slots' devices.
    pub(crate) slots: Vec<virtio_slots::SlotState>,
}

impl SavedDevices {
    /// Decodes the device records of a stream for the VM of `spec`, before
    /// anything is applied: each device at most once, every one known here,
    /// and no value the device itself could not have come to hold.
    pub(crate) fn decode(
        records: &[DeviceRecord],
        spec: &VmSpec,
    ) -> Result<SavedDevices, VmmError> {
        let mut saved = SavedDevices::default();
        let mut seen: Vec<&str> = Vec::new();
        for d in records {
            let name = d.name.as_str();
            if seen.contains(&name) {
                return Err(bad_device(name, "its state appears twice in the stream"));
            }
            seen.push(name);
            match name {
                "serial" => {
                    let st: SerialSnapshot = device_state(d)?;
                    if st.fifo.len() > SERIAL_FIFO {
                        return Err(bad_device(
                            name,
                            format!(
                                "{} bytes in its {SERIAL_FIFO}-byte receive FIFO",
                                st.fifo.len()
                            ),
                        ));
                    }
                    if st.queued_input.len() > crate::console::INPUT_QUEUE_MAX {
                        return Err(bad_device(
                            name,
                            format!(
                                "{} bytes of queued input, over the {} the console queues",
                                st.queued_input.len(),
                                crate::console::INPUT_QUEUE_MAX
                            ),
                        ));
                    }
                    if crate::console::InputQueue::restore(&st.queued_input, &st.queued_breaks)
                        .is_none()
                    {
                        return Err(bad_device(
                            name,
                            format!(
                                "queued BREAKs at {:?} do not fit its {} bytes of queued input",
                                st.queued_breaks,
                                st.queued_input.len()
                            ),
                        ));
                    }
                    saved.serial = Some(st);
                }
                "acpi" => {
                    let st: AcpiState = device_state(d)?;
                    st.check(virtio_slots::SLOT_COUNT)
                        .map_err(|e| bad_device(name, e))?;
                    saved.acpi = Some(st);
                }
                "i8042" => saved.i8042 = Some(device_state(d)?),
                "rtc" => saved.rtc = Some(device_state(d)?),
                "power" => {
                    saved.host_request = d
                        .state
                        .get("host_request")
                        .and_then(serde_json::Value::as_u64)
                        .and_then(|v| u8::try_from(v).ok())
                        .filter(|&v| v <= HostRequest::Reboot as u8)
                        .ok_or_else(|| {
                            bad_device(
                                name,
                                "host_request is not 0 (none), 1 (shut down) or 2 (reboot)",
                            )
                        })?
                }
                "vcpus" => {
                    let mask = |k: &str| {
                        d.state
                            .get(k)
                            .and_then(serde_json::Value::as_u64)
                            .and_then(|v| u32::try_from(v).ok())
                    };
                    let wanted = mask("wanted").ok_or_else(|| bad_device(name, "no wanted"))?;
                    // The host only ever asks for the first n of the domain's vCPUs, n >= 1.
                    let n = wanted.count_ones();
                    if wanted == 0 || wanted != mask_of(n) || n > spec.vcpus {
                        return Err(bad_device(
                            name,
                            format!(
                                "wanted mask {wanted:#x} is not the first 1 to {} vCPUs",
                                spec.vcpus
                            ),
                        ));
                    }
                    saved.vcpu_masks = Some((wanted, mask("reported")));
                }
                other if other.starts_with("virtio:") => {
                    let st = serde_json::from_value::<virtio_slots::SlotState>(d.state.clone())
                        .map_err(|e| bad_device(other, e))?;
                    if st.slot >= virtio_slots::SLOT_COUNT || other != format!("virtio:{}", st.slot)
                    {
                        return Err(bad_device(
                            other,
                            format!("slot {} (there are {})", st.slot, virtio_slots::SLOT_COUNT),
                        ));
                    }
                    saved.slots.push(st);
                }
                other => return Err(bad_device(other, "unknown device")),
            }
        }
        Ok(saved)
    }
}

/// The UART's receive FIFO (vm-superio's).
const SERIAL_FIFO: usize = 64;

pub(crate) fn bad_device(name: &str, why: impl std::fmt::Display) -> VmmError {
    VmmError::Restore(TransferError::Mismatch(format!("device {name}: {why}")))
}

/// The typed state of a saved device record.
fn device_state<T: serde::de::DeserializeOwned>(d: &DeviceRecord) -> Result<T, VmmError> {
    serde_json::from_value(d.state.clone()).map_err(|e| bad_device(&d.name, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn spec(vcpus: u32) -> VmSpec {
        VmSpec {
            name: "t".into(),
            domid: 1,
            uuid: String::new(),
            memory_mib: 64,
            vcpus,
            kernel: rxen_proto::vmspec::KernelSource::Builtin("testguest".into()),
            initrd: None,
            cmdline: String::new(),
            run_dir: PathBuf::new(),
            start_paused: false,
            restore_from: None,
            incoming_fd: None,
            restore_fd: None,
            sandbox: false,
            sandbox_uid: None,
            disks: Vec::new(),
            nics: Vec::new(),
            balloon: false,
            balloon_target_mib: None,
            max_vcpus: 0,
        }
    }

    fn record(name: &str, state: serde_json::Value) -> DeviceRecord {
        DeviceRecord {
            name: name.into(),
            state,
        }
    }

    /// The device records a 4-vCPU test guest saves.
    fn saved() -> Vec<DeviceRecord> {
        vec![
            record(
                "serial",
                serde_json::json!({"divisor": [1, 0], "regs": [0, 1, 3, 0x60, 8, 0xB0, 0], "fifo": [104, 105], "queued_input": [10]}),
            ),
            record(
                "acpi",
                serde_json::json!({"pending": 1, "seen": 3, "changed": 2}),
            ),
            record("power", serde_json::json!({"host_request": 2})),
            record("vcpus", serde_json::json!({"wanted": 7, "reported": 5})),
        ]
    }

    #[test]
    fn saved_device_states_are_checked_before_anything_is_applied() {
        let d = SavedDevices::decode(&saved(), &spec(4)).expect("plausible devices");
        assert_eq!(d.vcpu_masks, Some((7, Some(5))));
        assert_eq!(d.host_request, 2);
        let refused = |edit: &dyn Fn(&mut Vec<DeviceRecord>), why: &str| {
            let mut recs = saved();
            edit(&mut recs);
            let e = SavedDevices::decode(&recs, &spec(4))
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains(why), "{e} (expected {why})");
        };
        refused(&|r| r[3].state["wanted"] = 0.into(), "wanted mask 0x0");
        refused(&|r| r[3].state["wanted"] = 0x1F.into(), "wanted mask 0x1f");
        refused(&|r| r[3].state["wanted"] = 6.into(), "wanted mask 0x6");
        refused(
            &|r| r[2].state["host_request"] = 3.into(),
            "host_request is not",
        );
        refused(
            &|r| r[1].state["pending"] = 0x80.into(),
            "pending events 0x80",
        );
        refused(
            &|r| r[0].state["fifo"] = vec![0u8; 65].into(),
            "65 bytes in its 64-byte receive FIFO",
        );
        refused(
            &|r| r[0].state["queued_input"] = vec![0u8; 64 * 1024 + 1].into(),
            "bytes of queued input",
        );
        refused(
            &|r| r[0].state["queued_breaks"] = vec![5usize].into(),
            "queued BREAKs at [5] do not fit its 1 bytes",
        );
        refused(
            &|r| r.push(r[2].clone()),
            "device power: its state appears twice",
        );
        refused(
            &|r| r.push(record("floppy", serde_json::Value::Null)),
            "device floppy: unknown device",
        );
        refused(
            &|r| {
                r.push(record(
                    "virtio:16",
                    serde_json::json!({"slot": 16, "device": "balloon", "transport": {}}),
                ))
            },
            "device virtio:16",
        );
    }

    /// Any JSON value.
    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (0u64..300).prop_map(serde_json::Value::from),
            ".{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("wanted".to_string()),
                        Just("reported".to_string()),
                        Just("host_request".to_string()),
                        Just("pending".to_string()),
                        Just("fifo".to_string()),
                        Just("slot".to_string()),
                        ".{0,6}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Random device records (known names, random states; real states
        /// with one field changed): refused or decoded, never a panic.
        #[test]
        fn random_device_records_never_panic(
            recs in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("serial"), Just("acpi"), Just("i8042"), Just("rtc"), Just("power"),
                        Just("vcpus"), Just("virtio:0"), Just("virtio:15"), Just("virtio:16"), Just("x"),
                    ],
                    arb_json(),
                ),
                0..8,
            ),
            field in (0usize..4, ".{0,12}", arb_json()),
            vcpus in 1u32..40,
        ) {
            let recs: Vec<DeviceRecord> = recs.into_iter().map(|(n, s)| record(n, s)).collect();
            let _ = SavedDevices::decode(&recs, &spec(vcpus));
            let mut real = saved();
            let (which, key, value) = field;
            real[which].state[key] = value;
            if let Ok(d) = SavedDevices::decode(&real, &spec(vcpus)) {
                prop_assert!(d.host_request <= 2);
                if let Some((wanted, _)) = d.vcpu_masks {
                    prop_assert!(wanted != 0 && wanted.count_ones() <= vcpus);
                }
            }
        }
    }
}
