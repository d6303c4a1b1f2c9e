#!/usr/bin/env bash
# Everything the tests need, then the checks and the tests.
#
#   bash scripts/test.sh            # fmt, clippy, all tests
#   HUBFLOW_CRASH_SEEDS=1 bash scripts/test.sh   # fewer crash rounds
#
# Installs missing system packages from Debian (pkg-config, libssl-dev for
# the Azure SDK's TLS stack) when run as root; everything else comes from
# crates.io through cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
if ((${#need[@]})); then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    else
        echo "missing system packages: ${need[*]} (install them, or run as root)" >&2
        exit 1
    fi
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# One profile for everything: tests and the crash test's `hubflow` binary
# share the dev build (dependencies optimised, see Cargo.toml).
echo "== fmt"; cargo fmt --all -- --check
echo "== clippy"; cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"; cargo test --workspace --no-fail-fast
