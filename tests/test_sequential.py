"""The sequential plan: a structure met for the first time (another horizon, another episode
length) is served without a provenance run, every score term credited with every cost emitted
after it, and analysed when it comes again (issue 16 §2).

Its oracle is exact enumeration (``scg.check``'s own J, independent of any plan): an estimator
whose every run takes the sequential plan must agree with it on every registry network."""

import pyro.distributions as dist
import pytest
import torch

import scg
from networks import REGISTRY
from scg.compiler.guards import pools_episodes
from scg.core.schema import COSTS
from scg.estimators import estimator as E


class Sequential(E.Estimator):
    """Every run takes the sequential plan (and nothing is analysed)."""

    def traced(self, args, kwargs, *handlers, sequential=True):
        sites, value = self.trace(args, kwargs, *handlers)
        plan = self.last_plan = self.sequential_plan(sites)
        return sites, value, plan


def pooled(name):
    model, args, opts = REGISTRY[name]()
    sites, _ = scg.core.record.record(model, args, {})
    return any(s.role in COSTS + ("value",) and pools_episodes(s) for s in sites)


@pytest.mark.parametrize("baseline", ["none", "loo"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.slow
def test_the_sequential_plan_is_unbiased(name, baseline):
    if pooled(name):
        pytest.skip("a cost pooling episodes needs the data flow: never sequential")
    model, args, opts = REGISTRY[name]()
    opts = {**opts, "baseline": baseline, "verify": False}
    report = scg.check(model, *args, method="enumerate", est=Sequential(model, **opts))
    assert report.ok, str(report)


def horizon_chain():
    w = torch.nn.Parameter(torch.tensor([0.2, -0.4]))

    @scg.network
    def chain(B, T):
        with scg.episodes(B):
            x = torch.zeros(B)
            for _ in scg.steps(T):
                x = scg.message("x", dist.Bernoulli(logits=w[0] + w[1] * x), coagent="u")
                scg.reward("r", x)
    return chain, w


def test_a_new_horizon_runs_no_provenance_until_it_comes_again(monkeypatch):
    chain, _ = horizon_chain()
    est = scg.compile(chain, verify=False)
    analyses = []
    real = E.Analysis

    def counted(*a, **k):
        analyses.append(1)
        return real(*a, **k)
    monkeypatch.setattr(E, "Analysis", counted)
    est(4, 3)                      # the first run of an estimator is analysed as it happens
    assert len(analyses) == 1
    est(4, 5)                      # a new horizon: the sequential plan
    assert len(analyses) == 1 and est.last_plan.graph.graph.get("sequential")
    est(4, 5)                      # met again: analysed (by replay), then cached
    assert len(analyses) == 2 and not est.last_plan.graph.graph.get("sequential")
    est(4, 5)
    assert len(analyses) == 2
    est(4, 7)
    g = est.graph()                # the graph of a sequential run is the analysed one
    assert len(analyses) == 3 and not g.graph.get("sequential")
    assert ("x@0", "x@1") in g.edges


def test_check_enumerates_under_one_analysed_plan():
    """scg.check's runs never take the sequential plan: every joint value of a structure is
    estimated under the same plan."""
    chain, _ = horizon_chain()
    est = scg.compile(chain, verify=False, baseline="none")
    est(2, 1)
    report = scg.check(chain, 2, 3, method="enumerate", est=est)
    assert report.ok, str(report)
    assert not est.last_plan.graph.graph.get("sequential")


def test_pooled_costs_and_raw_samples_are_analysed_at_once(monkeypatch):
    w = torch.nn.Parameter(torch.tensor(0.3))

    @scg.network
    def model(B, T, raw):
        with scg.episodes(B):
            for _ in scg.steps(T):
                x = scg.message("x", dist.Bernoulli(logits=w.expand(B)), coagent="u")
                scg.reward("r", x)
            if raw:
                import pyro
                pyro.sample("noise", dist.Normal(0.0, 1.0))
            else:
                scg.cost("l2", -w ** 2)      # one value for every episode: pooled
    est = scg.compile(model, verify=False)
    est(3, 1, False)
    for T, raw in [(2, False), (3, True)]:
        est(3, T, raw)
        assert not est.last_plan.graph.graph.get("sequential")
