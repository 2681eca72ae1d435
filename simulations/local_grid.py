"""A Flower ``Grid`` that runs the ClientApp's handlers in this process, one message at a time.

The ``local`` backend of ``fedrank simulate`` and ``fedrank experiment``: the same
ServerApp, strategies and ClientApp as a Ray simulation, minus the Ray actors and
the SuperLink's message store. Each node has its ``partition-id`` in its node
config and a Context that persists across rounds, as in Flower's simulation
engine; a ClientApp that raises answers with an error reply, as there
(``CLIENT_APP_RAISED_EXCEPTION``); one that exits, as a crashed client
(``CLIENT_APP_CRASHED``: on Ray its worker dies). Clients run one after the other, with the
torch thread count a Ray worker would have (the handler sets it; it is restored
afterwards), so a seed gives the same result bit for bit as on Ray.

Timeouts: a message whose handler has not started before ``timeout`` runs out gets
no reply, nor does one whose handler finishes after it (a running handler cannot be
interrupted in one process; its late reply is dropped, as Ray's is never pulled). A
reply the SuperLink would refuse (:func:`reply_problem`) is dropped too, so a client
that answers wrongly counts once, as a missing reply, on both backends.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import MESSAGE_TTL_TOLERANCE, SUPERLINK_NODE_ID, ErrorCode
from flwr.server.utils.validator import validate_message
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedrank.strategies.sampling import PARTITION_KEY

__all__ = ["InProcessGrid", "reply_problem", "server_identity"]

log = logging.getLogger(__name__)


class InProcessGrid(Grid):
    """``num_nodes`` in-process nodes, partitions ``0..num_nodes-1``, running ``client_app``.

    Parameters
    ----------
    client_app : ClientApp
        The app whose handlers answer every message.
    num_nodes : int
        Number of nodes (one partition each).
    run_config : dict, optional
        The run config every node's Context carries.
    seed : int
        Seeds the node ids (random, as in Flower, so nothing may depend on them).
    """

    def __init__(
        self,
        client_app: ClientApp,
        *,
        num_nodes: int,
        run_config: dict[str, bool | int | float | str] | None = None,
        seed: int = 0,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes: must be at least 1, got {num_nodes}")
        self.client_app = client_app
        rng = np.random.default_rng(seed)
        ids = rng.choice(2**62, size=num_nodes, replace=False) + 1
        self._run = Run.create_empty(run_id=int(rng.integers(1, 2**62)))
        self._contexts = {
            int(node): Context(
                run_id=self._run.run_id,
                node_id=int(node),
                node_config={PARTITION_KEY: pid, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for pid, node in enumerate(ids)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        """Use ``run`` as this grid's run."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid operates in."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A new instruction message (Flower's deprecated helper, kept for the ABC)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Every node's id."""
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run each message through the ClientApp now; keep its reply for ``pull_messages``."""
        return self._deliver(messages, deadline=None)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to the given message ids (each returned once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push the messages, run them in order, return the replies."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self.pull_messages(self._deliver(messages, deadline=deadline))

    def _deliver(self, messages: Iterable[Message], *, deadline: float | None) -> list[str]:
        ids: list[str] = []
        for message in messages:
            message_id = str(uuid.uuid4())
            message.metadata.__dict__["_message_id"] = message_id  # as the SuperLink does
            ids.append(message_id)
            if deadline is not None and time.monotonic() > deadline:
                continue  # timed out: no reply, as from an unreachable node
            context = self._contexts.get(message.metadata.dst_node_id)
            if context is None:
                continue  # no such node: Flower's SuperLink drops it too
            reply = self._handle(message, context)
            if deadline is not None and time.monotonic() > deadline:
                # Finished after the round gave up on it: on Ray the SuperLink stores it,
                # but nobody pulls it. Dropped here too: counted once, as a timeout.
                log.warning(
                    "node %d answered after the timeout; its reply is ignored",
                    message.metadata.dst_node_id,
                )
                continue
            problem = reply_problem(message, reply)
            if problem is not None:
                log.warning(
                    "node %d: its reply is dropped, as the SuperLink drops it: %s",
                    message.metadata.dst_node_id,
                    problem,
                )
                continue
            self._replies[message_id] = reply
        return ids

    def _handle(self, message: Message, context: Context) -> Message:
        threads = torch.get_num_threads()
        try:
            return self.client_app(message, context)
        except Exception as err:  # a failing client is an expected event, as on Ray
            reason = f"{type(err)}:<'{err}'>"
            return Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message
            )
        except SystemExit as err:  # on Ray its worker process would die: the run goes on
            reason = f"the ClientApp exited (status {err.code}) while handling the message"
            error = Error(code=ErrorCode.CLIENT_APP_CRASHED, reason=reason)
            return Message(error, reply_to=message)
        finally:
            torch.set_num_threads(threads)


def reply_problem(message: Message, reply: object) -> str | None:
    """Why the SuperLink would not store ``reply`` to ``message`` (None: it would).

    Flower's link state refuses a reply that is not a valid reply message, answers
    another message, comes from another node or run, or outlives the message's TTL;
    the server then sees no reply. The in-process grid applies the same rules, so a
    bad reply counts once (as a missing one) on both backends.
    """
    if not isinstance(reply, Message):
        return f"the ClientApp returned a {type(reply).__name__}, not a Message"
    reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as the SuperLink does
    meta, sent = reply.metadata, message.metadata
    if meta.reply_to_message_id != sent.message_id:
        return "it does not answer the message sent (reply_to)"
    if meta.src_node_id != sent.dst_node_id:
        return f"it names node {meta.src_node_id} as its sender"
    if meta.run_id != sent.run_id:
        return f"it belongs to run {meta.run_id}"
    errors = validate_message(reply, is_reply_message=True)
    if errors:
        return "; ".join(errors)
    ttl_left = sent.created_at + sent.ttl - meta.created_at
    if meta.ttl - ttl_left > MESSAGE_TTL_TOLERANCE:
        return f"its TTL {meta.ttl:.0f} s exceeds the message's ({ttl_left:.0f} s left)"
    return None


@contextmanager
def server_identity(run: Run) -> Iterator[None]:
    """Give this process the server's task identity for ``run`` (as Flower's simulation does)."""
    before = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = before
