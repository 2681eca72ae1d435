"""What an operator relies on when applying k8s/: Secrets, registration, resume, names, GPUs.

- No overlay applied with real credentials carries a Secret, so ``kubectl apply
  -k`` never replaces one an operator created; the demo's Secrets are marked.
- Sites wait for their key's registration in an init container instead of
  crash-looping.
- The simulate Job resumes from its checkpoint: its entry script is run here
  under ``sh`` with a stand-in ``fedrank`` that records its arguments, and they
  are parsed by fedrank's own parser.
- The simulation and the deployment share no PVC, ConfigMap or namespace.
- Pods with GPUs use NVIDIA's RuntimeClass.
- The RayCluster is valid against KubeRay's own CRD schema (vendored).
"""

from __future__ import annotations

import base64
import copy
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fedrank.cli import build_parser
from tests.k8s.manifests import (
    FLOWER_TARGETS,
    KUBERAY_OPENAPI,
    NON_DEMO_TARGETS,
    ROOT,
    TARGETS,
    check,
    component,
    containers,
    find,
    flag,
    gpu_count,
    pod_specs,
)

DOCS = (ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")


def _secret_volumes(docs: list[dict[str, Any]]) -> set[str]:
    return {
        v["secret"]["secretName"]
        for _, spec in pod_specs(docs)
        for v in spec.get("volumes", [])
        if "secret" in v
    }


# ------------------------------------------------------------------ Secrets


@pytest.mark.parametrize("target", NON_DEMO_TARGETS)
def test_overlays_applied_with_real_credentials_carry_no_secret(rendered, target):
    secrets = find(rendered[target], "Secret", "")

    assert secrets == []  # so `kubectl apply -k` never creates, changes or replaces one


def test_the_demo_secrets_are_marked_public_and_cover_every_mount(rendered):
    docs = rendered["cpu-demo"]
    secrets = find(docs, "Secret", "")

    for secret in secrets:
        assert secret["metadata"]["labels"]["fedrank.dev/demo"] == "true"
        for key, value in secret["data"].items():
            text = base64.b64decode(value).decode("utf-8")
            assert text.startswith("DEMO ONLY - PUBLIC, NOT A KEY"), (secret["metadata"], key)
    assert {s["metadata"]["name"] for s in secrets} == _secret_volumes(docs)


def test_no_key_material_is_committed_under_k8s():
    demo = ROOT / "k8s" / "components" / "demo-secrets"
    for path in (ROOT / "k8s").rglob("*"):
        if not path.is_file() or path.suffix == ".json":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        assert "PRIVATE KEY-----" not in text, path
        assert "BEGIN CERTIFICATE" not in text, path
        if not path.is_relative_to(demo):
            assert "PLACEHOLDER" not in text, path


@pytest.mark.parametrize("target", ["base", "gpu"])
def test_every_secret_a_pod_mounts_is_created_in_the_docs(rendered, target):
    # A site's Secret is created in a loop over the sites: supernode-credentials-$i.
    mounted = {re.sub(r"-\d+$", "-$i", n) for n in _secret_volumes(rendered[target])}
    created = set(re.findall(r'create secret generic "?([a-z]+(?:-[a-z]+)*(?:-\$i)?)"?', DOCS))

    assert "supernode-credentials-$i" in mounted
    assert mounted <= created


# ------------------------------------------------------------------ registration


def _parse_fedrank(container: dict[str, Any]) -> Any:
    assert container["command"] == ["fedrank"]
    return build_parser().parse_args(container["args"])


def _mounted(spec: dict[str, Any], container: dict[str, Any], path: str) -> str:
    """The volume of ``spec`` that ``container`` mounts above ``path``."""
    (mount,) = [m for m in container["volumeMounts"] if Path(path).is_relative_to(m["mountPath"])]
    return str(mount["name"])


@pytest.mark.parametrize("target", ["base", "gpu"])
def test_sites_wait_for_their_registration_before_the_supernode_starts(rendered, target):
    sites = component(rendered[target], "supernode")
    for site in sites:
        spec = site["spec"]["template"]["spec"]
        (init,) = spec["initContainers"]
        node = spec["containers"][0]

        args = _parse_fedrank(init)

        assert (args.command, args.federation_command) == ("federation", "wait-registered")
        assert args.timeout == 0  # an init container waits as long as it takes
        assert args.superlink == flag(node, "superlink")
        assert str(args.ca) == flag(node, "root-certificates")
        assert str(args.node_key) == flag(node, "auth-supernode-private-key")
        # The same files: the init container mounts the volumes the SuperNode reads them from.
        assert _mounted(spec, init, str(args.ca)) == _mounted(spec, node, str(args.ca))
        assert _mounted(spec, init, str(args.node_key)) == _mounted(spec, node, str(args.node_key))
    assert len(sites) == 3


def test_the_demo_has_nothing_to_wait_for(rendered):
    for site in component(rendered["cpu-demo"], "supernode"):
        assert "initContainers" not in site["spec"]["template"]["spec"]


# ------------------------------------------------------------------ resume


@pytest.fixture
def simulate_entry(rendered, tmp_path):
    """Run the simulate Job's entry script against ``tmp_path/results``; return fedrank's argv."""
    (job,) = find(rendered["ray-simulation"], "Job", "fedrank-simulate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    env = {e["name"]: e["value"] for e in container["env"]}
    fake = tmp_path / "bin" / "fedrank"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGV_FILE"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    results = tmp_path / "results"

    def run() -> list[str]:
        argv_file = tmp_path / "argv"
        done = subprocess.run(
            ["/bin/sh", "-c", script],
            env={
                **env,
                "RESULTS_DIR": str(results),
                "ARGV_FILE": str(argv_file),
                "PATH": f"{fake.parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "fedrank:" in done.stdout
        return argv_file.read_text().splitlines()

    return results, run


def test_a_restarted_simulate_job_resumes_from_its_checkpoint(simulate_entry):
    results, run = simulate_entry
    (results / "checkpoints").mkdir(parents=True)
    (results / "scenario.json").write_text("{}")
    (results / "checkpoints" / "round-00000007.ckpt").write_bytes(b"")

    argv = run()
    args = build_parser().parse_args(argv)

    assert argv[:3] == ["simulate", "--resume", str(results)]
    assert (args.resume, args.scenario) == (str(results), None)
    assert args.ray_address == "ray://fedrank-ray-head-svc:10001"


@pytest.mark.parametrize("files", [(), ("scenario.json",), ("checkpoints/round-00000001.ckpt",)])
def test_without_a_checkpoint_of_this_run_the_job_starts_the_scenario(simulate_entry, files):
    results, run = simulate_entry
    for name in files:
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text("{}")

    args = build_parser().parse_args(run())

    assert args.command == "simulate"
    assert (args.resume, args.scenario) == (None, "/etc/fedrank/scenario/simulation.toml")
    assert args.ray_address == "ray://fedrank-ray-head-svc:10001"


def test_the_job_retries_so_that_resuming_has_a_chance(rendered):
    (job,) = find(rendered["ray-simulation"], "Job", "fedrank-simulate")

    assert job["spec"]["backoffLimit"] >= 2
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


# ------------------------------------------------------------------ names


def _names(docs: list[dict[str, Any]], kind: str) -> set[str]:
    # Generated ConfigMaps carry a content hash: compare the names before it.
    return {
        re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"]) if kind == "ConfigMap" else
        d["metadata"]["name"]
        for d in find(docs, kind, "")
    }  # fmt: skip


@pytest.mark.parametrize("target", FLOWER_TARGETS)
def test_the_simulation_shares_no_volume_config_or_namespace_with_a_deployment(rendered, target):
    simulation, deployment = rendered["ray-simulation"], rendered[target]

    for kind in ("PersistentVolumeClaim", "ConfigMap", "Namespace"):
        assert _names(simulation, kind) & _names(deployment, kind) == set(), kind
    spaces = {d["metadata"].get("namespace") for d in simulation if d["kind"] != "Namespace"}
    assert spaces == {"fedrank-simulation"}
    assert _names(simulation, "Namespace") == spaces


@pytest.mark.parametrize("target", TARGETS)
def test_every_claim_and_config_map_a_pod_uses_is_in_the_same_build(rendered, target):
    docs = rendered[target]
    claims, maps = (
        _names(docs, "PersistentVolumeClaim"),
        {d["metadata"]["name"] for d in find(docs, "ConfigMap", "")},
    )
    for name, spec in pod_specs(docs):
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
            if "configMap" in volume:
                assert volume["configMap"]["name"] in maps, name


# ------------------------------------------------------------------ GPUs


@pytest.mark.parametrize("target", TARGETS)
def test_pods_with_gpus_use_the_nvidia_runtime_class(rendered, target):
    for name, spec in pod_specs(rendered[target]):
        wants_gpu = any(gpu_count(c) for c in spec["containers"])

        assert spec.get("runtimeClassName") == ("nvidia" if wants_gpu else None), name


# ------------------------------------------------------------------ KubeRay's own schema


def test_the_raycluster_is_valid_against_kuberays_crd(rendered):
    (cluster,) = find(rendered["ray-simulation"], "RayCluster", "fedrank-ray")
    (openapi,) = KUBERAY_OPENAPI.values()

    assert check.crd_openapi_errors(cluster, openapi) == []


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda c: c["spec"]["workerGroupSpecs"][0].update(replicaz=2), "replicaz"),
        (lambda c: c["spec"]["workerGroupSpecs"][0].update(replicas="2"), "'2' is not of type"),
        (lambda c: c["spec"].update(enableInTreeAutoscaling="no"), "'no' is not of type"),
        (lambda c: c["spec"]["headGroupSpec"].update(serviceTyp="ClusterIP"), "serviceTyp"),
        (
            lambda c: c["spec"]["headGroupSpec"]["template"]["spec"].update(runtimeClassNam="x"),
            "runtimeClassNam",
        ),
    ],
)
def test_a_broken_raycluster_fails_kuberays_crd(rendered, change, needle):
    (cluster,) = find(rendered["ray-simulation"], "RayCluster", "fedrank-ray")
    (openapi,) = KUBERAY_OPENAPI.values()
    broken = copy.deepcopy(cluster)
    change(broken)

    errors = check.crd_openapi_errors(broken, openapi)

    assert any(needle in e for e in errors), errors


def test_the_crd_schema_conversion_keeps_field_names_and_refuses_unknown_fields():
    openapi = {
        "type": "object",
        "properties": {
            "nullable": {"type": "string", "nullable": True},
            "x-kubernetes-odd": {"type": "integer"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "properties": {"a": {"type": "string"}}},
        },
    }  # fmt: skip

    strict = check.strict_crd_schema(openapi)

    assert set(strict["properties"]) == {"nullable", "x-kubernetes-odd", "free"}
    assert strict["additionalProperties"] is False
    assert strict["properties"]["nullable"]["type"] == ["string", "null"]
    assert "additionalProperties" not in strict["properties"]["free"]
    assert openapi["properties"]["nullable"]["nullable"] is True  # input not mutated


def test_every_container_parses_where_it_names_fedrank(rendered):
    seen = 0
    for target in TARGETS:
        for _, _, container in containers(rendered[target]):
            if container.get("command") == ["fedrank"]:
                seen += 1
                _parse_fedrank(container)
    assert seen
