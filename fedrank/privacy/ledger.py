"""The privacy ledger: every release a run makes, appended durably, epsilon read from it.

A JSON-lines file, one :class:`Release` a line, written before the release leaves the
process (line, flush, ``os.fsync``). Epsilon is always computed from the whole ledger
(:func:`fedrank.privacy.accountant.compute_epsilon`), so a resumed run counts what the
crashed one released. When in doubt, the ledger counts: a second, different release
for a round that already has one is appended, not merged.

Every release is checked against the ledger's :class:`fedrank.privacy.bounds.
AccountantBounds` before it is accounted: a release outside them (a foreign client's
report of sigma 1e-300, say) raises :class:`fedrank.errors.InvalidUpdate`, and within
them the accountant raises nothing (property-tested), so :meth:`PrivacyLedger.check` and
:meth:`PrivacyLedger.record` raise only ``InvalidUpdate`` or ``PrivacyBudgetExhausted``.

One writer per file: the ledger does not lock it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from fedrank.errors import CheckpointError, ConfigError, InvalidUpdate, PrivacyBudgetExhausted
from fedrank.privacy.accountant import ACCOUNTANTS, AccountantName, compute_epsilon, run_lengths
from fedrank.privacy.bounds import (
    ABSOLUTE_BOUNDS,
    MALFORMED,
    AccountantBounds,
    check_delta,
    check_entry,
    is_number,
)
from fedrank.privacy.release import UNIT_OF, Mechanism, Release, Unit, dp_sgd_release

__all__ = ["UNIT_OF", "Mechanism", "PrivacyLedger", "Release", "Unit", "dp_sgd_release"]

_log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=512)
def _epsilon(
    history: tuple[tuple[float, float, int], ...],
    delta: float,
    accountant: AccountantName,
    bounds: AccountantBounds,
) -> float:
    # PRV accounting takes up to a few seconds; a round asks for the same history twice.
    return compute_epsilon(history=history, delta=delta, accountant=accountant, bounds=bounds)


def _bounded(release: Release) -> Release:
    """``release`` if it lies within the absolute accountant bounds (else InvalidUpdate)."""
    check_entry(0, release, ABSOLUTE_BOUNDS)
    return release


class PrivacyLedger:
    """Append-only, fsynced record of releases, with a budget checked before each.

    Parameters
    ----------
    path : str | os.PathLike[str]
        The JSON-lines file; read back if it exists (resume), created on first record.
    budget_epsilon : float | None
        Largest epsilon any one (unit, party) may spend; None: no limit, only counting.
    delta : float
        The delta at which epsilon is reported and budgeted, in (0, 1).
    accountant : {"rdp", "prv"}
        See :func:`fedrank.privacy.accountant.compute_epsilon`.
    bounds : AccountantBounds
        What a new release (and its party's history with it) must lie within; the
        scenario's narrowed bounds (:func:`fedrank.privacy.bounds.scenario_bounds`).
        Releases already in the file must lie within the absolute bounds.

    Raises
    ------
    ConfigError
        ``budget_epsilon``, ``delta`` or ``accountant`` is out of range.
    CheckpointError
        A line other than the last cannot be parsed as a release (a truncated last line,
        left by a crash mid-write, is ignored with a warning and cut off at the next
        append).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        budget_epsilon: float | None,
        delta: float,
        accountant: AccountantName,
        bounds: AccountantBounds = ABSOLUTE_BOUNDS,
    ) -> None:
        if budget_epsilon is not None and not (
            is_number(budget_epsilon) and not math.isnan(budget_epsilon) and budget_epsilon > 0
        ):
            raise ConfigError(
                "budget_epsilon", f"must be a number > 0 or None, got {budget_epsilon!r}"
            )
        if not isinstance(bounds, AccountantBounds):
            raise ConfigError("bounds", f"must be AccountantBounds, got {type(bounds).__name__}")
        if accountant not in ACCOUNTANTS:
            raise ConfigError("accountant", f"must be one of {ACCOUNTANTS}, got {accountant!r}")
        self.path = Path(path)
        self.budget_epsilon = budget_epsilon
        self.delta = check_delta(delta, bounds)
        self.accountant: AccountantName = accountant
        self.bounds = bounds
        self._releases: list[Release] = []
        # Repair owed to the file before the next append: cut a partial last line at
        # this offset, or end a complete last line that lacks its newline.
        self._truncate_at: int | None = None
        self._needs_newline = False
        self._load()

    @property
    def releases(self) -> tuple[Release, ...]:
        """Every release recorded, in file order."""
        return tuple(self._releases)

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # After a final newline, split leaves an empty tail; anything else is a last line
        # whose write did not finish.
        tail = lines.pop()
        offset = 0
        for number, raw in enumerate(lines, start=1):
            offset += len(raw) + 1
            if not raw.strip():
                continue
            try:
                self._releases.append(_bounded(Release.from_json(raw.decode("utf-8"))))
            except (ValueError, TypeError, UnicodeDecodeError, InvalidUpdate) as err:
                raise CheckpointError(
                    f"privacy ledger {self.path}, line {number} is corrupt ({err}); "
                    "restore the file from a backup: epsilon cannot be counted without it"
                ) from err
        if not tail:
            return
        try:
            release = _bounded(Release.from_json(tail.decode("utf-8")))
        except (ValueError, TypeError, UnicodeDecodeError, InvalidUpdate):
            warnings.warn(
                f"privacy ledger {self.path}: ignoring a truncated last line "
                f"({len(tail)} bytes, a write cut short by a crash)",
                RuntimeWarning,
                stacklevel=3,
            )
            self._truncate_at = offset
            return
        # The whole release was written, only its newline was not: it counts.
        self._releases.append(release)
        self._needs_newline = True

    def _history(self, unit: Unit, party: str) -> list[Release]:
        return [r for r in self._releases if r.unit == unit and r.party == party]

    def _compute(self, history: Sequence[Release], bounds: AccountantBounds) -> float:
        key = tuple((r.noise_multiplier, r.sample_rate, r.steps) for r in history)
        return _epsilon(key, self.delta, self.accountant, bounds)

    def _is_recorded(self, release: Release) -> bool:
        return release in self._releases

    def spent(self, *, unit: Unit, party: str) -> float:
        """Epsilon spent so far by ``party`` for ``unit``-level privacy, at ``delta``.

        Parameters
        ----------
        unit : {"record", "client"}
            ``"record"`` for a client's DP-SGD, ``"client"`` for the server's releases.
        party : str
            Client id, or ``"server"``.

        Returns
        -------
        float
            Epsilon of the composition of every matching release in the ledger.

        Raises
        ------
        CheckpointError
            The recorded history exceeds the absolute accountant bounds (a file this
            code did not write).
        """
        try:
            return self._compute(self._history(unit, party), ABSOLUTE_BOUNDS)
        except InvalidUpdate as err:
            raise CheckpointError(
                f"privacy ledger {self.path}: the history of {party!r} cannot be accounted: {err}"
            ) from err

    def history(
        self, *, unit: Unit, party: str, before_round: int
    ) -> tuple[tuple[float, float, int], ...]:
        """The party's releases of rounds before ``before_round`` as an accountant history.

        What the party's own Opacus accountant holds after those rounds
        (:func:`fedrank.privacy.accountant.run_lengths`): a client whose own history was
        lost (its process was killed) is given this one back.
        """
        return run_lengths([r for r in self._history(unit, party) if r.round < before_round])

    def check(self, release: Release) -> float:
        """Epsilon that ``release``'s party would have spent after it; nothing is written.

        A release already recorded (same fields) is not counted twice.

        Raises
        ------
        InvalidUpdate
            ``release`` is not a :class:`Release`, lies outside the ledger's bounds, or
            would take its party's history outside them (``privacy_malformed``,
            ``privacy_out_of_range``): it must not be made.
        PrivacyBudgetExhausted
            That epsilon exceeds ``budget_epsilon``: the release must not be made.
        """
        if not isinstance(release, Release):
            raise InvalidUpdate(MALFORMED, f"not a Release: {type(release).__name__}")
        check_entry(0, release, self.bounds)
        history = self._history(release.unit, release.party)
        if not self._is_recorded(release):
            history.append(release)
        epsilon = self._compute(history, self.bounds)
        if self.budget_epsilon is not None and epsilon > self.budget_epsilon:
            raise PrivacyBudgetExhausted(
                f"round {release.round}: the {release.mechanism} release of "
                f"{release.party!r} would bring its {release.unit}-level epsilon to "
                f"{epsilon:.4f} (delta={self.delta:g}), over the budget of "
                f"{self.budget_epsilon:g}; nothing was released. Raise the noise "
                "multiplier or the budget, or stop the run here."
            )
        return epsilon

    def record(self, release: Release) -> float:
        """Check ``release`` against the budget, then append it durably.

        Idempotent: a release equal to one already recorded is not appended again (a
        resumed run replaying its last round). A different release with the same
        (round, party, mechanism) is appended with a warning: both were made, both count.

        Returns
        -------
        float
            The party's epsilon after this release.

        Raises
        ------
        InvalidUpdate
            As in :meth:`check`; the file is then left unchanged.
        PrivacyBudgetExhausted
            As in :meth:`check`; the file is then left unchanged.
        """
        epsilon = self.check(release)
        if self._is_recorded(release):
            return epsilon
        if any(r.key == release.key for r in self._releases):
            warnings.warn(
                f"privacy ledger {self.path}: round {release.round} already has a "
                f"different {release.mechanism} release for {release.party!r}; "
                "counting both",
                RuntimeWarning,
                stacklevel=2,
            )
        self._append(release)
        self._releases.append(release)
        _log.info(
            "privacy ledger: round %d %s %s, epsilon %.4f",
            release.round,
            release.mechanism,
            release.party,
            epsilon,
        )
        return epsilon

    def _append(self, release: Release) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if self._truncate_at is not None:
                os.ftruncate(fd, self._truncate_at)
            payload = release.to_json().encode("utf-8") + b"\n"
            if self._needs_newline:
                payload = b"\n" + payload
            # The line goes out whole or, after a crash, as a partial last line that
            # the next load detects and drops.
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._truncate_at = None
        self._needs_newline = False
        if created:
            # The new file's directory entry must survive a crash too.
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
