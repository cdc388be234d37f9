//! vCPUs online and offline through ports 0x516 (wanted mask) and 0x517 (online mask).
//!
//! These tests need /dev/kvm and fail without it.

mod harness;

use std::time::{Duration, Instant};

use harness::{Machine, LONG_WAIT};

const WANTED: u16 = 0x516;
const ONLINE: u16 = 0x517;

fn wait_for_report(machine: &Machine, mask: u32) {
    let deadline = Instant::now() + LONG_WAIT;
    while machine.port_writes(ONLINE).last() != Some(&mask) {
        assert!(
            Instant::now() < deadline,
            "0x517 writes {:?}, want {mask:#x} last",
            machine.port_writes(ONLINE)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn vcpus_follow_the_host_mask() {
    let machine = Machine::boot_with(3, 32, Vec::new(), &[(WANTED, 0b101)]);
    assert_eq!(
        machine.expect_line("rxen testguest:", LONG_WAIT),
        "rxen testguest: booted on 2 vCPUs with 32 MiB"
    );
    wait_for_report(&machine, 0b101);
    assert_eq!(
        machine.command("vcpus", "vcpus "),
        "vcpus online=2 mask=0x5"
    );
    assert_eq!(
        machine.command("burn 1 1", "burn"),
        "burn: vcpu 1 is offline"
    );
    // The default burn target is the last vCPU online.
    assert_eq!(
        machine.command("burn 0", "burning"),
        "burning vcpu 2 for 0 s"
    );
    assert_eq!(
        machine.expect_line("burn done", LONG_WAIT),
        "burn done on vcpu 2"
    );

    machine.set_port(WANTED, 0b111);
    assert_eq!(machine.expect_line("vcpu ", LONG_WAIT), "vcpu 1 online");
    wait_for_report(&machine, 0b111);
    assert_eq!(
        machine.command("vcpus", "vcpus "),
        "vcpus online=3 mask=0x7"
    );
    assert_eq!(
        machine.command("burn 0 1", "burning"),
        "burning vcpu 1 for 0 s"
    );
    assert_eq!(
        machine.expect_line("burn done", LONG_WAIT),
        "burn done on vcpu 1"
    );

    // vCPU 0 cannot go offline; asking for none leaves just it.
    machine.set_port(WANTED, 0);
    assert_eq!(machine.expect_line("vcpu ", LONG_WAIT), "vcpu 1 offline");
    assert_eq!(machine.expect_line("vcpu ", LONG_WAIT), "vcpu 2 offline");
    wait_for_report(&machine, 0b001);
    assert_eq!(
        machine.command("vcpus", "vcpus "),
        "vcpus online=1 mask=0x1"
    );
    assert_eq!(
        machine.command("burn 0", "burning"),
        "burning vcpu 0 for 0 s"
    );
}

#[test]
fn without_the_port_every_vcpu_is_online() {
    let machine = Machine::booted();
    assert_eq!(
        machine.command("vcpus", "vcpus "),
        "vcpus online=2 mask=0x3"
    );
}
