#!/usr/bin/env bash
# Builds rxen in release mode and runs the benchmarks; prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
exec target/release/rxen-bench "$@"
