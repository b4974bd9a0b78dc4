"""Checkpoints round-trip, and anything half-written, altered or pickled is refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from metarl.core import policies
from metarl.core.checkpoint import (
    Checkpoint,
    CheckpointError,
    bundled_checkpoints_dir,
    load_checkpoint,
    save_checkpoint,
)
from metarl.core.inner_loop import InnerLoopConfig


def _checkpoint(lrs: bool = False) -> Checkpoint:
    spec = policies.PolicySpec(obs_dim=3, action_dim=2, hidden_sizes=(5,))
    params = policies.init_params(spec, torch.Generator().manual_seed(0))
    return Checkpoint(
        name="toy",
        version="7",
        env_id="metarl/CartPoleFamily-v0",
        spec=spec,
        inner_loop=InnerLoopConfig(lr=0.3, steps=2, discount=0.9),
        params=params,
        learning_rates={k: torch.full_like(v, 0.3) for k, v in params.items()} if lrs else None,
        training={"algo": "maml"},
    )


@pytest.mark.parametrize("lrs", [False, True])
def test_round_trip(tmp_path: Path, lrs: bool) -> None:
    ckpt = _checkpoint(lrs)
    save_checkpoint(ckpt, tmp_path / "c")
    loaded = load_checkpoint(tmp_path / "c")
    assert (loaded.name, loaded.version, loaded.env_id) == ("toy", "7", ckpt.env_id)
    assert loaded.spec == ckpt.spec and loaded.inner_loop == ckpt.inner_loop
    for name, p in ckpt.params.items():
        torch.testing.assert_close(loaded.params[name], p)
    assert (loaded.learning_rates is not None) == lrs
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["inner_loop"] == {
        "lr": 0.3,
        "steps": 2,
        "discount": 0.9,
        "gae_lambda": 1.0,
        "normalize_advantages": True,
        "baseline_reg": 1e-5,
        "loss_weighting": "step",
        "later_steps_lr_scale": 1.0,
    }
    # A manifest written before those two settings existed loads with what it was trained with.
    old = {
        k: v
        for k, v in manifest["inner_loop"].items()
        if k not in ("loss_weighting", "later_steps_lr_scale")
    }
    assert InnerLoopConfig.from_dict(old) == ckpt.inner_loop


def test_save_replaces_atomically_and_leaves_no_temporaries(tmp_path: Path) -> None:
    ckpt = _checkpoint()
    save_checkpoint(ckpt, tmp_path / "c")
    ckpt.version = "8"
    save_checkpoint(ckpt, tmp_path / "c")
    assert load_checkpoint(tmp_path / "c").version == "8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_altered_tensors_are_refused(tmp_path: Path) -> None:
    save_checkpoint(_checkpoint(), tmp_path / "c")
    params = tmp_path / "c" / "params.safetensors"
    raw = bytearray(params.read_bytes())
    raw[-1] ^= 0xFF
    params.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path / "c")


def test_half_written_checkpoint_is_refused(tmp_path: Path) -> None:
    save_checkpoint(_checkpoint(), tmp_path / "c")
    (tmp_path / "c" / "params.safetensors").unlink()
    with pytest.raises(CheckpointError, match="needs"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_text("{not json")
    (tmp_path / "d" / "params.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "d")


class _Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.target),))  # type: ignore[attr-defined]


def test_a_pickle_in_place_of_the_tensors_is_refused_without_running(tmp_path: Path) -> None:
    save_checkpoint(_checkpoint(), tmp_path / "c")
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.target = str(marker)  # type: ignore[attr-defined]
    payload = pickle.dumps(exploit)
    (tmp_path / "c" / "params.safetensors").write_bytes(payload)
    # Even with a manifest whose hash matches the payload, the loader never unpickles.
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    import hashlib

    manifest["params_sha256"] = hashlib.sha256(payload).hexdigest()
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "c")
    assert not marker.exists()


def test_bundled_checkpoint_loads() -> None:
    ckpt = load_checkpoint(bundled_checkpoints_dir() / "cartpole-family" / "1")
    assert ckpt.env_id == "metarl/CartPoleFamily-v0"
    assert ckpt.spec.hidden_sizes == (64,)
