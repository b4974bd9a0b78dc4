"""Training configurations: shipped presets, user files, flags, manifests, and refused values."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from metarl import envs
from metarl.cli import main as cli_main
from metarl.core.checkpoint import load_checkpoint
from metarl.training import config
from metarl.training.train import TrainConfig, train

NAV = "metarl/Navigation2D-v0"
TINY = [
    "--iterations", "1", "--meta-batch-size", "2", "--episodes-per-task", "1",
    "--hidden-sizes", "4", "--threads", "1", "--sampler-workers", "1", "--no-progress",
    "--no-tensorboard",
]  # fmt: skip

SHIPPED = [(env, name) for env in config.preset_files() for name in config.preset_names(env)]


def test_every_family_has_a_preset_file_with_a_default() -> None:
    assert {"metarl/CartPoleFamily-v0", NAV, "metarl/PendulumFamily-v0"} <= set(
        config.preset_files()
    )
    assert "metarl/HalfCheetahVel-v0" in config.preset_files()
    for env in config.preset_files():
        assert config.preset_names(env)[0] == "default"
    assert config.preset_names(NAV) == ["default", "paper"]
    assert config.preset_names("metarl/HalfCheetahVel-v0") == ["default", "paper"]


@pytest.mark.parametrize(("env", "name"), SHIPPED, ids=[f"{e}:{n}" for e, n in SHIPPED])
def test_shipped_preset_validates_and_trains_one_iteration(
    env: str, name: str, tmp_path: Path
) -> None:
    values = config.load_preset(env, name)  # validated against TrainConfig's fields
    assert values["env"] == env and values["iterations"] >= 1
    if env not in envs.registered_families():
        pytest.skip(f"{env} is not registered here (mujoco absent)")
    resolved = config.resolve(
        ["--env", env, "--preset", name, *TINY, "--out", str(tmp_path / "run")]
    )
    cfg = resolved.config
    # The preset's values that the tiny flags do not override are the training's.
    for key, value in values.items():
        if config._flag(key) not in TINY:
            assert getattr(cfg, key) == value, key
    ckpt = train(cfg)
    assert ckpt.training["iterations"] == 1
    assert load_checkpoint(tmp_path / "run").training["config"] == config.to_dict(cfg)


def test_the_navigation_paper_preset_is_the_papers() -> None:
    p = config.load_preset(NAV, "paper")
    assert (p["meta_batch_size"], p["episodes_per_task"], p["hidden_sizes"]) == (20, 20, (64, 64))
    assert (p["activation"], p["init_log_std"], p["inner_lr"]) == ("tanh", 0.0, 0.1)
    assert (p["discount"], p["gae_lambda"], p["outer"], p["max_kl"]) == (0.99, 1.0, "trpo", 0.01)
    assert (p["cg_iters"], p["cg_damping"], p["ls_max_steps"], p["ls_backtrack"]) == (
        10,
        1e-5,
        15,
        0.8,
    )
    assert p["iterations"] == 500


def test_env_alone_picks_the_family_default() -> None:
    cfg = config.resolve(["--env", NAV]).config
    default = config.load_preset(NAV)
    assert cfg.hidden_sizes == default["hidden_sizes"] and cfg.inner_lr == default["inner_lr"]
    assert cfg.iterations == default["iterations"]
    # Nothing given: the default env's (CartPole's) preset.
    assert config.resolve([]).config.env == TrainConfig.env


def test_flag_beats_file_beats_preset(tmp_path: Path) -> None:
    user = tmp_path / "mine.toml"
    user.write_text(f'env = "{NAV}"\niterations = 7\ninner_lr = 0.5\nextra = {{ note = "x" }}\n')
    resolved = config.resolve(["--config", str(user), "--inner-lr", "0.2"])
    cfg, preset = resolved.config, config.load_preset(NAV)
    assert cfg.env == NAV  # the file names the env: its family's preset is the base
    assert cfg.hidden_sizes == preset["hidden_sizes"] and cfg.gae_lambda == preset["gae_lambda"]
    assert cfg.iterations == 7 and cfg.extra == {"note": "x"}  # the file over the preset
    assert cfg.inner_lr == 0.2  # the flag over the file
    assert resolved.flags == ("inner_lr",)
    text = resolved.describe()
    assert "navigation-2d.toml [default]" in text and str(user) in text and "--inner-lr" in text
    assert "inner_lr=0.2" in text and "iterations=7" in text
    # A JSON file works the same; --env on the command line picks the base preset.
    user_json = tmp_path / "mine.json"
    user_json.write_text(json.dumps({"iterations": 9}))
    cfg = config.resolve(["--config", str(user_json), "--env", NAV, "--preset", "paper"]).config
    assert (cfg.iterations, cfg.outer, cfg.hidden_sizes) == (9, "trpo", (64, 64))


def test_manifest_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nav"
    cli_main(["train", "--env", NAV, *TINY, "--seed", "5", "--out", str(out)])
    err = capsys.readouterr().err
    assert err.startswith("configuration (") and "seed=5" in err
    manifest = json.loads((out / "manifest.json").read_text())
    recorded = manifest["training"]["config"]
    assert recorded["seed"] == 5 and recorded["hidden_sizes"] == [4] and recorded["env"] == NAV
    assert set(recorded) == {f.name for f in dataclasses.fields(TrainConfig)}  # the whole config
    original = config.resolve(["--env", NAV, *TINY, "--seed", "5", "--out", str(out)]).config
    for source in (out, out / "manifest.json"):
        again = config.resolve(["--config", str(source)]).config
        assert again == original
    again = config.resolve(["--config", str(out), "--out", str(tmp_path / "b")]).config
    assert again == dataclasses.replace(original, out=tmp_path / "b")


BAD_FILES = [
    ("hidden_sizez = [32]\n", "unknown key 'hidden_sizez' (did you mean 'hidden_sizes'?"),
    ('iterations = "ten"\n', 'iterations = "ten": must be an integer (got a string)'),
    ("iterations = 2.5\n", "iterations = 2.5: must be an integer (got a float)"),
    ("hidden_sizes = 32\n", "hidden_sizes = 32: must be a list of integers"),
    ("normalize_advantages = 1\n", "normalize_advantages = 1: must be true or false"),
    ('outer = "sgd"\n', "outer = \"sgd\": must be one of 'adam', 'trpo'"),
    ("discount = 1.5\n", "discount = 1.5 is out of range: must be a number in [0, 1]"),
    ("meta_batch_size = 0\n", "meta_batch_size = 0 is out of range: must be an integer >= 1"),
    ("cg_subsample = 0\n", "cg_subsample = 0 is out of range: must be a number in (0, 1]"),
    ("hidden_sizes = [32, 0]\n", "hidden_sizes = [32, 0] is out of range"),
    ('env = "metarl/Nav2D-v0"\n', "did you mean 'metarl/Navigation2D-v0'?"),
    ("iterations = 3\n[x\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_bad_config_file_is_one_line_and_exit_2(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--config", str(path), "--out", str(tmp_path / "never")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"metarl train: error: {path}"), err
    assert message in err
    assert not (tmp_path / "never").exists()  # refused before training


BAD_FLAGS = [
    (["--meta-batch-size", "0"], "--meta-batch-size 0 is out of range: must be an integer >= 1"),
    (["--cg-subsample", "0"], "--cg-subsample 0.0 is out of range: must be a number in (0, 1]"),
    (["--inner-lr", "-1"], "--inner-lr -1.0 is out of range: must be a number > 0"),
    (["--episodes-per-task", "0"], "--episodes-per-task 0 is out of range: must be an integer"),
    (["--iterations", "0"], "--iterations 0 is out of range: must be an integer >= 1"),
    (["--iterations", "-3"], "--iterations -3 is out of range: must be an integer >= 1"),
    (["--discount", "nan"], "--discount nan: must be a finite number"),
    (["--env", NAV, "--preset", "papr"], "did you mean 'paper'? its presets: default, paper"),
    (["--env", "metarl/Nope-v0"], "--env metarl/Nope-v0: unknown task family"),
    (["--preset", "paper"], "metarl/CartPoleFamily-v0 has no such preset"),
    (["--config", "missing.toml"], "--config missing.toml: no such file"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS)
def test_bad_flag_is_one_line_and_exit_2(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", *flags, "--out", str(tmp_path / "never")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("metarl train: error: "), err
    assert message in err


def test_refusal_as_a_process_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("hidden_sizez = [64, 64]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "metarl.cli", "train", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"metarl train: error: {path}: unknown key 'hidden_sizez' (did you mean 'hidden_sizes'? "
        "the keys are `metarl train`'s options with underscores, listed by `metarl train --help`)"
    )
    assert not (tmp_path / "runs").exists()


def test_help_shows_every_option_with_the_presets_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--env", NAV, "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(TrainConfig):
        assert config._flag(f.name) in out, f.name
    assert "--preset" in out and "--config" in out
    assert "Inner-loop learning rate alpha" in out  # the fields' docstrings
    assert "(default: 32 32)" in out  # the navigation preset's hidden sizes


def test_a_manifest_without_a_recorded_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(
        json.dumps({"format_version": 1, "params_sha256": "0", "training": {}})
    )
    with pytest.raises(config.ConfigError, match="records no training configuration"):
        config.read_config_file(tmp_path)
