#!/bin/busybox sh
# shellcheck shell=dash
# shellcheck disable=SC2010  # sysfs names are plain words
# The L2 guest's init (PID 1 of a stock Debian kernel under rxen, see run.sh).
#
# It prints machine-readable markers on its console (ttyS0), all starting with "L2-":
#   L2-UP scen=S boot=B kernel=K uptime=U cpus=C L2-UP-END   once per boot (B: the kernel's
#   boot ID; the end marker tells L1 the line is whole, not caught while still being written)
#   L2-MODULES, L2-DEVICES, L2-PWRBTN, L2-DMESG    what the kernel found
#   L2-DISK-READ/-WROTE, L2-NET, L2-TOUCHED          what the scenario did
#   L2-READY scen=S boot=B                           the command loop runs
# and then runs every line typed on its console as a shell command (L1 sends them with
# `rxl console` and looks for the answers in the domain's console log).
#
# Kernel command line: l2scen=devices|life (the scenario), l2ip=ADDR (the NIC's IPv4 address,
# /24), l2peer=ADDR (whom to ping), l2touch=MiB (memory to dirty and free for the balloon).
# The power button (KEY_POWER from Linux's ACPI button driver) powers off through busybox
# acpid; Ctrl-Alt-Del is left at the kernel's default (an immediate reboot).

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp

# shellcheck source=common.sh
. /common.sh
up() { cut -d' ' -f1 /proc/uptime; }

SCEN=$(arg l2scen none)
BOOT=$(cut -c1-8 /proc/sys/kernel/random/boot_id)
# L1 types commands on this console: do not echo them into the log.
stty -echo 2>/dev/null
echo "L2-UP scen=$SCEN boot=$BOOT kernel=$(uname -r) uptime=$(up) cpus=$(cat /sys/devices/system/cpu/online) L2-UP-END"

# The modules rxen's devices need, in dependency order (only those the kernel has as modules).
M=/lib/mod/$(uname -r)
bad=""
n=0
for m in $(cat "$M/load.list" 2>/dev/null); do
    if insmod "$M/$m" 2>/tmp/insmod.err; then
        n=$((n + 1))
    else
        bad="$bad $m:$(tr '\n' ' ' </tmp/insmod.err | cut -c1-60)"
    fi
done
echo "L2-MODULES loaded=$n failed=${bad:- none} builtin=$(tr '\n' ' ' <"$M/builtin.list" 2>/dev/null)"

# Give the drivers a moment to probe (disk and NIC for the scenarios that have them).
i=0
while [ $i -lt 20 ]; do
    case $SCEN in
    devices) [ -b /dev/vda ] && [ -e /sys/class/net/eth0 ] && break ;;
    life) [ -b /dev/vda ] && break ;;
    *) break ;;
    esac
    sleep 0.2
    i=$((i + 1))
done

pwrbtn=""
for d in /sys/class/input/input*; do
    [ "$(cat "$d/name" 2>/dev/null)" = "Power Button" ] && pwrbtn="$pwrbtn ${d##*/}($(ls "$d" | grep '^event' | tr '\n' ' '))"
done
echo "L2-DEVICES block=$(ls /sys/block | tr '\n' ',') net=$(ls /sys/class/net | tr '\n' ',') virtio=$(ls /sys/bus/virtio/devices 2>/dev/null | wc -l) balloon=$(ls /sys/bus/virtio/drivers/virtio_balloon 2>/dev/null | grep -c virtio) input=$(cat /sys/class/input/*/name 2>/dev/null | tr '\n' ',') reboot-type=$(cat /sys/kernel/reboot/type 2>/dev/null)"
dmesg | grep -iE 'virtio|ACPI: (Added|MADT|Power|button|IRQ)|smpboot: Total|MPTABLE|unknown parameter|input: |i8042|balloon|vd[a-z]' |
    tail -n 25 | sed 's/^/L2-DMESG /'
# busybox acpid runs /etc/acpi/PWRF/00000080 (poweroff -f) on KEY_POWER; it opens the event
# devices that exist now, so it starts after the drivers have probed.
acpid -c /etc/acpi -l /tmp/acpid.log 2>/dev/null
echo "L2-PWRBTN ${pwrbtn:-absent} acpid=$(pidof acpid >/dev/null && echo running || echo none)"

disk_io() {
    if [ -b /dev/vda ]; then
        r=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -cd 'A-Za-z0-9-' | cut -c1-64)
        echo "L2-DISK-READ $r"
        if printf 'L2SAW-%s\n' "$r" | dd of=/dev/vda bs=512 seek=1 count=1 conv=sync,fsync 2>/dev/null; then
            echo "L2-DISK-WROTE L2SAW-$r"
        else
            echo "L2-DISK-WROTE failed"
        fi
    else
        echo "L2-DISK-READ none (no /dev/vda; block devices: $(ls /sys/block | tr '\n' ' '))"
    fi
}

case $SCEN in
devices)
    disk_io
    nic=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
    ip=$(arg l2ip "")
    peer=$(arg l2peer 10.99.0.1)
    if [ -n "$nic" ] && [ -n "$ip" ]; then
        ip link set "$nic" up
        ip addr add "$ip/24" dev "$nic"
        ping -c 3 -w 15 "$peer" >/tmp/ping 2>&1
        got=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping)
        if [ "${got:-0}" -gt 0 ]; then
            echo "L2-NET ok nic=$nic ip=$ip peer=$peer received=$got/3"
        else
            echo "L2-NET fail nic=$nic ip=$ip peer=$peer: $(tail -n 2 /tmp/ping | tr '\n' ' ')"
        fi
    else
        echo "L2-NET fail no NIC (interfaces: $(ls /sys/class/net | tr '\n' ' '))"
    fi
    touch_mb=$(arg l2touch 0)
    if [ "$touch_mb" -gt 0 ]; then
        # Dirty memory and free it again, so that the balloon has resident pages to return.
        dd if=/dev/zero of=/tmp/fill bs=1M count="$touch_mb" 2>/dev/null
        rm -f /tmp/fill
        echo "L2-TOUCHED mb=$touch_mb $(grep -E 'MemTotal|MemFree' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
    fi
    ;;
life)
    disk_io
    ;;
esac

echo "L2-READY scen=$SCEN boot=$BOOT uptime=$(up)"
# Answer commands typed on the console; a subshell keeps PID 1 alive through any mistake.
while :; do
    if read -r line; then
        [ -n "$line" ] && (eval "$line")
    else
        sleep 1
    fi
done
