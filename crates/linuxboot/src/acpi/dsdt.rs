//! The DSDT: legacy devices, the virtio-mmio transports, the generic event device and power button.

use acpi_tables::aml::{
    self, Device, EISAName, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If,
    Interrupt, Memory32Fixed, Method, Name, NotEqual, Notify, OpRegion, OpRegionSpace, Package,
    Path, ResourceTemplate, Return, Scope, Store, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use super::{
    Machine, GED_EVENT_DEVICES, GED_EVENT_PORT, GED_EVENT_POWER_BUTTON, OEM_ID, OEM_REVISION,
    S5_SLEEP_TYPE,
};

/// `_STA` value of a present, enabled, shown and working device.
const STA_PRESENT: u8 = 0x0F;
/// ACPI notification values.
const NOTIFY_DEVICE_CHECK: u8 = 0x01;
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

/// An exclusive, edge-triggered, active-high interrupt (every device here has one: the
/// irqfds pulse their line).
fn edge_interrupt(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

/// A 4-character AML name for slot `i` (`VR00`..`VR0F`).
fn slot_name(i: usize) -> String {
    format!("VR{:02X}", i & 0xFF)
}

/// A legacy ISA device with one I/O range (or two) and an interrupt.
fn legacy_device(sink: &mut dyn AmlSink, name: &str, hid: &str, ios: &[(u16, u8)], irq: u8) {
    let io: Vec<IO> = ios
        .iter()
        .map(|&(port, len)| IO::new(port, port, 1, len))
        .collect();
    let int = edge_interrupt(u32::from(irq));
    let mut res: Vec<&dyn Aml> = io.iter().map(|i| i as &dyn Aml).collect();
    res.push(&int);
    let crs = ResourceTemplate::new(res);
    let hid = EISAName::new(hid);
    Device::new(
        name.into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &0u8),
            &Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(sink);
}

/// The generic event device: its interrupt runs `_EVT`, which reads (and so clears) the
/// event register and passes each event on.
fn ged(sink: &mut dyn AmlSink, machine: &Machine) {
    let int = edge_interrupt(machine.ged_gsi);
    let crs = ResourceTemplate::new(vec![&int]);
    let port = u32::from(GED_EVENT_PORT);
    let region = OpRegion::new("GDST".into(), OpRegionSpace::SystemIO, &port, &12u8);
    let field = Field::new(
        "GDST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![
            FieldEntry::Named(*b"GDAT", 32),
            FieldEntry::Named(*b"SLTP", 32),
            FieldEntry::Named(*b"SLCH", 32),
        ],
    );
    let events = aml::Local(0);
    let gdat = Path::new("GDAT");
    let read = Store::new(&events, &gdat);
    let power_bit = aml::And::new(&aml::ZERO, &events, &GED_EVENT_POWER_BUTTON);
    let power_set = NotEqual::new(&power_bit, &aml::ZERO);
    let button = Path::new("\\_SB_.PWRB");
    let press = Notify::new(&button, &NOTIFY_BUTTON_PRESSED);
    let on_power = If::new(&power_set, vec![&press]);
    let dev_bit = aml::And::new(&aml::ZERO, &events, &GED_EVENT_DEVICES);
    let dev_set = NotEqual::new(&dev_bit, &aml::ZERO);
    let changed = aml::Local(1);
    let slch = Path::new("SLCH");
    let read_changed = Store::new(&changed, &slch);
    let masks: Vec<u32> = (0..machine.virtio.len()).map(|i| 1u32 << i).collect();
    let paths: Vec<Path> = (0..machine.virtio.len())
        .map(|i| Path::new(&format!("\\_SB_.{}", container_name(i))))
        .collect();
    let bits: Vec<aml::And> = masks
        .iter()
        .map(|m| aml::And::new(&aml::ZERO, &changed, m))
        .collect();
    let tests: Vec<NotEqual> = bits.iter().map(|b| NotEqual::new(b, &aml::ZERO)).collect();
    let notifies: Vec<Notify> = paths
        .iter()
        .map(|p| Notify::new(p, &NOTIFY_DEVICE_CHECK))
        .collect();
    let per_slot: Vec<If> = tests
        .iter()
        .zip(&notifies)
        .map(|(t, n)| If::new(t, vec![n]))
        .collect();
    let mut on_devices_body: Vec<&dyn Aml> = vec![&read_changed];
    on_devices_body.extend(per_slot.iter().map(|i| i as &dyn Aml));
    let on_devices = If::new(&dev_set, on_devices_body);
    let evt = Method::new("_EVT".into(), 1, true, vec![&read, &on_power, &on_devices]);
    Device::new(
        "GED_".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &0u8),
            &Name::new("_CRS".into(), &crs),
            &region,
            &field,
            &evt,
        ],
    )
    .to_aml_bytes(sink);
}

