"""Offline checks of the Kubernetes manifests in k8s/ (no cluster, no API server).

Each kustomization is rendered once per session with ``kubectl kustomize``; every
document is validated strictly (k8s/tools/check_manifests.py) and the rendered
objects are checked for the invariants the deployment relies on.
"""

from __future__ import annotations

import copy
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.manifests import (
    FLOWER_TARGETS,
    KUBERAY_OPENAPI,
    ROOT,
    TARGETS,
    check,
    component,
    configmap_toml,
    containers,
    find,
    flag,
    gpu_count,
)

# ------------------------------------------------------------------ validity


@pytest.mark.parametrize("target", TARGETS)
def test_every_document_is_strictly_valid(rendered, target):
    docs = rendered[target]

    errors = check.all_errors(docs, check.KUBERNETES_VERSIONS, KUBERAY_OPENAPI)

    assert docs
    assert errors == []


def test_unknown_field_fails_strict_validation(rendered):
    (deployment,) = find(rendered["base"], "Deployment", "superlink")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"

    errors = check.document_errors(broken, "1.33.0")

    assert check.document_errors(deployment, "1.33.0") == []
    assert any("imagePullPolicyy" in e for e in errors)


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("spec",), {"rayVersionn": "2.55.1"}, "rayVersionn"),
        (("spec", "headGroupSpec", "rayStartParams"), {"num-cpus": 0}, "num-cpus"),
        (("spec", "headGroupSpec", "template", "spec"), {"hostNetworkk": True}, "hostNetworkk"),
    ],
)
def test_broken_raycluster_fails_validation(rendered, path, value, needle):
    (cluster,) = find(rendered["ray-simulation"], "RayCluster", "fedrank-ray")
    broken = copy.deepcopy(cluster)
    node = broken
    for key in path:
        node = node[key]
    node.update(value)

    errors = check.document_errors(broken, "1.33.0")

    assert check.document_errors(cluster, "1.33.0") == []
    assert any(needle in e for e in errors), errors


def test_kind_without_schema_fails():
    doc = {"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}}

    assert check.document_errors(doc, "1.33.0") != []


# ------------------------------------------------------------------ security


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_requests_limits_and_runs_hardened(rendered, target):
    seen = 0
    for name, spec, container in containers(rendered[target]):
        seen += 1
        pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
        where = f"{target} {name}/{container['name']}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), where
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc["capabilities"]["drop"] == ["ALL"], where
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", where
        # Ray pods keep a writable root filesystem (see k8s/overlays/ray-simulation).
        if not name.startswith("RayCluster/"):
            assert sc.get("readOnlyRootFilesystem") is True, where
    assert seen > 0


@pytest.mark.parametrize("target", TARGETS)
def test_long_running_containers_have_probes(rendered, target):
    for name, spec, container in containers(rendered[target]):
        if name.startswith("Job/") or container in spec.get("initContainers", []):
            continue
        assert "livenessProbe" in container, f"{name}/{container['name']}"
        assert "readinessProbe" in container, f"{name}/{container['name']}"


@pytest.mark.parametrize("target", TARGETS)
def test_gpus_only_where_clientapps_run_and_only_in_gpu_overlays(rendered, target):
    with_gpu = {
        f"{name}/{c['name']}" for name, _, c in containers(rendered[target]) if gpu_count(c)
    }

    expected: set[str] = set()
    if target == "gpu":
        expected = {f"Deployment/supernode-{i}/superexec-clientapp" for i in range(3)}
    elif target == "ray-simulation":
        # ClientApps of a simulation run as Ray actors on the GPU worker group.
        expected = {"RayCluster/fedrank-ray/gpu/ray-worker"}
    assert with_gpu == expected


def test_gpu_overlay_targets_gpu_nodes_with_cuda_image(rendered):
    for name, spec, container in containers(rendered["gpu"]):
        if gpu_count(container):
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
            assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), name
            assert container["image"].endswith("-cuda"), name
            assert "nvidia.com/gpu" in container["resources"]["limits"], name
        else:
            assert container["image"].endswith("-cpu"), name


