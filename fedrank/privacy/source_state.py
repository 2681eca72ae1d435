"""The whole state of a random source: its kind, its ChaCha20 key, its position.

:class:`SourceState` is JSON-serialisable (:meth:`SourceState.to_dict`): a coordinator
keeps it in its own private checkpoint and :class:`fedrank.privacy.randomness.RandomSource`
continues the stream from it exactly. The keystream's geometry (block, segment and
largest position) bounds a valid position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fedrank.errors import CheckpointError, ConfigError

SourceKind = Literal["secure", "reproducible"]
SOURCE_KINDS: tuple[SourceKind, ...] = ("secure", "reproducible")

KEY_BYTES = 32
BLOCK_BYTES = 64  # ChaCha20 block size in bytes
SEGMENT_BLOCKS = 1 << 32  # blocks under one nonce: the 32-bit block counter's range
MAX_POSITION = (1 << 96) * SEGMENT_BLOCKS * BLOCK_BYTES  # the 96-bit nonce carries segments


@dataclass(frozen=True)
class SourceState:
    """Everything a :class:`RandomSource` is: kind, key and keystream position.

    Parameters
    ----------
    kind : {"secure", "reproducible"}
        Where the key came from.
    key : bytes
        The 32-byte ChaCha20 key. Secret for a secure source: keep the state in a
        private checkpoint only (``repr`` never shows it).
    position : int
        Keystream bytes already used, >= 0.
    """

    kind: SourceKind
    key: bytes = field(repr=False)
    position: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ConfigError("kind", f"must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if not isinstance(self.key, bytes) or len(self.key) != KEY_BYTES:
            raise ConfigError("key", f"must be {KEY_BYTES} bytes")
        if (
            isinstance(self.position, bool)
            or not isinstance(self.position, int)
            or not 0 <= self.position < MAX_POSITION
        ):
            raise ConfigError("position", f"must be an integer >= 0, got {self.position!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"kind", "key" (hex), "position"}``."""
        return {"kind": self.kind, "key": self.key.hex(), "position": self.position}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceState:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        CheckpointError
            ``data`` is not a state written by :meth:`to_dict`.
        """
        try:
            if set(data) != {"kind", "key", "position"}:
                raise ValueError(f"expected the keys kind, key, position, got {sorted(data)}")
            return cls(kind=data["kind"], key=bytes.fromhex(data["key"]), position=data["position"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"not a random source state: {err}") from err
