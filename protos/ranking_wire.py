"""FRL rankings in Flower messages, in both directions, through the ``fedrank.v1`` codec.

The server sends the global rank vectors and every client answers with its own,
each as one bit-packed ``fedrank.v1.Update`` (ceil(log2 n) bits per edge) in the
message's ``update`` config record. Both directions go through the same strict
decoder, so a client never trains from, and the server never votes on, anything
but a permutation of the right size for this run, round and model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedrank.errors import InvalidUpdate
from fedrank.protos import keys
from fedrank.protos.serde import decode_ranking_update, encode_ranking_update, ranking_size_limit
from fedrank.protos.updates import (
    RankingExpectation,
    UpdateHeader,
    model_fingerprint,
)

UPDATE_RECORD = keys.UPDATE
RANKING_KEY = keys.RANKING


@dataclass(frozen=True, kw_only=True)
class RankingWire:
    """What both sides agree a ranking message of one run looks like.

    Parameters
    ----------
    run_id : str
        The Flower run (replies from another run are refused).
    layer_sizes : Mapping[str, int]
        Every supermask layer and its number of edges.
    fingerprint : str
        Hash of what defines the frozen network (architecture, seed, k, ...).
    """

    run_id: str
    layer_sizes: Mapping[str, int]
    fingerprint: str
    max_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        sizes = dict(self.layer_sizes)
        object.__setattr__(self, "layer_sizes", MappingProxyType(sizes))
        object.__setattr__(self, "max_bytes", ranking_size_limit(sizes))

    @classmethod
    def for_model(
        cls, *, run_id: object, layer_sizes: Mapping[str, int], **model: str | int | float
    ) -> RankingWire:
        """The wire of a run whose frozen network ``model`` defines (architecture, seed, k)."""
        sizes = dict(layer_sizes)
        return cls(
            run_id=str(run_id),
            layer_sizes=sizes,
            fingerprint=model_fingerprint(**model, layer_sizes=sizes),
        )

    def encode(self, server_round: int, rankings: Mapping[str, np.ndarray]) -> RecordDict:
        """The ``update`` record carrying ``rankings`` for ``server_round``."""
        header = UpdateHeader(
            run_id=self.run_id, round=server_round, model_fingerprint=self.fingerprint
        )
        payload = encode_ranking_update(header, rankings)
        return RecordDict({UPDATE_RECORD: ConfigRecord({RANKING_KEY: payload})})

    def decode(self, server_round: int, content: RecordDict) -> dict[str, np.ndarray]:
        """The validated rank vectors in ``content``; raises ``InvalidUpdate`` otherwise."""
        records = content.config_records
        if UPDATE_RECORD not in records or RANKING_KEY not in records[UPDATE_RECORD]:
            raise InvalidUpdate(
                "malformed", f"message has no '{UPDATE_RECORD}.{RANKING_KEY}' payload"
            )
        payload = records[UPDATE_RECORD][RANKING_KEY]
        if not isinstance(payload, bytes):
            raise InvalidUpdate("malformed", f"payload is a {type(payload).__name__}, not bytes")
        expect = RankingExpectation(
            run_id=self.run_id,
            round=server_round,
            model_fingerprint=self.fingerprint,
            layer_sizes=self.layer_sizes,
            max_bytes=self.max_bytes,
        )
        return dict(decode_ranking_update(payload, expect=expect))
