"""A site protects its own records: its DP policy, its refusals, its own ledger."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import fedrank.tasks.text_lora as text_lora
from fedrank.client.app import query, train
from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.privacy.accountant import compute_epsilon
from fedrank.privacy.ledger import PrivacyLedger
from fedrank.privacy.plan import planned_release
from fedrank.privacy.site import REFUSAL_REASONS, SITE_ROOT_ENV, party_of
from fedrank.protos import keys
from fedrank.protos.gate import read_refusal
from fedrank.protos.serde import decode_privacy_report
from fedrank.tasks import load_task

DELTA = 1e-5
SCENARIO = Scenario.of(
    strategy="lora",
    dataset="rotten-tomatoes",
    model="tiny-bert",
    num_clients=2,
    clients_per_round=2,
    rounds=3,
    local_epochs=1,
    partitioner="iid",
    batch_size=8,
    physical_batch_size=8,
    lr=1e-2,
    max_length=16,
    train_records=48,
    test_records=16,
    dp="sample",
    dp_noise_multiplier=1.0,
)
LOW_NOISE = SCENARIO.replace(dp_noise_multiplier=0.5)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)
    monkeypatch.delenv(SITE_ROOT_ENV, raising=False)


@pytest.fixture
def trainings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the task's calls of train_lora: a refused round calls it never."""
    calls: list[int] = []
    real: Callable[..., Any] = text_lora.train_lora

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(text_lora, "train_lora", counted)
    return calls


def policy_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def good_policy(tmp_path: Path, **extra: str) -> Path:
    lines = {"min-noise-multiplier": "1.0", "delta": "1e-5", "ledger": '"site-ledger.jsonl"'}
    lines.update(extra)
    return policy_file(tmp_path, "".join(f"{k} = {v}\n" for k, v in lines.items()))


def node(policy: Path | None, **node_config: object) -> Context:
    config: dict[str, object] = {keys.PARTITION_ID: 0, **node_config}
    if policy is not None:
        config["dp-policy"] = str(policy)
    return Context(
        run_id=1,
        node_id=5,
        node_config=config,
        state=RecordDict(),
        run_config={},  # type: ignore[arg-type]
    )


def discovery(scenario: Scenario) -> Message:
    content = RecordDict(
        {
            keys.CONFIG: ConfigRecord({keys.ASK: keys.PARTITION_ID}),
            keys.RUN: ConfigRecord(dict(scenario.client_settings())),
        }
    )
    return Message(content=content, message_type=MessageType.QUERY, dst_node_id=5)


def train_message(scenario: Scenario, server_round: int) -> Message:
    task = load_task(scenario)
    content = task.codec(1).encode_global(server_round, task.initial_state())
    content[keys.CONFIG] = ConfigRecord(
        {keys.SERVER_ROUND: server_round, keys.SETTINGS_DIGEST: scenario.settings_digest()}
    )
    content[keys.RUN] = ConfigRecord(dict(scenario.client_settings()))  # as if re-sent
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=5)


def ledger_of(tmp_path: Path) -> Path:
    return tmp_path / "site-ledger.jsonl"


def test_the_reason_codes_are_the_wires() -> None:
    assert set(REFUSAL_REASONS) == keys.REFUSAL_REASONS


def test_less_noise_than_the_site_minimum_is_refused_also_after_a_restart(
    tmp_path: Path, trainings: list[int]
) -> None:
    # Arrange: the site trained round 1 of a run that meets its policy.
    policy = good_policy(tmp_path)
    site = node(policy)
    query(discovery(SCENARIO), site)
    first = train(train_message(SCENARIO, 1), site)
    assert read_refusal(first) is None
    recorded = ledger_of(tmp_path).read_bytes()
    assert len(trainings) == 1

    # Act: a server asks the same site for less noise, before and after a restart.
    refused = train(train_message(LOW_NOISE, 2), site)
    restarted = node(policy)  # a new SuperNode process: its state is gone
    query(discovery(LOW_NOISE), restarted)  # a valid policy: discovery passes
    refused_again = train(train_message(LOW_NOISE, 2), restarted)

    # Assert: refused with the reason code, nothing trained, the site's ledger as it was.
    for reply in (refused, refused_again):
        assert read_refusal(reply) == (
            "site_policy_noise",
            "the run's noise multiplier 0.5 is below this site's minimum 1",
        )
        assert keys.ARRAYS not in reply.content
    assert len(trainings) == 1
    assert ledger_of(tmp_path).read_bytes() == recorded


def test_the_sites_epsilon_comes_from_its_own_ledger_across_a_restart(
    tmp_path: Path, trainings: list[int]
) -> None:
    policy = good_policy(tmp_path)
    data = load_task(SCENARIO).partition_data(0)
    release = planned_release(SCENARIO, len(data), server_round=1, party=party_of(0))
    site = node(policy)
    query(discovery(SCENARIO), site)
    train(train_message(SCENARIO, 1), site)

    restarted = node(policy)
    query(discovery(SCENARIO), restarted)
    reply = train(train_message(SCENARIO, 2), restarted)

    report = decode_privacy_report(reply.content[keys.PRIVACY][keys.REPORT])  # type: ignore[arg-type]
    two_rounds = compute_epsilon(
        history=[(release.noise_multiplier, release.sample_rate, 2 * release.steps)],
        delta=DELTA,
        accountant="rdp",
    )
    assert report.epsilon_spent == pytest.approx(two_rounds, rel=1e-12)
    ledger = PrivacyLedger(ledger_of(tmp_path), budget_epsilon=None, delta=DELTA, accountant="rdp")
    assert [(r.round, r.party) for r in ledger.releases] == [(1, "partition-0"), (2, "partition-0")]
    assert all(len(r.digest) == 64 for r in ledger.releases)
    # Under DP the reply names no example count and no loss.
    assert set(reply.content[keys.METRICS]) == {keys.DP_EPSILON}


