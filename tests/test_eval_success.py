"""Success rates in sampling and ``metarl eval`` (Meta-World's protocol: an episode succeeded if
the family's flag was set at any step while it ran), the training horizon a checkpoint records,
and held-out tasks from a family's test split; on a tiny family whose flags are known by hand."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from numpy.typing import NDArray

import metarl_envs
from metarl.core import policies
from metarl.core.checkpoint import Checkpoint
from metarl.core.inner_loop import InnerLoopConfig
from metarl.core.sampling import sample_episodes_and_successes, with_horizon
from metarl.envs.base import BatchedTaskEnv, Task, TaskFamilyEnv
from metarl.evaluation.eval import EvalConfig, evaluate, format_table

ENV_ID = "test/Flagged-v0"


class BatchedFlagged(BatchedTaskEnv):
    """Reward 1 per step; the success flag is set exactly at step ``at`` (1-based) and the episode
    terminates after step ``end``. Train tasks have ``at`` 2, test tasks alternate 2 and 9."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    max_episode_steps = 5
    reports_success = True

    @staticmethod
    def sample_tasks(num_tasks: int, rng: np.random.Generator) -> list[Task]:
        return [{"at": 2.0, "end": 99.0} for _ in range(num_tasks)]

    @classmethod
    def sample_test_tasks(cls, num_tasks: int, rng: np.random.Generator) -> list[Task]:
        return [{"at": 2.0 if i % 2 == 0 else 9.0, "end": 99.0} for i in range(num_tasks)]

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        self.validate_tasks(tasks, ("at", "end"))
        self._at = np.array([t["at"] for t in tasks])
        self._end = np.array([t["end"] for t in tasks])
        self.tasks = [dict(t) for t in tasks]

    def reset(self, rng: np.random.Generator) -> NDArray[np.float32]:
        self._t = 0
        self.success[:] = False
        return np.zeros((self.num_envs, 1), np.float32)

    def step(
        self, actions: NDArray[Any]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        self._t += 1
        self.success = self._at == self._t
        obs = np.full((self.num_envs, 1), self._t, np.float32)
        return obs, np.ones(self.num_envs, np.float32), self._end <= self._t


class FlaggedEnv(TaskFamilyEnv):
    batched_cls = BatchedFlagged


metarl_envs.register_family(ENV_ID, FlaggedEnv)
SPEC = policies.PolicySpec.for_spaces(
    BatchedFlagged.observation_space, BatchedFlagged.action_space, hidden_sizes=(4,)
)
PARAMS = policies.init_params(SPEC, torch.Generator().manual_seed(0))


def sample(tasks: list[Task], episodes: int, horizon: int | None = None) -> Any:
    env = with_horizon(BatchedFlagged(len(tasks) * episodes), horizon)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    return sample_episodes_and_successes(env, SPEC, PARAMS, tasks, episodes, rng=rng, generator=gen)


def test_an_episode_succeeds_if_the_flag_was_set_at_any_step_it_ran() -> None:
    tasks = [
        {"at": 2.0, "end": 99.0},  # set at step 2 only: a success
        {"at": 9.0, "end": 99.0},  # never set within 5 steps
        {"at": 4.0, "end": 3.0},  # set at step 4, after the episode ended at step 3
        {"at": 5.0, "end": 99.0},  # set at the last step
    ]
    batch, succeeded = sample(tasks, episodes=2)
    assert succeeded.tolist() == [[True, True], [False, False], [False, False], [True, True]]
    assert batch.rewards.sum(-1).tolist() == [[5, 5], [5, 5], [3, 3], [5, 5]]
    _, cut = sample(tasks, episodes=1, horizon=4)  # episodes of 4 steps: step 5 never comes
    assert cut.tolist() == [[True], [False], [False], [False]]


def test_a_family_without_a_flag_gives_none() -> None:
    from metarl.envs.navigation import BatchedNavigation2D

    spec = policies.PolicySpec.for_spaces(
        BatchedNavigation2D.observation_space, BatchedNavigation2D.action_space, hidden_sizes=(4,)
    )
    params = policies.init_params(spec, torch.Generator().manual_seed(0))
    tasks = BatchedNavigation2D.sample_tasks(2, np.random.default_rng(0))
    _, succeeded = sample_episodes_and_successes(
        BatchedNavigation2D(2), spec, params, tasks, 1,
        rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert succeeded is None


def checkpoint(training: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        name="flagged", version="1", env_id=ENV_ID, spec=SPEC,
        inner_loop=InnerLoopConfig(lr=0.1), params=PARAMS, training=training,
    )  # fmt: skip


def run(training: dict[str, Any], **cfg: Any) -> Any:
    config = EvalConfig(  # (the checkpoint is given: its path is not read)
        checkpoint=Path("unused"), tasks=4, adapt_steps=1, episodes_per_task=2,
        methods=("maml",), quiet=True, **cfg,
    )  # fmt: skip
    return evaluate(config, checkpoint(training))


def test_eval_scores_success_on_the_test_split_with_the_trained_horizon() -> None:
    result = run({})  # test tasks alternate at 2 (success) and 9 (never): half of them
    assert result.success == {"maml": [0.5, 0.5]}
    assert result.per_task_success["maml"].tolist() == [[1, 0, 1, 0], [1, 0, 1, 0]]
    assert result.returns["maml"] == [5.0, 5.0] and result.max_episode_steps == 5
    out = result.to_json()
    assert out["success_rate"] == {"maml": [0.5, 0.5]} and out["max_episode_steps"] == 5
    json.dumps(out)
    table = format_table(result)
    assert "success rate" in table and "50.0%" in table
    # A checkpoint trained on 1-step episodes is evaluated on 1-step episodes: no success
    short = run({"max_episode_steps": 1})
    assert short.success == {"maml": [0.0, 0.0]} and short.returns["maml"] == [1.0, 1.0]
    assert run({"max_episode_steps": 1}, max_episode_steps=3).success == {"maml": [0.5, 0.5]}


@pytest.mark.parametrize("horizon", [0, -1])
def test_with_horizon_refuses_nonpositive(horizon: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        with_horizon(BatchedFlagged(1), horizon)
