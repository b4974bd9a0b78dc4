"""The inner loop against answers worked out by hand, and the meta-gradient's order."""

from __future__ import annotations

import pytest
import torch

from metarl.core import inner_loop, policies
from metarl.core.inner_loop import EpisodeBatch, InnerLoopConfig, LossBatch


def _linear_softmax_problem() -> tuple[policies.PolicySpec, dict[str, torch.Tensor], LossBatch]:
    """A linear softmax policy at theta = 0 on two samples: s = (1, 2), a = (0, 1), A = (1, -1)."""
    spec = policies.PolicySpec(obs_dim=1, action_dim=2, hidden_sizes=())
    theta = {"layers.0.weight": torch.zeros(2, 1), "layers.0.bias": torch.zeros(2)}
    batch = LossBatch(
        observations=torch.tensor([[[1.0], [2.0]]]),
        actions=torch.tensor([[0, 1]]),
        advantages=torch.tensor([[1.0, -1.0]]),
        weights=torch.ones(1, 2),
    )
    return spec, theta, batch


def test_discounted_cumsum_by_hand() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last step is padding
    out = inner_loop.discounted_cumsum(rewards, mask, gamma=0.5)
    # 3 ; 2 + 0.5 * 3 = 3.5 ; 1 + 0.5 * 3.5 = 2.75 ; padding stays 0
    torch.testing.assert_close(out, torch.tensor([[2.75, 3.5, 3.0, 0.0]]))


def test_gae_by_hand() -> None:
    rewards = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    adv = inner_loop.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # delta_1 = 1 - 0.25 = 0.75 (value after the last step is 0)
    # delta_0 = 1 + 0.9 * 0.25 - 0.5 = 0.725 ; A_0 = 0.725 + 0.9 * 0.8 * 0.75 = 1.265
    torch.testing.assert_close(adv, torch.tensor([[1.265, 0.75]], dtype=torch.float64))


def test_gae_with_lambda_one_is_returns_minus_values() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(3, 7, generator=g, dtype=torch.float64)
    values = torch.rand(3, 7, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 7, dtype=torch.float64)
    mask[1, 4:] = 0
    adv = inner_loop.gae(rewards, values * mask, mask, gamma=0.97, lam=1.0)
    returns = inner_loop.discounted_cumsum(rewards, mask, 0.97)
    torch.testing.assert_close(adv, (returns - values) * mask)


def test_linear_baseline_recovers_a_linear_target() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 50, 4, generator=g, dtype=torch.float64)
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 1.0, -1.0]], dtype=torch.float64)
    y = (x @ w.unsqueeze(-1)).squeeze(-1)
    coef = inner_loop.fit_linear_baseline(x, y, reg=1e-10)
    torch.testing.assert_close(coef, w, atol=1e-6, rtol=0)


def test_linear_baseline_survives_rank_deficient_data() -> None:
    # One step, and duplicated/all-zero columns: X^T X is singular without the ridge term.
    feats = torch.zeros(1, 1, 5, dtype=torch.float64)
    feats[0, 0, 0] = feats[0, 0, 1] = 1.0
    coef = inner_loop.fit_linear_baseline(feats, torch.tensor([[2.0]], dtype=torch.float64), 1e-5)
    assert torch.isfinite(coef).all()
    assert (feats @ coef.unsqueeze(-1)).item() == pytest.approx(2.0, abs=1e-3)


def test_one_inner_step_by_hand() -> None:
    """Linear softmax policy, theta = 0 (uniform over 2 actions), advantages given.

    L = -(1/N) sum_t A_t log pi(a_t|s_t), d log pi(a|s)/d logit_k = 1[a=k] - 1/2, so with
    s = (1, 2), a = (0, 1), A = (1, -1), N = 2:
      dL/dW_0 = -(1/2) (1 * 0.5 * 1 + (-1) * (-0.5) * 2) = -0.75,  dL/dW_1 = +0.75
      dL/db_0 = -(1/2) (1 * 0.5 + (-1) * (-0.5)) = -0.5,           dL/db_1 = +0.5
    and theta' = theta - 0.1 * grad.
    """
    spec, theta, batch = _linear_softmax_problem()
    adapted = inner_loop.adapt(spec, theta, batch, lr=0.1, steps=1)
    torch.testing.assert_close(adapted["layers.0.weight"][0], torch.tensor([[0.075], [-0.075]]))
    torch.testing.assert_close(adapted["layers.0.bias"][0], torch.tensor([0.05, -0.05]))
    assert theta["layers.0.weight"].abs().sum() == 0, "theta must not be modified"


