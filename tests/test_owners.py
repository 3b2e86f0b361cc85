"""Which parameters each coagent's sites reach (:func:`scg.compiler.owners.find`), against
autograd itself: a parameter belongs to a coagent exactly when the gradient of one of its
sites' log-probabilities (a message's, a predictor's) or values (a cost's) in that parameter
exists. The analysed run hands ``find`` the log-probabilities it took, and ``find`` walks each
coagent's autograd graph once; neither may change the answer."""

import pyro.distributions as dist
import pytest
import torch

import scg
from networks import REGISTRY, lin, oh
from scg.compiler import owners
from scg.compiler.provenance import Analysis
from scg.core.terms import predictor_log_prob


def analysed(model, args, opts):
    est = scg.compile(model, **opts)
    analysis = Analysis(inputs=(args, {}))
    sites, _ = est.trace(args, {}, recorder=analysis)
    return sites, analysis


def differentiated(s):
    """What a site's coagent differentiates: a fresh log-probability of a message (not the one
    the analysis took) or of a predictor, a cost's value."""
    if s.role == "message":
        return s.fn.log_prob(s.value.detach())
    return predictor_log_prob(s) if s.role == "predict" else s.value


def reached_by_autograd(sites, candidates):
    """coagent -> ids of the candidate parameters that autograd differentiates some site of
    the coagent in."""
    out = {}
    for s in sites:
        if s.coagent is None:
            continue
        t = differentiated(s)
        mine = out.setdefault(s.coagent, set())
        if not t.requires_grad:
            continue
        grads = torch.autograd.grad(t.sum(), candidates, allow_unused=True, retain_graph=True)
        mine |= {id(p) for p, g in zip(candidates, grads) if g is not None}
    return out


def parameters_of(sites):
    """Every requires-grad leaf of the model: the candidates (a superset, found by walking
    each site's graph on its own)."""
    found = {}
    for s in sites:
        found.update(owners.leaves(differentiated(s)))
    return list(found.values())


def shared_trunk():
    """Two coagents reading one recurrent hidden state: a shared trunk W (and each its own
    head), over eight steps, so each step's score reaches back through the whole history."""
    W, U = lin(4, 4), lin(2, 4)
    heads = {"a": lin(4, 1), "b": lin(4, 1)}

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            h = torch.zeros(s.shape[0], 4, dtype=torch.double)
            m = s
            for _ in scg.steps(8):
                h = torch.tanh(W(h) + U(oh(m, 2)))
                m = scg.message("a", dist.Bernoulli(logits=heads["a"](h).squeeze(-1)),
                                coagent="a")
                scg.message("b", dist.Bernoulli(logits=heads["b"](h).squeeze(-1)), coagent="b")
                scg.reward("r", m)
    return model, (torch.tensor([0, 1, 1, 0]),), {}


NETWORKS = {**REGISTRY, "shared_trunk": shared_trunk}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_each_coagent_reaches_what_autograd_differentiates(name):
    model, args, opts = NETWORKS[name]()
    torch.manual_seed(0)
    sites, analysis = analysed(model, args, opts)
    candidates = parameters_of(sites)
    want = reached_by_autograd(sites, candidates)
    for scores in (analysis.scores, None):   # the analysis's log-probabilities, and fresh ones
        found = owners.find(sites, scores)
        got = {c: set(ps) for c, ps in found.reach.items()}
        assert got == want, (name, scores is None)


def test_the_analysis_hands_over_one_score_per_message_with_its_graph():
    model, args, opts = shared_trunk()
    sites, analysis = analysed(model, args, opts)
    messages = [s.name for s in sites if s.role == "message"]
    assert sorted(analysis.scores) == sorted(messages)
    assert all(lp.requires_grad for lp in analysis.scores.values())


def test_both_coagents_of_a_shared_trunk_own_it():
    model, args, opts = shared_trunk()
    sites, analysis = analysed(model, args, opts)
    found = owners.find(sites, analysis.scores)
    shared = set(found.reach["a"]) & set(found.reach["b"])
    assert len(shared) == 4   # W's and U's weight and bias
