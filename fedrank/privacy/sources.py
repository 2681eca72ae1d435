"""Who holds which random source: the coordinator's private key, a site's fresh one.

Every noise draw and privacy-relevant sampling decision of a run comes from a
:class:`~fedrank.privacy.randomness.RandomSource`:

- **the coordinator** (client-level noise, Poisson client sampling, the adaptive clip
  count): one root source per run, keyed with OS entropy. Its state lives only in the
  coordinator's private file ``<results>/private/coordinator-randomness.json`` (mode
  0600, folder 0700), never in ``scenario.json``, a checkpoint others read, or a
  message. A resumed run reads it back, so a replayed round with the same replies
  releases exactly what the crashed one did (and the ledger counts it once); a round
  replayed from other replies draws fresh noise (``attempt``) and counts again. If the
  file is gone, a resumed run starts a new key: later releases are fresh noise, which
  costs nothing but a second count of a replayed round.
- **a site** (its DP-SGD noise and Poisson batches): a fresh secure source for every
  round it trains, held by nobody else. A round a site trains twice (a resumed run) is
  two releases and its ledger counts both.

With ``dp-reproducible-noise`` (simulations only) both are derived from the scenario's
seed instead: anyone holding it can replay every draw, and the run says it is not
private (:data:`~fedrank.privacy.randomness.NOT_PRIVATE_NOTE`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fedrank.errors import CheckpointError
from fedrank.privacy.randomness import RandomSource, SourceState

log = logging.getLogger(__name__)

PRIVATE_FOLDER = "private"
"""The coordinator's private folder inside a results folder (mode 0700)."""
COORDINATOR_FILE = "coordinator-randomness.json"

# Stream names under a root: each purpose its own independent child stream.
CLIENT_NOISE = "client-noise"
CLIENT_SAMPLING = "client-sampling"


def coordinator_source_path(directory: str | os.PathLike[str]) -> Path:
    """Where the coordinator keeps its secret random state in a results folder."""
    return Path(directory) / PRIVATE_FOLDER / COORDINATOR_FILE


def _write_private(path: Path, state: SourceState) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(".tmp")
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (json.dumps(state.to_dict()) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_private(path: Path) -> RandomSource:
    try:
        data = json.loads(path.read_text(encoding="ascii"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a random source state")
    state = SourceState.from_dict(data)
    if state.kind != "secure":
        raise CheckpointError(f"{path}: holds a {state.kind} source, expected a secure one")
    return RandomSource.from_state(state)


def coordinator_source(
    directory: str | os.PathLike[str], *, reproducible: bool, seed: int, fresh: bool
) -> RandomSource:
    """The run's root source for the coordinator's noise and sampling.

    Parameters
    ----------
    directory : path
        The results folder (its ``private/`` folder holds the secret state).
    reproducible : bool
        ``dp-reproducible-noise``: derive the root from ``seed`` (not private); nothing
        is written.
    seed : int
        The scenario's seed (used only when ``reproducible``).
    fresh : bool
        A new run: a new secret key (any earlier one in the folder is replaced). A
        resumed run reads the key back (or, if it is gone, starts a new one, with a
        warning).

    Returns
    -------
    RandomSource
        The root: draw only from children (:meth:`RandomSource.derive`), e.g.
        ``root.derive("client-noise", round, attempt)``.
    """
    if reproducible:
        return RandomSource.reproducible(seed).derive("coordinator")
    path = coordinator_source_path(directory)
    if not fresh:
        if path.exists():
            return _read_private(path)
        log.warning(
            "%s is missing: the resumed run draws its noise from a new secret key "
            "(a replayed round then counts as a new release)",
            path,
        )
    root = RandomSource.secure()
    _write_private(path, root.state())
    return root


def site_source(
    *, reproducible: bool, seed: int, partition_id: int, server_round: int
) -> RandomSource:
    """A site's source for one round of DP-SGD (noise and Poisson batches).

    Secure: fresh OS entropy, every call. Reproducible (simulations only): derived from
    (seed, partition, round), the same in every run with that seed.
    """
    if reproducible:
        return RandomSource.reproducible(seed).derive("site", partition_id, server_round)
    return RandomSource.secure()
