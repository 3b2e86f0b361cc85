"""REINFORCE (seed 003): the seed's remark checked exactly, the CartPole network's estimator
against exact enumeration and a Monte Carlo test, bad input, and the example's --smoke run.

The remark: with reward 1 for the target output y and 0 otherwise, the expected policy
gradient is the maximum-likelihood gradient scaled by the probability of the target,

    E_a[∇ log π(a) · 1{a = y}] = Σ_a π(a) ∇ log π(a) 1{a = y} = π(y) ∇ log π(y) = ∇ π(y),

so REINFORCE on a 0/1 "hit the target" reward ascends the likelihood of the target, each
example weighted by how likely the policy already finds it.
"""

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyro.distributions as dist
import pytest
import torch

import scg
from scg.models.reinforce import Episodes, build, episode_seeds, mlp, tilted_cartpole
from scg.tools.check import log_prob, trajectories

ROOT = Path(__file__).resolve().parents[1]


def flat(gs):
    return torch.cat([g.flatten() for g in gs])


# ---- the seed's remark --------------------------------------------------------------------
def one_step(n_in=3, n_out=4):
    """A one-step network: x -> Categorical policy a; reward 1{a = y}."""
    policy = torch.nn.Linear(n_in, n_out)

    @scg.network
    def classify(x, y):
        with scg.episodes(x.shape[0]):
            a = scg.message("a", dist.Categorical(logits=policy(x)), coagent="policy")
            scg.reward("hit", (a == y).to(x.dtype))
    return classify, policy


def test_hit_reward_gradient_is_the_likelihood_gradient_scaled_by_the_target_probability():
    classify, policy = one_step()
    x, y = torch.randn(2, 3), torch.tensor([1, 3])
    report = scg.check(classify, x, y, method="enumerate")   # 16 joint values
    assert report.ok and report.size == 16, report
    params = list(policy.parameters())
    est = scg.compile(classify)
    expected = 0.0
    for out in trajectories(est, (x, y)):                   # E[grad of the surrogate]
        expected = expected - log_prob(out.sites).exp().detach() * out.loss
    expected = flat(torch.autograd.grad(expected, params))
    logp = torch.log_softmax(policy(x), -1)[torch.arange(2), y]          # log π(y_i | x_i)
    ml = [flat(torch.autograd.grad(lp, params, retain_graph=True)) for lp in logp]
    scaled = sum(p.exp().detach() * g for p, g in zip(logp, ml)) / 2    # mean π(y) ∇log π(y)
    grad_pi = flat(torch.autograd.grad(logp.exp().mean(), params))        # ∇ mean π(y)
    assert expected.norm() > 1e-3
    assert torch.allclose(expected, scaled, atol=1e-12)
    assert torch.allclose(scaled, grad_pi, atol=1e-12)


def test_with_one_example_the_expected_gradient_points_along_the_likelihood_gradient():
    """One example: E[grad] = π(y) ∇log π(y), the ML gradient's direction, π(y) its scale."""
    classify, policy = one_step()
    x, y = torch.randn(1, 3), torch.tensor([2])
    params = list(policy.parameters())
    report = scg.check(classify, x, y, method="enumerate")
    logp = torch.log_softmax(policy(x), -1)[0, 2]
    ml = flat(torch.autograd.grad(logp, params))
    assert report.ok
    assert torch.allclose(report.estimate, logp.exp().detach() * ml, atol=1e-12)
    cos = report.estimate @ ml / (report.estimate.norm() * ml.norm())
    assert abs(cos - 1.0) < 1e-12


# ---- the CartPole network ----------------------------------------------------------------
def tiny(hidden=8):
    """Episodes of CartPole started near failure over 4 steps (float64 policy)."""
    return Episodes(mlp(4, 2, hidden), tilted_cartpole, horizon=4)


@pytest.mark.parametrize("baseline", ["none", "loo"])
@pytest.mark.slow
def test_cartpole_estimator_matches_enumeration(baseline):
    """The real CartPole dynamics, actions leaving torch through .numpy() (an escape),
    episodes ending at different steps (scg.done): exact to float precision."""
    torch.manual_seed(1)
    ep = tiny()
    report = scg.check(ep.network, torch.arange(2), method="enumerate", baseline=baseline)
    assert report.ok and report.size == 64, report
    assert report.row("total").norm_exact > 0.1
    lengths = set()
    for out in trajectories(scg.compile(ep.network), (torch.arange(2),)):
        lengths |= set(out.value.tolist())
    assert lengths == {2.0, 3.0, 4.0}      # the actions decide when the pole falls


