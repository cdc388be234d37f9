#!/bin/busybox sh
# shellcheck shell=dash
# L1's init (see run.sh): loads KVM, makes a bridge br0 (10.99.0.1/24), starts two rxends
# (A, and B with a relocation server on 127.0.0.1:8003), and runs the scenario groups named
# by l1groups= on its command line with real rxl commands against stock Debian L2 guests.
# Every check prints one line `CHECK <name> PASS|FAIL <detail>`; `PLAN <names>` lists the
# checks a group will report, `TIME <what> <seconds> <detail>` the timings, and `L1-DONE`
# ends the run. L2's side is l2-init.sh: markers on its console, and a loop that runs the
# lines L1 types there (`rxl console` fed from a pipe).

/bin/busybox --install -s /bin
export PATH=/usr/sbin:/opt/rxen:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o size=1536m tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /var/lib /tmp/con /etc/rxen

up() { cut -d' ' -f1 /proc/uptime; }
upi() { cut -d. -f1 /proc/uptime; }
say() { echo "[L1 $(up)] $*" >/dev/console; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }'; }
# shellcheck source=common.sh
. /common.sh
rand() { od -An -N4 -tu4 /dev/urandom | tr -d ' '; }
oneline() { tr -d '\r' | tr '\n' ' ' | tr -s ' ' | cut -c1-"${1:-300}"; }

# CHECK lines, and the checks planned but not reported yet (reported as failing if a group
# cannot run them).
check() {
    n=$1
    r=$2
    shift 2
    echo "CHECK $n $r $*" >/dev/console
    echo "$n" >>/tmp/reported
}
PLANNED=""
plan() {
    echo "PLAN $*" >/dev/console
    PLANNED="$PLANNED $*"
}
# fail_unreported REASON: every check of the running group (CUR_PLAN) not reported yet fails.
CUR_PLAN=""
fail_unreported() {
    for n in $CUR_PLAN; do
        grep -qx "$n" /tmp/reported 2>/dev/null || check "$n" FAIL "$*"
    done
}
timing() { echo "TIME $*" >/dev/console; }

finish() {
    say "rxend A log (tail):"
    tail -n 25 /var/lib/rxA/rxend.log 2>/dev/null | sed 's/^/RXEND-A> /' >/dev/console
    say "rxend B log (tail):"
    tail -n 15 /var/lib/rxB/rxend.log 2>/dev/null | sed 's/^/RXEND-B> /' >/dev/console
    echo "L1-DONE" >/dev/console
    sync
    poweroff -f
    sleep 5
    echo o >/proc/sysrq-trigger
}

# ---------------------------------------------------------------------------------------------
# rxen: two daemons in this L1
# ---------------------------------------------------------------------------------------------
SA=/run/rxA.sock
DA=/var/lib/rxA
SB=/run/rxB.sock
DB=/var/lib/rxB
sock() { if [ "$1" = B ]; then echo $SB; else echo $SA; fi; }
sdir() { if [ "$1" = B ]; then echo $DB; else echo $DA; fi; }

# rx T SECS ARGS...: runs rxl against rxend T, at most SECS seconds, printing a heartbeat for
# the watchdog meanwhile; its output is in /tmp/rxl.out, its status is the return value.
rx() {
    t=$1
    secs=$2
    shift 2
    RXEN_SOCKET=$(sock "$t") timeout "$secs" rxl "$@" >/tmp/rxl.out 2>&1 &
    p=$!
    s=0
    while kill -0 $p 2>/dev/null; do
        sleep 1
        s=$((s + 1))
        [ $((s % 15)) = 0 ] && say "  rxl $* (rxend $t) running for ${s}s"
    done
    wait $p
}
# rxq T ARGS...: a quick rxl call; prints its output.
rxq() {
    t=$1
    shift
    RXEN_SOCKET=$(sock "$t") timeout 20 rxl "$@" 2>&1
}

# Whether domain NAME is listed by rxend T.
listed() { rxq "$1" list 2>/dev/null | awk -v n="$2" '$1 == n { f = 1 } END { exit !f }'; }
domid() { rxq "$1" domid "$2" 2>/dev/null | tr -d ' \n'; }

