#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 30) and prints executions per
# target. Needs cargo-fuzz and a nightly toolchain (libFuzzer + ASan); skips with a message when
# either is missing, so CI can call it unconditionally.
#
#   scripts/fuzz.sh [SECONDS]
#
# Crashes are left in fuzz/artifacts/<target>/; copy a reproducer to fuzz/regressions/<target>/
# and replay it with `cargo +nightly fuzz run <target> fuzz/regressions/<target>/<file>`.
set -euo pipefail

secs="${1:-30}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz not installed (cargo install cargo-fuzz); skipping"
    exit 0
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain (rustup toolchain install nightly); skipping"
    exit 0
fi

targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build >/dev/null
status=0
for t in $targets; do
    mkdir -p "fuzz/corpus/$t"
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    log="$(mktemp)"
    if cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -max_len=8192 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    printf 'fuzz: %-14s %-5s %12s executions in %ss\n' "$t" "$result" "$execs" "$secs"
    if [ "$result" = CRASH ]; then
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -5
    fi
    rm -f "$log"
done
exit $status
