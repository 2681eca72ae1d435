"""Where a run's privacy ledgers stand, as a checkpoint records it and a resume checks it.

A checkpoint records, for every ledger a strategy writes to (:func:`ledgers_of`), its
path, how many releases it held and their digest (:func:`ledger_positions`). A resumed
run refuses a ledger with fewer releases than that, or other ones
(:func:`check_ledger_positions`): epsilon read after a resume is never lower than before
the crash. Used by :class:`fedrank.server.resume.RunCheckpointer`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import Strategy

from fedrank.errors import CheckpointError
from fedrank.privacy.ledger import PrivacyLedger

log = logging.getLogger(__name__)


def ledgers_of(strategy: Strategy) -> list[PrivacyLedger]:
    """Every privacy ledger a strategy (or a strategy it wraps) records releases in.

    A wrapper keeps its inner strategy as ``.strategy`` and its ledger as ``.ledger``
    (:class:`fedrank.strategies.dp_client_level.ClientLevelDp` does).
    """
    found: list[PrivacyLedger] = []
    current: object = strategy
    for _ in range(16):  # wrappers nest a few levels at most; never loop forever
        ledger = getattr(current, "ledger", None)
        if isinstance(ledger, PrivacyLedger) and ledger not in found:
            found.append(ledger)
        current = getattr(current, "strategy", None)
        if current is None:
            break
    return found


def _releases_digest(ledger: PrivacyLedger, count: int) -> str:
    lines = "\n".join(r.to_json() for r in ledger.releases[:count])
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _ledger_key(ledger: PrivacyLedger, results_dir: Path) -> str:
    path = ledger.path.resolve()
    try:
        return str(path.relative_to(results_dir.resolve()))
    except ValueError:
        return str(path)


def ledger_positions(strategy: Strategy, results_dir: Path) -> list[dict[str, Any]]:
    """Where each of the strategy's ledgers stands: path, releases, their digest."""
    return [
        {
            "path": _ledger_key(ledger, results_dir),
            "releases": len(ledger.releases),
            "sha256": _releases_digest(ledger, len(ledger.releases)),
        }
        for ledger in ledgers_of(strategy)
    ]


def check_ledger_positions(
    positions: list[dict[str, Any]], strategy: Strategy, results_dir: Path
) -> None:
    """Refuse to resume with a ledger that lacks releases the checkpoint saw.

    Raises
    ------
    CheckpointError
        A ledger recorded in the checkpoint is not used by ``strategy``, holds fewer
        releases than it did, or holds other ones (replaced or edited).
    """
    live = {_ledger_key(ledger, results_dir): ledger for ledger in ledgers_of(strategy)}
    for position in positions:
        ledger = live.get(position["path"])
        if ledger is None:
            raise CheckpointError(
                f"the checkpoint counts releases in the privacy ledger {position['path']}, "
                "which this run does not use: resume with the same privacy settings"
            )
        have, need = len(ledger.releases), int(position["releases"])
        if have < need:
            raise CheckpointError(
                f"privacy ledger {ledger.path} holds {have} releases, the checkpoint saw "
                f"{need}: epsilon would be undercounted; restore the ledger file"
            )
        if _releases_digest(ledger, need) != position["sha256"]:
            raise CheckpointError(
                f"privacy ledger {ledger.path}: its first {need} releases are not those the "
                "checkpoint saw (file replaced or edited); restore the ledger file"
            )
        if have > need:
            log.warning(
                "privacy ledger %s: %d releases after the checkpoint (the interrupted "
                "round) still count",
                ledger.path,
                have - need,
            )
