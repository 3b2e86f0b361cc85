"""scg.render at the spec level (no ``dot`` needed): roles, coagent clusters, plates, time,
execution bits and the credit overlay; and one real SVG where graphviz's ``dot`` exists."""

import shutil

import pytest

import scg
from networks import REGISTRY, SHAPES
from scg.errors import ScgError
from scg.tools import render as R


def spec_of(entry, rolled=False, unrolled=None, credit=True):
    model, args, opts = entry()
    est = scg.compile(model, **opts)
    g, cr = R.view(est, args, {}, rolled=rolled, unrolled=unrolled)
    return R.spec(g, cr if credit else None), (model, args, est)


def node(s, name):
    return next(n for n in s["nodes"] if n["name"] == name)


def test_option_critic_rolled_view():
    s, _ = spec_of(SHAPES["option_critic"], rolled=True)
    assert s["clusters"] == {"policy_over_options": ["option"], "intra_option": ["action"],
                             "termination": ["term"]}
    assert {n["name"]: n["kind"] for n in s["nodes"]} == {
        "option": "message", "action": "message", "r": "reward", "s": "env", "term": "message"}
    assert node(s, "s")["attrs"]["shape"] == "diamond" and node(s, "r")["attrs"]["shape"] == "box"
    assert ("term", "option") in s["execute"]          # the termination bit drives the option
    assert s["back"][("option", "term")] == [1]      # beta reads the previous option
    assert s["back"][("option", "action")] == [0, 1]  # a held option is last step's value
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


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot binary not installed")
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
        coagents = {a["coagent"] for _, a in g.nodes(data=True)} - {None}
        assert set(s["clusters"]) == coagents
        assert all(set(n["plates"]) <= set(s["plates"]) for n in s["nodes"])
        assert all(n["name"] in s["plates"][p]["nodes"] for n in s["nodes"] for p in n["plates"])
        assert any("episodes" == p["kind"] for p in s["plates"].values())
        assert s["credit"], "every zoo model has credited costs"
    if name == "async_gridworld":  # execution coagents drive their units
        assert {("b1.exec", "b1"), ("b2.exec", "b2"), ("a.exec", "a")} <= set(s["execute"])
