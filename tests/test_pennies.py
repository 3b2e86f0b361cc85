"""Matching pennies with per-agent objectives (models/pennies.py) against its closed form
V1 = (2p - 1)(2q - 1) = -V2: exact enumeration, per-agent gradients from one run (err/se), and
the learners' behaviour (naive learners leave the equilibrium, LOLA reaches it)."""

import pyro
import pytest
import torch

import scg
from scg.models import lola
from scg.models import pennies as P


def test_the_zoo_entry_checks_exactly():
    net, args, kw = scg.zoo.load("matching_pennies").check
    for order in (1, 2):
        report = scg.check(net, *args, order=order, **kw)
        assert report.ok, str(report)
        assert report.row("A").norm_exact > 1e-2
    assert report.row("hessian B").norm_exact > 1e-2


@pytest.mark.parametrize("order", [1, "any"])
def test_per_agent_gradients_match_the_closed_form(order):
    S, N = 8000, 2
    x, y = torch.tensor(0.4, dtype=torch.float64), torch.tensor(-0.7, dtype=torch.float64)
    t1, t2 = x.repeat(S).requires_grad_(), y.repeat(S).requires_grad_()
    pyro.set_rng_seed(0)
    out = P.compile_pennies(order=order)(t1, t2, N)
    g1 = -torch.autograd.grad(out.local["A"], t1, retain_graph=True)[0]
    g2 = -torch.autograd.grad(out.local["B"], t2)[0]
    a1, a2 = x.clone().requires_grad_(), y.clone().requires_grad_()
    v1, v2 = P.values(a1, a2)
    e1, = torch.autograd.grad(v1, a1, retain_graph=True)   # v2 = -v1: one graph
    e2, = torch.autograd.grad(v2, a2)
    for g, e in ((g1, e1), (g2, e2)):
        se = g.std() / S ** 0.5
        assert abs(g.mean() - e) < 5 * se
        assert abs(g.mean()) > 10 * se   # the shared J = V1 + V2 = 0 has gradient 0: rejected


def test_exact_naive_learners_leave_and_lola_reaches_the_equilibrium():
    naive = P.train("naive", seeds=10, updates=200, exact=True)
    lookahead = P.train("lola", seeds=10, updates=200, exact=True)
    assert (naive[-1] > naive[0]).all()
    assert (lookahead[-1] < 1e-2).all()


@pytest.mark.slow
def test_sampled_lola_approaches_the_equilibrium_and_naive_does_not():
    naive = P.train("naive", seeds=10, updates=100, episodes=64)
    lookahead = P.train("lola", seeds=10, updates=100, episodes=64)
    assert naive[-1].mean() > naive[0].mean()
    assert lookahead[-1].mean() < 0.3 * lookahead[0].mean()


def test_bad_arguments_are_refused():
    est = P.compile_pennies()
    t = torch.zeros(2, requires_grad=True)
    with pytest.raises(scg.ScgError, match="objective must be one of"):
        est(t, t, 2, "C")
    with pytest.raises(scg.ScgError, match=r"logits of shape \[S\]"):
        est(torch.zeros(2, 1), torch.zeros(2, 1), 2)
    with pytest.raises(scg.ScgError, match="unknown learner"):
        lola.step("greedy", est, t, t, (2,), 0.1, 0.1)


@pytest.mark.parametrize("stepped_on", ["own", "loss"])
def test_finite_differences_of_an_any_order_estimator_with_to(stepped_on, monkeypatch):
    """fd compares each objective's parameters with the gradient of their own surrogate
    (out.local[i]), not of out.loss, which at order='any' sums every objective's surrogate in
    every parameter (here J_A + J_B = 0: its gradient is exactly zero)."""
    net = scg.zoo.load("matching_pennies").check[0]
    net_args = (64,)
    est = scg.compile(net, baseline="loo", order="any")
    if stepped_on == "loss":   # power: the gradient of out.loss is refused
        from scg.tools import check
        monkeypatch.setattr(check, "_climbing_grad", lambda est, out, ps: check._grad(
            -out.loss, ps))
    report = scg.check(net, *net_args, method="fd", est=est, samples=30, eps=0.5)
    assert not report.vacuous, str(report)
    assert report.ok == (stepped_on == "own"), str(report)