/// The name of slot `i`'s container (`SL00`..`SL0F`).
fn container_name(i: usize) -> String {
    format!("SL{:02X}", i & 0xFF)
}

/// The virtio-mmio transports, each in a container (`ACPI0004`) of its own whose `_STA`
/// follows the slot's bit of the GED's `SLTP` register. Linux re-reads a container's status
/// on a device check: a container that appears is scanned, and its `LNRO0005` child becomes a
/// platform device that `virtio_mmio` binds. That is how slots gain devices at run time.
fn virtio(sink: &mut dyn AmlSink, machine: &Machine) {
    for (i, slot) in machine.virtio.iter().enumerate() {
        let mmio = Memory32Fixed::new(true, slot.base, slot.len);
        let int = edge_interrupt(slot.gsi);
        let crs = ResourceTemplate::new(vec![&mmio, &int]);
        let uid = i as u32;
        let hid = Name::new("_HID".into(), &"LNRO0005");
        let uid_name = Name::new("_UID".into(), &uid);
        let cca = Name::new("_CCA".into(), &aml::ONE);
        let crs_name = Name::new("_CRS".into(), &crs);
        let transport = Device::new(
            slot_name(i).as_str().into(),
            vec![&hid, &uid_name, &cca, &crs_name],
        );

        let mask = 1u32 << i;
        let sltp = Path::new("\\_SB_.GED_.SLTP");
        let bit = aml::And::new(&aml::ZERO, &sltp, &mask);
        let present = NotEqual::new(&bit, &aml::ZERO);
        let yes = Return::new(&STA_PRESENT);
        let check = If::new(&present, vec![&yes]);
        let no = Return::new(&aml::ZERO);
        let sta = Method::new("_STA".into(), 0, false, vec![&check, &no]);
        let container_hid = Name::new("_HID".into(), &"ACPI0004");
        Device::new(
            container_name(i).as_str().into(),
            vec![&container_hid, &uid_name, &sta, &transport],
        )
        .to_aml_bytes(sink);
    }
}

/// AML already encoded.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// The DSDT's bytes for `machine`.
pub(super) fn dsdt_bytes(machine: &Machine) -> Vec<u8> {
    let mut sb = Vec::new();
    legacy_device(
        &mut sb,
        "COM1",
        "PNP0501",
        &[(machine.serial.port, machine.serial.len)],
        machine.serial.irq,
    );
    let kbd = machine.keyboard;
    legacy_device(
        &mut sb,
        "PS2K",
        "PNP0303",
        &[(kbd.port, 1), (kbd.port.wrapping_add(4), 1)],
        kbd.irq,
    );
    legacy_device(
        &mut sb,
        "RTC_",
        "PNP0B00",
        &[(machine.rtc.port, machine.rtc.len)],
        machine.rtc.irq,
    );
    let pwrb_hid = EISAName::new("PNP0C0C");
    Device::new(
        "PWRB".into(),
        vec![
            &Name::new("_HID".into(), &pwrb_hid),
            &Name::new("_UID".into(), &0u8),
        ],
    )
    .to_aml_bytes(&mut sb);
    ged(&mut sb, machine);
    virtio(&mut sb, machine);

    let mut body = Vec::new();
    let sb_raw = RawAml(sb);
    Scope::new("\\_SB_".into(), vec![&sb_raw]).to_aml_bytes(&mut body);
    // \_S5_: soft off is sleep type 5 (written to the sleep control register).
    let s5 = Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &aml::ZERO, &aml::ZERO]);
    Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);

    let mut t = Sdt::new(
        *b"DSDT",
        36,
        super::DSDT_REVISION,
        OEM_ID,
        *b"RXENDSDT",
        OEM_REVISION,
    );
    t.append_slice(&body);
    t.as_slice().to_vec()
}
