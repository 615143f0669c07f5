#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 30) and prints executions per
# target; exits non-zero when a target finds a crash or an invariant violation.
#
#   scripts/fuzz.sh [SECONDS]
#
# With a nightly toolchain installed it fuzzes with AddressSanitizer (cargo-fuzz's default).
# Without one it uses the stable toolchain and `--sanitizer none`: still coverage-guided
# libFuzzer, with Rust's own checks (bounds, overflow under debug assertions) and each target's
# invariants doing the finding; the library forbids `unsafe` (the binary only calls `mallopt`
# at startup), so ASan would add little. CI runs it this way (FUZZ_STABLE=1 forces it where
# nightly exists). FUZZ_INSTALL=1 installs cargo-fuzz from crates.io when it is missing (CI
# sets it); otherwise a missing cargo-fuzz skips with a message.
#
# Crashes are left in fuzz/artifacts/<target>/; copy a reproducer to fuzz/regressions/<target>/
# and replay it with `cargo fuzz run [--sanitizer none] <target> fuzz/regressions/<target>/<file>`.
set -euo pipefail

secs="${1:-30}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ "${FUZZ_INSTALL:-0}" = 1 ]; then
        echo "fuzz: installing cargo-fuzz"
        cargo install cargo-fuzz --locked --quiet
    else
        echo "fuzz: cargo-fuzz not installed (cargo install cargo-fuzz, or FUZZ_INSTALL=1); skipping"
        exit 0
    fi
fi
if [ "${FUZZ_STABLE:-0}" != 1 ] && rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
    flags=()
    echo "fuzz: nightly toolchain, AddressSanitizer"
else
    fuzz=(cargo fuzz)
    flags=(--sanitizer none)
    echo "fuzz: stable toolchain, --sanitizer none"
fi

targets=$("${fuzz[@]}" list)
"${fuzz[@]}" build "${flags[@]}"
status=0
for t in $targets; do
    mkdir -p "fuzz/corpus/$t"
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    [ -d "fuzz/regressions/$t" ] && seeds+=("fuzz/regressions/$t")
    log="$(mktemp)"
    if "${fuzz[@]}" run "${flags[@]}" "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
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
