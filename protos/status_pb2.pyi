from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("round", "total_rounds", "last_accuracy", "epsilon_spent", "rejected_replies", "state")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_REPLIES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    round: int
    total_rounds: int
    last_accuracy: float
    epsilon_spent: float
    rejected_replies: int
    state: str
    def __init__(self, round: _Optional[int] = ..., total_rounds: _Optional[int] = ..., last_accuracy: _Optional[float] = ..., epsilon_spent: _Optional[float] = ..., rejected_replies: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...
