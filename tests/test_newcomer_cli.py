"""The newcomer's path on the command line: names that agree from train to serve to demo, serve's
--checkpoint and --model-dir as documented, and one line (no traceback) per user mistake."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tyro

from metarl import envs
from metarl.cli import main
from metarl.cli.demo import DemoConfig, run_demo
from metarl.core.checkpoint_paths import CheckpointNotFound, bundled_checkpoints_dir
from metarl.core.errors import UserError
from metarl.training.train import default_name, report_checkpoint
from metarl_client import PolicyClient
from metarl_server.app import ServeConfig, build_registry, create_server
from tests.server_support import UNREGISTERED_ENV, make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
METARL = [sys.executable, "-m", "metarl.cli"]
SERVE = [sys.executable, "-m", "metarl_server", "--host", "127.0.0.1"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
INTERRUPTED = (130, -signal.SIGINT)
"""Exit status 130, or death by SIGINT: what a shell shows as 130 either way. (Seen: about one
eval in five printed its line, then ended by SIGINT, as CPython does when it counts a
KeyboardInterrupt as unhandled; the cause was not pinned down.)"""


BUNDLED_CARTPOLE = bundled_checkpoints_dir() / "cartpole-family" / "1"


def one_error_line(stderr: str, prog: str) -> str:
    """The single line a mistake must end in (asserting there is nothing else)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: "), lines[0]
    return lines[0]


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    code = exc.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


def copy_bundled(name: str, to: Path, *, manifest_name: str | None = None) -> Path:
    shutil.copytree(bundled_checkpoints_dir() / name / "1", to)
    if manifest_name is not None:  # the SHA-256 covers the tensors, not the manifest
        manifest = json.loads((to / "manifest.json").read_text())
        manifest["name"] = manifest_name
        (to / "manifest.json").write_text(json.dumps(manifest))
    return to


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- names that agree ----------------------------------------------------------------------------


def test_default_policy_names_are_the_bundled_ones() -> None:
    assert default_name("metarl/CartPoleFamily-v0") == "cartpole-family"
    assert default_name("metarl/Navigation2D-v0") == "navigation-2d"
    assert default_name("metarl/PendulumFamily-v0") == "pendulum-family"
    assert sorted(p.name for p in bundled_checkpoints_dir().iterdir()) == [
        "cartpole-family",
        "half-cheetah-dir",
        "ml1-reach",
        "navigation-2d",
    ]
    # a family of one's own without a declared name: the documented rule
    assert envs.derived_policy_name("acme/MyRobot2D-v3") == "my-robot-2d"
    assert envs.derived_policy_name("acme/RLArm-v0") == "rl-arm"
    assert envs.derived_policy_name("metarl/HalfCheetahVel-v0") == "half-cheetah-vel"
    assert default_name("acme/Unregistered2D-v1") == "unregistered-2d"


