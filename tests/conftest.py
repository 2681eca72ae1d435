"""Shared fixtures."""

import os
from typing import Any

import pytest

# ``make test`` runs three pytest-xdist workers on a 2-core machine: each gets one thread
# for OpenMP and BLAS, in its own process and in every process it starts (CLI runs,
# Flower's SuperLink/SuperNode apps, Ray's workers inherit the variables). Two threads a
# worker oversubscribe the cores: two concurrent copies of the MiniLM DP-SGD test took
# 231 s of CPU and 116 s of wall time with two threads each, 113 s and 57 s with one.
# Set before anything imports torch (which reads OMP_NUM_THREADS once).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    # Flower's SuperExec polls for apps to start every 1 s by default: every message of a
    # deployed test waited up to 1 s for its ClientApp process to start.
    os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.25")


@pytest.fixture
def flower_identity() -> None:
    """Give this process the task identity Flower needs to build Messages outside a run.

    Flower's simulation sets it the same way (a dummy task on the SuperLink node).
    """
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID


# ``make test`` runs on three pytest-xdist workers (``-n 3 --dist loadgroup``). The tests
# that start a federation run one at a time in one of two groups: deployed federations
# (SuperLink and SuperNodes: they mostly wait on Flower's 3 s polling) and simulations
# (Ray or local processes: they use the CPU). So at most one of each runs at once, each
# on a worker of its own, and the third worker runs every other test beside them (with
# two workers the groups held both from the start and the unit tests waited for their
# end: 15-16.5 minutes against 13.8 with three, on this 2-core machine kind). Simulations
# that start no process (no Ray, no federation: ``IN_PROCESS``) are not grouped either.
# Groups are chosen here by node id, because xdist's own
# ``xdist_group`` mark does not reach its scheduler under pytest 9 (xdist renames
# ``item._nodeid``, which pytest 9 no longer reads).
DEPLOYED = (
    "tests/integration/test_deployment.py",
    "tests/integration/test_deployed_lora.py",
    "tests/integration/test_flwr_run_local.py",
    "tests/integration/test_examples.py",
    "tests/deploy/test_operator_path.py",
    "tests/docs/test_doc_commands.py::test_document_commands_run_as_written[README.md]",
    "tests/docs/test_doc_commands.py::test_document_commands_run_as_written[configuration.md]",
    "tests/docs/test_doc_commands.py::test_document_commands_run_as_written[deployment.md]",
    "tests/docs/test_doc_commands.py::test_document_commands_run_as_written[kubernetes.md]",
)
IN_PROCESS = (
    "tests/integration/test_dp_lora_minilm.py",
    "tests/integration/test_dp_rqm.py",
    "tests/integration/test_privacy_attacker.py",
    "tests/integration/test_privacy_audit.py",
    "tests/simulations/test_baselines_runs.py",
)
SIMULATIONS = (
    "tests/integration/",
    "tests/docs/test_doc_commands.py",
    "tests/simulations/test_baselines_runs.py",
    "tests/faults/test_runs.py",
)


def serial_group(nodeid: str) -> str:
    """The serial group of a test, or its own node id when it can run beside any other."""
    if nodeid.startswith(DEPLOYED):
        return "deployed"
    if nodeid.startswith(SIMULATIONS) and not nodeid.startswith(IN_PROCESS):
        return "simulation"
    return nodeid


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest alone does not know it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return serial_group(nodeid)

    return GroupScheduling(config, log)
