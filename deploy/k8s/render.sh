#!/usr/bin/env bash
# Print the manifests of one environment, ready for `kubectl apply -f -`.
#
#   deploy/k8s/render.sh staging                                  # placeholder digest
#   deploy/k8s/render.sh production hubflowacr.azurecr.io/hubflow@sha256:<digest>
#
# `kubectl kustomize` with --load-restrictor LoadRestrictionsNone: each
# overlay's ConfigMap is made from deploy/config/<env>.toml, outside the
# overlay's folder, which kustomize's default restriction (and therefore
# `kubectl apply -k`) refuses. With an image, a throw-away kustomization on
# top of the overlay pins the container to that digest: the pipelines deploy
# exactly the image they built and tested, never a tag.
# KUBECTL picks the binary (default: kubectl on PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
env=${1:?usage: render.sh <env> [<repository>@sha256:<digest>]}
image=${2:-}
kubectl=${KUBECTL:-kubectl}
overlay=$here/overlays/$env
[ -f "$overlay/kustomization.yaml" ] || { echo "no overlay $overlay" >&2; exit 2; }
if [ -z "$image" ]; then
    exec "$kubectl" kustomize --load-restrictor LoadRestrictionsNone "$overlay"
fi
case $image in
    *@sha256:*) ;;
    *) echo "image must be <repository>@sha256:<digest>, not a tag: $image" >&2; exit 2 ;;
esac
# The name the base gives the image (its `images:` newName).
base_name=$(sed -n 's/^ *newName: *//p' "$here/base/kustomization.yaml" | head -n1)
# Inside deploy/k8s: kustomize takes only relative resource paths.
tmp=$(mktemp -d "$here/.render.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../overlays/$env
images:
  - name: $base_name
    newName: ${image%@*}
    digest: ${image#*@}
YAML
"$kubectl" kustomize --load-restrictor LoadRestrictionsNone "$tmp" > "$tmp/out.yaml"
# A real deployment needs the environment's identity (deploy/README.md, step 4).
if grep -q 'client-id: "\?00000000-0000-0000-0000-000000000000' "$tmp/out.yaml"; then
    echo "overlays/$env still has the placeholder azure.workload.identity/client-id: set it to the identityClientId output of its Bicep deployment" >&2
    exit 1
fi
cat "$tmp/out.yaml"