# The consoles: rxend removes a domain's run directory when it ends, so a collector copies
# every console.log and vmm.log (keyed by rxend, domain ID and inode) once a second.
collector() {
    while :; do
        for t in A B; do
            for r in $(sdir $t)/dom/*; do
                [ -f "$r/console.log" ] || continue
                k=$t-${r##*/}-$(stat -c %i "$r/console.log")
                cp "$r/console.log" "/tmp/con/$k.con" 2>/dev/null
                cp "$r/vmm.log" "/tmp/con/$k.vmm" 2>/dev/null
            done
        done
        sleep 1
    done
}
# Everything the domains of rxend T printed on their consoles (copies and live files).
context() { cat /tmp/con/"$1"-*.con "$(sdir "$1")"/dom/*/console.log 2>/dev/null | tr -d '\r'; }

# wait_start SECS: starts a wait of SECS seconds for wait_tick.
wait_start() {
    wend=$(($(upi) + $1))
    wnext=$(($(upi) + 15))
}
# wait_tick WHAT: one round of a polling wait: fails once the time is up, says what it waits
# for every 15 s, and sleeps a second.
wait_tick() {
    [ "$(upi)" -ge $wend ] && return 1
    if [ "$(upi)" -ge $wnext ]; then
        say "  waiting for $1"
        wnext=$(($(upi) + 15))
    fi
    sleep 1
}

# wait_con T REGEX SECS: waits for a console line of rxend T matching REGEX; prints it.
wait_con() {
    wt=$1
    wre=$2
    wait_start "$3"
    while :; do
        wl=$(context "$wt" | grep -a -E "$wre" | tail -n 1)
        if [ -n "$wl" ]; then
            echo "$wl"
            return 0
        fi
        wait_tick "/$wre/ on rxend $wt" || return 1
    done
}

# The boot IDs of scenario S seen on rxend T (one per L2 boot).
# Only whole banners count (they end in L2-UP-END): a console log is read while it is written,
# and a banner caught half-written once read as "cpus=''".
boots() { context "$1" | grep -a "L2-UP scen=$2 boot=.* L2-UP-END" | grep -a -o "boot=[0-9a-f]*" | sed 's/.*boot=//' | sort -u; }

# wait_new_boot T S OLDBOOTS SECS: waits for an L2-UP of scenario S whose boot ID is not in
# OLDBOOTS; prints the banner.
wait_new_boot() {
    wait_start "$4"
    while :; do
        for b in $(boots "$1" "$2"); do
            case " $3 " in *" $b "*) ;; *)
                context "$1" | grep -a "L2-UP scen=$2 boot=$b .* L2-UP-END" | tail -n 1
                return 0
                ;;
            esac
        done
        wait_tick "a new L2 boot of $2 on rxend $1" || return 1
    done
}

# wait_gone T NAME SECS: waits until rxend T no longer lists NAME (and it stays away 3 s).
wait_gone() {
    wend=$(($(upi) + $3))
    while :; do
        if ! listed "$1" "$2"; then
            sleep 3
            listed "$1" "$2" || return 0
        fi
        [ "$(upi)" -ge $wend ] && return 1
        sleep 1
    done
}

# send T NAME LINE: types LINE on the domain's serial console (Ctrl-] detaches).
send() {
    printf '%s\n\035' "$3" | RXEN_SOCKET=$(sock "$1") timeout 15 rxl console "$2" >/dev/null 2>&1
}

# ask T NAME SECS SHELLCMD: runs SHELLCMD in L2's command loop; prints its answer (one line).
# The marker is computed in L2, so the typed command itself never matches it.
ask() {
    an=$(rand)
    send "$1" "$2" "echo \"L2-ANS-\$(($an+1)) \$($4)\""
    al=$(wait_con "$1" "L2-ANS-$((an + 1)) " "$3") || return 1
    echo "${al#*L2-ANS-$((an + 1)) }"
}

# The rxen-vmm process of domain ID on rxend T, and a process's resident memory in KiB.
vmm_pid() {
    for p in $(pidof rxen-vmm); do
        tr '\0' ' ' <"/proc/$p/cmdline" | grep -q "$(sdir "$1")/dom/$2/" && echo "$p"
    done
}
# What rxend T logged about domain ID (one line), for details of a failing check.
rxend_said() { grep -a "domain $2 " "$(sdir "$1")/rxend.log" 2>/dev/null | tail -n "${3:-2}" | sed 's/^\[[^]]*\] //' | oneline; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

# The reboot method L2's kernel chose (/sys/kernel/reboot/type), as L2 last reported it.
rtype() { echo "L2 reboot type $({ context A; context B; } | grep -a -o 'reboot-type=[a-z]*' | tail -n 1 | sed 's/.*=//')"; }

# dump_group G: the group's L2 consoles and VMM logs, for whoever reads a failure.
dump_group() {
    for f in /tmp/con/*.con; do
        [ -f "$f" ] || continue
        echo "--- L2 console ${f##*/} (group $1)" >/dev/console
        tr -d '\r' <"$f" | tail -n 60 | sed 's/^/L2> /' >/dev/console
    done
    for f in /tmp/con/*.vmm; do
        [ -f "$f" ] || continue
        echo "--- vmm.log ${f##*/} (group $1)" >/dev/console
        tail -n 15 "$f" | sed 's/^/VMM> /' >/dev/console
    done
    mkdir -p /tmp/con.old
    mv /tmp/con/* /tmp/con.old/ 2>/dev/null
}

# boot_check CHECK WANTCPUS VCPUS T NAME ID0 BANNER: a boot check from an L2-UP banner; the
# domain must have reached userspace without a reset (rxend restarts it under a new ID).
boot_check() {
    bcpus=$(echo "$7" | sed -n 's/.*cpus=\([^ ]*\).*/\1/p')
    bkern=$(echo "$7" | sed -n 's/.*kernel=\([^ ]*\).*/\1/p')
    bid=$(domid "$4" "$5")
    if [ -n "$bid" ] && [ "$bid" != "$6" ]; then
        check "$1" FAIL "kernel $bkern reached userspace (cpu online $bcpus) only after a reset: domain $6 $(rxend_said "$4" "$6" 1); it came up as domain $bid"
    elif [ "$bcpus" = "$2" ]; then
        check "$1" PASS "kernel $bkern reached userspace with vcpus=$3: cpu online $bcpus"
    else
        check "$1" FAIL "kernel $bkern reached userspace with vcpus=$3 but cpu online is '$bcpus' (want $2)"
    fi
}