def test_padding_does_not_change_the_adapted_parameters() -> None:
    """The trainer pads to the env's horizon, the server to the longest episode sent: the same
    episodes must give the same theta' either way."""
    spec = policies.PolicySpec(obs_dim=3, action_dim=2, hidden_sizes=(8,))
    theta = policies.init_params(spec, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    eps = [
        (
            torch.randn(n, 3, generator=g),
            torch.randint(0, 2, (n,), generator=g),
            torch.rand(n, generator=g),
        )
        for n in (5, 9, 3)
    ]
    short = inner_loop.pad_episodes(eps)
    long = EpisodeBatch(
        *(torch.nn.functional.pad(t, (0, 0, 0, 11) if t.dim() == 4 else (0, 11)) for t in short)
    )
    assert long.mask.shape[-1] == 20
    cfg = InnerLoopConfig(lr=0.5, steps=2)
    a = inner_loop.adapt_on_episodes(spec, theta, short, cfg)
    b = inner_loop.adapt_on_episodes(spec, theta, long, cfg)
    for name in theta:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


def test_tasks_in_one_batch_adapt_independently() -> None:
    """Stacking K tasks (training) gives each task the theta' it gets alone (serving)."""
    spec = policies.PolicySpec(obs_dim=2, action_dim=3, hidden_sizes=(6,))
    theta = policies.init_params(spec, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    k, e, h = 3, 4, 6
    batch = EpisodeBatch(
        torch.randn(k, e, h, 2, generator=g),
        torch.randint(0, 3, (k, e, h), generator=g),
        torch.rand(k, e, h, generator=g),
        torch.ones(k, e, h),
    )
    cfg = InnerLoopConfig(lr=0.3, steps=2)
    together = inner_loop.adapt_on_episodes(spec, theta, batch, cfg)
    for i in range(k):
        alone = inner_loop.adapt_on_episodes(
            spec, theta, EpisodeBatch(*(t[i : i + 1] for t in batch)), cfg
        )
        for name in theta:
            torch.testing.assert_close(together[name][i], alone[name][0], atol=1e-6, rtol=0)


def _meta_problem():  # type: ignore[no-untyped-def]
    spec = policies.PolicySpec(obs_dim=3, action_dim=2, hidden_sizes=(4,))
    gen = torch.Generator().manual_seed(0)
    theta = {k: v.double() * 20 for k, v in policies.init_params(spec, gen).items()}
    cfg = InnerLoopConfig(lr=0.5, steps=2)

    def episodes() -> EpisodeBatch:
        return EpisodeBatch(
            torch.randn(2, 3, 5, 3, generator=gen, dtype=torch.float64),
            torch.randint(0, 2, (2, 3, 5), generator=gen),
            torch.randn(2, 3, 5, generator=gen, dtype=torch.float64),
            torch.ones(2, 3, 5, dtype=torch.float64),
        )

    pre, post = episodes(), inner_loop.prepare(episodes(), cfg)

    def outer(th, create_graph: bool = True):  # type: ignore[no-untyped-def]
        adapted = inner_loop.adapt_on_episodes(spec, th, pre, cfg, create_graph=create_graph)
        return inner_loop.reinforce_loss(spec, adapted, post).sum()

    return theta, outer


def test_meta_gradient_is_second_order() -> None:
    """d outer / d theta through two inner steps matches central finite differences (float64),
    and the first-order approximation measurably does not."""
    theta, outer = _meta_problem()
    params = {k: v.clone().requires_grad_() for k, v in theta.items()}
    second = torch.autograd.grad(outer(params), list(params.values()))
    params = {k: v.clone().requires_grad_() for k, v in theta.items()}
    first = torch.autograd.grad(outer(params, create_graph=False), list(params.values()))

    eps = 1e-6
    for idx, name in enumerate(theta):
        for flat in range(0, theta[name].numel(), 3):

            def f(delta: float, name: str = name, flat: int = flat) -> float:
                shifted = {k: v.clone() for k, v in theta.items()}
                shifted[name].view(-1)[flat] += delta
                return float(outer(shifted))

            fd = (f(eps) - f(-eps)) / (2 * eps)
            assert second[idx].view(-1)[flat].item() == pytest.approx(fd, rel=1e-5, abs=1e-8)
    gap = max((s - f).abs().max().item() for s, f in zip(second, first, strict=True))
    assert gap > 1e-4, "first- and second-order meta-gradients should differ"


def test_episode_weighting_by_hand() -> None:
    """loss_weighting="episode": each episode's steps are averaged, then the episodes (an episode
    that ends early weighs as much as a full one); "step" pools every real step."""
    mask = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])  # episodes of 1 and 3 steps
    step = inner_loop.sample_weights(mask, "step")
    episode = inner_loop.sample_weights(mask, "episode")
    torch.testing.assert_close(step, mask)
    torch.testing.assert_close(episode, torch.tensor([[[1.0, 0, 0], [1 / 3, 1 / 3, 1 / 3]]]))

    # theta = 0: log pi = log 1/2 for every action, so the loss is log(2) * weighted mean of A.
    spec = policies.PolicySpec(obs_dim=1, action_dim=2, hidden_sizes=())
    theta = policies.stack(
        spec, {"layers.0.weight": torch.zeros(2, 1), "layers.0.bias": torch.zeros(2)}, 1
    )
    adv = torch.tensor([[4.0, 0.0, 0.0, 1.0, 2.0, 3.0]])
    obs, acts = torch.ones(1, 6, 1), torch.zeros(1, 6, dtype=torch.long)
    pooled = inner_loop.reinforce_loss(spec, theta, LossBatch(obs, acts, adv, step.reshape(1, 6)))
    per_episode = inner_loop.reinforce_loss(
        spec, theta, LossBatch(obs, acts, adv, episode.reshape(1, 6))
    )
    log2 = torch.log(torch.tensor(2.0))
    # pooled: the mean over 4 steps, 2.5; per episode: (4 + 6 / 3) / 2 = 3
    torch.testing.assert_close(pooled, (log2 * (4 + 1 + 2 + 3) / 4).view(1))
    torch.testing.assert_close(per_episode, (log2 * (4 + (1 + 2 + 3) / 3) / 2).view(1))


