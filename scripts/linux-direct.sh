#!/bin/bash
# Stock Linux under rxen directly on this host's /dev/kvm, with no nesting: for hosts whose
# KVM is hardware VT-x or SVM (rxen's usual test machines have PVM, which cannot run a stock
# kernel; scripts/linux-l1/ nests for those). It reports what the host's KVM is, then boots
# the kernel and the L2 initramfs that `scripts/linux-l1/run.sh build` makes (l2-init.sh) as
# rxen domains: the built-in test guest first, then the stock kernel with a disk, 2 vCPUs,
# `rxl save`/`rxl restore`, and `rxl shutdown` through the ACPI power button.
#
# usage: scripts/linux-direct.sh BIN_DIR VMLINUZ INITRD
#   BIN_DIR holds rxend, rxl and rxen-vmm. Prints `CHECK name PASS|FAIL detail` lines;
#   exits 0 when all passed, 1 when one failed, 77 when this host has no usable /dev/kvm.
set -u
BIN=$(cd "${1:?BIN_DIR}" && pwd)
KERNEL=$(realpath "${2:?VMLINUZ}")
INITRD=$(realpath "${3:?INITRD}")
W=$(mktemp -d /tmp/rxen-direct.XXXXXX)
SOCK=$W/rxend.sock
export RXEN_SOCKET=$SOCK RXEN_VMM=$BIN/rxen-vmm PATH=$BIN:$PATH
FAILED=0
check() {
    echo "CHECK $1 $2 ${*:3}"
    [ "$2" = PASS ] || FAILED=1
}
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
rxq() { timeout 60 "$BIN/rxl" "$@" 2>&1; }

echo "== host"
uname -a
grep -m1 '^model name' /proc/cpuinfo
echo "cpu flags: $(grep -m1 -owE 'vmx|svm|hypervisor|ept|npt' /proc/cpuinfo | sort -u | tr '\n' ' ')"
ls -l /dev/kvm 2>&1
for m in kvm kvm_intel kvm_amd kvm_pvm; do
    [ -d /sys/module/$m ] && echo "module $m: $(cd /sys/module/$m/parameters 2>/dev/null && for p in nested ept npt enable_apicv; do [ -r $p ] && printf '%s=%s ' $p "$(cat $p)"; done)"
done
if ! [ -c /dev/kvm ] || ! exec 9<>/dev/kvm; then
    echo "no usable /dev/kvm on this host"
    exit 77
fi
exec 9>&-

"$BIN/rxend" --socket "$SOCK" --state-dir "$W/state" --no-cgroups >"$W/rxend.out" 2>&1 &
RXEND=$!
trap 'rxq destroy l2 >/dev/null 2>&1; kill $RXEND 2>/dev/null; sleep 1; tail -n 20 "$W/state/rxend.log" 2>/dev/null | sed "s/^/RXEND> /"' EXIT
for _ in $(seq 60); do [ -S "$SOCK" ] && break; sleep 0.2; done

# con NAME REGEX SECS: waits for a line of NAME's console log matching REGEX, prints it.
con() {
    local d
    for _ in $(seq $(($3 * 5))); do
        d=$(rxq domid "$1" | tr -d ' \n')
        if [ -n "$d" ] && grep -aE "$2" "$W/state/dom/$d/console.log" 2>/dev/null | tail -n 1 | grep .; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

echo "== rxen's test guest"
cat >"$W/hello.cfg" <<EOF
name = "hello"
kernel = "builtin:testguest"
memory = 64
vcpus = 2
EOF
t0=$(date +%s.%N)
if rxq create "$W/hello.cfg" && con hello 'booted on' 10; then
    check testguest PASS "booted in $(since "$t0") s"
else
    check testguest FAIL "$(rxq list | tr '\n' ' ')"
fi
rxq destroy hello >/dev/null

echo "== stock Linux: $(basename "$KERNEL")"
truncate -s 16M "$W/disk.img"
printf 'RXEN-DISK-direct\n' | dd of="$W/disk.img" conv=notrunc 2>/dev/null
cat >"$W/l2.cfg" <<EOF
name = "l2"
kernel = "$KERNEL"
ramdisk = "$INITRD"
extra = "console=ttyS0 l2scen=life"
memory = 256
vcpus = 2
disk = ['file:$W/disk.img,xvda,w']
on_poweroff = "destroy"
on_reboot = "restart"
EOF
t0=$(date +%s.%N)
if rxq create "$W/l2.cfg" && con l2 'L2-READY' 60 >/dev/null; then
    up=$(con l2 'L2-UP' 1)
    booted=1
    check linux-boot PASS "userspace in $(since "$t0") s: ${up#*L2-UP }"
    con l2 'L2-DISK-READ' 1 | sed 's/^/  /'
    con l2 'L2-DEVICES' 1 | sed 's/^/  /'
else
    check linux-boot FAIL "no L2-READY within 60 s; console tail:"
    d=$(rxq domid l2 | tr -d ' \n')
    tail -n 30 "$W/state/dom/$d/console.log" 2>/dev/null | sed 's/^/  L2> /'
    tail -n 5 "$W/state/dom/$d/vmm.log" 2>/dev/null | sed 's/^/  VMM> /'
fi
if [ -n "${booted:-}" ]; then
    if rxq save l2 "$W/l2.sav" && rxq restore "$W/l2.sav"; then
        d=$(rxq domid l2 | tr -d ' \n')
        # shellcheck disable=SC2016  # the guest's shell expands it
        printf 'echo ANSWER-$((6*7))\n\035' | timeout 15 "$BIN/rxl" console l2 >/dev/null 2>&1
        if con l2 'ANSWER-42' 10 >/dev/null; then
            check save-restore PASS "the restored guest's shell answered (domain $d)"
        else
            check save-restore FAIL "no answer from the restored guest"
        fi
    else
        check save-restore FAIL "$(rxq list | tr '\n' ' ')"
    fi
    rxq shutdown l2
    for _ in $(seq 100); do rxq list | grep -q '^l2 ' || break; sleep 0.2; done
    if rxq list | grep -q '^l2 '; then
        check rxl-shutdown FAIL "l2 still listed 20 s after rxl shutdown"
    else
        check rxl-shutdown PASS "the guest powered off on the ACPI power button"
    fi
fi
exit $FAILED
