"""``fedrank audit``: an empirical lower bound on epsilon from one DP-LoRA run with canaries.

One-run auditing (Steinke, Nasr and Jagielski 2023, arXiv 2305.08846): m canaries, each
included with probability 1/2 by the auditor's own secret coin
(:func:`fedrank.privacy.canaries.plan_canaries`), go into one real federation; after
it, each is scored by how far the global adapter moved along its coordinate, the
highest scores are guessed "included" and the lowest "excluded", and the count of
right guesses gives an epsilon the run is not below (at the chosen confidence,
:func:`fedrank.privacy.audit.audit`). That bound is reported beside the epsilon the
run's ledger claims: a bound above the claim means the mechanism is broken.

- ``level="sample"``: gradient canaries inside the sites' DP-SGD (records whose
  per-example gradient is a Dirac of norm C), assigned to sites uniformly; each site
  gets its own from its own state (simulation only). Sites train with SGD during the
  audit (:class:`~fedrank.privacy.canaries.GradientCanaries`).
- ``level="client"``: canary clients, added to the population, whose update is a Dirac
  of norm C (the client clip norm); Poisson sampling and the server's noise treat them
  like any other client.

``noise_off=True`` runs the same federation with the noise switched off but the claim
kept (a deliberately broken mechanism): the audit must then find a bound above the
claim, which shows that it can fail. The federation is the real one (Flower's local
backend or Ray, fedrank's ClientApp, strategies, site ledgers and server ledgers).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import Strategy

from fedrank.artifacts import FINAL_STATE, read_arrays
from fedrank.client.app import partition_id, query, run_settings, train_reply
from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.models.lora import LORA_A_SUFFIX
from fedrank.privacy.audit import AuditResult, audit
from fedrank.privacy.canaries import (
    CanaryPlan,
    GradientCanaries,
    canary_scores,
    dirac_update,
    plan_canaries,
    write_site_canaries,
)
from fedrank.privacy.randomness import RandomSource
from fedrank.privacy.report import privacy_summary
from fedrank.protos import keys
from fedrank.protos.codecs import Reply
from fedrank.simulations.run import Backend, simulate
from fedrank.strategies.dp_client_level import ClientLevelDp
from fedrank.tasks import load_task

log = logging.getLogger(__name__)

AuditLevel = Literal["sample", "client"]
AUDIT_FILE = "audit.json"


def guess_rules(canaries: int) -> tuple[tuple[int, int], ...]:
    """The (k+, k-) guess rules, fixed before any score is seen (Bonferroni over them)."""
    return (
        (canaries // 5, canaries // 5),
        (canaries // 10, canaries // 10),
        (canaries // 4, 0),
    )


@dataclass(frozen=True)
class AuditReport:
    """What one audited run found, beside what its ledger claims.

    Attributes
    ----------
    level : {"sample", "client"}
    noise : {"on", "off"}
        "off": the self-test (noise switched off, claim kept).
    canaries, included : int
        m, and how many the coin put in.
    claimed_epsilon : float
        The largest epsilon the run's ledger claims for the audited unit.
    result : AuditResult
        The empirical lower bound and the guesses that gave it.
    results_dir : str
        The audited run's results folder.
    """

    level: AuditLevel
    noise: Literal["on", "off"]
    canaries: int
    included: int
    claimed_epsilon: float
    result: AuditResult
    results_dir: str

    @property
    def consistent(self) -> bool:
        """The empirical bound does not exceed the claim."""
        return self.result.epsilon_lower_bound <= self.claimed_epsilon

    def line(self) -> str:
        """One line for the terminal."""
        r = self.result
        verdict = "consistent with the claim" if self.consistent else "VIOLATES THE CLAIM"
        return (
            f"{self.level}-level audit, noise {self.noise}: empirical epsilon >= "
            f"{r.epsilon_lower_bound:.3f} (at {r.confidence:.0%}, delta {r.delta:g}; "
            f"{r.correct} of {r.guesses} guesses right, {self.included} of "
            f"{self.canaries} canaries in), claimed {self.claimed_epsilon:.3f}: {verdict}"
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (``audit.json``)."""
        return {**asdict(self), "consistent": self.consistent}


class _SilentSource(RandomSource):
    """Audit self-test only: every Gaussian draw is 0 (the noise switched off)."""

    def derive(self, *labels: str | int) -> RandomSource:
        return _SilentSource(super().derive(*labels).state())

    def normal(
        self, shape: int | Sequence[int], *, std: float = 1.0, mean: float = 0.0
    ) -> np.ndarray:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        return np.full(dims, float(mean))


def silence_server_noise(strategy: Strategy, *_: object) -> Strategy:
    """A strategy wrapper that switches ClientLevelDp's noise off (self-test only)."""
    current: object = strategy
    for _depth in range(16):
        if isinstance(current, ClientLevelDp):
            current.source = _SilentSource(current.source.state())
            return strategy
        current = getattr(current, "strategy", None)
        if current is None:
            break
    raise ConfigError("dp", "no client-level DP in this run to switch off")


def _sample_app(plan: CanaryPlan, noise_off: bool) -> ClientApp:
    app = ClientApp()
    app.query()(query)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        mine = plan.held_by(partition_id(context))
        write_site_canaries(
            context.state, GradientCanaries(mine, noise_scale=0.0 if noise_off else 1.0)
        )
        return train_reply(msg, context)

    return app


