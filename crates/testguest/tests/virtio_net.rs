//! The test guest's virtio-net driver and IPv4 stack against the real `rxen_virtio::Net` device
//! over a real TAP, with the host kernel on the other side: ARP, UDP echo, ping, udpsend, spoof.
//!
//! These tests need /dev/kvm and root (TAP devices) and fail without them.

mod harness;

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use harness::Machine;
use rxen_virtio::net::RX_QUEUE;
use rxen_virtio::{Net, NetConfig, Tap};

/// A guest with one NIC on TAP `tgN<pid>`, the host at 10.231.N.1/24 on the TAP.
fn guest_on_tap(n: u8) -> Machine {
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
    machine
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
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let line = machine.command(&format!("udpsend {} 9999 1", host(n)), "udpsend ");
    assert!(
        line.starts_with("udpsend done 1048576 bytes in "),
        "bad line {line:?}"
    );
    // The host kernel drops datagrams with a bad UDP or IP checksum, so every one that
    // arrives proves both; the payload byte at stream offset k is k mod 256.
    let mut buf = [0u8; 2048];
    let mut received = 0;
    while let Ok((len, from)) = socket.recv_from(&mut buf) {
        assert_eq!(from.port(), 40000);
        assert!(len <= 1400);
        let first = buf[0];
        for (k, &byte) in buf[..len].iter().enumerate() {
            assert_eq!(byte, first.wrapping_add(k as u8), "payload pattern broken");
        }
        received += len;
    }
    assert!(received > 0, "no datagram arrived");
    assert!(received <= 1 << 20);
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
