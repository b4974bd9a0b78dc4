"""``pip install ./client`` into a fresh virtual environment (no torch, no gymnasium, none of
the server) and use it against a real server: the SDK's own dependency list is enough."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CLIENT_DIR = Path(__file__).resolve().parents[1] / "client"

SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib.metadata, importlib.util, sys
    import numpy as np
    from metarl_client import AsyncPolicyClient, Episode, PolicyClient
    from metarl_client.helpers import rollout

    for name in ("torch", "gymnasium", "metarl", "metarl_server"):
        assert importlib.util.find_spec(name) is None, f"{name} is installed in the venv"
    requires = sorted(r.split(">")[0].split("<")[0].split("=")[0].strip()
                      for r in importlib.metadata.requires("metarl-client"))
    assert requires == ["grpcio", "numpy", "protobuf"], requires

    class Env:
        def reset(self, seed=None, options=None):
            self.t = 0
            return np.zeros(4, np.float32), {}
        def step(self, action):
            self.t += 1
            return np.full(4, 0.01 * self.t, np.float32), 1.0, self.t >= 4, False, {}

    with PolicyClient(sys.argv[1]) as client:
        with client.create_session("cartpole-family", seed=0) as session:
            episodes = rollout(Env(), session, episodes=2)
            stats = session.adapt(episodes)
            assert (stats.episodes, stats.transitions) == (2, 8)
            with session.stream() as loop:
                loop.act(np.zeros(4, np.float32))

    async def main():
        async with AsyncPolicyClient(sys.argv[1]) as client:
            async with await client.create_session("cartpole-family") as session:
                return await session.act(np.zeros(4, np.float32))

    print("ok", asyncio.run(main()))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pip_install_client_into_a_fresh_venv(tmp_path: Path, server_target: str) -> None:
    source = tmp_path / "client"
    shutil.copytree(
        CLIENT_DIR,
        source,
        ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"),
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # the machine's pip configuration (index, find-links) applies, as for any user
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    proc = subprocess.run(
        [str(python), "-c", SCRIPT, server_target],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the repository: import only what the venv installed
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok"), proc.stdout
