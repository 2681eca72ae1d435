"""Which sampled clients failed in a round, and why.

Flower hands the server a reply per client that answered and nothing for one that
did not. A failed client's reply carries only an ``Error`` (a code and a text), so
the reason is read from those, as far as Flower 1.41 tells them apart:

========================  ==================================================
reason                    what Flower produced
========================  ==================================================
``client_error``          the ClientApp raised (``CLIENT_APP_RAISED_EXCEPTION``);
                          or it could not be loaded (``LOAD_CLIENT_APP_EXCEPTION``)
``timeout``               no reply within the round timeout; or the message
                          expired on the SuperLink (``MESSAGE_UNAVAILABLE``,
                          ``REPLY_MESSAGE_UNAVAILABLE``)
``worker_died``           the Ray actor's process died while it ran the client
                          (code ``UNKNOWN`` with a Ray ``ActorDiedError`` /
                          ``ActorUnavailableError``); in a deployment the ClientApp
                          process crashed (``CLIENT_APP_CRASHED``) or the node
                          went away (``NODE_UNAVAILABLE``)
``worker_restarting``     the client was given to an actor that Ray was still
                          restarting after a death: it never ran (asked again
                          within the round first, :func:`ask_again_if_never_run`)
``unknown``               any other error
========================  ==================================================

Every failure is logged with its partition and reason; the counts go into the
round's metrics as ``rejected.<reason>``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flwr.app import Message
from flwr.app.error import Error
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedrank.strategies.exchange import send_and_receive

log = logging.getLogger(__name__)

# The Ray exceptions that mean the actor (its worker process) is gone.
_RAY_ACTOR_ERRORS = ("ActorDiedError", "ActorUnavailableError", "RayActorError")
_BY_CODE = {
    ErrorCode.CLIENT_APP_RAISED_EXCEPTION: "client_error",
    ErrorCode.LOAD_CLIENT_APP_EXCEPTION: "client_error",
    ErrorCode.MESSAGE_UNAVAILABLE: "timeout",
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE: "timeout",
    ErrorCode.NODE_UNAVAILABLE: "worker_died",
    ErrorCode.CLIENT_APP_CRASHED: "worker_died",
}


@dataclass(frozen=True)
class ClientFailure:
    """One sampled client that gave the round no usable reply.

    Parameters
    ----------
    node_id : int
        Flower node id the message went to.
    partition_id : int | None
        Its partition, when known.
    reason : str
        One of the reasons in the module docstring.
    detail : str
        The last line of Flower's error text, or what was waited for.
    """

    node_id: int
    partition_id: int | None
    reason: str
    detail: str


def failure_reason(error: Error) -> str:
    """The reason code of a reply's ``Error`` (see the module docstring)."""
    text = error.reason or ""
    if error.code in _BY_CODE:
        return _BY_CODE[error.code]
    if any(name in text for name in _RAY_ACTOR_ERRORS):
        return "worker_restarting" if "actor is restarting" in text else "worker_died"
    return "unknown"


def ask_again_if_never_run(
    grid: Grid,
    messages: Sequence[Message],
    replies: Sequence[Message],
    *,
    deadline: float,
    pause: float = 1.0,
    attempts: int = 5,
) -> list[Message]:
    """``replies``, where a client that never ran was asked again while time remains.

    On Ray, a client handed to an actor that is still restarting after another
    client's crash never runs (``worker_restarting``): an honest site would lose its
    vote for another's fault. Its message is sent again (the same content to the same
    node) after ``pause`` seconds, at most ``attempts`` times, each waiting until
    ``deadline`` (``time.monotonic()``, the round's end) at most. A client that still
    does not answer keeps its last reply, or none (a timeout).
    """
    sent = {m.metadata.dst_node_id: m for m in messages}
    out = list(replies)
    for _ in range(attempts):
        unrun = {
            r.metadata.src_node_id
            for r in out
            if r.has_error() and failure_reason(r.error) == "worker_restarting"
        }
        left = deadline - time.monotonic() - pause
        if not unrun or left <= 0:
            break
        log.info("asking %d client(s) again: their actor was restarting", len(unrun))
        time.sleep(pause)
        again = [
            Message(sent[n].content, dst_node_id=n, message_type=sent[n].metadata.message_type)
            for n in sorted(unrun)
            if n in sent
        ]
        answers = list(send_and_receive(grid, again, timeout=left))
        answered = {r.metadata.src_node_id for r in answers}
        out = [r for r in out if r.metadata.src_node_id not in answered] + answers
    return out


def split_replies(
    server_round: int,
    messages: Sequence[Message],
    replies: Sequence[Message],
    *,
    timeout: float,
    partition_of: Mapping[int, int] | None = None,
) -> tuple[list[Message], list[ClientFailure]]:
    """Separate the round's answers from its failures; log every failure.

    Parameters
    ----------
    server_round : int
        For the log.
    messages : Sequence[Message]
        What was sent (one per sampled node).
    replies : Sequence[Message]
        What came back within ``timeout``.
    timeout : float
        The round timeout, for the log.
    partition_of : Mapping[int, int], optional
        Node id -> partition id, to name partitions in the log.

    Returns
    -------
    answered, failures
        Replies without an error (still to be validated by the strategy), and one
        :class:`ClientFailure` per error reply or missing reply.
    """
    partition_of = partition_of or {}
    answered: list[Message] = []
    failures: list[ClientFailure] = []
    replied: set[int] = set()
    for reply in replies:
        node = reply.metadata.src_node_id
        replied.add(node)
        if not reply.has_error():
            answered.append(reply)
            continue
        reason = failure_reason(reply.error)
        failures.append(
            ClientFailure(node, partition_of.get(node), reason, _last_line(reply.error.reason))
        )
    for message in messages:
        node = message.metadata.dst_node_id
        if node not in replied:
            failures.append(
                ClientFailure(
                    node, partition_of.get(node), "timeout", f"no reply within {timeout:g} s"
                )
            )
    for failure in failures:
        log.warning(
            "round %d: partition %s (node %d) excluded, %s: %s",
            server_round,
            "?" if failure.partition_id is None else failure.partition_id,
            failure.node_id,
            failure.reason,
            failure.detail,
        )
    return answered, failures


def _last_line(text: str | None, *, limit: int = 300) -> str:
    # A Ray error's text is a traceback; its last line says what was raised.
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    last = lines[-1].removesuffix("'>") if lines else ""
    return last if len(last) <= limit else last[: limit - 3] + "..."


def failure_counts(failures: Sequence[ClientFailure]) -> dict[str, int]:
    """``{"rejected.<reason>": count}`` for the round's metrics."""
    counts = Counter(f.reason for f in failures)
    return {f"rejected.{reason}": count for reason, count in sorted(counts.items())}
