"""Bad input gets a precise status code and a message that says what was wrong, never INTERNAL or
UNKNOWN, and never changes a session (a canary session is checked after every case)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import tensor_pb2
from metarl_client.tensors import to_tensor
from metarl_server.app import ServeConfig, build_registry, bundled_checkpoints_dir
from tests.server_support import act, create, episode_proto, make_checkpoint, serving, stub

Code = grpc.StatusCode
MAX_BATCH = 8
MAX_TRANSITIONS = 500


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    models = tmp_path_factory.mktemp("models")
    make_checkpoint(models / "nav" / "1")
    registry = build_registry(
        ServeConfig(checkpoint=[bundled_checkpoints_dir() / "cartpole-family" / "1"])
    )
    registry.load_model_dir(models)
    with serving(registry, max_batch_size=MAX_BATCH, max_transitions=MAX_TRANSITIONS) as (
        _srv,
        channel,
    ):
        s = stub(channel)
        canary = create(s, "nav", seed=1)
        eps = [episode_proto(np.zeros((5, 2)), np.ones((5, 2)), np.arange(5.0))]
        s.Adapt(pb.AdaptRequest(session_id=canary, episodes=eps))
        yield {
            "stub": s,
            "nav": create(s, "nav", record=True),
            "cp": create(s, "cartpole-family", record=True),
            "canary": canary,
        }


def tensor(dtype: int, shape: list[int], data: bytes) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(dtype=dtype, shape=shape, data=data)  # type: ignore[arg-type]


F32 = tensor_pb2.DTYPE_FLOAT32
OBS4 = np.zeros(4, np.float32)


def act_req(obs: Any, sid: str = "cp", **kw: Any) -> Callable[[dict[str, Any]], Any]:
    def call(e: dict[str, Any]) -> Any:
        o = obs if isinstance(obs, tensor_pb2.Tensor) else to_tensor(np.asarray(obs))
        return e["stub"].Act(pb.ActRequest(session_id=e.get(sid, sid), observations=o, **kw))

    return call


def adapt_req(
    episodes: list[pb.Episode] | None = None, sid: str = "nav", **kw: Any
) -> Callable[[dict[str, Any]], Any]:
    def call(e: dict[str, Any]) -> Any:
        return e["stub"].Adapt(
            pb.AdaptRequest(session_id=e.get(sid, sid), episodes=episodes or [], **kw)
        )

    return call


def nav_ep(t: int = 5, obs: Any = None, acts: Any = None, rewards: Any = None) -> pb.Episode:
    return episode_proto(
        np.zeros((t, 2), np.float32) if obs is None else obs,
        np.zeros((t, 2), np.float32) if acts is None else acts,
        np.ones(t, np.float32) if rewards is None else rewards,
    )


def cp_ep(acts: Any) -> pb.Episode:
    n = len(acts)
    return episode_proto(np.zeros((n, 4), np.float32), acts, np.ones(n, np.float32))


def stream(*msgs: pb.StreamActRequest) -> Callable[[dict[str, Any]], Any]:
    def call(e: dict[str, Any]) -> Any:
        fixed = []
        for m in msgs:
            m2 = pb.StreamActRequest()
            m2.CopyFrom(m)
            if m2.session_id in e:
                m2.session_id = e[m2.session_id]
            fixed.append(m2)
        return list(e["stub"].StreamAct(iter(fixed)))

    return call


def obs_msg(obs: Any, sid: str = "") -> pb.StreamActRequest:
    return pb.StreamActRequest(session_id=sid, observation=to_tensor(np.asarray(obs, np.float32)))


CASES: list[tuple[str, Callable[[dict[str, Any]], Any], grpc.StatusCode, str]] = [
    # sessions and policies
    ("unknown session", act_req(OBS4, sid="0" * 32), Code.NOT_FOUND, "no session"),
    ("empty session id", act_req(OBS4, sid=""), Code.INVALID_ARGUMENT, "session_id is required"),
    ("huge session id", act_req(OBS4, sid="x" * 100_000), Code.NOT_FOUND, "no session"),
    (
        "empty policy",
        lambda e: e["stub"].CreateSession(pb.CreateSessionRequest()),
        Code.INVALID_ARGUMENT,
        "policy is required",
    ),
    (
        "unknown policy",
        lambda e: e["stub"].CreateSession(pb.CreateSessionRequest(policy="nope")),
        Code.NOT_FOUND,
        "no policy named 'nope'",
    ),
    (
        "unknown version",
        lambda e: e["stub"].CreateSession(pb.CreateSessionRequest(policy="nav", version="9")),
        Code.NOT_FOUND,
        "has no version '9'",
    ),
    (
        "get unknown",
        lambda e: e["stub"].GetSession(pb.GetSessionRequest(session_id="nope")),
        Code.NOT_FOUND,
        "no session",
    ),
    (
        "reset unknown",
        lambda e: e["stub"].ResetSession(pb.ResetSessionRequest(session_id="nope")),
        Code.NOT_FOUND,
        "no session",
    ),
    (
        "delete unknown",
        lambda e: e["stub"].DeleteSession(pb.DeleteSessionRequest(session_id="nope")),
        Code.NOT_FOUND,
        "no session",
    ),
    # observation tensors
    ("wrong shape", act_req(np.zeros(3, np.float32)), Code.INVALID_ARGUMENT, "must have shape [4]"),
    ("wrong batch shape", act_req(np.zeros((2, 3))), Code.INVALID_ARGUMENT, "[batch, 4]"),
    ("rank 70", act_req(tensor(F32, [1] * 70, b"\0" * 4)), Code.INVALID_ARGUMENT, "dimensions"),
    ("unspecified dtype", act_req(tensor(0, [4], b"\0" * 16)), Code.INVALID_ARGUMENT, "dtype"),
    ("unknown dtype", act_req(tensor(99, [4], b"\0" * 16)), Code.INVALID_ARGUMENT, "dtype 99"),
    ("short data", act_req(tensor(F32, [4], b"\0" * 15)), Code.INVALID_ARGUMENT, "bytes"),
    ("negative dim", act_req(tensor(F32, [-1, 4], b"")), Code.INVALID_ARGUMENT, "negative"),
    ("overflowing shape", act_req(tensor(F32, [0, 2**62], b"")), Code.INVALID_ARGUMENT, "shape"),
    (
        "overflowing product",
        act_req(tensor(F32, [2**62, 2**62, 4], b"")),
        Code.INVALID_ARGUMENT,
        "bytes",
    ),
    ("NaN", act_req(np.array([0, np.nan, 0, 0], np.float32)), Code.INVALID_ARGUMENT, "NaN"),
    ("inf", act_req(np.array([0, 0, np.inf, 0])), Code.INVALID_ARGUMENT, "infinite"),
    ("float64 overflow", act_req(np.array([1e300, 0, 0, 0])), Code.INVALID_ARGUMENT, "too large"),
    ("empty batch", act_req(np.zeros((0, 4), np.float32)), Code.INVALID_ARGUMENT, "empty"),
    (
        "oversized batch",
        act_req(np.zeros((MAX_BATCH + 1, 4), np.float32)),
        Code.RESOURCE_EXHAUSTED,
        f"limit of {MAX_BATCH}",
    ),
    (
        "feedback on a batch",
        act_req(np.zeros((2, 4), np.float32), feedback=pb.StepFeedback(reward=1)),
        Code.INVALID_ARGUMENT,
        "single-observation",
    ),
    (
        "NaN reward",
        act_req(OBS4, feedback=pb.StepFeedback(reward=float("nan"))),
        Code.INVALID_ARGUMENT,
        "finite",
    ),
    # Adapt
    ("steps 0", adapt_req([nav_ep()], steps=0), Code.INVALID_ARGUMENT, "between 1 and 10"),
    ("steps 11", adapt_req([nav_ep()], steps=11), Code.INVALID_ARGUMENT, "between 1 and 10"),
    ("nothing recorded", adapt_req(), Code.FAILED_PRECONDITION, "nothing recorded"),
    ("not recording", adapt_req(sid="canary"), Code.FAILED_PRECONDITION, "does not record"),
    (
        "empty rewards",
        adapt_req([nav_ep(rewards=np.zeros(0, np.float32))]),
        Code.INVALID_ARGUMENT,
        "T >= 1",
    ),
    (
        "scalar rewards",
        adapt_req([nav_ep(rewards=np.float32(1))]),
        Code.INVALID_ARGUMENT,
        "shape [T]",
    ),
    (
        "observations per reward",
        adapt_req([nav_ep(obs=np.zeros((4, 2)))]),
        Code.INVALID_ARGUMENT,
        "one per reward",
    ),
    (
        "gaussian action dims",
        adapt_req([nav_ep(acts=np.zeros((5, 3)))]),
        Code.INVALID_ARGUMENT,
        "[5, 2]",
    ),
    (
        "NaN action",
        adapt_req([nav_ep(acts=np.full((5, 2), np.nan))]),
        Code.INVALID_ARGUMENT,
        "NaN",
    ),
    (
        "inf reward",
        adapt_req([nav_ep(rewards=np.array([1, 1, np.inf, 1, 1], np.float32))]),
        Code.INVALID_ARGUMENT,
        "rewards contain NaN or infinite",
    ),
    (
        "discrete action out of range",
        adapt_req([cp_ep([0, 1, 2])], sid="cp"),
        Code.INVALID_ARGUMENT,
        "must lie in [0, 1]",
    ),
    (
        "fractional discrete action",
        adapt_req([cp_ep(np.array([0.5, 1.0]))], sid="cp"),
        Code.INVALID_ARGUMENT,
        "integer action indices",
    ),
    (
        "discrete actions as vectors",
        adapt_req([cp_ep(np.zeros((3, 2), np.int64))], sid="cp"),
        Code.INVALID_ARGUMENT,
        "one action index per step",
    ),
    (
        "too many transitions",
        adapt_req([nav_ep(300), nav_ep(300)]),
        Code.RESOURCE_EXHAUSTED,
        f"limit of {MAX_TRANSITIONS} transitions",
    ),
    (
        "padding blow-up",
        adapt_req([nav_ep(400)] + [nav_ep(1)] * 99),
        Code.RESOURCE_EXHAUSTED,
        "padded",
    ),
    # StreamAct
    ("stream without session", stream(obs_msg(OBS4)), Code.INVALID_ARGUMENT, "must name"),
    ("stream unknown session", stream(obs_msg(OBS4, "nope")), Code.NOT_FOUND, "no session"),
    (
        "stream batch",
        stream(obs_msg(np.zeros((2, 4)), "cp")),
        Code.INVALID_ARGUMENT,
        "one observation per message, shape [4]",
    ),
    (
        "stream NaN after a good step",
        stream(obs_msg(OBS4, "cp"), obs_msg([np.nan, 0, 0, 0])),
        Code.INVALID_ARGUMENT,
        "NaN",
    ),
    (
        "stream switches session",
        stream(obs_msg(OBS4, "cp"), obs_msg(np.zeros(2), "nav")),
        Code.INVALID_ARGUMENT,
        "one session",
    ),
    # ReportFeedback
    (
        "feedback missing",
        lambda e: e["stub"].ReportFeedback(pb.ReportFeedbackRequest(session_id=e["cp"])),
        Code.INVALID_ARGUMENT,
        "feedback is required",
    ),
]


def _canary_state(e: dict[str, Any]) -> tuple[Any, ...]:
    s = e["stub"]
    a, lp = act(s, e["canary"], np.full((2, 2), 0.1, np.float32), deterministic=True)
    info = s.GetSession(pb.GetSessionRequest(session_id=e["canary"])).session
    return a.tobytes(), lp.tobytes(), info.adaptations, info.adaptation_steps


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [pytest.param(c, code, m, id=name) for name, c, code, m in CASES],
)
def test_bad_input(
    env: dict[str, Any],
    call: Callable[[dict[str, Any]], Any],
    code: grpc.StatusCode,
    message: str,
) -> None:
    before = _canary_state(env)
    with pytest.raises(grpc.RpcError) as err:
        call(env)
    assert err.value.code() == code, err.value.details()
    details = err.value.details()
    assert message in details
    assert len(details) < 1000  # client-sent strings are cut in messages
    assert _canary_state(env) == before
