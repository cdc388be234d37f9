#!/usr/bin/env bash
# Runs every rxen test on this machine: unit tests, parser peer vectors,
# property tests, and the end-to-end tests that boot real guests under
# /dev/kvm. Needs root (KVM, and later TAP devices and cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /dev/kvm ]; then
    echo "scripts/test.sh: /dev/kvm is missing; rxen's tests boot real guests" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: run as root; the tests use KVM, TAP devices, bridges, cgroups, loop devices and test users" >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "scripts/test.sh: cargo is missing; install Rust (rustup) first" >&2
    exit 1
fi

# Bridges and namespaces need iproute2; the PVH boot tests and the guest's
# drivers on QEMU's microvm devices need QEMU; the stock-Linux tests
# (scripts/linux-l1) need QEMU, a static busybox, cpio and objcopy; ACPICA's
# disassembler checks rxen's ACPI tables; pygrub's tests build ext4 images;
# the pool tests run etcd.
# Install what is missing.
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v losetup >/dev/null 2>&1 || missing+=(mount)
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
command -v busybox >/dev/null 2>&1 || missing+=(busybox-static)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v objcopy >/dev/null 2>&1 || missing+=(binutils)
command -v iasl >/dev/null 2>&1 || missing+=(acpica-tools)
# The Debian package's test asks man where rxl(1) is (package-deb.sh needs binutils' strip).
command -v man >/dev/null 2>&1 || missing+=(man-db)
# dump-core's test opens the core file with readelf (binutils) and gdb.
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
command -v gdb >/dev/null 2>&1 || missing+=(gdb)
# pygrub's tests build ext4 images with mkfs.ext4 -d.
command -v mkfs.ext4 >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
# The qcow2 tests make and check images with qemu-img and qemu-io.
{ command -v qemu-img && command -v qemu-io; } >/dev/null 2>&1 || missing+=(qemu-utils)
# The pool tests start an etcd of their own (Debian's etcd-server: etcd 3.4 or later).
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
# ... and make its TLS certificates with openssl.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "scripts/test.sh: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "scripts/test.sh: missing ${missing[*]}; install them first" >&2
        exit 1
    fi
fi

# The phy: disk and block-device discard tests put images on loop devices.
# Load the driver if need be; a /dev without udev (a container's tmpfs) has
# no nodes for it, so make /dev/loop-control and the first loop devices.
if [ ! -e /dev/loop-control ] && [ ! -e /sys/class/misc/loop-control ]; then
    modprobe loop 2>/dev/null || true
fi
if [ ! -e /dev/loop-control ] && [ -r /sys/class/misc/loop-control/dev ]; then
    IFS=: read -r major minor </sys/class/misc/loop-control/dev
    mknod -m 0600 /dev/loop-control c "$major" "$minor"
fi
if [ ! -e /dev/loop-control ]; then
    echo "scripts/test.sh: no loop devices (/dev/loop-control); the block-device tests need them: modprobe loop" >&2
    exit 1
fi
for n in $(seq 0 15); do
    [ -e "/dev/loop$n" ] || mknod -m 0600 "/dev/loop$n" b 7 "$n"
done

# The end-to-end tests drive the real binaries: build them first.
cargo build --workspace --bins
# Each end-to-end test boots its own guests; two at a time suits small hosts.
cargo test --workspace -- --test-threads="${RXEN_TEST_THREADS:-2}"
