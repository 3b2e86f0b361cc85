"""The cooperative matrix game (seed 004): the seed's gradient analysis, every variant's
estimator against exact enumeration (the KL cost's pathwise gradient included), the mutual
information on known cases, bad input, and the example's smoke run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scg
from scg.models.matrix_game import (
    PAYOFF,
    VARIANTS,
    Game,
    annealed,
    expected_payoff,
    factored_gradient,
    factored_objective,
    mutual_information,
)
from scg.tools.check import log_prob, trajectories

ROOT = Path(__file__).resolve().parents[1]
PQ = [(0.5, 0.5), (0.2, 0.2), (0.1, 0.1), (0.3, 0.7), (0.9, 0.15)]


def shifted(variant, seeds=1, coef_seed=0):
    """A float64 game at a random (asymmetric) parameter point."""
    game = Game(variant, 0.3, seeds, torch.float64)
    gen = torch.Generator().manual_seed(coef_seed)
    with torch.no_grad():
        for p in game.params.values():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return game


def flat_grad(y, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(y, params, retain_graph=True)])


# ---- the seed's gradient analysis --------------------------------------------------------------
@pytest.mark.parametrize("p, q", PQ)
def test_factored_objective_is_the_enumerated_payoff(p, q):
    table = torch.tensor([[(1 - p) * (1 - q), (1 - p) * q], [p * (1 - q), p * q]])
    assert math.isclose(float((table * PAYOFF).sum()), factored_objective(p, q), abs_tol=1e-12)


@pytest.mark.parametrize("p, q", PQ)
def test_factored_gradient_is_20q_minus_5(p, q):
    """dJ/dp = 20q - 5 (autograd and central differences of the enumerated J). The issue's
    -15 + 20q does not follow from the payoff [[0, -5], [-5, 10]]."""
    pt = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(factored_objective(pt, q), pt)
    eps = 1e-6
    fd = (factored_objective(p + eps, q) - factored_objective(p - eps, q)) / (2 * eps)
    assert math.isclose(g.item(), 20 * q - 5, abs_tol=1e-12)
    assert math.isclose(fd, 20 * q - 5, abs_tol=1e-8)
    assert factored_gradient(q) == pytest.approx(20 * q - 5)
    assert not math.isclose(g.item(), -15 + 20 * q, abs_tol=1e-3)  # the formula


def test_factored_gradient_changes_sign_at_one_quarter():
    """Independent ascent is drawn to (safe, safe) when the partner is risky w.p. < 1/4."""
    assert factored_gradient(0.25) == 0
    assert factored_gradient(0.2) < 0 < factored_gradient(0.3)


def test_factored_estimator_follows_the_analysis():
    """scg's estimator on the factored network, in expectation (exact enumeration over two
    episodes): d/dlogit1 = p(1-p) (20q - 5), d/dlogit2 = q(1-q) (20p - 5)."""
    game = shifted("factored", coef_seed=3)
    th1, th2 = game.params["agent1"], game.params["agent2"]
    p, q = torch.sigmoid(th1).item(), torch.sigmoid(th2).item()
    est = scg.compile(game.network, baseline="loo")
    E = 0.0
    for out in trajectories(est, (2, 0.0)):
        E = E - log_prob(out.sites).exp().detach() * out.loss
    g1, g2 = flat_grad(E, [th1]), flat_grad(E, [th2])
    assert g1.item() == pytest.approx(p * (1 - p) * factored_gradient(q), abs=1e-12)
    assert g2.item() == pytest.approx(q * (1 - q) * factored_gradient(p), abs=1e-12)
    assert abs(g1.item()) > 1e-2 and abs(g2.item()) > 1e-2


# ---- estimators against exact enumeration --------------------------------------------------
@pytest.mark.parametrize("variant, coef", [("factored", 0.0), ("joint_kl", 0.0),
                                           ("joint_kl", 0.7), ("mixture", 0.0),
                                           ("mixture", 0.4), ("mixture", 1.0)])
def test_scg_check_enumeration(variant, coef):
    game = shifted(variant)
    report = scg.check(game.network, 2, coef, method="enumerate", baseline="loo")
    assert report.ok, report
    assert report.size == 16
    assert report.row("total").norm_exact > 1e-3


def closed_form(game, variant, coef):
    """J of all seeds (summed over the replica plate) from the executed policy, in closed
    form: expected payoff, minus lam * MI for joint_kl."""
    policy = game.policy(coef)
    J = expected_payoff(policy)
    if variant == "joint_kl":
        J = J - coef * mutual_information(policy)
    return J.sum()


@pytest.mark.parametrize("variant, coef, N, baseline, size", [
    ("factored", 0.0, 1, "none", 16), ("joint_kl", 0.7, 2, "loo", 256),
    ("mixture", 0.4, 1, "none", 16)])
@pytest.mark.slow
def test_enumerated_estimator_equals_closed_form_gradient_over_two_seeds(variant, coef, N,
                                                                          baseline, size):
    """Two replicas of N episodes: sum_tau p(tau) * objective equals the closed-form J summed
    over seeds, and E[-grad loss] equals its gradient, so each seed's parameters get exactly
    their own gradient."""
    game = shifted(variant, seeds=2, coef_seed=1)
    params = list(game.params.values())
    est = scg.compile(game.network, baseline=baseline)
    J, E, n = 0.0, 0.0, 0
    for out in trajectories(est, (N, coef)):
        p = log_prob(out.sites).exp()
        J, E, n = J + p * out.objective, E - p.detach() * out.loss, n + 1
    exact = closed_form(game, variant, coef)
    assert n == size
    assert torch.allclose(J, exact, atol=1e-12)
    assert torch.allclose(flat_grad(E, params), flat_grad(exact, params), atol=1e-12)


def test_kl_cost_pathwise_gradient():
    """The KL cost enters the estimator as its exact pathwise gradient: the enumerated
    estimator's gradient at lam minus at lam = 0 is -lam * grad MI, and grad MI matches finite
    differences of the mutual information."""
    game = shifted("joint_kl", coef_seed=2)
    theta = game.params["joint"]
    est = scg.compile(game.network)

    def expected_grad(lam):
        E = 0.0
        for out in trajectories(est, (2, lam)):
            E = E - log_prob(out.sites).exp().detach() * out.loss
        return flat_grad(E, [theta])

    lam = 0.8
    diff = expected_grad(lam) - expected_grad(0.0)
    mi = lambda th: mutual_information(torch.softmax(th, -1)).sum()  # noqa: E731
    g_mi = flat_grad(mi(theta), [theta])
    assert g_mi.norm() > 1e-2
    assert torch.allclose(diff, -lam * g_mi, atol=1e-12)
    eps = 1e-6
    with torch.no_grad():
        for k in range(4):
            e = torch.zeros_like(theta)
            e[0, k] = eps
            fd = (mi(theta + e) - mi(theta - e)) / (2 * eps)
            assert abs(fd.item() - g_mi[k].item()) < 1e-8


def test_one_run_equals_the_hand_written_surrogate():
    """A brute-force twin of one run (no baseline): grad loss = -(1/N) sum_n grad log pi(a_n)
    r_n + lam grad MI. The KL cost does not depend on the sampled action, so it must not be
    credited to the action's score term (that would add -lam MI to every r_n)."""
    game = shifted("joint_kl")
    theta = game.params["joint"]
    est = scg.compile(game.network)
    lam, N = 0.5, 6
    out = est(N, lam)
    a = next(s for s in out.sites if s.name == "a").value.long()     # [1, N]
    logp = torch.log_softmax(theta, -1)[0, a[0]]
    r = PAYOFF.to(theta).flatten()[a[0]]
    mi = mutual_information(torch.softmax(theta, -1)).sum()
    twin = -((logp * r).mean() - lam * mi)
    assert torch.allclose(flat_grad(out.loss, [theta]), flat_grad(twin, [theta]), atol=1e-12)
    assert torch.allclose(out.loss, -(r.mean() - lam * mi), atol=1e-12)


