//! The test guest's virtio-net driver and IPv4 stack against the real `rxen_virtio::Net` device
//! over a real TAP, with the host kernel on the other side: ARP, UDP echo, ping, udpsend, spoof.
//!
//! These tests need /dev/kvm and root (TAP devices) and fail without them.

mod harness;

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use harness::Machine;
use rxen_virtio::net::{NetStats, RX_QUEUE};
use rxen_virtio::{Net, NetConfig, Tap};

/// A guest with one NIC on TAP `tgN<pid>`, the host at 10.231.N.1/24 on the TAP.
fn guest_on_tap(n: u8) -> Machine {
    guest_on_tap_with_stats(n).0
}

/// Like `guest_on_tap`, also returning the device's counters.
fn guest_on_tap_with_stats(n: u8) -> (Machine, Arc<NetStats>) {
    let name = format!("tg{n}x{}", std::process::id() % 100_000);
    let tap = Tap::open(&name).expect("open TAP (needs root)");
    for args in [
        vec!["addr", "add", &format!("10.231.{n}.1/24"), "dev", &name],
        vec!["link", "set", &name, "up"],
    ] {
        let status = Command::new("ip").args(&args).status().expect("run ip");
        assert!(status.success(), "ip {args:?} failed");
    }
    let net = Net::new(
        Box::new(tap),
        NetConfig {
            mac: [0x52, 0x54, 0x00, 0xAB, 0xCD, n],
            rate: None,
            allowed_ips: Vec::new(),
        },
    )
    .expect("net device");
    let stats = net.stats();
    let machine = Machine::boot_with(1, 16, vec![(0, Box::new(net))], &[]);
    machine.pump(0, RX_QUEUE);
    assert_eq!(
        machine.expect_line("rxen testguest:", harness::LONG_WAIT),
        "rxen testguest: booted on 1 vCPUs with 16 MiB"
    );
    assert_eq!(
        machine.command("nics", "nic"),
        format!("nic 0 52:54:00:ab:cd:{n:02x}")
    );
    assert_eq!(
        machine.command(&format!("ip 10.231.{n}.2/24"), "ip "),
        format!("ip 10.231.{n}.2/24 on nic 0")
    );
    (machine, stats)
}

fn host(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 231, n, 1)
}

#[test]
fn guest_echoes_udp_on_port_7_after_answering_arp() {
    let n = 1;
    let _machine = guest_on_tap(n);
    let socket = UdpSocket::bind((host(n), 0)).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    let mut echoed = None;
    // The first datagram may be lost while the host resolves the guest's MAC.
    for attempt in 0..5 {
        let message = format!("hello rxen {attempt}");
        socket
            .send_to(message.as_bytes(), (Ipv4Addr::new(10, 231, n, 2), 7))
            .expect("send");
        if let Ok((len, from)) = socket.recv_from(&mut buf) {
            assert_eq!(from.port(), 7);
            echoed = Some((message, buf[..len].to_vec()));
            break;
        }
    }
    let (sent, back) = echoed.expect("no UDP echo from the guest");
    assert_eq!(back, sent.as_bytes());
}

#[test]
fn guest_pings_the_host() {
    let n = 2;
    let machine = guest_on_tap(n);
    assert_eq!(
        machine.command(&format!("ping {} 3", host(n)), "ping "),
        format!("ping {}: 3/3 replies", host(n))
    );
    // Nobody answers at .99: no replies, and the guest goes on.
    assert_eq!(
        machine.command(&format!("ping 10.231.{n}.99 1"), "ping "),
        format!("ping 10.231.{n}.99: 0/1 replies")
    );
}

#[test]
fn udpsend_delivers_datagrams_with_correct_checksums() {
    let n = 3;
    let machine = guest_on_tap(n);
    let socket = UdpSocket::bind((host(n), 9999)).expect("bind");
    // Room for the whole MiB (749 datagrams), read only once the guest is done: the socket
    // drops nothing, so a datagram missing is one the host kernel refused.
    force_receive_buffer(&socket, 8 << 20);
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    // A whole MiB takes a while under this project's PVM (the guest's loops run slowly there).
    let command = format!("udpsend {} 9999 1", host(n));
    machine.send(&format!("{command}\n"));
    assert_eq!(machine.expect_line(&command, harness::LONG_WAIT), command);
    let line = machine.expect_line("udpsend ", Duration::from_secs(180));
    assert!(
        line.starts_with("udpsend done 1048576 bytes in "),
        "bad line {line:?}"
    );
    // The host kernel drops datagrams with a bad UDP or IP checksum, so the whole stream
    // arriving proves every checksum; the payload byte at stream offset k is k mod 256.
    let mut buf = [0u8; 2048];
    let (mut datagrams, mut received) = (0u64, 0usize);
    while let Ok((len, from)) = socket.recv_from(&mut buf) {
        assert_eq!(from.port(), 40000);
        check_udpsend_payload(&buf[..len]);
        datagrams += 1;
        received += len;
    }
    assert_eq!(
        (datagrams, received),
        ((1u64 << 20).div_ceil(1400), 1 << 20),
        "datagrams and bytes of a 1 MiB udpsend that reached the host"
    );
}

