#!/usr/bin/env bash
# End-to-end load and a same-input comparison with DuckDB.
#
#   bash scripts/bench.sh [RECORDS]     (default 200000)
#
# 1. load: `hubflow run --exit-when-idle` on RECORDS demo records served all
#    at once on loopback: wall time for fetch → hub → raw → Parquet.
# 2. transform: the same records as NDJSON → zstd Parquet, DuckDB vs the
#    hubflow run above (transform is the part both do).
# 3. query: the same aggregate over the same curated Parquet files with
#    `hubflow query` (DataFusion) and DuckDB.
# Uses the release build (the test profile optimises only the hot-path
# crates); DuckDB comes from PyPI into .tools/venv.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -x .tools/venv/bin/python ]; then
    python3 -m venv .tools/venv
    .tools/venv/bin/pip install -q duckdb==1.4.2
fi
cargo build -q --release --bin hubflow
bin=target/release/hubflow

cat > "$work/hubflow.toml" <<TOML
[pipeline]
data_dir = "$work/data"
[batch]
max_age_ms = 300
[transform]
poll_ms = 200
[demo]
total = $N
rate_per_sec = 0.0
default_page_size = 1000
TOML

now() { date +%s.%N; }
t0=$(now)
HUBFLOW_LOG=warn "$bin" run --quiet --exit-when-idle --config "$work/hubflow.toml"
t1=$(now)
load=$(python3 -c "print($t1 - $t0)")

"$bin" demo-source --ndjson "$N" > "$work/demo.ndjson"
curated="$work/data/blobs/curated/demo"
sql_h="SELECT type, count(*) AS n, round(avg(amount), 4) AS avg_amount FROM demo GROUP BY type ORDER BY type"

t2=$(now)
"$bin" query --config "$work/hubflow.toml" "$sql_h" > "$work/q_hubflow.txt"
t3=$(now)
q_hubflow=$(python3 -c "print($t3 - $t2)")

.tools/venv/bin/python - "$work" "$curated" "$N" "$load" "$q_hubflow" <<'PY'
import sys, time, duckdb
work, curated, n, load, q_hubflow = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
con = duckdb.connect()
con.execute("SET threads = 2")
t = time.perf_counter()
con.execute(f"COPY (SELECT * FROM read_json_auto('{work}/demo.ndjson', format='newline_delimited')) "
            f"TO '{work}/duck.parquet' (FORMAT parquet, COMPRESSION zstd)")
duck_transform = time.perf_counter() - t
t = time.perf_counter()
rows = con.execute(f"SELECT type, count(*) AS n, round(avg(amount), 4) FROM read_parquet('{curated}/**/*.parquet', hive_partitioning=true) GROUP BY type ORDER BY type").fetchall()
duck_query = time.perf_counter() - t
total = sum(r[1] for r in rows)
print(f"records: {n} (duckdb counts {total} in hubflow's curated files)")
print(f"hubflow end-to-end (HTTP → hub → raw → Parquet): {load:.2f} s  = {n/load:,.0f} records/s")
print(f"duckdb NDJSON → zstd Parquet only:                {duck_transform:.2f} s  = {n/duck_transform:,.0f} records/s")
print(f"ratio hubflow end-to-end / duckdb transform:       {load/duck_transform:.2f}x")
print(f"query over curated: hubflow {q_hubflow:.3f} s (process start included), duckdb {duck_query:.3f} s, ratio {q_hubflow/duck_query:.2f}x")
PY
cat "$work/q_hubflow.txt"
