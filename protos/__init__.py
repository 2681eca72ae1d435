"""Wire schemas of client updates, codecs and validation (fedrank.protos).

Protobuf stays at this edge: callers hand in and get back numpy arrays and the
dataclasses below; every ``decode_*`` raises only
:class:`fedrank.errors.InvalidUpdate` on a bad payload.
"""

from fedrank.protos.packing import (
    bits_for,
    pack_ranks,
    packed_size,
    permutation_problem,
    unpack_permutation,
    unpack_ranks,
)
from fedrank.protos.serde import (
    decode_adapter_update,
    decode_privacy_report,
    decode_ranking_update,
    encode_adapter_update,
    encode_privacy_report,
    encode_ranking_update,
    ranking_size_limit,
)
from fedrank.protos.updates import (
    SCHEMA_VERSION,
    AdapterExpectation,
    AdapterUpdateData,
    PrivacyReportData,
    RankingExpectation,
    UpdateHeader,
    model_fingerprint,
)

__all__ = [
    "SCHEMA_VERSION",
    "AdapterExpectation",
    "AdapterUpdateData",
    "PrivacyReportData",
    "RankingExpectation",
    "UpdateHeader",
    "bits_for",
    "decode_adapter_update",
    "decode_privacy_report",
    "decode_ranking_update",
    "encode_adapter_update",
    "encode_privacy_report",
    "encode_ranking_update",
    "model_fingerprint",
    "pack_ranks",
    "packed_size",
    "permutation_problem",
    "ranking_size_limit",
    "unpack_permutation",
    "unpack_ranks",
]
