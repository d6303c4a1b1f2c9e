#!/usr/bin/env bash
# Build and push the image once, and hand its digest and binary to the
# later stages: every environment gets exactly these bits.
#
#   deploy/pipelines/build-image.sh <registry>/hubflow <tag> <outdir>
#
# Writes <outdir>/image.txt (<registry>/hubflow@sha256:…, what render.sh and
# the promotions take) and <outdir>/hubflow (the binary inside that image, for
# the dev VM). Needs docker with buildx, logged in to the registry.
set -euo pipefail
repo=${1:?usage: build-image.sh <repository> <tag> <outdir>}
tag=${2:?usage: build-image.sh <repository> <tag> <outdir>}
out=${3:?usage: build-image.sh <repository> <tag> <outdir>}
cd "$(dirname "$0")/../.."
mkdir -p "$out"
docker buildx build --push --provenance=false \
    --tag "$repo:$tag" --metadata-file "$out/metadata.json" .
digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["containerimage.digest"])' "$out/metadata.json")
case $digest in sha256:*) ;; *) echo "no digest in $out/metadata.json" >&2; exit 1 ;; esac
echo "$repo@$digest" > "$out/image.txt"
container=$(docker create "$repo@$digest")
docker cp "$container:/usr/local/bin/hubflow" "$out/hubflow"
docker rm "$container" >/dev/null
echo "built $(cat "$out/image.txt")"
