"""psycopg against hubflow's SQL server (driven by tests/suite/sql_server.rs).

    python sql_clients.py HOST PORT USER PASSWORD

Prints one JSON object: what psycopg saw for each check. The Rust test
compares it with `hubflow query` on the same data and with what a read-only,
limited server must answer. Nothing here decides pass or fail except the
shape of the answers: errors are reported as their SQLSTATE and message.
"""

import json
import sys
import threading
import time

import psycopg

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = {}


def connect(pw=password, dbname="hubflow"):
    return psycopg.connect(
        host=host, port=port, user=user, password=pw, dbname=dbname, connect_timeout=10
    )


def failure(e):
    return {"sqlstate": getattr(e, "sqlstate", None), "message": str(e).strip()}


with connect() as conn:
    out["server_version"] = conn.info.parameter_status("server_version")
    with conn.cursor() as cur:
        # Extended protocol with a bound parameter (psycopg sends $1).
        cur.execute("SELECT count(*) FROM demo WHERE type = %s", ("purchase",))
        out["purchases"] = cur.fetchone()[0]
        cur.execute(
            "SELECT id, amount, created_at FROM demo WHERE amount > %s ORDER BY id LIMIT 3",
            (100.0,),
        )
        out["first_three"] = [[r[0], r[1], str(r[2])] for r in cur.fetchall()]
        cur.execute("SELECT count(*), count(DISTINCT id), sum(amount) FROM demo")
        n, d, s = cur.fetchone()
        out["totals"] = [n, d, float(s)]
        # A prepared statement run twice with different values.
        q = "SELECT count(*) FROM demo WHERE _hub_partition = %s"
        out["by_partition"] = [
            cur.execute(q, (p,), prepare=True).fetchone()[0] for p in (0, 1)
        ]
        # Nested columns arrive as JSON text, lists of plain values as
        # arrays, timestamps as aware datetimes.
        cur.execute(
            'SELECT id, "user", attributes, tags, _ingested_at FROM demo ORDER BY id LIMIT 1'
        )
        r = cur.fetchone()
        out["nested"] = {
            "id": r[0],
            "user": json.loads(r[1]),
            "attributes": json.loads(r[2]),
            "tags": r[3],
            "ingested_at_type": type(r[4]).__name__,
            "ingested_at_aware": r[4].tzinfo is not None,
        }
        # The tables a client's catalog browser lists.
        cur.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' ORDER BY table_name"
        )
        out["tables"] = [r[0] for r in cur.fetchall()]

# Writes are refused, and the connection stays usable.
with connect(dbname="hubflow") as conn:
    conn.autocommit = True
    refused = []
    for sql in [
        "CREATE TABLE copy_of_demo AS SELECT * FROM demo",
        "INSERT INTO demo (id) VALUES ('x')",
        "DROP TABLE demo",
        "COPY (SELECT 1) TO '/tmp/hubflow-sql-test.csv'",
        "SET datafusion.execution.batch_size = 1",
    ]:
        try:
            conn.execute(sql)
            refused.append({"sql": sql, "ran": True})
        except psycopg.Error as e:
            refused.append({"sql": sql, **failure(e)})
    out["writes"] = refused
    out["after_refusals"] = conn.execute("SELECT count(*) FROM demo").fetchone()[0]

# A cancel request stops a statement that would run for minutes.
with connect() as conn:
    timer = threading.Timer(1.0, conn.cancel)
    timer.start()
    started = time.monotonic()
    try:
        conn.execute(
            "SELECT count(*) FROM demo a, demo b, demo c WHERE a.amount + b.amount > c.amount"
        ).fetchone()
        out["cancel"] = {"ran": True}
    except psycopg.Error as e:
        out["cancel"] = failure(e)
    out["cancel"]["seconds"] = time.monotonic() - started
    timer.cancel()

# Wrong password, unknown user, unknown database.
for name, kwargs in [
    ("wrong_password", {"pw": "not-the-password"}),
    ("unknown_database", {"dbname": "postgres"}),
]:
    try:
        connect(**kwargs).close()
        out[name] = {"connected": True}
    except psycopg.Error as e:
        out[name] = failure(e)
try:
    psycopg.connect(
        host=host, port=port, user="nobody", password=password, dbname="hubflow"
    ).close()
    out["unknown_user"] = {"connected": True}
except psycopg.Error as e:
    out["unknown_user"] = failure(e)

print(json.dumps(out))
