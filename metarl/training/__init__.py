"""Meta-training: from a task family to a checkpoint, and from a checkpoint to a served version.

:mod:`~metarl.training.options` (every option of ``metarl train``),
:mod:`~metarl.training.config` (presets, config files and flags layered into one validated
configuration), :mod:`~metarl.training.train` (the loop), :mod:`~metarl.training.trainer_state`
(resumable state, ``--resume``, stopping on a signal), :mod:`~metarl.training.algorithms` (the
outer loops: MAML, Meta-SGD, TRPO), :mod:`~metarl.training.distributed` (torchrun's processes),
:mod:`~metarl.training.parallel_sampling` (episodes of expensive families in worker processes),
:mod:`~metarl.training.lineage` (warm starts and where a policy came from),
:mod:`~metarl.training.publish` (``metarl publish``, optionally behind an evaluation gate).
"""
