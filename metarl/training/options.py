"""Every option of ``metarl train``: :class:`TrainConfig`, its defaults and its ``--help``.

The dataclass is the one list of the trainer's settings: :mod:`metarl.training.config` layers a
family's preset, a config file and the flags over its defaults and checks each value against its
type; the trainer (:mod:`metarl.training.train`) reads it; a checkpoint records it whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass
class TrainConfig:
    """Meta-train a policy on a task family and save it as a checkpoint."""

    env: str = "metarl/CartPoleFamily-v0"
    """Task family to meta-train on (a registered ``metarl/`` gymnasium id)."""
    iterations: int = 300
    """Meta-iterations (outer updates)."""
    out: Path = Path("runs/latest")
    """Checkpoint directory to write (replaced atomically at every save). `metarl train` refuses
    an existing run there (the checkpoint, <out>.metrics.csv, <out>.tensorboard/,
    <out>.trainer-state/) unless --overwrite, and always refuses a file or a directory that is
    not a checkpoint."""
    overwrite: bool = False
    """Delete the run already at --out (checkpoint, metrics CSV, TensorBoard events, trainer
    state) when this one starts, instead of refusing to start."""
    seed: int = 0
    """Seeds tasks, episodes and initialization: the same seed gives the same run."""
    name: str = ""
    """Policy name in the manifest; empty for the task family's (cartpole-family,
    navigation-2d, pendulum-family, half-cheetah-vel; a family of your own: its id in lower-case
    words, acme/MyRobot2D-v3 -> my-robot-2d)."""
    version: str = ""
    """Version label in the manifest; empty for a UTC timestamp."""
    init_from: str | None = None
    """Warm start: begin from this checkpoint's theta (and Meta-SGD's rates) instead of a fresh
    initialization: a checkpoint directory, ``MODEL_DIR/<name>`` (its newest version) or a bundled
    ``<name>/<version>``. Its task family and architecture must be this run's."""
    resume: Path | None = None
    """Continue the run whose checkpoint is this directory (an earlier ``--out``) from the trainer
    state saved beside it, with that run's settings; ``--iterations`` may extend it."""
    algo: Literal["maml", "fomaml", "metasgd"] = "maml"
    """``maml``: second order, through the inner loop; ``fomaml``: first-order approximation;
    ``metasgd``: second order, with per-parameter inner learning rates learned too."""
    inner_estimator: Literal["reinforce", "lvc"] = "reinforce"
    """Which Hessian of the inner loss the meta-gradient differentiates through (second order
    only; theta' is the same either way). ``reinforce``: MAML's, the REINFORCE loss's, which
    treats the pre-update episodes as fixed data. ``lvc``: ProMP's low-variance curvature
    estimator (Rothfuss et al. 2019), which also credits the pre-update policy for what its
    episodes tell the inner step (meta-learned exploration); with ``--outer adam``."""
    outer: Literal["adam", "trpo"] = "adam"
    """Outer loop: Adam on the post-update loss, or TRPO (the MAML paper's)."""
    meta_batch_size: int = 20
    """Tasks per meta-iteration (split over processes under torchrun)."""
    episodes_per_task: int = 10
    """Episodes sampled per task, before and after adaptation."""
    max_episode_steps: int | None = None
    """Episode length in training; None for the family's own (Meta-World's 500, the MuJoCo
    families' 200). Saved in the checkpoint: ``metarl eval`` runs episodes of this length."""
    inner_lr: float = 1.0
    """Inner-loop learning rate alpha (Meta-SGD: the rates' initial value)."""
    inner_steps: int = 1
    """Inner gradient steps."""
    discount: float = 0.99
    """Discount gamma."""
    gae_lambda: float = 1.0
    """GAE lambda of the advantages."""
    normalize_advantages: bool = True
    """Normalize each task's advantages."""
    baseline_reg: float = 1e-5
    """Ridge coefficient of the linear feature baseline."""
    loss_weighting: Literal["step", "episode"] = "episode"
    """How each task's samples are averaged in the inner and outer losses, the advantage
    normalization, the KL and its curvature. ``episode``: the mean of per-episode means
    (pytorch-maml-rl's; an episode that ends early at its goal weighs as much as a full one);
    ``step``: every real step weighs the same (rllab's pooled mean). Saved with the inner loop
    in the checkpoint, so the server adapts the same way."""
    later_steps_lr_scale: float = 1.0
    """Learning-rate factor of every inner step after a task's first (per-step rates): the
    server's later ``Adapt`` calls on a session, ``metarl eval``'s later rounds, and with
    ``--inner-steps`` > 1 the later steps here. Saved with the inner loop in the checkpoint."""
    outer_lr: float = 1e-2
    """Adam learning rate of the outer loop."""
    outer_lr_anneal: bool = False
    """Adam: the learning rate falls linearly from ``outer_lr`` to 0 over the iterations
    (cleanrl's ``anneal_lr``), so the last updates, whose theta is saved, are small."""
    max_kl: float = 0.01
    """TRPO: the trust region, a bound on the mean KL between old and new adapted policies."""
    cg_iters: int = 10
    """TRPO: conjugate-gradient iterations."""
    cg_damping: float = 1e-5
    """TRPO: damping added to the KL Hessian."""
    ls_max_steps: int = 15
    """TRPO: line-search steps before the update is rejected."""
    ls_backtrack: float = 0.8
    """TRPO: step shrink factor per line-search step."""
    cg_subsample: float = 1.0
    """TRPO: fraction of each task's episodes the KL curvature (conjugate gradient's products)
    is computed on; 1 is every episode (exact). Fewer is cheaper, as rllab's subsample_factor
    (TRPO paper, app. C); the gradient and the line search always use every episode."""
    curvature_dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    """TRPO: precision of the KL curvature products (conjugate gradient's). ``bfloat16`` runs their
    matmuls ~2.5x faster on CPUs with native bf16 dot products (AVX512-BF16, AMX), accumulating in
    float32; the gradient and the line search (which checks the trust region) stay float32.
    ``auto``: bfloat16 where the CPU has native support, else float32."""
    hidden_sizes: tuple[int, ...] = (64,)
    """Hidden layer sizes of the MLP policy."""
    activation: Literal["tanh", "relu"] = "tanh"
    """Hidden nonlinearity."""
    init_log_std: float = 0.0
    """Initial log standard deviation of gaussian policies."""
    save_every: int = 25
    """Write the checkpoint every this many iterations (and at the end)."""
    threads: int = 0
    """Worker threads per process; 0 for the machine's cores divided among torchrun's local
    processes (never more threads than cores). Each meta-batch's tasks are split among them;
    torch itself runs one thread, as OpenMP's thread teams stall on a busy machine."""
    sampler_workers: int = 0
    """Worker processes that sample whole episodes, for families whose step is expensive
    (MuJoCo, Meta-World); 0 for the cores divided among torchrun's local processes, 1 to sample
    in this process. The same seed gives the same run whatever the number."""
    metrics_csv: Path | None = None
    """CSV of per-iteration metrics; defaults to ``<out>.metrics.csv`` beside the checkpoint."""
    tensorboard: bool = True
    """Also write TensorBoard events to ``<out>.tensorboard/`` when tensorboard is installed
    (`pip install tensorboard`; without it, the run says once that it skips them)."""
    progress: bool = True
    """Show a progress bar."""
    extra: dict[str, str] = field(default_factory=dict)
    """Free-form notes recorded in the manifest's ``training`` section."""
