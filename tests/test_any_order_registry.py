"""order="any" on every registry network (design.md §8): the expected Hessian of each DiCE
surrogate equals the exact Hessian by enumeration, with and without baselines, on networks with
gamma < 1, `done`, asynchronous units (fixed, learnable and bit-driven execution), environment
randomness, replicas and objectives split between coagents; Hessian-vector products on a
network with more parameters than the full-Hessian limit; and the power of each of these
checks: a box right to first order only fails every one of them."""

import pyro.distributions as dist
import pytest
import torch
from test_any_order import SPLIT, split_objectives

import scg
from networks import REGISTRY, lin, oh
from scg.tools import check as check_module

# The asynchronous networks enumerate many joint values; without baselines their one-episode
# instance is checked (the estimate's structure is per episode), with loo the two-episode one
# (marked slow: 10-20 s each).
SLOW = {"async_fixed", "async_bit"}


def instance(name, baseline):
    model, args, opts = REGISTRY[name]()
    if name in SLOW and baseline == "none":
        args = (args[0][:1],)
    return model, args, opts


def hessian_rows(report):
    return [r for r in report.rows if r.name.startswith("hessian")]


CASES = [pytest.param(n, b, marks=[pytest.mark.slow] if n in SLOW and b == "loo" else [])
         for n in sorted(REGISTRY) for b in ("none", "loo")]


@pytest.mark.parametrize("name, baseline", CASES)
def test_expected_hessian_is_exact(name, baseline):
    model, args, opts = instance(name, baseline)
    report = scg.check(model, *args, order=2, baseline=baseline, **opts)
    assert report.ok, str(report)
    assert report.row("hessian").norm_exact > 1e-3, str(report)   # not a vacuous check


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_first_order_box_fails_on_every_network(name, monkeypatch):
    """The Hessian rows have power on each network: 1 + x - x.detach() (the score-function
    surrogate, right to first order) passes the gradient rows and fails a Hessian row."""
    from scg.estimators import dice
    monkeypatch.setattr(dice, "box", lambda x: 1 + x - x.detach())
    model, args, opts = instance(name, "none")
    report = scg.check(model, *args, order=2, baseline="none", **opts)
    assert not report.ok
    bad = [r for r in report.rows if not (r.rel_error <= report.tol or r.abs_error <= report.atol)]
    assert bad and all(r.name.startswith("hessian") for r in bad), str(report)


@pytest.mark.parametrize("name", [n for n in SPLIT if n in REGISTRY])
def test_split_objectives_hessians(name):
    """Costs addressed to different coagents (to=): each local surrogate's expected Hessian is
    that of its own J_i, in every parameter."""
    baseline = "none" if name in SLOW else "loo"
    model, args, opts = instance(name, baseline)
    split = split_objectives(model, args, opts)
    report = scg.check(split, *args, order=2, baseline=baseline, **opts)
    assert report.ok, str(report)
    per = {r.name: r.norm_exact for r in hessian_rows(report) if r.name != "hessian"}
    assert len({round(v, 9) for v in per.values()}) > 1, str(report)   # objectives differ


def wide():
    """67 parameters (above FULL_HESSIAN): a six-way message from a tanh layer, read by a
    second coagent; gamma < 1 over two steps, one episode (144 joint values)."""
    f = torch.nn.Sequential(lin(2, 6), torch.nn.Tanh(), lin(6, 6))
    g = lin(6, 1)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            for t in scg.steps(2):
                m = scg.message("m", dist.Categorical(logits=f(oh(s, 2)) / 3), coagent="f")
                a = scg.message("a", dist.Bernoulli(logits=g(oh(m, 6)).squeeze(-1)),
                                coagent="g")
                scg.reward("r", (a == s).double() + 0.1 * m.double() * t)
    return model, (torch.tensor([1]),), {"gamma": 0.9}


def test_hessian_vector_products_above_the_full_limit(monkeypatch):
    model, args, opts = wide()
    est = scg.compile(model, order="any", **opts)
    est(*args)
    assert sum(p.numel() for ps in est.params.values() for p in ps.values()) \
        > check_module.FULL_HESSIAN
    report = scg.check(model, *args, order=2, directions=6, est=est)
    assert report.ok, str(report)
    assert report.row("hessian").norm_exact > 1e-3
    from scg.estimators import dice
    monkeypatch.setattr(dice, "box", lambda x: 1 + x - x.detach())
    assert not scg.check(model, *args, order=2, directions=6, **opts).ok


def test_hessian_passes_agree(monkeypatch):
    """check's Hessian-vector products (one vmapped pass, or one pass per direction where an
    op has no batching rule) equal torch.autograd.functional.hessian."""
    x = torch.randn(5, requires_grad=True)
    w = torch.randn(3, requires_grad=True)

    def f(x, w):
        return (torch.sin(x).sum() * w.exp().sum()) ** 2 + (x[:3] * w).cumsum(0).prod()
    Hxx, Hxw = torch.autograd.functional.hessian(f, (x, w))[0]
    Hwx, Hww = torch.autograd.functional.hessian(f, (x, w))[1]
    full = torch.cat([torch.cat([Hxx, Hxw], 1), torch.cat([Hwx, Hww], 1)])
    U = check_module._directions([x, w], 8, 0)
    assert U.shape == (8, 8)
    batched = check_module._hessian(f(x, w), [x, w], U).reshape(8, 8)
    assert torch.allclose(batched, U @ full, atol=1e-10)

    grad = torch.autograd.grad

    def no_batching(*a, **k):
        if k.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return grad(*a, **k)
    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    looped = check_module._hessian(f(x, w), [x, w], U).reshape(8, 8)
    assert torch.allclose(looped, batched, atol=1e-10)
    monkeypatch.setattr(check_module, "FULL_HESSIAN", 4)
    R = check_module._directions([x, w], 3, 0)
    assert R.shape == (3, 8) and torch.allclose(R.norm(dim=1), torch.ones(3))