def _client_app(plan: CanaryPlan, first_canary: int, clip_norm: float) -> ClientApp:
    included = plan.included_canaries()
    app = ClientApp()
    app.query()(query)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = partition_id(context)
        if pid < first_canary:
            return train_reply(msg, context)
        # A canary client: its update is a Dirac of norm C on its secret coordinate.
        scenario = run_settings(msg, context)
        server_round = int(msg.content.config_records[keys.CONFIG][keys.SERVER_ROUND])  # type: ignore[arg-type]
        codec = load_task(scenario).codec(msg.metadata.run_id)
        state = codec.decode_global(server_round, msg.content)
        shapes = {name: value.shape for name, value in state.items()}
        update = dirac_update(shapes, included[pid - first_canary], norm=clip_norm)
        moved = {name: (state[name] + update[name]).astype(state[name].dtype) for name in state}
        reply = Reply(state=moved, num_examples=None)
        return Message(content=codec.encode_reply(server_round, reply), reply_to=msg)

    return app


def run_audit(
    scenario: Scenario,
    *,
    level: AuditLevel,
    canaries: int,
    noise_off: bool = False,
    confidence: float = 0.95,
    backend: Backend = "local",
    auditor: RandomSource | None = None,
) -> AuditReport:
    """Run one federation of ``scenario`` with ``canaries`` canaries; audit it.

    Parameters
    ----------
    scenario : Scenario
        A LoRA scenario with ``dp`` = ``level`` (sample or client).
    level : {"sample", "client"}
        What is audited.
    canaries : int
        m (up to the number of trained coordinates).
    noise_off : bool
        The self-test: the same run with its noise switched off, the claim kept.
    confidence : float
        Of the lower bound, over the auditor's coin.
    backend : {"local", "ray"}
        Where the federation runs.
    auditor : RandomSource, optional
        The auditor's secret coin (default: a fresh secure one).
    """
    if scenario.dp.mode != level:
        raise ConfigError(
            "dp", f"a {level}-level audit needs dp = {level!r}, got {scenario.dp.mode!r}"
        )
    task = load_task(scenario)
    initial = task.initial_state()
    shapes = {name: value.shape for name, value in initial.items()}
    coin = auditor or RandomSource.secure()
    n = scenario.run.num_clients
    # Canaries on LoRA A where it trains: B starts at zero, so real gradients of A stay
    # small and interfere least with a canary's coordinate (the audit's power).
    quiet = [name for name in shapes if name.endswith(LORA_A_SUFFIX)] or None
    plan = plan_canaries(
        shapes, canaries, source=coin, owners=n if level == "sample" else 0, tensors=quiet
    )
    included = int(np.count_nonzero(plan.included))
    if level == "sample":
        run = scenario
        app = _sample_app(plan, noise_off)
        wrap = None
    else:
        # The included canary clients join the population: partitions n, n + 1, ...
        # The sampling rate stays m / n (clients per round grow with the population),
        # and each real client keeps its share of a train-records subset.
        records, total = scenario.data.train_records, n + included
        run = scenario.replace(
            num_clients=total,
            clients_per_round=max(1, round(scenario.run.clients_per_round * total / n)),
            train_records=records // n * total if records else 0,
        )
        app = _client_app(plan, n, scenario.dp.client_clip_norm)
        wrap = silence_server_noise if noise_off else None
    simulate(run, backend=backend, client_app=app, wrap_strategy=wrap)
    directory = Path(run.output.results_dir)
    final = read_arrays(directory / FINAL_STATE)
    scores = canary_scores(initial, final, plan.canaries)
    unit = "record" if level == "sample" else "client"
    claimed = float(privacy_summary(directory)[unit]["max_epsilon"])
    result = audit(
        scores,
        plan.included,
        rules=guess_rules(canaries),
        delta=scenario.dp.delta,
        confidence=confidence,
    )
    report = AuditReport(
        level=level,
        noise="off" if noise_off else "on",
        canaries=canaries,
        included=included,
        claimed_epsilon=claimed,
        result=result,
        results_dir=str(directory),
    )
    (directory / AUDIT_FILE).write_text(
        json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return report


def audit_table(reports: Sequence[AuditReport]) -> str:
    """A markdown table of audits (what docs/privacy.md shows)."""
    lines = [
        "| level | noise | canaries (in) | guesses right | empirical epsilon >= "
        "| claimed epsilon |",
        "|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r.level} | {r.noise} | {r.canaries} ({r.included}) | "
            f"{r.result.correct}/{r.result.guesses} | {r.result.epsilon_lower_bound:.3f} | "
            f"{r.claimed_epsilon:.3f} |"
        )
    return "\n".join(lines)


def report_of(data: Mapping[str, Any]) -> AuditReport:
    """An :class:`AuditReport` read back from ``audit.json``."""
    return AuditReport(
        level=data["level"],
        noise=data["noise"],
        canaries=int(data["canaries"]),
        included=int(data["included"]),
        claimed_epsilon=float(data["claimed_epsilon"]),
        result=AuditResult(**data["result"]),
        results_dir=str(data["results_dir"]),
    )