# ---- the executed policy and annealing ---------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("p", [0.5, 0.2, 0.1])
def test_initial_policy_is_the_product_with_p_risky(variant, p):
    game = Game(variant, p, 3, torch.float64)
    policy = game.policy(0.0)
    want = torch.tensor([[(1 - p) ** 2, (1 - p) * p], [p * (1 - p), p * p]], dtype=torch.float64)
    assert torch.allclose(policy, want.expand(3, 2, 2), atol=1e-12)
    assert mutual_information(policy).abs().max() < 1e-12


def test_mixture_at_alpha_one_factorises():
    game = shifted("mixture", seeds=4)
    assert mutual_information(game.policy(0.0)).min() > 1e-4
    assert mutual_information(game.policy(1.0)).max() < 1e-12


def test_annealing_schedules():
    assert annealed("joint_kl", 0, 100, 2.0) == 0.0
    assert annealed("joint_kl", 50, 100, 2.0) == 1.0
    assert annealed("joint_kl", 500, 100, 2.0) == 2.0
    assert [annealed("mixture", s, 10) for s in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]
    assert annealed("factored", 7, 10) == 0.0


# ---- mutual information ----------------------------------------------------------------------
@pytest.mark.parametrize("probs, want", [
    ([0.25, 0.25, 0.25, 0.25], 0.0),
    ([0.5, 0.0, 0.0, 0.5], math.log(2)),
    ([0.0, 0.5, 0.5, 0.0], math.log(2)),
    ([0.0, 0.0, 0.0, 1.0], 0.0),
    ([0.72, 0.18, 0.08, 0.02], 0.0),          # (0.8, 0.2) x (0.9, 0.1)
])
def test_mutual_information_known_cases(probs, want):
    assert mutual_information(torch.tensor(probs, dtype=torch.float64)).item() == \
        pytest.approx(want, abs=1e-12)


