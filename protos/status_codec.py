"""The run status the coordinator serves (``fedrank.v1.Status``), as a dataclass.

Protobuf stays here: the server's status board and the ``fedrank status``
command see :class:`RunStatus` only. A value the run has not produced yet
(accuracy before the first evaluation, epsilon in a run without privacy
accounting) is NaN, never a number that could be mistaken for a measurement:
an epsilon of 0 would claim perfect privacy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, cast, get_args

from fedrank.protos import status_pb2

RunState = Literal["starting", "running", "finished", "failed", "unknown"]
RUN_STATES: tuple[str, ...] = get_args(RunState)


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """Where a run stands.

    Attributes
    ----------
    state : RunState
        ``starting`` (waiting for nodes), ``running``, ``finished`` or ``failed``;
        ``unknown`` for a state this version does not know.
    round : int
        The last completed round (0: only the initial evaluation).
    total_rounds : int
        Rounds the run was configured with.
    last_accuracy : float
        Test accuracy after ``round`` (NaN before the first evaluation).
    epsilon_spent : float
        Privacy budget spent so far (NaN: the run does no privacy accounting).
    rejected_replies : int
        Client replies rejected or missing, summed over the rounds.
    """

    state: RunState
    round: int = 0
    total_rounds: int = 0
    last_accuracy: float = math.nan
    epsilon_spent: float = math.nan
    rejected_replies: int = 0

    def __post_init__(self) -> None:
        if self.state not in RUN_STATES:
            raise ValueError(f"state: must be one of {list(RUN_STATES)}, got {self.state!r}")
        for name in ("round", "total_rounds", "rejected_replies"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")


def status_to_proto(status: RunStatus) -> status_pb2.StatusReply:
    """Encode a status for the wire."""
    return status_pb2.StatusReply(
        round=status.round,
        total_rounds=status.total_rounds,
        last_accuracy=status.last_accuracy,
        epsilon_spent=status.epsilon_spent,
        rejected_replies=status.rejected_replies,
        state=status.state,
    )


def status_from_proto(reply: status_pb2.StatusReply) -> RunStatus:
    """Decode a status; a state this version does not know becomes ``unknown``."""
    state = cast(RunState, reply.state if reply.state in RUN_STATES else "unknown")
    return RunStatus(
        state=state,
        round=max(0, int(reply.round)),
        total_rounds=max(0, int(reply.total_rounds)),
        last_accuracy=float(reply.last_accuracy),
        epsilon_spent=float(reply.epsilon_spent),
        rejected_replies=max(0, int(reply.rejected_replies)),
    )
