"""The module paths from before metarl/ had rooms still import, as the modules themselves."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from metarl._old_paths import MOVED, new_path


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_is_the_module_at_its_new_place(old: str) -> None:
    new = MOVED[old]
    assert importlib.import_module(old) is importlib.import_module(new)
    assert importlib.import_module(old).__spec__.name == new  # (its own spec, not the alias's)


def test_old_forms_of_import_keep_working() -> None:
    from metarl import inner_loop, train
    from metarl.algorithms import distributed, maml
    from metarl.core import inner_loop as core_inner_loop
    from metarl.train import TrainConfig
    from metarl.training import distributed as training_distributed
    from metarl.training.algorithms import maml as training_maml
    from metarl.training.options import TrainConfig as Options

    assert inner_loop is core_inner_loop and train.TrainConfig is TrainConfig is Options
    assert (maml, distributed) == (training_maml, training_distributed)
    assert new_path("metarl.algorithms.trpo") == "metarl.training.algorithms.trpo"
    assert new_path("metarl.envs") is None and new_path("metarl.core") is None


def test_importing_metarl_with_an_old_path_in_mind_stays_torch_free() -> None:
    code = "import sys, metarl, metarl.errors; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
