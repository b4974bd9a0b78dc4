"""The meta-learning algorithms: meta-gradients (closed form vs autograd vs finite differences),
TRPO's pieces, Meta-SGD, sampling streams, determinism, and a smoke run of every combination."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl import envs
from metarl.core import inner_loop, policies
from metarl.core.checkpoint import load_checkpoint
from metarl.core.inner_loop import InnerLoopConfig
from metarl.core.policies import Params, PolicySpec
from metarl.core.sampling import sample_episodes
from metarl.training import distributed
from metarl.training.algorithms import derivatives, maml, trpo
from metarl.training.algorithms.derivatives import InnerLoopJacobian
from metarl.training.algorithms.flat import flatten, unflatten
from metarl.training.train import TrainConfig, train
from tests.algorithms_support import F64, meta_objective, post_objective, problem


@pytest.mark.parametrize("distribution", ["gaussian", "categorical"])
@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_matches_finite_differences(distribution: str, steps: int) -> None:
    """The closed-form second-order meta-gradient through `steps` inner steps equals central
    finite differences of the post-update objective and autograd's double backward."""
    spec, theta, pre, post = problem(distribution)
    meta = meta_objective(spec, theta, None, pre, post, steps)
    old_logp = meta.shards[0].post.old_logp
    grad = meta.grad()

    def objective(x: torch.Tensor) -> float:
        (th,) = unflatten(x, theta)
        return float(post_objective(spec, post, old_logp, th, None, pre, steps))

    x = flatten(theta)
    eps = 1e-6
    for i in range(0, x.numel(), 5):
        e = torch.zeros_like(x)
        e[i] = eps
        fd = (objective(x + e) - objective(x - e)) / (2 * eps)
        assert grad[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)

    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    reference = torch.autograd.grad(
        post_objective(spec, post, old_logp, leaves, None, pre, steps), list(leaves.values())
    )
    torch.testing.assert_close(grad, flatten(dict(enumerate(reference))), rtol=1e-9, atol=1e-12)  # type: ignore[arg-type]


