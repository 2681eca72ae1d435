from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]

class AdapterFactors(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADAPTER_FACTORS_UNSPECIFIED: _ClassVar[AdapterFactors]
    ADAPTER_FACTORS_AB: _ClassVar[AdapterFactors]
    ADAPTER_FACTORS_B: _ClassVar[AdapterFactors]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT16: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
ADAPTER_FACTORS_UNSPECIFIED: AdapterFactors
ADAPTER_FACTORS_AB: AdapterFactors
ADAPTER_FACTORS_B: AdapterFactors

class UpdateHeader(_message.Message):
    __slots__ = ("schema_version", "run_id", "round", "model_fingerprint")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    run_id: str
    round: int
    model_fingerprint: str
    def __init__(self, schema_version: _Optional[int] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class LayerRanking(_message.Message):
    __slots__ = ("name", "length", "bits_per_index", "packed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_INDEX_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    name: str
    length: int
    bits_per_index: int
    packed: bytes
    def __init__(self, name: _Optional[str] = ..., length: _Optional[int] = ..., bits_per_index: _Optional[int] = ..., packed: _Optional[bytes] = ...) -> None: ...

class RankingUpdate(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerRanking]
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerRanking, _Mapping]]] = ...) -> None: ...

class LayerBuckets(_message.Message):
    __slots__ = ("name", "length", "bits_per_bucket", "packed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_BUCKET_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    name: str
    length: int
    bits_per_bucket: int
    packed: bytes
    def __init__(self, name: _Optional[str] = ..., length: _Optional[int] = ..., bits_per_bucket: _Optional[int] = ..., packed: _Optional[bytes] = ...) -> None: ...

class CoarseRankingUpdate(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerBuckets]
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerBuckets, _Mapping]]] = ...) -> None: ...

class AdapterTensor(_message.Message):
    __slots__ = ("name", "shape", "dtype", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class AdapterUpdate(_message.Message):
    __slots__ = ("lora_rank", "lora_alpha", "factors", "tensors")
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    FACTORS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    lora_rank: int
    lora_alpha: float
    factors: AdapterFactors
    tensors: _containers.RepeatedCompositeFieldContainer[AdapterTensor]
    def __init__(self, lora_rank: _Optional[int] = ..., lora_alpha: _Optional[float] = ..., factors: _Optional[_Union[AdapterFactors, str]] = ..., tensors: _Optional[_Iterable[_Union[AdapterTensor, _Mapping]]] = ...) -> None: ...

class Update(_message.Message):
    __slots__ = ("header", "ranking", "adapter", "coarse_ranking")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    COARSE_RANKING_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    ranking: RankingUpdate
    adapter: AdapterUpdate
    coarse_ranking: CoarseRankingUpdate
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., ranking: _Optional[_Union[RankingUpdate, _Mapping]] = ..., adapter: _Optional[_Union[AdapterUpdate, _Mapping]] = ..., coarse_ranking: _Optional[_Union[CoarseRankingUpdate, _Mapping]] = ...) -> None: ...
