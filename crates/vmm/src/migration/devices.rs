//! The device records of a stream: one typed record per device (the UART,
//! the i8042, the RTC, the ACPI ports, the power ports, the vCPU masks, each
//! virtio slot), and the checks a restore makes on them before any device
//! is built from them.
//!
//! A record is JSON, `{"name": "serial", "state": {...}}`; every state is a
//! struct of its own that refuses fields it does not know, so a renamed
//! field fails to compile here, or a restore with a message, never quietly.

use serde::{Deserialize, Serialize};

use super::TransferError;
use crate::devices::acpi::AcpiState;
use crate::devices::i8042::I8042State;
use crate::devices::power::PowerState;
use crate::devices::rtc::RtcState;
use crate::devices::serial::SerialSnapshot;
use crate::devices::vcpu_ports::VcpuMaskState;
use crate::devices::virtio_slots::{self, SlotState};

/// One device's saved state: the body of a stream's device record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    tag = "name",
    content = "state",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum DeviceRecord {
    /// COM1 and the console input queued for it.
    Serial(SerialSnapshot),
    /// The i8042 keyboard controller.
    I8042(I8042State),
    /// The CMOS RTC.
    Rtc(RtcState),
    /// The ACPI platform ports and the GED's events.
    Acpi(AcpiState),
    /// The power ports' host request register.
    Power(PowerState),
    /// The vCPU online masks (ports 0x516/0x517).
    Vcpus(VcpuMaskState),
    /// One virtio-mmio slot: its transport and device model.
    Virtio(SlotState),
}

impl DeviceRecord {
    /// The device, for messages: `serial`, ..., `virtio:3`.
    pub fn name(&self) -> String {
        match self {
            DeviceRecord::Serial(_) => "serial".into(),
            DeviceRecord::I8042(_) => "i8042".into(),
            DeviceRecord::Rtc(_) => "rtc".into(),
            DeviceRecord::Acpi(_) => "acpi".into(),
            DeviceRecord::Power(_) => "power".into(),
            DeviceRecord::Vcpus(_) => "vcpus".into(),
            DeviceRecord::Virtio(st) => format!("virtio:{}", st.slot),
        }
    }
}

/// Device state read from a save file or migration stream (all absent on a fresh boot).
#[derive(Debug, Default)]
pub struct SavedDevices {
    /// COM1 and its queued console input.
    pub serial: Option<SerialSnapshot>,
    /// The host request register (0 on a fresh boot).
    pub power: PowerState,
    /// The ACPI ports.
    pub acpi: Option<AcpiState>,
    /// The keyboard controller.
    pub i8042: Option<I8042State>,
    /// The RTC.
    pub rtc: Option<RtcState>,
    /// The masks behind ports 0x516/0x517.
    pub vcpu_masks: Option<VcpuMaskState>,
    /// The virtio slots' devices.
    pub slots: Vec<SlotState>,
}

/// The UART's receive FIFO (vm-superio's).
const SERIAL_FIFO: usize = 64;

impl SavedDevices {
    /// Checks the device records of a stream for a VM of `vcpus` vCPUs,
    /// before anything is applied: each device at most once, and no value
    /// the device itself could not have come to hold.
    pub fn decode(records: Vec<DeviceRecord>, vcpus: u32) -> Result<SavedDevices, TransferError> {
        let mut saved = SavedDevices::default();
        let mut seen: Vec<String> = Vec::new();
        for d in records {
            let name = d.name();
            if seen.contains(&name) {
                return Err(bad_device(&name, "its state appears twice in the stream"));
            }
            let bad = |why: String| bad_device(&name, why);
            match d {
                DeviceRecord::Serial(st) => {
                    check_serial(&st).map_err(bad)?;
                    saved.serial = Some(st);
                }
                DeviceRecord::Acpi(st) => {
                    st.check(virtio_slots::SLOT_COUNT).map_err(bad)?;
                    saved.acpi = Some(st);
                }
                DeviceRecord::I8042(st) => saved.i8042 = Some(st),
                DeviceRecord::Rtc(st) => saved.rtc = Some(st),
                DeviceRecord::Power(st) => {
                    st.check().map_err(bad)?;
                    saved.power = st;
                }
                DeviceRecord::Vcpus(st) => {
                    st.check(vcpus).map_err(bad)?;
                    saved.vcpu_masks = Some(st);
                }
                DeviceRecord::Virtio(st) => {
                    if st.slot >= virtio_slots::SLOT_COUNT {
                        return Err(bad(format!(
                            "slot {} (there are {})",
                            st.slot,
                            virtio_slots::SLOT_COUNT
                        )));
                    }
                    saved.slots.push(st);
                }
            }
            seen.push(name);
        }
        Ok(saved)
    }
}

