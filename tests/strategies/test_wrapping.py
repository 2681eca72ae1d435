"""WrappingStrategy: wrappers never hide the inner strategy's ledger or checkpoint state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAvg

from fedrank.privacy.ledger import PrivacyLedger
from fedrank.protos.codecs import ArraysCodec
from fedrank.server.resume import SupportsState, ledgers_of
from fedrank.simulations.attacks.adversary import Adversary
from fedrank.strategies.dp_client_level import ClientLevelDp
from fedrank.strategies.dp_sample_level import SampleLevelDpAudit
from fedrank.strategies.wrapping import WrappingStrategy

CODEC = ArraysCodec.for_state({"w": np.zeros(2, dtype=np.float32)})


def ledger(path: Path) -> PrivacyLedger:
    return PrivacyLedger(path, budget_epsilon=None, delta=1e-5, accountant="rdp")


def adversary(inner: Any) -> Adversary:
    return Adversary(
        inner, partitions={0: 1, 1: 2}, malicious=frozenset({1}), craft=lambda *a: [], codec=CODEC
    )


def test_a_ledger_under_an_adversary_is_still_found(tmp_path: Path) -> None:
    client = ledger(tmp_path / "client.jsonl")
    record = ledger(tmp_path / "record.jsonl")
    dp = ClientLevelDp(
        FedAvg(),
        codec=CODEC,
        ledger=client,
        clip_norm=1.0,
        noise_multiplier=1.0,
        expected_clients=2,
        seed=0,
    )
    audit = SampleLevelDpAudit(
        dp,
        codec=CODEC,
        ledger=record,
        partitions={0: 1, 1: 2},
        clip_norm=1.0,
        noise_multiplier=None,
    )

    found = ledgers_of(adversary(audit))

    assert found == [record, client]


def test_the_inner_checkpoint_state_passes_through_every_wrapper(tmp_path: Path) -> None:
    audit = SampleLevelDpAudit(
        FedAvg(),
        codec=CODEC,
        ledger=ledger(tmp_path / "record.jsonl"),
        partitions={0: 1},
        clip_norm=1.0,
        noise_multiplier=None,
    )
    audit.epsilons = {"partition-0": 1.5}
    outer = adversary(audit)
    assert isinstance(outer, SupportsState)

    state = outer.state_dict()
    audit.epsilons = {}
    outer.load_state_dict(state)

    assert audit.epsilons == {"partition-0": 1.5}


def test_a_wrapper_around_a_stateless_strategy_has_empty_state() -> None:
    wrapper = WrappingStrategy(FedAvg())

    assert wrapper.state_dict() == {}
    wrapper.load_state_dict({})  # nothing to restore, nothing raised
