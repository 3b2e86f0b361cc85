"""scg.derive: each coagent's rule, checked against the rules it must reproduce: Bacon et al.'s
termination and intra-option gradients for the option-critic (numerically, by enumeration),
seed 000's update for the talking agents, and the credit of every registry network."""

import pytest
import torch

import scg
from networks import OC_MOVES, REGISTRY, SHAPES, oh
from scg.compiler import graph as G
from scg.compiler.passes import split
from scg.tools.check import log_prob, trajectories


def derived(entry, **extra):
    model, args, opts = entry()
    est = scg.compile(model, **{**opts, **extra})
    return scg.derive(model, *args, est=est), (model, args, est)


def test_option_critic_reads_like_bacon_et_al():
    d, _ = derived(SHAPES["option_critic"])
    term, = d["termination"].units
    option, = d["policy_over_options"].units
    action, = d["intra_option"].units
    assert option.bit == ["term"] and term.bit is None and action.bit is None
    assert "termination gradient" in term.reading and "−∇β(x_t) · A(s_t, option_{t−1})" in \
        term.reading
    assert "intra-option policy gradient" in action.reading
    assert "policy over options" in option.reading
    assert ("option", 1) in term.inputs and ("s", 1) in term.inputs
    assert term.credit == [("r", 0, 0, None)] and option.credit == [("r", 0, 1, None)]
    text = str(d)
    assert "Δθ_policy_over_options ∝ Σ_t γ^t e_t ∇ log π_policy_over_options(option_t" in text
    assert "holds option_{t−1}, no term" in text


def test_termination_rule_is_bacons_termination_gradient():
    """The termination unit's exact gradient, by enumeration, equals Bacon et al.'s
    -γ Σ P(s_1, ω_0) ∇β(s_1, ω_0) (Q(s_1, ω_0) - V(s_1)), V(s) = Σ_ω μ(ω|s) Q(s, ω)."""
    model, args, opts = SHAPES["option_critic"]()
    beta, over, intra = (model.units[k] for k in ("beta", "over", "intra"))
    s0 = torch.tensor([0])
    est = scg.compile(model, **opts)
    est(s0)
    J = sum(log_prob(out.sites).exp() * out.objective for out in trajectories(est, (s0,)))
    params = list(beta.parameters())
    exact = torch.autograd.grad(J, params)

    eye = torch.eye(2, dtype=torch.double)
    mu = lambda s: torch.softmax(over(oh(torch.tensor([s]), 2)), -1)[0]  # noqa: E731
    pi = lambda s, w: torch.softmax(intra(torch.cat([eye[s], eye[w]])), -1)  # noqa: E731
    b = lambda s, w: torch.sigmoid(beta(torch.cat([eye[s], eye[w]]))).squeeze()  # noqa: E731
    Q = lambda s, w: sum(pi(s, w)[a] * ((a == s) + 0.5 * (w == s)) for a in range(2))  # noqa
    V = lambda s: sum(mu(s)[w] * Q(s, w) for w in range(2))  # noqa: E731
    bacon = 0.0
    for w0 in range(2):
        for a0 in range(2):
            for s1 in range(2):
                p = (mu(0)[w0] * pi(0, w0)[a0] * OC_MOVES[a0, s1]).detach()
                adv = (Q(s1, w0) - V(s1)).detach()
                bacon = bacon - 0.9 * p * b(s1, w0) * adv
    expected = torch.autograd.grad(bacon, params)
    for e, x in zip(expected, exact):
        assert torch.allclose(e, x, rtol=1e-10, atol=1e-13)
    assert max(x.abs().max() for x in exact) > 1e-3


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_larger_shapes_pass_enumeration(name):
    model, args, opts = SHAPES[name]()
    report = scg.check(model, args[0][:1], **opts)
    assert report.ok, str(report)


def test_talking_agents_follow_seed_000():
    """Seed 000's update: each agent's score term (no γ^t under discount_score=False) credited
    with the partner's prediction of this step (which reads the message) and its own of the
    next step (the partner speaks from what it heard), plus its own predictor term with γ^t."""
    d, _ = derived(SHAPES["talking_agents"], discount_score=False)
    text = str(d)
    for me, you in (("A", "B"), ("B", "A")):
        rule = d[me]
        (unit,) = rule.units
        assert unit.name == f"m{me}"
        assert sorted(unit.credit) == sorted([(f"pred{you}", 0, 0, you), (f"pred{me}", 1, 1, me)])
        assert [p[0] for p in rule.predictors] == [f"pred{me}"]
        assert (f"m{you}", 0) in rule.predictors[0][1]
        assert (f"Δθ_{me} ∝ Σ_t ∇ log π_{me}(m{me}_t" in text)
        assert f"Σ_t γ^t ∇ log q_{me}(pred{me}_t | " in text
        assert f"log q_{you}(pred{you}_t)" in text and f"γ^1 log q_{me}(pred{me}_t+1)" in text
    assert "seed 000's rule" in text
    d2, _ = derived(SHAPES["talking_agents"])
    assert "Δθ_A ∝ Σ_t γ^t ∇ log π_A(mA_t" in str(d2)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_rules_credit_what_the_estimator_credits(name):
    d, (model, args, est) = derived(REGISTRY[name])
    g = est.graph(*args)
    down = G.downstream_costs(g)
    units = {u.name: u for rule in d.rules.values() for u in rule.units}
    assert set(units) == {split(s)[0] for s in down}
    for s, cs in down.items():
        assert {split(c)[0] for c in cs} <= {c[0] for c in units[split(s)[0]].credit}
    for coagent, rule in d.rules.items():
        assert all(g.nodes[u]["coagent"] == coagent for u in g if split(u)[0] in
                   {x.name for x in rule.units})
    tex = d.latex()
    assert tex.count("{") == tex.count("}") and tex.startswith("\\begin{align*}")


def test_baseline_and_estimator_options_are_stated():
    text = str(derived(REGISTRY["chain"], baseline="loo")[0])
    assert "leave-one-out" in text
    text = str(derived(REGISTRY["recurrent_steps"], estimator="td")[0])
    assert "TD(λ) error" in text
