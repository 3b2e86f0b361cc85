"""``scg.render``: the dependency graph as a picture, in layers: graph -> plain spec -> graphviz.

Tests assert on :func:`spec`, which needs no ``dot`` binary.
"""

import graphviz

SHAPES = {"message": "ellipse", "env": "diamond", "predict": "doubleoctagon",
          "reward": "box", "cost": "box"}


def spec(g):
    """A plain dict: nodes (name, role, coagent, label, shape, filled), edges, clusters."""
    nodes = [{"name": n, "role": a["role"], "coagent": a["coagent"], "shape": SHAPES[a["role"]],
              "label": n, "filled": a["role"] == "predict"}
             for n, a in sorted(g.nodes(data=True), key=lambda x: x[1]["order"])]
    clusters = {}
    for node in nodes:
        if node["coagent"] is not None:
            clusters.setdefault(node["coagent"], []).append(node["name"])
    return {"nodes": nodes, "edges": sorted(g.edges), "clusters": clusters}


def to_graphviz(s):
    dot = graphviz.Digraph()
    for coagent, names in s["clusters"].items():
        with dot.subgraph(name=f"cluster_{coagent}") as sub:
            sub.attr(label=coagent, style="rounded")
            for n in names:
                sub.node(n)
    for node in s["nodes"]:
        dot.node(node["name"], node["label"], shape=node["shape"],
                 style="filled" if node["filled"] else "", fillcolor="lightgrey")
    for u, v in s["edges"]:
        dot.edge(u, v)
    return dot


def render(model, *args, est=None, **kwargs):
    """A ``graphviz.Digraph`` of ``model(*args)``: one cluster per coagent, roles by shape."""
    from .estimator import compile

    est = est or compile(model)
    return to_graphviz(spec(est.graph(*args, **kwargs)))
