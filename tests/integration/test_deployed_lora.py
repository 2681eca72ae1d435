"""DP-LoRA deployed over TLS with authenticated SuperNodes, each site on its own text.

A loopback federation (``fedrank.deploy.federation.local_federation``: a CA, TLS on the
SuperLink, every SuperNode's key registered, two SuperNodes) whose two sites train on
labelled review snippets of their own (``data-path``: a CSV each, of different sizes,
never seen by the coordinator). One run is submitted with ``flwr run`` from this
checkout, as an operator would: DP-LoRA (sample- and client-level DP, a tiny BERT,
federated evaluation) with every scenario field at a value other than its default (all
that a deployment can run together) through ``--run-config``. Then:

- the ServerApp's ``scenario.json`` must hold exactly those values, and every round must
  complete with both sites' replies accepted, which the ClientApp only gives when the
  settings it rebuilt from what it received hash to the server's digest
  (``settings-digest``, checked every message);
- the server's privacy ledger must count for each site exactly the epsilon that site's
  own accountant reports (the audit's mismatch count is 0) and that an independent
  recomputation from the site's own record count gives;
- every round must carry the sites' federated accuracy, and ``flwr run --stream`` must
  show one line per round.

(One run, not one per concern: each deployed run starts a ServerApp and a ClientApp
process per message, about a minute of a 2-core machine.)
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrank.config import FIELDS, Scenario
from fedrank.data.text import read_corpus
from fedrank.deploy.federation import LocalFederation, local_federation
from fedrank.deploy.federation_plan import FederationPlan
from fedrank.deploy.processes import free_ports
from fedrank.deploy.run_config import check_run_config
from fedrank.privacy.accountant import compute_epsilon
from fedrank.privacy.report import privacy_summary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SITE_RECORDS = (48, 72)  # each site's own reviews (different sizes: different epsilons)
RUN_TIMEOUT = 900.0

# Every scenario key at a value other than its default, all runnable together in one
# deployed LoRA run. Not here (and why): `attack` and `malicious-fraction` (a deployment
# refuses simulated attacks: tests/deploy/test_run_config.py), `resume-from` (a new run;
# resuming is tests/server/test_flwr_server_app.py and docs/deployment.md step 8),
# `results-dir` and `status-address` (set per test below).
NOT_DEFAULT: dict[str, Any] = {
    "strategy": "lora",
    "num-clients": 2,
    "clients-per-round": 2,
    "rounds": 2,
    "seed": 7,
    "min-replies": 2,
    "round-timeout": 500.0,
    "num-cpus-per-client": 1.5,
    "num-gpus-per-client": 0.25,
    "device": "cpu",
    "local-epochs": 1,
    "lr": 0.002,
    "momentum": 0.5,
    "batch-size": 8,
    "dataset": "rotten-tomatoes",
    "image-column": "picture",
    "text-column": "review",
    "label-column": "fresh",
    "partitioner": "iid",
    "alpha": 0.5,
    "classes-per-client": 1,
    "shards-per-client": 3,
    "test-fraction": 0.25,
    "train-records": 100,
    "test-records": 40,
    "eval-fraction": 0.2,
    "model": "tiny-bert",
    "max-length": 24,
    "k": 0.3,
    "aggregator": "mean",
    "trim-fraction": 0.1,
    "filter-mads": 3.0,
    "lora-aggregation": "ffa",
    "lora-rank": 4,
    "lora-alpha": 8,
    "lora-dropout": 0.05,
    "lora-targets": "query,key",
    "lora-head-lr": 0.01,
    "lora-pooling": "cls",
    "dp": "both",
    "dp-delta": 1e-6,
    "dp-accountant": "prv",
    "dp-target-epsilon": 30.0,
    "dp-noise-multiplier": 0.9,
    "dp-clip-norm": 0.8,
    "dp-client-target-epsilon": 40.0,
    "dp-client-noise-multiplier": 0.7,
    "dp-client-clip-norm": 1.5,
    "dp-client-sampling": "fixed",  # all 2 of 2: fixed-size sampling is exact here
    "physical-batch-size": 4,
    "attack-seed": 9,
    "attack-knowledge": "all",
    "attack-scale": -3.0,
    "attack-noise-std": 0.5,
    "attack-z-max": 1.5,
    "attack-direction": "inverse_sign",
    "attack-boundary-fraction": 0.1,
    "attack-flip-rule": "targeted",
    "attack-source-class": 0,
    "attack-target-class": 1,
    "status-linger": 0.5,
    "min-clients": 2,
    "connect-timeout": 30.0,
    "discovery-timeout": 150.0,
    "vote-smoothing": 0.1,
    "server-lr": 0.5,
    "server-momentum": 0.8,
    "server-beta1": 0.8,
    "server-beta2": 0.98,
    "server-tau": 0.01,
    "proximal-mu": 0.1,
    "dp-adaptive-clipping": True,
    "dp-clip-quantile": 0.6,
    "dp-clip-learning-rate": 0.1,
    "dp-count-stddev": 1.0,
    "dp-publish-diagnostics": True,
}
# Settings this LoRA run under Gaussian DP cannot take at another value (FRL's coarse
# rankings; RQM in place of the Gaussian mechanism): checked through the run-config
# parser the ServerApp uses (check-run-config) instead of a run of their own.
OTHER_RUN: dict[str, Any] = {
    "rank-bits": 4,
    "dp-mechanism": "rqm",
    "dp-rqm-levels": 8,
    "dp-rqm-keep-probability": 0.6,
}
NOT_DEPLOYABLE = {"attack", "malicious-fraction", "resume-from", "dp-reproducible-noise"}
PER_TEST = {"results-dir", "status-address"}


def run_config(values: dict[str, Any]) -> str:
    """``flwr run --run-config`` pairs (TOML values)."""

    def toml(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return json.dumps(value)
        return repr(value)

    return " ".join(f"{key}={toml(value)}" for key, value in values.items())


def site_reviews(folder: Path) -> dict[int, Path]:
    """Each site's own labelled reviews: a CSV apiece, with the default column names and
    the round-trip run's (``review``, ``fresh``) side by side."""
    corpus = read_corpus()
    order = np.random.default_rng(5).permutation(len(corpus))
    paths: dict[int, Path] = {}
    start = 0
    for site, count in enumerate(SITE_RECORDS):
        path = folder / f"site-{site}.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["text", "label", "review", "fresh"])
            for i in order[start : start + count]:
                text, label = corpus.texts[i], int(corpus.labels[i])
                writer.writerow([text, label, text, label])
        start += count
        paths[site] = path
    return paths


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    folder = tmp_path_factory.mktemp("deployed-lora")
    plan = FederationPlan(
        directory=folder / "fed",
        sites=2,
        data_paths=site_reviews(folder),
        dp_policies=site_policies(folder),
    )
    with local_federation(plan, say=print) as fed:
        yield fed


