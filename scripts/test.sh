#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test of every workspace crate, and the
# static release binary check. Run from anywhere; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

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
cargo test --workspace --no-fail-fast

step "short fuzz run (cargo-fuzz on stable, --sanitizer none, 20 s per target)"
FUZZ_STABLE=1 FUZZ_INSTALL=1 scripts/fuzz.sh 20