# mkdisk FILE TOKEN: a 16 MiB raw image with RXEN-DISK-TOKEN in sector 0.
mkdisk() {
    dd if=/dev/zero of="$1" bs=1M count=16 2>/dev/null
    printf 'RXEN-DISK-%s\n' "$2" | dd of="$1" conv=notrunc 2>/dev/null
}
sector() { dd if="$1" bs=512 skip="$2" count=1 2>/dev/null | tr -cd 'A-Za-z0-9-' | cut -c1-64; }

# ---------------------------------------------------------------------------------------------
# Group "devices": the cloud kernel with 2 vCPUs, a disk, a NIC on br0 and the balloon.
# ---------------------------------------------------------------------------------------------
CHECKS_devices="boot-2vcpu disk-vda net balloon hotplug cdrom sysrq rxl-shutdown disk-write"
group_devices() {
    say "=== GROUP devices BEGIN"
    tok=$(rand)
    mkdisk /tmp/dev.img "$tok"
    cat >/tmp/l2dev.cfg <<EOF
name = "l2dev"
kernel = "/l2/vmlinuz-cloud"
ramdisk = "/l2/initrd.gz"
extra = "console=ttyS0 $QUIET l2scen=devices l2ip=10.99.0.2 l2peer=10.99.0.1 l2touch=128"
memory = 256
vcpus = 2
disk = ['file:/tmp/dev.img,xvda,w']
vif = ['bridge=br0']
on_poweroff = "destroy"
on_reboot = "restart"
EOF
    # A nested L2 occasionally hangs at boot when L1 (QEMU TCG) loses a timer interrupt: one
    # more boot is tried, and the first one's failure is reported with the checks.
    first_try=""
    for attempt in 1 2; do
        t0=$(up)
        if ! rx A 120 create /tmp/l2dev.cfg; then
            fail_unreported "rxl create failed: $(oneline </tmp/rxl.out)${first_try:+; before: $first_try}"
            dump_group devices
            return
        fi
        timing rxl-create-devices "$(since "$t0")" "rxl create returned"
        id=$(domid A l2dev)
        if banner=$(wait_con A "L2-UP scen=devices .* L2-UP-END" 90); then
            nid=$(domid A l2dev)
            if [ -z "$nid" ] || [ "$nid" = "$id" ]; then
                break
            fi
            why="the guest reset during boot: domain $id $(rxend_said A "$id" 1); it came up as domain $nid"
        else
            why="no L2 banner within 90 s of rxl create; console: $(context A | tail -n 5 | oneline)"
        fi
        rxq A destroy l2dev >/dev/null
        wait_gone A l2dev 30 || say "l2dev survived rxl destroy"
        if [ "$attempt" = 2 ]; then
            fail_unreported "$why; the boot before it: $first_try"
            dump_group devices
            return
        fi
        first_try=$why
        say "RETRY devices: $why"
        mkdisk /tmp/dev.img "$tok"
    done
    [ -n "$first_try" ] && say "devices: the first L2 boot failed ($first_try); the second one is checked"
    timing l2boot-devices "$(since "$t0")" "rxl create to L2 userspace (cloud kernel, 2 vCPUs); L2's uptime then: $(echo "$banner" | sed -n 's/.*uptime=\([^ ]*\).*/\1/p') s"
    boot_check boot-2vcpu 0-1 2 A l2dev "$id" "$banner"
    id=$(domid A l2dev)
    wait_con A "L2-READY scen=devices " 90 >/dev/null || say "no L2-READY from devices"
    devs=$(context A | grep -a '^L2-DEVICES' | tail -n 1)

    got=$(context A | grep -a '^L2-DISK-READ' | tail -n 1 | sed 's/^L2-DISK-READ //')
    if [ "$got" = "RXEN-DISK-$tok" ]; then
        check disk-vda PASS "L2 read L1's pattern from /dev/vda: $got"
    else
        check disk-vda FAIL "L2 did not read RXEN-DISK-$tok from /dev/vda: '${got:-no L2-DISK-READ line}'; $devs"
    fi

    net=$(context A | grep -a '^L2-NET' | tail -n 1)
    l1ping=$(ping -c 2 -w 5 10.99.0.2 2>&1 | grep -o '[0-9]* packets received')
    case $net in
    "L2-NET ok"*) check net PASS "${net#L2-NET ok }; L1 pinged L2: ${l1ping:-no answer}" ;;
    *) check net FAIL "${net:-no L2-NET line}; L1 pinged L2: ${l1ping:-no answer}; $devs" ;;
    esac

    pid=$(vmm_pid A "$id")
    touched=$(context A | grep -a '^L2-TOUCHED' | tail -n 1)
    rss0=$(rss_kb "$pid")
    if [ -z "$pid" ] || [ -z "$rss0" ]; then
        check balloon FAIL "no rxen-vmm process found for domain $id"
    elif ! rx A 30 mem-set l2dev 96; then
        check balloon FAIL "rxl mem-set l2dev 96: $(oneline </tmp/rxl.out)"
    else
        t1=$(up)
        wend=$(($(upi) + 40))
        rss1=$rss0
        while [ "$(upi)" -lt $wend ]; do
            sleep 2
            rss1=$(rss_kb "$pid")
            [ $((rss0 - rss1)) -ge 65536 ] && break
        done
        if [ $((rss0 - rss1)) -ge 65536 ]; then
            check balloon PASS "rxen-vmm RSS ${rss0} kB -> ${rss1} kB within $(since "$t1") s of rxl mem-set 96 (${touched:-L2 touched nothing})"
        else
            check balloon FAIL "rxen-vmm RSS ${rss0} kB -> ${rss1} kB in 40 s after rxl mem-set 96 (want a drop of 64 MiB); ${touched:-no L2-TOUCHED line}; $(echo "$devs" | grep -o 'virtio=[0-9]* balloon=[0-9]*')"
        fi
    fi

    # hotplug: a disk attached to the running guest appears in it (ACPI device check through
    # the GED); once the guest unbinds it, block-detach finishes at once and the disk is gone.
    # (The cdrom check below then takes slot 3, whose interrupt once clashed with the RTC's.)
    hp_msgs=""
    hp_fail=""
    for xv in xvdb; do
        dev=vdb
        dd if=/dev/zero of=/tmp/hp-$xv.img bs=1M count=8 2>/dev/null
        t1=$(up)
        if ! rx A 30 block-attach l2dev file:/tmp/hp-$xv.img,$xv,w; then
            hp_fail="rxl block-attach l2dev $xv: $(oneline </tmp/rxl.out)"
            break
        fi
        seen=""
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            seen=$(ask A l2dev 20 "ls /sys/block | tr '\n' ' '") || seen=""
            case $seen in *$dev*) break ;; esac
            sleep 2
        done
        attach_s=$(since "$t1")
        plat=$(ask A l2dev 20 "basename \$(dirname \$(readlink -f /sys/block/$dev/device))") || plat=""
        # The unbind once failed with ENODEV although vdb was there (2 runs in about 16); try
        # again, and say so in the check's message with the device's driver at the time.
        for try in 1 2 3 4 5; do
            unb=$(ask A l2dev 20 "if echo $plat > /sys/bus/platform/drivers/virtio-mmio/unbind 2>/dev/null; then echo unbound; else echo failed driver=\$(basename \$(readlink /sys/bus/platform/devices/$plat/driver 2>/dev/null) 2>/dev/null); fi") || unb=""
            case $unb in unbound*) break ;; esac
            hp_msgs="${hp_msgs}unbind of $plat, try $try: ${unb:-no answer}; "
            sleep 1
        done
        t2=$(up)
        rx A 30 block-detach l2dev $xv || true
        detach_s=$(since "$t2")
        after=$(ask A l2dev 20 "ls /sys/block | tr '\n' ' '") || after=""
        case "$seen|$after" in
        *$dev*"|"*$dev*) hp_fail="$dev still in the guest after unbind and block-detach: $after"; break ;;
        *$dev*"|"*) hp_msgs="$hp_msgs$xv as $dev ($plat) appeared $attach_s s after rxl block-attach, block-detach took $detach_s s after the unbind; " ;;
        *) hp_fail="no $dev in the guest within 20 s of rxl block-attach $xv: ${seen:-no answer}; $(ask A l2dev 20 "dmesg | grep -i -E 'virtio|genirq' | tail -n 3 | tr '\n' ' '"); $(rxend_said A "$id")"; break ;;
        esac
    done
    if [ -n "$hp_fail" ]; then
        check hotplug FAIL "$hp_msgs$hp_fail"
    else
        after=$(ask A l2dev 20 "ls /sys/block | tr '\n' ' '") || after=""
        check hotplug PASS "${hp_msgs}guest disks now: $after"
    fi

    # cdrom: a cdrom drive attached with a 4 MiB medium; rxl cd-insert puts in a 6 MiB one and
    # rxl cd-eject takes it out: Linux's virtio_blk reads the capacity again on the
    # configuration-change interrupt, so /sys/block/DEV/size follows (8192, 12288, then 0).
    # The drive is the guest's fourth virtio device and lands in slot 3 (the hot-plugged disk's
    # slot 2 is not reused), whose interrupt clashed with the RTC's IRQ 8 until it moved to 21:
    # with the old pin the drive never appeared ("genirq: Flags mismatch ... vs. (rtc0)").
    dd if=/dev/zero of=/tmp/cd-a.img bs=1M count=4 2>/dev/null
    dd if=/dev/zero of=/tmp/cd-b.img bs=1M count=6 2>/dev/null
    cd_size() {
        ask A l2dev 20 "for d in /sys/block/vd*; do [ \$(cat \$d/ro) = 1 ] && cat \$d/size; done"
    }
    cd_wait() {
        want=$1
        got=""
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            got=$(cd_size) || got=""
            [ "$got" = "$want" ] && return 0
            sleep 2
        done
        return 1
    }
    t1=$(up)
    if ! rx A 30 block-attach l2dev "file:/tmp/cd-a.img,xvdd,r,devtype=cdrom"; then
        check cdrom FAIL "rxl block-attach of a cdrom: $(oneline </tmp/rxl.out)"
    elif ! cd_wait 8192; then
        check cdrom FAIL "no read-only 8192-sector disk in the guest after attaching the cdrom: ${got:-no answer}; $(ask A l2dev 20 "dmesg | grep -i -E 'virtio|genirq' | tail -n 3 | tr '\n' ' '")"
    elif ! rx A 30 cd-insert l2dev xvdd /tmp/cd-b.img; then
        check cdrom FAIL "rxl cd-insert: $(oneline </tmp/rxl.out)"
    elif ! cd_wait 12288; then
        check cdrom FAIL "after rxl cd-insert of a 6 MiB medium the guest's cdrom has ${got:-no answer} sectors, not 12288; $(ask A l2dev 20 "dmesg | grep -i virtio | tail -n 2 | tr '\n' ' '")"
    elif ! rx A 30 cd-eject l2dev xvdd; then
        check cdrom FAIL "rxl cd-eject: $(oneline </tmp/rxl.out)"
    elif ! cd_wait 0; then
        check cdrom FAIL "after rxl cd-eject the guest's cdrom has ${got:-no answer} sectors, not 0"
    else
        plat=$(ask A l2dev 20 "for d in /sys/block/vd*; do [ \$(cat \$d/ro) = 1 ] && basename \$(dirname \$(readlink -f \$d/device)); done") || plat=""
        check cdrom PASS "the guest saw the cdrom ($plat) go 8192 -> 12288 (cd-insert) -> 0 (cd-eject) sectors within $(since "$t1") s"
    fi

    # sysrq: a BREAK and a key on the 16550; Linux's 8250 driver hands the key to SysRq,
    # which prints its help for 'h' at the default console level whatever the kernel's quiet.
    t1=$(up)
    if ! rx A 30 sysrq l2dev h; then
        check sysrq FAIL "rxl sysrq l2dev h: $(oneline </tmp/rxl.out)"
    elif got=$(wait_con A "sysrq: HELP" 30); then
        check sysrq PASS "L2's kernel answered rxl sysrq h within $(since "$t1") s: $(echo "$got" | cut -c1-48)"
    else
        check sysrq FAIL "no 'sysrq: HELP' on L2's console within 30 s of rxl sysrq h; console: $(context A | tail -n 3 | oneline)"
    fi

    btn=$(context A | grep -a '^L2-PWRBTN' | tail -n 1)
    t1=$(up)
    if ! rx A 30 shutdown l2dev; then
        check rxl-shutdown FAIL "rxl shutdown l2dev: $(oneline </tmp/rxl.out); $btn"
    elif wait_gone A l2dev 60; then
        check rxl-shutdown PASS "domain gone $(since "$t1") s after rxl shutdown; $btn; $(context A | grep -a '^L2-POWER-BUTTON' | tail -n 1)"
    else
        check rxl-shutdown FAIL "domain still listed 60 s after rxl shutdown: $(rxq A list l2dev | tail -n 1 | oneline); $btn; console: $(context A | tail -n 3 | oneline)"
    fi
    if listed A l2dev; then
        rxq A destroy l2dev >/dev/null
        wait_gone A l2dev 30 || say "l2dev survived rxl destroy"
    fi

    got=$(sector /tmp/dev.img 1)
    if [ "$got" = "L2SAW-RXEN-DISK-$tok" ]; then
        check disk-write PASS "after the domain ended L1 read L2's write from the image: $got"
    else
        check disk-write FAIL "sector 1 of the image holds '${got}' after the domain ended (want L2SAW-RXEN-DISK-$tok); L2: $(context A | grep -a '^L2-DISK-WROTE' | tail -n 1)"
    fi
    dump_group devices
    say "=== GROUP devices END"
}