def test_zoo_check_entry_passes():
    net, args, options = build().check
    assert scg.check(net, *args, **options).ok


def exact_objective(ep, seeds):
    """J = mean over episodes of E[return], each episode enumerated alone (8 trajectories;
    the batch's joint space would be 8^N). Autograd through it gives the exact gradient."""
    est = scg.compile(ep.network)
    return sum(log_prob(o.sites).exp() * o.objective for s in seeds
               for o in trajectories(est, (s[None],))) / len(seeds)


@pytest.mark.slow
def test_cartpole_monte_carlo_estimate_within_standard_errors_of_exact_gradient():
    """The sampled estimator (leave-one-out, 64 episodes from 8 start states repeated) against
    the exact gradient: every coordinate within 4.5 standard errors over 16 estimates."""
    torch.manual_seed(2)
    ep = tiny(hidden=4)
    params = list(ep.policy.parameters())
    starts = torch.arange(8)
    exact = flat(torch.autograd.grad(exact_objective(ep, starts), params))
    est = scg.compile(ep.network, baseline="loo")
    seeds = starts.repeat(8)    # each start state 8 times: the estimate averages over them
    grads = torch.stack([-flat(torch.autograd.grad(est(seeds).loss, params))
                         for _ in range(16)])
    mean, se = grads.mean(0), grads.std(0) / len(grads) ** 0.5
    z = ((mean - exact) / se.clamp(min=1e-6)).abs()
    assert exact.norm() > 0.05
    assert z.max() < 4.5, z.max()


def test_runs_are_reproducible_and_masked():
    """Same seeds and same torch seed: the same episodes; finished episodes earn nothing."""
    setup = build(batch=4)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        est = scg.compile(setup.network, **setup.options)
        out = est(*setup.inputs(3))
        runs.append((out.value.copy(), out.objective.item()))
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert runs[0][1] == pytest.approx(runs[0][0].mean())       # J estimate = mean return
    assert (runs[0][0] >= 8).all() and (runs[0][0] <= 500).all()


def test_episode_seeds_are_disjoint():
    a = torch.cat([episode_seeds(s, u, 10) for s in range(3) for u in range(50)])
    assert len(set(a.tolist())) == a.numel()


# ---- bad input ---------------------------------------------------------------------------
class Image(gym.Env):
    observation_space = gym.spaces.Box(0.0, 1.0, (2, 2))
    action_space = gym.spaces.Discrete(2)


class Continuous(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (4,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))


class WrongShape(gym.Env):
    """Declares 4 observations, returns 3."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, dtype=np.float32), {}


@pytest.mark.parametrize("make_env, policy, kwargs, match", [
    (Image, mlp(4, 2), {"horizon": 3}, "flat Box observation space"),
    (Continuous, mlp(4, 2), {"horizon": 3}, "Discrete action space"),
    (None, mlp(3, 2), {}, "cannot read observations of size 4"),
    (None, mlp(4, 3), {}, r"expected \(3, 2\): one logit per action"),
    (None, mlp(4, 2), {"horizon": 0}, "horizon must be a positive int"),
    (None, mlp(4, 2), {"chunk": 0}, "chunk must be a positive int"),
])
def test_bad_setup(make_env, policy, kwargs, match):
    with pytest.raises(scg.ScgError, match=match):
        Episodes(policy, make_env, **kwargs)


def test_bad_observation_shape_at_run_time():
    ep = Episodes(mlp(4, 2), WrongShape, horizon=3)
    with pytest.raises(scg.ScgError, match=r"observations do not match its observation space"):
        ep.network(torch.arange(2))


@pytest.mark.parametrize("seeds", [torch.zeros(2), torch.zeros(2, 2, dtype=torch.long),
                                   torch.zeros(0, dtype=torch.long), [0, 1]])
def test_bad_seeds(seeds):
    ep = Episodes(mlp(4, 2))
    with pytest.raises(scg.ScgError, match="1-D integer tensor of per-episode seeds"):
        ep.network(seeds)


@pytest.mark.parametrize("batch", [1, 0, 2.5])
def test_bad_batch(batch):
    with pytest.raises(scg.ScgError, match="batch must be an int >= 2"):
        build(batch=batch)


@pytest.mark.slow
def test_example_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "reinforce.py"),
                           "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (tmp_path / "reinforce.md").read_text()
    assert "| seed | updates | episodes |" in page
    assert (tmp_path / "reinforce.json").exists()
    assert (tmp_path / "img" / "reinforce_learning.png").exists()
