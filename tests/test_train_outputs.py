"""`metarl train --out`: an existing run is refused unless --overwrite, a file or a foreign
directory always; with --overwrite the old run's files do not mix with the new one's."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from metarl.cli import main
from metarl.core.checkpoint_paths import bundled_checkpoints_dir

TINY = ["--iterations", "1", "--meta-batch-size", "2", "--episodes-per-task", "2", "--no-progress"]


def train(out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    args = ["train", "--env", "metarl/CartPoleFamily-v0", "--out", str(out), *TINY, *extra]
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def old_run(out: Path) -> None:
    shutil.copytree(bundled_checkpoints_dir() / "cartpole-family" / "1", out)


def test_an_existing_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cp"
    old_run(out)
    before = (out / "manifest.json").read_text()
    code, stdout, err = train(out, capsys)
    line = last_line(err)
    assert code == 2 and "wrote checkpoint" not in stdout
    assert line.startswith("metarl train: error: --out") and "a run is already there" in line
    assert err.strip() == line  # fails fast: before the configuration dump, nothing else
    assert "--overwrite" in line
    assert (out / "manifest.json").read_text() == before  # untouched


def test_a_metrics_csv_alone_is_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cp"
    (tmp_path / "cp.metrics.csv").write_text("iteration\n1\n")
    code, _, err = train(out, capsys)
    assert code == 2 and "cp.metrics.csv" in last_line(err)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_or_a_foreign_directory_is_always_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overwrite: bool
) -> None:
    extra = ["--overwrite"] if overwrite else []
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    code, _, err = train(afile, capsys, *extra)
    assert code == 2 and "is a file" in last_line(err)
    assert afile.read_text() == "mine"
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_text("x")
    code, _, err = train(folder, capsys, *extra)
    assert code == 2 and "not a checkpoint" in last_line(err)
    assert (folder / "a.jpg").exists()


def test_overwrite_replaces_the_whole_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cp"
    old_run(out)
    stale = tmp_path / "cp.tensorboard" / "events.old"
    stale.parent.mkdir()
    stale.write_text("old events")
    (tmp_path / "cp.metrics.csv").write_text("iteration\n1\n2\n3\n")
    code, stdout, err = train(out, capsys, "--overwrite", "--no-tensorboard")
    assert code == 0, err
    assert stdout.strip().splitlines()[-1].startswith(f"wrote checkpoint {out} (policy ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "cartpole-family" and manifest["version"] != "1"
    assert not stale.parent.exists()  # the old run's events do not mix with the new ones
    assert len((tmp_path / "cp.metrics.csv").read_text().splitlines()) == 2  # header + 1
    # and the run now there is refused in turn
    code, _, err = train(out, capsys)
    assert code == 2 and "a run is already there" in last_line(err)


def test_an_empty_directory_is_no_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cp"
    out.mkdir()
    code, stdout, err = train(out, capsys, "--no-tensorboard")
    assert code == 0, err
    assert (out / "manifest.json").is_file() and "wrote checkpoint" in stdout


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="installed")
def test_skipped_tensorboard_is_announced_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = train(tmp_path / "cp", capsys, "--iterations", "2")
    assert code == 0, err
    said = [ln for ln in err.splitlines() if "TensorBoard events skipped" in ln]
    assert len(said) == 1 and "pip install tensorboard" in said[0]
    code, _, err = train(tmp_path / "quiet", capsys, "--no-tensorboard")
    assert code == 0 and "TensorBoard" not in err


def test_progress_into_a_log_is_plain_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # (stderr captured: not a terminal, as in a log file or CI)
    code, _, err = train(tmp_path / "cp", capsys, "--iterations", "3", "--progress")
    assert code == 0, err
    assert "\r" not in err  # no progress-bar frames
    shown = [ln for ln in err.splitlines() if ln.startswith("meta-train: ")]
    assert [ln.split()[2] for ln in shown] == ["1/3", "2/3", "3/3"], err
    assert all(" pre=" in ln and " post=" in ln and ln.endswith(" it/s)") for ln in shown)
