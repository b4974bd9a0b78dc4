import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from metarl_client.proto.metarl.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LossWeighting(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOSS_WEIGHTING_UNSPECIFIED: _ClassVar[LossWeighting]
    LOSS_WEIGHTING_STEP: _ClassVar[LossWeighting]
    LOSS_WEIGHTING_EPISODE: _ClassVar[LossWeighting]
LOSS_WEIGHTING_UNSPECIFIED: LossWeighting
LOSS_WEIGHTING_STEP: LossWeighting
LOSS_WEIGHTING_EPISODE: LossWeighting

class Space(_message.Message):
    __slots__ = ("box", "discrete")
    BOX_FIELD_NUMBER: _ClassVar[int]
    DISCRETE_FIELD_NUMBER: _ClassVar[int]
    box: BoxSpace
    discrete: DiscreteSpace
    def __init__(self, box: _Optional[_Union[BoxSpace, _Mapping]] = ..., discrete: _Optional[_Union[DiscreteSpace, _Mapping]] = ...) -> None: ...

class BoxSpace(_message.Message):
    __slots__ = ("shape", "low", "high", "dtype")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    low: _containers.RepeatedScalarFieldContainer[float]
    high: _containers.RepeatedScalarFieldContainer[float]
    dtype: _tensor_pb2.Dtype
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., low: _Optional[_Iterable[float]] = ..., high: _Optional[_Iterable[float]] = ..., dtype: _Optional[_Union[_tensor_pb2.Dtype, str]] = ...) -> None: ...

class DiscreteSpace(_message.Message):
    __slots__ = ("n", "start")
    N_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    n: int
    start: int
    def __init__(self, n: _Optional[int] = ..., start: _Optional[int] = ...) -> None: ...