def test_mutual_information_is_h1_plus_h2_minus_h12_batched():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(5, 4, generator=gen, dtype=torch.float64), -1)
    t = probs.reshape(5, 2, 2)

    def H(x):
        return -(x * x.log()).sum(-1)
    want = H(t.sum(-1)) + H(t.sum(-2)) - H(probs)
    assert torch.allclose(mutual_information(probs), want, atol=1e-12)
    assert torch.allclose(mutual_information(t), want, atol=1e-12)


# ---- the zoo and bad input -------------------------------------------------------------------
def test_zoo_entries():
    names = scg.zoo.names()
    for v in VARIANTS:
        setup = scg.zoo.load(f"matrix_game_{v}")
        assert f"matrix_game_{v}" in names
        net, args, options = setup.check
        assert scg.check(net, *args, **options).ok
        assert setup.inputs(0)[1] == 0.0


def test_zoo_build_argument_sets_the_start():
    build = scg.zoo.REGISTRY["matrix_game_joint_kl"][0]
    setup = build(p_risky=0.1, seeds=2)
    joint = torch.softmax(setup.modules["joint"].detach(), -1)
    assert torch.allclose(joint[:, 3].double(), torch.tensor([0.01, 0.01]), atol=1e-6)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5, float("nan"), "x", None])
def test_bad_probability(p):
    with pytest.raises(scg.ScgError, match=r"p_risky must be a probability in"):
        Game("factored", p)
    with pytest.raises(scg.ScgError, match=r"p_risky must be a probability in"):
        scg.zoo.REGISTRY["matrix_game_mixture"][0](p_risky=p)


def test_unknown_variant():
    with pytest.raises(scg.ScgError, match=r"unknown matrix-game variant 'joint'; valid: "
                                           r"\['factored', 'joint_kl', 'mixture'\]"):
        Game("joint", 0.2)


@pytest.mark.parametrize("seeds", [0, -1, 1.5])
def test_bad_seeds(seeds):
    with pytest.raises(scg.ScgError, match="seeds must be an int >= 1"):
        Game("factored", 0.2, seeds)


@pytest.mark.parametrize("probs, match", [
    ([0.5, 0.5], r"shape \[\.\.\., 4\] or \[\.\.\., 2, 2\]"),
    ([0.5, 0.5, 0.5, 0.5], "sum to 1"),
    ([1.5, -0.5, 0.0, 0.0], "non-negative"),
])
def test_bad_joint_policy(probs, match):
    with pytest.raises(scg.ScgError, match=match):
        mutual_information(torch.tensor(probs))


# ---- the example -----------------------------------------------------------------------------
@pytest.mark.slow
def test_example_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "matrix_game.py"),
                           "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (tmp_path / "matrix_game.md").read_text()
    assert "| method | start P(risky) | reached 10 |" in page
    assert page.count("| joint_kl |") == 3
    assert (tmp_path / "img" / "matrix_game.png").exists()
    data = json.loads((tmp_path / "matrix_game.json").read_text())
    assert len(data["results"]) == 9
    assert all(c["ok"] for c in data["check"].values())
    assert all(0.0 <= r["reach"] <= 1.0 for r in data["results"])