def test_a_round_over_the_sites_budget_is_refused(tmp_path: Path, trainings: list[int]) -> None:
    data = load_task(SCENARIO).partition_data(0)
    release = planned_release(SCENARIO, len(data), server_round=1, party=party_of(0))
    one = compute_epsilon(history=[release], delta=DELTA, accountant="rdp")
    policy = good_policy(tmp_path, **{"max-epsilon": repr(1.05 * one)})
    site = node(policy)
    query(discovery(SCENARIO), site)
    train(train_message(SCENARIO, 1), site)
    before = ledger_of(tmp_path).read_bytes()

    reply = train(train_message(SCENARIO, 2), node(policy))

    refusal = read_refusal(reply)
    assert refusal is not None
    assert refusal[0] == "site_policy_budget"
    assert ledger_of(tmp_path).read_bytes() == before
    assert len(trainings) == 1


@pytest.mark.parametrize(
    ("run", "reason"),
    [
        (SCENARIO.replace(dp="none", dp_noise_multiplier=0.0), "site_policy_no_dp"),
        (SCENARIO.replace(dp_delta=1e-4), "site_policy_delta"),
        (SCENARIO.replace(dp_reproducible_noise=True), "site_policy_reproducible"),
    ],
)
def test_other_requests_for_less_are_refused(
    tmp_path: Path, trainings: list[int], run: Scenario, reason: str
) -> None:
    site = node(good_policy(tmp_path))
    query(discovery(run), site)

    reply = train(train_message(run, 1), site)

    refusal = read_refusal(reply)
    assert refusal is not None
    assert refusal[0] == reason
    assert trainings == []
    assert not ledger_of(tmp_path).exists()


def test_inline_node_config_keys_make_the_same_policy(tmp_path: Path, trainings: list[int]) -> None:
    site = node(
        None,
        **{
            "dp-min-noise-multiplier": 2.0,
            "dp-delta": 1e-5,
            "dp-ledger": str(ledger_of(tmp_path)),
        },
    )
    query(discovery(SCENARIO), site)

    refusal = read_refusal(train(train_message(SCENARIO, 1), site))

    assert refusal is not None
    assert refusal[0] == "site_policy_noise"


def test_a_simulated_site_defaults_to_the_scenarios_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trainings: list[int]
) -> None:
    monkeypatch.setenv(SITE_ROOT_ENV, str(tmp_path / "sites"))
    site = node(None)
    query(discovery(SCENARIO), site)

    reply = train(train_message(SCENARIO, 1), site)

    assert read_refusal(reply) is None
    assert (tmp_path / "sites" / "partition-0" / "privacy-ledger.jsonl").exists()


def test_sample_dp_at_a_site_that_keeps_no_ledger_is_refused_at_discovery() -> None:
    with pytest.raises(ConfigError, match="keeps no privacy ledger"):
        query(discovery(SCENARIO), node(None))


BAD_POLICIES = [
    ("min-noise-multiplier = 1.0\ndelta = 1e-5\nledger = [\n", "not a TOML file"),
    ('min-noise-multiplier = 1.0\ndelta = 1e-5\nledger = "l.jsonl"\nsigma = 2\n', "unknown key"),
    ('min-noise-multiplier = 1.0\nledger = "l.jsonl"\n', "lacks 'delta'"),
    ('min-noise-multiplier = 1.0\ndelta = 0.5\nledger = "l.jsonl"\n', "delta"),
    ('min-noise-multiplier = -1.0\ndelta = 1e-5\nledger = "l.jsonl"\n', "min-noise-multiplier"),
    ('min-noise-multiplier = "high"\ndelta = 1e-5\nledger = "l.jsonl"\n', "min-noise-multiplier"),
    ('delta = 1e-5\nledger = "l.jsonl"\n', "protects nothing"),
    ('max-epsilon = 0\ndelta = 1e-5\nledger = "l.jsonl"\n', "max-epsilon"),
    ('min-noise-multiplier = 1.0\ndelta = 1e-5\nledger = "no/such/folder/l.jsonl"\n', "folder"),
    ('min-noise-multiplier = 1.0\ndelta = 1e-5\nledger = "l.jsonl"\naccountant = "gdp"\n',
     "accountant"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "says"), BAD_POLICIES)
def test_a_malformed_or_contradictory_policy_is_refused_at_discovery_in_one_line(
    tmp_path: Path, text: str, says: str
) -> None:
    site = node(policy_file(tmp_path, text))

    with pytest.raises(ConfigError) as caught:
        query(discovery(SCENARIO), site)

    assert caught.value.field == "dp-policy"
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_policy_given_twice_or_missing_or_with_a_corrupt_ledger_is_refused(
    tmp_path: Path,
) -> None:
    both = node(good_policy(tmp_path), **{"dp-min-noise-multiplier": 3.0})
    missing = node(tmp_path / "absent.toml")
    ledger_of(tmp_path).write_text("not json\n{}\n", encoding="utf-8")
    corrupt = node(good_policy(tmp_path))

    for site, says in ((both, "keep one"), (missing, "cannot read"), (corrupt, "ledger")):
        with pytest.raises(ConfigError, match=says) as caught:
            query(discovery(SCENARIO), site)
        assert "\n" not in str(caught.value)
    assert np.all([caught.value.field == "dp-policy"])
