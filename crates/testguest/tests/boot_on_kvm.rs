//! Boots the embedded test guest on KVM with a minimal harness (not the VMM)
//! and checks the console language of docs/internals.md.
//!
//! These tests need /dev/kvm and fail without it.

mod harness;

use std::time::{Duration, Instant};

use harness::{elf, heartbeat, Event, Machine, LONG_WAIT};
use vm_memory::{Bytes, GuestAddress};

/// Asks for the heartbeat until it reaches `at_least` (the guest's running time, not the
/// host's, decides how long that takes); returns the count seen.
fn heartbeat_reaching(machine: &Machine, at_least: u64) -> u64 {
    let deadline = Instant::now() + LONG_WAIT;
    loop {
        let count = heartbeat(machine);
        if count >= at_least {
            return count;
        }
        assert!(
            Instant::now() < deadline,
            "the heartbeat stayed at {count} (waiting for {at_least}) for {LONG_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The most the heartbeat can grow while the guest ran for at most `running` of host time:
/// one count per whole 100 ms, plus one for where the two reads fall between counts and one
/// for a tick that was due when the time started.
fn most_heartbeats_in(running: Duration) -> u64 {
    (running.as_millis() / 100) as u64 + 2
}

#[test]
fn boots_with_banner_and_heartbeat_grows() {
    let machine = Machine::booted();
    // Taken before the first question: the guest's first reading is after it.
    let started = Instant::now();
    let first = heartbeat(&machine);
    let second = heartbeat_reaching(&machine, first + 5);
    let elapsed = started.elapsed();
    eprintln!("heartbeat {first} then {second} in {elapsed:?}");
    assert!(
        second - first <= most_heartbeats_in(elapsed),
        "heartbeat ran ahead of real time: {first} then {second} in {elapsed:?}"
    );
}

#[test]
fn shutdown_powers_off() {
    let machine = Machine::booted();
    assert_eq!(machine.command("shutdown", "powering off"), "powering off");
    assert_eq!(machine.expect_end(LONG_WAIT), Event::Power(0));
}

#[test]
fn reboot_writes_power_port_1() {
    let machine = Machine::booted();
    assert_eq!(machine.command("reboot", "rebooting"), "rebooting");
    assert_eq!(machine.expect_end(LONG_WAIT), Event::Power(1));
}

#[test]
fn crash_signals_pvpanic() {
    let machine = Machine::booted();
    assert_eq!(machine.command("crash", "crashing"), "crashing");
    assert_eq!(machine.expect_end(LONG_WAIT), Event::Panic(1));
}

#[test]
fn host_shutdown_request_is_obeyed() {
    let machine = Machine::booted();
    machine.set_host_request(1);
    machine.expect_line("shutdown requested by host", LONG_WAIT);
    assert_eq!(
        machine.expect_line("powering off", LONG_WAIT),
        "powering off"
    );
    assert_eq!(machine.expect_end(LONG_WAIT), Event::Power(0));
}

#[test]
fn host_reboot_request_is_obeyed() {
    let machine = Machine::booted();
    machine.set_host_request(2);
    machine.expect_line("reboot requested by host", LONG_WAIT);
    assert_eq!(machine.expect_line("rebooting", LONG_WAIT), "rebooting");
    assert_eq!(machine.expect_end(LONG_WAIT), Event::Power(1));
}

#[test]
fn echo_backspace_unknown_and_help() {
    let machine = Machine::booted();
    // "hx" + backspace + "elo" is echoed as typed and runs "helo".
    machine.send("hx\x7felo\r\n");
    assert_eq!(
        machine.expect_line("unknown command:", LONG_WAIT),
        "unknown command: helo"
    );
    assert!(
        machine.console().contains("hx\x08 \x08elo\n"),
        "echo missing: {:?}",
        machine.console()
    );
    assert_eq!(
        machine.command("frobnicate now", "unknown command:"),
        "unknown command: frobnicate"
    );
    machine.send("help\n");
    for command in [
        "heartbeat",
        "shutdown",
        "reboot",
        "crash",
        "burn S [V]",
        "dirty R",
        "help",
    ] {
        machine.expect_line(&format!("  {command}"), LONG_WAIT);
    }
}

#[test]
fn burn_runs_on_the_requested_vcpu() {
    let machine = Machine::booted();
    // Taken before the command is sent: the burn cannot start earlier.
    let started = Instant::now();
    assert_eq!(
        machine.command("burn 1", "burning"),
        "burning vcpu 1 for 1 s"
    );
    assert_eq!(
        machine.expect_line("burn done", LONG_WAIT),
        "burn done on vcpu 1"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "a 1 s burn ended after {:?}",
        started.elapsed()
    );
    // vCPU 0 keeps serving the console while vCPU 1 burns, and can burn itself.
    assert_eq!(
        machine.command("burn 0 0", "burning"),
        "burning vcpu 0 for 0 s"
    );
    assert_eq!(
        machine.expect_line("burn done", LONG_WAIT),
        "burn done on vcpu 0"
    );
}

/// The first u64 of every page of the free region (what `dirty R` rewrites), in order.
fn free_page_words(machine: &Machine) -> Vec<u64> {
    let first_free = machine.kernel_end + (1 << 20);
    (first_free..machine.mem_bytes)
        .step_by(4096)
        .map(|addr| {
            machine
                .memory
                .read_obj::<u64>(GuestAddress(addr))
                .expect("read guest memory")
        })
        .collect()
}

/// Lets the dirtying vCPU (vCPU 1, the last) finish what it is doing and go through the
/// work of a tick: `burn 0` runs there between ticks and answers when it is done.
fn dirtying_vcpu_ticks(machine: &Machine) {
    assert_eq!(
        machine.command("burn 0", "burning"),
        "burning vcpu 1 for 0 s"
    );
    assert_eq!(
        machine.expect_line("burn done", LONG_WAIT),
        "burn done on vcpu 1"
    );
}

#[test]
fn dirty_rewrites_free_memory_at_the_requested_rate() {
    let machine = Machine::booted();
    let pages = free_page_words(&machine);
    assert!(
        pages.iter().all(|&word| word == 0),
        "free memory is dirty before `dirty`"
    );
    // 1 MiB/s is 256 pages a second, 2.56 per 10 ms tick: the guest carries the fraction.
    const PAGES_PER_SECOND: f64 = 256.0;
    let started = Instant::now();
    assert_eq!(machine.command("dirty 1", "dirtying"), "dirtying 1 MiB/s");
    // However slowly the guest runs: wait for a quarter of a second of its work.
    let deadline = Instant::now() + LONG_WAIT;
    while free_page_words(&machine)
        .iter()
        .filter(|&&w| w != 0)
        .count()
        < 64
    {
        assert!(Instant::now() < deadline, "`dirty 1` wrote no 64 pages");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(machine.command("dirty 0", "dirty stopped"), "dirty stopped");
    let window = started.elapsed();
    // A page the dirtier was writing when `dirty 0` came lands before this answers.
    dirtying_vcpu_ticks(&machine);
    let written = free_page_words(&machine);
    // The guest's own count: it writes 1, 2, 3, ... into consecutive pages from the start of
    // the free region, so the largest value is the number of pages it wrote, and the host
    // must see exactly those pages, each with its number, and nothing else.
    let count = written.iter().copied().max().unwrap_or(0);
    assert!(
        count < written.len() as u64,
        "{count} pages written: the dirtier went round the {} free pages",
        written.len()
    );
    for (index, &word) in written.iter().enumerate() {
        let expected = if (index as u64) < count {
            index as u64 + 1
        } else {
            0
        };
        assert_eq!(
            word, expected,
            "page {index} of the free region after the guest wrote {count} pages"
        );
    }
    // No more than the rate allows in the time between the two commands (the guest's clock
    // cannot run ahead of the host's): 256 pages a second, plus a tick's worth and the page
    // under way when it stopped.
    let most = (PAGES_PER_SECOND * window.as_secs_f64()) as u64 + 3 + 1;
    eprintln!("{count} pages dirtied in {window:?} at 1 MiB/s (at most {most})");
    assert!(
        (64..=most).contains(&count),
        "{count} pages dirtied in {window:?} at 1 MiB/s: at most {most}"
    );
    // Stopped: a whole further tick of the dirtying vCPU writes nothing.
    dirtying_vcpu_ticks(&machine);
    assert!(
        free_page_words(&machine) == written,
        "pages still being dirtied after `dirty 0`"
    );
}

#[test]
fn boots_on_one_vcpu_and_burns_there() {
    let machine = Machine::boot(1, 32);
    assert_eq!(
        machine.expect_line("rxen testguest:", LONG_WAIT),
        "rxen testguest: booted on 1 vCPUs with 32 MiB"
    );
    let before = heartbeat(&machine);
    assert_eq!(
        machine.command("burn 1", "burning"),
        "burning vcpu 0 for 1 s"
    );
    assert_eq!(
        machine.expect_line("burn done", LONG_WAIT),
        "burn done on vcpu 0"
    );
    let after = heartbeat(&machine);
    // It keeps counting while vCPU 0 burns (less than 10 when the host is
    // busy: time the vCPU thread does not run is not running time).
    assert!(
        after > before,
        "the heartbeat stopped during the burn: {before} then {after}"
    );
}

#[test]
fn idle_guest_costs_little_cpu() {
    let machine = Machine::booted();
    let cpu_before = machine.vcpu_cpu_time();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = machine.vcpu_cpu_time() - cpu_before;
    let wall = started.elapsed() * 2; // two vCPUs
    eprintln!("idle vCPUs used {used:?} of CPU in {wall:?} of vCPU time");
    assert!(
        used * 4 < wall,
        "idle vCPUs used {used:?} of CPU in {wall:?} of vCPU time"
    );
}

#[test]
fn boots_on_four_vcpus_and_burns_the_last_by_default() {
    let machine = Machine::boot(4, 48);
    assert_eq!(
        machine.expect_line("rxen testguest:", LONG_WAIT),
        "rxen testguest: booted on 4 vCPUs with 48 MiB"
    );
    assert_eq!(
        machine.command("burn 0", "burning"),
        "burning vcpu 3 for 0 s"
    );
    assert_eq!(
        machine.expect_line("burn done", LONG_WAIT),
        "burn done on vcpu 3"
    );
    assert_eq!(
        machine.command("burn 1 2", "burning"),
        "burning vcpu 2 for 1 s"
    );
    assert_eq!(
        machine.expect_line("burn done", LONG_WAIT),
        "burn done on vcpu 2"
    );
    assert!(machine
        .command("burn 1 4", "usage")
        .starts_with("usage: burn S [V]"));
    assert!(machine
        .command("burn x", "usage")
        .starts_with("usage: burn S [V]"));
}

#[test]
fn exception_is_reported_with_vector_and_rip_then_pvpanic() {
    let machine = Machine::booted();
    let isr = elf::symbol(rxen_testguest::image(), "rxen_timer_isr")
        .expect("symbol table parses")
        .expect("the image keeps its symbols");
    // Turn the timer handler into `ud2`: the next tick raises #UD (vector 6) there.
    machine.poke(isr, &[0x0F, 0x0B]);
    let line = machine.expect_line("exception", LONG_WAIT);
    assert_eq!(line, format!("exception 6 at {isr:#x}"));
    assert_eq!(machine.expect_end(LONG_WAIT), Event::Panic(1));
}

#[test]
fn heartbeat_does_not_catch_up_after_a_pause() {
    let machine = Machine::booted();
    let started = Instant::now();
    let before = heartbeat(&machine);
    machine.pause();
    let paused = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let resumed = Instant::now();
    machine.resume();
    // 1.5 s of running time after the pause, or at once if the guest made up the 2 s it
    // was paused for (it would do so a tick at a time, so look well after the pause).
    let after = heartbeat_reaching(&machine, before + 15);
    // The guest ran only outside the pause: however long that took on a busy host, the
    // heartbeat may count that time and no more.
    let running = (paused - started) + resumed.elapsed();
    eprintln!(
        "heartbeat {before} then {after}: {running:?} running, {:?} paused",
        resumed - paused
    );
    assert!(
        after - before <= most_heartbeats_in(running),
        "the heartbeat caught up after a pause: {before} then {after} in {running:?} of running time"
    );
}
