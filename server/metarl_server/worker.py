"""What runs in the adaptation process: loading checkpoints and the inner loop (torch).

The serving process stays free of torch (it acts in numpy, see :mod:`metarl_server.numpy_policy`):
torch alone costs ~220 MB of resident memory and ``torch.func`` another ~70 MB, and an adaptation
in a thread of the serving process would hold the GIL that every ``Act`` needs. These functions
take and return plain picklable values (numpy arrays, dicts, floats) so they run the same in a
spawned process or, with ``--adapt-processes 0``, in a thread of the serving process.

The inner loop is :mod:`metarl.core.inner_loop`'s, called as the trainer calls it
(``prepare(pad_episodes(...))`` then ``adapt``; here ``adapt_with_loss``, the same steps that
also return the loss before them), so the same data gives the same θ'.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

Episodes = list[tuple[NDArray[Any], NDArray[Any], NDArray[np.float32]]]


class AdaptationError(Exception):
    """The inner loop could not produce usable parameters from the data (not a server bug)."""

    def __init__(self, message: str, kind: str = "diverged") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:  # keep ``kind`` across the process boundary
        return (type(self), (str(self), self.kind))


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint as plain values: what the serving process keeps of it."""

    name: str
    version: str
    env_id: str
    spec: dict[str, Any]
    inner_loop: dict[str, Any]
    params: NDArray[np.float32]
    """θ flattened in ``PolicySpec.param_shapes()`` order."""
    learning_rates: NDArray[np.float32] | None
    """Meta-SGD per-parameter learning rates, flattened like ``params``; None for a scalar lr."""
    param_shapes: list[tuple[str, tuple[int, ...]]]
    training: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""


