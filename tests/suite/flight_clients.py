"""The ADBC Flight SQL driver against hubflow's SQL server (driven by
tests/suite/sql_server.rs).

    python flight_clients.py URI USER PASSWORD [ROOT_CERT_PEM]

Prints one JSON object: what ADBC (and pandas through it) saw for each
check. The Rust test compares it with `hubflow query` on the same data and
with what a read-only, limited server must answer. Errors are reported as
their ADBC status and message; nothing here decides pass or fail.
"""

import json
import sys
import threading
import time

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight
import adbc_driver_manager

uri, user, password = sys.argv[1], sys.argv[2], sys.argv[3]
root_cert = sys.argv[4] if len(sys.argv) > 4 else None
out = {}


def connect(pw=password):
    kwargs = {"username": user, "password": pw}
    if root_cert:
        with open(root_cert) as f:
            kwargs[adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value] = f.read()
    return flight.connect(uri, db_kwargs=kwargs, autocommit=True)


def failure(e):
    return {
        "kind": type(e).__name__,
        "status": str(getattr(e, "status_code", "")),
        "message": str(e).strip(),
    }


def attempt(conn, sql, params=None):
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return {"ok": cur.fetch_arrow_table().to_pylist()}
    except Exception as e:  # noqa: BLE001 - every failure is reported
        return failure(e)


with connect() as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n, count(DISTINCT id) AS d, sum(amount) AS s FROM demo")
        table = cur.fetch_arrow_table()
        row = table.to_pylist()[0]
        out["totals"] = [row["n"], row["d"], row["s"]]
        out["totals_types"] = [str(f.type) for f in table.schema]
        # A parameterised query: a prepared statement with $1 bound.
        cur.execute("SELECT count(*) AS n FROM demo WHERE type = $1", ("purchase",))
        out["purchases"] = cur.fetch_arrow_table().to_pylist()[0]["n"]
        # The same prepared statement again with another value.
        q = "SELECT count(*) AS n FROM demo WHERE _hub_partition = $1"
        out["by_partition"] = []
        for p in (0, 1):
            cur.execute(q, (p,))
            out["by_partition"].append(cur.fetch_arrow_table().to_pylist()[0]["n"])
        # pandas through ADBC.
        cur.execute(
            "SELECT id, amount, _ingested_at FROM demo WHERE amount > 100.0 ORDER BY id LIMIT 3"
        )
        frame = cur.fetch_df()
        out["first_three"] = [[r.id, float(r.amount)] for r in frame.itertuples()]
        out["ingested_at_dtype"] = str(frame["_ingested_at"].dtype)
        # Nested columns as the Postgres side sends them: JSON text.
        cur.execute('SELECT "user", tags FROM demo ORDER BY id LIMIT 1')
        r = cur.fetch_arrow_table().to_pylist()[0]
        out["nested"] = {"user": json.loads(r["user"]), "tags": r["tags"]}
    # The catalog: tables and a table's Arrow schema.
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    out["catalogs"] = [
        {
            "catalog": c["catalog_name"],
            "schemas": [
                {
                    "schema": s["db_schema_name"],
                    "tables": [t["table_name"] for t in s["db_schema_tables"]],
                }
                for s in c["catalog_db_schemas"]
            ],
        }
        for c in objects
    ]
    out["demo_columns"] = conn.adbc_get_table_schema("demo").names
    out["table_types"] = conn.adbc_get_table_types()
    # Refusals and bad statements: clear errors, the connection goes on.
    out["create"] = attempt(conn, "CREATE TABLE x AS SELECT 1")
    out["insert"] = attempt(conn, "INSERT INTO demo (id) VALUES ('x')")
    out["set"] = attempt(conn, "SET datafusion.execution.batch_size = 1")
    out["unknown_column"] = attempt(conn, "SELECT nope FROM demo")
    out["too_many_rows"] = attempt(conn, "SELECT * FROM demo")
    # A statement over its own memory cap fails; the pool stays for others.
    out["memory_hog"] = attempt(
        conn, "SELECT count(DISTINCT a.id || b.id) AS n FROM demo a CROSS JOIN demo b"
    )
    out["after_errors"] = attempt(conn, "SELECT count(*) AS n FROM demo")

    # A runaway statement is stopped by its time limit while another
    # connection keeps answering.
    runaway = {}

    def run_away():
        started = time.monotonic()
        with connect() as other:
            runaway["result"] = attempt(
                other,
                "SELECT count(*) FROM demo a, demo b, demo c WHERE a.amount + b.amount > c.amount",
            )
        runaway["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run_away)
    thread.start()
    time.sleep(1.0)
    started = time.monotonic()
    out["beside_runaway"] = attempt(conn, "SELECT count(*) AS n FROM demo")
    out["beside_runaway_seconds"] = time.monotonic() - started
    out["runaway_still_running"] = thread.is_alive()
    thread.join(60)
    out["runaway"] = runaway

    # A cancel from the client (ADBC's cancel, as a notebook's interrupt)
    # stops the statement long before its time limit.
    cancelled = {}

    def cancel_me(cur):
        started = time.monotonic()
        try:
            cur.execute(
                "SELECT count(*) FROM demo a, demo b, demo c WHERE a.amount + b.amount > c.amount"
            )
            cancelled["result"] = {"ok": cur.fetch_arrow_table().to_pylist()}
        except Exception as e:  # noqa: BLE001
            cancelled["result"] = failure(e)
        cancelled["seconds"] = time.monotonic() - started

    with connect() as other, other.cursor() as cur:
        thread = threading.Thread(target=cancel_me, args=(cur,))
        thread.start()
        time.sleep(1.0)
        cur.adbc_cancel()
        thread.join(60)
    out["cancelled"] = cancelled

# A wrong password is refused at connect or at the first call.
try:
    with connect("wrong-password") as bad:
        out["wrong_password"] = attempt(bad, "SELECT 1")
except Exception as e:  # noqa: BLE001
    out["wrong_password"] = failure(e)

print(json.dumps(out, default=str))
