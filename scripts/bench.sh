#!/usr/bin/env bash
# Scale benchmark of the real acrpull binary against the in-process stand-ins (see
# BENCHMARKS.md). Builds both binaries in release mode, then runs the bench with the given
# arguments, e.g. scripts/bench.sh --n 1000,10000 --runs 3 --json bench.json
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p acrpull -p acrpull-bench --bins && exec target/release/acrpull-bench "$@"
