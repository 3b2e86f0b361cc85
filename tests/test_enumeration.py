"""The backbone test: E[grad surrogate] equals grad J by exact enumeration, to float precision."""

import pytest
import torch

import scg
from networks import REGISTRY
from scg.estimators.baselines import KINDS


def warm(est, args, n=5):
    """Give stateful baselines (avg) non-trivial state before checking."""
    for _ in range(n):
        est(*args)


@pytest.mark.parametrize("baseline", KINDS)
@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.slow
def test_estimator_equals_exact_gradient(name, baseline):
    model, args, opts = REGISTRY[name]()
    est = scg.compile(model, baseline=baseline, **opts)
    warm(est, args)
    report = scg.check(model, *args, est=est, method="enumerate")
    assert report.rows[0].norm_exact > 1e-6, "degenerate network: exact gradient is zero"
    assert report.ok, str(report)
    assert report.row("total").rel_error <= 1e-8


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_local_losses_sum_to_loss(name):
    model, args, opts = REGISTRY[name]()
    est = scg.compile(model, baseline="critic", **opts)
    out = est(*args)
    total = sum(out.local.values())
    assert torch.allclose(total, out.loss, atol=1e-12)
    params = list(est.parameters())
    g1 = torch.autograd.grad(out.loss, params, retain_graph=True, allow_unused=True)
    g2 = torch.autograd.grad(total, params, allow_unused=True)
    for a, b in zip(g1, g2):
        if a is None:
            assert b is None or torch.all(b == 0)
        else:
            assert torch.allclose(a, b, atol=1e-12)


def test_loss_value_is_minus_objective_estimate():
    model, args, opts = REGISTRY["fork"]()
    est = scg.compile(model, baseline="loo")
    out = est(*args)
    assert torch.allclose(out.loss, -out.objective)
    assert out.stats["return"] == pytest.approx(out.objective.item())


def test_common_convention_is_biased():
    """Seed 000's rule (no gamma^t on the score term) is not grad J: enumeration shows it."""
    model, args, opts = REGISTRY["recurrent_steps"]()
    exact = scg.check(model, *args, method="enumerate", **opts)
    biased = scg.check(model, *args, method="enumerate", discount_score=False, **opts)
    assert exact.ok
    assert biased.row("total").rel_error > 1e-3, str(biased)


def test_mean_objective_is_exact():
    model, args, opts = REGISTRY["recurrent_steps"]()
    assert scg.check(model, *args, method="enumerate", objective="mean", **opts).ok


def test_shared_parameters_are_reported():
    model, args, opts = REGISTRY["shared_parameters"]()
    est = scg.compile(model)
    est(*args)
    assert len(est.shared) == 2  # body.weight and body.bias
    assert all(sorted(cs) == ["A", "B"] for cs in est.shared.values())
