"""The iterated prisoner's dilemma written in scg (models/ipd.py) against its closed form
(models/ipd_exact.py, written without scg): per-agent gradients from one run, the DiCE Hessian
block grad_1 grad_2 V_1, the LOLA look-ahead step, and exact enumeration of a short game.

The statistical tests run S identical seeds in one call: each seed's parameters get exactly
their own episodes' gradient, so one run gives S independent estimates, and err/se (the
estimate's mean minus the closed form, over its standard error) is N(0, 1) per component
when the estimator is unbiased. Each test also shows the statistic has power: a wrong target
(the shared gradient, a first-order box) is far outside the bound.
"""

import pyro
import pytest
import torch

import scg
from scg.models import ipd as M
from scg.models import lola
from scg.models.ipd_exact import values_finite

TH1 = torch.tensor([0.4, 1.0, -0.6, 0.3, -0.2], dtype=torch.float64)
TH2 = torch.tensor([-0.3, 0.8, 0.2, -0.9, 0.5], dtype=torch.float64)
BOUND = 5.0   # max |err/se| over a few dozen N(0, 1) components: exceeded with p < 1e-4


def seeds(theta, S):
    return theta.repeat(S, 1).requires_grad_()


def zscore(samples, exact):
    """(mean - exact) / se per component of ``samples`` [S, ...]."""
    mean, se = samples.mean(0), samples.std(0) / samples.shape[0] ** 0.5
    return (mean - exact) / se


def exact_gradients(T, gamma=M.GAMMA):
    """(grad_1 V1, grad_2 V2, grad_1 (V1 + V2), grad_2 (V1 + V2)) of the T-step values."""
    t1, t2 = TH1.clone().requires_grad_(), TH2.clone().requires_grad_()
    v1, v2 = values_finite(t1, t2, gamma, T)
    g11, g12 = torch.autograd.grad(v1, (t1, t2), retain_graph=True)
    g21, g22 = torch.autograd.grad(v2, (t1, t2))
    return g11, g22, g11 + g21, g12 + g22


@pytest.mark.parametrize("order", [1, "any"])
def test_per_agent_gradients_from_one_run_match_the_closed_form(order):
    S, N, T = 400, 4, 150
    est = M.compile_ipd(order=order)
    pyro.set_rng_seed(0)
    t1, t2 = seeds(TH1, S), seeds(TH2, S)
    out = est(t1, t2, N, T)
    g1, = torch.autograd.grad(out.local["A"], t1, retain_graph=True)
    g2, = torch.autograd.grad(out.local["B"], t2)
    own1, own2, shared1, shared2 = exact_gradients(T)
    z_own = torch.cat([zscore(-g1, own1), zscore(-g2, own2)])
    assert z_own.abs().max() < BOUND, z_own
    # power: each agent's gradient of the shared J (the estimator before to=) is rejected
    z_shared = torch.cat([zscore(-g1, shared1), zscore(-g2, shared2)])
    assert z_shared.abs().max() > 3 * BOUND, z_shared
    # objectives estimate each agent's own value, summed over the seeds
    v1, v2 = values_finite(TH1, TH2, M.GAMMA, T)
    assert float(out.objectives["A"]) / S == pytest.approx(float(v1), rel=0.05)
    assert float(out.objectives["B"]) / S == pytest.approx(float(v2), rel=0.05)


def exact_mixed_hessian(T, gamma=M.GAMMA):
    """grad_1 grad_2 V1 [5, 5] of the T-step value: entry [j, k] = d2 V1 / d th1_j d th2_k."""
    def v1(t1, t2):
        return values_finite(t1, t2, gamma, T)[0]
    return torch.autograd.functional.hessian(v1, (TH1, TH2))[0][1]


def sampled_mixed_hessians(T, S, N, seed=1):
    """Per seed, the mixed Hessian [S, 5, 5] of agent 1's DiCE objective -out.local['A']."""
    est = M.compile_ipd()
    pyro.set_rng_seed(seed)
    t1, t2 = seeds(TH1, S), seeds(TH2, S)
    out = est(t1, t2, N, T)
    g1, = torch.autograd.grad(-out.local["A"], t1, create_graph=True)   # [S, 5]
    rows = [torch.autograd.grad(g1[:, j].sum(), t2, retain_graph=True)[0] for j in range(5)]
    return torch.stack(rows, 1).detach()      # seeds are independent: no cross-seed terms


def test_dice_hessian_block_matches_the_closed_form():
    T = 150
    H = sampled_mixed_hessians(T, S=400, N=4)
    exact = exact_mixed_hessian(T)
    assert exact.abs().max() > 0.5
    z = zscore(H, exact)
    assert z.abs().max() < BOUND, z


def test_a_first_order_box_fails_the_hessian_test(monkeypatch):
    from scg.estimators import dice
    monkeypatch.setattr(dice, "box", lambda x: 1 + x - x.detach())
    T = 150
    z = zscore(sampled_mixed_hessians(T, S=400, N=4), exact_mixed_hessian(T))
    assert z.abs().max() > 2 * BOUND, z