@pytest.mark.parametrize("distribution", ["gaussian", "categorical"])
def test_metasgd_learning_rate_gradient_matches_finite_differences(distribution: str) -> None:
    spec, theta, pre, post = problem(distribution)
    gen = torch.Generator().manual_seed(3)
    rates = {k: 0.2 + 0.1 * torch.rand(v.shape, generator=gen, dtype=F64) for k, v in theta.items()}
    meta = meta_objective(spec, theta, rates, pre, post, steps=2)
    old_logp = meta.shards[0].post.old_logp
    grad = meta.grad()
    x = flatten(theta, rates)
    assert grad.shape == x.shape

    def objective(x: torch.Tensor) -> float:
        th, lr = unflatten(x, theta, rates)
        return float(post_objective(spec, post, old_logp, th, lr, pre, steps=2))

    eps = 1e-6
    n_theta = flatten(theta).numel()
    for i in [*range(0, n_theta, 7), *range(n_theta, x.numel(), 3)]:  # theta and the rates
        e = torch.zeros_like(x)
        e[i] = eps
        fd = (objective(x + e) - objective(x - e)) / (2 * eps)
        assert grad[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_first_and_second_order_differ_where_they_must() -> None:
    """fomaml's meta-gradient is the plain sum of post-update gradients at theta'_i; it differs
    from the second-order one by the inner loss Hessian's term, which vanishes as lr -> 0."""
    spec, theta, pre, post = problem("gaussian")
    second = meta_objective(spec, theta, None, pre, post, steps=1).grad()
    fo_meta = meta_objective(spec, theta, None, pre, post, steps=1, first_order=True)
    first = fo_meta.grad()
    per_task = fo_meta.shards[0].post.grad()
    torch.testing.assert_close(first, flatten({k: v.sum(0) for k, v in per_task.items()}))
    assert (second - first).abs().max() > 1e-3 * first.abs().max()

    tiny = 1e-7  # the gap is lr * (inner Hessian) * (post gradient): it shrinks with the step
    s = meta_objective(spec, theta, None, pre, post, steps=1, lr=tiny).grad()
    f = meta_objective(spec, theta, None, pre, post, steps=1, lr=tiny, first_order=True).grad()
    assert (s - f).abs().max() < 1e-4 * (second - first).abs().max()


@pytest.mark.parametrize("distribution", ["gaussian", "categorical"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_kl_hessian_vector_product_through_the_inner_loop(
    distribution: str, activation: str
) -> None:
    """The closed-form TRPO curvature equals autograd's Hessian-vector product of the mean KL
    between pi_{theta'(theta)} and pi_{theta'(theta_old)}, with theta' recomputed by the inner loop
    with create_graph, at theta_old; and it is symmetric positive semi-definite."""
    spec, theta, pre, post = problem(distribution, activation)
    meta = meta_objective(spec, theta, None, pre, post, steps=2)
    old = {k: v.detach() for k, v in inner_loop.adapt(spec, theta, pre, lr=0.1, steps=2).items()}

    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    new = inner_loop.adapt(spec, leaves, pre, lr=0.1, steps=2, create_graph=True)
    out_new = policies.forward(spec, new, post.observations)
    out_old = policies.forward(spec, old, post.observations)
    if distribution == "gaussian":
        ls_new, ls_old = new["log_std"].unsqueeze(1), old["log_std"].unsqueeze(1)
        kl = (
            ls_new
            - ls_old
            + (torch.exp(2 * ls_old) + (out_old - out_new) ** 2) / (2 * torch.exp(2 * ls_new))
            - 0.5
        )
    else:
        lp_old, lp_new = torch.log_softmax(out_old, -1), torch.log_softmax(out_new, -1)
        kl = lp_old.exp() * (lp_old - lp_new)
    n = post.weights.sum(-1).clamp(min=1)
    mean_kl = ((kl.sum(-1) * post.weights).sum(-1) / n).mean()
    (g,) = [
        flatten(
            dict(enumerate(torch.autograd.grad(mean_kl, list(leaves.values()), create_graph=True)))
        )
    ]  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(5)
    v, w = (torch.randn(g.shape, generator=gen, dtype=F64) for _ in range(2))
    reference = flatten(dict(enumerate(torch.autograd.grad(g.dot(v), list(leaves.values())))))  # type: ignore[arg-type]
    hv, hw = meta.kl_hvp(v), meta.kl_hvp(w)
    torch.testing.assert_close(hv, reference, rtol=1e-8, atol=1e-12)
    assert hv.dot(w).item() == pytest.approx(hw.dot(v).item(), rel=1e-9)
    assert hv.dot(v).item() >= 0


def lvc_adapt(spec: PolicySpec, theta: Params, pre, lr: float, steps: int) -> Params:  # type: ignore[no-untyped-def]
    """The inner loop by autograd on ProMP's LVC surrogate sum_n w_n * -pi_n / stop_grad(pi_n)
    (create_graph): the reference for --inner-estimator lvc."""
    n = pre.weights.sum(-1, keepdim=True).clamp(min=1)
    w = pre.advantages * pre.weights / n
    current = policies.stack(spec, theta, pre.weights.shape[0])
    for _ in range(steps):
        logp = policies.log_prob(spec, current, pre.observations, pre.actions)
        loss = -(w * torch.exp(logp - logp.detach())).sum()
        grads = torch.autograd.grad(loss, list(current.values()), create_graph=True)
        current = {k: p - lr * g for (k, p), g in zip(current.items(), grads, strict=True)}
    return current


@pytest.mark.parametrize("distribution", ["gaussian", "categorical"])
@pytest.mark.parametrize("steps", [1, 2])
def test_lvc_meta_gradient_matches_autograd_of_the_lvc_surrogate(
    distribution: str, steps: int
) -> None:
    """--inner-estimator lvc: the closed-form meta-gradient and KL curvature equal autograd's
    through an inner loop on the LVC surrogate; theta' is unchanged (same value and gradient),
    and the meta-gradient differs from MAML's."""
    spec, theta, pre, post = problem(distribution)
    lvc = meta_objective(spec, theta, None, pre, post, steps=steps, inner_estimator="lvc")
    maml_grad = meta_objective(spec, theta, None, pre, post, steps=steps).grad()
    old_logp = lvc.shards[0].post.old_logp
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    adapted = lvc_adapt(spec, leaves, pre, lr=0.1, steps=steps)
    reference = inner_loop.adapt(spec, theta, pre, lr=0.1, steps=steps)
    for name in reference:
        torch.testing.assert_close(adapted[name].detach(), reference[name])

    logp = policies.log_prob(spec, adapted, post.observations, post.actions)
    n = post.weights.sum(-1).clamp(min=1)
    surrogate = ((torch.exp(logp - old_logp) * post.advantages * post.weights).sum(-1) / n).mean()
    grads = torch.autograd.grad(surrogate, list(leaves.values()), create_graph=True)
    g = flatten(dict(enumerate(grads)))  # type: ignore[arg-type]
    torch.testing.assert_close(lvc.grad(), g.detach(), rtol=1e-8, atol=1e-12)
    assert (lvc.grad() - maml_grad).abs().max() > 1e-3 * maml_grad.abs().max()

    # The KL curvature through the LVC Jacobian: J^T F J v, against autograd's J products.
    v = torch.randn(g.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    fisher_u = lvc.shards[0].post.fvp(lvc.shards[0].jacobian.jvp(unflatten(v, theta)[0]))
    flat_adapted = flatten(adapted)
    (jtu,) = [torch.autograd.grad(flat_adapted, list(leaves.values()), flatten(fisher_u))]
    torch.testing.assert_close(lvc.kl_hvp(v), flatten(dict(enumerate(jtu))), rtol=1e-8, atol=1e-12)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("algo", "outer", "message"),
    [("fomaml", "adam", "first-order MAML drops"), ("maml", "trpo", "use --outer adam")],
)
def test_lvc_is_refused_where_it_cannot_work(
    tmp_path: Path, algo: str, outer: str, message: str
) -> None:
    cfg = TrainConfig(
        env="metarl/Navigation2D-v0", iterations=1, algo=algo, outer=outer,  # type: ignore[arg-type]
        inner_estimator="lvc", out=tmp_path / "c", progress=False, tensorboard=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match=message):
        train(cfg)


def test_bfloat16_curvature_is_close_to_float32() -> None:
    """--curvature-dtype bfloat16: the KL curvature products and the conjugate-gradient
    direction they give stay close to float32's (the gradient is float32 either way)."""
    spec, theta, pre, post = problem("gaussian", k=4, n=200, unequal=False)
    f32 = {k: v.float() for k, v in theta.items()}

    def cast(b):  # type: ignore[no-untyped-def]
        return type(b)(*(t.float() if t.is_floating_point() else t for t in b))

    exact = meta_objective(spec, f32, None, cast(pre), cast(post), steps=1)
    low = meta_objective(
        spec, f32, None, cast(pre), cast(post), steps=1, curvature_dtype=torch.bfloat16
    )
    torch.testing.assert_close(low.grad(), exact.grad())
    v = torch.randn(exact.x.shape, generator=torch.Generator().manual_seed(0))
    hv, hv_low = exact.kl_hvp(v), low.kl_hvp(v)
    assert hv_low.dtype == torch.float32
    assert (hv_low - hv).norm() < 0.02 * hv.norm()
    d, _ = trpo.conjugate_gradient(lambda u: exact.kl_hvp(u) + 1e-2 * u, exact.grad(), 10)
    d_low, _ = trpo.conjugate_gradient(lambda u: low.kl_hvp(u) + 1e-2 * u, exact.grad(), 10)
    assert torch.nn.functional.cosine_similarity(d, d_low, dim=0) > 0.99


def test_fast_tanh_is_tanh() -> None:
    x = torch.linspace(-12, 12, 100_001)
    assert (policies.tanh(x) - torch.tanh(x)).abs().max() < 2e-7
    xd = x.double().requires_grad_()
    (g,) = torch.autograd.grad(policies.tanh(xd).sum(), xd)
    torch.testing.assert_close(g, 1 - torch.tanh(xd.detach()) ** 2)


def test_curvature_on_a_subset_of_the_episodes() -> None:
    """--cg-subsample: the KL curvature is that of the first episodes of every task, at the
    parameters the whole batch adapts to; the gradient still uses every episode."""
    spec, theta, pre, post = problem("gaussian", k=3, n=12)  # 4 "episodes" of 3 steps
    adapted = inner_loop.adapt(spec, theta, pre, lr=0.1, steps=1)
    subset = (maml.first_episodes(pre, 3, 2), maml.first_episodes(post, 3, 2))
    assert subset[0].observations.shape[1] == 6

    def objective(pre, post, curvature=None):  # type: ignore[no-untyped-def]
        return maml.MetaObjective(
            spec, theta, None, pre, adapted, post, InnerLoopConfig(lr=0.1),
            num_tasks=3, first_order=False, ctx=distributed.Context(), curvature_episodes=curvature,
        )  # fmt: skip

    sub = objective(pre, post, subset)
    v = torch.randn(sub.x.shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sub.kl_hvp(v), objective(*subset).kl_hvp(v))
    torch.testing.assert_close(sub.grad(), objective(pre, post).grad())
    assert not torch.allclose(sub.kl_hvp(v), objective(pre, post).kl_hvp(v))


def test_closed_form_jacobian_reproduces_the_inner_loop() -> None:
    """The linearization follows the same inner loop: its iterates end at inner_loop.adapt's."""
    spec, theta, pre, _ = problem("categorical")
    jac = InnerLoopJacobian(spec, theta, pre, lr=0.3, steps=2)
    adapted = inner_loop.adapt(spec, theta, pre, lr=0.3, steps=2)
    last = jac.steps[-1]
    again = {k: p - 0.3 * last.grad[k] for k, p in last.tape.params.items()}
    for name in adapted:
        torch.testing.assert_close(again[name], adapted[name])


@pytest.mark.parametrize("distribution", ["gaussian", "categorical"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_first_layer_shortcuts_give_what_backpropagation_gives(
    distribution: str, activation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The products' shortcuts through layer 0 (the inner Hessian's moments of layer 0, the
    output's Jacobian in layer 0's pre-activation for the Fisher) are the same algebra as
    backpropagating through layer 1: meta-gradient and KL curvature agree to float64 rounding,
    for REINFORCE and LVC inner Hessians and with learned rates (Meta-SGD). In float32 the
    two routes agree to float32 rounding. (The autograd and finite-difference tests above run
    with the shortcuts, which are on by default for these small observations and outputs.)"""
    spec, theta, pre, post = problem(distribution, activation)
    gen = torch.Generator().manual_seed(3)
    rates = {k: 0.2 + 0.1 * torch.rand(v.shape, generator=gen, dtype=F64) for k, v in theta.items()}

    def objectives() -> list[maml.MetaObjective]:
        return [
            meta_objective(spec, theta, None, pre, post, steps=2),
            meta_objective(spec, theta, None, pre, post, steps=1, inner_estimator="lvc"),
            meta_objective(spec, theta, rates, pre, post, steps=2),
        ]

    fast = objectives()
    assert all(s.moments is not None for s in fast[0].shards[0].jacobian.steps)
    assert fast[0].shards[0].post.out_jac is not None
    monkeypatch.setattr(derivatives, "FIRST_LAYER_MAX_INPUTS", 0)
    monkeypatch.setattr(derivatives, "OUTPUT_JACOBIAN_MAX_OUTPUTS", 0)
    plain = objectives()
    assert all(s.moments is None for s in plain[0].shards[0].jacobian.steps)
    assert plain[0].shards[0].post.out_jac is None
    for f, p in zip(fast, plain, strict=True):
        v = torch.randn(f.x.shape, generator=gen, dtype=F64)
        torch.testing.assert_close(f.grad(), p.grad(), rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(f.kl_hvp(v), p.kl_hvp(v), rtol=1e-10, atol=1e-13)

    th32, pre32, post32 = derivatives.converted([theta, pre, post], torch.float32)
    monkeypatch.setattr(derivatives, "FIRST_LAYER_MAX_INPUTS", 8)
    monkeypatch.setattr(derivatives, "OUTPUT_JACOBIAN_MAX_OUTPUTS", 4)
    fast32 = meta_objective(spec, th32, None, pre32, post32, steps=2)
    monkeypatch.setattr(derivatives, "FIRST_LAYER_MAX_INPUTS", 0)
    monkeypatch.setattr(derivatives, "OUTPUT_JACOBIAN_MAX_OUTPUTS", 0)
    plain32 = meta_objective(spec, th32, None, pre32, post32, steps=2)
    v = torch.randn(fast32.x.shape, generator=gen)
    torch.testing.assert_close(fast32.kl_hvp(v), plain32.kl_hvp(v), rtol=1e-4, atol=1e-6)


def test_conjugate_gradient_solves_a_spd_system() -> None:
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=gen, dtype=F64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=F64)
    b = torch.randn(6, generator=gen, dtype=F64)
    products = 0

    def mvp(v: torch.Tensor) -> torch.Tensor:
        nonlocal products
        products += 1
        return a @ v

    x, xax = trpo.conjugate_gradient(mvp, b, iters=6)  # exact in n steps
    torch.testing.assert_close(x, torch.linalg.solve(a, b))
    for iters in (6, 2):  # x^T A x from the residual, without another product
        products = 0
        x, xax = trpo.conjugate_gradient(mvp, b, iters=iters)
        assert products == iters
        assert xax == pytest.approx(float(x @ a @ x), rel=1e-10)
    assert (a @ x - b).norm() < b.norm()  # CG decreases the error monotonically


def test_line_search_respects_max_kl_and_backtracks() -> None:
    """A quadratic surrogate whose actual KL is 8x the quadratic model's: the full step and the
    first backtracks break the trust region and must be refused."""
    h = torch.diag(torch.tensor([1.0, 4.0], dtype=F64))
    g = torch.tensor([1.0, 1.0], dtype=F64)
    cfg = trpo.TRPOConfig(max_kl=0.01)
    seen: list[tuple[float, float]] = []

    def evaluate(x: torch.Tensor) -> tuple[float, float]:
        kl = 8 * 0.5 * float(x @ h @ x)
        seen.append((float(g @ x), kl))
        return float(g @ x), kl

    x0 = torch.zeros(2, dtype=F64)
    x, stats = trpo.step(x0, g, lambda v: h @ v, evaluate, 0.0, cfg)
    assert stats.accepted and stats.kl <= cfg.max_kl
    assert all(kl > cfg.max_kl for _, kl in seen[:-1])
    assert stats.line_search_steps == len(seen) == 1 + math.ceil(math.log(1 / 8) / math.log(0.64))
    expected_fraction = 0.8 ** (stats.line_search_steps - 1)
    direction = torch.linalg.solve(h + cfg.cg_damping * torch.eye(2, dtype=F64), g)
    shs = 0.5 * direction @ (h + cfg.cg_damping * torch.eye(2, dtype=F64)) @ direction
    torch.testing.assert_close(x, expected_fraction * math.sqrt(cfg.max_kl / shs) * direction)

    def never(x: torch.Tensor) -> tuple[float, float]:  # the surrogate never improves
        return -1.0, 0.0

    x, stats = trpo.step(x0, g, lambda v: h @ v, never, 0.0, cfg)
    assert not stats.accepted and torch.equal(x, x0)
    assert stats.line_search_steps == cfg.ls_max_steps


@pytest.mark.parametrize("algo", ["maml", "metasgd", "fomaml"])
def test_one_trpo_step_improves_the_surrogate_within_the_trust_region(algo: str) -> None:
    spec, theta, pre, post = problem("gaussian", k=4, n=20)
    rates = {k: torch.full_like(v, 0.3) for k, v in theta.items()} if algo == "metasgd" else None
    meta = meta_objective(spec, theta, rates, pre, post, steps=1, first_order=algo == "fomaml")
    before = meta.surrogate_before()
    cfg = trpo.TRPOConfig(max_kl=0.01)
    x, stats = trpo.step(meta.x, meta.grad(), meta.kl_hvp, meta.evaluate, before, cfg)
    assert stats.accepted
    surrogate, kl = meta.evaluate(x)
    assert surrogate > before and 0 < kl <= cfg.max_kl
    assert surrogate == stats.surrogate_after and kl == stats.kl


@pytest.mark.parametrize("env_id", ["metarl/CartPoleFamily-v0", "metarl/Navigation2D-v0"])
def test_per_task_streams_do_not_depend_on_the_other_tasks(env_id: str) -> None:
    """How a meta-batch is split (over processes) does not change any task's episodes."""
    cls = envs.family(env_id).batched_cls
    spec = PolicySpec.for_spaces(cls.observation_space, cls.action_space)
    params = policies.init_params(spec, torch.Generator().manual_seed(0))
    tasks = cls.sample_tasks(4, np.random.default_rng(0))

    def run(idx: range):  # type: ignore[no-untyped-def]
        rngs = [np.random.default_rng([9, i]) for i in idx]
        return sample_episodes(
            cls(len(idx) * 3), spec, params, [tasks[i] for i in idx], 3, task_rngs=rngs
        )

    whole = run(range(4))
    for part, sl in ((run(range(0, 1)), slice(0, 1)), (run(range(1, 4)), slice(1, 4))):
        h = part.mask.shape[2]  # the whole batch runs as long as its longest episode
        for name, w in whole._asdict().items():
            torch.testing.assert_close(w[sl, :, :h], getattr(part, name), rtol=0, atol=0)
        assert not whole.mask[sl, :, h:].any() and not whole.rewards[sl, :, h:].any()


def _tiny(tmp_path: Path, **kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    base = dict(
        iterations=2, out=tmp_path / "ckpt", seed=5, meta_batch_size=3, episodes_per_task=2,
        hidden_sizes=(8,), progress=False, tensorboard=False, threads=1,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("outer", "threads"), [("adam", 1), ("trpo", 1), ("trpo", 2)])
def test_same_seed_same_run_bit_for_bit(tmp_path: Path, outer: str, threads: int) -> None:
    """Two runs with one seed agree bit for bit, also when worker threads share the tasks."""
    kw = dict(outer=outer, algo="metasgd", env="metarl/Navigation2D-v0", threads=threads)
    a = train(_tiny(tmp_path / "a", **kw))
    b = train(_tiny(tmp_path / "b", **kw))
    for name in a.params:
        assert torch.equal(a.params[name], b.params[name]), name
    assert a.learning_rates is not None and b.learning_rates is not None
    for name in a.learning_rates:
        assert torch.equal(a.learning_rates[name], b.learning_rates[name]), name
    csv_a = (tmp_path / "a" / "ckpt.metrics.csv").read_text().splitlines()
    csv_b = (tmp_path / "b" / "ckpt.metrics.csv").read_text().splitlines()
    assert [r.rsplit(",", 1)[0] for r in csv_a] == [r.rsplit(",", 1)[0] for r in csv_b]  # not time
    c = train(_tiny(tmp_path / "c", **{**kw, "seed": 6}))
    assert any(not torch.equal(a.params[n], c.params[n]) for n in a.params)


@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd"])
@pytest.mark.parametrize("outer", ["adam", "trpo"])
def test_every_algo_and_outer_loop_trains_a_loadable_checkpoint(
    tmp_path: Path, algo: str, outer: str
) -> None:
    cfg = _tiny(tmp_path, algo=algo, outer=outer, inner_steps=2)
    theta0 = policies.init_params(
        PolicySpec(4, 2, hidden_sizes=(8,)), torch.Generator().manual_seed(5)
    )
    train(cfg)
    ckpt = load_checkpoint(cfg.out)
    assert ckpt.training["algo"] == algo and ckpt.training["outer"] == outer
    assert ckpt.training["iterations"] == 2
    assert ckpt.inner_loop.steps == 2 and ckpt.inner_loop.lr == cfg.inner_lr
    moved = any(not torch.equal(ckpt.params[n], theta0[n]) for n in theta0)
    assert moved or outer == "trpo"  # a TRPO step may be rejected on such tiny batches
    if algo == "metasgd":
        assert ckpt.learning_rates is not None
        assert set(ckpt.learning_rates) == set(ckpt.params)
        # the server's inner loop takes the learned rates
        lr: Params = ckpt.learning_rates
        batch = inner_loop.pad_episodes(
            [(torch.zeros(3, 4), torch.tensor([0, 1, 0]), torch.ones(3))]
        )
        inner_loop.adapt_on_episodes(ckpt.spec, ckpt.params, batch, ckpt.inner_loop, lr=lr)
    else:
        assert ckpt.learning_rates is None
    rows = cfg.out.with_name("ckpt.metrics.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,pre_return,post_return") and len(rows) == 3


@pytest.mark.parametrize(
    "options",
    [
        {"algo": "maml", "outer": "adam", "inner_estimator": "lvc"},
        {"algo": "metasgd", "outer": "adam", "inner_estimator": "lvc"},
        {"algo": "maml", "outer": "trpo", "curvature_dtype": "bfloat16"},
        {"algo": "metasgd", "outer": "trpo", "curvature_dtype": "auto", "cg_subsample": 0.5},
    ],
)
def test_estimator_and_curvature_options_train(tmp_path: Path, options: dict[str, str]) -> None:
    cfg = _tiny(tmp_path, **options)
    train(cfg)
    training = load_checkpoint(cfg.out).training
    assert training["inner_estimator"] == options.get("inner_estimator", "reinforce")
    if options["outer"] == "trpo":
        assert training["trpo"]["curvature_dtype"] in ("float32", "bfloat16")


@pytest.mark.parametrize("distribution", ["gaussian", "categorical"])
def test_meta_gradient_with_per_step_rates_matches_autograd(distribution: str) -> None:
    """later_steps_lr_scale with two inner steps: the closed-form meta-gradient and KL curvature
    equal autograd's through inner_loop.adapt with the same per-step rates."""
    spec, theta, pre, post = problem(distribution)
    config = InnerLoopConfig(lr=0.1, steps=2, later_steps_lr_scale=0.3)
    scales = config.lr_scales(2)
    adapted = inner_loop.adapt(spec, theta, pre, lr=0.1, steps=2, lr_scales=scales)
    meta = maml.MetaObjective(
        spec, theta, None, pre, adapted, post, config,
        num_tasks=pre.weights.shape[0], first_order=False, ctx=distributed.Context(),
    )  # fmt: skip
    old_logp = meta.shards[0].post.old_logp
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    new = inner_loop.adapt(spec, leaves, pre, lr=0.1, steps=2, lr_scales=scales, create_graph=True)
    logp = policies.log_prob(spec, new, post.observations, post.actions)
    n = post.weights.sum(-1)
    surrogate = ((torch.exp(logp - old_logp) * post.advantages * post.weights).sum(-1) / n).mean()
    (g,) = [flatten(dict(enumerate(torch.autograd.grad(surrogate, list(leaves.values())))))]  # type: ignore[arg-type]
    torch.testing.assert_close(meta.grad(), g, rtol=1e-8, atol=1e-12)
    plain = maml.MetaObjective(
        spec, theta, None, pre, inner_loop.adapt(spec, theta, pre, lr=0.1, steps=2), post,
        InnerLoopConfig(lr=0.1, steps=2), num_tasks=pre.weights.shape[0], first_order=False,
        ctx=distributed.Context(),
    )  # fmt: skip
    assert (plain.grad() - meta.grad()).abs().max() > 1e-4
