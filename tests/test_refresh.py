"""Refreshing a served policy: warm starts (``--init-from``), resumable training (``--resume``,
SIGINT / SIGTERM), publishing into a model directory (``metarl publish``, ``--gate``), and the
whole loop against a real ``metarl serve --model-dir``."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from metarl import cli
from metarl.core.checkpoint import bundled_checkpoints_dir, load_checkpoint, save_checkpoint
from metarl.evaluation.eval import EvalConfig, evaluate
from metarl.training import lineage, trainer_state
from metarl.training.publish import GateRefused, PublishConfig, PublishError, maml_returns, publish
from metarl.training.train import TrainConfig, train
from metarl_client import PolicyClient
from tests.process_support import spawn_server
from tests.server_support import reload

POLICY = "cartpole-family"
BUNDLED = bundled_checkpoints_dir() / POLICY / "1"
TINY = [
    "--env", "metarl/CartPoleFamily-v0", "--meta-batch-size", "2", "--episodes-per-task", "2",
    "--threads", "1", "--no-progress", "--no-tensorboard", "--seed", "5",
]  # fmt: skip


def tiny(out: Path, iterations: int, **kw: object) -> TrainConfig:
    """A run of a few milliseconds per iteration (one thread: bit-for-bit comparable)."""
    base: dict[str, object] = dict(
        env="metarl/CartPoleFamily-v0", iterations=iterations, out=out, seed=3, meta_batch_size=2,
        episodes_per_task=2, hidden_sizes=(8,), save_every=1, threads=1, progress=False,
        tensorboard=False, version="1",
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def metric_rows(run: Path) -> list[list[str]]:
    """The metrics CSV without its wall-time column."""
    with run.with_name(run.name + ".metrics.csv").open() as fh:
        rows = list(csv.reader(fh))
    drop = rows[0].index("seconds")
    return [[c for i, c in enumerate(r) if i != drop] for r in rows]


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- warm starts ---------------------------------------------------------------------------------


def test_warm_start_begins_at_the_parent_and_records_its_lineage(tmp_path: Path) -> None:
    parent = load_checkpoint(BUNDLED)
    ckpt = train(
        tiny(tmp_path / "child", 1, hidden_sizes=(64,), init_from=f"{POLICY}/1", outer_lr=1e-3)
    )
    # One Adam step moves each parameter by at most the learning rate: it started at the parent.
    for k, p in ckpt.params.items():
        assert (p - parent.params[k]).abs().max().item() <= 1e-3 * (1 + 1e-4), k
    manifest = json.loads((tmp_path / "child" / "manifest.json").read_text())
    parent_sha = json.loads((BUNDLED / "manifest.json").read_text())["params_sha256"]
    training = manifest["training"]
    assert training["parent"] == {
        "name": POLICY,
        "version": "1",
        "params_sha256": parent_sha,
        "source": str(BUNDLED),
        "total_iterations": parent.training["iterations"],
    }
    assert training["lineage"] == [{"name": POLICY, "version": "1", "params_sha256": parent_sha}]
    assert training["iterations"] == 1  # what this run added


def test_init_from_a_model_directory_takes_its_newest_version(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for version in ("2", "10", "9"):
        publish(PublishConfig(BUNDLED, models, version=version))
    (models / POLICY / ".11.tmp").mkdir()  # a write in progress is not a version
    assert lineage.resolve_source(models / POLICY) == models / POLICY / "10"
    assert lineage.resolve_source(f"{POLICY}/1") == BUNDLED


def test_init_from_refuses_what_does_not_fit_saying_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(lineage.WarmStartError) as e:
        train(tiny(tmp_path / "a", 1, init_from=str(BUNDLED)))  # hidden (8,) against (64,)
    assert str(e.value) == (
        f"--init-from {BUNDLED}: architecture differs: hidden_sizes is 64 in the source and 8 in "
        "this run; pass --hidden-sizes 64"
    )
    with pytest.raises(lineage.WarmStartError, match="pass --env metarl/CartPoleFamily-v0"):
        train(tiny(tmp_path / "b", 1, env="metarl/Navigation2D-v0", init_from=str(BUNDLED)))
    with pytest.raises(lineage.WarmStartError, match=r"no such checkpoint directory.*bundled: "):
        train(tiny(tmp_path / "c", 1, init_from=str(tmp_path / "missing")))
    # A Meta-SGD parent's learned rates would be dropped by plain MAML.
    sgd = train(tiny(tmp_path / "sgd", 1, algo="metasgd"))
    assert sgd.learning_rates is not None
    with pytest.raises(lineage.WarmStartError, match="pass --algo metasgd"):
        train(tiny(tmp_path / "d", 1, init_from=str(tmp_path / "sgd")))
    # A corrupt source: named, with the way out; nothing was written for the refused runs.
    (tmp_path / "sgd" / "params.safetensors").write_bytes(b"garbage")
    with pytest.raises(lineage.WarmStartError, match="does not match the SHA-256"):
        train(tiny(tmp_path / "e", 1, algo="metasgd", init_from=str(tmp_path / "sgd")))
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_init_from_mismatch_is_one_line_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *TINY, "--hidden-sizes", "8", "--iterations", "1",
                  "--init-from", f"{POLICY}/1", "--out", str(tmp_path / "x")])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"metarl train: error: --init-from {BUNDLED}: architecture differs: hidden_sizes is 64 "
        "in the source and 8 in this run; pass --hidden-sizes 64"
    )
    assert not (tmp_path / "x").exists()


# -- resumable training --------------------------------------------------------------------------


@pytest.mark.parametrize("algo,outer", [("maml", "adam"), ("metasgd", "adam"), ("maml", "trpo")])
def test_a_resumed_run_ends_bit_for_bit_as_an_uninterrupted_one(
    tmp_path: Path, algo: str, outer: str
) -> None:
    full = train(tiny(tmp_path / "full", 4, algo=algo, outer=outer))
    train(tiny(tmp_path / "part", 2, algo=algo, outer=outer))
    state = trainer_state.load_state(tmp_path / "part")
    assert state.iteration == 2
    if outer == "adam":  # Adam's moments and step counts travel in the state
        assert state.optimizer is not None
        assert {float(s["step"]) for s in state.optimizer["state"].values()} == {2.0}
    resumed = train(TrainConfig(resume=tmp_path / "part", iterations=4))
    assert_same_params(full.params, resumed.params)
    if algo == "metasgd":
        assert full.learning_rates is not None and resumed.learning_rates is not None
        assert_same_params(full.learning_rates, resumed.learning_rates)
    assert metric_rows(tmp_path / "full") == metric_rows(tmp_path / "part")
    assert len(metric_rows(tmp_path / "part")) == 1 + 4
    without_recipe = [
        {k: v for k, v in c.training.items() if k != "config"} for c in (full, resumed)
    ]
    assert without_recipe[0] == without_recipe[1]
    assert resumed.training["config"]["iterations"] == 4
    # The state is plain data: JSON and safetensors, no pickle.
    files = sorted(p.name for p in trainer_state.state_dir(tmp_path / "part").iterdir())
    assert files == ["state.json", "state.safetensors"]


def test_resume_refusals_name_the_run_and_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(trainer_state.ResumeError, match=r"no trainer state at .*--init-from"):
        train(TrainConfig(resume=BUNDLED))
    # killed (kill -9) before its first save: only its metrics file is there, nothing to resume
    (tmp_path / "killed.metrics.csv").write_text("iteration\n")
    with pytest.raises(trainer_state.ResumeError) as killed:
        train(TrainConfig(resume=tmp_path / "killed"))
    said = str(killed.value)
    assert said.startswith(f"--resume {tmp_path / 'killed'}: nothing to resume: ")
    assert f"it left {tmp_path / 'killed.metrics.csv'}" in said and "--overwrite" in said
    assert "--init-from" not in said  # (no checkpoint there to start from)
    with pytest.raises(trainer_state.ResumeError, match=r"no such run .*pass the --out of a run"):
        train(TrainConfig(resume=tmp_path / "never"))
    train(tiny(tmp_path / "done", 2))
    with pytest.raises(trainer_state.ResumeError, match="pass --iterations N with N > 2"):
        train(TrainConfig(resume=tmp_path / "done"))
    with pytest.raises(trainer_state.ResumeError, match="drop one of them"):
        train(TrainConfig(resume=tmp_path / "done", init_from=str(BUNDLED), iterations=3))
    (trainer_state.state_dir(tmp_path / "done") / "state.safetensors").write_bytes(b"\0" * 8)
    with pytest.raises(trainer_state.ResumeError, match="unreadable trainer state"):
        train(TrainConfig(resume=tmp_path / "done", iterations=3))


def _wait_for_rows(csv_path: Path, rows: int, proc: subprocess.Popen[str]) -> None:
    """Until the run has logged ``rows`` iterations (a guard of 240 s, under pytest's 300 s
    timeout, for a machine so loaded that a fresh process takes minutes to import torch)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if csv_path.is_file() and len(csv_path.read_text().splitlines()) > rows:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise TimeoutError(f"{csv_path} did not reach {rows} rows")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_resumable_state_that_resumes_bit_for_bit(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A real signal at whatever moment it lands: every moment of an iteration is safe, as
    tests/test_stop_anywhere.py shows phase by phase; the stop is at most one phase away."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    proc = subprocess.Popen(
        [sys.executable, "-m", "metarl.cli", "train", *TINY, "--hidden-sizes", "8",
         "--iterations", "100000", "--save-every", "100000", "--out", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        _wait_for_rows(run.with_name("run.metrics.csv"), 3, proc)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.endswith(
        f"state saved (a partial checkpoint); resume with: metarl train --resume {run}"
    ), last
    done = trainer_state.load_state(run).iteration
    assert done >= 3 and f"after iteration {done} of 100000," in last
    assert len(metric_rows(run)) == 1 + done
    assert load_checkpoint(run).training["iterations"] == done
    assert load_checkpoint(run).partial

    # Resumed to done + 2 == the same command run uninterrupted to done + 2.
    cli.main(["train", "--resume", str(run), "--iterations", str(done + 2)])
    cli.main(["train", *TINY, "--hidden-sizes", "8", "--iterations", str(done + 2),
              "--out", str(ref)])  # fmt: skip
    assert_same_params(load_checkpoint(run).params, load_checkpoint(ref).params)
    assert metric_rows(run) == metric_rows(ref)


# -- publishing ----------------------------------------------------------------------------------


def test_publish_numbers_versions_and_never_overwrites(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    assert publish(PublishConfig(BUNDLED, models)) == models / POLICY / "1"
    assert publish(PublishConfig(BUNDLED, models)) == models / POLICY / "2"
    assert publish(PublishConfig(BUNDLED, models, version="v1.9")).name == "v1.9"
    assert publish(PublishConfig(BUNDLED, models)).name == "v1.10"  # after the newest
    published = load_checkpoint(models / POLICY / "2")
    assert (published.name, published.version) == (POLICY, "2")  # the server serves by these
    manifest = json.loads((models / POLICY / "2" / "manifest.json").read_text())
    assert manifest["published"]["from"] == str(BUNDLED.resolve())
    assert manifest["published"]["version"] == "1"

    before = (models / POLICY / "2" / "manifest.json").read_bytes()
    with pytest.raises(PublishError, match=r"already exists .* never overwritten.*next \(v1.11\)"):
        publish(PublishConfig(BUNDLED, models, version="2"))
    assert (models / POLICY / "2" / "manifest.json").read_bytes() == before
    with pytest.raises(PublishError, match=r"its parent .*nope does not exist; create it"):
        publish(PublishConfig(BUNDLED, tmp_path / "nope" / "models"))
    assert not (tmp_path / "nope").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(PublishError, match="file: not a directory"):
        publish(PublishConfig(BUNDLED, tmp_path / "file"))
    with pytest.raises(PublishError, match=r"is not a checkpoint|does not exist"):
        publish(PublishConfig(tmp_path / "missing-run", models))
    broken = tmp_path / "broken"
    save_checkpoint(load_checkpoint(BUNDLED), broken)
    (broken / "params.safetensors").write_bytes(b"not the tensors")
    with pytest.raises(PublishError, match="does not match the SHA-256"):
        publish(PublishConfig(broken, models))
    with pytest.raises(PublishError, match="--name"):
        publish(PublishConfig(BUNDLED, models, name="../escape"))
    nav = bundled_checkpoints_dir() / "navigation-2d" / "1"
    with pytest.raises(PublishError, match=r"CartPoleFamily-v0 policy .*another --name"):
        publish(PublishConfig(nav, models, name=POLICY))
    assert sorted(p.name for p in (models / POLICY).iterdir()) == ["1", "2", "v1.10", "v1.9"]


def test_the_first_publish_makes_the_model_directory(tmp_path: Path) -> None:
    models = tmp_path / "models"  # (as the README's `metarl publish ... --model-dir models`)
    assert publish(PublishConfig(BUNDLED, models)) == models / POLICY / "1"
    assert load_checkpoint(models / POLICY / "1").version == "1"


def test_publish_where_it_cannot_write_leaves_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / POLICY).write_text("a file where the policy's directory should be")
    with pytest.raises(PublishError, match=r"cannot write .*nothing published"):
        publish(PublishConfig(BUNDLED, models))
    assert [p.name for p in models.iterdir()] == [POLICY]


def test_publish_racing_another_publisher_keeps_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    rename = os.rename

    def theirs_first(src: Path, dst: Path) -> None:  # another publisher wins the version
        (Path(dst) / "manifest.json").parent.mkdir()
        (Path(dst) / "manifest.json").write_text("theirs")
        rename(src, dst)

    monkeypatch.setattr("metarl.training.publish.os.rename", theirs_first)
    with pytest.raises(PublishError, match="published by someone else meanwhile"):
        publish(PublishConfig(BUNDLED, models))
    assert [p.name for p in (models / POLICY).iterdir()] == ["1"]  # no temporary left
    assert (models / POLICY / "1" / "manifest.json").read_text() == "theirs"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_publish_into_a_read_only_model_directory_leaves_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / POLICY).mkdir(parents=True)
    (models / POLICY).chmod(0o555)
    try:
        with pytest.raises(PublishError, match=r"cannot write .*nothing published"):
            publish(PublishConfig(BUNDLED, models))
        assert list((models / POLICY).iterdir()) == []
    finally:
        (models / POLICY).chmod(0o755)


def test_the_gate_measures_what_metarl_eval_measures(tmp_path: Path) -> None:
    ckpt = load_checkpoint(BUNDLED)
    result = evaluate(
        EvalConfig(
            BUNDLED, tasks=3, adapt_steps=1, seed=11, episodes_per_task=2, pretrain_iterations=1,
            pretrain_tasks=2, baseline_lr_scales=(1.0,), baseline_stds=(0.0,), baseline_tasks=1,
            quiet=True,
        )
    )  # fmt: skip
    ours = maml_returns(ckpt, tasks=3, seed=11, steps=1, episodes_per_task=2)
    np.testing.assert_array_equal(ours, result.per_task["maml"])


# -- the refresh loop against a real server ------------------------------------------------------


def test_refresh_loop_against_a_live_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    cli.main(["publish", str(BUNDLED), "--model-dir", str(models)])
    assert (models / POLICY / "1" / "manifest.json").is_file()
    gate = ["--gate", "--tasks", "4", "--episodes-per-task", "4", "--seed", "2"]
    probe = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32) * 0.1

    server, target = spawn_server("--model-dir", str(models), "--poll-interval", "0.2")
    try:
        with PolicyClient(target) as client:
            old = client.create_session(POLICY, seed=1)
            assert old.version == "1"
            before = old.act_batch(probe, deterministic=True)

            # Warm start from the served policy, a few tiny iterations, gated publish -> v2.
            run = tmp_path / "run"
            cli.main(["train", *TINY, "--hidden-sizes", "64", "--iterations", "2",
                      "--init-from", str(models / POLICY), "--out", str(run)])  # fmt: skip
            child = json.loads((tmp_path / "run" / "manifest.json").read_text())
            assert child["training"]["parent"]["version"] == "1"
            capsys.readouterr()
            # A tolerance no tiny run can miss: this test is about the mechanics.
            cli.main(["publish", str(tmp_path / "run"), "--model-dir", str(models), *gate,
                      "--tolerance", "1e9"])  # fmt: skip
            out = capsys.readouterr().out
            assert f"served {POLICY}@1" in out and "candidate" in out and "passes" in out
            assert (models / POLICY / "2").is_dir()

            deadline = time.monotonic() + 30
            while "2" not in client.list_policies()[0].versions:
                assert time.monotonic() < deadline, "the server did not load version 2"
                time.sleep(0.1)
            (info,) = [p for p in client.list_policies() if p.name == POLICY]
            assert info.versions == ("1", "2") and info.latest_version == "2"

            # The old session keeps v1, bit for bit; a new one gets v2.
            again = old.act_batch(probe, deterministic=True)
            np.testing.assert_array_equal(again.actions, before.actions)
            np.testing.assert_array_equal(again.log_probs, before.log_probs)
            assert old.info().version == "1"
            new = client.create_session(POLICY, seed=1)
            assert new.version == "2"
            assert not np.array_equal(new.act_batch(probe).log_probs, before.log_probs)

            # A garbled candidate (theta scaled to zero: a uniform policy that cannot adapt) is
            # refused with the table, exit status 1, and v2 stays the newest.
            garbled = load_checkpoint(tmp_path / "run")
            garbled.params = {k: v * 0 for k, v in garbled.params.items()}
            save_checkpoint(garbled, tmp_path / "garbled")
            with pytest.raises(SystemExit) as exit_:
                cli.main(["publish", str(tmp_path / "garbled"), "--model-dir", str(models), *gate])
            assert exit_.value.code == 1
            captured = capsys.readouterr()
            assert f"served {POLICY}@2" in captured.out and "REFUSED" in captured.out
            assert captured.err.startswith(f"metarl publish: refused: {tmp_path / 'garbled'} not")
            assert sorted(p.name for p in (models / POLICY).iterdir()) == ["1", "2"]
            with grpc.insecure_channel(target) as channel:  # a scan now, not a wait for polls
                assert reload(channel) is not None
            (info,) = [p for p in client.list_policies() if p.name == POLICY]
            assert info.latest_version == "2"
            assert client.create_session(POLICY).version == "2"

            old.close()
            new.close()
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_gate_refusal_raises_for_library_callers(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    publish(PublishConfig(BUNDLED, models))
    garbled = load_checkpoint(BUNDLED)
    garbled.params = {k: v * 0 for k, v in garbled.params.items()}
    save_checkpoint(garbled, tmp_path / "garbled")
    with pytest.raises(GateRefused, match="below cartpole-family@1's"):
        publish(
            PublishConfig(tmp_path / "garbled", models, gate=True, tasks=3, episodes_per_task=2),
            out=io.StringIO(),
        )
    assert [p.name for p in (models / POLICY).iterdir()] == ["1"]
