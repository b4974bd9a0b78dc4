"""The task families without torch: ``metarl_envs`` (distribution metarl-envs) imports and runs
where torch, ``metarl`` and ``metarl_server`` cannot be imported, and needs only gymnasium and
numpy; ``metarl.envs`` is the same package."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "metarl", "metarl_server", "metarl_client"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())

    import gymnasium as gym
    import numpy as np
    import metarl_envs

    assert {"metarl/CartPoleFamily-v0", "metarl/Navigation2D-v0",
            "metarl/PendulumFamily-v0"} <= set(metarl_envs.registered_families())
    env = gym.make("metarl/Navigation2D-v0")
    task = env.unwrapped.sample_tasks(1, seed=0)[0]
    obs, info = env.reset(seed=1, options={"task": task})
    assert info["task"] == task
    obs, reward, *_ = env.step(np.zeros(2, np.float32))
    vec = gym.make_vec("metarl/CartPoleFamily-v0", num_envs=3,
                       vectorization_mode="vector_entry_point")
    obs, _ = vec.reset(seed=0, options={"tasks": vec.unwrapped.sample_tasks(3, seed=0)})
    assert obs.shape == (3, 4)
    assert metarl_envs.policy_name("metarl/CartPoleFamily-v0") == "cartpole-family"
    try:
        metarl_envs.family("metarl/Nope-v0")
    except KeyError as exc:
        assert "registered families" in str(exc) and exc.exit_code == 2
    assert not any(m.split(".")[0] == "torch" for m in sys.modules)
    print("ok")
    """
)


def test_metarl_envs_runs_without_torch_or_metarl() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"


def test_the_distribution_needs_only_gymnasium_and_numpy() -> None:
    project = tomllib.loads((ROOT / "envs" / "pyproject.toml").read_text())["project"]
    assert project["name"] == "metarl-envs"
    assert sorted(d.split(">")[0] for d in project["dependencies"]) == ["gymnasium", "numpy"]
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"metarl-envs=={project['version']}" in main["dependencies"]


def test_metarl_envs_is_metarl_envs_under_both_names() -> None:
    import metarl.envs
    import metarl.envs.base
    import metarl.envs.navigation
    import metarl_envs
    import metarl_envs.base
    import metarl_envs.navigation

    assert metarl.envs is metarl_envs
    assert metarl.envs.base is metarl_envs.base
    assert metarl.envs.navigation.BatchedNavigation2D is metarl_envs.navigation.BatchedNavigation2D
