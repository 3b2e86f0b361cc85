"""The benchmarks compare like with like: on the same random draws, scg's gradient equals the
hand-written loss's gradient for every workload."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.workloads import Chain, Layer, OnlineWalk, TalkingAgents

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def grads(work, which, seed):
    params = [p for g in work.opt.param_groups for p in g["params"]]
    for p in params:
        p.grad = None
    step, work.step = work.step, lambda loss: loss.backward()
    torch.manual_seed(seed)
    try:
        getattr(work, f"{which}_iteration")()
    finally:
        work.step = step
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("make", [lambda: Chain(12, B=8), lambda: Layer(20, B=8),
                                  lambda: TalkingAgents(B=16, T=4),
                                  pytest.param(lambda: TalkingAgents(B=16, T=4, device="cuda"),
                                               marks=pytest.mark.skipif(
                                                   not torch.cuda.is_available(),
                                                   reason="needs a CUDA device"))],
                         ids=["chain", "layer", "talking_agents", "talking_agents_cuda"])
def test_scg_gradient_equals_hand_written(make):
    torch.set_default_dtype(torch.float32)
    work = make()
    if isinstance(work, TalkingAgents):
        D = work.data()
        work.scg_iteration, work.hand_iteration = (
            lambda f=work.scg_iteration: f(D), lambda f=work.hand_iteration: f(D))
    a, b = grads(work, "scg", 3), grads(work, "hand", 3)
    assert any(x.abs().sum() > 0 for x in a)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5), (x, y)


@pytest.mark.parametrize("mine, reference", [("scg_iteration", "hand_iteration"),
                                              ("autograd_iteration", "hand_iteration")])
def test_online_walk_equals_hand_written_actor_critic(mine, reference):
    """Online: traces carry across iterations, so compare 40 SGD steps from one seed (walks
    reach the goal and restart on the way), policy and critic: scg against the closed-form
    update, and the benchmark's second reference (per-episode gradients from autograd)."""
    torch.set_default_dtype(torch.float32)
    a, b = OnlineWalk(S=6, B=8), OnlineWalk(S=6, B=8)
    torch.manual_seed(3)
    for _ in range(40):
        getattr(a, mine)()
    torch.manual_seed(3)
    for _ in range(40):
        getattr(b, reference)()
    assert a.theta.abs().max() > 0.01 and a.V.abs().max() > 0.01
    assert torch.allclose(a.theta, b.theta, atol=1e-6)
    assert torch.allclose(a.V, b.V, atol=1e-6)


def test_dice_benchmark_measures_the_scg_update(tmp_path):
    """benchmarks/dice.py --quick times both LOLA-DiCE updates (the scg row is not skipped), and
    scg's update returns the hand-written one's three quantities: finite [5] gradients, the
    mixed second-order term nonzero. (Their expectations: tests/test_ipd.py.)"""
    import json

    import pyro

    from benchmarks import dice

    torch.set_default_dtype(torch.float32)
    out = tmp_path / "dice.json"
    assert dice.main(["--quick", "--repeats", "1", "--out", str(out)]) == 0
    rows = {r["implementation"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"hand-written torch", "hand-written, per step", "scg order='any'"}
    assert all(r["ms"] > 0 for r in rows.values())
    pyro.set_rng_seed(0)
    theta1, theta2, g = dice._thetas()
    mine = dice.scg_update(theta1, theta2, 8, 5, 0.96, g)
    hand = dice.hand_update(theta1, theta2, 8, 5, 0.96, g)
    for x, y in zip(mine, hand):
        assert x.shape == y.shape == (5,) and torch.isfinite(x).all()
        assert not x.requires_grad
    assert mine[2].abs().sum() > 0


def test_per_step_dice_reference_is_unbiased():
    """benchmarks/dice.py's per-step hand-written update estimates grad_1 V1 and grad_2 V2 of
    the finite-horizon closed form (err/se over 40 batches; the opposite direction is many se
    away). Its LOLA term multiplies two sampled factors, so it is not compared here."""
    from benchmarks import dice
    from scg.models.ipd_exact import values_finite

    torch.manual_seed(1)
    theta1, theta2, g = dice._thetas()
    theta1, theta2 = theta1.double().detach().requires_grad_(), \
        theta2.double().detach().requires_grad_()
    V1, V2 = values_finite(theta1, theta2, 0.9, 4)
    exact = torch.cat([torch.autograd.grad(V1, theta1, retain_graph=True)[0],
                       torch.autograd.grad(V2, theta2)[0]])
    draws = torch.stack([torch.cat(dice.stepwise_update(theta1, theta2, 256, 4, 0.9, None)[:2])
                         for _ in range(40)])
    z = (draws.mean(0) - exact) / (draws.std(0) / 40 ** 0.5)
    assert z.abs().max() < 5, z
    wrong = (draws.mean(0) + exact) / (draws.std(0) / 40 ** 0.5)
    assert wrong.abs().max() > 5


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")
                                          if '__name__ == "__main__"' in p.read_text()))
def test_every_benchmark_script_starts(script):
    """Run as a script, a benchmark's folder comes first on sys.path: a file there named like a
    module torch imports (cuda.py did) breaks ``import torch``. ``--help`` must work."""
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout
