"""Emission's two reductions of one run's score terms agree: the scalar sums of a one-coagent
run (its local loss is the loss) and the per-coagent sums of every other run give the same
value and the same gradient, in every parameter, critics' included; and emitting a run leaves
the model's distributions as the model built them."""

import pyro.distributions as dist
import pytest
import torch

import scg
from networks import REGISTRY, lin, oh
from scg.estimators import monte_carlo
from scg.estimators.baselines import KINDS


def predicting():
    """One coagent with a pathwise cost (an entropy bonus) and a predictor of its own."""
    f, q = lin(2, 1), lin(2, 1)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            pi = dist.Bernoulli(logits=f(oh(s, 2)).squeeze(-1))
            m = scg.message("m", pi, coagent="f")
            scg.cost("entropy", -0.1 * pi.entropy(), coagent="f")
            scg.predict("p", dist.Normal(q(oh(m, 2)).squeeze(-1), 1.0), obs=s.double(),
                        coagent="f")
            scg.reward("r", m * (2 * s - 1))
    return model, (torch.tensor([0, 1]),), {}


NETWORKS = {**REGISTRY, "predicting": predicting}
ONE_COAGENT = ["replicas", "terminating", "interacting_agents", "predicting"]


def _reductions(est, args, seed):
    """One run's loss by both reductions of the same score parts (the baseline not updated)."""
    torch.manual_seed(seed)
    est(*args)   # critics exist and avg has state before the run compared
    sites, _, plan = est.traced(args, {})
    tensors, C, per_cost, objective = monte_carlo.costs(sites, plan)
    parts = monte_carlo._score_parts(sites, plan, tensors, C, est.baseline, False)
    scalar = monte_carlo._one_coagent(parts, objective)
    owned, unowned = monte_carlo._pathwise(per_cost, tensors,
                                           objective.new_zeros(len(plan.coagents)))
    per_coagent = -(monte_carlo._per_coagent(parts, plan, tensors, owned).sum() + unowned)
    return plan, scalar, per_coagent


@pytest.mark.parametrize("baseline", KINDS)
@pytest.mark.parametrize("name", ONE_COAGENT)
def test_one_coagent_sums_equal_per_coagent_sums(name, baseline):
    model, args, opts = NETWORKS[name]()
    args = tuple(a.repeat(4) for a in args)   # 8 episodes: baselines leave a nonzero gradient
    est = scg.compile(model, baseline=baseline, **opts)
    plan, scalar, per_coagent = _reductions(est, args, seed=3)
    assert len(plan.coagents) == 1, plan.coagents
    assert torch.allclose(scalar, per_coagent, atol=1e-12)
    params = [p for p in est.parameters()] + list(est.critic_parameters())
    g1 = torch.autograd.grad(scalar, params, retain_graph=True, allow_unused=True)
    g2 = torch.autograd.grad(per_coagent, params, allow_unused=True)
    assert any(a is not None and a.abs().sum() > 0 for a in g1)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-12)


def test_one_coagent_run_gives_its_loss_as_its_local_loss():
    model, args, opts = REGISTRY["replicas"]()
    out = scg.compile(model, baseline="critic", **opts)(*args)
    assert list(out.local) == ["f"] and out.local["f"] is out.loss
    assert torch.allclose(out.loss, -out.objective)


def test_emission_leaves_the_models_distributions_validating():
    """The score term of a site's own draw skips validating it again, for that call only."""
    th = torch.nn.Parameter(torch.zeros(4, dtype=torch.double))
    made = []

    @scg.network
    def model():
        with scg.episodes(4):
            d = dist.Bernoulli(logits=th, validate_args=True)
            made.append(d)
            a = scg.message("a", d, coagent="p")
            scg.reward("r", a)

    out = scg.compile(model)()
    out.loss.backward()
    assert made and all(d._validate_args for d in made)


def test_a_run_pauses_the_garbage_collector_and_restores_it():
    """The collector is off during a run, back on after it (also when the model raises), and
    left off after a run of a program that had paused it."""
    import gc

    seen = []

    @scg.network
    def model(fail=False):
        seen.append(gc.isenabled())
        with scg.episodes(2):
            scg.message("a", dist.Bernoulli(logits=torch.zeros(2)), coagent="p")
            scg.reward("r", torch.ones(2))
            if fail:
                raise RuntimeError("the model's own error")

    est = scg.compile(model)
    assert gc.isenabled()
    est()
    with pytest.raises(RuntimeError, match="the model's own error"):
        est(True)
    assert seen == [False, False] and gc.isenabled()
    gc.disable()
    try:
        est()
        assert not gc.isenabled()
    finally:
        gc.enable()
