"""Randomness for DP noise and privacy-relevant sampling that no one can replay.

Every draw comes from a ChaCha20 keystream (RFC 8439, through the ``cryptography``
package) under a 256-bit key. A *secure* source takes its key from the operating
system's entropy (``os.urandom``): knowing the scenario's seed tells nothing about it.
A *reproducible* source derives its key from an integer seed, runs the very same code,
and is for simulations only: a run that uses one makes no privacy claim
(:data:`NOT_PRIVATE_NOTE`).

A source's whole state is its key and the number of keystream bytes it has used
(:class:`~fedrank.privacy.source_state.SourceState`, JSON-serialisable): a
coordinator keeps it in its own private checkpoint (never in ``scenario.json``, never
sent to a client) and resumes the stream exactly. :meth:`RandomSource.derive` gives
independent child streams by label (a round, a stream name, an attempt) without
advancing the parent, so a resumed round can redraw exactly, or draw fresh noise under
a new label.

Conversions (all exact in distribution up to float64 rounding): uniforms use 53 bits;
Gaussians use the Box-Muller transform (Box and Muller 1958), whose 53-bit uniforms
truncate the normal at 8.57 standard deviations (mass beyond: below 1e-17); integers
below a bound use rejection sampling (no modulo bias).

A source is not thread-safe: give each thread its own child (:meth:`RandomSource.derive`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedrank.errors import ConfigError
from fedrank.privacy.source_state import BLOCK_BYTES, MAX_POSITION, SEGMENT_BLOCKS
from fedrank.privacy.source_state import KEY_BYTES as KEY_BYTES
from fedrank.privacy.source_state import SOURCE_KINDS as SOURCE_KINDS
from fedrank.privacy.source_state import SourceKind as SourceKind
from fedrank.privacy.source_state import SourceState as SourceState

NOT_PRIVATE_NOTE = "not private: reproducible noise"
"""What a run whose noise comes from a reproducible source must say about itself."""

_REPRODUCIBLE_DOMAIN = b"fedrank/reproducible-noise/v1\x00"
_DERIVE_DOMAIN = b"fedrank/derive/v1\x00"
_TWO_POW_53 = float(1 << 53)
# MT19937 keeps 624 32-bit words; torch stores each in a uint64 slot after a 24-byte
# header (initial seed, left, seeded, next) of its CPU generator state.
_MT_WORDS = 624
_MT_HEADER = 24
_CPU_STATE_BYTES = 5056  # torch 2.x CPUGeneratorImplState; checked before writing into it


def _encode_labels(labels: Sequence[str | int]) -> bytes:
    """Unambiguous byte encoding of derivation labels (type tag + length prefix)."""
    out = bytearray()
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise ConfigError("labels", f"must be str or int, got {label!r}")
        tagged = (f"i:{label}" if isinstance(label, int) else f"s:{label}").encode()
        out += len(tagged).to_bytes(4, "big") + tagged
    return bytes(out)


def _check_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 0 for d in dims):
        raise ConfigError("shape", f"must be non-negative integers, got {shape!r}")
    return tuple(int(d) for d in dims)


def _check_rate(name: str, value: float) -> float:
    if isinstance(value, bool) or not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ConfigError(name, f"must lie in [0, 1], got {value!r}")
    return float(value)


def _check_count(name: str, value: int, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


class RandomSource:
    """A ChaCha20 stream of random draws: secure (OS entropy) or reproducible (a seed).

    Build one with :meth:`secure`, :meth:`reproducible` or :meth:`from_state`.

    Parameters
    ----------
    state : SourceState
        Key, kind and position to continue from.
    """

    def __init__(self, state: SourceState) -> None:
        if not isinstance(state, SourceState):
            raise ConfigError("state", f"must be a SourceState, got {type(state).__name__}")
        self._kind: SourceKind = state.kind
        self._key = state.key
        self._position = state.position

    @classmethod
    def secure(cls) -> RandomSource:
        """A source keyed with 256 bits of operating-system entropy."""
        return cls(SourceState(kind="secure", key=os.urandom(KEY_BYTES)))

    @classmethod
    def reproducible(cls, seed: int) -> RandomSource:
        """A source keyed by ``seed`` (SHA-256): for simulations only, never private.

        Parameters
        ----------
        seed : int
            0 <= seed < 2**256.
        """
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 256:
            raise ConfigError("seed", f"must be an integer in [0, 2**256), got {seed!r}")
        key = hashlib.sha256(_REPRODUCIBLE_DOMAIN + seed.to_bytes(32, "big")).digest()
        return cls(SourceState(kind="reproducible", key=key))

    @classmethod
    def from_state(cls, state: SourceState) -> RandomSource:
        """Continue the stream ``state`` describes."""
        return cls(state)

    def __repr__(self) -> str:
        return f"RandomSource(kind={self._kind!r}, position={self._position})"

    @property
    def kind(self) -> SourceKind:
        """``"secure"`` or ``"reproducible"``."""
        return self._kind

    @property
    def is_reproducible(self) -> bool:
        """True when anyone holding the seed can replay every draw."""
        return self._kind == "reproducible"

    @property
    def privacy_note(self) -> str | None:
        """:data:`NOT_PRIVATE_NOTE` for a reproducible source, None for a secure one."""
        return NOT_PRIVATE_NOTE if self.is_reproducible else None

    def state(self) -> SourceState:
        """The current state: restoring it continues with exactly the next draws."""
        return SourceState(kind=self._kind, key=self._key, position=self._position)

    def derive(self, *labels: str | int) -> RandomSource:
        """An independent child stream named by ``labels``; the parent does not advance.

        The child's key is HMAC-SHA256(parent key, labels): the same labels give the
        same child, other labels an unrelated one, and a child's draws reveal nothing
        about its parent's key. The child has the parent's kind.
        """
        if not labels:
            raise ConfigError("labels", "derive needs at least one label")
        key = hmac.new(self._key, _DERIVE_DOMAIN + _encode_labels(labels), "sha256").digest()
        return RandomSource(SourceState(kind=self._kind, key=key))

    # -- raw stream ---------------------------------------------------------------------

    def random_bytes(self, count: int) -> bytes:
        """The next ``count`` bytes of the keystream."""
        count = _check_count("count", count, minimum=0)
        if self._position + count > MAX_POSITION:
            raise ConfigError("count", "the stream is exhausted; derive a new source")
        out = bytearray()
        position = self._position
        while len(out) < count:
            block, offset = divmod(position, BLOCK_BYTES)
            segment, counter = divmod(block, SEGMENT_BLOCKS)
            # Never let the 32-bit block counter wrap inside one call: the library
            # refuses, and a wrap would repeat the keystream.
            room = (SEGMENT_BLOCKS - counter) * BLOCK_BYTES - offset
            take = min(count - len(out), room)
            nonce = counter.to_bytes(4, "little") + segment.to_bytes(12, "little")
            encryptor = Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()
            chunk = encryptor.update(bytes(offset + take))
            out += chunk[offset:]
            position += take
        self._position = position
        return bytes(out)

    def uint64(self, size: int) -> npt.NDArray[np.uint64]:
        """``size`` independent uniform 64-bit integers."""
        size = _check_count("size", size, minimum=0)
        return np.frombuffer(self.random_bytes(8 * size), dtype="<u8").astype(np.uint64)

    # -- continuous draws ---------------------------------------------------------------

    def uniform(self, shape: int | Sequence[int]) -> npt.NDArray[np.float64]:
        """Uniform draws on [0, 1), 53 random bits each."""
        dims = _check_shape(shape)
        bits = self.uint64(math.prod(dims)) >> np.uint64(11)
        return (bits.astype(np.float64) / _TWO_POW_53).reshape(dims)

    def normal(
        self, shape: int | Sequence[int], *, std: float = 1.0, mean: float = 0.0
    ) -> npt.NDArray[np.float64]:
        """Independent N(mean, std^2) draws (Box-Muller), float64.

        Parameters
        ----------
        shape : int | Sequence[int]
            Shape of the result.
        std : float
            Standard deviation, finite and >= 0.
        mean : float
            Mean, finite.
        """
        dims = _check_shape(shape)
        if isinstance(std, bool) or not (
            isinstance(std, int | float) and math.isfinite(std) and std >= 0
        ):
            raise ConfigError("std", f"must be a finite number >= 0, got {std!r}")
        if isinstance(mean, bool) or not (isinstance(mean, int | float) and math.isfinite(mean)):
            raise ConfigError("mean", f"must be a finite number, got {mean!r}")
        count = math.prod(dims)
        pairs = (count + 1) // 2
        bits = (self.uint64(2 * pairs) >> np.uint64(11)).astype(np.float64)
        # u1 in (0, 1] so the logarithm is finite; u2 in [0, 1).
        u1 = (bits[:pairs] + 1.0) / _TWO_POW_53
        u2 = bits[pairs:] / _TWO_POW_53
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = 2.0 * np.pi * u2
        z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
        return (z * float(std) + float(mean)).reshape(dims)

    def normal_like(
        self, shapes: Mapping[str, Sequence[int]], *, std: float
    ) -> dict[str, npt.NDArray[np.float64]]:
        """N(0, std^2) noise for every tensor of ``shapes``, drawn in the mapping's order."""
        return {name: self.normal(tuple(shape), std=std) for name, shape in shapes.items()}

    def normal_torch(
        self,
        shape: int | Sequence[int],
        *,
        std: float = 1.0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> torch.Tensor:
        """As :meth:`normal`, as a torch tensor (drawn in float64, then cast)."""
        values = self.normal(shape, std=std)
        return torch.from_numpy(values).to(dtype=dtype, device=device)

    # -- discrete draws -----------------------------------------------------------------

    def bernoulli(self, size: int, probability: float) -> npt.NDArray[np.bool_]:
        """``size`` independent coin flips, each True with ``probability``."""
        p = _check_rate("probability", probability)
        return self.uniform(_check_count("size", size, minimum=0)) < p

    def poisson_subset(self, ids: Sequence[int], sample_rate: float) -> list[int]:
        """Poisson sampling: each of ``ids`` kept independently with ``sample_rate``.

        One draw per id in the given order (sort the ids first for a reproducible
        choice); the result keeps that order.
        """
        keep = self.bernoulli(len(ids), sample_rate)
        return [int(i) for i, k in zip(ids, keep, strict=True) if k]

    def integers(self, high: int, size: int) -> npt.NDArray[np.int64]:
        """``size`` uniform integers in [0, high), by rejection (no modulo bias)."""
        high = _check_count("high", high, minimum=1)
        size = _check_count("size", size, minimum=0)
        if high > 1 << 62:
            raise ConfigError("high", f"must be at most 2**62, got {high}")
        # Draws at or above the largest multiple of high below 2**64 are rejected; when
        # high divides 2**64 (a power of two) there is none to reject.
        spare = (1 << 64) % high
        limit = None if spare == 0 else np.uint64((1 << 64) - spare)
        out = np.empty(0, dtype=np.uint64)
        # Each draw is accepted with probability > 1/2; 64 rounds all short by one
        # have probability below 2**-64.
        for _ in range(64):
            if out.size >= size:
                break
            draws = self.uint64(2 * (size - out.size) + 8)
            out = np.concatenate([out, draws if limit is None else draws[draws < limit]])
        if out.size < size:
            raise RuntimeError("rejection sampling did not finish; the stream is broken")
        return (out[:size] % np.uint64(high)).astype(np.int64)

    def permutation(self, n: int) -> npt.NDArray[np.int64]:
        """A uniformly random permutation of ``range(n)``.

        Sorts by random 64-bit keys (stable on ties): two equal keys, the only bias,
        have probability at most n^2 / 2^65.
        """
        n = _check_count("n", n, minimum=0)
        return np.argsort(self.uint64(n), kind="stable").astype(np.int64)

    def shuffled_batches(
        self, num_records: int, batch_size: int, *, drop_last: bool = False
    ) -> list[npt.NDArray[np.int64]]:
        """One epoch of fixed-size batches over a random permutation of the records."""
        num_records = _check_count("num_records", num_records, minimum=0)
        batch_size = _check_count("batch_size", batch_size, minimum=1)
        order = self.permutation(num_records)
        batches = [order[i : i + batch_size] for i in range(0, num_records, batch_size)]
        if drop_last and batches and len(batches[-1]) < batch_size:
            batches.pop()
        return batches

    def poisson_batches(
        self, num_records: int, sample_rate: float, steps: int
    ) -> list[npt.NDArray[np.int64]]:
        """``steps`` Poisson-sampled batches: each record in each independently with q.

        The sampling DP-SGD's accounting assumes (Opacus' ``UniformWithReplacement
        Sampler``); a batch may be empty.
        """
        num_records = _check_count("num_records", num_records, minimum=0)
        steps = _check_count("steps", steps, minimum=0)
        q = _check_rate("sample_rate", sample_rate)
        return [np.flatnonzero(self.uniform(num_records) < q) for _ in range(steps)]

    # -- torch ---------------------------------------------------------------------------

    def torch_generator(self, device: str | torch.device = "cpu") -> torch.Generator:
        """A new ``torch.Generator`` whose whole state comes from this stream.

        On CPU torch's generator is MT19937: all 624 state words (19,968 bits) are filled
        from the stream. On CUDA it is Philox, keyed by a 64-bit seed: that seed is drawn
        from the stream (64 bits of entropy for a secure source). Neither is a
        cryptographic generator; what this gives is a generator no one can replay from
        the scenario's seed. Hand one to Opacus as ``make_private(noise_generator=...)``
        and to the ``DataLoader(generator=...)`` it makes private.
        """
        target = torch.device(device)
        generator = torch.Generator(device=target)
        if target.type != "cpu":
            generator.manual_seed(int(self.uint64(1)[0]))
            return generator
        generator.manual_seed(0)
        state = bytearray(generator.get_state().numpy().tobytes())
        if len(state) != _CPU_STATE_BYTES:
            raise RuntimeError(
                f"torch's CPU generator state is {len(state)} bytes, expected "
                f"{_CPU_STATE_BYTES}: its layout changed, the MT19937 words cannot be set"
            )
        words = np.frombuffer(self.random_bytes(4 * _MT_WORDS), dtype="<u4")
        if not words.any():  # MT19937 cannot run from an all-zero state
            words = words.copy()
            words[0] = 1
        slots = np.zeros(_MT_WORDS, dtype="<u8")
        slots[:] = words
        state[_MT_HEADER : _MT_HEADER + 8 * _MT_WORDS] = slots.tobytes()
        # left = 1 makes the next draw regenerate from the words just written.
        state[8:16] = (1).to_bytes(4, "little") + (1).to_bytes(4, "little")
        generator.set_state(torch.frombuffer(state, dtype=torch.uint8).clone())
        return generator
