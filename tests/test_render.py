"""scg.render at the spec level (no ``dot`` needed): roles, coagent clusters, plates, time,
execution bits and the credit overlay; the declared structure (direct reads at their lag, the
environment node, no edge that is only the transitive closure of others); and, where
graphviz's ``dot`` exists, the layout (time order, small execution bits, no label on a cluster
title)."""

import json
import shutil
import subprocess

import networkx as nx
import pyro.distributions as dist
import pytest
import torch

import scg
from networks import REGISTRY, SHAPES
from scg.compiler.graph import downstream_costs
from scg.compiler.passes import split
from scg.errors import ScgError
from scg.tools import render as R

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="graphviz's dot binary not installed")


def spec_of(entry, rolled=False, unrolled=None, credit=True):
    model, args, opts = entry()
    est = scg.compile(model, **opts)
    g, cr = R.view(est, args, {}, rolled=rolled, unrolled=unrolled)
    return R.spec(g, cr if credit else None), (model, args, est)


def zoo_entry(name):
    def entry():
        setup = scg.zoo.load(name)
        return setup.network, setup.example, setup.options
    entry.__name__ = name
    return entry


def node(s, name):
    return next(n for n in s["nodes"] if n["name"] == name)


def corridor():
    """The option-critic of docs/tutorials/option_critic.md on a 3-cell corridor over 6 steps:
    the environment moves at the start of every step after the first, and scg.done masks
    finished episodes (provenance then links every site to every earlier one)."""
    torch.manual_seed(0)
    beta, over, intra = (torch.nn.Parameter(torch.randn(*s)) for s in ((3, 2), (3, 2), (3, 2, 2)))
    P = torch.full((3, 2, 3), 1 / 3)

    @scg.network
    def option_critic(n, horizon=6):
        with scg.episodes(n):
            s = a = w = torch.zeros(n, dtype=torch.long)
            for t in scg.steps(horizon):
                if t == 0:
                    term = torch.ones(n, dtype=torch.bool)
                else:
                    s = scg.env("s", dist.Categorical(probs=P[s, a]))
                    scg.done(s == 2)
                    term = scg.message("term", dist.Bernoulli(logits=beta[s, w]),
                                       coagent="termination").bool()
                w = scg.message("option", dist.Categorical(logits=over[s]),
                                coagent="policy_over_options", execute=term)
                a = scg.message("action", dist.Categorical(logits=intra[s, w]),
                                coagent="intra_option")
                scg.reward("r", -torch.ones(n))
    return option_critic, (2,), {}


# ---- roles, clusters, plates, credit ------------------------------------------------------------
def test_option_critic_rolled_view():
    s, _ = spec_of(SHAPES["option_critic"], rolled=True)
    assert s["clusters"] == {"policy_over_options": ["option"], "intra_option": ["action"],
                             "termination": ["term"]}
    assert {n["name"]: n["kind"] for n in s["nodes"]} == {
        "option": "message", "action": "message", "r": "reward", "s": "env", "term": "message"}
    assert node(s, "s")["attrs"]["shape"] == "diamond" and node(s, "r")["attrs"]["shape"] == "box"
    assert ("term", "option") in s["execute"]          # the termination bit drives the option
    assert s["back"][("option", "term")] == [1]      # beta reads the previous option
    assert s["hold"] == [("option", "option")]       # the option holds where beta does not fire
    assert ("option", "action") in s["edges"] and ("option", "action") not in s["back"]
    assert s["plates"] == {"episodes": {"size": 2, "kind": "episodes",
                                        "nodes": ["option", "action", "r", "s", "term"]}}
    assert s["credit"][("option", "r")] == [0, 1] and s["credit"][("term", "r")] == [0]
    src = R.to_graphviz(s).source
    assert "cluster_plate_episodes" in src and "episodes  N=2" in src
    assert "cluster_termination" in src and "t−1" in src and "penwidth=2" in src
    assert 'label="t…t+1"' in src and "style=dotted" in src


def test_talking_agents_predictors_are_shaded_observations():
    s, _ = spec_of(SHAPES["talking_agents"], rolled=True, credit=False)
    for name in ("predA", "predB"):
        n = node(s, name)
        assert n["kind"] == "predict" and n["filled"] and "(observed)" in n["label"]
    assert s["clusters"] == {"A": ["mA", "predA"], "B": ["mB", "predB"]}
    assert s["credit"] == {}
    assert ("mA", "predB") in s["edges"] and ("mA", "predA") not in s["edges"]