@pytest.mark.parametrize("target", TARGETS)
def test_insecure_only_in_cpu_demo(rendered, target):
    docs = rendered[target]
    in_args = [
        f"{name}/{c['name']}"
        for name, _, c in containers(docs)
        if any("--insecure" in a for a in c.get("command", []) + c.get("args", []))
    ]
    in_config = [
        d["metadata"]["name"]
        for d in find(docs, "ConfigMap", "")
        for text in d.get("data", {}).values()
        if "insecure = true" in text
    ]

    if target == "cpu-demo":
        # The demo is plaintext end to end: the scan must see it.
        assert len(in_args) == 8
        assert in_config
    else:
        assert in_args == []
        assert in_config == []


@pytest.mark.parametrize("target", ["base", "gpu"])
def test_tls_and_supernode_auth_outside_demo(rendered, target):
    docs = rendered[target]
    (superlink,) = component(docs, "superlink")
    link = superlink["spec"]["template"]["spec"]["containers"][0]
    assert "--enable-supernode-auth" in link["args"]
    for name in ("ssl-ca-certfile", "ssl-certfile", "ssl-keyfile", "superexec-auth-secret-file"):
        assert flag(link, name), name
    for site in component(docs, "supernode"):
        node = site["spec"]["template"]["spec"]["containers"][0]
        assert flag(node, "root-certificates")
        assert flag(node, "auth-supernode-private-key")


# ------------------------------------------------------------------ wiring


