"""Random and malformed messages for every RPC: never INTERNAL or UNKNOWN, the server stays up,
and other sessions are unaffected."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_client.proto.metarl.v1 import tensor_pb2
from metarl_server.app import create_server

ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def stub(bundled_registry) -> Iterator[pb_grpc.PolicyServiceStub]:  # type: ignore[no-untyped-def]
    server, port = create_server("[::]:0", bundled_registry)
    server.start()
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        yield pb_grpc.PolicyServiceStub(channel)
    server.stop(None)


@pytest.fixture(scope="module")
def canary(stub: pb_grpc.PolicyServiceStub) -> Iterator[tuple[str, pb.ActResponse]]:
    """A session whose deterministic answer must not change while others are fuzzed."""
    sid = stub.CreateSession(pb.CreateSessionRequest(policy="cartpole-family", seed=1)).session.id
    yield sid, _canary_act(stub, sid)


def _canary_act(stub: pb_grpc.PolicyServiceStub, sid: str) -> pb.ActResponse:
    obs = np.linspace(-0.1, 0.1, 32, dtype=np.float32).reshape(8, 4)
    return stub.Act(
        pb.ActRequest(
            session_id=sid,
            deterministic=True,
            observations=tensor_pb2.Tensor(
                dtype=tensor_pb2.DTYPE_FLOAT32, shape=[8, 4], data=obs.tobytes()
            ),
        ),
        timeout=10,
    )


def _call(fn, request) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(request, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, (exc.code(), exc.details())
        assert exc.details(), "errors must say what was wrong"


dtypes = st.one_of(st.sampled_from([0, 1, 2, 3, 4]), st.integers(-5, 1000))
shapes = st.one_of(
    st.lists(st.integers(0, 6), max_size=4),
    st.lists(st.integers(-3, 2**62), max_size=5),
)
special = st.sampled_from([np.nan, np.inf, -np.inf, 1e38, -1e38, 0.0, 1e-45])


@st.composite
def tensors(draw: st.DrawFn) -> tensor_pb2.Tensor:
    kind = draw(st.integers(0, 3))
    if kind == 0:  # anything at all
        return tensor_pb2.Tensor(
            dtype=draw(dtypes), shape=draw(shapes), data=draw(st.binary(max_size=256))
        )
    # well-formed arrays of plausible shapes, with hostile values
    shape = draw(st.sampled_from([[4], [1, 4], [3, 4], [0, 4], [4, 1], [2, 2, 4], [], [5]]))
    size = int(np.prod(shape)) if shape else 1
    values = draw(st.lists(st.one_of(st.floats(-10, 10), special), min_size=size, max_size=size))
    if kind == 1:
        arr = np.array(values, dtype=np.float32).reshape(shape)
        return tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=shape, data=arr.tobytes())
    if kind == 2:
        arr = np.array(values, dtype=np.float64).reshape(shape)
        return tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT64, shape=shape, data=arr.tobytes())
    ints = np.array(
        draw(st.lists(st.integers(-(2**40), 2**40), min_size=size, max_size=size)), dtype=np.int64
    ).reshape(shape)
    return tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_INT64, shape=shape, data=ints.tobytes())


session_ids = st.one_of(st.just("VALID"), st.text(max_size=40), st.just(""))


def _sid(stub: pb_grpc.PolicyServiceStub, drawn: str) -> str:
    if drawn != "VALID":
        return drawn
    return stub.CreateSession(pb.CreateSessionRequest(policy="cartpole-family")).session.id


@FUZZ
@given(
    policy=st.one_of(st.just("cartpole-family"), st.text(max_size=30)),
    version=st.one_of(st.just(""), st.just("1"), st.text(max_size=10)),
    seed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    record=st.booleans(),
)
def test_create_session(stub, policy, version, seed, record) -> None:  # type: ignore[no-untyped-def]
    req = pb.CreateSessionRequest(policy=policy, version=version, record=record)
    if seed is not None:
        req.seed = seed
    _call(stub.CreateSession, req)


@FUZZ
@given(
    sid=session_ids,
    obs=tensors(),
    deterministic=st.booleans(),
    reward=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_act(stub, canary, sid, obs, deterministic, reward) -> None:  # type: ignore[no-untyped-def]
    req = pb.ActRequest(session_id=_sid(stub, sid), observations=obs, deterministic=deterministic)
    if reward is not None:
        req.feedback.reward = reward
    _call(stub.Act, req)


@st.composite
def episodes(draw: st.DrawFn) -> pb.Episode:
    if draw(st.booleans()):
        return pb.Episode(
            observations=draw(tensors()),
            actions=draw(tensors()),
            rewards=draw(tensors()),
            terminated=draw(st.booleans()),
        )
    n = draw(st.integers(1, 6))
    obs = np.array(
        draw(st.lists(st.one_of(st.floats(-1, 1), special), min_size=4 * n, max_size=4 * n)),
        dtype=np.float32,
    ).reshape(n, 4)
    acts = np.array(draw(st.lists(st.integers(-2, 3), min_size=n, max_size=n)), dtype=np.int64)
    rew = np.array(
        draw(st.lists(st.one_of(st.floats(-1e6, 1e6), special), min_size=n, max_size=n)),
        dtype=np.float32,
    )

    def t(a: np.ndarray) -> tensor_pb2.Tensor:
        code = tensor_pb2.DTYPE_INT64 if a.dtype.kind == "i" else tensor_pb2.DTYPE_FLOAT32
        return tensor_pb2.Tensor(dtype=code, shape=list(a.shape), data=a.tobytes())

    return pb.Episode(observations=t(obs), actions=t(acts), rewards=t(rew))


@FUZZ
@given(
    sid=session_ids,
    eps=st.lists(episodes(), max_size=4),
    steps=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_adapt(stub, canary, sid, eps, steps) -> None:  # type: ignore[no-untyped-def]
    req = pb.AdaptRequest(session_id=_sid(stub, sid), episodes=eps)
    if steps is not None:
        req.steps = steps
    _call(stub.Adapt, req)


@FUZZ
@given(sid=session_ids)
def test_session_lifecycle_rpcs(stub, sid) -> None:  # type: ignore[no-untyped-def]
    sid = _sid(stub, sid)
    _call(stub.GetSession, pb.GetSessionRequest(session_id=sid))
    _call(stub.ReportFeedback, pb.ReportFeedbackRequest(session_id=sid))
    _call(stub.ResetSession, pb.ResetSessionRequest(session_id=sid))
    _call(stub.DeleteSession, pb.DeleteSessionRequest(session_id=sid))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sid=session_ids,
    messages=st.lists(
        st.tuples(st.one_of(st.none(), tensors()), st.booleans(), st.booleans()), max_size=6
    ),
)
def test_stream_act(stub, canary, sid, messages) -> None:  # type: ignore[no-untyped-def]
    sid = _sid(stub, sid)

    def requests() -> Iterator[pb.StreamActRequest]:
        for i, (obs, feedback, name_it) in enumerate(messages):
            req = pb.StreamActRequest(session_id=sid if (i == 0 or name_it) else "")
            if obs is not None:
                req.observation.CopyFrom(obs)
            if feedback:
                req.feedback.reward = 1.0
            yield req

    try:
        for _ in stub.StreamAct(requests(), timeout=10):
            pass
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, (exc.code(), exc.details())


def test_canary_session_is_unaffected(stub, canary) -> None:  # type: ignore[no-untyped-def]
    sid, before = canary
    after = _canary_act(stub, sid)
    assert after.actions.data == before.actions.data
    assert after.log_probs.data == before.log_probs.data
    assert stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10).policies
