"""Regression tests for issue 14's fixes. Each oracle is plain torch (hand-written gradients or
exact enumeration), independent of scg's estimator."""

import copy
import itertools
import pickle

import pyro
import pyro.distributions as dist
import torch

import scg
from scg.trace import Fix

GAMMA = 0.9


# ---- 1. online (td) state survives copy.deepcopy and pickle ---------------------------------
@scg.network
def corridor_step(s, theta, V):
    """One step of an online actor-critic on two cells (module level: picklable by name)."""
    with scg.episodes(s.shape[0]):
        for _ in scg.steps(1):
            scg.value("v", V[s])
            a = scg.message("a", dist.Bernoulli(logits=theta[s]), coagent="pi")
            scg.reward("r", (a == s).to(V.dtype) - 0.25 * s)
    return a


def td_window_gradient(s1, a1, s2, theta, V):
    """The second one-step window's gradient by hand (no value of window 1 is bootstrapped
    before window 2): -(1/N) sum_n delta_n grad [log pi(a1_n | s1_n), V(s1_n)], with
    delta_n = r1_n + gamma V(s2_n) - V(s1_n)."""
    with torch.no_grad():
        r1 = (a1 == s1).to(V.dtype) - 0.25 * s1
        delta = r1 + GAMMA * V[s2] - V[s1]
    lp = torch.distributions.Bernoulli(logits=theta[s1]).log_prob(a1)
    surrogate = -(delta * (lp + V[s1])).mean()
    return torch.autograd.grad(surrogate, [theta, V])


def test_td_state_survives_deepcopy_and_pickle():
    theta = torch.nn.Parameter(torch.tensor([0.3, -0.8]))
    V = torch.nn.Parameter(torch.tensor([0.2, -0.1]))
    est = scg.compile(corridor_step, estimator="td", gamma=GAMMA, lam=0.5)
    s1, s2 = torch.tensor([0, 1, 1, 0]), torch.tensor([1, 1, 0, 0])
    a1 = est(s1, theta, V).value
    copies = [copy.deepcopy((est, theta, V)), pickle.loads(pickle.dumps((est, theta, V)))]
    for e, th, v in [(est, theta, V)] + copies:
        assert th is not theta or e is est
        pyro.set_rng_seed(5)
        out = e(s2, th, v)
        got = torch.autograd.grad(out.loss, [th, v])
        want = td_window_gradient(s1, a1, s2, th, v)
        assert all(g.abs().sum() > 0 for g in want)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-12), (g, w)