@dataclass
class AdaptJob:
    spec: dict[str, Any]
    inner_loop: dict[str, Any]
    learning_rates: NDArray[np.float32] | None
    params: NDArray[np.float32]
    episodes: Episodes
    """``(observations [T, obs_dim] f32, actions [T] i64 or [T, A] f32, rewards [T] f32)``."""
    steps: int
    first_step: int = 0
    """Inner steps the session's parameters have already taken (they set the steps' rates)."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Across the process boundary the episodes travel as three concatenated arrays and their
        # lengths: pickling 60 small arrays costs ~10x more than 3 (and a hop of ~0.2 ms).
        eps = self.episodes
        packed = (
            [len(r) for _, _, r in eps],
            *(np.concatenate([e[i] for e in eps]) for i in range(3)),
        ) if eps else None  # fmt: skip
        fields = (
            self.spec, self.inner_loop, self.learning_rates, self.params, self.steps,
            self.first_step,
        )  # fmt: skip
        return (_unpack_job, (fields, packed))


def _unpack_job(fields: tuple[Any, ...], packed: tuple[Any, ...] | None) -> AdaptJob:
    spec, inner_loop, learning_rates, params, steps, first_step = fields
    episodes: Episodes = []
    if packed is not None:
        lengths, obs, acts, rewards = packed
        start = 0
        for n in lengths:
            episodes.append(
                (obs[start : start + n], acts[start : start + n], rewards[start : start + n])
            )
            start += n
    return AdaptJob(spec, inner_loop, learning_rates, params, episodes, steps, first_step)


@dataclass
class AdaptResult:
    params: NDArray[np.float32]
    loss_before: float
    loss_after: float
    transitions: int
    compute_seconds: float


def init(torch_threads: int = 1, warm_up: bool = True, parent_pid: int | None = None) -> None:
    """Process initializer: few torch threads (adaptation shares the machine with serving) and a
    warm-up adaptation, so ``torch.func``'s lazy initialisation (~1 s) is not paid by the first
    client's ``Adapt``. With ``parent_pid`` (the serving process), the worker exits when that
    process is gone, even if it was killed (SIGKILL, out of memory) and could not stop it."""
    import torch

    if parent_pid is not None:
        threading.Thread(
            target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True
        ).start()
    torch.set_num_threads(max(1, torch_threads))
    if warm_up:
        warm_up_inner_loop()


def serve(conn: Any, torch_threads: int, warm_up: bool, parent_pid: int) -> None:
    """An adaptation process's main loop: ``(fn, args)`` calls in from ``conn``, ``(True,
    result)`` or ``(False, exception)`` back, until the serving process closes the pipe."""
    # Ctrl-C in a terminal reaches the whole process group; the serving process decides what
    # it means (it drains, or the demo ends) and closes the pipe, which ends this loop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    init(torch_threads, warm_up, parent_pid)
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[bool, Any] = (True, fn(*args))
        except Exception as exc:
            reply = (False, exc)
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return
        except Exception:  # an exception that does not pickle: its text, then
            error = reply[1]
            conn.send((False, RuntimeError(f"{type(error).__name__}: {error}")))


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:  # reparented: the serving process died
            os._exit(0)


def warm_up_inner_loop() -> None:
    from metarl.core.policies import PolicySpec, init_params

    spec = PolicySpec(obs_dim=2, action_dim=2, distribution="gaussian", hidden_sizes=(4,))
    params = _flatten(spec, init_params(spec)).numpy()
    rng = np.random.default_rng(0)
    eps = [
        (
            rng.standard_normal((3, 2), dtype=np.float32),
            rng.standard_normal((3, 2), dtype=np.float32),
            rng.standard_normal(3, dtype=np.float32),
        )
    ]
    adapt(AdaptJob(spec.to_dict(), {"lr": 0.1, "steps": 1}, None, params, eps, 1))


def ping() -> bool:
    return True


def load(path: str | Path) -> LoadedCheckpoint:
    """Loads and verifies a checkpoint (``metarl.core.checkpoint.load_checkpoint``: SHA-256,
    architecture, finite values); raises ``CheckpointError`` saying why not."""
    from metarl.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    lrs = _flatten(ckpt.spec, ckpt.learning_rates).numpy() if ckpt.learning_rates else None
    return LoadedCheckpoint(
        name=ckpt.name,
        version=ckpt.version,
        env_id=ckpt.env_id,
        spec=ckpt.spec.to_dict(),
        inner_loop=ckpt.inner_loop.to_dict(),
        params=_flatten(ckpt.spec, ckpt.params).numpy(),
        learning_rates=lrs,
        param_shapes=list(ckpt.spec.param_shapes().items()),
        training=ckpt.training,
        created_at=ckpt.created_at,
    )


def adapt(job: AdaptJob) -> AdaptResult:
    """``job.steps`` inner steps from ``job.params`` on ``job.episodes``; raises
    :class:`AdaptationError` when the loss or the new parameters are not finite."""
    import torch

    from metarl.core import inner_loop
    from metarl.core.inner_loop import InnerLoopConfig
    from metarl.core.policies import PolicySpec

    start = time.perf_counter()
    spec = PolicySpec.from_dict(job.spec)
    config = InnerLoopConfig.from_dict(job.inner_loop)
    params = _unflatten(spec, torch.from_numpy(job.params))
    lr: float | dict[str, torch.Tensor] = (
        _unflatten(spec, torch.from_numpy(job.learning_rates))
        if job.learning_rates is not None
        else config.lr
    )
    episodes = [
        (torch.from_numpy(o), torch.from_numpy(a), torch.from_numpy(r)) for o, a, r in job.episodes
    ]
    batch = inner_loop.prepare(inner_loop.pad_episodes(episodes), config)
    # θ' exactly as inner_loop.adapt gives it; the loss before from the same gradient evaluation
    adapted, before = inner_loop.adapt_with_loss(
        spec, params, batch, lr=lr, steps=job.steps,
        lr_scales=config.lr_scales(job.steps, job.first_step),
    )  # fmt: skip
    with torch.no_grad():
        loss_before, loss_after = before[0], inner_loop.reinforce_loss(spec, adapted, batch)[0]
    if not torch.isfinite(loss_before):
        raise AdaptationError(
            "the inner loss of the current parameters on these episodes is not finite: "
            "observations or rewards are too large for the policy (scale them down)",
            kind="invalid",
        )
    flat = _flatten(spec, {k: v[0] for k, v in adapted.items()})
    if not (torch.isfinite(flat).all() and torch.isfinite(loss_after)):
        raise AdaptationError(
            "adaptation diverged (non-finite parameters); the session keeps its parameters: "
            "ask for fewer steps or send other episodes"
        )
    _check_outputs(spec, adapted, batch)
    return AdaptResult(
        params=flat.numpy(),
        loss_before=float(loss_before.item()),
        loss_after=float(loss_after.item()),
        transitions=int((batch.weights > 0).sum().item()),
        compute_seconds=time.perf_counter() - start,
    )


MAX_LOG_STD = 10.0
"""Largest log standard deviation an adapted Gaussian policy may have (std ≈ 22,000)."""
MIN_LOG_STD = -20.0
"""Smallest (std ≈ 2e-9): below it the log-probability of any other action is absurd."""
MAX_ABS_MEAN = 1e6
"""Largest action mean an adapted Gaussian policy may give on the episodes it adapted on."""


def _check_outputs(spec: Any, adapted: dict[str, Any], batch: Any) -> None:
    """Refuses adapted parameters whose actions would be non-finite or absurd, though every
    parameter is finite: a Gaussian's log standard deviation outside [MIN_LOG_STD,
    MAX_LOG_STD], or the policy's output on the episodes' own observations not finite (for a
    Gaussian mean, beyond ±MAX_ABS_MEAN). One forward pass, here rather than in the serving
    process."""
    import torch

    from metarl.core import policies

    how = (
        "the session keeps its parameters: send episodes with smaller rewards or observations, "
        "or ask for fewer steps"
    )
    if "log_std" in adapted:
        log_std = adapted["log_std"]
        low, high = float(log_std.min()), float(log_std.max())
        if not (low >= MIN_LOG_STD and high <= MAX_LOG_STD):
            raise AdaptationError(
                "adaptation refused: the adapted policy's log standard deviation would be "
                f"{low:.3g}..{high:.3g}, outside [{MIN_LOG_STD:g}, {MAX_LOG_STD:g}] (its "
                f"actions would be absurd); {how}"
            )
    with torch.no_grad():
        out = policies.forward(spec, adapted, batch.observations)[batch.weights > 0]
    if not bool(torch.isfinite(out).all()):
        raise AdaptationError(
            "adaptation refused: the adapted policy's output on the episodes' own observations "
            f"is not finite; {how}"
        )
    if spec.distribution != "categorical" and out.numel():
        largest = float(out.abs().max())
        if largest > MAX_ABS_MEAN:
            raise AdaptationError(
                "adaptation refused: the adapted policy's mean action on the episodes' own "
                f"observations reaches {largest:.3g} (more than {MAX_ABS_MEAN:g}); {how}"
            )


def _flatten(spec: Any, params: dict[str, Any]) -> Any:
    import torch

    return torch.cat(
        [params[name].detach().reshape(-1).float() for name in spec.param_shapes()]
    ).contiguous()


def _unflatten(spec: Any, flat: Any) -> dict[str, Any]:
    out, start = {}, 0
    for name, shape in spec.param_shapes().items():
        n = int(np.prod(shape))
        out[name] = flat[start : start + n].view(shape)
        start += n
    return out