# reboot_check CHECK HOW WHAT: reboots l2life on rxend $H (HOW: rxl = `rxl reboot`, guest =
# `reboot -f` typed in L2; WHAT names it in the detail); a new L2 boot must follow in 60 s.
reboot_check() {
    old=$(boots "$H" life | tr '\n' ' ')
    id0=$(domid "$H" l2life)
    t1=$(up)
    if [ "$2" = rxl ]; then
        if ! rx "$H" 30 reboot l2life; then
            check "$1" FAIL "rxl reboot l2life: $(oneline </tmp/rxl.out)"
            return
        fi
    else
        send "$H" l2life "reboot -f"
    fi
    if nb=$(wait_new_boot "$H" life "$old" 60); then
        check "$1" PASS "L2 booted again $(since "$t1") s after $3 (domain ID $id0 -> $(domid "$H" l2life); $(boots "$H" life | wc -l) boots seen on rxend $H); ${nb%% kernel=*}"
        timing "l2boot-$1" "$(since "$t1")" "$3 to L2 userspace"
        wait_con "$H" "L2-READY scen=life boot=$(echo "$nb" | sed -n 's/.*boot=\([0-9a-f]*\).*/\1/p')" 90 >/dev/null
    else
        check "$1" FAIL "no new L2 boot within 60 s of $3 ($(rtype "$H"); domain $(listed "$H" l2life && echo "still listed: $(rxq "$H" list l2life | tail -n 1 | oneline)" || echo gone)); console: $(context "$H" | tail -n 3 | oneline)"
    fi
}

