//! The test guest's balloon driver against the real `rxen_virtio::Balloon`: it inflates to the
//! host's target from the top of the free region, never touches those pages, and deflates.
//!
//! These tests need /dev/kvm and fail without it.

mod harness;

use std::time::{Duration, Instant};

use harness::{Machine, LONG_WAIT};
use rxen_virtio::{Balloon, BalloonHandle};
use vm_memory::{Bytes, GuestAddress};

fn wait_for_actual(handle: &BalloonHandle, pages: u32) {
    let deadline = Instant::now() + LONG_WAIT;
    while handle.actual_pages() != pages {
        assert!(
            Instant::now() < deadline,
            "actual stayed {} (want {pages})",
            handle.actual_pages()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether any byte of [from, to) in guest memory is not zero.
fn any_nonzero(machine: &Machine, from: u64, to: u64) -> bool {
    let mut bytes = vec![0u8; (to - from) as usize];
    machine
        .memory
        .read_slice(&mut bytes, GuestAddress(from))
        .expect("read guest memory");
    bytes.iter().any(|&b| b != 0)
}

#[test]
fn balloon_inflates_to_the_target_and_deflates() {
    let balloon = Balloon::new(0);
    let handle = balloon.handle();
    let machine = Machine::boot_with(1, 10, vec![(3, Box::new(balloon))], &[]);
    machine.expect_line("rxen testguest:", LONG_WAIT);
    assert_eq!(
        machine.command("balloon", "balloon "),
        "balloon 0 pages (0 MiB) given back"
    );

    handle.set_target_pages(512);
    wait_for_actual(&handle, 512);
    assert_eq!(handle.inflated_pages(), 512);
    assert_eq!(handle.bad_pfns(), 0);
    assert_eq!(
        machine.command("balloon", "balloon "),
        "balloon 512 pages (2 MiB) given back"
    );
    // The balloon holds the top 2 MiB: memfill stops below it, which stays zero (discarded).
    let top = machine.mem_bytes - (2 << 20);
    assert_eq!(machine.command("memfill 5", "memfill"), "memfill done");
    assert!(
        !any_nonzero(&machine, top, machine.mem_bytes),
        "the guest wrote a ballooned page"
    );
    assert!(
        any_nonzero(&machine, top - 4096, top),
        "memfill stopped early"
    );

    handle.set_target_pages(128);
    wait_for_actual(&handle, 128);
    assert_eq!(handle.inflated_pages(), 128);
    assert_eq!(
        machine.command("balloon", "balloon "),
        "balloon 128 pages (0 MiB) given back"
    );
    assert_eq!(machine.command("memfill 6", "memfill"), "memfill done");
    let top = machine.mem_bytes - (128 << 12);
    assert!(!any_nonzero(&machine, top, machine.mem_bytes));
    assert!(
        any_nonzero(&machine, top - 4096, top),
        "deflated pages not reused"
    );

    // More than the free region: the guest gives what it can and stays up.
    handle.set_target_pages(1 << 20);
    let deadline = Instant::now() + LONG_WAIT;
    while handle.actual_pages() < 512 {
        assert!(Instant::now() < deadline, "no inflation past 512 pages");
        std::thread::sleep(Duration::from_millis(20));
    }
    let line = machine.command("balloon", "balloon ");
    let pages: u64 = line
        .split(' ')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    assert!((512..1 << 20).contains(&pages), "{line}");
    handle.set_target_pages(0);
    wait_for_actual(&handle, 0);
    assert_eq!(
        machine.command("balloon", "balloon "),
        "balloon 0 pages (0 MiB) given back"
    );
}
