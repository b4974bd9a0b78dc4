"""A Node.js client built from proto/ alone talks to the server (what another language sees)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

NODE_DIR = Path(__file__).parent / "interop" / "node"


@pytest.fixture(scope="module")
def node_client() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the cross-language test")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return NODE_DIR / "client.js"


def test_node_client_from_the_proto_alone(node_client: Path, server_target: str) -> None:
    proc = subprocess.run(
        ["node", str(node_client), server_target], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["policy"] == "cartpole-family"
    assert out["observationShape"] == [4] and out["actionN"] == 2
    assert out["sessionVersion"] == "1"
    assert out["action1"][0] in (0, 1) and out["action2"][0] in (0, 1)
    assert out["adaptSteps"] == 1 and out["transitions"] == 5
    assert out["badCode"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
