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

HUBFLOW_BENCH_SCENARIOS (comma-separated, default "calm") adds runs of the
same load, each from an empty data directory, compared with the calm run:
- chaos: an outside driver kills or panics (half each) a random running
  actor through the admin port, HUBFLOW_BENCH_FAULTS_PER_SEC times a second
  (default 5), rotating through fetchers, consumers, writers, transformers,
  notice listeners and supervisors; throughput as a fraction of calm;
- backlog: ingest is paused through the admin port until the whole table
  is in the hub (every record waits there: 30x a raw batch for flights),
  then resumed; peak RSS against the calm run.
"""

import glob
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

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


TOKEN = "bench-admin-token-0123456789"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Admin:
    """The admin port of the hubflow under test."""

    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {TOKEN}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError:
            return None, None

    def wait_up(self, proc):
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit("hubflow exited before its admin port came up")
            if self.call("GET", "/healthz")[0] == 200:
                return
            time.sleep(0.05)
        raise SystemExit("the admin port never came up")


# What the chaos driver rotates through, by path.
KINDS = [
    ("fetcher", re.compile(r"^pipeline/sources/[^/]+$")),
    ("consumer", re.compile(r"^pipeline/ingest/p\d+/consumer$")),
    ("writer", re.compile(r"^pipeline/ingest/p\d+/writer$")),
    ("transformer", re.compile(r"^pipeline/transform/p\d+$")),
    ("listener", re.compile(r"^pipeline/notices/l\d+$")),
    ("supervisor", re.compile(r"^pipeline/(sources|ingest|transform|notices|ingest/p\d+)$")),
]


def running_nodes(tree, out):
    if tree.get("state") == "running":
        out.append(tree["path"])
    for child in tree.get("children") or []:
        running_nodes(child, out)
    return out


def chaos(admin, rate, stop, counts):
    """Faults at `rate` per second until `stop` is set. The running actors
    are read from /status once a second, not before every fault, so the
    rate holds (a fault on an actor that has gone meanwhile is refused and
    counted as such)."""
    rng = random.Random(7)
    turn = 0
    paths, read_at = [], 0.0
    next_at = time.monotonic()
    while True:
        next_at += 1.0 / rate
        if stop.wait(max(0.0, next_at - time.monotonic())):
            break
        if time.monotonic() - read_at >= 1.0:
            code, status = admin.call("GET", "/status")
            if code == 200 and status:
                paths = running_nodes(status.get("tree") or {}, [])
                read_at = time.monotonic()
        for i in range(len(KINDS)):
            kind, pattern = KINDS[(turn + i) % len(KINDS)]
            candidates = [p for p in paths if pattern.match(p)]
            if candidates:
                break
        turn += 1
        if not candidates:
            continue
        action = rng.choice(["kill", "panic"])
        code, _ = admin.call("POST", f"/actors/{action}", {"path": rng.choice(candidates)})
        counts[kind] = counts.get(kind, 0) + 1
        counts["accepted" if code == 200 else "refused"] = counts.get(
            "accepted" if code == 200 else "refused", 0
        ) + 1


def backlog(admin, n, stop):
    """Pause ingest until all `n` records are in the hub, then resume."""
    admin.call("POST", "/pause", {"ingest": True})
    while not stop.wait(0.1):
        code, status = admin.call("GET", "/status")
        progress = (status or {}).get("progress") or {}
        if code == 200 and progress.get("in_hub", 0) >= n and progress.get("sources_caught_up"):
            break
    admin.call("POST", "/resume", {"ingest": True})


def write_config(work, admin_port, source, extra):
    """A hubflow config under `work`: data there, the admin port on
    loopback with the bench token, one [[sources]] table (`source`)."""
    config = os.path.join(work, "hubflow.toml")
    with open(config, "w") as f:
        f.write(
            f"""
[pipeline]
data_dir = "{work}/data"
[admin]
enabled = true
listen = "127.0.0.1:{admin_port}"
token = "{TOKEN}"
[[sources]]
{source}
{extra}
"""
        )
    return config


def run_hubflow(binary, work, port, extra, scenario="calm", n=0):
    admin_port = free_port()
    source = f"""name = "bench"
