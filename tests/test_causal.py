"""The causal pass against a brute-force twin: dependence found by intervening on values."""

import pyro.distributions as dist
import pytest
import torch

import scg
from networks import REGISTRY
from scg.compiler import graph as G
from scg.core.record import Fix, record


def observe(site):
    """What a site contributes: a latent site's (masked) log-probability, a cost's value."""
    if site.role in ("message", "env"):
        lp = site.fn.log_prob(site.value.detach()).detach()
        return lp if site.mask is None else torch.where(site.mask, lp, 0.0)
    if site.role == "predict":
        return site.fn.log_prob(site.value).detach()
    return site.fn.v.detach()


def brute_force_downstream(model, args, draws=6):
    """Set each latent site to every other value of its support, keep every other latent
    value, and see which sites change; the transitive closure gives downstream costs. The
    union over several sampled runs: whether a change shows can depend on the other values
    (a held asynchronous unit hides its draw)."""
    truth = {}
    for _ in range(draws):
        one, sites = _brute_force_once(model, args)
        for k, v in one.items():
            truth[k] = truth.get(k, set()) | v
    return truth, sites


def _brute_force_once(model, args):
    sites, _ = record(model, args, {})
    values = {s.name: s.value for s in sites if s.role in ("message", "env")}
    base = {s.name: observe(s) for s in sites}
    children = {}
    for s in sites:
        if s.role not in ("message", "env"):
            continue
        children[s.name] = set()
        for v in s.fn.enumerate_support(expand=True):
            if torch.equal(v, values[s.name]):
                continue
            changed, _ = record(model, args, {}, Fix({**values, s.name: v}))
            children[s.name] |= {c.name for c in changed if c.name != s.name and
                                 not torch.allclose(observe(c), base[c.name])}
    costs = {s.name for s in sites if s.role in ("predict", "reward", "cost")}

    def reach(n, seen):
        for c in children.get(n, ()):
            if c not in seen:
                seen.add(c)
                reach(c, seen)
        return seen
    return {n: reach(n, set()) & costs for n in children}, sites


EXACT = sorted(set(REGISTRY) - {"escaping", "terminating"})


@pytest.mark.parametrize("name", EXACT)
def test_causal_pass_equals_brute_force(name):
    model, args, opts = REGISTRY[name]()
    truth, sites = brute_force_downstream(model, args)
    g = scg.compile(model).graph(*args)
    down = G.downstream_costs(g)
    for s in down:
        assert set(down[s]) == truth[s], s


@pytest.mark.parametrize("name", ["escaping", "terminating"])
def test_conservative_fallback_never_misses_a_dependency(name):
    model, args, opts = REGISTRY[name]()
    truth, sites = brute_force_downstream(model, args)
    down = G.downstream_costs(scg.compile(model).graph(*args))
    for s in down:
        assert truth[s] <= set(down[s]), s


def test_escape_makes_everything_later_downstream():
    model, args, _ = REGISTRY["escaping"]()
    g = scg.compile(model).graph(*args)
    assert set(G.downstream_costs(g)["m"]) == {"r"}
    # a is later than the escape of m: conservatively downstream, through the escape node
    escapes = [n for n, a in g.nodes(data=True) if a["role"] == "escape"]
    assert escapes == ["escape"] and set(g.predecessors("escape")) == {"m"}
    assert g.has_edge("escape", "a") and g.nodes["escape"]["via"] == "__int__"


def test_no_escape_no_fallback():
    model, args, _ = REGISTRY["fork"]()
    down = G.downstream_costs(scg.compile(model).graph(*args))
    assert down["a"] == ["ra"] and down["b"] == ["rb"]
    assert down["m"] == ["r0", "ra", "rb"]


def test_graph_passes_validate_and_print():
    model, args, opts = REGISTRY["recurrent_steps"]()
    g = scg.compile(model, **opts).graph(*args)
    G.validate(g)
    text = G.to_text(g)
    assert "message  m@2 [f]" in text and "<- {m@0, m@1}" in text
    before = set(g.edges)
    G.downstream_costs(g)
    assert set(g.edges) == before  # passes never mutate their input


def test_tracked_operators_compute_the_same_values():
    """Provenance tracking must never change a value (``~`` once matched the in-place rule and
    returned its operand unchanged), and follows in-place writes and views by storage."""
    from scg.compiler.provenance import Provenance

    escapes = []
    mode = Provenance(lambda prov, func: escapes.append((set(prov), func)))
    x, y = torch.tensor([False, True]), torch.tensor([3, 4])
    z = torch.zeros(2, dtype=torch.long)
    mode.source(x, "s")
    mode.source(y, "u")
    mode.source(z, "v")
    with mode:
        view = z[:1]
        inv, neg, pos = ~x, -y, abs(-y)
        z += y
        both = ~x & (y > 3)
        buf = torch.zeros(2)
        buf[0] = y[1]
        assert not escapes
        int(y[0])
    assert torch.equal(inv, torch.tensor([True, False]))
    assert torch.equal(neg, torch.tensor([-3, -4])) and torch.equal(pos, y)
    assert torch.equal(z, torch.tensor([3, 4]))
    assert mode.of(z) == {"u", "v"} and mode.of(view) == {"u", "v"}
    assert mode.of(both) == {"s", "u"} and mode.of(buf) == {"u"}
    assert escapes == [({"u"}, "__int__")]


def test_masks_built_with_invert_are_analysed_right():
    f = torch.nn.Linear(1, 1).double()

    @scg.network
    def model(n):
        with scg.episodes(n):
            finished = torch.zeros(n, dtype=torch.bool)
            for _ in scg.steps(3):
                a = scg.message("a", dist.Bernoulli(logits=f(torch.ones(n, 1)).squeeze(-1)),
                                coagent="f")
                arrived = (a == 1) & ~finished
                finished = finished | arrived
                scg.reward("r", arrived.double())
                scg.done(finished)

    report = scg.check(model, 2)
    assert report.ok, str(report)
