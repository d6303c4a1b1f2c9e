#!/usr/bin/env bash
# Hot change of the transformation on every node of an AKS environment, all
# or nothing.
#
#   deploy/pipelines/hot-change.sh <version> <file.sql> [probation-secs]
#
# kubectl must point at the environment's cluster. Each node runs the
# transformers of the partitions it owns, so the swap goes to every pod, one
# after the other: `hubflow ctl swap` validates the SQL, dry-runs it on the
# newest raw blob (a refusal changes nothing), drains the transform group,
# starts the new version from the checkpoints and keeps it only if nothing
# fails during the probation, else the node restores its previous version by
# itself. When any pod refuses or rolls back, the pods already promoted are
# swapped back to the version they had, and the script exits 1.
#
# A swap lives until the pod restarts: once it is promoted everywhere, put
# the same `version` and `sql` into deploy/config/*.toml and promote them, or
# the next rollout or restart brings the old transform back.
set -euo pipefail
version=${1:?usage: hot-change.sh <version> <file.sql> [probation-secs]}
sql_file=${2:?usage: hot-change.sh <version> <file.sql> [probation-secs]}
probation=${3:-60}
sql=$(cat "$sql_file")
ns=hubflow
read -r -a pods < <(kubectl -n "$ns" get pods -l app.kubernetes.io/name=hubflow \
    -o jsonpath='{.items[*].metadata.name}')
((${#pods[@]})) || { echo "no hubflow pods in namespace $ns" >&2; exit 1; }
ctl() { local pod=$1; shift; kubectl -n "$ns" exec "$pod" -c hubflow -- hubflow ctl "$@"; }
field() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v = (v or {}).get(k)
print("" if v is None else v)' "$1"; }

declare -A before_version before_sql
for pod in "${pods[@]}"; do
    state=$(ctl "$pod" transform --json)
    before_version[$pod]=$(field active.version <<<"$state")
    before_sql[$pod]=$(field active.sql <<<"$state")
    echo "$pod: active ${before_version[$pod]}"
done

promoted=()
failure=""
for pod in "${pods[@]}"; do
    echo "$pod: swapping to $version (probation ${probation}s)"
    if ! answer=$(ctl "$pod" swap --version "$version" --sql "$sql" --probation-secs "$probation" --json); then
        failure="$pod refused $version"
        break
    fi
    outcome=$(field outcome <<<"$answer")
    if [ "$outcome" != promoted ]; then
        failure="$pod: $version $outcome: $(field error <<<"$answer")"
        break
    fi
    promoted+=("$pod")
done

if [ -z "$failure" ]; then
    echo "$version is active on ${#pods[@]} pods; now write it into deploy/config/*.toml ([transform] version and sql) and promote"
    exit 0
fi
echo "hot change failed: $failure" >&2
for pod in "${promoted[@]}"; do
    echo "$pod: rolling back to ${before_version[$pod]}" >&2
    if [ -n "${before_sql[$pod]}" ]; then
        ctl "$pod" swap --version "${before_version[$pod]}" --sql "${before_sql[$pod]}" --probation-secs "$probation"
    else
        ctl "$pod" swap --version "${before_version[$pod]}" --probation-secs "$probation"
    fi
done
exit 1
