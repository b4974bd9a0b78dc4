from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelVersion(_message.Message):
    __slots__ = ("name", "version", "path", "sessions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    path: str
    sessions: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., path: _Optional[str] = ..., sessions: _Optional[int] = ...) -> None: ...

class RefusedCheckpoint(_message.Message):
    __slots__ = ("path", "reason")
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    path: str
    reason: str
    def __init__(self, path: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReloadModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadModelsResponse(_message.Message):
    __slots__ = ("loaded", "refused", "unloaded", "serving")
    LOADED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    loaded: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    refused: _containers.RepeatedCompositeFieldContainer[RefusedCheckpoint]
    unloaded: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    serving: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, loaded: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., refused: _Optional[_Iterable[_Union[RefusedCheckpoint, _Mapping]]] = ..., unloaded: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., serving: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...
