"""Train/serve parity: Adapt over gRPC gives the θ' that ``metarl.core.inner_loop`` computes in
process, and the server's numpy forward pass gives the actions and log-probabilities of
``metarl.core.policies`` (within 1e-6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.core import inner_loop, policies
from metarl.core.checkpoint import load_checkpoint
from metarl.core.inner_loop import InnerLoopConfig
from metarl.core.policies import PolicySpec
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_server.numpy_policy import Arch, NumpyPolicy
from metarl_server.registry import PolicyRegistry
from tests.server_support import (
    act,
    create,
    episode_proto,
    make_checkpoint,
    random_episodes,
    serving,
)
from tests.server_support import stub as make_stub

SPECS = {
    "nav": PolicySpec(2, 2, "gaussian", (64, 64)),
    "discrete": PolicySpec(4, 3, "categorical", (32,)),
    "relu": PolicySpec(3, 2, "gaussian", (16, 8), activation="relu"),
}


def flat(spec: PolicySpec, params: dict[str, torch.Tensor]) -> np.ndarray:
    return torch.cat([params[k].reshape(-1) for k in spec.param_shapes()]).detach().numpy()


@pytest.mark.parametrize("name", list(SPECS))
def test_numpy_forward_matches_torch(name: str) -> None:
    spec = SPECS[name]
    gen = torch.Generator().manual_seed(1)
    params = {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in
              policies.init_params(spec, gen).items()}  # fmt: skip
    pol = NumpyPolicy(Arch.from_spec_dict(spec.to_dict()))
    theta = flat(spec, params)
    obs = torch.randn(64, spec.obs_dim, generator=gen)
    ref_a, ref_lp = policies.act(spec, params, obs, deterministic=True)
    out = pol.forward(theta, obs.numpy())
    a, lp = pol.act(theta, out, True, np.random.default_rng(0))
    np.testing.assert_allclose(a, ref_a.numpy(), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(lp, ref_lp.numpy(), atol=1e-6, rtol=1e-6)
    # sampled actions: their log-probabilities are torch's for the same actions
    sa, slp = pol.act(theta, out, False, np.random.default_rng(0))
    ref = policies.log_prob(spec, params, obs, torch.as_tensor(sa)).numpy()
    np.testing.assert_allclose(slp, ref, atol=1e-5, rtol=1e-6)
    # stacked: K parameter sets in one pass, the same as one by one
    thetas = np.stack([theta + np.float32(0.01 * i) for i in range(5)])
    o = obs.numpy()[:15].reshape(5, 3, -1)
    stacked = pol.forward_stacked(thetas, o)
    for i in range(5):
        np.testing.assert_allclose(stacked[i], pol.forward(thetas[i], o[i]), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "learned_lr", "steps"),
    [("nav", False, 1), ("nav", True, 3), ("discrete", False, 2), ("relu", False, 2)],
)
def test_adapt_over_grpc_equals_the_inner_loop_in_process(
    tmp_path: Path, name: str, learned_lr: bool, steps: int
) -> None:
    spec = SPECS[name]
    path = make_checkpoint(
        tmp_path / name / "1",
        name=name,
        spec=spec,
        learned_lr=learned_lr,
        inner=InnerLoopConfig(lr=0.2, steps=1, discount=0.95, gae_lambda=0.9),
    )
    ckpt = load_checkpoint(path)
    action_dim = None if spec.distribution == "categorical" else spec.action_dim
    eps = [random_episodes(1, n, spec.obs_dim, action_dim, seed=n)[0] for n in (17, 40, 9, 25)]
    if action_dim is None:
        eps = [(o, a % spec.action_dim, r) for o, a, r in eps]
    probe = np.random.default_rng(7).normal(size=(32, spec.obs_dim)).astype(np.float32)

    registry = PolicyRegistry()
    registry.add_checkpoint(path)
    with serving(registry) as (server, channel):
        s = make_stub(channel)
        sid = create(s, name)
        s.Adapt(
            pb.AdaptRequest(session_id=sid, episodes=[episode_proto(*e) for e in eps], steps=steps)
        )
        served_theta = server.sessions.get(sid).params.copy()
        served_a, served_lp = act(s, sid, probe, deterministic=True)

    batch = inner_loop.pad_episodes([tuple(map(torch.as_tensor, e)) for e in eps])  # type: ignore[misc]
    adapted = inner_loop.adapt_on_episodes(
        ckpt.spec, ckpt.params, batch, ckpt.inner_loop, lr=ckpt.learning_rates, steps=steps
    )
    local = {k: v[0] for k, v in adapted.items()}
    np.testing.assert_allclose(served_theta, flat(spec, local), atol=1e-6, rtol=0)
    a, lp = policies.act(ckpt.spec, local, torch.as_tensor(probe), deterministic=True)
    np.testing.assert_allclose(served_a, a.numpy(), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(served_lp, lp.numpy(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "learned_lr", "steps"),
    [("nav", False, 1), ("nav", True, 3), ("discrete", False, 2), ("relu", False, 0)],
)
def test_adapt_with_loss_is_adapt_bit_for_bit(name: str, learned_lr: bool, steps: int) -> None:
    """The worker's ``adapt_with_loss``: the trainer's θ' exactly, and the loss before it."""
    spec = SPECS[name]
    gen = torch.Generator().manual_seed(3)
    params = policies.init_params(spec, gen)
    action_dim = None if spec.distribution == "categorical" else spec.action_dim
    eps = [random_episodes(1, n, spec.obs_dim, action_dim, seed=n)[0] for n in (12, 30, 5)]
    if action_dim is None:
        eps = [(o, a % spec.action_dim, r) for o, a, r in eps]
    batch = inner_loop.prepare(
        inner_loop.pad_episodes([tuple(map(torch.as_tensor, e)) for e in eps]),  # type: ignore[misc]
        InnerLoopConfig(),
    )
    lr = {k: torch.rand(v.shape, generator=gen) for k, v in params.items()} if learned_lr else 0.1
    reference = inner_loop.adapt(spec, params, batch, lr=lr, steps=steps)
    adapted, loss = inner_loop.adapt_with_loss(spec, params, batch, lr=lr, steps=steps)
    assert all(torch.equal(adapted[k], reference[k]) for k in reference)
    with torch.no_grad():
        before = inner_loop.reinforce_loss(spec, policies.stack(spec, params, 1), batch)
    torch.testing.assert_close(loss, before, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("deterministic", [True, False])
def test_one_observation_path_matches_the_batch_path(name: str, deterministic: bool) -> None:
    """``act_one`` (Python numbers, scalar draws) gives the actions and log-probabilities of
    ``act`` on a batch of one, drawing the same numbers from the same generator."""
    spec = SPECS[name]
    params = policies.init_params(spec, torch.Generator().manual_seed(4))
    pol = NumpyPolicy(Arch.from_spec_dict(spec.to_dict()))
    ps = pol.params(flat(spec, params))
    one, batch = np.random.default_rng(9), np.random.default_rng(9)
    for obs in np.random.default_rng(5).normal(size=(20, spec.obs_dim)).astype(np.float32):
        a, lp = pol.act_one(ps, pol.forward_one(ps, obs).tolist(), deterministic, one)
        ref_a, ref_lp = pol.act(ps, pol.forward(ps, obs[None]), deterministic, batch)
        np.testing.assert_allclose(np.asarray(a), ref_a[0], atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(lp, ref_lp[0], atol=1e-6, rtol=1e-6)


def test_later_adapt_calls_use_the_later_steps_rate(tmp_path: Path) -> None:
    """later_steps_lr_scale: a session's second Adapt continues its step count, so its step runs
    at lr * scale, as metarl eval's second round (first_step=1) does in process."""
    spec = SPECS["nav"]
    inner = InnerLoopConfig(lr=0.2, steps=1, later_steps_lr_scale=0.25)
    path = make_checkpoint(tmp_path / "nav" / "1", spec=spec, inner=inner)
    ckpt = load_checkpoint(path)
    first = random_episodes(3, 20, spec.obs_dim, spec.action_dim, seed=1)
    second = random_episodes(3, 20, spec.obs_dim, spec.action_dim, seed=2)

    registry = PolicyRegistry()
    registry.add_checkpoint(path)
    with serving(registry) as (server, channel):
        s = make_stub(channel)
        sid = create(s, "nav")
        for eps in (first, second):
            s.Adapt(pb.AdaptRequest(session_id=sid, episodes=[episode_proto(*e) for e in eps]))
        served = server.sessions.get(sid).params.copy()

    def local(params, eps, first_step):  # type: ignore[no-untyped-def]
        batch = inner_loop.pad_episodes([tuple(map(torch.as_tensor, e)) for e in eps])  # type: ignore[misc]
        out = inner_loop.adapt_on_episodes(spec, params, batch, inner, first_step=first_step)
        return {k: v[0] for k, v in out.items()}

    once = local(ckpt.params, first, 0)
    np.testing.assert_allclose(served, flat(spec, local(once, second, 1)), atol=1e-6, rtol=0)
    full_rate = flat(spec, local(once, second, 0))  # what a second step at lr would give
    assert np.abs(served - full_rate).max() > 1e-4