#[test]
fn spoof_sends_and_bad_arguments_are_refused() {
    let n = 4;
    let machine = guest_on_tap(n);
    assert_eq!(
        machine.command(&format!("spoof 10.231.{n}.77 {}", host(n)), "spoof"),
        "spoof sent"
    );
    assert_eq!(
        machine.command("ip 10.1.2.3", "usage"),
        "usage: ip ADDR/PREFIX [SLOT]"
    );
    assert_eq!(
        machine.command("ip 10.1.2.3/24 5", "ip:"),
        "ip: no such nic"
    );
}

/// Every datagram of the `udpsend` stream: the payload byte at stream offset k is k mod 256,
/// and datagrams carry 1400 bytes (the last one possibly fewer).
fn check_udpsend_payload(payload: &[u8]) {
    assert!(!payload.is_empty() && payload.len() <= 1400, "bad length");
    let first = payload[0];
    for (k, &byte) in payload.iter().enumerate() {
        assert_eq!(byte, first.wrapping_add(k as u8), "payload pattern broken");
    }
}

#[test]
fn udpsend_of_4_mib_finishes_and_the_host_gets_every_datagram() {
    let n = 5;
    let (machine, stats) = guest_on_tap_with_stats(n);
    let socket = UdpSocket::bind((host(n), 9998)).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    // A large receive buffer, so that the host's own socket does not drop what the device
    // delivered while this thread is busy (drops there would not be the guest's fault).
    force_receive_buffer(&socket, 32 << 20);
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (mut datagrams, mut bytes, mut quiet) = (0u64, 0u64, 0u32);
        // Until nothing arrived for 20 s (the guest is slow under PVM, but never that slow).
        while quiet < 40 {
            match socket.recv_from(&mut buf) {
                Ok((len, from)) => {
                    assert_eq!(from.port(), 40000);
                    check_udpsend_payload(&buf[..len]);
                    datagrams += 1;
                    bytes += len as u64;
                    quiet = 0;
                    if bytes == 4 << 20 {
                        break;
                    }
                }
                Err(_) => quiet += 1,
            }
        }
        (datagrams, bytes)
    });
    let before = stats.snapshot();
    let command = format!("udpsend {} 9998 4", host(n));
    machine.send(&format!("{command}\n"));
    assert_eq!(machine.expect_line(&command, harness::LONG_WAIT), command);
    let line = machine.expect_line("udpsend ", Duration::from_secs(600));
    assert!(
        line.starts_with("udpsend done 4194304 bytes in "),
        "bad line {line:?}"
    );
    let (datagrams, bytes) = receiver.join().expect("receiver thread");
    let after = stats.snapshot();
    let expected = (4u64 << 20).div_ceil(1400);
    // The device dropped nothing: a TAP takes every frame (the host stack behind it delivers
    // it at once), and the guest's chains are well formed.
    assert_eq!(
        (after.tx_drops, after.tx_spoof_drops),
        (before.tx_drops, before.tx_spoof_drops),
        "the device dropped frames"
    );
    // Every datagram went through the device (with the odd ARP frame) ...
    let frames = after.tx_packets - before.tx_packets;
    assert!(
        frames >= expected,
        "device sent {frames} frames for {expected} datagrams"
    );
    // ... and reached the host's socket, which has room for all of them.
    assert_eq!(
        (datagrams, bytes),
        (expected, 4 << 20),
        "datagrams and bytes the host got of {expected} sent"
    );
}

/// Counts `udpsend` datagrams on `socket` until none came for 2 s; checks each payload.
fn count_datagrams(socket: &UdpSocket) -> u64 {
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    let mut datagrams = 0;
    while let Ok((len, from)) = socket.recv_from(&mut buf) {
        assert_eq!(from.port(), 40000);
        check_udpsend_payload(&buf[..len]);
        datagrams += 1;
    }
    datagrams
}

#[test]
fn a_second_udpsend_goes_to_its_own_port() {
    // The guest reuses what its transmit buffers hold between datagrams; a new run (here to
    // another port) must not send the previous run's headers.
    let n = 6;
    let (machine, stats) = guest_on_tap_with_stats(n);
    let sockets = [9101, 9102].map(|port| {
        let socket = UdpSocket::bind((host(n), port)).expect("bind");
        force_receive_buffer(&socket, 8 << 20);
        (port, socket)
    });
    let expected = (1u64 << 20).div_ceil(1400);
    for (port, socket) in &sockets {
        let before = stats.snapshot().tx_drops;
        let command = format!("udpsend {} {port} 1", host(n));
        machine.send(&format!("{command}\n"));
        assert_eq!(machine.expect_line(&command, harness::LONG_WAIT), command);
        let line = machine.expect_line("udpsend ", Duration::from_secs(300));
        assert!(
            line.starts_with("udpsend done 1048576 bytes in "),
            "bad line {line:?}"
        );
        let dropped = stats.snapshot().tx_drops - before;
        let got = count_datagrams(socket);
        assert_eq!(
            (got, dropped),
            (expected, 0),
            "port {port}: datagrams that arrived and frames the device dropped of {expected} sent"
        );
    }
}

/// Sets `socket`'s receive buffer to `bytes` (SO_RCVBUFFORCE: root may exceed rmem_max).
fn force_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(socket);
    // SAFETY: setsockopt reads `bytes` (a c_int) for the length given; the fd is the socket's.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `got` (a c_int) and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::addr_of_mut!(got).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
    // The kernel doubles what it is given (for its bookkeeping) and reports that.
    assert!(
        got >= bytes,
        "receive buffer of {got} bytes, {bytes} asked for"
    );
}
