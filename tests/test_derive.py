"""scg.derive: each coagent's rule, checked against the rules it must reproduce: Bacon et al.'s
termination and intra-option gradients for the option-critic (numerically, by enumeration),
the talking agents' per-step update, and the credit of every registry network; the compile
options it takes and the lines that state them."""

import re

import pyro.distributions as dist
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


def test_talking_agents_follow_the_per_step_rule():
    """The talking agents' per-step update: each agent's score term (no γ^t under
    discount_score=False) credited with the partner's prediction of this step (which reads the
    message) and its own of the next step (the partner speaks from what it heard), plus its own
    predictor term with γ^t."""
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
    assert "the common rule without γ^t on the score term" in text and "seed" not in text
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
    loo = [line for line in text.splitlines() if line.strip().startswith("baseline")]
    assert loo and all(line.strip() == "baseline b = the mean of G over the other episodes of "
                       "the batch (leave-one-out)" for line in loo)
    text = str(derived(REGISTRY["recurrent_steps"], estimator="td")[0])
    assert "TD(λ) error" in text


@pytest.mark.parametrize("kind", ["none", "avg", "loo", "critic"])
def test_each_baseline_is_said_once(kind):
    """The baseline line names b once, in symbols and in words, without repeating itself."""
    text = str(derived(REGISTRY["chain"], baseline=kind)[0])
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("baseline")]
    assert lines and len(set(lines)) == 1
    words = re.findall(r"[a-z]+", lines[0].lower())
    assert lines[0].startswith("baseline b = ")
    assert not any(words[i:i + 2] == words[j:j + 2] for i in range(len(words) - 1)
                   for j in range(i + 1, len(words) - 1) if words[i] not in ("of", "the")), \
        lines[0]


def test_derive_takes_compile_options():
    """scg.derive(model, *args, **options) shows the rule of scg.compile(model, **options):
    without options, the defaults (γ = 1, baseline auto)."""
    model, args, _ = REGISTRY["recurrent_steps"]()
    default = scg.derive(model, *args)
    assert (default.gamma, default.baseline) == (1.0, "auto")
    assert "(γ = 1; baseline auto;" in str(default) and "γ^t" not in str(default)
    d = scg.derive(model, *args, gamma=0.9, baseline="loo", discount_score=False)
    assert (d.gamma, d.baseline, d.discount_score) == (0.9, "loo", False)
    compiled = scg.derive(model, *args, est=scg.compile(model, gamma=0.9, baseline="loo",
                                                        discount_score=False))
    assert str(d) == str(compiled)
    assert "(γ = 0.9; baseline loo;" in str(d) and "the common rule without γ^t" in str(d)
    with pytest.raises(scg.ScgError, match="not both"):
        scg.derive(model, *args, est=scg.compile(model), gamma=0.9)
    with pytest.raises(scg.ScgError, match="unknown compile option"):
        scg.derive(model, *args, gama=0.9)


def test_derive_passes_keyword_arguments_to_the_model():
    model, args, opts = REGISTRY["recurrent_steps"]()
    calls = []

    @scg.network
    def wrapped(*a, note=None):
        calls.append(note)
        return model(*a)

    d = scg.derive(wrapped, *args, kwargs={"note": "seen"}, **opts)
    assert "seen" in calls and d.rules


def test_a_gate_that_does_not_read_the_option_is_no_termination_unit():
    """A Bernoulli unit gating another is read as the option-critic's termination unit only
    when it reads the gated unit's previous output, as β(s_t, ω_{t−1}) does."""
    look_w, m_w = torch.zeros(2, requires_grad=True), torch.zeros(2, 2, requires_grad=True)

    @scg.network
    def lamp(s):
        n = s.shape[0]
        with scg.episodes(n):
            a = torch.zeros(n, dtype=torch.long)
            for _ in scg.steps(2):
                look = scg.message("look", dist.Bernoulli(logits=look_w[a]), coagent="watch")
                m = scg.message("m", dist.Categorical(logits=m_w[s]), coagent="sensor",
                                execute=look.bool())
                a = scg.message("a", dist.Categorical(logits=m_w[m]), coagent="actor")
                scg.reward("r", (a == s).double())

    d = scg.derive(lamp, torch.tensor([0, 1]))
    assert d["sensor"].units[0].bit == ["look"]
    assert all(not u.reading for rule in d.rules.values() for u in rule.units), str(d)
    assert "Bacon" not in str(d)


def test_rules_with_own_objectives_name_each_coagents_costs():
    """With to=, each coagent's rule is credited with its own costs only and the footer says
    each climbs its own J_i; without it, both rules credit both rewards."""
    from test_any_order import repeated_pd

    split = str(scg.derive(repeated_pd(True)[0], 2, gamma=0.9))
    A, B = split.split("coagent B")
    assert "r1_t'" in A and "r2_t'" not in A
    assert "r2_t'" in B and "r1_t'" not in B.split("(γ")[0]
    assert "own objective J_i" in split
    shared = str(scg.derive(repeated_pd(False)[0], 2, gamma=0.9))
    assert shared.count("r1_t' + Σ_{t' ≥ t} γ^(t'−t) r2_t'") == 2
    assert "own objective" not in shared and "ascent direction on J," in shared