# ---------------------------------------------------------------------------------------------
# Group "life": the generic kernel with 1 vCPU and a disk, through save/restore, a live
# migration to rxend B, rxl reboot, reboot -f and poweroff -f.
# ---------------------------------------------------------------------------------------------
CHECKS_life="boot-1vcpu save-restore save-restore-disk migrate migrate-disk rxl-reboot guest-reboot guest-poweroff"
group_life() {
    say "=== GROUP life BEGIN"
    tok=$(rand)
    mkdisk /tmp/life.img "$tok"
    want="L2SAW-RXEN-DISK-$tok"
    cat >/tmp/l2life.cfg <<EOF
name = "l2life"
kernel = "/l2/vmlinuz-generic"
ramdisk = "/l2/initrd.gz"
extra = "console=ttyS0 $QUIET l2scen=life"
memory = 128
vcpus = 1
disk = ['file:/tmp/life.img,xvda,w']
on_poweroff = "destroy"
on_reboot = "restart"
EOF
    # life_boot WHY: creates l2life on rxend A and waits for its command loop; sets banner,
    # id, tboot. Fails when there is no banner.
    life_boot() {
        lold=$(boots A life | tr '\n' ' ')
        t0=$(up)
        if ! rx A 120 create /tmp/l2life.cfg; then
            lerr="rxl create ($1) failed: $(oneline </tmp/rxl.out)"
            return 1
        fi
        id=$(domid A l2life)
        timing "rxl-create-life-$1" "$(since "$t0")" "rxl create returned"
        if ! banner=$(wait_new_boot A life "$lold" 90); then
            lerr="no L2 banner within 90 s of rxl create ($1); $(rxend_said A "$id" 1); console: $(context A | tail -n 5 | oneline)"
            rxq A destroy l2life >/dev/null
            return 1
        fi
        tboot=$(since "$t0")
        nid=$(domid A l2life)
        if [ -n "$nid" ] && [ "$nid" != "$id" ]; then
            lerr="the guest reset during boot ($1): domain $id $(rxend_said A "$id" 1); it came up as domain $nid"
            rxq A destroy l2life >/dev/null
            return 1
        fi
        wait_con A "L2-READY scen=life boot=$(echo "$banner" | sed -n 's/.*boot=\([0-9a-f]*\).*/\1/p')" 90 >/dev/null ||
            say "no L2-READY from l2life"
    }
    if ! life_boot first; then
        # As for the devices group: one more boot, the first one's failure reported.
        first_try=$lerr
        say "RETRY life: $first_try"
        wait_gone A l2life 30 || say "l2life survived rxl destroy"
        if ! life_boot first-again; then
            fail_unreported "$lerr; the boot before it: $first_try"
            dump_group life
            return
        fi
        say "life: the first L2 boot failed ($first_try); the second one is checked"
    fi
    timing l2boot-life "$tboot" "rxl create to L2 userspace (generic kernel, 1 vCPU); L2's uptime then: $(echo "$banner" | sed -n 's/.*uptime=\([^ ]*\).*/\1/p') s"
    boot_check boot-1vcpu 0 1 A l2life "$id" "$banner"
    readdisk="blockdev --flushbufs /dev/vda 2>/dev/null; dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | tr -cd A-Za-z0-9-"
    H=A

    # save and restore
    t1=$(up)
    if ! rx A 120 save l2life /tmp/life.save; then
        check save-restore FAIL "rxl save: $(oneline </tmp/rxl.out)"
        check save-restore-disk FAIL "no save"
    else
        tsave=$(since "$t1")
        size=$(du -k /tmp/life.save | cut -f1)
        still=""
        listed A l2life && still=" (but l2life was still listed after rxl save)"
        t1=$(up)
        if ! rx A 120 restore /tmp/life.save; then
            check save-restore FAIL "rxl save took $tsave s$still; rxl restore: $(oneline </tmp/rxl.out)"
            check save-restore-disk FAIL "no restore"
        else
            trest=$(since "$t1")
            timing save-restore "$tsave" "rxl save ($size KiB file); rxl restore $trest s"
            if ans=$(ask A l2life 30 "cut -d' ' -f1 /proc/uptime"); then
                check save-restore PASS "the restored guest's shell answered (L2 uptime $ans s); save $tsave s ($size KiB)$still, restore $trest s"
            else
                check save-restore FAIL "no answer from the restored guest's shell within 30 s$still; console: $(context A | tail -n 3 | oneline)"
            fi
            if ans=$(ask A l2life 30 "$readdisk") && [ "$ans" = "$want" ]; then
                check save-restore-disk PASS "after restore L2 read from vda: $ans"
            else
                check save-restore-disk FAIL "after restore L2 read '${ans:-no answer}' from vda sector 1 (want $want)"
            fi
        fi
    fi
    rm -f /tmp/life.save
    # The checks below need a running guest: boot a fresh one if the restore left none.
    if ! listed A l2life; then
        say "no l2life after save/restore: booting a fresh one for the remaining checks"
        if ! life_boot again; then
            fail_unreported "$lerr"
            dump_group life
            return
        fi
    fi

    # live migration to rxend B over loopback
    if listed A l2life; then
        t1=$(up)
        if rx A 180 migrate --port 8003 --key /etc/rxen/reloc.key --downtime-ms 500 --max-rounds 10 l2life 127.0.0.1; then
            tmig=$(since "$t1")
            fig=$(grep -a 'rounds' /tmp/rxl.out | tail -n 1 | oneline 200)
            timing migrate "$tmig" "$fig"
            if listed B l2life; then
                H=B
                if ans=$(ask B l2life 30 "cut -d' ' -f1 /proc/uptime"); then
                    check migrate PASS "the guest's shell answered on rxend B (L2 uptime $ans s); $fig"
                else
                    check migrate FAIL "migrated ($fig) but the guest's shell did not answer within 30 s; console on B: $(context B | tail -n 3 | oneline)"
                fi
                mtok=$(rand)
                ans=$(ask B l2life 30 "printf 'MIGW-$mtok\\n' | dd of=/dev/vda bs=512 seek=2 count=1 conv=sync,fsync 2>/dev/null; $readdisk")
                got2=$(sector /tmp/life.img 2)
                if [ "$ans" = "$want" ] && [ "$got2" = "MIGW-$mtok" ]; then
                    check migrate-disk PASS "after migration L2 read $ans from vda and wrote MIGW-$mtok, which L1 read from the image"
                else
                    check migrate-disk FAIL "after migration L2 read '${ans:-no answer}' (want $want); image sector 2 holds '$got2' (want MIGW-$mtok)"
                fi
            else
                check migrate FAIL "rxl migrate succeeded but rxend B does not list l2life: $(rxq B list | oneline)"
                check migrate-disk FAIL "no migrated domain"
            fi
        else
            check migrate FAIL "rxl migrate: $(oneline </tmp/rxl.out); rxend B: $(grep -a -i 'l2life\|incoming\|relocation' $DB/rxend.log | tail -n 1 | sed 's/^\[[^]]*\] //' | oneline)"
            check migrate-disk FAIL "no migration"
        fi
    else
        check migrate FAIL "no running l2life on rxend A to migrate"
        check migrate-disk FAIL "no migration"
    fi
    if ! listed $H l2life; then
        say "no l2life after the migration: booting a fresh one on rxend A for the remaining checks"
        H=A
        if ! life_boot again; then
            fail_unreported "$lerr"
            dump_group life
            return
        fi
    fi

    # alive WHY: makes sure l2life runs on rxend $H and its shell answers; otherwise destroys
    # it and boots a fresh one on rxend A, so that one failure does not decide the next check.
    alive() {
        if listed $H l2life && ask $H l2life 15 "echo ok" >/dev/null; then
            return 0
        fi
        say "l2life does not answer after $1: destroying it and booting a fresh one"
        rxq $H destroy l2life >/dev/null
        wait_gone $H l2life 30 >/dev/null
        H=A
        life_boot "after-$1" || {
            fail_unreported "$lerr"
            return 1
        }
    }
    # rxl reboot: Ctrl-Alt-Del on the i8042 keyboard; the kernel reboots at once
    reboot_check rxl-reboot rxl "rxl reboot"
    if ! alive rxl-reboot; then
        dump_group life
        return
    fi

    # reboot -f in the guest: on_reboot=restart brings it back
    reboot_check guest-reboot guest "reboot -f"
    if ! alive guest-reboot; then
        dump_group life
        return
    fi

    # poweroff -f in the guest: on_poweroff=destroy ends the domain
    t1=$(up)
    send $H l2life "poweroff -f"
    if wait_gone $H l2life 40; then
        check guest-poweroff PASS "domain gone $(since "$t1") s after poweroff -f in L2"
    else
        check guest-poweroff FAIL "domain still listed 40 s after poweroff -f in L2: $(rxq $H list l2life | tail -n 1 | oneline); console: $(context $H | tail -n 2 | oneline)"
        rxq $H destroy l2life >/dev/null
        wait_gone $H l2life 30 || say "l2life survived rxl destroy"
    fi
    dump_group life
    say "=== GROUP life END"
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
GROUPS_=$(arg l1groups devices,life | tr ',' ' ')
# L2's kernel messages slow its boot (every byte is a trap through two levels): quiet unless
# l2verbose=1.
QUIET=quiet
[ "$(arg l2verbose 0)" = 1 ] && QUIET=""
say "L1-UP kernel=$(uname -r) cpus=$(nproc) svm=$(grep -c -w svm /proc/cpuinfo) npt=$(grep -c -w npt /proc/cpuinfo) groups=$GROUPS_"
sed 's/^/[L1 info] /' /etc/linux-l1.info >/dev/console
for g in $GROUPS_; do
    case $g in
    devices) plan $CHECKS_devices ;;
    life) plan $CHECKS_life ;;
    *) say "unknown group $g" ;;
    esac
