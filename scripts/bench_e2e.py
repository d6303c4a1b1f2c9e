"""End-to-end load of one dataset through `hubflow run`, against DuckDB on
the same rows in the same run. Called by scripts/bench.sh.

    python bench_e2e.py BIN DATASET_DIR NAME [EXTRA_TOML]

DATASET_DIR holds pages/ (served on loopback by static_api.py, next-url
pagination, 1,000 records a page) and records.ndjson (DuckDB's input).
Measures, for hubflow: wall time from start to exit (`--exit-when-idle`:
everything fetched is curated), CPU seconds (user + system) and peak RSS
of the process; curated files and bytes; and checks that the curated
table holds every record exactly once (count = distinct ids = N). For
DuckDB: NDJSON → zstd Parquet with 2 threads, wall and CPU seconds, bytes.
Prints one markdown table.
"""

import glob
import os
import resource
import subprocess
import sys
import tempfile
import time

import duckdb


def serve(pages_root):
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen(
        [sys.executable, os.path.join(here, "static_api.py"), pages_root],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().split()
    return proc, int(line[1])


def run_hubflow(binary, work, port, extra):
    config = os.path.join(work, "hubflow.toml")
    with open(config, "w") as f:
        f.write(
            f"""
[pipeline]
data_dir = "{work}/data"
[admin]
enabled = false
[[sources]]
name = "bench"
url = "http://127.0.0.1:{port}/pages/00001.json"
records = "data"
id_field = "id"
pagination = {{ type = "next_url", from = "next" }}
{extra}
"""
        )
    env = dict(os.environ, HUBFLOW_LOG=os.environ.get("HUBFLOW_LOG", "warn"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # HUBFLOW_BENCH_WRAP runs hubflow under another command (a profiler:
    # "perf record -g -o /tmp/perf.data --").
    wrap = os.environ.get("HUBFLOW_BENCH_WRAP", "").split()
    subprocess.run(
        wrap
        + [binary, "run", "--exit-when-idle", "--config", config]
        + ([] if os.environ.get("HUBFLOW_BENCH_STATUS") else ["--quiet"]),
        env=env,
        check=True,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_maxrss / 1024.0


def curated_stats(root):
    files = [p for p in glob.glob(f"{root}/**/*.parquet", recursive=True)]
    log = [p for p in glob.glob(f"{root}/_delta_log/*") if os.path.isfile(p)]
    return len(files), sum(os.path.getsize(p) for p in files), sum(os.path.getsize(p) for p in log)


def main():
    binary, dataset, name = sys.argv[1], sys.argv[2], sys.argv[3]
    extra = sys.argv[4] if len(sys.argv) > 4 else ""
    ndjson = os.path.join(dataset, "records.ndjson")
    with open(ndjson, "rb") as f:
        n = sum(1 for line in f if line.strip())
    json_bytes = sum(os.path.getsize(p) for p in glob.glob(f"{dataset}/pages/*.json"))

    # DuckDB first, on a quiet machine, then hubflow.
    work = tempfile.mkdtemp(prefix="hubflow-bench-")
    con = duckdb.connect()
    con.execute("SET threads = 2")
    c0, t0 = time.process_time(), time.perf_counter()
    con.execute(
        f"COPY (SELECT * FROM read_json_auto('{ndjson}', format='newline_delimited')) "
        f"TO '{work}/duck.parquet' (FORMAT parquet, COMPRESSION zstd)"
    )
    duck_wall, duck_cpu = time.perf_counter() - t0, time.process_time() - c0
    duck_bytes = os.path.getsize(f"{work}/duck.parquet")

    server, port = serve(dataset)
    try:
        wall, cpu, rss = run_hubflow(binary, work, port, extra)
    finally:
        server.kill()
    curated = f"{work}/data/blobs/curated/bench"
    files, data_bytes, log_bytes = curated_stats(curated)
    count, distinct = con.execute(
        f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{curated}/**/*.parquet', hive_partitioning=false)"
    ).fetchone()
    ok = "exact" if (count, distinct) == (n, n) else f"WRONG: count {count}, distinct {distinct}"
    print(f"\n### {name}: {n:,} records, {json_bytes / 1e6:.1f} MB of JSON pages ({ok})\n")
    print("| measure | hubflow | DuckDB | ratio |")
    print("|---|---|---|---|")
    print(f"| wall time, JSON pages → queryable Parquet | {wall:.2f} s ({json_bytes / 1e6 / wall:.1f} MB/s) | {duck_wall:.2f} s | {wall / duck_wall:.1f}× |")
    print(f"| CPU seconds | {cpu:.2f} | {duck_cpu:.2f} | {cpu / duck_cpu:.1f}× |")
    total = data_bytes + log_bytes
    print(f"| curated bytes | {total / 1e6:.2f} MB in {files} files | {duck_bytes / 1e6:.2f} MB in 1 file | {total / duck_bytes:.2f}× |")
    print(f"| peak RSS | {rss:.0f} MB | — | — |")
    if ok != "exact":
        sys.exit(1)


if __name__ == "__main__":
    main()
