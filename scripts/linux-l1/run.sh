#!/usr/bin/env bash
# scripts/linux-l1/run.sh: proves that stock Debian Linux runs as an rxen guest.
#
# /dev/kvm on rxen's test machines cannot run a stock Linux kernel, so this harness nests:
#
#   this host
#   └─ qemu-system-x86_64 -accel tcg (an emulated AMD EPYC with SVM and NPT)   "L1"
#      └─ Debian's cloud kernel, a busybox initramfs, the stock kvm/kvm_amd modules,
#         two rxends (rxl, rxend, rxen-vmm from this checkout)
#         └─ rxen domains running Debian's stock kernels (cloud and generic)   "L2"
#
# L1's init (l1-init.sh) runs groups of scenarios with real rxl commands and prints
# `CHECK <name> PASS|FAIL <detail>` lines on its serial console; L2's init (l2-init.sh)
# prints `L2-...` markers and answers commands typed on its console. This script fetches
# Debian's packages (cached), builds both initramfs images, boots L1 under a watchdog (one
# retry when L1 stalls or never finishes), and prints the verdict.
#
# usage: scripts/linux-l1/run.sh [run|build|fetch]     (default: run)
# environment:
#   RXEN_LINUX_WORK    cache of downloads and extracted packages  [/var/tmp/rxen-linux-l1]
#   RXEN_LINUX_BIN     directory holding rxl, rxend, rxen-vmm      [<checkout>/target/debug]
#   RXEN_LINUX_OUT     where this run's images and logs go        [$RXEN_LINUX_WORK/runs/<time>]
#   RXEN_LINUX_GROUPS  scenario groups L1 runs, comma separated   [devices,life]
#   RXEN_LINUX_STALL   watchdog: seconds without L1 serial output before QEMU is killed [90]
#   RXEN_LINUX_LIMIT   wall-clock limit of one L1 run, seconds     [900]
#   RXEN_LINUX_TRIES   L1 runs to try until one finishes           [2]
#   RXEN_LINUX_NO_APT  1: never call apt-get (use the cache only)
#   RXEN_LINUX_L2_VERBOSE  1: L2 kernels print all their messages (slower; for debugging)
# exit status: 0 every check passed; 1 a check failed; 2 no L1 run finished (no verdict);
#              77 QEMU (or another host tool) is missing and cannot be installed.
# outputs in $RXEN_LINUX_OUT: l1-tryN.serial (L1's console), checks.txt (the CHECK lines of
# the run that counts), summary.txt (tries, timings, checks), harness.log.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODE=${1:-run}
W=${RXEN_LINUX_WORK:-/var/tmp/rxen-linux-l1}
BIN=${RXEN_LINUX_BIN:-$ROOT/target/debug}
OUT=${RXEN_LINUX_OUT:-$W/runs/$(date -u +%Y%m%dT%H%M%SZ)-$$}
L1GROUPS=${RXEN_LINUX_GROUPS:-devices,life}
STALL=${RXEN_LINUX_STALL:-90}
LIMIT=${RXEN_LINUX_LIMIT:-900}
TRIES=${RXEN_LINUX_TRIES:-2}
L1SMP=2
L1MEM=3072
# Modules L1 loads (with their dependencies): KVM for AMD, and a bridge with TAPs for vifs.
L1_MODULES="kvm_amd bridge tun"
# Modules a stock kernel needs for rxen's devices; only the modular ones are loaded.
L2_MODULES="virtio virtio_ring virtio_mmio virtio_blk virtio_net virtio_balloon button evdev i8042 atkbd"

case $MODE in run | build | fetch) ;; *)
    echo "usage: $0 [run|build|fetch]" >&2
    exit 2
    ;;
esac

mkdir -p "$W" "$OUT"
OUT=$(cd "$OUT" && pwd)
T0=$(date +%s)
log() { echo "[linux-l1 +$(($(date +%s) - T0))s] $*" | tee -a "$OUT/harness.log" >&2; }
die() {
    log "error: $*"
    exit 2
}
TIMINGS=()
timing() { TIMINGS+=("$1: $2 s"); }

