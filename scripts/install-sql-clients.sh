#!/usr/bin/env bash
# Installs the SQL clients the SQL server's tests (tests/suite/sql_server.rs)
# drive, only what is missing:
#
# - Debian's postgresql-client (psql) and openssl (the TLS test's
#   certificate), as root, non-interactive;
# - psycopg (with its binary build of libpq) and the ADBC Flight SQL
#   driver (with pyarrow for Arrow results and pandas for data frames)
#   from PyPI, pinned, into
#   .tools/venv (the test tools' venv, see scripts/install-azurite.sh).
#
#   bash scripts/install-sql-clients.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

PY_PACKAGES=(psycopg==3.3.9 psycopg-binary==3.3.9 adbc-driver-flightsql==1.13.0 adbc-driver-manager==1.13.0 pyarrow==26.0.1
    pandas==3.1.1)

missing=()
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
apt_install "${missing[@]}"

venv_install .tools/venv "${PY_PACKAGES[@]}"