url = "http://127.0.0.1:{port}/pages/00001.json"
records = "data"
id_field = "id"
pagination = {{ type = "next_url", from = "next" }}"""
    config = write_config(work, admin_port, source, extra)
    env = dict(os.environ, HUBFLOW_LOG=os.environ.get("HUBFLOW_LOG", "warn"))
    env.pop("HUBFLOW_ADMIN_TOKEN", None)
    # HUBFLOW_BENCH_WRAP runs hubflow under another command (a profiler:
    # "perf record -g -o /tmp/perf.data --").
    wrap = os.environ.get("HUBFLOW_BENCH_WRAP", "").split()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        wrap
        + [binary, "run", "--exit-when-idle", "--config", config]
        + ([] if os.environ.get("HUBFLOW_BENCH_STATUS") else ["--quiet"]),
        env=env,
    )
    stop = threading.Event()
    counts = {}
    driver = None
    if scenario != "calm":
        admin = Admin(admin_port)
        admin.wait_up(proc)
        if scenario == "chaos":
            rate = float(os.environ.get("HUBFLOW_BENCH_FAULTS_PER_SEC", "5"))
            driver = threading.Thread(target=chaos, args=(admin, rate, stop, counts))
        elif scenario == "backlog":
            driver = threading.Thread(target=backlog, args=(admin, n, stop))
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
        driver.start()
    # wait4: this child's own peak RSS, not the largest of all children.
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    if driver:
        driver.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"hubflow exited with {os.waitstatus_to_exitcode(status)}")
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024.0, counts


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

    scenarios = [
        x for x in os.environ.get("HUBFLOW_BENCH_SCENARIOS", "calm").split(",") if x and x != "calm"
    ]
    server, port = serve(dataset)
    try:
        wall, cpu, rss, _ = run_hubflow(binary, work, port, extra)
        ok = check(con, work, n)
        runs = []
        for scenario in scenarios:
            run_dir = tempfile.mkdtemp(prefix=f"hubflow-bench-{scenario}-")
            s_wall, _, s_rss, counts = run_hubflow(binary, run_dir, port, extra, scenario, n)
            runs.append((scenario, s_wall, s_rss, counts, check(con, run_dir, n)))
    finally:
        server.kill()
    files, data_bytes, log_bytes = curated_stats(f"{work}/data/blobs/curated/bench")
    print(f"\n### {name}: {n:,} records, {json_bytes / 1e6:.1f} MB of JSON pages ({ok})\n")
    print("| measure | hubflow | DuckDB | ratio |")
    print("|---|---|---|---|")
    print(f"| wall time, JSON pages → queryable Parquet | {wall:.2f} s ({json_bytes / 1e6 / wall:.1f} MB/s) | {duck_wall:.2f} s | {wall / duck_wall:.1f}× |")
    print(f"| CPU seconds | {cpu:.2f} | {duck_cpu:.2f} | {cpu / duck_cpu:.1f}× |")
    total = data_bytes + log_bytes
    print(f"| curated bytes | {total / 1e6:.2f} MB in {files} files | {duck_bytes / 1e6:.2f} MB in 1 file | {total / duck_bytes:.2f}× |")
    print(f"| peak RSS | {rss:.0f} MB | — | — |")
    if runs:
        print("\n| run | wall | throughput vs calm | peak RSS | RSS vs calm | result | faults |")
        print("|---|---|---|---|---|---|---|")
        print(f"| calm | {wall:.2f} s | 1.00 | {rss:.0f} MB | 1.00 | {ok} | — |")
        for scenario, s_wall, s_rss, counts, s_ok in runs:
            faults = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "—"
            print(f"| {scenario} | {s_wall:.2f} s | {wall / s_wall:.2f} | {s_rss:.0f} MB | {s_rss / rss:.2f} | {s_ok} | {faults} |")
    if ok != "exact" or any(r[4] != "exact" for r in runs):
        sys.exit(1)


def check(con, work, n):
    """Every record exactly once in the curated table."""
    curated = f"{work}/data/blobs/curated/bench"
    count, distinct = con.execute(
        f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{curated}/**/*.parquet', hive_partitioning=false)"
    ).fetchone()
    return "exact" if (count, distinct) == (n, n) else f"WRONG: count {count}, distinct {distinct}"


if __name__ == "__main__":
    main()
