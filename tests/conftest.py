"""Shared fixtures."""

import pytest


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
