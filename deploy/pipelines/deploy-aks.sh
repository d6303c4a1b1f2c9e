#!/usr/bin/env bash
# Roll one AKS environment to an image digest and smoke-test it.
#
#   deploy/pipelines/deploy-aks.sh <staging|production> <registry>/hubflow@sha256:<digest>
#
# kubectl must point at the environment's cluster (az aks get-credentials).
# The StatefulSet replaces one pod at a time, each after the previous one is
# ready (/readyz); the PodDisruptionBudget keeps the others running. A pod
# that never gets ready stops the rollout, and this script fails: undo with
# `kubectl -n hubflow rollout undo statefulset/hubflow`.
set -euo pipefail
env=${1:?usage: deploy-aks.sh <env> <image@digest>}
image=${2:?usage: deploy-aks.sh <env> <image@digest>}
here=$(cd "$(dirname "$0")" && pwd)
manifests=$(mktemp)
trap 'rm -f "$manifests"' EXIT
"$here/../k8s/render.sh" "$env" "$image" > "$manifests"
kubectl apply --server-side --field-manager=hubflow-pipeline -f "$manifests"
kubectl -n hubflow rollout status statefulset/hubflow --timeout=20m
"$here/smoke.sh" -- kubectl -n hubflow exec hubflow-0 -c hubflow -- hubflow
