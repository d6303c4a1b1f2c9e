#!/usr/bin/env bash
# Upgrade the dev VM's node to the binary of the built image and run the
# end-to-end smoke test there.
#
#   deploy/pipelines/deploy-vm.sh <user>@<host> <path to hubflow binary>
#
# The SSH user needs passwordless sudo for hubflow-restart.sh. The restart
# script checks deploy/config/dev.toml with the new binary before it stops the
# running node, and rolls back if the new one is not ready.
set -euo pipefail
target=${1:?usage: deploy-vm.sh <user@host> <binary>}
binary=${2:?usage: deploy-vm.sh <user@host> <binary>}
root=$(cd "$(dirname "$0")/../.." && pwd)
release=/tmp/hubflow-release
# shellcheck disable=SC2029 # $release is meant to expand here
ssh "$target" "rm -rf $release && mkdir -p $release"
scp "$binary" "$root/deploy/config/dev.toml" "$root/deploy/systemd/hubflow-restart.sh" "$target:$release/"
# shellcheck disable=SC2029
ssh "$target" "chmod 0755 $release/hubflow $release/hubflow-restart.sh && sudo $release/hubflow-restart.sh --binary $release/hubflow --config $release/dev.toml"
"$root/deploy/pipelines/smoke.sh" --e2e-secs 600 -- ssh "$target" /usr/local/bin/hubflow