QEMU_PID=""
cleanup() {
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        sleep 1
        kill -9 "$QEMU_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# 1. Host tools
# ---------------------------------------------------------------------------------------------
APT_UPDATED=0
apt_ok() { [ "${RXEN_LINUX_NO_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; }
apt_update() {
    [ $APT_UPDATED = 1 ] && return 0
    apt_ok || return 1
    log "apt-get update"
    APT_UPDATED=1
    timeout 300 apt-get update -qq >>"$OUT/harness.log" 2>&1
}

host_tools() {
    local missing=() t0
    t0=$(date +%s)
    command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
    command -v cpio >/dev/null 2>&1 || missing+=(cpio)
    command -v ip >/dev/null 2>&1 || [ -x /sbin/ip ] || [ -x /usr/sbin/ip ] || missing+=(iproute2)
    command -v objcopy >/dev/null 2>&1 || missing+=(binutils)
    if [ ${#missing[@]} -gt 0 ]; then
        if apt_ok && [ "$(id -u)" = 0 ]; then
            log "installing ${missing[*]}"
            export DEBIAN_FRONTEND=noninteractive
            apt_update || true
            timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" \
                >>"$OUT/harness.log" 2>&1 || true
        fi
    fi
    for t in qemu-system-x86_64 cpio objcopy dpkg-deb gzip ldd; do
        if ! command -v "$t" >/dev/null 2>&1; then
            log "MISSING: $t is missing and could not be installed (needs root and apt-get)"
            exit 77
        fi
    done
    timing "host tools" $(($(date +%s) - t0))
}

# ---------------------------------------------------------------------------------------------
# 2. Debian packages: resolved through the metapackages, downloaded once per version
# ---------------------------------------------------------------------------------------------
# Prints "PACKAGE VERSION" of the versioned kernel package a metapackage depends on now.
# shellcheck disable=SC2317  # called through fetch_pkg
resolve_kernel() {
    local meta=$1 dep ver
    dep=$(apt-cache depends "$meta" 2>/dev/null |
        sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n 1)
    [ -n "$dep" ] || return 1
    ver=$(apt-cache show --no-all-versions "$dep" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
    [ -n "$ver" ] || return 1
    echo "$dep $ver"
}

# shellcheck disable=SC2317  # called through fetch_pkg
resolve_plain() {
    local ver
    ver=$(apt-cache show --no-all-versions "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
    [ -n "$ver" ] || return 1
    echo "$1 $ver"
}

# fetch_pkg RESOLVER ARG NAME: downloads and extracts a package into $W/pkgs/<pkg>_<version>
# and prints that directory. Falls back to the last one fetched when apt cannot help.
fetch_pkg() {
    local resolver=$1 arg=$2 name=$3 r pkg ver key dir deb _try
    for _try in 1 2; do
        r=""
        if apt_ok; then
            r=$($resolver "$arg") || { apt_update && r=$($resolver "$arg"); } || r=""
        fi
        if [ -z "$r" ]; then
            break
        fi
        pkg=${r% *}
        ver=${r#* }
        key=${pkg}_${ver//:/%3a}
        dir=$W/pkgs/$key
        if [ -f "$dir/.done" ]; then
            echo "$dir" >"$W/pkgs/$name.last"
            echo "$dir"
            return 0
        fi
        log "downloading $pkg $ver (for $name)"
        mkdir -p "$W/debs/$key"
        if (cd "$W/debs/$key" && timeout 600 apt-get download -q "$pkg=$ver" >>"$OUT/harness.log" 2>&1); then
            deb=$(ls "$W/debs/$key"/*.deb | head -n 1)
            rm -rf "$dir.tmp"
            mkdir -p "$dir.tmp"
            dpkg-deb -x "$deb" "$dir.tmp"
            touch "$dir.tmp/.done"
            rm -rf "$dir"
            mv "$dir.tmp" "$dir"
            echo "$dir" >"$W/pkgs/$name.last"
            echo "$dir"
            return 0
        fi
        # The lists may name a version the mirror has replaced: update once and resolve again.
        if [ $APT_UPDATED = 1 ] || ! apt_update; then
            break
        fi
    done
    if [ -f "$W/pkgs/$name.last" ] && [ -f "$(cat "$W/pkgs/$name.last")/.done" ]; then
        log "warning: could not resolve or download $arg; using the cached $(basename "$(cat "$W/pkgs/$name.last")")"
        cat "$W/pkgs/$name.last"
        return 0
    fi
    die "cannot fetch $arg (apt-get failed and nothing is cached; see $OUT/harness.log)"
}

KCLOUD="" KGEN="" KVER_CLOUD="" KVER_GEN="" BUSYBOX=""
kernel_release() {
    local d
    d=$(ls -d "$1"/lib/modules/*/ 2>/dev/null | head -n 1)
    [ -n "$d" ] || die "no lib/modules in $1"
    basename "$d"
}

fetch_all() {
    local t0
    t0=$(date +%s)
    exec 9>"$W/.lock"
    flock -w 900 9 || die "another run holds $W/.lock"
    mkdir -p "$W/pkgs" "$W/debs"
    # busybox: the host's if it is static, else Debian's busybox-static package
    if command -v busybox >/dev/null 2>&1 && ! ldd "$(command -v busybox)" >/dev/null 2>&1; then
        BUSYBOX=$(command -v busybox)
    else
        BUSYBOX=$(fetch_pkg resolve_plain busybox-static busybox-static)/bin/busybox
    fi
    [ -x "$BUSYBOX" ] || die "no static busybox ($BUSYBOX)"
    KCLOUD=$(fetch_pkg resolve_kernel linux-image-cloud-amd64 kernel-cloud)
    KGEN=$(fetch_pkg resolve_kernel linux-image-amd64 kernel-generic)
    KVER_CLOUD=$(kernel_release "$KCLOUD")
    KVER_GEN=$(kernel_release "$KGEN")
    # The packages ship no modules.dep (their postinst runs depmod): make it once.
    for k in "$KCLOUD:$KVER_CLOUD" "$KGEN:$KVER_GEN"; do
        if [ ! -s "${k%%:*}/lib/modules/${k#*:}/modules.dep" ]; then
            if command -v depmod >/dev/null 2>&1; then
                depmod -b "${k%%:*}" "${k#*:}"
            else
                "$BUSYBOX" depmod -b "${k%%:*}" "${k#*:}"
            fi
        fi
    done
    # Keep only the versions in use: security updates replace kernel packages.
    local keep d
    keep=" $(basename "$KCLOUD") $(basename "$KGEN") "
    case $BUSYBOX in "$W"/pkgs/*) keep="$keep$(basename "$(dirname "$(dirname "$BUSYBOX")")") " ;; esac
    for d in "$W"/pkgs/*/ "$W"/debs/*/; do
        [ -d "$d" ] || continue
        case $keep in *" $(basename "$d") "*) ;; *)
            log "removing the unused cached $(basename "$d")"
            rm -rf "$d"
            ;;
        esac
    done
    flock -u 9
    log "kernels: L1 and L2 cloud $KVER_CLOUD ($(basename "$KCLOUD")), L2 generic $KVER_GEN ($(basename "$KGEN")); busybox $BUSYBOX"
    timing "fetch (downloads and extraction; 0 when cached)" $(($(date +%s) - t0))
}

# ---------------------------------------------------------------------------------------------
# 3. Images
# ---------------------------------------------------------------------------------------------
# modules_for KROOT KVER NAMES...: prints "load PATH" (dependencies first, each once),
# "builtin NAME" or "missing NAME" per requested module, read from modules.dep/.builtin.
modules_for() {
    local md=$1/lib/modules/$2
    shift 2
    awk -v want="$*" '
        function norm(p,  b) { b = p; sub(/.*\//, "", b); sub(/\.ko(\.(xz|zst|gz))?$/, "", b); gsub(/-/, "_", b); return b }
        function visit(n,  a, k, i) {
            if (n in seen) return
            seen[n] = 1
            k = split(deps[n], a, " ")
            for (i = k; i >= 1; i--) visit(a[i])
            print "load " path[n]
        }
        FILENAME ~ /modules\.builtin$/ { builtin[norm($1)] = 1; next }
        {
            p = $1; sub(/:$/, "", p); n = norm(p); path[n] = p; deps[n] = ""
            for (i = 2; i <= NF; i++) deps[n] = deps[n] " " norm($i)
        }
        END {
            k = split(want, w, " ")
            for (i = 1; i <= k; i++) {
                n = w[i]; gsub(/-/, "_", n)
                if (n in builtin) print "builtin " n
                else if (n in path) visit(n)
                else print "missing " n
            }
        }' "$md/modules.builtin" "$md/modules.dep"
}

# copy_modules KROOT KVER DESTDIR NAMES...: copies the modular ones (uncompressed) into
# DESTDIR with load.list (load order) and builtin.list.
copy_modules() {
    local kroot=$1 kver=$2 dest=$3 kind p f
    shift 3
    mkdir -p "$dest"
    : >"$dest/load.list"
    : >"$dest/builtin.list"
    while read -r kind p; do
        case $kind in
        load)
            f=$(basename "$p")
            case $f in
            *.ko.xz) xz -dc "$kroot/lib/modules/$kver/$p" >"$dest/${f%.xz}" ;;
            *.ko.zst) zstd -qdc "$kroot/lib/modules/$kver/$p" >"$dest/${f%.zst}" ;;
            *.ko.gz) gzip -dc "$kroot/lib/modules/$kver/$p" >"$dest/${f%.gz}" ;;
            *) cp "$kroot/lib/modules/$kver/$p" "$dest/$f" ;;
            esac
            echo "${f%.ko*}.ko" >>"$dest/load.list"
            ;;
        builtin) echo "$p" >>"$dest/builtin.list" ;;
        missing) echo "$p (not built)" >>"$dest/builtin.list" ;;
        esac
    done < <(modules_for "$kroot" "$kver" "$@")
    log "  $kver modules: load $(tr '\n' ' ' <"$dest/load.list")| built in or absent: $(tr '\n' ' ' <"$dest/builtin.list")"
}

# copy_libs ROOT FILE...: copies the shared libraries ldd names (and the loader) into ROOT.
copy_libs() {
    local root=$1 lib
    shift
    for f in "$@"; do
        ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^[ \t]*\//{print $1}'
    done | sort -u | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

build_images() {
    local t0 b ip l2 l1 f
    t0=$(date +%s)
    for b in rxl rxend rxen-vmm; do
        [ -x "$BIN/$b" ] || die "$BIN/$b is missing: build the binaries first (cargo build --bins) or set RXEN_LINUX_BIN"
    done
    rm -rf "$OUT/build"
    mkdir -p "$OUT/build"

    # L2: busybox, the modules rxen's devices need, the scenario init
    l2=$OUT/build/l2root
    mkdir -p "$l2"/{bin,dev,proc,sys,tmp,etc/acpi/PWRF,lib/mod}
    cp "$BUSYBOX" "$l2/bin/busybox"
    cp "$HERE/l2-init.sh" "$l2/init"
    cp "$HERE/common.sh" "$l2/common.sh"
    chmod 755 "$l2/init"
    # busybox acpid runs /etc/acpi/PWRF/00000080 when the power button's KEY_POWER arrives
    printf '#!/bin/sh\necho "L2-POWER-BUTTON pressed: powering off" >/dev/console\nexec poweroff -f\n' \
        >"$l2/etc/acpi/PWRF/00000080"
    chmod 755 "$l2/etc/acpi/PWRF/00000080"
    # shellcheck disable=SC2086
    copy_modules "$KCLOUD" "$KVER_CLOUD" "$l2/lib/mod/$KVER_CLOUD" $L2_MODULES
    # shellcheck disable=SC2086
    copy_modules "$KGEN" "$KVER_GEN" "$l2/lib/mod/$KVER_GEN" $L2_MODULES
    (cd "$l2" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -6) >"$OUT/build/l2-initrd.gz"

    # L1: busybox, iproute2's ip (rxend plumbs TAPs with `ip tuntap`), rxen, KVM and bridge
    # modules, the L2 kernels and initramfs
    l1=$OUT/build/l1root
    mkdir -p "$l1"/{bin,dev,proc,sys,tmp,run,etc,var/lib,l2,opt/rxen,usr/sbin,lib/l1mod}
    cp "$BUSYBOX" "$l1/bin/busybox"
    cp "$HERE/l1-init.sh" "$l1/init"
    cp "$HERE/common.sh" "$l1/common.sh"
    chmod 755 "$l1/init"
    for b in rxl rxend rxen-vmm; do
        objcopy --strip-debug "$BIN/$b" "$l1/opt/rxen/$b"
    done
    ip=$(command -v ip || ls /usr/sbin/ip /sbin/ip 2>/dev/null | head -n 1)
    cp -L "$ip" "$l1/usr/sbin/ip"
    copy_libs "$l1" "$l1"/opt/rxen/* "$l1/usr/sbin/ip"
    # shellcheck disable=SC2086
    copy_modules "$KCLOUD" "$KVER_CLOUD" "$l1/lib/l1mod" $L1_MODULES
    cp "$KCLOUD/boot/vmlinuz-$KVER_CLOUD" "$l1/l2/vmlinuz-cloud"
    cp "$KGEN/boot/vmlinuz-$KVER_GEN" "$l1/l2/vmlinuz-generic"
    cp "$OUT/build/l2-initrd.gz" "$l1/l2/initrd.gz"
    echo 'root:x:0:0:root:/root:/bin/sh' >"$l1/etc/passwd"
    echo 'root:x:0:' >"$l1/etc/group"
    {
        echo "l1_kernel=$KVER_CLOUD"
        echo "l2_cloud=$KVER_CLOUD"
        echo "l2_generic=$KVER_GEN"
        echo "rxen_bin=$BIN"
    } >"$l1/etc/linux-l1.info"
    (cd "$l1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$OUT/build/l1.cpio"
    L1KERNEL=$KCLOUD/boot/vmlinuz-$KVER_CLOUD
    log "images: L1 initramfs $(du -h "$OUT/build/l1.cpio" | cut -f1) (uncompressed), L2 initramfs $(du -h "$OUT/build/l2-initrd.gz" | cut -f1)"
    timing "build images" $(($(date +%s) - t0))
}

# ---------------------------------------------------------------------------------------------
# 4. Boot L1 under QEMU TCG with a watchdog on its serial log
# ---------------------------------------------------------------------------------------------
# boot_l1 N: sets OUTCOME (done, stalled, timeout or exited) and SECS.
OUTCOME="" SECS=0
boot_l1() {
    local n=$1 serial=$OUT/l1-try$1.serial start now last size lastsize=-1 outcome=exited
    rm -f "$serial"
    : >"$serial"
    start=$(date +%s)
    last=$start
    # -xsave: QEMU's SVM does not intercept XSETBV, so L2 would see an XCR0 that
    # disagrees with CPUID.0xD. Two L1 CPUs give a 2-vCPU L2 real parallelism.
    timeout -k 10 $((LIMIT + 60)) qemu-system-x86_64 -accel tcg,thread=multi -M pc -cpu EPYC,+svm,+npt,-xsave \
        -smp "$L1SMP" -m "$L1MEM" -kernel "$L1KERNEL" -initrd "$OUT/build/l1.cpio" \
        -append "console=ttyS0 loglevel=4 panic=-1 tsc=unstable l1groups=$L1GROUPS l2verbose=${RXEN_LINUX_L2_VERBOSE:-0}" \
        -display none -nodefaults -no-user-config -no-reboot \
        -serial "file:$serial" >"$OUT/l1-try$n.qemu" 2>&1 &
    QEMU_PID=$!
    while kill -0 "$QEMU_PID" 2>/dev/null; do
        sleep 2
        now=$(date +%s)
        size=$(stat -c %s "$serial" 2>/dev/null || echo 0)
        if [ "$size" != "$lastsize" ]; then
            lastsize=$size
            last=$now
        fi
        if [ $((now - last)) -ge "$STALL" ]; then
            echo "=== WATCHDOG: no L1 serial output for ${STALL}s; QEMU killed" >>"$serial"
            outcome=stalled
            break
        fi
        if [ $((now - start)) -ge "$LIMIT" ]; then
            echo "=== WATCHDOG: L1 ran past ${LIMIT}s; QEMU killed" >>"$serial"
            outcome=timeout
            break
        fi
    done
    cleanup
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=""
    if [ $outcome = exited ] && grep -aq '^L1-DONE' "$serial"; then
        outcome="done"
    fi
    OUTCOME=$outcome
    SECS=$(($(date +%s) - start))
}

# ---------------------------------------------------------------------------------------------
# 5. Verdict
# ---------------------------------------------------------------------------------------------
verdict() {
    local serial=$1 checks=$OUT/checks.txt name fails=0 total=0
    tr -d '\r' <"$serial" | grep -a -E '^CHECK [^ ]+ (PASS|FAIL)' >"$checks" || true
    # A planned check without a result (L1 stopped early) fails.
    for name in $(tr -d '\r' <"$serial" | sed -n 's/^PLAN //p'); do
        grep -q "^CHECK $name " "$checks" || echo "CHECK $name FAIL no result: L1 stopped before this check" >>"$checks"
    done
    total=$(wc -l <"$checks")
    fails=$(grep -c ' FAIL' "$checks" || true)
    {
        echo "checks: $((total - fails)) of $total passed"
        cat "$checks"
        echo "timings reported by L1:"
        tr -d '\r' <"$serial" | sed -n 's/^TIME /  /p'
    } >>"$OUT/summary.txt"
    [ "$total" -gt 0 ] && [ "$fails" = 0 ]
}

# The whole run is one function, read before it starts: editing this file while a run is in
# progress (a checkout changing under a long test) cannot change what the run executes.
main() {
    host_tools
    fetch_all
    [ "$MODE" = fetch ] && exit 0
    build_images
    [ "$MODE" = build ] && { log "images in $OUT/build"; exit 0; }

    : >"$OUT/summary.txt"
    result=2
    accepted=""
    for n in $(seq 1 "$TRIES"); do
        log "booting L1 (try $n of $TRIES; groups $L1GROUPS; watchdog ${STALL}s, limit ${LIMIT}s)"
        boot_l1 "$n"
        outcome=$OUTCOME
        secs=$SECS
        log "try $n: $outcome after ${secs}s (log: $OUT/l1-try$n.serial)"
        echo "try $n: $outcome after ${secs}s ($OUT/l1-try$n.serial)" >>"$OUT/summary.txt"
        timing "L1 run, try $n ($outcome)" "$secs"
        accepted=$OUT/l1-try$n.serial
        [ "$outcome" = "done" ] && break
    done
    if verdict "$accepted"; then
        result=0
    elif grep -q '^try .*: done' "$OUT/summary.txt"; then
        result=1
    fi
    {
        echo "harness timings:"
        for t in "${TIMINGS[@]}"; do echo "  $t"; done
        echo "  total: $(($(date +%s) - T0)) s"
    } >>"$OUT/summary.txt"
    cat "$OUT/summary.txt" >&2
    case $result in
    0) log "PASS: every check passed (stock Linux runs as an rxen guest)" ;;
    1) log "FAIL: $(grep -c ' FAIL' "$OUT/checks.txt") check(s) failed; see $OUT/summary.txt and $accepted" ;;
    *) log "ERROR: no L1 run finished; see $accepted" ;;
    esac
    return $result
}

main "$@"; exit $?
