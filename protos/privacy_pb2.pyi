from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PrivacyMechanism(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIVACY_MECHANISM_UNSPECIFIED: _ClassVar[PrivacyMechanism]
    PRIVACY_MECHANISM_DP_SGD: _ClassVar[PrivacyMechanism]
    PRIVACY_MECHANISM_GAUSSIAN: _ClassVar[PrivacyMechanism]
PRIVACY_MECHANISM_UNSPECIFIED: PrivacyMechanism
PRIVACY_MECHANISM_DP_SGD: PrivacyMechanism
PRIVACY_MECHANISM_GAUSSIAN: PrivacyMechanism

class PrivacyReport(_message.Message):
    __slots__ = ("schema_version", "mechanism", "noise_multiplier", "sample_rate", "steps", "clipping_norm", "epsilon_spent", "delta")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CLIPPING_NORM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    mechanism: PrivacyMechanism
    noise_multiplier: float
    sample_rate: float
    steps: int
    clipping_norm: float
    epsilon_spent: float
    delta: float
    def __init__(self, schema_version: _Optional[int] = ..., mechanism: _Optional[_Union[PrivacyMechanism, str]] = ..., noise_multiplier: _Optional[float] = ..., sample_rate: _Optional[float] = ..., steps: _Optional[int] = ..., clipping_norm: _Optional[float] = ..., epsilon_spent: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...