@pytest.mark.parametrize("target", FLOWER_TARGETS)
def test_results_volume_is_mounted_where_the_serverapp_writes(rendered, target):
    docs = rendered[target]
    results_dir = configmap_toml(docs, "fedrank-run-config", "run-config.toml")["results-dir"]
    (serverapp,) = component(docs, "serverapp")
    spec = serverapp["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    claim = volume["persistentVolumeClaim"]["claimName"]
    (container,) = [c for c in spec["containers"] if c["name"] == "superexec-serverapp"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]

    assert find(docs, "PersistentVolumeClaim", claim)
    assert Path(results_dir).is_relative_to(mount["mountPath"])
    assert not mount.get("readOnly", False)


def test_simulation_results_volume_is_mounted_in_the_driver(rendered):
    docs = rendered["ray-simulation"]
    results_dir = configmap_toml(docs, "fedrank-simulation", "simulation.toml")["results-dir"]
    (job,) = find(docs, "Job", "fedrank-simulate")
    spec = job["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    (container,) = spec["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    env = {e["name"]: e.get("value") for e in container["env"]}

    assert Path(results_dir).is_relative_to(mount["mountPath"])
    assert env["RESULTS_DIR"] == results_dir  # where the entry script looks for checkpoints
    assert env["RAY_ADDRESS"].startswith("ray://fedrank-ray-head-svc:")
    assert '--ray-address "$RAY_ADDRESS"' in container["args"][0]


@pytest.mark.parametrize("target", FLOWER_TARGETS)
def test_supernode_egress_reaches_only_the_fleet_port_and_dns(rendered, target):
    docs = rendered[target]
    (superlink,) = component(docs, "superlink")
    link = superlink["spec"]["template"]["spec"]["containers"][0]
    fleet_port = int(flag(link, "port") or 0)
    (policy,) = [
        d
        for d in find(docs, "NetworkPolicy", "")
        if d["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
        == "supernode"
    ]
    rules = policy["spec"]["egress"]

    assert "Egress" in policy["spec"]["policyTypes"]
    assert policy["spec"]["ingress"] == []
    superlink_labels = superlink["spec"]["template"]["metadata"]["labels"]
    for rule in rules:
        ports = {(p["protocol"], p["port"]) for p in rule["ports"]}
        (peer,) = rule["to"]
        if "namespaceSelector" in peer:
            assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
            assert ports == {("UDP", 53), ("TCP", 53)}
        else:
            assert peer["podSelector"]["matchLabels"].items() <= superlink_labels.items()
            assert ports == {("TCP", fleet_port)}
    assert len(rules) == 2
    for site in component(docs, "supernode"):
        node = site["spec"]["template"]["spec"]["containers"][0]
        assert flag(node, "superlink") == f"superlink:{fleet_port}"


@pytest.mark.parametrize("target", FLOWER_TARGETS)
def test_each_site_has_its_own_partition_and_credentials(rendered, target):
    docs = rendered[target]
    sites = component(docs, "supernode")
    num_clients = configmap_toml(docs, "fedrank-run-config", "run-config.toml")["num-clients"]
    partitions, secrets = [], set()
    for site in sites:
        spec = site["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        config = configmap_toml(
            docs, volumes["node-config"]["configMap"]["name"], "node-config.toml"
        )
        partitions.append(config["partition-id"])
        assert config["num-partitions"] == len(sites)
        secrets.add(volumes["credentials"]["secret"]["secretName"])
        assert site["spec"]["replicas"] == 1
        assert site["spec"]["strategy"]["type"] == "Recreate"

    assert sorted(partitions) == list(range(len(sites))) == list(range(num_clients))
    assert len(secrets) == len(sites)


@pytest.mark.parametrize("target", FLOWER_TARGETS)
def test_status_port_is_where_the_run_config_serves_it(rendered, target):
    docs = rendered[target]
    address = configmap_toml(docs, "fedrank-run-config", "run-config.toml")["status-address"]
    (serverapp,) = component(docs, "serverapp")
    (container,) = serverapp["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (service,) = find(docs, "Service", "fedrank-status")
    (service_port,) = service["spec"]["ports"]
    (policy,) = find(docs, "NetworkPolicy", "serverapp-egress")
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}

    assert address.startswith("0.0.0.0:")  # reachable through the Service, not only in-pod
    assert int(address.rsplit(":", 1)[1]) == ports["status"] == 9095
    assert service_port["targetPort"] == "status"
    assert service["spec"]["selector"] == serverapp["spec"]["selector"]["matchLabels"]
    assert ingress_ports == {ports["status"]}


@pytest.mark.parametrize("target", FLOWER_TARGETS)
def test_run_and_node_configs_are_valid_fedrank_configs(rendered, target):
    from fedrank.config import Scenario

    docs = rendered[target]
    run_config = configmap_toml(docs, "fedrank-run-config", "run-config.toml")
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    node_keys = set()
    for site in component(docs, "supernode"):
        volumes = {v["name"]: v for v in site["spec"]["template"]["spec"]["volumes"]}
        name = volumes["node-config"]["configMap"]["name"]
        node_keys |= set(configmap_toml(docs, name, "node-config.toml"))

    # flwr run rejects run-config keys that [tool.flwr.app.config] lacks.
    assert set(run_config) <= set(app_config["config"])
    assert Scenario.from_mapping(run_config).run.num_clients == len(component(docs, "supernode"))
    assert node_keys <= {"partition-id", "num-partitions", "data-path"}


# ------------------------------------------------------------------ Flower 1.41 flags


def _flower_parsers() -> dict[str, Any]:
    from flwr.supercore.cli.flower_superexec import _parse_args as superexec
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink as superlink
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode as supernode

    return {
        "flower-superlink": superlink(),
        "flower-supernode": supernode(),
        "flower-superexec": superexec(),
    }


@pytest.mark.parametrize("target", FLOWER_TARGETS)
def test_flower_commands_parse_with_the_installed_flower(rendered, target):
    parsers = _flower_parsers()
    seen = set()
    for name, _, container in containers(rendered[target]):
        command = container.get("command", [""])[0]
        if command not in parsers:
            continue
        seen.add(command)
        try:
            parsers[command].parse_args(container["args"])
        except SystemExit as err:  # argparse reports unknown or malformed flags this way
            pytest.fail(f"{name}: {shlex.join([command, *container['args']])}: {err}")
    assert seen == set(parsers)