def test_train_then_serve_then_demo_agree_on_the_name(tmp_path: Path) -> None:
    out = tmp_path / "cp"
    proc = subprocess.run(
        [*METARL, "train", "--env", "metarl/CartPoleFamily-v0", "--iterations", "1",
         "--meta-batch-size", "2", "--episodes-per-task", "2", "--out", str(out),
         "--no-progress", "--no-tensorboard"],
        capture_output=True, text=True, timeout=180, env=ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"wrote checkpoint {out} (policy cartpole-family version" in proc.stdout
    registry = build_registry(ServeConfig(checkpoint=[out]))
    server, port = create_server("127.0.0.1:0", registry, ServeConfig())
    server.start()
    try:
        # DemoConfig's default policy is the bundled one's name: it must find the trained one
        assert DemoConfig().policy == "cartpole-family"
        run_demo(DemoConfig(target=f"127.0.0.1:{port}", tasks=1, episodes=2))
    finally:
        server.stop(None).wait(10)


# -- serve: --checkpoint and --model-dir ---------------------------------------------------------


def test_serve_checkpoint_flag_repeats() -> None:
    cfg = tyro.cli(
        ServeConfig, args=["--checkpoint", "a", "--checkpoint", "b", "--checkpoint", "c"]
    )
    assert cfg.checkpoint == [Path("a"), Path("b"), Path("c")]
    assert tyro.cli(ServeConfig, args=[]).checkpoint == []


def test_serve_loads_three_checkpoints_including_bundled_name_version(tmp_path: Path) -> None:
    third = copy_bundled("cartpole-family", tmp_path / "third", manifest_name="third")
    registry = build_registry(
        ServeConfig(checkpoint=[Path("cartpole-family/1"), Path("navigation-2d/1"), third])
    )
    served = {(v.name, v.version) for versions in registry.list() for v in versions}
    assert served == {("cartpole-family", "1"), ("navigation-2d", "1"), ("third", "1")}


def test_model_dir_layout_names_the_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy_bundled("cartpole-family", tmp_path / "models" / "mine" / "1")
    with caplog.at_level(logging.INFO, logger="metarl_server.registry"):
        registry = build_registry(ServeConfig(model_dir=tmp_path / "models"))
    assert [(v.name, v.version) for vs in registry.list() for v in vs] == [("mine", "1")]
    assert registry.get("mine", "1").checkpoint.env_id == "metarl/CartPoleFamily-v0"
    said = "manifest says policy cartpole-family version 1; serving it as policy mine version 1"
    assert said in caplog.text


def test_empty_model_dir_is_waited_on_then_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    proc = subprocess.Popen(
        [*SERVE, "--port", "0", "--model-dir", str(models), "--poll-interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        log: list[str] = []
        while not any("waiting for checkpoints" in ln for ln in log):
            line = proc.stderr.readline()
            assert line, f"server exited: {''.join(log)}"
            log.append(line)
        assert "loading model directory" in log[0]
        assert proc.poll() is None  # waiting, not exited
        # the demo against it: a server is there, with no policy yet (not "start a server")
        bound = re.search(r"bound to (\S+):(\d+),", log[-1])
        assert bound is not None, log[-1]
        code, err = run_main(["demo", "--target", f"127.0.0.1:{bound[2]}"], capsys)
        line = one_error_line(err, "metarl demo")
        assert code == 1 and "is up but serves no policy yet (health NOT_SERVING" in line
        assert "no policy loaded yet: the server waits for a checkpoint" in line
        assert "metarl publish" in line and "start one" not in line
        copy_bundled("cartpole-family", models / "mine" / "1")
        line = proc.stdout.readline()  # printed once a policy is loaded
        assert "listening on port" in line, "".join(log)
        target = f"127.0.0.1:{int(line.rsplit(' ', 1)[1])}"
        with PolicyClient(target) as client:
            (info,) = client.list_policies()
        assert (info.name, info.latest_version) == ("mine", "1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        rest = proc.stderr.read()
        serving = next(ln for ln in rest.splitlines() if "metarl_server: serving " in ln)
        assert "serving mine@1 on 127.0.0.1:" in serving
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_serving_banner_lists_every_version(tmp_path: Path) -> None:
    for version in ("1", "2"):  # two versions of one policy, both given: both served
        copy_bundled("cartpole-family", tmp_path / version)
        manifest = tmp_path / version / "manifest.json"
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": version}))
    proc = subprocess.Popen(
        [*SERVE, "--port", "0", "--checkpoint", str(tmp_path / "1"), "--checkpoint",
         str(tmp_path / "2")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert "listening on port" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        rest = proc.stderr.read()
        serving = next(ln for ln in rest.splitlines() if "metarl_server: serving " in ln)
        assert "serving cartpole-family@1,2 on 127.0.0.1:" in serving  # not only the newest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# -- one line per mistake ------------------------------------------------------------------------


def test_eval_of_a_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run_main(["eval", str(tmp_path / "nope")], capsys)
    line = one_error_line(err, "metarl eval")
    assert code == 2
    assert "does not exist" in line and "cartpole-family/1" in line and "metarl train" in line


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointNotFound):
        main(["--debug", "eval", str(tmp_path / "nope")])
    monkeypatch.setenv("METARL_DEBUG", "1")
    with pytest.raises(CheckpointNotFound):
        main(["eval", str(tmp_path / "nope")])


def test_eval_of_a_checkpoint_of_an_unknown_family(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = make_checkpoint(tmp_path / "c", env_id=UNREGISTERED_ENV)
    code, err = run_main(["eval", str(path), "--tasks", "1"], capsys)
    line = one_error_line(err, "metarl eval")
    assert code == 2 and UNREGISTERED_ENV in line and "metarl/CartPoleFamily-v0" in line


def test_unknown_env_id(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run_main(["train", "--env", "metarl/CartPole-v9", "--out", str(tmp_path)], capsys)
    line = one_error_line(err, "metarl train")
    assert code == 2 and "metarl/CartPoleFamily-v0" in line


def test_half_cheetah_without_mujoco_says_how_to_install(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a machine without the extras (make dev installs them here): the families are unknown.
    for env_id in ("metarl/HalfCheetahVel-v0", "metarl/ML1Reach-v3"):
        for registry in (envs._FAMILIES, envs._LAZY):
            monkeypatch.delitem(registry, env_id, raising=False)
    assert "metarl/HalfCheetahVel-v0" not in envs.registered_families()
    with pytest.raises(envs.UnknownFamily, match=r"needs Meta-World.*'metarl\[metaworld\]'"):
        envs.family("metarl/ML1Reach-v3")
    with pytest.raises(envs.UnknownFamily, match=r"pip install 'metarl\[mujoco\]'"):
        envs.family("metarl/HalfCheetahVel-v0")
    code, err = run_main(
        ["train", "--env", "metarl/HalfCheetahVel-v0", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "metarl[mujoco]" in one_error_line(err, "metarl train")


def test_ctrl_c_is_one_line_and_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("metarl.evaluation.eval.run_eval", interrupted)
    monkeypatch.setattr("metarl.cli.demo.run_demo", interrupted)
    for command in (["eval", "navigation-2d/1"], ["demo"]):
        code, err = run_main(command, capsys)
        assert code == 130
        assert one_error_line(err, f"metarl {command[0]}") == f"metarl {command[0]}: interrupted"


def test_ctrl_c_in_a_real_eval_process() -> None:
    proc = subprocess.Popen(
        [*METARL, "eval", "navigation-2d/1", "--tasks", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        first = proc.stderr.readline()  # eval's first progress line: it is running
        assert first.startswith("pretrained:"), first
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) in INTERRUPTED
        rest = proc.stderr.read()
        assert "Traceback" not in rest
        assert rest.strip().splitlines()[-1] == "metarl eval: interrupted"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_demo_against_no_server(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    code, err = run_main(["demo", "--target", target], capsys)
    line = one_error_line(err, "metarl demo")
    assert code == 1 and target in line and "metarl serve" in line
    assert line.startswith(f"metarl demo: error: no policy server answers at {target}")


def test_no_checkpoint_written_is_not_reported_as_written(tmp_path: Path) -> None:
    class Ckpt:
        name, version = "cartpole-family", "1"

    with pytest.raises(UserError, match="no checkpoint was written"):
        report_checkpoint(tmp_path / "zero", Ckpt())


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--checkpoint", "nope/1"], 2, ["--checkpoint nope/1: does not exist", "navigation-2d/1"]),
        (["--model-dir", "no-such-dir"], 2, ["--model-dir no-such-dir: does not exist"]),
        (["--checkpoint", "."], 2, ["is not a checkpoint", "--model-dir"]),
        (["--port", "99999"], 2, ["--port 99999: not a port", "0 to 65535"]),
        (["--model-dir", str(BUNDLED_CARTPOLE)], 2, ["is a checkpoint itself", "--checkpoint"]),
        (["--tls-cert", "no.pem", "--tls-key", "no.key"], 2, ["--tls-cert no.pem: does not exist"]),
    ],
)
def test_serve_mistakes(args: list[str], code: int, words: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [*SERVE, "--port", "0", *args], capture_output=True, text=True, timeout=60,
        cwd=tmp_path, env=ENV,
    )  # fmt: skip
    assert proc.returncode == code, proc.stderr
    line = one_error_line(proc.stderr, "metarl_server")
    for w in words:
        assert w in line


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_serve_on_a_busy_port(flag: str) -> None:
    with socket.socket(socket.AF_INET) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"--port": "0", flag: str(port)}
        proc = subprocess.run(
            [*METARL, "serve", "--host", "127.0.0.1", *(x for kv in ports.items() for x in kv)],
            capture_output=True, text=True, timeout=60, env=ENV,
        )  # fmt: skip
    assert proc.returncode == 1
    line = one_error_line(proc.stderr, "metarl serve")  # no loading or worker-start logs:
    assert f"port {port} is already in use" in line and f"another {flag}" in line  # refused first


def test_ctrl_c_in_a_terminal_ends_the_demo_in_one_line() -> None:
    """A terminal's Ctrl-C reaches the whole process group: the demo and its in-process server's
    adaptation worker (which must not print a traceback of its own)."""
    proc = subprocess.Popen(
        [*METARL, "demo", "--tasks", "4", "--episodes", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert "started a policy server" in proc.stdout.readline()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) in INTERRUPTED
        assert one_error_line(proc.stderr.read(), "metarl demo") == "metarl demo: interrupted"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_the_checkpoint_resolver_is_torch_free() -> None:
    code = (
        "import sys; from metarl.core.checkpoint_paths import resolve_checkpoint as r; "
        "r('cartpole-family/1'); r('navigation-2d'); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_model_directory_name_resolves_to_its_newest_version(tmp_path: Path) -> None:
    from metarl.core.checkpoint_paths import resolve_checkpoint

    for version in ("2", "10"):
        copy_bundled("cartpole-family", tmp_path / "mine" / version)
    assert resolve_checkpoint(tmp_path / "mine") == tmp_path / "mine" / "10"  # 10 after 2
    assert resolve_checkpoint("cartpole-family") == BUNDLED_CARTPOLE
    assert resolve_checkpoint(tmp_path / "mine" / "2") == tmp_path / "mine" / "2"
