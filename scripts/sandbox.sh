#!/usr/bin/env bash
# Run acrpull locally against stand-ins for Kubernetes and Azure: builds the controller and the
# sandbox (release, so the wait happens once), then hands over to the sandbox. Every argument
# goes to it; see `scripts/sandbox.sh --help` and docs/sandbox.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p acrpull -p acrpull-sandbox --bins
exec target/release/acrpull-sandbox "$@"
