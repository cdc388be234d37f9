#!/usr/bin/env bash
# Fetches a stock Debian Linux kernel and builds a small busybox initramfs for it, so that
# examples/debian.cfg boots a real Linux domain:
#
#   scripts/debian-guest.sh            # once: downloads and builds into $DEST
#   rxl create -c examples/debian.cfg  # boots it; Ctrl-] detaches, `poweroff` ends it
#
# The kernel is Debian's current cloud kernel (the package linux-image-cloud-amd64 depends
# on; KERNEL_META=linux-image-amd64 for the generic flavour), with the modules rxen's devices
# need (virtio-mmio disks, NICs and balloon, the ACPI power button). The initramfs mounts the
# usual filesystems, loads those modules, gives the first NIC the address named by
# `rxen.ip=ADDR/PREFIX` on the kernel command line (if any), powers off on the ACPI power
# button (`rxl shutdown`), and runs a shell on the console (ttyS0).
#
# Needs root, apt-get (Debian or Ubuntu), dpkg-deb and cpio. A host with hardware
# virtualization (VT-x or AMD-V) runs the domain directly; see docs/linux-guests.md.
set -euo pipefail

DEST=${DEST:-/var/lib/rxen/images/debian}
KERNEL_META=${KERNEL_META:-linux-image-cloud-amd64}
MODULES="virtio virtio_ring virtio_mmio virtio_blk failover net_failover virtio_net virtio_balloon button evdev"

say() { echo "debian-guest: $*" >&2; }
need() { command -v "$1" >/dev/null 2>&1; }

if [ "$(id -u)" != 0 ]; then
    say "run as root (apt-get, and the images go to $DEST)"
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
missing=()
need cpio || missing+=(cpio)
need dpkg-deb || missing+=(dpkg)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# The metapackage names the current versioned kernel package: never pin an ABI number.
pick() { apt-cache depends "$1" 2>/dev/null | sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n 1; }
kpkg=$(pick "$KERNEL_META")
if [ -z "$kpkg" ]; then
    apt-get update -qq
    kpkg=$(pick "$KERNEL_META")
fi
[ -n "$kpkg" ] || { say "apt cannot resolve $KERNEL_META"; exit 1; }
say "fetching $kpkg and busybox-static"
apt-get -o APT::Sandbox::User=root download -q "$kpkg" busybox-static >/dev/null
dpkg-deb -x linux-image-*.deb kernel
dpkg-deb -x busybox-static_*.deb bb
release=$(basename "$(ls -d kernel/lib/modules/*/ | head -n 1)")
mods=kernel/lib/modules/$release

root=$work/root
mkdir -p "$root"/{bin,dev,etc/acpi/PWRF,proc,sys,tmp,run,root,lib/modules}
cp bb/bin/busybox "$root/bin/busybox"
# Copy each module the kernel has as a module (built-in ones need nothing), in load order.
: >"$root/lib/modules/load-order"
for m in $MODULES; do
    f=$(find "$mods/kernel" -name "$m.ko*" | head -n 1)
    [ -n "$f" ] || continue
    case $f in
        *.ko.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
        *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$root/lib/modules/load-order"
done
printf '#!/bin/sh\necho "power button pressed: powering off"\npoweroff -f\n' >"$root/etc/acpi/PWRF/00000080"
chmod +x "$root/etc/acpi/PWRF/00000080"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m.ko 2>/dev/null; done
mdev -s 2>/dev/null
acpid -f -c /etc/acpi -l /tmp/acpid.log &
ip link set lo up
for w in $(cat /proc/cmdline); do
    case $w in rxen.ip=*)
        ip link set eth0 up && ip addr add "${w#rxen.ip=}" dev eth0 ;;
    esac
done
echo "rxen debian guest: $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPUs, disks: $(ls /sys/block | tr '\n' ' ')"
hwclock -s 2>/dev/null
while true; do setsid cttyhack sh -l; done
INIT
chmod +x "$root/init"

mkdir -p "$DEST"
cp "kernel/boot/vmlinuz-$release" "$DEST/vmlinuz.new"
(cd "$root" && find . | cpio -o -H newc 2>/dev/null | gzip -9) >"$DEST/initrd.img.new"
mv "$DEST/vmlinuz.new" "$DEST/vmlinuz"
mv "$DEST/initrd.img.new" "$DEST/initrd.img"
if [ ! -e "$DEST/data.img" ]; then
    truncate -s 64M "$DEST/data.img"
fi
say "ready: $DEST/vmlinuz ($release), $DEST/initrd.img, $DEST/data.img (64 MiB, the domain's xvda)"
say "boot it with: rxl create -c examples/debian.cfg"
