#!/usr/bin/env bash
# Runs rxen's benchmarks side by side with QEMU/KVM on this machine and writes
# the Markdown table to bench/RESULTS.md (and stdout). Needs root and /dev/kvm.
#   scripts/bench.sh            # the full run (5 repetitions; ~10 minutes on 2 cores)
#   scripts/bench.sh --quick    # a smoke run; does not touch bench/RESULTS.md
#   scripts/bench.sh --runs 3 --only boot,memory
# Extra arguments go to rxen-bench (see `rxen-bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    echo "bench.sh: installing qemu-system-x86 (the peer the benchmark compares with)" >&2
    if command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
    else
        echo "bench.sh: no apt-get; install QEMU's qemu-system-x86_64 yourself (QEMU rows print as pending)" >&2
    fi
fi

# The qcow2 disk rows make their images with qemu-img.
if ! command -v qemu-img >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "bench.sh: installing qemu-utils (qemu-img, for the qcow2 disk rows)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
fi

cargo build --release --workspace --bins

out=bench/RESULTS.md
for a in "$@"; do
    case "$a" in
        --quick|--only) out="" ;;
    esac
done
if [ -n "$out" ]; then
    exec target/release/rxen-bench --out "$out" "$@"
else
    exec target/release/rxen-bench "$@"
fi
