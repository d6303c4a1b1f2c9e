"""Freshness at a steady rate: how long after a record is fetched (and after
it is available at the source) it is queryable. Called by scripts/bench.sh.

    python bench_freshness.py BIN [RATE] [SECONDS] [EXTRA_TOML]

Starts `hubflow demo-source` producing RATE records a second (default
10,000) and `hubflow run` with the default configuration reading it
(cursor pagination, 1,000 records a page), for SECONDS (default 60), then
stops hubflow with SIGTERM. Two views of the same run:
- inside: p50/p99 of `hubflow_end_to_end_latency_seconds` (fetched →
  committed in a curated file), from the admin port's /metrics at the end;
- outside: once a second, DuckDB counts the rows of the curated files; the
  lag is how many seconds of the source's output are not queryable yet,
  (available - queryable) / RATE, which includes the fetcher's wait between
  polls. The first 10 seconds (start-up) are left out.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import duckdb

from bench_e2e import TOKEN, free_port, write_config

def quantile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def histogram_quantile(text, name, q):
    """Prometheus-style quantile (linear within the bucket) over every series."""
    buckets = {}
    for line in text.splitlines():
        if not line.startswith(name + "_bucket"):
            continue
        labels, value = line.rsplit(" ", 1)
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        bound = float("inf") if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0.0) + float(value)
    if not buckets:
        return float("nan"), 0
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower, int(total)
            width = count - below
            share = (rank - below) / width if width else 0.0
            return lower + (bound - lower) * share, int(total)
        lower, below = bound, count
    return bounds[-1], int(total)


def main():
    binary = sys.argv[1]
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 10_000.0
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    extra = sys.argv[4] if len(sys.argv) > 4 else ""
    work = tempfile.mkdtemp(prefix="hubflow-fresh-")
    demo_port, admin_port = free_port(), free_port()
    total = int(rate * (seconds + 30))
    demo = subprocess.Popen(
        [binary, "demo-source", "--addr", f"127.0.0.1:{demo_port}", "--total", str(total), "--rate", str(rate)],
        stderr=subprocess.PIPE,
        text=True,
    )
    demo.stderr.readline()  # "demo api on ...": the records start now
    t_start = time.time()
    source = f"""name = "fresh"
url = "http://127.0.0.1:{demo_port}/v1/events"
query = {{ limit = "1000" }}
records = "data"
id_field = "id"
pagination = {{ type = "cursor", param = "cursor", from = "next_cursor" }}"""
    config = write_config(work, admin_port, source, extra)
    env = dict(os.environ, HUBFLOW_LOG=os.environ.get("HUBFLOW_LOG", "warn"))
    env.pop("HUBFLOW_ADMIN_TOKEN", None)
    node = subprocess.Popen([binary, "run", "--quiet", "--config", config], env=env)
    curated = f"{work}/data/blobs/curated/fresh"
    con = duckdb.connect()
    con.execute("SET threads = 1")
    lags = []
    try:
        while time.time() - t_start < seconds:
            time.sleep(1.0)
            now = time.time()
            if not glob.glob(f"{curated}/**/*.parquet", recursive=True):
                continue
            try:
                (queryable,) = con.execute(
                    f"SELECT count(*) FROM read_parquet('{curated}/**/*.parquet', hive_partitioning=false)"
                ).fetchone()
            except duckdb.Error:
                continue  # a file being renamed into place
            available = min(total, (now - t_start) * rate)
            if now - t_start >= 10:
                lags.append(max(0.0, (available - queryable) / rate))
        req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/metrics")
        req.add_header("Authorization", f"Bearer {TOKEN}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            metrics = resp.read().decode()
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=120)
        demo.kill()
    p50, n = histogram_quantile(metrics, "hubflow_end_to_end_latency_seconds", 0.50)
    p99, _ = histogram_quantile(metrics, "hubflow_end_to_end_latency_seconds", 0.99)
    lags.sort()
    print(f"\n### freshness at {rate:,.0f} records/s for {seconds:.0f} s\n")
    print("| view | p50 | p99 | samples |")
    print("|---|---|---|---|")
    print(f"| inside: `hubflow_end_to_end_latency_seconds` (fetched → committed) | {p50:.2f} s | {p99:.2f} s | {n:,} records |")
    print(f"| outside: lag of the curated table behind the source (DuckDB count once a second) | {quantile(lags, 0.5):.2f} s | {quantile(lags, 0.99):.2f} s | {len(lags)} probes |")
    print(json.dumps({"p50": p50, "p99": p99, "outside_p50": quantile(lags, 0.5), "outside_p99": quantile(lags, 0.99)}))


if __name__ == "__main__":
    main()