class InnerLoopSettings(_message.Message):
    __slots__ = ("learning_rate", "default_steps", "max_steps", "discount", "gae_lambda", "normalize_advantages", "max_transitions", "learned_learning_rates", "loss_weighting", "later_steps_learning_rate_scale")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    GAE_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_ADVANTAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    LEARNED_LEARNING_RATES_FIELD_NUMBER: _ClassVar[int]
    LOSS_WEIGHTING_FIELD_NUMBER: _ClassVar[int]
    LATER_STEPS_LEARNING_RATE_SCALE_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    default_steps: int
    max_steps: int
    discount: float
    gae_lambda: float
    normalize_advantages: bool
    max_transitions: int
    learned_learning_rates: bool
    loss_weighting: LossWeighting
    later_steps_learning_rate_scale: float
    def __init__(self, learning_rate: _Optional[float] = ..., default_steps: _Optional[int] = ..., max_steps: _Optional[int] = ..., discount: _Optional[float] = ..., gae_lambda: _Optional[float] = ..., normalize_advantages: _Optional[bool] = ..., max_transitions: _Optional[int] = ..., learned_learning_rates: _Optional[bool] = ..., loss_weighting: _Optional[_Union[LossWeighting, str]] = ..., later_steps_learning_rate_scale: _Optional[float] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("name", "versions", "latest_version", "env_id", "observation_space", "action_space", "inner_loop", "max_batch_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_SPACE_FIELD_NUMBER: _ClassVar[int]
    ACTION_SPACE_FIELD_NUMBER: _ClassVar[int]
    INNER_LOOP_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    latest_version: str
    env_id: str
    observation_space: Space
    action_space: Space
    inner_loop: InnerLoopSettings
    max_batch_size: int
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., latest_version: _Optional[str] = ..., env_id: _Optional[str] = ..., observation_space: _Optional[_Union[Space, _Mapping]] = ..., action_space: _Optional[_Union[Space, _Mapping]] = ..., inner_loop: _Optional[_Union[InnerLoopSettings, _Mapping]] = ..., max_batch_size: _Optional[int] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("id", "policy", "version", "adaptation_steps", "adaptations", "recording", "recorded_transitions", "create_time", "expire_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADAPTATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    ADAPTATIONS_FIELD_NUMBER: _ClassVar[int]
    RECORDING_FIELD_NUMBER: _ClassVar[int]
    RECORDED_TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    policy: str
    version: str
    adaptation_steps: int
    adaptations: int
    recording: bool
    recorded_transitions: int
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., policy: _Optional[str] = ..., version: _Optional[str] = ..., adaptation_steps: _Optional[int] = ..., adaptations: _Optional[int] = ..., recording: _Optional[bool] = ..., recorded_transitions: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("policy", "version", "seed", "record")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    policy: str
    version: str
    seed: int
    record: bool
    def __init__(self, policy: _Optional[str] = ..., version: _Optional[str] = ..., seed: _Optional[int] = ..., record: _Optional[bool] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class ResetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ResetSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StepFeedback(_message.Message):
    __slots__ = ("reward", "terminated", "truncated")
    REWARD_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    reward: float
    terminated: bool
    truncated: bool
    def __init__(self, reward: _Optional[float] = ..., terminated: _Optional[bool] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ActRequest(_message.Message):
    __slots__ = ("session_id", "observations", "deterministic", "feedback")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    observations: _tensor_pb2.Tensor
    deterministic: bool
    feedback: StepFeedback
    def __init__(self, session_id: _Optional[str] = ..., observations: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., deterministic: _Optional[bool] = ..., feedback: _Optional[_Union[StepFeedback, _Mapping]] = ...) -> None: ...

class ActResponse(_message.Message):
    __slots__ = ("actions", "log_probs")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    LOG_PROBS_FIELD_NUMBER: _ClassVar[int]
    actions: _tensor_pb2.Tensor
    log_probs: _tensor_pb2.Tensor
    def __init__(self, actions: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., log_probs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class StreamActRequest(_message.Message):
    __slots__ = ("session_id", "observation", "deterministic", "feedback")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    observation: _tensor_pb2.Tensor
    deterministic: bool
    feedback: StepFeedback
    def __init__(self, session_id: _Optional[str] = ..., observation: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., deterministic: _Optional[bool] = ..., feedback: _Optional[_Union[StepFeedback, _Mapping]] = ...) -> None: ...

class StreamActResponse(_message.Message):
    __slots__ = ("action", "log_prob")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    LOG_PROB_FIELD_NUMBER: _ClassVar[int]
    action: _tensor_pb2.Tensor
    log_prob: float
    def __init__(self, action: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., log_prob: _Optional[float] = ...) -> None: ...

class ReportFeedbackRequest(_message.Message):
    __slots__ = ("session_id", "feedback")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    feedback: StepFeedback
    def __init__(self, session_id: _Optional[str] = ..., feedback: _Optional[_Union[StepFeedback, _Mapping]] = ...) -> None: ...

class ReportFeedbackResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class Episode(_message.Message):
    __slots__ = ("observations", "actions", "rewards", "terminated", "truncated", "success")
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    observations: _tensor_pb2.Tensor
    actions: _tensor_pb2.Tensor
    rewards: _tensor_pb2.Tensor
    terminated: bool
    truncated: bool
    success: bool
    def __init__(self, observations: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., actions: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., rewards: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., terminated: _Optional[bool] = ..., truncated: _Optional[bool] = ..., success: _Optional[bool] = ...) -> None: ...

class AdaptRequest(_message.Message):
    __slots__ = ("session_id", "episodes", "steps")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    episodes: _containers.RepeatedCompositeFieldContainer[Episode]
    steps: int
    def __init__(self, session_id: _Optional[str] = ..., episodes: _Optional[_Iterable[_Union[Episode, _Mapping]]] = ..., steps: _Optional[int] = ...) -> None: ...

class AdaptStats(_message.Message):
    __slots__ = ("steps", "loss_before", "loss_after", "transitions", "episodes", "duration_seconds", "mean_return", "success_rate")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LOSS_AFTER_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEAN_RETURN_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    steps: int
    loss_before: float
    loss_after: float
    transitions: int
    episodes: int
    duration_seconds: float
    mean_return: float
    success_rate: float
    def __init__(self, steps: _Optional[int] = ..., loss_before: _Optional[float] = ..., loss_after: _Optional[float] = ..., transitions: _Optional[int] = ..., episodes: _Optional[int] = ..., duration_seconds: _Optional[float] = ..., mean_return: _Optional[float] = ..., success_rate: _Optional[float] = ...) -> None: ...

class AdaptResponse(_message.Message):
    __slots__ = ("stats", "session")
    STATS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    stats: AdaptStats
    session: Session
    def __init__(self, stats: _Optional[_Union[AdaptStats, _Mapping]] = ..., session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...
