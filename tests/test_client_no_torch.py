"""The client SDK works where torch cannot be imported (a robot's Python)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch.") or name == "gymnasium":
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    import numpy as np
    from metarl_client import Episode, PolicyClient

    with PolicyClient(sys.argv[1]) as client:
        names = [p.name for p in client.list_policies()]
        assert "cartpole-family" in names, names
        with client.create_session("cartpole-family", seed=0) as session:
            obs = np.zeros(4, dtype=np.float32)
            first = session.act(obs)
            ep = Episode(np.zeros((3, 4), np.float32), np.array([0, 1, 0]), np.ones(3, np.float32))
            stats = session.adapt([ep])
            assert stats.steps == 1 and stats.transitions == 3
            second = session.act(obs)
    assert "torch" not in sys.modules
    print("ok", first, second)
    """
)


def test_client_runs_without_torch(server_target: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, server_target], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
