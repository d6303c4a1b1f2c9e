#!/usr/bin/env python3
"""Cross-check Hubflow's Azure Blob output with clients that are not ours.

Uses the official Azure SDK (azure-storage-blob) to list the containers and
read every curated Parquet file under a prefix, and pyarrow to decode them.
Prints one JSON object:

    {"containers": [...], "blobs": {"<container>": n, ...},
     "files": n, "rows": n, "distinct_ids": n}

Installed into .tools/venv by scripts/install-azurite.sh; run by
tests/suite/azurite_end_to_end.rs:

    AZURE_STORAGE_KEY=... .tools/venv/bin/python scripts/azure_crosscheck.py \
        --account-url http://127.0.0.1:PORT/devstoreaccount1 \
        --account-name devstoreaccount1 --curated curated --prefix demo/

The key comes from the environment, never the command line.
"""

import argparse
import io
import json
import os
import sys

import pyarrow.parquet as pq
from azure.storage.blob import BlobServiceClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--account-url", required=True)
    parser.add_argument("--account-name", required=True)
    parser.add_argument("--curated", required=True, help="the curated container")
    parser.add_argument("--prefix", default="", help="only curated blobs under this prefix")
    parser.add_argument("--id-column", default="id")
    # The newest service version Azurite 3.37 accepts (the SDK's default is newer).
    parser.add_argument("--api-version", default="2026-04-06")
    args = parser.parse_args()

    key = os.environ.get("AZURE_STORAGE_KEY")
    if not key:
        print("AZURE_STORAGE_KEY is not set", file=sys.stderr)
        return 2
    service = BlobServiceClient(
        account_url=args.account_url,
        credential={"account_name": args.account_name, "account_key": key},
        api_version=args.api_version,
    )

    containers = sorted(c.name for c in service.list_containers())
    blobs = {
        name: sum(1 for _ in service.get_container_client(name).list_blobs())
        for name in containers
    }

    curated = service.get_container_client(args.curated)
    files = 0
    rows = 0
    ids = set()
    for blob in curated.list_blobs(name_starts_with=args.prefix):
        if not blob.name.endswith(".parquet"):
            continue
        data = curated.download_blob(blob.name).readall()
        table = pq.read_table(io.BytesIO(data), columns=[args.id_column])
        files += 1
        rows += table.num_rows
        ids.update(table.column(args.id_column).to_pylist())

    print(
        json.dumps(
            {
                "containers": containers,
                "blobs": blobs,
                "files": files,
                "rows": rows,
                "distinct_ids": len(ids),
            }
        )
    )
    return 0


if __name__ == "__main__":
    code = main()
    # The answer is out: leave without interpreter finalization. pyarrow's
    # C++ thread pools can abort the process while Python tears down
    # ("terminate called without an active exception", SIGABRT), which once
    # failed a run whose check had passed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
