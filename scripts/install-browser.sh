#!/usr/bin/env bash
# Installs what the console's browser test (tests/suite/console.rs) needs,
# only what is missing:
#
# - Debian's chromium and chromium-driver (as root, non-interactive; apt
#   waits for a lock another install holds, e.g. install-deploy-tools.sh
#   running beside it in scripts/test.sh);
# - selenium from PyPI, pinned, into .tools/venv (the test tools' venv,
#   see scripts/install-azurite.sh). The test hands selenium the Debian
#   driver and browser paths, so Selenium Manager never downloads one.
#
#   bash scripts/install-browser.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# 4.52 and later need a certifi newer than PyPI had when this was pinned.
PY_PACKAGES=(selenium==4.51.0)

# A Chrome that is already there does too (GitHub's Ubuntu runners ship
# google-chrome and chromedriver; their chromium package is a snap stub).
have_browser() {
    local b
    for b in chromium chromium-browser google-chrome google-chrome-stable; do
        command -v "$b" >/dev/null 2>&1 && return 0
    done
    return 1
}
need=()
have_browser || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || [ -x "${CHROMEWEBDRIVER:-/nonexistent}/chromedriver" ] \
    || need+=(chromium-driver)
if ((${#need[@]})); then
    apt_install "${need[@]}"
else
    echo "a browser and its driver are already installed"
fi

venv_install .tools/venv "${PY_PACKAGES[@]}"
