#!/usr/bin/env bash
# Hot change of the transformation on an AKS environment, all or nothing.
#
#   deploy/pipelines/hot-change.sh <version> <file.sql> [probation-secs]
#
# kubectl must point at the environment's cluster. A swap is cluster-wide
# and durable: `hubflow ctl swap` on any one pod validates the SQL, dry-runs
# it on the newest raw blob (a refusal changes nothing), records the version
# in the spec log in the state container (`specs/transform`), and every node
# drains its transform group and starts the new version from its
# checkpoints within `[transform] sync_ms`. The version is promoted only if
# no node's transform group fails, restarts or stalls during the probation;
# a failure anywhere rolls the whole cluster back by itself and the call
# answers `rolled_back`. A 409 means another swap is in probation or won
# the race (nothing changed). After a promotion the script checks that
# every pod runs the version, then exits 0; otherwise it exits 1.
#
# The stored version outlives restarts and rollouts (new pods start with
# the log's stable version). Write the same `version` and `sql` into
# deploy/config/*.toml and promote them, so the config files say what runs
# (until then each node reports drift: HubflowTransformConfigDrift, info).
set -euo pipefail
version=${1:?usage: hot-change.sh <version> <file.sql> [probation-secs]}
sql_file=${2:?usage: hot-change.sh <version> <file.sql> [probation-secs]}
probation=${3:-60}
ns=hubflow
read -r -a pods < <(kubectl -n "$ns" get pods -l app.kubernetes.io/name=hubflow \
    -o jsonpath='{.items[*].metadata.name}')
((${#pods[@]})) || { echo "no hubflow pods in namespace $ns" >&2; exit 1; }
ctl() { local pod=$1; shift; kubectl -n "$ns" exec "$pod" -c hubflow -- hubflow ctl "$@"; }
ctl_in() { local pod=$1; shift; kubectl -n "$ns" exec -i "$pod" -c hubflow -- hubflow ctl "$@"; }
field() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v = (v or {}).get(k)
print("" if v is None else v)' "$1"; }

before=$(ctl "${pods[0]}" transform --json | field active.version)
echo "active: $before; swapping to $version through ${pods[0]} (probation ${probation}s)"
# The SQL goes in on stdin (a file inside the pod), not on a command line.
if ! answer=$(ctl_in "${pods[0]}" swap --version "$version" --sql-file /dev/stdin \
    --probation-secs "$probation" --json <"$sql_file"); then
    echo "hot change refused: $answer" >&2
    exit 1
fi
outcome=$(field outcome <<<"$answer")
if [ "$outcome" != promoted ]; then
    echo "hot change $outcome: $(field error <<<"$answer"); the cluster is back on $(field restored <<<"$answer")" >&2
    exit 1
fi

# Every pod follows within sync_ms; allow a minute for a slow drain.
for pod in "${pods[@]}"; do
    for _ in $(seq 60); do
        active=$(ctl "$pod" transform --json | field active.version)
        [ "$active" = "$version" ] && break
        sleep 1
    done
    if [ "$active" != "$version" ]; then
        echo "$pod still runs $active, not $version (see hubflow ctl transform on it)" >&2
        exit 1
    fi
    echo "$pod: $version"
done
echo "$version is promoted and active on ${#pods[@]} pods; now write it into deploy/config/*.toml ([transform] version and sql) and promote"
