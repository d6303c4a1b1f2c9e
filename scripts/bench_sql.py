"""SQL through hubflow's SQL server (Postgres wire protocol and Arrow Flight
SQL) against DuckDB on the same curated files, in the same run. Called by
scripts/bench.sh (`bash scripts/bench.sh sql`).

    python bench_sql.py BIN DATASET_DIR NAME

Lands DATASET_DIR (pages/ served on loopback, as bench_e2e.py) with
`hubflow run --exit-when-idle`, serves the curated table with `hubflow sql
serve`, and times each query through psycopg (connected once; the median
of 7 runs after one warm-up; rows fetched into Python) against DuckDB's
Python API (threads = 2, `fetchall`) reading the same Parquet files, and
through the ADBC Flight SQL driver (connected once; an Arrow table) against
DuckDB's Arrow result (`fetch_arrow_table`), after checking that all three
return the same rows. Prints one markdown table.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

import adbc_driver_flightsql.dbapi as flight
import duckdb
import psycopg

from bench_e2e import free_port, run_hubflow, serve

USER, PASSWORD = "bench", "bench-password-0123"
RUNS = 7

QUERIES = [
    (
        "aggregate: per carrier count, mean delay, distance",
        "SELECT carrier, count(*) AS n, avg(dep_delay) AS mean_delay, sum(distance) AS distance "
        "FROM bench GROUP BY carrier ORDER BY carrier",
    ),
    (
        "selective filter: one aircraft's flights",
        "SELECT year, month, day, dep_time, carrier, flight, origin, dest FROM bench "
        "WHERE tailnum = 'N14228' ORDER BY year, month, day, dep_time",
    ),
    (
        "filter + aggregate: busiest routes in summer",
        "SELECT origin, dest, count(*) AS n FROM bench WHERE month BETWEEN 6 AND 8 "
        "GROUP BY origin, dest ORDER BY n DESC, origin, dest LIMIT 10",
    ),
]


def median_seconds(run):
    run()
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def same(a, b):
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        for x, y in zip(ra, rb):
            if isinstance(x, float) or isinstance(y, float):
                if x is None or y is None or abs(float(x) - float(y)) > 1e-6 * max(1.0, abs(float(y))):
                    return False
            elif x != y:
                return False
    return True


def main():
    binary, dataset, name = sys.argv[1], sys.argv[2], sys.argv[3]
    work = tempfile.mkdtemp(prefix="hubflow-bench-sql-")
    server, port = serve(dataset)
    try:
        run_hubflow(binary, work, port, "")
    finally:
        server.kill()
    curated = f"{work}/data/blobs/curated/bench"
    pg_port, flight_port = free_port(), free_port()
    env = dict(os.environ, HUBFLOW_SQL_USER=USER, HUBFLOW_SQL_PASSWORD=PASSWORD, HUBFLOW_LOG="warn")
    sql = subprocess.Popen(
        [binary, "sql", "serve", "--config", f"{work}/hubflow.toml", "--pg-listen", f"127.0.0.1:{pg_port}",
         "--flight-listen", f"127.0.0.1:{flight_port}"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in sql.stderr:
            if line.startswith("sql: arrow flight sql on"):
                break
        pg = psycopg.connect(host="127.0.0.1", port=pg_port, user=USER, password=PASSWORD, dbname="hubflow")
        adbc = flight.connect(
            f"grpc://127.0.0.1:{flight_port}",
            db_kwargs={"username": USER, "password": PASSWORD},
            autocommit=True,
        )
        duck = duckdb.connect()
        duck.execute("SET threads = 2")
        duck.execute(
            f"CREATE VIEW bench AS SELECT * FROM read_parquet('{curated}/**/*.parquet', "
            "hive_partitioning = false, union_by_name = true)"
        )
        rows = duck.execute("SELECT count(*) FROM bench").fetchone()[0]
        print(f"\n### {name}: {rows:,} rows in the curated table\n")
        print(
            "| query | psycopg | DuckDB rows | ratio | ADBC Flight SQL | DuckDB Arrow | ratio | rows |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for label, query in QUERIES:
            with pg.cursor() as cur:
                theirs = cur.execute(query).fetchall()
            with adbc.cursor() as cur:
                cur.execute(query)
                arrow = [tuple(r.values()) for r in cur.fetch_arrow_table().to_pylist()]
            ours = duck.execute(query).fetchall()
            for who, got in (("psycopg", theirs), ("adbc", arrow)):
                if not same(got, ours):
                    raise SystemExit(f"{label}: hubflow ({who}) and DuckDB disagree:\n{got[:3]}\n{ours[:3]}")

            def through_pg():
                with pg.cursor() as cur:
                    cur.execute(query).fetchall()

            def through_flight():
                with adbc.cursor() as cur:
                    cur.execute(query)
                    cur.fetch_arrow_table()

            pg_s = median_seconds(through_pg)
            duck_s = median_seconds(lambda: duck.execute(query).fetchall())
            flight_s = median_seconds(through_flight)
            duck_arrow_s = median_seconds(lambda: duck.execute(query).fetch_arrow_table())
            print(
                f"| {label} | {pg_s * 1000:.1f} ms | {duck_s * 1000:.1f} ms | {pg_s / duck_s:.1f}× "
                f"| {flight_s * 1000:.1f} ms | {duck_arrow_s * 1000:.1f} ms | {flight_s / duck_arrow_s:.1f}× | {len(ours)} |"
            )
        pg.close()
        adbc.close()
    finally:
        sql.terminate()
        sql.wait(timeout=30)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
