//! `memfill SEED` and `memsum` over the free region (the region `dirty` rewrites).
//!
//! These tests need /dev/kvm and fail without it.

mod harness;

use harness::Machine;
use vm_memory::{Bytes, GuestAddress};

/// FNV-1a over the free region's u64 words, read from guest memory by the host.
fn host_memsum(machine: &Machine) -> u64 {
    let start = machine.kernel_end + (1 << 20);
    let mut bytes = vec![0u8; (machine.mem_bytes - start) as usize];
    machine
        .memory
        .read_slice(&mut bytes, GuestAddress(start))
        .expect("read guest memory");
    bytes
        .chunks_exact(8)
        .fold(0xCBF2_9CE4_8422_2325u64, |hash, word| {
            (hash ^ u64::from_le_bytes(word.try_into().expect("8 bytes")))
                .wrapping_mul(0x0000_0100_0000_01B3)
        })
}

/// A small guest: hashing is slow under this project's PVM, so the free region is kept to about 1 MiB.
fn small() -> Machine {
    let machine = Machine::boot(1, 8);
    assert_eq!(
        machine.expect_line("rxen testguest:", harness::LONG_WAIT),
        "rxen testguest: booted on 1 vCPUs with 8 MiB"
    );
    machine
}

fn memsum(machine: &Machine) -> String {
    machine.command("memsum", "memsum ")
}

#[test]
fn memfill_then_memsum_is_stable_and_matches_the_memory() {
    let machine = small();
    assert_eq!(machine.command("memfill 1", "memfill"), "memfill done");
    let first = memsum(&machine);
    let second = memsum(&machine);
    assert_eq!(first, second, "memsum changed without any writes");
    assert_eq!(first, format!("memsum {:#018x}", host_memsum(&machine)));

    // The guest wrote what it says at a word the host picks.
    let start = machine.kernel_end + (1 << 20);
    let addr = start + 4096 * 10 + 8;
    let word: u64 = machine.memory.read_obj(GuestAddress(addr)).expect("read");
    assert_eq!(
        word,
        1u64.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ addr.wrapping_mul(0xBF58_476D_1CE4_E5B9)
    );

    assert_eq!(machine.command("memfill 2", "memfill"), "memfill done");
    let third = memsum(&machine);
    assert_ne!(first, third, "another seed gave the same memsum");
    assert_eq!(third, format!("memsum {:#018x}", host_memsum(&machine)));
}

#[test]
fn memsum_sees_a_host_write() {
    let machine = small();
    assert_eq!(machine.command("memfill 9", "memfill"), "memfill done");
    let before = memsum(&machine);
    machine.poke(machine.kernel_end + (1 << 20) + 4096, &[0x5A]);
    let after = memsum(&machine);
    assert_ne!(before, after);
    assert_eq!(after, format!("memsum {:#018x}", host_memsum(&machine)));
}
