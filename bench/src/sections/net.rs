//! Network: guest-to-host UDP throughput through virtio-net, a TAP and a bridge, under rxen
//! and under QEMU.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Ctx;
use crate::console::Console;
use crate::error::{BenchError, Result};
use crate::qemu::{nic_args, Qemu, QemuSpec};
use crate::report::{Better, Cell, Row, SectionReport};

/// The guest's MAC under QEMU (rxen picks its own).
const QEMU_MAC: &str = "52:54:00:72:78:01";

const HOST_ADDR: &str = "10.213.77.1";
const GUEST_ADDR: &str = "10.213.77.2";
const PORT: u16 = 47_777;

/// Sends UDP from an rxen and a QEMU guest to a receiver on the host and counts what arrives.
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let mib: u64 = if ctx.quick { 8 } else { 32 };
    let guest = format!("128 MiB, 1 vCPU; {mib} MiB of 1400-byte UDP datagrams");
    let mut tput = Row::new(
        "network: guest-to-host UDP, received",
        &guest,
        "MiB/s",
        1,
        Better::Higher,
    );
    let mut delivered = Row::new(
        "network: datagrams delivered",
        &guest,
        "%",
        1,
        Better::Higher,
    );
    let rxen_pending = match ctx.host() {
        Ok(h) if !h.rxl_has("network-attach") => {
            Some("rxen networks (issue 4) have not landed".to_string())
        }
        _ => None,
    };
    let blocked = [
        (Monitor::Rxen, ctx.rxen_blocked(rxen_pending.as_deref())),
        (Monitor::Qemu, ctx.qemu_unavailable.clone()),
    ];
    for (monitor, why) in blocked {
        let (t, d) = match monitor {
            Monitor::Rxen => (&mut tput.rxen, &mut delivered.rxen),
            Monitor::Qemu => (&mut tput.qemu, &mut delivered.qemu),
        };
        match why {
            Some(why) => {
                *t = Cell::Pending(why.clone());
                *d = Cell::Pending(why);
            }
            None => {
                if let Err(e) = measure(ctx, monitor, mib, t, d) {
                    t.push::<String>(Err(e.to_string()));
                    d.push::<String>(Err(e.to_string()));
                }
            }
        }
    }
    SectionReport {
        title: "network".into(),
        versus: None,
        rows: vec![tput, delivered],
        method: vec![format!(
            "an rxen guest with `vif = ['bridge=BR,vifname=TAP']`, and a QEMU guest with \
             `-global virtio-mmio.force-legacy=false -netdev tap,id=net0,ifname=TAP,script=no,\
             downscript=no -device virtio-net-device,netdev=net0` on a TAP the bench creates and \
             enslaves (the test guest finds it on microvm's virtio-mmio transports and polls it), \
             each on a fresh Linux bridge holding {HOST_ADDR}/24, run `udpsend {HOST_ADDR} {PORT} {mib}` (1400-byte datagrams through \
             virtio-net and a TAP, as fast as the guest can send); a UDP socket on the host \
             (8 MiB receive buffer) counts the payload bytes that arrive. Throughput is those \
             bytes over the guest's own send time; delivered is received over sent."
        )],
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| BenchError::Spawn {
            program: "ip".into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Command {
            command: format!("ip {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A bridge with the host's address, removed on drop.
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

/// Which monitor a network measurement runs under.
#[derive(Clone, Copy)]
enum Monitor {
    Rxen,
    Qemu,
}

/// A TAP the bench made (for QEMU, which does not make its own with `script=no`), removed on drop.
struct OwnTap(String);

impl OwnTap {
    /// Creates TAP `name` in `bridge`, up.
    fn new(name: &str, bridge: &str) -> Result<OwnTap> {
        ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        let tap = OwnTap(name.to_string());
        ip(&["link", "set", name, "master", bridge])?;
        ip(&["link", "set", name, "up"])?;
        Ok(tap)
    }
}

impl Drop for OwnTap {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

fn measure(
    ctx: &mut Ctx,
    monitor: Monitor,
    mib: u64,
    tput: &mut Cell,
    delivered: &mut Cell,
) -> Result<()> {
    let br = Bridge(format!("rxbb{}", std::process::id() % 100_000));
    ip(&["link", "add", &br.0, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{HOST_ADDR}/24"), "dev", &br.0])?;
    ip(&["link", "set", &br.0, "up"])?;
    let sock = UdpSocket::bind((HOST_ADDR, PORT))
        .map_err(|e| BenchError::io("bind the UDP receiver", e))?;
    let size: libc::c_int = 8 << 20;
    // SAFETY: setsockopt reads `size` for the given length.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| BenchError::io("UDP timeout", e))?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let name = ctx.name("net");
    let tap = format!("rxbv{}", std::process::id() % 100_000);
    let r = match monitor {
        Monitor::Rxen => {
            let host = ctx.host()?;
            let r = host
                .boot(
                    &name,
                    128,
                    1,
                    &format!("vif = [ 'bridge={},vifname={tap}' ]", br.0),
                )
                .and_then(|mut d| {
                    drive(
                        &mut d.console,
                        ctx.runs,
                        ctx.quick,
                        mib,
                        &received,
                        tput,
                        delivered,
                    )
                });
            host.destroy(&name);
            r
        }
        Monitor::Qemu => OwnTap::new(&tap, &br.0).and_then(|_tap| {
            let spec = QemuSpec {
                memory_mib: 128,
                vcpus: 1,
                incoming: None,
            };
            let args = nic_args(&tap, QEMU_MAC);
            let mut q = Qemu::boot_with(&ctx.qemu, &spec, &args, ctx.path(), &name)?;
            let r = drive(
                &mut q.console,
                ctx.runs,
                ctx.quick,
                mib,
                &received,
                tput,
                delivered,
            );
            q.explain(r)
        }),
    };
    stop.store(true, Ordering::Relaxed);
    let _ = counter.join();
    r
}

/// Sets the guest's address, then runs `udpsend` `runs` times, counting what the receiver got.
fn drive(
    console: &mut Console,
    runs: usize,
    quick: bool,
    mib: u64,
    received: &AtomicU64,
    tput: &mut Cell,
    delivered: &mut Cell,
) -> Result<()> {
    console.send(&format!("ip {GUEST_ADDR}/24"))?;
    console.wait_contains(
        &format!("ip {GUEST_ADDR}/24 on nic"),
        Duration::from_secs(10),
    )?;
    for _ in 0..runs {
        let before = received.load(Ordering::Relaxed);
        console.send(&format!("udpsend {HOST_ADDR} {PORT} {mib}"))?;
        // Wait as long as datagrams keep arriving: on a loaded host the guest may need far
        // longer than one wait, and only a guest that stopped sending is a failure.
        let line = loop {
            let seen = received.load(Ordering::Relaxed);
            match console.wait_for(
                "udpsend's answer (the guest stopped sending)",
                Duration::from_secs(if quick { 20 } else { 40 }),
                |l| l.starts_with("udpsend done") || l.starts_with("udpsend error"),
            ) {
                Ok(line) => break line,
                Err(BenchError::Timeout { .. }) if received.load(Ordering::Relaxed) > seen => {}
                Err(e) => return Err(e),
            }
        };
        std::thread::sleep(Duration::from_millis(300));
        let got = received.load(Ordering::Relaxed) - before;
        // `udpsend done BYTES bytes in MS ms`
        let f: Vec<&str> = line.split_whitespace().collect();
        let (sent, ms) = match (
            f.get(2).and_then(|x| x.parse::<f64>().ok()),
            f.get(5).and_then(|x| x.parse::<f64>().ok()),
        ) {
            (Some(b), Some(ms)) if f.get(1) == Some(&"done") => (b, ms),
            _ => {
                let e = format!("guest answered {line:?}");
                tput.push::<String>(Err(e.clone()));
                delivered.push::<String>(Err(e));
                continue;
            }
        };
        tput.push::<String>(Ok(got as f64
            / (1u64 << 20) as f64
            / (ms.max(1.0) / 1000.0)));
        delivered.push::<String>(Ok(100.0 * got as f64 / sent.max(1.0)));
    }
    Ok(())
}
