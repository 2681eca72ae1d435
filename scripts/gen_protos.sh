#!/usr/bin/env bash
# Regenerate the Python modules of the wire schemas.
#
#   scripts/gen_protos.sh [PROTOS_DIR]
#
# Reads PROTOS_DIR/fedrank/v1/*.proto (PROTOS_DIR defaults to the checkout's
# protos/) and writes <name>_pb2.py and <name>_pb2.pyi (and
# <name>_pb2_grpc.py for files that declare a service) directly into
# PROTOS_DIR, so they import as fedrank.protos.<name>_pb2 without a new
# subpackage. The .proto paths stay fedrank/v1/<name>.proto inside the
# descriptors, so they cannot clash with another library's files in
# protobuf's global pool; only the generated imports are rewritten from
# fedrank.v1 to fedrank.protos.
#
# The generated code depends on the grpcio-tools version (pinned in
# pyproject.toml); PYTHON picks the interpreter that has it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
protos=$(cd "${1:-$root/protos}" && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi

shopt -s nullglob
sources=("$protos"/fedrank/v1/*.proto)
if (( ${#sources[@]} == 0 )); then
  echo "gen_protos: no .proto files under $protos/fedrank/v1" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
relative=("${sources[@]#"$protos"/}")
(cd "$protos" && "$PYTHON" -m grpc_tools.protoc -I . \
  --python_out="$work" --pyi_out="$work" "${relative[@]}")
# Only files that declare a service get a gRPC module; for the others the
# plugin would write an empty stub.
services=()
for rel in "${relative[@]}"; do
  if grep -qE '^[[:space:]]*service[[:space:]]' "$protos/$rel"; then services+=("$rel"); fi
done
if (( ${#services[@]} > 0 )); then
  (cd "$protos" && "$PYTHON" -m grpc_tools.protoc -I . --grpc_python_out="$work" "${services[@]}")
fi

rm -f "$protos"/*_pb2.py "$protos"/*_pb2.pyi "$protos"/*_pb2_grpc.py
for generated in "$work"/fedrank/v1/*.py "$work"/fedrank/v1/*.pyi; do
  sed -e 's/^from fedrank\.v1 import /from fedrank.protos import /' \
    "$generated" >"$protos/$(basename "$generated")"
done
