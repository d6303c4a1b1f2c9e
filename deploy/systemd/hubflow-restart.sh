#!/usr/bin/env bash
# Restart (or upgrade) the Hubflow node on this host without ever stopping a
# working node for a config or binary that cannot start.
#
#   sudo deploy/systemd/hubflow-restart.sh                       # restart as is
#   sudo deploy/systemd/hubflow-restart.sh --config new.toml     # new config
#   sudo deploy/systemd/hubflow-restart.sh --binary ./hubflow    # new binary
#   sudo deploy/systemd/hubflow-restart.sh --check-only --config new.toml
#
# The unit's ExecStartPre checks the config only after systemd has already
# stopped (drained) the running node, so a broken file would leave the host
# with no node at all. This script runs `hubflow config check` first, as the
# unit's user and with the unit's EnvironmentFile (so `{ env = ... }` and
# `{ file = ... }` secrets resolve exactly as they will), with the new binary
# when one is given. Only then does it install the new files (atomic rename,
# the old ones kept as *.previous), `systemctl restart hubflow` (SIGTERM:
# drain, checkpoints, partitions released), and wait for GET /readyz. A node
# that is not ready within --wait-secs is rolled back to the previous files
# and restarted, and the script exits 1.
set -euo pipefail

unit=hubflow
bin=/usr/local/bin/hubflow
config=/etc/hubflow/hubflow.toml
envfile=/etc/hubflow/env
addr=${HUBFLOW_ADMIN_ADDR:-127.0.0.1:9464}
new_bin=""
new_config=""
wait_secs=120
check_only=false

usage() { sed -n '2,9p' "$0" >&2; exit 2; }
while (($#)); do
    case $1 in
        --binary) new_bin=$2; shift 2 ;;
        --config) new_config=$2; shift 2 ;;
        --wait-secs) wait_secs=$2; shift 2 ;;
        --check-only) check_only=true; shift ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (it installs files and restarts $unit)" >&2; exit 1; }

user=$(systemctl show -p User --value "$unit")
user=${user:-hubflow}

# Stage the candidates next to their final paths, readable by the unit's user.
stage_bin=$bin
stage_config=$config
trap 'rm -f "$bin.new" "$config.new"' EXIT
if [ -n "$new_bin" ]; then
    install -m 0755 -o root -g root "$new_bin" "$bin.new"
    stage_bin=$bin.new
fi
if [ -n "$new_config" ]; then
    install -m 0640 -o root -g "$user" "$new_config" "$config.new"
    stage_config=$config.new
fi

echo "checking $stage_config with $stage_bin (as $user, with $envfile)"
systemd-run --quiet --wait --pipe --collect \
    --property=User="$user" --property=EnvironmentFile="$envfile" \
    --property=Environment=HUBFLOW_LOG=warn \
    "$stage_bin" config check "$stage_config"
"$stage_bin" --version
if $check_only; then
    echo "check only: nothing installed, $unit not restarted"
    exit 0
fi

rolled=()
if [ -n "$new_bin" ]; then
    cp -p "$bin" "$bin.previous"
    mv -f "$bin.new" "$bin"
    rolled+=("$bin")
fi
if [ -n "$new_config" ]; then
    cp -p "$config" "$config.previous"
    mv -f "$config.new" "$config"
    rolled+=("$config")
fi

ready() {
    # Read routes are open on a loopback listen address; on any other the
    # token is needed (sent on stdin, never on the command line).
    local token=${HUBFLOW_ADMIN_TOKEN:-}
    if [ -z "$token" ] && [ -r "$envfile" ]; then
        token=$(sed -n 's/^HUBFLOW_ADMIN_TOKEN=//p' "$envfile" | tail -n1 | tr -d '"')
    fi
    printf 'Authorization: Bearer %s\n' "$token" |
        curl -fsS -m 5 -H @- "http://$addr/readyz" >/dev/null 2>&1
}

wait_ready() {
    local deadline=$((SECONDS + wait_secs))
    until ready; do
        if ((SECONDS >= deadline)); then return 1; fi
        sleep 2
    done
}

echo "restarting $unit (drains within [admin] shutdown_deadline_secs)"
systemctl restart "$unit"
if wait_ready; then
    echo "$unit is ready on $addr"
    exit 0
fi

echo "$unit is not ready after ${wait_secs}s" >&2
journalctl -u "$unit" -n 30 --no-pager >&2 || true
if ((${#rolled[@]})); then
    echo "rolling back ${rolled[*]}" >&2
    for f in "${rolled[@]}"; do mv -f "$f.previous" "$f"; done
    systemctl restart "$unit"
    wait_ready && echo "$unit is ready again on the previous files" >&2
fi
exit 1
