#!/usr/bin/env bash
# Installs what the Azure Blob adapter tests need, pinned, only if missing:
#
# - the Azurite blob emulator (npm) into .tools/azurite; the tests start
#   .tools/azurite/node_modules/.bin/azurite-blob themselves
#   (tests/common/azurite.rs);
# - the official Python SDK and pyarrow into .tools/venv (the venv
#   scripts/bench.sh uses), for scripts/azure_crosscheck.py; and the
#   OpenTelemetry protocol definitions (opentelemetry-proto, protobuf) for
#   the OTLP receiver of tests/suite/otel.rs (scripts/otlp_receiver.py).
#
#   bash scripts/install-azurite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# azure_storage_blob 1.1 sends x-ms-version 2026-04-06, which Azurite knows
# from 3.37.0 on. 3.37 declares node >= 22 but runs on node 20 (the tests pass
# on it); npm only warns about the engine.
AZURITE_VERSION=3.37.0
PY_PACKAGES=(azure-storage-blob==12.31.1 pyarrow==26.0.1 opentelemetry-proto==1.45.2 protobuf==7.36.2
    openapi-spec-validator==0.9.0)

dir=.tools/azurite
bin="$dir/node_modules/.bin/azurite-blob"
installed=""
if [ -f "$dir/node_modules/azurite/package.json" ]; then
    installed=$(node -p "require('./$dir/node_modules/azurite/package.json').version" 2>/dev/null || true)
fi
if [ "$installed" = "$AZURITE_VERSION" ] && [ -x "$bin" ]; then
    echo "azurite $AZURITE_VERSION already in $dir"
else
    command -v npm >/dev/null 2>&1 || { echo "npm is needed to install azurite" >&2; exit 1; }
    mkdir -p "$dir"
    echo "installing azurite $AZURITE_VERSION into $dir"
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error --omit=dev \
        --no-save "azurite@$AZURITE_VERSION"
    "$bin" --version
fi

venv_install .tools/venv "${PY_PACKAGES[@]}"
