"""Replies from a deployment's grid are pulled at short, growing intervals, never 3 s."""

from __future__ import annotations

import ast
from collections.abc import Iterable

import pytest
from flwr.app import Message, RecordDict
from flwr.superlink.grid import HttpGrid

from fedrank.strategies import exchange
from tests.test_structure import ROOT, SOURCES


class Clock:
    """Virtual time for ``exchange``: ``sleep`` advances it and records each pause."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


class ScriptedGrid(HttpGrid):
    """A deployment's grid whose node ``n`` replies ``arrivals[n]`` seconds after the push."""

    def __init__(self, clock: Clock, arrivals: dict[int, float]) -> None:
        super().__init__(insecure=True, token="test")
        self.clock = clock
        self.arrivals = arrivals
        self.sent: dict[str, Message] = {}
        self.pulls = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = f"m{message.metadata.dst_node_id}"
            self.sent[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        out = []
        for message_id in message_ids:
            message = self.sent[message_id]
            if self.arrivals[message.metadata.dst_node_id] <= self.clock.now:
                reply = Message(RecordDict(), reply_to=message)
                reply.metadata.__dict__["_reply_to_message_id"] = message_id
                out.append(reply)
        return out


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, flower_identity: None) -> Clock:
    fake = Clock()
    monkeypatch.setattr(exchange.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(exchange.time, "sleep", fake.sleep)
    return fake


def messages(*nodes: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type="train") for n in nodes]


def test_replies_are_seen_within_a_quarter_second_of_arriving(clock: Clock) -> None:
    grid = ScriptedGrid(clock, {1: 0.5, 2: 7.0})

    replies = exchange.send_and_receive(grid, messages(1, 2), timeout=60.0)

    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m1", "m2"]
    assert 7.0 <= clock.now < 7.0 + exchange.LONGEST_PAUSE
    assert clock.pauses[0] == exchange.FIRST_PAUSE
    assert max(clock.pauses) == exchange.LONGEST_PAUSE
    assert all(b >= a for a, b in zip(clock.pauses, clock.pauses[1:], strict=False))


def test_a_node_that_never_answers_costs_the_timeout_and_no_more(clock: Clock) -> None:
    grid = ScriptedGrid(clock, {1: 0.0, 2: float("inf")})

    replies = exchange.send_and_receive(grid, messages(1, 2), timeout=5.0)

    assert [r.metadata.reply_to_message_id for r in replies] == ["m1"]
    assert clock.now == pytest.approx(5.0)


def test_answers_already_there_are_taken_without_waiting(clock: Clock) -> None:
    grid = ScriptedGrid(clock, {1: 0.0, 2: 0.0})

    replies = exchange.send_and_receive(grid, messages(1, 2), timeout=5.0)

    assert len(replies) == 2
    assert (grid.pulls, clock.pauses) == (1, [])


def test_every_exchange_in_the_product_goes_through_this_module() -> None:
    # A plain `grid.send_and_receive` would wait on Flower's 3 s pull again in deployments.
    exchange_module = ROOT / "strategies" / "exchange.py"
    calls = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in SOURCES
        if path != exchange_module
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "send_and_receive"
    ]
    assert calls == [], "call fedrank.strategies.exchange.send_and_receive instead"
