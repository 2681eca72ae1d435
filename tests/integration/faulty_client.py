"""A ClientApp that fails on purpose: fedrank's real handlers, with faults injected.

Faults are keyed by (round, partition). ``raise``: the client raises before
training. ``hang``: it waits until the test releases it (a file ``release-R-P`` in
the control folder; bounded), long after the round timeout, then trains as usual.
``await_kill``: it writes its process id to ``pid-R-P`` and waits (bounded) for the
test to kill its Ray worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedrank.client import app as fedrank_client

Fault = Literal["raise", "hang", "await_kill"]
WAIT_LIMIT = 120.0  # seconds: a faulty client never outlives a test by much


def wait_for(path: Path, *, limit: float) -> bool:
    """Poll until ``path`` exists (True) or ``limit`` seconds pass (False)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.1)
    return False


def faulty_client_app(faults: Mapping[tuple[int, int], Fault], control: Path) -> ClientApp:
    """fedrank's ClientApp, failing as ``faults`` says; ``control`` is the signal folder."""
    faults = dict(faults)
    control = Path(control)
    app = ClientApp()
    app.query()(fedrank_client.query)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        server_round = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
        partition = fedrank_client.partition_id(context)
        fault = faults.get((server_round, partition))
        if fault == "raise":
            raise RuntimeError(f"injected failure of partition {partition} in round {server_round}")
        if fault == "hang":
            wait_for(control / f"release-{server_round}-{partition}", limit=WAIT_LIMIT)
        if fault == "await_kill":
            marker = control / f"pid-{server_round}-{partition}"
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(str(os.getpid()))
            tmp.replace(marker)
            wait_for(control / "never", limit=WAIT_LIMIT)
        return fedrank_client.train(msg, context)

    return app