done

for m in $(cat /lib/l1mod/load.list); do
    opt=""
    # vgif=0: an L1 hang was seen once with QEMU's emulated vGIF
    [ "$m" = kvm-amd.ko ] && opt=vgif=0
    insmod "/lib/l1mod/$m" $opt || say "insmod $m failed"
done
CUR_PLAN=$PLANNED
if [ ! -c /dev/kvm ]; then
    fail_unreported "L1 has no /dev/kvm: $(dmesg | grep -iE 'kvm|svm' | tail -n 3 | oneline)"
    finish
fi
ip link set lo up
ip link add br0 type bridge
ip addr add 10.99.0.1/24 dev br0
ip link set br0 up

od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >/etc/rxen/reloc.key
chmod 600 /etc/rxen/reloc.key
cat >/etc/rxen/rxB.toml <<EOF
[relocation]
server = true
port = 8003
address = "127.0.0.1"
hosts-allow = []
key-file = "/etc/rxen/reloc.key"
EOF
rxend --socket $SA --state-dir $DA --no-cgroups >/tmp/rxendA.out 2>&1 &
rxend --socket $SB --state-dir $DB --no-cgroups --config /etc/rxen/rxB.toml >/tmp/rxendB.out 2>&1 &
i=0
while [ $i -lt 30 ] && ! { [ -S $SA ] && [ -S $SB ]; }; do
    sleep 0.5
    i=$((i + 1))
done
if ! [ -S $SA ] || ! [ -S $SB ]; then
    fail_unreported "rxend did not start: A: $(oneline </tmp/rxendA.out) B: $(oneline </tmp/rxendB.out)"
    finish
fi
say "L1 ready: kvm_amd loaded, br0 10.99.0.1/24, rxend A and B (relocation 127.0.0.1:8003) listening"
collector &

for g in $GROUPS_; do
    case $g in
    devices | life)
        t=$(up)
        eval "CUR_PLAN=\$CHECKS_$g"
        group_$g
        fail_unreported "group $g ended without reporting this check"
        timing "group-$g" "$(since "$t")" "whole group"
        ;;
    esac
done
timing l1-total "$(up)" "L1 uptime at the end"
finish
