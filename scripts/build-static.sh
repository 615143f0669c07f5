#!/usr/bin/env bash
# Build acrpull as one statically linked binary and check that `file` agrees.
#
# glibc with +crt-static and an explicit --target (so proc-macro crates still build for the
# host) works on a fresh machine with only the default toolchain; the musl target would need
# `rustup target add`, which a machine without internet access to rustup cannot do.
# Output: target/x86_64-unknown-linux-gnu/release/acrpull (under $CARGO_TARGET_DIR if set)
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target "$target" --bin acrpull
bin="${CARGO_TARGET_DIR:-target}/$target/release/acrpull"
desc=$(file -b "$bin")
echo "$bin: $desc"
case "$desc" in
  *"statically linked"*|*"static-pie linked"*) ;;
  *) echo "error: $bin is not statically linked" >&2; exit 1 ;;
esac
# It must run without a loader or shared libraries.
"$bin" --version
