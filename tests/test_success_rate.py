"""Success rates beside returns (Meta-World's protocol: an episode succeeded if the task's flag
was set at any step): the contract's Episode.success and AdaptStats.mean_return/success_rate,
the SDK's Episode, rollout and adapt_on, on hand-built episodes against a real server."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from metarl_client import Episode, InvalidArgument, PolicyClient
from metarl_client.helpers import adapt_on, rollout, success_rate
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from tests.server_support import create, episode_proto, make_checkpoint, serving, stub

POLICY = "cartpole-family"


def cartpole_episodes(n: int, length: int = 5) -> list[Episode]:
    """``n`` hand-made CartPole episodes; episode ``i`` has rewards 1, ..., 1 (return ``length``)
    plus ``i`` on its last step."""
    out = []
    for i in range(n):
        obs = np.full((length, 4), 0.01 * (i + 1), np.float32)
        acts = np.arange(length) % 2
        rewards = np.ones(length, np.float32)
        rewards[-1] += i
        out.append(Episode(obs, acts, rewards, terminated=True))
    return out


def test_episode_success_from_flags_or_given() -> None:
    base = cartpole_episodes(1)[0]
    assert base.succeeded is None  # a task without a flag
    assert Episode(base.observations, base.actions, base.rewards, success=True).succeeded is True
    flags = np.array([False, False, True, False, False])  # set at one step: a success
    assert Episode(base.observations, base.actions, base.rewards, successes=flags).succeeded
    never = np.zeros(5, bool)
    assert (
        Episode(base.observations, base.actions, base.rewards, successes=never).succeeded is False
    )
    # an explicit episode-level flag wins over the per-step ones
    assert not Episode(
        base.observations, base.actions, base.rewards, False, False, False, flags
    ).succeeded
    eps = [
        Episode(base.observations, base.actions, base.rewards, success=bool(s))
        for s in (1, 0, 0, 1)
    ]
    assert success_rate(eps) == 0.5
    assert success_rate([*eps, base]) is None  # one without a flag: no rate


def test_adapt_stats_report_mean_return_and_success_rate(server_target: str) -> None:
    with PolicyClient(server_target) as client:
        session = client.create_session(POLICY, seed=0)
        eps = cartpole_episodes(4)  # returns 5, 6, 7, 8
        flags = [np.array([0, 0, 0, 0, 1]), np.zeros(5), np.zeros(5), np.array([1, 1, 0, 0, 0])]
        with_flags = [
            Episode(e.observations, e.actions, e.rewards, e.terminated, successes=f)
            for e, f in zip(eps, flags, strict=True)
        ]
        stats = session.adapt(with_flags)
        assert stats.episodes == 4 and stats.mean_return == pytest.approx(6.5)
        assert stats.success_rate == pytest.approx(0.5)  # episodes 0 and 3
        stats = session.adapt(eps)  # no flags: no rate, the return still
        assert stats.success_rate is None and stats.mean_return == pytest.approx(6.5)
        given = [Episode(e.observations, e.actions, e.rewards, success=True) for e in eps[:3]]
        assert session.adapt(given).success_rate == 1.0
        with pytest.raises(InvalidArgument, match="successes must have shape"):
            session.adapt([Episode(eps[0].observations, eps[0].actions, eps[0].rewards,
                                   successes=np.zeros(4))])  # fmt: skip


def test_server_refuses_episodes_that_mix_flagged_and_unflagged(tmp_path: Any) -> None:
    make_checkpoint(tmp_path / "nav" / "1")
    with serving(model_dir=str(tmp_path)) as (_, channel):
        s = stub(channel)
        sid = create(s, "nav")
        obs, acts = np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32)
        flagged = episode_proto(obs, acts, [1.0, 2.0, 3.0])
        flagged.success = False
        plain = episode_proto(obs, acts, [0.0, 0.0, 1.0])
        with pytest.raises(grpc.RpcError) as err:
            s.Adapt(pb.AdaptRequest(session_id=sid, episodes=[flagged, plain]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "episodes [1] carry no success flag" in (err.value.details() or "")
        # all flagged (one success of two): the rate; the mean return of 6 and 1
        flagged_ok = episode_proto(obs, acts, [0.0, 0.0, 1.0])
        flagged_ok.success = True
        st = s.Adapt(pb.AdaptRequest(session_id=sid, episodes=[flagged, flagged_ok])).stats
        assert st.HasField("success_rate") and st.success_rate == 0.5
        assert st.mean_return == pytest.approx(3.5)


class FlaggedEnv:
    """A gymnasium-like env whose episodes last 4 steps and report ``info["success"]`` at step
    ``succeed_at`` (never when None); rewards are 1 per step."""

    def __init__(self, succeed_at: int | None) -> None:
        self.succeed_at = succeed_at
        self.t = 0

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.t = 0
        return np.zeros(4, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        info = {"success": float(self.t == self.succeed_at)}
        return np.full(4, 0.01 * self.t, np.float32), 1.0, False, self.t >= 4, info


def test_rollout_and_adapt_on_carry_success(server_target: str) -> None:
    with PolicyClient(server_target) as client:
        session = client.create_session(POLICY, seed=0)
        eps = rollout(FlaggedEnv(succeed_at=2), session, episodes=2)
        assert [np.asarray(e.successes).tolist() for e in eps] == [[False, True, False, False]] * 2
        result = adapt_on(FlaggedEnv(succeed_at=3), session, episodes=2, eval_episodes=3)
        assert result.success_before == 1.0 and result.success_after == 1.0
        assert result.stats.success_rate == 1.0 and result.stats.mean_return == 4.0
        result = adapt_on(FlaggedEnv(succeed_at=None), session, episodes=2, eval_episodes=1)
        assert result.success_before == 0.0 and result.stats.success_rate == 0.0
