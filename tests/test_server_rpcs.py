"""Every RPC of PolicyService and ModelAdminService, and health and reflection, for real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.tensors import from_tensor, to_tensor
from metarl_server.app import ServeConfig, Server, build_registry
from tests.server_support import (
    act,
    create,
    episode_proto,
    make_checkpoint,
    random_episodes,
    reload,
    serving,
    stub,
)

CARTPOLE = "cartpole-family"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, grpc.Channel]]:
    """The bundled CartPole policy and a 2-D gaussian one, from a model directory."""
    models = tmp_path_factory.mktemp("models")
    make_checkpoint(models / "nav" / "1")
    from metarl_server.app import bundled_checkpoints_dir

    registry = build_registry(ServeConfig(checkpoint=[bundled_checkpoints_dir() / CARTPOLE / "1"]))
    registry.load_model_dir(models)
    with serving(registry) as (srv, channel):
        yield srv, channel


def test_list_policies(server: tuple[Server, grpc.Channel]) -> None:
    resp = stub(server[1]).ListPolicies(pb.ListPoliciesRequest())
    by_name = {p.name: p for p in resp.policies}
    assert set(by_name) == {CARTPOLE, "nav"}
    cp = by_name[CARTPOLE]
    assert list(cp.versions) == ["1"] and cp.latest_version == "1"
    assert cp.env_id == "metarl/CartPoleFamily-v0"
    assert list(cp.observation_space.box.shape) == [4]
    assert cp.action_space.discrete.n == 2
    assert cp.inner_loop.max_steps == 10 and cp.inner_loop.max_transitions == 100_000
    assert cp.max_batch_size == 1024
    nav = by_name["nav"]
    assert list(nav.action_space.box.shape) == [2]
    assert nav.inner_loop.learning_rate == pytest.approx(0.1)
    # How the inner loop averages and steps, from the manifests (the bundled policy was trained
    # with per-episode means; the test checkpoint has the defaults of older manifests).
    assert cp.inner_loop.loss_weighting == pb.LOSS_WEIGHTING_EPISODE
    assert nav.inner_loop.loss_weighting == pb.LOSS_WEIGHTING_STEP
    assert nav.inner_loop.later_steps_learning_rate_scale == 1.0


def test_session_lifecycle(server: tuple[Server, grpc.Channel]) -> None:
    s = stub(server[1])
    created = s.CreateSession(pb.CreateSessionRequest(policy=CARTPOLE, seed=1, record=True))
    sess = created.session
    assert len(sess.id) == 32 and sess.version == "1" and sess.recording
    assert sess.expire_time.seconds > sess.create_time.seconds
    got = s.GetSession(pb.GetSessionRequest(session_id=sess.id)).session
    assert got.id == sess.id and got.adaptations == 0
    s.Adapt(
        pb.AdaptRequest(
            session_id=sess.id,
            episodes=[episode_proto(*e) for e in random_episodes(2, 5, 4, None)],
        )
    )
    assert s.GetSession(pb.GetSessionRequest(session_id=sess.id)).session.adaptations == 1
    reset = s.ResetSession(pb.ResetSessionRequest(session_id=sess.id)).session
    assert reset.adaptations == 0 and reset.adaptation_steps == 0
    s.DeleteSession(pb.DeleteSessionRequest(session_id=sess.id))
    with pytest.raises(grpc.RpcError) as err:
        s.GetSession(pb.GetSessionRequest(session_id=sess.id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_act_single_batch_deterministic_and_seeded(server: tuple[Server, grpc.Channel]) -> None:
    s = stub(server[1])
    obs = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32) * 0.1
    a, logp = act(s, create(s, CARTPOLE), obs[0])
    assert a.shape == () and a in (0, 1) and logp.shape == () and logp <= 0
    sid = create(s, CARTPOLE)
    batch, logps = act(s, sid, obs, deterministic=True)
    assert batch.shape == (6,) and logps.shape == (6,)
    np.testing.assert_array_equal(batch, act(s, sid, obs, deterministic=True)[0])
    # the same seed gives the same sampled actions; float64 observations are accepted
    one, two = create(s, CARTPOLE, seed=7), create(s, CARTPOLE, seed=7)
    big = np.random.default_rng(1).normal(size=(64, 4)) * 0.1
    np.testing.assert_array_equal(act(s, one, big)[0], act(s, two, big)[0])
    # gaussian policy: float actions [batch, 2]
    nav = create(s, "nav")
    acts, lp = act(s, nav, np.zeros((3, 2), np.float32))
    assert acts.shape == (3, 2) and acts.dtype == np.float32 and lp.shape == (3,)


def test_stream_act_records_and_adapt_uses_the_recording(
    server: tuple[Server, grpc.Channel],
) -> None:
    s = stub(server[1])
    sid = create(s, "nav", record=True, seed=3)
    rng = np.random.default_rng(0)

    def requests() -> Iterator[pb.StreamActRequest]:
        for t in range(12):
            req = pb.StreamActRequest(observation=to_tensor(rng.normal(size=2).astype(np.float32)))
            if t == 0:
                req.session_id = sid
            else:
                req.feedback.reward = 0.5
                req.feedback.terminated = t == 6  # the 6th reward ends episode 1
            yield req
        yield pb.StreamActRequest(feedback=pb.StepFeedback(reward=1.0, truncated=True))

    responses = list(s.StreamAct(requests()))
    assert len(responses) == 12
    assert from_tensor(responses[0].action).shape == (2,)
    info = s.GetSession(pb.GetSessionRequest(session_id=sid)).session
    assert info.recorded_transitions == 12
    stats = s.Adapt(pb.AdaptRequest(session_id=sid)).stats
    assert stats.episodes == 2 and stats.transitions == 12 and stats.steps == 1
    after = s.GetSession(pb.GetSessionRequest(session_id=sid)).session
    assert after.adaptations == 1 and after.recorded_transitions == 0


def test_report_feedback_and_act_feedback(server: tuple[Server, grpc.Channel]) -> None:
    s = stub(server[1])
    sid = create(s, CARTPOLE, record=True)
    act(s, sid, np.zeros(4, np.float32))
    act(s, sid, np.zeros(4, np.float32), feedback=pb.StepFeedback(reward=1.0))
    resp = s.ReportFeedback(
        pb.ReportFeedbackRequest(
            session_id=sid, feedback=pb.StepFeedback(reward=2.0, terminated=True)
        )
    )
    assert resp.session.recorded_transitions == 2
    stats = s.Adapt(pb.AdaptRequest(session_id=sid, steps=2)).stats
    assert stats.transitions == 2 and stats.episodes == 1 and stats.steps == 2
    with pytest.raises(grpc.RpcError) as err:  # not recording
        s.ReportFeedback(
            pb.ReportFeedbackRequest(session_id=create(s, CARTPOLE), feedback=pb.StepFeedback())
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_adapt_changes_the_parameters_and_reports(server: tuple[Server, grpc.Channel]) -> None:
    srv, channel = server
    s = stub(channel)
    sid = create(s, "nav")
    probe = np.full((1, 2), 0.3, np.float32)
    before = act(s, sid, probe, deterministic=True)[0]
    eps = random_episodes(20, 100, 2, 2)
    resp = s.Adapt(pb.AdaptRequest(session_id=sid, episodes=[episode_proto(*e) for e in eps]))
    st = resp.stats
    assert (st.steps, st.episodes, st.transitions) == (1, 20, 2000)
    assert st.loss_after < st.loss_before and 0 < st.duration_seconds < 30
    assert resp.session.adaptations == 1 and resp.session.adaptation_steps == 1
    after = act(s, sid, probe, deterministic=True)[0]
    assert not np.allclose(before, after)
    session = srv.sessions.get(sid)
    assert session.params is not session.policy.params  # θ' of its own
    assert session.params.dtype == np.float32 and session.params.flags.c_contiguous
    # the version's θ is untouched: a new session acts as the first did before adapting
    np.testing.assert_array_equal(act(s, create(s, "nav"), probe, deterministic=True)[0], before)


def test_health_reflection_and_admin(server: tuple[Server, grpc.Channel], tmp_path: Path) -> None:
    channel = server[1]
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "metarl.v1.PolicyService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    resp = next(
        iter(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    )  # fmt: skip
    names = {svc.name for svc in resp.list_services_response.service}
    assert {"metarl.v1.PolicyService", "metarl.v1.ModelAdminService"} <= names
    assert "grpc.health.v1.Health" in names
    out = reload(channel)  # nothing new in the model directory
    assert not out.loaded and not out.refused
    assert {(m.name, m.version) for m in out.serving} == {(CARTPOLE, "1"), ("nav", "1")}
