//! Parsing speed: `cargo bench -p xlcfg` parses a realistic config many times and prints the
//! time per parse (no external harness).

use std::time::Instant;

const CONFIG: &str = r#"
# a typical PV guest
name = "web01"
uuid = "b3a4c5d6-1234-4abc-8def-0123456789ab"
type = "pvh"
kernel = "/var/lib/xen/images/web01/vmlinuz"
ramdisk = "/var/lib/xen/images/web01/initrd.img"
extra = "console=hvc0 elevator=noop"
root = "/dev/xvda1 ro"
memory = 2048
maxmem = 4096
vcpus = 2
maxvcpus = 4
cpus = ["2", "3-8,^5"]
cpu_weight = 512
cap = 150
disk = [ 'phy:/dev/vg0/web01-root,xvda1,w',
         'file:/var/lib/xen/images/web01/swap.img,xvda2,w',
         'format=raw, vdev=xvdb, access=ro, target=/srv/shared.img' ]
vif = [ 'mac=00:16:3e:10:20:30,bridge=xenbr0,ip=192.0.2.20,rate=100Mb/s',
        'mac=00:16:3e:10:20:31,bridge=br-backup,rate=10MB/s@100ms' ]
on_poweroff = "destroy"
on_reboot = "restart"
on_crash = "rename-restart"
xen_shell = "alice bob"
"#;

fn main() {
    let n = 20_000u32;
    let start = Instant::now();
    for _ in 0..n {
        let parsed = xlcfg::parse(CONFIG, "web01.cfg", &[]);
        assert!(parsed.is_ok());
    }
    let per = start.elapsed() / n;
    println!(
        "xlcfg::parse: {per:?} per {}-byte config ({n} runs)",
        CONFIG.len()
    );
}
