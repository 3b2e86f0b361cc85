"""Shared-parameter agents (seed 002): exact gradients by enumeration, the gradient as the sum
of per-agent terms, bad input, and the example's smoke run."""

import copy
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scg
from scg.errors import ScgError
from scg.models.shared_agents import Policy, make_network, observations, team_reward

ROOT = Path(__file__).resolve().parents[1]


def policy(agents, seed=0):
    torch.manual_seed(seed)
    p = Policy(agents).double()
    with torch.no_grad():
        for w in p.parameters():
            w.mul_(3.0)
    return p


@pytest.mark.parametrize("agents", [2, 3])
@pytest.mark.slow
def test_estimator_equals_exact_gradient(agents):
    network, _ = make_network(agents, policy(agents))
    for baseline in ("none", "loo"):
        report = scg.check(network, 2, baseline=baseline, method="enumerate")
        assert report.ok and report.rows[0].norm_exact > 1e-3, str(report)


def exact_objective(policies, agents):
    """J by enumeration when agent i runs ``policies[i]`` (the same module for all: shared)."""
    obs = observations(agents, 1, torch.float64)[:, 0]
    logp = torch.stack([torch.log_softmax(p(obs[i]), -1) for i, p in enumerate(policies)])
    J = 0.0
    for joint in itertools.product(range(agents), repeat=agents):
        a = torch.tensor(joint)
        prob = logp[torch.arange(agents), a].sum().exp()
        J = J + prob * team_reward(a[:, None], agents)[0]
    return J


def test_shared_gradient_is_the_sum_of_per_agent_gradients():
    agents = 3
    shared = policy(agents)
    g_shared = torch.autograd.grad(exact_objective([shared] * agents, agents),
                                   list(shared.parameters()))
    copies = [copy.deepcopy(shared) for _ in range(agents)]
    J = exact_objective(copies, agents)
    per_agent = [torch.autograd.grad(J, list(c.parameters()), retain_graph=True) for c in copies]
    for k, g in enumerate(g_shared):
        assert torch.allclose(g, sum(pa[k] for pa in per_agent), atol=1e-12)
    assert max(g.abs().max() for g in g_shared) > 1e-3


def test_one_run_is_the_sum_of_per_agent_score_terms():
    """On one sampled run, scg's gradient is Σ_i ∇ log π(a_i | o_i) (R − b) / B with the
    leave-one-out baseline, plus nothing else (rewards carry no gradient)."""
    agents, batch = 4, 5
    pol = policy(agents)
    network, _ = make_network(agents, pol)
    est = scg.compile(network, baseline="loo")
    torch.manual_seed(3)
    out = est(batch)
    ps = list(pol.parameters())
    g_scg = torch.autograd.grad(out.loss, ps)
    channel = next(s for s in out.sites if s.name == "channel").value       # [agents, batch]
    R = team_reward(channel, agents).double()
    b = (R.sum() - R) / (batch - 1)
    logp = torch.log_softmax(pol(observations(agents, batch, torch.float64)), -1)
    chosen = logp.gather(-1, channel[..., None]).squeeze(-1)                 # [agents, batch]
    by_hand = -(chosen * (R - b)).sum() / batch
    g_hand = torch.autograd.grad(by_hand, ps)
    for a, h in zip(g_scg, g_hand):
        assert torch.allclose(a, h, atol=1e-12)
    assert out.objective.item() == pytest.approx(R.mean().item())


def test_bad_input():
    with pytest.raises(ScgError, match="number of agents >= 2"):
        make_network(1)
    with pytest.raises(ScgError, match="built for 3 agents, the network has 4"):
        make_network(4, Policy(3))


def test_zoo_entry():
    setup = scg.zoo.load("shared_agents")
    assert setup.options == {"baseline": "loo"}
    assert "agent" in str(scg.derive(setup.network, *setup.example))


@pytest.mark.slow
def test_example_smoke(tmp_path):
    out = subprocess.run([sys.executable, "examples/shared_agents.py", "--smoke", "--out",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "shared_agents.md").exists() and (tmp_path / "shared_agents.json").exists()