def test_advantages_normalized_under_the_losses_weights() -> None:
    """Normalized advantages have mean 0 and (biased) variance 1 under the same weights as the
    losses: pooled steps, or the mean of per-episode means (pytorch-maml-rl's)."""
    gen = torch.Generator().manual_seed(0)
    k, e, h = 2, 3, 10
    mask = torch.ones(k, e, h)
    mask[0, 1, 4:] = 0  # an episode that ended early
    mask[1, 2, 1:] = 0
    batch = EpisodeBatch(
        torch.randn(k, e, h, 2, generator=gen) * mask.unsqueeze(-1),
        torch.randn(k, e, h, 2, generator=gen),
        torch.randn(k, e, h, generator=gen) * mask,
        mask,
    )
    for weighting in ("step", "episode"):
        adv = inner_loop.compute_advantages(batch, InnerLoopConfig(loss_weighting=weighting))
        w = inner_loop.sample_weights(mask, weighting)
        w = w / w.sum(dim=(1, 2), keepdim=True)
        torch.testing.assert_close((w * adv).sum(dim=(1, 2)), torch.zeros(k), atol=1e-6, rtol=0)
        torch.testing.assert_close((w * adv**2).sum(dim=(1, 2)), torch.ones(k), atol=1e-5, rtol=0)
        assert not adv[mask == 0].any()
    with pytest.raises(ValueError, match="loss_weighting must be 'step' or 'episode'"):
        InnerLoopConfig(loss_weighting="trajectory")  # type: ignore[arg-type]


def test_later_steps_lr_scale_by_hand() -> None:
    """Per-step rates: step 0 of a task runs at lr, every later step (also in a later call,
    counted by first_step) at lr * later_steps_lr_scale."""
    config = InnerLoopConfig(lr=0.1, later_steps_lr_scale=0.5)
    assert config.lr_scales(3) == [1.0, 0.5, 0.5]
    assert config.lr_scales(2, first_step=1) == [0.5, 0.5]
    assert InnerLoopConfig().lr_scales(2) == [1.0, 1.0]

    spec, theta, batch = _linear_softmax_problem()
    two = inner_loop.adapt(spec, theta, batch, lr=0.1, steps=2, lr_scales=config.lr_scales(2))
    one = inner_loop.adapt(spec, theta, batch, lr=0.1, steps=1)
    then = inner_loop.adapt(spec, one, batch, lr=0.05, steps=1)
    for name in theta:
        torch.testing.assert_close(two[name], then[name])
    with pytest.raises(ValueError, match="one learning-rate scale per step"):
        inner_loop.adapt(spec, theta, batch, lr=0.1, steps=2, lr_scales=[1.0])
