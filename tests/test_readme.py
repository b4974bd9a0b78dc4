"""The README's blocks, every one of them, run as written, in order
(``test_every_readme_block_is_run`` fails on a block no test claims).

Fast (default suite): the quick start's and Develop's make targets exist (dry runs); the train
-> eval -> serve -> demo sequence with the README's commands (train with ``--iterations 3``
added, eval on 2 tasks, serve on a free port instead of 50051), ``metarl train --help``; the
Operate block's publish -> serve -> train --init-from -> publish --gate (3 iterations, a free
port); the in-process snippet; the client snippet and the three examples in a process where
torch, ``metarl`` and ``metarl_server`` cannot be imported (only the client and ``metarl_envs``);
grpcurl's call (skipped without grpcurl).

Slow: the same sequences verbatim (the preset's full training, the full evaluation, port
50051); the client snippet and the examples in a fresh venv holding only what the README tells
a client user to install; ``make demo`` on a fresh clone; the Docker block (skipped without a
Docker daemon).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from metarl_server.healthcheck import check
from tests.client_support import free_port

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent  # the venv's bin: metarl, python
README_PORT = 50051


def blocks() -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", README, re.S | re.M)


def block_with(text: str) -> str:
    found = [b for b in blocks() if text in b]
    assert len(found) == 1, f"expected one README block containing {text!r}, got {len(found)}"
    return found[0]


def commands(block: str) -> list[list[str]]:
    """The block's command lines, split as a shell would, comments dropped."""
    return [shlex.split(ln, comments=True) for ln in block.splitlines() if ln.split("#")[0].strip()]


