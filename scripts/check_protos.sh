#!/usr/bin/env bash
# Fail (exit 1) when the committed generated protobuf code is stale.
#
#   scripts/check_protos.sh [PROTOS_DIR]
#
# Regenerates from PROTOS_DIR/fedrank/v1/*.proto (default: the checkout's
# protos/) into a temporary directory and compares every generated file, in
# both directions, with the ones in PROTOS_DIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
protos=$(cd "${1:-$root/protos}" && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/fedrank/v1"
cp "$protos"/fedrank/v1/*.proto "$work/fedrank/v1/"
"$root/scripts/gen_protos.sh" "$work"

stale=0
shopt -s nullglob
for fresh in "$work"/*_pb2.py "$work"/*_pb2.pyi "$work"/*_pb2_grpc.py; do
  name=$(basename "$fresh")
  if [[ ! -f "$protos/$name" ]]; then
    echo "check_protos: $name is missing from $protos" >&2
    stale=1
  elif ! diff -u "$protos/$name" "$fresh" >&2; then
    echo "check_protos: $name differs from what the .proto sources generate" >&2
    stale=1
  fi
done
for committed in "$protos"/*_pb2.py "$protos"/*_pb2.pyi "$protos"/*_pb2_grpc.py; do
  name=$(basename "$committed")
  if [[ ! -f "$work/$name" ]]; then
    echo "check_protos: $name has no .proto source any more" >&2
    stale=1
  fi
done
if (( stale )); then
  echo "check_protos: generated protobuf code is stale; run scripts/gen_protos.sh and commit the result" >&2
  exit 1
fi
echo "check_protos: generated protobuf code is up to date"