def site_policies(folder: Path) -> dict[int, Path]:
    """Each site's own DP policy (its ledger beside it): sample-level DP needs one."""
    out = {}
    for site in range(2):
        path = folder / f"site-{site}-policy" / "dp-policy.toml"
        path.parent.mkdir(parents=True)
        path.write_text(
            "min-noise-multiplier = 0.5\nmax-epsilon = 100.0\ndelta = 1e-5\n"
            'ledger = "ledger.jsonl"\n',
            encoding="utf-8",
        )
        out[site] = path
    return out


def submit(fed: LocalFederation, values: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    code = fed.submit(str(ROOT), run_config(values), timeout=RUN_TIMEOUT, echo=lines.append)
    assert code == 0, "\n".join(lines[-40:])
    return lines


def rows(results: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (results / "metrics.jsonl").open()]


def test_every_field_reaches_both_apps_and_each_site_is_charged_its_own_epsilon(
    federation: LocalFederation, tmp_path: Path
) -> None:
    results = tmp_path / "every-field"
    (status_port,) = free_ports(1)
    values = {
        **NOT_DEFAULT,
        "results-dir": str(results),
        "status-address": f"127.0.0.1:{status_port}",
    }
    defaults = Scenario().to_run_config()
    assert set(values) | set(OTHER_RUN) | NOT_DEPLOYABLE == set(FIELDS)  # a new key needs one
    assert [k for k, v in {**values, **OTHER_RUN}.items() if v == defaults[k]] == []
    frl = check_run_config(run_config({"strategy": "frl", "rank-bits": 4}))
    rqm_values = {k: v for k, v in OTHER_RUN.items() if k != "rank-bits"}
    rqm = check_run_config(
        run_config({"strategy": "lora", "dp": "client", "dp-client-target-epsilon": 8.0,
                    **rqm_values})
    )  # fmt: skip
    assert frl.frl.rank_bits == 4
    assert (rqm.dp.client_mechanism, rqm.dp.rqm_levels, rqm.dp.rqm_keep_probability) == (
        "rqm", 8, 0.6,
    )  # fmt: skip

    lines = submit(federation, values)

    written = json.loads((results / "scenario.json").read_text())
    assert written == {**defaults, **values}  # the ServerApp's scenario, key for key
    # Both sites trained and evaluated every round: each rebuilt the run from the
    # settings it was sent, and a client whose settings hash differently refuses.
    metrics = rows(results)
    assert [row["round"] for row in metrics] == [0, 1, 2]
    eval_fraction = float(values["eval-fraction"])
    held = [round(eval_fraction * n) for n in SITE_RECORDS]
    for row in metrics[1:]:
        assert row["replies"] == 2
        assert row["rejected"] == 0
        assert row["dp-record-mismatch"] == 0  # the ledger counts what each site reports
        assert row["federated_replies"] == 2
        assert row["federated_examples"] == sum(held)
        assert 0.0 <= row["federated_accuracy"] <= 1.0
    streamed = [line for line in lines if "fedrank: round" in line]
    for r in (1, 2):
        assert any(f"round {r}/2:" in line and "epsilon/record" in line for line in streamed)
        assert any(f"round {r}/2:" in line and "federated accuracy" in line for line in streamed)

    # Each site's epsilon, recomputed from its own record count, is the ledger's.
    scenario = Scenario.from_mapping(values)
    parties = privacy_summary(results)["record"]["parties"]
    assert len(parties) == 2
    by_size = sorted(parties.values(), key=lambda p: p["steps"])
    for party, records, out in zip(by_size, SITE_RECORDS, held, strict=True):
        batches = math.ceil((records - out) / scenario.train.batch_size)
        (sigma,) = party["noise_multipliers"]
        assert party["sample_rates"] == [1.0 / batches]
        assert party["steps"] == 2 * batches
        own = compute_epsilon(
            history=[(sigma, 1.0 / batches, batches)] * 2,
            delta=scenario.dp.delta,
            accountant=scenario.dp.accountant,
        )
        assert party["epsilon"] == pytest.approx(own, rel=1e-9)
        assert party["epsilon"] <= float(values["dp-target-epsilon"])
    assert by_size[0]["epsilon"] != by_size[1]["epsilon"]