def test_unrolled_view_repeats_the_rolled_structure():
    s, (model, args, est) = spec_of(SHAPES["option_critic"], unrolled=3)
    names = [n["name"] for n in s["nodes"]]
    assert [n for n in names if n.startswith("option")] == ["option@0", "option@1", "option@2"]
    assert ("option@1", "term@2") in s["edges"]
    assert ("term@2", "r@2") in s["credit"]
    # a site credited with the rewards of consecutive steps: one red edge, to the first
    assert ("option@0", "r@0", "…r@2") in R.credit_edges(s)
    assert not any(u == "option@0" and v in ("r@1", "r@2") for u, v, _ in R.credit_edges(s))
    with pytest.raises(ScgError, match="not both"):
        scg.render(model, *args, est=est, rolled=True, unrolled=3)


def test_execution_coagents_and_interacting_agents():
    s, _ = spec_of(REGISTRY["async_fixed"], rolled=True)
    assert node(s, "m.exec")["kind"] == "exec" and ("m.exec", "m") in s["execute"]
    s, _ = spec_of(REGISTRY["interacting_agents"])
    assert s["plates"]["agents"]["kind"] == "agents"
    src = R.to_graphviz(s).source
    outer, inner = src.index("cluster_plate_episodes"), src.index("cluster_plate_agents")
    assert outer < inner and "N=2, interacting" in src


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registry_network_renders(name):
    s, (model, args, est) = spec_of(REGISTRY[name])
    assert {n["name"] for n in s["nodes"]} == set(est.graph(*args))
    dot = scg.render(model, *args, est=est, credit=True)
    assert all(f'\t{n["name"]} [' in dot.source or f'"{n["name"]}" [' in dot.source
               for n in s["nodes"])


@needs_dot
def test_svg_with_dot():
    model, args, opts = SHAPES["option_critic"]()
    svg = scg.render(model, *args, rolled=True, credit=True).pipe(format="svg").decode()
    assert svg.lstrip().startswith("<?xml") and "termination" in svg and "<svg" in svg


@pytest.mark.parametrize("name", sorted(scg.zoo.names()))
def test_every_zoo_model_renders_at_the_spec_level(name):
    setup = scg.zoo.load(name)
    est = scg.compile(setup.network, **setup.options)
    for rolled in (False, True):
        g, cr = R.view(est, setup.example, {}, rolled=rolled)
        s = R.spec(g, cr)
        assert [n["name"] for n in s["nodes"]] == sorted(g, key=lambda n: g.nodes[n]["order"])
        coagents = {a["coagent"] for _, a in g.nodes(data=True) if not a["execution_of"]}
        assert set(s["clusters"]) == coagents - {None}  # an execution bit sits in its unit's
        assert all(set(n["plates"]) <= set(s["plates"]) for n in s["nodes"])
        assert all(n["name"] in s["plates"][p]["nodes"] for n in s["nodes"] for p in n["plates"])
        assert any("episodes" == p["kind"] for p in s["plates"].values())
        assert s["credit"], "every zoo model has credited costs"
    if name == "async_gridworld":  # execution coagents drive their units
        assert {("b1.exec", "b1"), ("b2.exec", "b2"), ("a.exec", "a")} <= set(s["execute"])


# ---- the declared structure -------------------------------------------------------------------
def test_lag_labels_are_few():
    assert R._lags([1]) == "t−1" and R._lags([0, 1]) == "t, t−1"
    assert R._lags([1, 2]) == "t−1, t−2"
    assert R._lags(list(range(1, 19))) == "t−1…t−18"     # many direct reads: a range
    assert R._lags([1, 3, 5]) == "t−1…t−5 (3 lags)"


def test_gridworld_rolled_view_draws_the_declared_structure():
    """Kostas et al.'s gridworld: each unit reads the state, which the last move made, so the
    picture shows a -> b1 at t−1, not every earlier move (t−1…t−29), and no edge from an
    execution bit to anything but its unit."""
    s, _ = spec_of(zoo_entry("async_gridworld"), rolled=True)
    assert set(s["edges"]) == {
        ("b1.exec", "b1"), ("b2.exec", "b2"), ("a.exec", "a"),      # bits drive units (e)
        ("b1", "a"), ("b2", "a"),                                   # a reads both bits
        ("b1", "b1"), ("b2", "b2"), ("a", "a"),                     # held outputs
        ("a", "b1"), ("a", "b2"),                                   # the state: last move
        ("a", "b1.exec"), ("a", "b2.exec"), ("a", "a.exec"), ("a", "r")}  # done masks
    assert all(lags == [1] for lags in s["back"].values())
    assert set(s["hold"]) == {("b1", "b1"), ("b2", "b2"), ("a", "a")}
    assert set(s["mask"]) == {("a", "b1.exec"), ("a", "b2.exec"), ("a", "a.exec"), ("a", "r")}
    src = R.to_graphviz(s).source
    assert "…" not in src.replace("t+1…t+29", "")  # credit spans only; reads are single lags
    assert 'a -> r [label="t−1" color=grey55 constraint=false style=dashed]' in src