def test_lola_step_follows_the_exact_look_ahead_gradient():
    """lola_step's direction for agent 1 against the closed form's grad_1 V1(th1, th2 + eta *
    grad_2 V2): unbiased up to the look-ahead's O(eta^2 / N) curvature term, small here."""
    S, N, T, eta, lr = 200, 32, 20, 0.3, 1.0
    est = M.compile_ipd()
    pyro.set_rng_seed(2)
    t1, t2 = seeds(TH1, S), seeds(TH2, S)
    n1, n2 = lola.lola_step(est, t1, t2, (N, T), lr, eta)
    d1, d2 = (n1 - t1).detach() / lr, (n2 - t2).detach() / lr

    a1, a2 = TH1.clone().requires_grad_(), TH2.clone().requires_grad_()
    v1, v2 = values_finite(a1, a2, M.GAMMA, T)
    g1, = torch.autograd.grad(v1, a1, create_graph=True)
    g2, = torch.autograd.grad(v2, a2, create_graph=True)
    e1, = torch.autograd.grad(values_finite(a1, a2 + eta * g2, M.GAMMA, T)[0], a1,
                              retain_graph=True)
    e2, = torch.autograd.grad(values_finite(a1 + eta * g1, a2, M.GAMMA, T)[1], a2)
    z = torch.cat([zscore(d1, e1.detach()), zscore(d2, e2.detach())])
    assert z.abs().max() < BOUND, z
    naive1, = torch.autograd.grad(values_finite(a1, a2, M.GAMMA, T)[0], a1)
    assert zscore(d1, naive1).abs().max() > BOUND   # the look-ahead term is seen


def test_the_zoo_entry_checks_exactly():
    setup = scg.zoo.load("ipd")
    net, args, kw = setup.check
    first = scg.check(net, *args, **kw)
    assert first.ok and first.row("A").norm_exact > 1e-3, str(first)
    second = scg.check(net, *args, order=2, **kw)
    assert second.ok and second.row("hessian A").norm_exact > 1e-3, str(second)


def test_objective_argument_and_bad_thetas():
    est = M.compile_ipd()
    t = TH1.clone().requires_grad_()
    out = est(t, TH2, 2, 3, "A")
    assert set(out.objectives) == {"A", "B"}
    assert torch.equal(out.objectives["A"], out.objectives["B"])   # one shared J = J_A
    with pytest.raises(scg.ScgError, match="objective must be one of"):
        est(t, TH2, 2, 3, "C")
    with pytest.raises(scg.ScgError, match=r"theta1 must have shape \[5\] or \[S, 5\]"):
        est(torch.zeros(4), TH2, 2, 3)
    with pytest.raises(scg.ScgError, match="same shape"):
        est(torch.zeros(2, 5), TH2, 2, 3)


def test_trainer_trains_the_naive_zoo_entry():
    setup = scg.zoo.load("ipd", episodes=8, T=10)
    train = {k: v for k, v in setup.train.items() if k != "updates"}
    trainer = scg.Trainer(setup.network, setup.inputs, progress=False, seed=0,
                          **setup.options, **train)
    before = {k: p.detach().clone() for k, p in setup.modules.items()}
    trainer.fit(2)
    for k, p in setup.modules.items():
        assert not torch.equal(before[k], p.detach()), k


def test_own_objectives_through_a_look_ahead_are_refused():
    """theta_2' = theta_2 + f(theta_1) makes theta_1 reach both agents, which climb different
    objectives: an error pointing to the look-ahead's form (only J_A's costs, no to=)."""
    est = M.compile_ipd()
    t1 = TH1.clone().requires_grad_()
    with pytest.raises(scg.ScgError, match=r"'A' and 'B', which climb different.*without to="):
        est(t1, TH2 + 0.1 * t1, 2, 3)
    est(t1, TH2 + 0.1 * t1, 2, 3, "A")   # the look-ahead's own form


@pytest.mark.parametrize("kind", ["naive", "lola"])
def test_generic_exact_learner_is_the_ipd_one(kind):
    """lola.exact_step on the IPD's closed form is ipd_exact's own naive and LOLA step."""
    from scg.models import ipd_exact

    def v(t1, t2):
        return tuple(x.sum() for x in ipd_exact.values(t1, t2, M.GAMMA))
    t1, t2 = torch.stack([TH1, TH2]), torch.stack([TH2, -TH1])
    got = lola.exact_step(kind, v, t1, t2, 0.7, 0.4)
    want = ipd_exact.naive_step(t1, t2, 0.7, M.GAMMA) if kind == "naive" else \
        ipd_exact.lola_step(t1, t2, 0.7, 0.4, M.GAMMA)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-12)
    with pytest.raises(scg.ScgError, match="unknown learner"):
        lola.exact_step("greedy", v, t1, t2, 0.7, 0.4)


def test_example_smoke(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(root / "examples" / "lola_ipd.py"), "--smoke",
                           "--out", str(tmp_path)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (tmp_path / "lola_ipd.md").read_text()
    assert "| lola | scg, sampled |" in page and "| naive | closed form |" in page
    assert "## Matching pennies" in page and "MISMATCH" not in page
    assert (tmp_path / "img" / "lola_ipd.png").exists()
    assert (tmp_path / "lola_ipd.json").exists()
