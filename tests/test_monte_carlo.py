"""Monte Carlo agreement: the mean of many sampled gradients is within 4 standard errors of the
exact gradient, component by component."""

import pytest
import torch

import scg
from networks import REGISTRY


@pytest.mark.parametrize("baseline", ["none", "loo", "critic"])
@pytest.mark.parametrize("name", ["chain", "recurrent_steps", "interacting_agents"])
@pytest.mark.slow
def test_monte_carlo_mean_matches_exact(name, baseline):
    model, args, opts = REGISTRY[name]()
    est = scg.compile(model, baseline=baseline, **opts)
    exact = scg.check(model, *args, est=est, method="enumerate").exact
    params = list({id(p): p for ps in est.params.values() for p in ps.values()}.values())
    reps = 250  # repeat the two-episode inputs: same J, many more episodes per call
    big = tuple(a.repeat(reps) for a in args)
    grads = []
    for _ in range(40):
        gs = torch.autograd.grad(est.loss(*big), params, allow_unused=True)
        grads.append(-torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                 for g, p in zip(gs, params)]))
    grads = torch.stack(grads)
    mean, se = grads.mean(0), grads.std(0) / len(grads) ** 0.5
    assert torch.all((mean - exact).abs() <= 4 * se + 1e-9), (mean, exact, se)