def env_for(bin_dir: Path, home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METARL_")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    if home is not None:
        env["HOME"] = str(home)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{shlex.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@contextmanager
def serving(args: list[str], cwd: Path, env: dict[str, str], port: int) -> Iterator[None]:
    """``args`` (a ``metarl serve`` command) running until it answers SERVING."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not check(f"127.0.0.1:{port}", 1.0)[0]:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"{shlex.join(args)} exited {proc.returncode}:\n{out!r}\n{err!r}")
            assert time.monotonic() < deadline, "the server did not become SERVING in 120 s"
            time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def with_port(args: list[str], port: int) -> list[str]:
    return [a.replace(str(README_PORT), str(port)) for a in args]


# -- every block is run --------------------------------------------------------------------------

RUN_BY = {  # a text only that block holds -> the tests that run it
    "trainer (metarl train) ──checkpoint": "(a diagram, not commands)",
    "make demo   #": "test_quick_start_is_make_demo_and_make_test, test_make_demo_on_a_fresh_clone",
    "adaptation: return 40.7 -> 200.0": "(the demo's output: test_train_serve_demo_sequence)",
    "metarl train --env metarl/CartPoleFamily-v0 --out runs/cp": "test_train_serve_demo_*",
    "metarl eval runs/cp": "test_train_serve_demo_*",
    "metarl.Policy.load(": "test_in_process_snippet",
    "metarl serve --checkpoint runs/cp": "test_train_serve_demo_*",
    "grpcurl -plaintext": "test_grpcurl_block",
    "pip install ./client ./envs": "test_client_in_a_fresh_venv_with_what_the_readme_installs",
    "PolicyClient(": "test_client_snippet_and_examples_*, test_client_in_a_fresh_venv_*",
    "python examples/": "test_client_snippet_and_examples_*, test_client_in_a_fresh_venv_*",
    "metarl publish cartpole-family/1 --model-dir models": "test_operate_refresh_*",
    "docker build -t metarl .": "test_docker_block_verbatim",
    "make install        #": "test_develop_targets_exist",
}


def test_every_readme_block_is_run() -> None:
    for block in blocks():
        claims = [key for key in RUN_BY if key in block]
        assert len(claims) == 1, f"a README block no test runs (add it to RUN_BY):\n{block}"
    assert len(blocks()) == len(RUN_BY), "a RUN_BY entry matches no README block"


# -- the structure the tests rely on ---------------------------------------------------------


def make_targets_exist(targets: list[str]) -> None:
    for target in targets:  # (dry run: nothing installed or run)
        proc = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_quick_start_is_make_demo_and_make_test() -> None:
    quick = commands(block_with("make demo   #"))
    assert quick == [["make", "demo"], ["make", "test"]]
    make_targets_exist(["demo", "test"])


def test_develop_targets_exist() -> None:
    develop = commands(block_with("make install        #"))
    assert all(cmd[0] == "make" and len(cmd) == 2 for cmd in develop), develop
    make_targets_exist([cmd[1] for cmd in develop])


def sequence() -> tuple[list[str], list[str], list[str]]:
    train, train_help = commands(
        block_with("metarl train --env metarl/CartPoleFamily-v0 --out runs/cp")
    )
    assert train_help == ["metarl", "train", "--help"]
    serve, demo = commands(block_with("metarl serve --checkpoint runs/cp"))
    assert train[:2] == ["metarl", "train"] and serve[:2] == ["metarl", "serve"]
    assert demo[:2] == ["metarl", "demo"]
    return train, serve, demo


def evaluations() -> list[list[str]]:
    evals = commands(block_with("metarl eval runs/cp"))
    assert [e[:2] for e in evals] == [["metarl", "eval"]] * 2
    return evals


def check_evaluations(evals: list[list[str]], cwd: Path, env: dict[str, str], fast: bool) -> None:
    """The Evaluate block after the training (fast: 2 tasks, 1 step, maml only)."""
    quick = ["--tasks", "2", "--adapt-steps", "1", "--methods", "maml"] if fast else []
    table = run([*evals[0], *quick], cwd, env, timeout=1800)
    assert "maml" in table and (cwd / "curves.png").stat().st_size > 0
    summary = json.loads(run([*evals[1], *quick], cwd, env, timeout=1800))
    assert summary["env_id"] == "metarl/Navigation2D-v0" and "maml" in summary["returns"]


# -- fast --------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_train_serve_demo_sequence(tmp_path: Path) -> None:
    """The README's train, serve and demo commands (3 iterations; a free port)."""
    train, serve, demo = sequence()
    env = env_for(BIN)
    out = run([*train, "--iterations", "3"], tmp_path, env, timeout=180)
    assert "runs/cp" in out
    assert (tmp_path / "runs" / "cp" / "manifest.json").is_file()
    assert "--out" in run(["metarl", "train", "--help"], tmp_path, env, timeout=60)
    check_evaluations(evaluations(), tmp_path, env, fast=True)
    port = free_port()
    with serving(with_port(serve, port), tmp_path, env, port):
        shown = run(with_port(demo, port), tmp_path, env, timeout=180)
    assert re.search(r"adaptation: return -?[\d.]+ -> -?[\d.]+", shown), shown


def operate() -> tuple[list[str], list[str], list[str], list[str]]:
    publish, serve, train, gated = commands(
        block_with("metarl publish cartpole-family/1 --model-dir models")
    )
    assert publish[:2] == gated[:2] == ["metarl", "publish"] and train[:2] == ["metarl", "train"]
    assert serve[:2] == ["metarl", "serve"] and serve[-1] == "&"  # (in the background)
    return publish, serve[:-1], train, gated


def check_refresh(cwd: Path, env: dict[str, str], port: int, fast: bool) -> None:
    """The Operate block: publish the bundled policy into a new model directory, serve it,
    train from it, publish the result behind the gate; the running server serves version 2."""
    publish, serve, train, gated = operate()
    run(publish, cwd, env, timeout=120)  # makes models/ (the README's first line)
    assert (cwd / "models" / "cartpole-family" / "1" / "manifest.json").is_file()
    with serving(serve if not fast else [*serve, "--port", str(port)], cwd, env, port):
        run([*train, "--iterations", "3"] if fast else train, cwd, env, timeout=900)
        shown = run(gated, cwd, env, timeout=900)
        assert "passes" in shown, shown
        assert (cwd / "models" / "cartpole-family" / "2" / "manifest.json").is_file()
        # the running server picks version 2 up from its model directory (its next scan)
        client = subprocess.run(
            [sys.executable, "-c", LATEST_VERSION, f"localhost:{port}"],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert client.stdout.strip() == "2", client.stdout + client.stderr


LATEST_VERSION = """
import sys, time
from metarl_client import PolicyClient
with PolicyClient(sys.argv[1]) as client:
    for _ in range(200):  # (the server scans its model directory every 5 s)
        latest = client.policy("cartpole-family").latest_version
        if latest == "2":
            break
        client.list_policies()
        time.sleep(0.5)
print(client.policy("cartpole-family").latest_version)
"""


@pytest.mark.timeout(600)
def test_operate_refresh_sequence(tmp_path: Path) -> None:
    """The Operate block (3 training iterations; a free port)."""
    check_refresh(tmp_path, env_for(BIN), free_port(), fast=True)


@pytest.mark.timeout(120)
def test_grpcurl_block(server_target: str) -> None:
    (call,) = commands(block_with("grpcurl -plaintext"))
    if shutil.which("grpcurl") is None:
        pytest.skip("grpcurl is not installed")
    out = run(with_port(call, int(server_target.rsplit(":", 1)[1])), ROOT, env_for(BIN), 60)
    assert "cartpole-family" in out


@pytest.mark.timeout(120)
def test_in_process_snippet(tmp_path: Path) -> None:
    code = block_with("metarl.Policy.load(")
    out = run([sys.executable, "-c", code], tmp_path, env_for(BIN), timeout=100)
    assert re.fullmatch(r"-?[\d.]+ -> -?[\d.]+\n", out), out


TORCH_BLOCKED = textwrap.dedent(
    """
    import importlib.abc, runpy, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "metarl", "metarl_server"):
                raise ImportError(f"{name} is blocked: the client side runs without it")
            return None

    sys.meta_path.insert(0, Block())
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)

EXAMPLE_ARGS = {
    "few_shot_cartpole.py": ["--episodes", "3"],
    "robot_control_loop.py": ["--episodes", "4", "--adapt-every", "2"],
    "async_many_sessions.py": ["--sessions", "4", "--episodes", "2"],
}


def client_side_checks(python: Path, cwd: Path, env: dict[str, str], target: str) -> None:
    """The README's client snippet and every example it lists, torch-free, against ``target``."""
    snippet = cwd / "snippet.py"
    snippet.write_text(block_with("PolicyClient(").replace(f"localhost:{README_PORT}", target))
    blocker = cwd / "blocked.py"
    blocker.write_text(TORCH_BLOCKED)
    out = run([str(python), str(blocker), str(snippet)], cwd, env, timeout=120)
    loss, returns, at_once = out.splitlines()  # (a ValueError: not the three lines it prints)
    assert re.fullmatch(r"-?[\d.e-]+ -> -?[\d.e-]+", loss), out
    for line in (returns, at_once):  # a real adaptation on a new task: the return improves
        before, after = map(float, line.split(" -> "))
        assert after > before, out
    listed = [c for c in commands(block_with("python examples/")) if c[0] == "python"]
    assert sorted(Path(c[1]).name for c in listed) == sorted(EXAMPLE_ARGS)
    for cmd in listed:
        script = ROOT / cmd[1]
        extra = EXAMPLE_ARGS[script.name]
        run([str(python), str(blocker), str(script), "--target", target, *extra], cwd, env, 180)


@pytest.mark.timeout(300)
def test_client_snippet_and_examples_without_torch(tmp_path: Path, server_target: str) -> None:
    client_side_checks(Path(sys.executable), tmp_path, env_for(BIN), server_target)


# -- slow --------------------------------------------------------------------------------------


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_train_serve_demo_verbatim(tmp_path: Path) -> None:
    if not port_free(README_PORT):
        pytest.skip(f"port {README_PORT} is in use on this machine")
    train, serve, demo = sequence()
    env = env_for(BIN)
    run(train, tmp_path, env, timeout=600)
    check_evaluations(evaluations(), tmp_path, env, fast=False)
    with serving(serve, tmp_path, env, README_PORT):
        shown = run(demo, tmp_path, env, timeout=300)
    before, after = map(float, re.findall(r"return (-?[\d.]+) -> (-?[\d.]+)", shown)[-1])
    assert after > before, shown


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_operate_refresh_verbatim(tmp_path: Path) -> None:
    if not port_free(README_PORT):
        pytest.skip(f"port {README_PORT} is in use on this machine")
    check_refresh(tmp_path, env_for(BIN), README_PORT, fast=False)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_docker_block_verbatim(tmp_path: Path) -> None:
    build, run_bundled, run_mounted = commands(block_with("docker build -t metarl ."))
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode
    ):
        pytest.skip("no Docker daemon here")
    if not port_free(README_PORT):
        pytest.skip(f"port {README_PORT} is in use on this machine")
    env = env_for(BIN)
    run(build, ROOT, env, timeout=3000)
    publish = operate()[0]
    run(publish, tmp_path, env, timeout=120)  # the model directory the last line mounts
    for docker_run in (run_bundled, run_mounted):
        name = f"metarl-readme-{os.getpid()}"
        args = [a.replace("$PWD", str(tmp_path)) for a in docker_run[2:]]  # (as a shell would)
        run([*docker_run[:2], "-d", "--name", name, *args], tmp_path, env, timeout=120)
        try:
            deadline = time.monotonic() + 120
            while not check(f"127.0.0.1:{README_PORT}", 1.0)[0]:
                assert time.monotonic() < deadline, "the container did not become SERVING"
                time.sleep(1)
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_client_in_a_fresh_venv_with_what_the_readme_installs(
    tmp_path: Path, server_target: str
) -> None:
    (install,) = commands(block_with("pip install ./client"))
    assert install[:2] == ["pip", "install"]
    for part in ("client", "envs"):
        shutil.copytree(
            ROOT / part,
            tmp_path / part,
            ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"),
        )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = env_for(venv / "bin", home=tmp_path)
    run(install, tmp_path, env, timeout=900)  # `pip` is the venv's, as in an activated venv
    python = venv / "bin" / "python"
    missing = "import importlib.util as u; print([m for m in ('torch', 'metarl', 'metarl_server')"
    missing += " if u.find_spec(m)])"
    assert run([str(python), "-c", missing], tmp_path, env, 60).strip() == "[]"
    client_side_checks(python, tmp_path, env, server_target)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_make_demo_on_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "metarl"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METARL_", "VIRTUAL_ENV"))}
    out = run(["make", "demo"], clone, env, timeout=3000)
    assert re.search(r"adaptation: return -?[\d.]+ -> -?[\d.]+", out), out