def test_option_critic_reads_are_drawn_at_their_lag():
    """The tutorial's option-critic: every read of an earlier step is t−1 (the option is held,
    the environment moves), where provenance links every site to every earlier one."""
    s, _ = spec_of(corridor, rolled=True)
    assert s["back"] == {("action", "s"): [1], ("option", "option"): [1],
                         ("option", "term"): [1], ("s", "s"): [1]}
    assert set(s["edges"]) - set(s["back"]) == {
        ("s", "term"), ("s", "option"), ("s", "action"), ("s", "r"), ("term", "option"),
        ("option", "action")}
    assert s["mask"] == [("s", "r")]        # the reward reads nothing; done masks it


def _ways(a):
    ways = {k for k in ("mask", "execute") if a.get(k)} | (
        {"reads"} if a.get("reads") or a.get("hold") else set())
    return ways or {"any"}


def _closure_edges(g):
    """Brute force: the edges u -> v of an unrolled graph that cross steps at more than the
    least lag between the two names although, for each way u reaches v (read, mask,
    execution bit), another parent of v that descends from u reaches it that way."""
    least = {}
    for u, v in g.edges:
        lag, pair = g.nodes[v]["time"] - g.nodes[u]["time"], (split(u)[0], split(v)[0])
        least[pair] = min(lag, least.get(pair, lag))
    out = []
    for u, v in g.edges:
        lag, pair = g.nodes[v]["time"] - g.nodes[u]["time"], (split(u)[0], split(v)[0])
        via = [w for w in g.predecessors(v) if w != u and nx.has_path(g, u, w)]
        if lag > least[pair] and via and all(
                any(k == "any" or k in _ways(g.edges[w, v]) for w in via)
                for k in _ways(g.edges[u, v])):
            out.append((u, v))
    return out


NETWORKS = {**{f"registry:{k}": v for k, v in REGISTRY.items()},
            **{f"zoo:{k}": zoo_entry(k) for k in scg.zoo.names()}, "corridor": corridor}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_no_drawn_edge_is_only_transitive_and_credit_is_kept(name):
    """The picture leaves out edges implied by longer paths, and only those: every site still
    reaches every cost it reaches in the analysed graph."""
    model, args, opts = NETWORKS[name]()
    est = scg.compile(model, **opts)
    torch.manual_seed(0)  # the same run twice (an environment's episodes depend on the draws)
    g = est.graph(*args)
    torch.manual_seed(0)
    drawn, _ = R.view(est, args, {})
    assert set(drawn) == set(g)
    assert _closure_edges(drawn) == []
    assert downstream_costs(drawn) == downstream_costs(g)
    assert all(nx.has_path(drawn, u, v) for u, v in g.edges)


def test_environment_node_where_values_leave_torch():
    """CartPole's actions leave torch (.numpy()): an environment node inside the episodes
    plate, a -> environment -> r, the environment's own recurrence and its t−1 into a."""
    s, _ = spec_of(zoo_entry("reinforce_cartpole"), rolled=True)
    env = node(s, "escape")
    assert env["kind"] == "escape" and env["label"].startswith("environment")
    assert env["plates"] == ("episodes",) and "escape" in s["plates"]["episodes"]["nodes"]
    assert set(s["edges"]) == {("a", "escape"), ("escape", "escape"), ("escape", "a"),
                               ("escape", "r")}
    assert s["back"][("escape", "escape")] == [1]
    assert s["back"][("escape", "a")][0] == 1  # more once every episode has ended: no steps
    s, _ = spec_of(REGISTRY["escaping"])      # int() into a Python table
    assert ("m", "escape") in s["edges"] and ("escape", "r") in s["edges"]
    assert ("m", "r") not in s["edges"]


# ---- time order and execution bits ----------------------------------------------------------
@pytest.mark.parametrize("entry", [zoo_entry("async_gridworld"), corridor,
                                   SHAPES["option_critic"]], ids=lambda e: e.__name__)
def test_unrolled_steps_are_ordered_left_to_right(entry):
    s, _ = spec_of(entry, unrolled=3, credit=False)
    assert list(s["steps"]) == [0, 1, 2]
    assert all(node(s, n)["step"] == t for t, ns in s["steps"].items() for n in ns)
    # every drawn edge constrains the layout (none is a back edge unrolled), so a path from
    # each node of step t to each of step t + 1 puts it in an earlier rank
    layout = nx.DiGraph(s["edges"] + s["time_order"])
    assert all(nx.has_path(layout, u, v) for t in (0, 1) for u in s["steps"][t]
               for v in s["steps"][t + 1])
    src = R.to_graphviz(s).source
    assert "newrank=true" in src and "style=invis" in src and "constraint=false" not in src


