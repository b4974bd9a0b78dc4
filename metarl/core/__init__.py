"""The adaptation core: what the trainer, ``metarl eval``, :class:`metarl.Policy` and the server
share.

:mod:`~metarl.core.policies` (MLP policies as pure functions of a parameter dict),
:mod:`~metarl.core.inner_loop` (theta' = theta - alpha * grad L_task(theta), ONE function for
trainer and server), :mod:`~metarl.core.sampling` (batched rollouts),
:mod:`~metarl.core.checkpoint` and :mod:`~metarl.core.checkpoint_paths` (safetensors + manifest,
and where a checkpoint is found), :mod:`~metarl.core.errors` (the mistakes a user can fix).
Nothing here imports training, evaluation or the command line. Importing this package imports
nothing heavy: ``checkpoint_paths`` and ``errors`` are torch-free, as the serving process needs.
"""
