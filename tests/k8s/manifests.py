"""Rendering the kustomizations of k8s/ and reading the rendered objects, for the tests."""

from __future__ import annotations

import importlib.util
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("base", "cpu-demo", "gpu", "ray-simulation")
FLOWER_TARGETS = ("base", "cpu-demo", "gpu")
# Overlays an operator applies with real credentials: no Secret of their own.
NON_DEMO_TARGETS = ("base", "gpu", "ray-simulation")
# KubeRay's own RayCluster CRD schema, vendored (see kuberay/README.md).
KUBERAY_OPENAPI = {
    "ray.io/v1/RayCluster": Path(__file__).parent / "kuberay" / "raycluster-ray.io-v1.openapi.json"
}


def _load_checker() -> ModuleType:
    path = ROOT / "k8s" / "tools" / "check_manifests.py"
    spec = importlib.util.spec_from_file_location("check_manifests", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_checker()


# ------------------------------------------------------------------ helpers


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload label, pod spec) of every Deployment, Job and RayCluster group."""
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "Job"):
            yield name, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "RayCluster":
            yield f"{name}/head", doc["spec"]["headGroupSpec"]["template"]["spec"]
            for group in doc["spec"]["workerGroupSpecs"]:
                yield f"{name}/{group['groupName']}", group["template"]["spec"]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload label, pod spec, container) of every container, init containers included."""
    for name, spec in pod_specs(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield name, spec, container


def find(docs: list[dict[str, Any]], kind: str, prefix: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]


def flag(container: dict[str, Any], name: str) -> str | None:
    """Value of ``--name=value`` in a container's args (None when absent)."""
    for arg in container.get("args", []):
        if arg.startswith(f"--{name}="):
            return str(arg.split("=", 1)[1])
    return None


def configmap_toml(docs: list[dict[str, Any]], name: str, key: str) -> dict[str, Any]:
    (cm,) = [d for d in find(docs, "ConfigMap", name) if key in d["data"]]
    return tomllib.loads(cm["data"][key])


def gpu_count(container: dict[str, Any]) -> int:
    res = container.get("resources", {})
    return max(int(res.get(kind, {}).get("nvidia.com/gpu", 0)) for kind in ("requests", "limits"))


def component(docs: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == label
    ]


def render_all() -> dict[str, list[dict[str, Any]]]:
    """Every kustomization rendered: target name -> documents."""
    out = {}
    for target in TARGETS:
        path = ROOT / "k8s" / ("base" if target == "base" else f"overlays/{target}")
        out[target] = check.load_documents(check.render(path))
    return out
