"""The whole SDK (sync, async, streams, recording, helpers) in a subprocess where torch and
gymnasium cannot be imported, against a real server."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib.abc, sys

    BLOCKED = ("torch", "gymnasium", "metarl", "metarl_server")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())

    import numpy as np
    import metarl_client
    from metarl_client import AsyncPolicyClient, Episode, PolicyClient, SessionNotFound
    from metarl_client.helpers import adapt_on, mean_return, rollout, rollout_async

    class Env:  # duck-typed: reset/step as in gymnasium, no gymnasium
        def __init__(self):
            self.t = 0
        def reset(self, seed=None, options=None):
            self.t = 0
            return np.zeros(4, np.float32), {}
        def step(self, action):
            self.t += 1
            obs = np.full(4, 0.01 * self.t, np.float32)
            return obs, 1.0, self.t >= 5, False, {}

    class VectorEnv:  # a gymnasium-1.x-like vector env (next-step autoreset)
        metadata = {"autoreset_mode": "NextStep"}
        def __init__(self, n):
            self.num_envs = n
            self.t = np.zeros(n, int)
            self.done = np.zeros(n, bool)
        def reset(self, seed=None, options=None):
            self.t[:] = 0
            return np.zeros((self.num_envs, 4), np.float32), {}
        def step(self, actions):
            assert len(actions) == self.num_envs
            self.t = np.where(self.done, 0, self.t + 1)
            rewards = np.where(self.done, 0.0, 1.0)
            self.done = (self.t >= 3) & ~self.done
            obs = np.repeat(0.01 * self.t[:, None], 4, axis=1).astype(np.float32)
            return obs, rewards, self.done.copy(), np.zeros(self.num_envs, bool), {}

    target = sys.argv[1]
    with PolicyClient(target) as client:
        (policy,) = [p for p in client.list_policies() if p.name == "cartpole-family"]
        with client.create_session(policy.name, seed=0, record=True) as session:
            assert client.get_session(session.id).id == session.id
            a = session.act(np.zeros(4, np.float32))
            batch = session.act_batch(np.zeros((3, 4), np.float32))
            with session.stream() as loop:
                loop.act(np.zeros(4, np.float32))
                loop.act(np.zeros(4, np.float32), reward=1.0)
                loop.report(1.0, terminated=True)
            assert session.info().recorded_transitions == 2
            assert session.adapt().transitions == 2
            episodes = rollout(Env(), session, episodes=2)
            vector_episodes = rollout(VectorEnv(2), session, episodes=4)
            assert [len(e) for e in vector_episodes] == [3, 3, 3, 3], vector_episodes
            result = adapt_on(Env(), session, episodes=2, steps=2)
            assert result.stats.steps == 2 and mean_return(episodes) == 5.0
            assert session.reset().adaptations == 0
        try:
            client.get_session(session.id)
            raise AssertionError("the session should be gone")
        except SessionNotFound:
            pass

    async def main():
        async with AsyncPolicyClient(target) as client:
            sessions = [await client.create_session("cartpole-family", seed=i) for i in range(4)]
            actions = await asyncio.gather(*(s.act(np.zeros(4, np.float32)) for s in sessions))
            async with sessions[0].stream() as loop:
                await loop.act(np.zeros(4, np.float32))
            eps = await rollout_async(Env(), sessions[1], episodes=1)
            stats = await sessions[1].adapt(eps)
            for s in sessions:
                await s.close()
            return actions, stats

    actions, stats = asyncio.run(main())
    assert stats.transitions == 5
    for name in BLOCKED:
        assert name not in sys.modules, name
    print("ok", metarl_client.__version__, a, batch.actions.tolist(), actions)
    """
)


def test_the_whole_sdk_runs_without_torch_or_gymnasium(server_target: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, server_target], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok 0.1.0"), proc.stdout
