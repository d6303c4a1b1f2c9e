#!/usr/bin/env bash
# Installs `promtool` (Debian's `prometheus` package) for the /metrics format
# check in tests/suite/admin.rs, only when it is missing. Needs root (CI runs the
# test command as root); otherwise says what to do and succeeds, so local
# runs without root still work (the test then skips loudly unless CI=true).
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "promtool is missing: install Debian's 'prometheus' package (apt-get install prometheus) or run as root" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null 2>&1 || {
    echo "the prometheus package did not provide promtool" >&2
    exit 1
}
echo "installed $(promtool --version 2>&1 | head -n1)"