/// The UART's FIFO and the console input queued behind it, as they can be.
fn check_serial(st: &SerialSnapshot) -> Result<(), String> {
    if st.fifo.len() > SERIAL_FIFO {
        return Err(format!(
            "{} bytes in its {SERIAL_FIFO}-byte receive FIFO",
            st.fifo.len()
        ));
    }
    if st.queued_input.len() > crate::console::INPUT_QUEUE_MAX {
        return Err(format!(
            "{} bytes of queued input, over the {} the console queues",
            st.queued_input.len(),
            crate::console::INPUT_QUEUE_MAX
        ));
    }
    if crate::console::InputQueue::restore(&st.queued_input, &st.queued_breaks).is_none() {
        return Err(format!(
            "queued BREAKs at {:?} do not fit its {} bytes of queued input",
            st.queued_breaks,
            st.queued_input.len()
        ));
    }
    Ok(())
}

/// A device record that does not fit (the restore's error).
pub fn bad_device(name: &str, why: impl std::fmt::Display) -> TransferError {
    TransferError::Mismatch(format!("device {name}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A record from its JSON.
    fn record(json: serde_json::Value) -> Result<DeviceRecord, serde_json::Error> {
        serde_json::from_value(json)
    }

    /// The device records a 4-vCPU test guest saves, as JSON.
    fn saved_json() -> Vec<serde_json::Value> {
        vec![
            serde_json::json!({"name": "serial", "state": {"divisor": [1, 0], "regs": [0, 1, 3, 0x60, 8, 0xB0, 0], "fifo": [104, 105], "queued_input": [10]}}),
            serde_json::json!({"name": "acpi", "state": {"pending": 1, "seen": 3, "changed": 2}}),
            serde_json::json!({"name": "power", "state": {"host_request": 2}}),
            serde_json::json!({"name": "vcpus", "state": {"wanted": 7, "reported": 5}}),
        ]
    }

    fn saved() -> Vec<DeviceRecord> {
        saved_json()
            .into_iter()
            .map(|j| record(j).expect("a real record"))
            .collect()
    }

    #[test]
    fn saved_device_states_are_checked_before_anything_is_applied() {
        let d = SavedDevices::decode(saved(), 4).expect("plausible devices");
        assert_eq!(
            d.vcpu_masks,
            Some(VcpuMaskState {
                wanted: 7,
                reported: Some(5)
            })
        );
        assert_eq!(d.power.host_request, 2);
        let refused = |edit: &dyn Fn(&mut Vec<DeviceRecord>), why: &str| {
            let mut recs = saved();
            edit(&mut recs);
            let e = SavedDevices::decode(recs, 4)
                .expect_err("refused")
                .to_string();
            assert!(e.contains(why), "{e} (expected {why})");
        };
        let masks = |wanted| {
            move |r: &mut Vec<DeviceRecord>| {
                r[3] = DeviceRecord::Vcpus(VcpuMaskState {
                    wanted,
                    reported: None,
                })
            }
        };
        refused(&masks(0), "wanted mask 0x0");
        refused(&masks(0x1F), "wanted mask 0x1f");
        refused(&masks(6), "wanted mask 0x6");
        refused(
            &|r| r[2] = DeviceRecord::Power(PowerState { host_request: 3 }),
            "host_request is 3, not",
        );
        let serial = |edit: &dyn Fn(&mut SerialSnapshot)| {
            let mut recs = saved();
            if let DeviceRecord::Serial(s) = &mut recs[0] {
                edit(s);
            }
            SavedDevices::decode(recs, 4)
                .expect_err("refused")
                .to_string()
        };
        let e = serial(&|s| s.fifo = vec![0u8; 65]);
        assert!(e.contains("65 bytes in its 64-byte receive FIFO"), "{e}");
        let e = serial(&|s| s.queued_input = vec![0u8; 64 * 1024 + 1]);
        assert!(e.contains("bytes of queued input"), "{e}");
        let e = serial(&|s| s.queued_breaks = vec![5]);
        assert!(
            e.contains("queued BREAKs at [5] do not fit its 1 bytes"),
            "{e}"
        );
        refused(
            &|r| r.push(r[2].clone()),
            "device power: its state appears twice",
        );
        let acpi = record(serde_json::json!({"name": "acpi", "state": {"pending": 0x80, "seen": 3, "changed": 2}}))
            .expect("typed");
        refused(&|r| r[1] = acpi.clone(), "pending events 0x80");
        let virtio = |slot: usize| {
            record(serde_json::json!({"name": "virtio", "state": {
                "slot": slot, "device": "balloon", "transport": {
                    "device_type": 5, "status": 0, "driver_features": 0,
                    "device_features_sel": 0, "driver_features_sel": 0, "queue_sel": 0,
                    "shm_sel": 0, "config_generation": 0, "activated": false,
                    "interrupt_status": 0, "queues": []
                }
            }}))
            .expect("typed")
        };
        let v15 = virtio(15);
        refused(&|r| r.push(virtio(16)), "device virtio:16: slot 16");
        refused(
            &|r| r.extend([v15.clone(), v15.clone()]),
            "device virtio:15: its state appears twice",
        );
        SavedDevices::decode(vec![v15.clone()], 4).expect("one virtio slot");
    }

    #[test]
    fn unknown_devices_and_fields_are_refused_by_type() {
        for (json, why) in [
            (
                serde_json::json!({"name": "floppy", "state": null}),
                "unknown variant `floppy`",
            ),
            (
                serde_json::json!({"name": "power", "state": {"host_request": 0, "host_requests": 1}}),
                "unknown field `host_requests`",
            ),
            (
                serde_json::json!({"name": "vcpus", "state": {"wanted": 1}, "extra": 1}),
                "string \"extra\", expected \"name\" or \"state\"",
            ),
            (
                serde_json::json!({"name": "power", "state": {"host_request": 300}}),
                "300",
            ),
        ] {
            let e = record(json).expect_err("refused").to_string();
            assert!(e.contains(why), "{e} (expected {why})");
        }
        // What is written reads back the same.
        for r in saved() {
            let json = serde_json::to_value(&r).expect("json");
            let back = record(json.clone()).expect("typed");
            assert_eq!(serde_json::to_value(&back).expect("json"), json);
        }
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
                        Just("vcpus"), Just("virtio"), Just("x"),
                    ],
                    arb_json(),
                ),
                0..8,
            ),
            field in (0usize..4, ".{0,12}", arb_json()),
            vcpus in 1u32..40,
        ) {
            let recs: Vec<DeviceRecord> = recs
                .into_iter()
                .filter_map(|(n, s)| record(serde_json::json!({"name": n, "state": s})).ok())
                .collect();
            let _ = SavedDevices::decode(recs, vcpus);
            let mut real = saved_json();
            let (which, key, value) = field;
            real[which]["state"][key] = value;
            let real: Result<Vec<DeviceRecord>, _> = real.into_iter().map(record).collect();
            if let Ok(d) = real.map_err(|_| ()).and_then(|r| SavedDevices::decode(r, vcpus).map_err(|_| ())) {
                prop_assert!(d.power.host_request <= 2);
                if let Some(m) = d.vcpu_masks {
                    prop_assert!(m.wanted != 0 && m.wanted.count_ones() <= vcpus);
                }
            }
        }
    }
}
