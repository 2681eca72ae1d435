"""The privacy report of a results folder: settings, releases and epsilon per party.

A DP-LoRA run writes ``privacy.json`` (what was asked: mode, delta, accountant,
budgets, noise) and one ledger per privacy unit (``privacy-ledger-record.jsonl``
for the clients' DP-SGD, ``privacy-ledger-client.jsonl`` for the server's
client-level releases). Epsilon is always recomputed from the ledgers here, never
copied from the metrics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedrank.errors import CheckpointError, ConfigError
from fedrank.privacy.ledger import PrivacyLedger, Unit
from fedrank.privacy.randomness import NOT_PRIVATE_NOTE, SourceKind
from fedrank.privacy.relation import NEIGHBOURING_RELATION, RELATION_DESCRIPTION

SETTINGS_FILE = "privacy.json"
LEDGER_FILES: dict[Unit, str] = {
    "record": "privacy-ledger-record.jsonl",
    "client": "privacy-ledger-client.jsonl",
}
RELATION_KEY = "neighbouring_relation"
"""``privacy.json`` key: the relation every guarantee of the run is stated under."""
NOISE_KEY = "noise"
"""``privacy.json`` key: ``"secure"`` or ``"reproducible"`` (the run's noise source)."""
NOTE_KEY = "note"
"""``privacy.json`` key: :data:`NOT_PRIVATE_NOTE` for reproducible noise, else None."""


def claim_settings(noise: SourceKind) -> dict[str, Any]:
    """The ``privacy.json`` entries that qualify every epsilon of a run.

    Merge them into the run's settings: the relation (:data:`NEIGHBOURING_RELATION`),
    the kind of noise source, and the note that reproducible noise makes no privacy
    claim.
    """
    if noise not in ("secure", "reproducible"):
        raise ConfigError("noise", f"must be 'secure' or 'reproducible', got {noise!r}")
    return {
        RELATION_KEY: NEIGHBOURING_RELATION,
        NOISE_KEY: noise,
        NOTE_KEY: NOT_PRIVATE_NOTE if noise == "reproducible" else None,
    }


UNIT_TITLES: dict[Unit, str] = {
    "record": "sample-level DP (unit: one training record; each client spends its own)",
    "client": "client-level DP (unit: one client's whole data; the server spends)",
}


def read_settings(directory: str | Path) -> dict[str, Any]:
    """``privacy.json`` of a results folder."""
    path = Path(directory) / SETTINGS_FILE
    if not path.exists():
        raise CheckpointError(f"{path} not found: is {directory} the results folder of a LoRA run?")
    settings: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return settings


def open_ledger(directory: str | Path, unit: Unit, settings: Mapping[str, Any]) -> PrivacyLedger:
    """The run's ledger for ``unit``, read back with the run's delta, accountant and budget."""
    return PrivacyLedger(
        Path(directory) / LEDGER_FILES[unit],
        budget_epsilon=settings[unit]["budget"],
        delta=settings["delta"],
        accountant=settings["accountant"],
    )


def ledger_summary(ledger: PrivacyLedger, unit: Unit) -> dict[str, Any]:
    """Releases and epsilon of every party of ``unit`` in ``ledger``.

    Returns
    -------
    dict
        ``releases`` (count), ``budget``, ``max_epsilon`` and ``parties``: party ->
        ``{"releases", "rounds", "steps", "noise_multipliers", "sample_rates", "epsilon"}``.
    """
    parties: dict[str, dict[str, Any]] = {}
    for release in ledger.releases:
        if release.unit != unit:
            continue
        entry = parties.setdefault(
            release.party,
            {"releases": 0, "rounds": [], "steps": 0, "noise_multipliers": [], "sample_rates": []},
        )
        entry["releases"] += 1
        entry["rounds"].append(release.round)
        entry["steps"] += release.steps
        for key, value in (
            ("noise_multipliers", release.noise_multiplier),
            ("sample_rates", release.sample_rate),
        ):
            if value not in entry[key]:
                entry[key].append(value)
    for party, entry in parties.items():
        entry["epsilon"] = ledger.spent(unit=unit, party=party)
    return {
        "releases": sum(e["releases"] for e in parties.values()),
        "budget": ledger.budget_epsilon,
        "max_epsilon": max((e["epsilon"] for e in parties.values()), default=0.0),
        "parties": parties,
    }


def privacy_summary(directory: str | Path) -> dict[str, Any]:
    """Settings and, for each unit the run protects, :func:`ledger_summary`."""
    settings = read_settings(directory)
    out: dict[str, Any] = {"settings": settings}
    for unit in LEDGER_FILES:
        if settings.get(unit):
            out[unit] = ledger_summary(open_ledger(directory, unit, settings), unit)
    return out


def _rounds(rounds: list[int]) -> str:
    if not rounds:
        return "-"
    if rounds == list(range(rounds[0], rounds[-1] + 1)):
        return f"{rounds[0]}-{rounds[-1]}" if len(rounds) > 1 else str(rounds[0])
    return ",".join(str(r) for r in rounds)


def _numbers(values: list[float]) -> str:
    return ",".join(f"{v:.4g}" for v in values)


def format_privacy_report(directory: str | Path) -> str:
    """The privacy report of a results folder as text (what ``fedrank privacy`` prints)."""
    summary = privacy_summary(directory)
    settings = summary["settings"]
    lines = [
        f"privacy report of {directory}",
        f"dp mode {settings['dp']}, delta {settings['delta']:g}, "
        f"accountant {settings['accountant']}",
    ]
    if settings["dp"] == "none":
        lines.append("no differential privacy: this run makes no privacy claim")
    elif RELATION_KEY in settings:
        relation = settings[RELATION_KEY]
        meaning = f" ({RELATION_DESCRIPTION})" if relation == NEIGHBOURING_RELATION else ""
        lines.append(f"neighbouring relation: {relation}{meaning}")
    if settings.get(NOISE_KEY) == "reproducible":
        lines.append(f"{NOT_PRIVATE_NOTE.upper()}: anyone with the seed can replay the noise")
    for unit in LEDGER_FILES:
        if unit not in summary:
            continue
        part = summary[unit]
        unit_settings = settings[unit]
        budget = part["budget"]
        lines += [
            "",
            UNIT_TITLES[unit],
            f"  clip norm {unit_settings['clip_norm']:g}, noise multiplier "
            f"{unit_settings['noise_multiplier']}, budget "
            f"{'none' if budget is None else f'{budget:g}'}, releases {part['releases']}",
            f"  {'party':<16} {'releases':>8} {'rounds':>10} {'steps':>7} "
            f"{'sigma':>8} {'q':>8} {'epsilon':>9}",
        ]
        for party, entry in sorted(part["parties"].items()):
            lines.append(
                f"  {party:<16} {entry['releases']:>8} {_rounds(entry['rounds']):>10} "
                f"{entry['steps']:>7} {_numbers(entry['noise_multipliers']):>8} "
                f"{_numbers(entry['sample_rates']):>8} {entry['epsilon']:>9.4f}"
            )
        verdict = (
            "no budget set"
            if budget is None
            else ("within budget" if part["max_epsilon"] <= budget else "OVER BUDGET")
        )
        lines.append(f"  max epsilon {part['max_epsilon']:.4f} ({verdict})")
    return "\n".join(lines)