def test_execution_bits_are_small_and_sit_with_their_unit():
    s, _ = spec_of(zoo_entry("async_gridworld"), rolled=True)
    assert s["clusters"]["u1"] == ["b1.exec", "b1"] and s["clusters"]["pi"] == ["a.exec", "a"]
    bit, unit = node(s, "b1.exec"), node(s, "b1")
    assert bit["unit"] == "b1" and bit["label"] == "" and bit["attrs"]["xlabel"] == "b1.exec"
    assert bit["attrs"]["fixedsize"] == "true"
    assert float(bit["attrs"]["width"]) < 0.3 and float(bit["attrs"]["height"]) < 0.3
    assert unit["attrs"]["shape"] == "ellipse"   # graphviz's ellipse is 0.75 x 0.5 at least


# ---- with dot: the layout itself -------------------------------------------------------------
def _layout(dot):
    return json.loads(subprocess.run(["dot", "-Tjson"], input=dot.source.encode(),
                                     capture_output=True, check=True, timeout=120).stdout)


def _texts(ops):
    """Boxes (x0, y0, x1, y1) of the text drawn by xdot operations."""
    size, out = 14.0, []
    for op in ops or ():
        if op["op"] == "F":
            size = op["size"]
        elif op["op"] == "T":
            (x, y), w = op["pt"], op["width"]
            lo = {"c": x - w / 2, "l": x, "r": x - w}[op["align"]]
            out.append((op["text"], (lo, y - 0.25 * size, lo + w, y + 0.8 * size)))
    return out


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


PICTURES = [(name, view) for name in sorted(scg.zoo.names()) for view in ("rolled", "unrolled")]


@needs_dot
@pytest.mark.parametrize("name,view", PICTURES + [("corridor", "rolled")])
def test_no_label_overlaps_a_cluster_title(name, view):
    entry = corridor if name == "corridor" else zoo_entry(name)
    s, _ = spec_of(entry, rolled=view == "rolled", unrolled=3 if view == "unrolled" else None,
                   credit=view == "rolled")
    d = _layout(R.to_graphviz(s))
    titles = [t for o in d["objects"] if o["name"].startswith("cluster")
              for t in _texts(o.get("_ldraw_"))]
    labels = [t for e in d.get("edges", ()) for k in ("_ldraw_", "_hldraw_", "_tldraw_")
              for t in _texts(e.get(k))]
    labels += [t for o in d["objects"] for t in _texts(o.get("_xldraw_"))]
    assert titles and [(t, x) for t, tb in titles for x, xb in labels if _overlap(tb, xb)] == []


@needs_dot
@pytest.mark.parametrize("entry", [zoo_entry("async_gridworld"), corridor],
                         ids=lambda e: e.__name__)
def test_dot_lays_steps_out_in_time_order_and_bits_small(entry):
    s, _ = spec_of(entry, unrolled=3, credit=False)
    d = _layout(R.to_graphviz(s))
    at = {o["name"]: o for o in d["objects"] if "pos" in o}
    x = {}  # step -> the x coordinates of its nodes (rankdir=LR: time runs along x)
    for n in at:
        if split(n)[1] is not None:
            x.setdefault(split(n)[1], []).append(float(at[n]["pos"].split(",")[0]))
    assert sorted(x) == [0, 1, 2] and max(x[0]) < min(x[1]) and max(x[1]) < min(x[2])
    for bit, unit in s["execute"]:
        if node(s, bit)["kind"] == "exec":
            assert float(at[bit]["width"]) < float(at[unit]["width"]) / 2
            assert float(at[bit]["height"]) < float(at[unit]["height"])


@pytest.mark.parametrize("view", [{}, {"rolled": True}, {"unrolled": 3}])
def test_credit_edges_follow_each_coagents_own_objective(view):
    """With rewards addressed by to= (design.md §8), each agent's sites are drawn credited with
    its own reward only, in every view (the unrolled view was drawn with both); shared rewards
    credit both agents."""
    from test_any_order import repeated_pd

    def edges(split):
        s = R.spec(*R.view(scg.compile(repeated_pd(split)[0]), (2,), {}, **view))
        return {(split_name(u), split_name(v)) for u, v, _ in R.credit_edges(s)}

    split_name = lambda n: split(n)[0]  # noqa: E731
    assert edges(True) == {("a1", "r1"), ("a2", "r2")}
    assert edges(False) == {(a, r) for a in ("a1", "a2") for r in ("r1", "r2")}
