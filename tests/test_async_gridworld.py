"""The asynchronous gridworld network (appendix D): its estimator against exact enumeration,
the exact objective (backward induction) against enumeration and finite differences, and the
Monte Carlo estimate against the exact gradient within a stated statistical tolerance."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scg
from scg.models.async_gridworld import Gridworld
from scg.tools.check import log_prob, trajectories

ROOT = Path(__file__).resolve().parents[1]


def random_units(world, seed=0):
    th = world.units()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in th.values():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return th


@pytest.mark.slow
def test_estimator_and_exact_objective_match_enumeration_on_a_tiny_grid():
    """One enumeration of a 1x2 grid over 2 steps: J and grad J by enumeration equal the
    backward induction's, and E[grad surrogate] equals grad J."""
    world = Gridworld(1, 2, 2)
    th = random_units(world)
    params = [th["u1"], th["u2"], th["pi"]]
    est = scg.compile(world.episodes(th))
    J, E = 0.0, 0.0
    for o in trajectories(est, (1,)):
        p = log_prob(o.sites).exp()
        J, E = J + p * o.objective, E - p.detach() * o.loss
    exact = world.exact_objective(th)
    assert torch.allclose(J, exact, atol=1e-12)
    g_enum = torch.autograd.grad(J, params, retain_graph=True)
    g_dp = torch.autograd.grad(exact, params)
    g_est = torch.autograd.grad(E, params)
    assert torch.cat([g.flatten() for g in g_enum]).norm() > 1e-3
    for a, b, c in zip(g_enum, g_dp, g_est):
        assert torch.allclose(a, b, atol=1e-12)
        assert torch.allclose(a, c, atol=1e-12)


def test_exact_objective_gradient_matches_finite_differences():
    world = Gridworld(2, 3, 8)
    th = random_units(world, seed=3)
    g = torch.autograd.grad(world.exact_objective(th), [th["pi"]])[0]
    eps = 1e-6
    with torch.no_grad():
        for idx in [(0, 0, 1), (1, 0, 2), (1, 1, 3)]:
            th["pi"][idx] += eps
            up = world.exact_objective(th)
            th["pi"][idx] -= 2 * eps
            down = world.exact_objective(th)
            th["pi"][idx] += eps
            assert abs((up - down) / (2 * eps) - g[idx]) < 1e-7


def test_transition_rows_are_distributions():
    world = Gridworld(3, 3, 5)
    P = world.transition(random_units(world))
    assert torch.allclose(P.sum(1), torch.ones(P.shape[0]))
    assert (P >= 0).all()


@pytest.mark.slow
def test_monte_carlo_estimate_within_four_standard_errors_of_exact_gradient():
    world = Gridworld(2, 3, 8)
    th = random_units(world, seed=1)
    params = [th["u1"], th["u2"], th["pi"]]
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(world.exact_objective(th),
                                                                params)])
    est = scg.compile(world.episodes(th), baseline="loo")
    grads = []
    for _ in range(16):
        gs = torch.autograd.grad(est(512).loss, params)
        grads.append(-torch.cat([g.flatten() for g in gs]))
    grads = torch.stack(grads)
    mean, se = grads.mean(0), grads.std(0) / len(grads) ** 0.5
    z = ((mean - exact) / se.clamp(min=1e-6)).abs()
    assert z.max() < 4.5, z.max()   # 4.5 SE over ~12 coordinates: false alarm < 1e-4


@pytest.mark.parametrize("rows, cols, horizon", [(0, 3, 5), (1, 1, 5), (2, 2, 0)])
def test_bad_gridworld(rows, cols, horizon):
    with pytest.raises(ValueError, match="gridworld needs at least 2 cells|horizon must be"):
        Gridworld(rows, cols, horizon)


@pytest.mark.slow
def test_example_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "async_gridworld.py"),
                           "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (tmp_path / "async_gridworld.md").read_text()
    assert "| episodes | cosine" in page
    assert (tmp_path / "img" / "async_gridworld_cosine.png").exists()
    assert (tmp_path / "img" / "async_gridworld_learning.png").exists()
