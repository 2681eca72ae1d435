#!/usr/bin/env bash
# mypy cannot follow setuptools' package-dir mapping, so give it a tree of
# symbolic links shaped like the installed namespace and check that.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree="$root/build/typecheck"
rm -rf "$tree"
mkdir -p "$tree/fedrank"
for entry in "$root"/fedrank/*; do ln -s "$entry" "$tree/fedrank/"; done
for component in protos strategies client server simulations; do
  ln -s "$root/$component" "$tree/fedrank/$component"
done
cd "$tree"
"${MYPY:-mypy}" --config-file "$root/pyproject.toml" -p fedrank
