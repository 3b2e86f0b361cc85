"""Recurrence: the unrolled graph equals a hand-built one, the rolled graph has the back edges,
and unrolling the rolled graph gives the traced one back."""

import pyro.distributions as dist
import pytest
import torch

import scg
from networks import REGISTRY, lin, oh
from scg.compiler import passes as R


def two_units(T=3):
    """u reads its own previous output; v, asynchronous (p = 0.5), reads u now and is read by
    the reward; the reward also reads v's previous (held) output through the where()."""
    f, g = lin(2, 1), lin(2, 1)

    @scg.network
    def model(s):
        N = s.shape[0]
        with scg.episodes(N):
            u = torch.zeros(N)
            for _ in scg.steps(T):
                u = scg.message("u", dist.Bernoulli(logits=f(oh(u, 2)).squeeze(-1)),
                                coagent="U")
                v = scg.message("v", dist.Bernoulli(logits=g(oh(u, 2)).squeeze(-1)),
                                coagent="V", execute=torch.full((N,), 0.5))
                scg.reward("r", (v == s).double() + 0.5 * v)
    return model, (torch.tensor([0., 1.]),)


def hand_built(T):
    """The unrolled graph of two_units, written out by hand."""
    edges = set()
    for t in range(T):
        if t:
            edges.add((f"u@{t-1}", f"u@{t}"))
        edges |= {(f"v.exec@{t}", f"v@{t}"), (f"u@{t}", f"v@{t}")}
        # v's output at t is where(e_t, draw_t, output_{t-1}): the reward reads every earlier
        # draw and execution bit through the held value
        edges |= {(f"{n}@{k}", f"r@{t}") for n in ("v", "v.exec") for k in range(t + 1)}
    nodes = {f"{n}@{t}" for t in range(T) for n in ("u", "v.exec", "v", "r")}
    return nodes, edges


@pytest.mark.parametrize("T", [1, 2, 3])
def test_unrolled_graph_equals_hand_built(T):
    model, args = two_units(T)
    g = scg.compile(model).graph(*args)
    nodes, edges = hand_built(T)
    assert set(g) == nodes
    assert set(g.edges) == edges
    assert g.nodes["v.exec@0"]["execution_of"] == "v"
    assert g.nodes[f"v@{T - 1}"]["execute"] == f"v.exec@{T - 1}"
    assert g.nodes[f"v.exec@{T - 1}"]["coagent"] == "v.exec"


def test_rolled_graph_has_back_edges():
    model, args = two_units(3)
    r = scg.compile(model).rolled_graph(*args)
    assert set(r) == {"u", "v.exec", "v", "r"}
    assert R.back_edges(r) == {("u", "u"): [1], ("v", "r"): [0, 1, 2],
                               ("v.exec", "r"): [0, 1, 2]}
    assert r.edges["u", "v"] == {"lags": [0], "back": False, "mask": False, "execute": False,
                                 "reads": True, "read_lags": [0]}
    assert r.nodes["u"]["times"] == [0, 1, 2]


STATIONARY = ["recurrent_steps", "terminating"]


@pytest.mark.parametrize("name", STATIONARY)
def test_unroll_of_roll_is_the_traced_graph(name):
    model, args, opts = REGISTRY[name]()
    g = scg.compile(model, **opts).graph(*args)
    u = R.unroll(R.roll(g), 1 + max(a["time"] for _, a in g.nodes(data=True)))
    assert set(u) == set(g) and set(u.edges) == set(g.edges)
    assert all(u.nodes[n]["time"] == g.nodes[n]["time"] for n in g)


def test_unroll_of_roll_on_async_network():
    model, args = two_units(3)
    g = scg.compile(model).graph(*args)
    u = R.unroll(R.roll(g), 3)
    assert set(u.edges) == set(g.edges)


@pytest.mark.slow
def test_async_network_matches_enumeration():
    model, args = two_units(2)
    for baseline in ("loo",):  # every baseline on async networks: test_enumeration's registry
        report = scg.check(model, *args, baseline=baseline, gamma=0.8, method="enumerate")
        assert report.ok and report.rows[0].norm_exact > 1e-3, str(report)


def test_render_rolled_view_dashes_back_edges():
    from scg.tools import render

    model, args = two_units(3)
    est = scg.compile(model)
    s = render.spec(est.rolled_graph(*args))
    assert s["back"] == {("u", "u"): [1], ("v", "r"): [0, 1, 2], ("v.exec", "r"): [0, 1, 2]}
    assert next(n for n in s["nodes"] if n["name"] == "v.exec")["kind"] == "exec"
    src = scg.render(model, *args, rolled=True).source
    assert "style=dashed" in src and "t−1" in src


def test_execution_coagents_have_their_own_local_losses():
    model, args, opts = REGISTRY["async_fixed"]()
    out = scg.compile(model, **opts)(*args)
    assert set(out.local) == {"f", "g", "m.exec"}
    assert torch.allclose(sum(out.local.values()), out.loss)


@pytest.mark.parametrize("init, expected", [(None, [0.0, 0.0]), (torch.tensor([1.0, 1.0]),
                                                                [1.0, 1.0])])
def test_first_step_without_execution_outputs_init(init, expected):
    """The bit is drawn at the first step too; a unit that does not execute outputs init
    (default zeros), and its draw's score term is masked out."""
    f = lin(2, 1)

    @scg.network
    def model(s):
        with scg.episodes(2):
            for _ in scg.steps(1):
                m = scg.message("m", dist.Bernoulli(logits=f(oh(s, 2)).squeeze(-1) + 50.0),
                                coagent="f", execute=torch.zeros(2), init=init)
                scg.reward("r", m)
        return m

    out = scg.compile(model)(torch.tensor([0., 1.]))
    assert out.value.tolist() == expected
    site = next(s for s in out.sites if s.name == "m@0")
    assert site.value.tolist() == [1.0, 1.0] and not site.mask.any()
    g = torch.autograd.grad(out.loss, list(f.parameters()), allow_unused=True)
    assert all(x is None or torch.all(x == 0) for x in g)
