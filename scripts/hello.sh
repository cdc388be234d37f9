#!/usr/bin/env bash
# The main job on a fresh machine: build rxen and boot the example domain
# (the built-in test guest) with its console attached. Ctrl-] detaches;
# typing `shutdown` in the console powers the guest off. Needs root and /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
exec target/release/rxl create -c examples/hello.cfg "$@"
