#!/usr/bin/env bash
# Smoke test of a running node, through `hubflow ctl` on the node itself.
#
#   deploy/pipelines/smoke.sh [--e2e-secs N] -- <command that runs hubflow on a node>
#   deploy/pipelines/smoke.sh -- kubectl -n hubflow exec hubflow-0 -c hubflow -- hubflow
#   deploy/pipelines/smoke.sh --e2e-secs 600 -- ssh deploy@hubflow-dev /usr/local/bin/hubflow
#
# 1. `hubflow ctl status --json`: the node answers and says ready (the same
#    condition as GET /readyz: pipeline started, root supervisor not failed),
#    and no actor in the tree is `failed`.
# 2. With --e2e-secs: records go end to end. The progress counters come from
#    durable state (fetched from the source, curated into Parquet); both must
#    grow within N seconds, which takes at least one new record through the
#    source, hub ingest, a raw blob, hub landed and the transformer. It needs
#    the environment's source to produce records (dev's sandbox API does).
# 3. `hubflow ctl status`, for the log.
set -euo pipefail
e2e=0
while (($#)); do
    case $1 in
        --e2e-secs) e2e=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "usage: smoke.sh [--e2e-secs N] -- <hubflow command prefix>" >&2; exit 2 ;;
    esac
done
(($#)) || { echo "usage: smoke.sh [--e2e-secs N] -- <hubflow command prefix>" >&2; exit 2; }
hubflow=("$@")

status_field() {
    "${hubflow[@]}" ctl status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
def failed(node):
    out = [node.get("path") or node.get("name")] if node.get("state") == "failed" else []
    for c in node.get("children") or []:
        out += failed(c)
    return out
p = s.get("progress", {})
print(str(s.get("ready")).lower(), p.get("fetched", 0), p.get("transformed", 0), ",".join(failed(s.get("tree", {}))))
'
}

read -r ready fetched0 curated0 failed < <(status_field)
echo "ready=$ready fetched=$fetched0 curated=$curated0"
[ "$ready" = true ] || { echo "the node is not ready" >&2; "${hubflow[@]}" ctl status >&2 || true; exit 1; }
[ -z "$failed" ] || { echo "failed actors: $failed" >&2; exit 1; }

if ((e2e > 0)); then
    deadline=$((SECONDS + e2e))
    while :; do
        read -r ready fetched curated failed < <(status_field)
        if ((fetched > fetched0 && curated > curated0)); then
            echo "end to end: fetched $fetched0 → $fetched, curated $curated0 → $curated"
            break
        fi
        if ((SECONDS >= deadline)); then
            echo "no record went end to end in ${e2e}s (fetched $fetched0 → $fetched, curated $curated0 → $curated)" >&2
            exit 1
        fi
        sleep 10
    done
fi
"${hubflow[@]}" ctl status
