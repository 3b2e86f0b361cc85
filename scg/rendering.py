"""``scg.render``: the dependency graph as a picture, in layers: graph -> plain spec -> graphviz.

Tests assert on :func:`spec`, which needs no ``dot`` binary.
"""

import graphviz

SHAPES = {"message": "ellipse", "env": "diamond", "predict": "doubleoctagon",
          "reward": "box", "cost": "box", "value": "hexagon", "exec": "circle"}


def spec(g):
    """A plain dict: nodes (name, role, coagent, label, shape, filled), edges, clusters, and
    ``back``: for a rolled graph, its back edges with their lags (drawn dashed, labelled)."""
    nodes = [{"name": n, "role": a["role"], "coagent": a["coagent"],
              "shape": SHAPES["exec" if a.get("execution_of") else a["role"]],
              "label": n, "filled": a["role"] == "predict"}
             for n, a in sorted(g.nodes(data=True), key=lambda x: x[1]["order"])]
    clusters = {}
    for node in nodes:
        if node["coagent"] is not None:
            clusters.setdefault(node["coagent"], []).append(node["name"])
    back = {(u, v): a["lags"] for u, v, a in g.edges(data=True) if a.get("back")}
    return {"nodes": nodes, "edges": sorted(g.edges), "clusters": clusters, "back": back}


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
        lags = s.get("back", {}).get((u, v))
        if lags:
            dot.edge(u, v, style="dashed", label="t−" + ",".join(str(k) for k in lags if k))
        else:
            dot.edge(u, v)
    return dot


def render(model, *args, est=None, rolled=False, **kwargs):
    """A ``graphviz.Digraph`` of ``model(*args)``: one cluster per coagent, roles by shape.

    ``rolled=True`` draws the rolled graph (one node per site name, back edges to earlier steps
    dashed and labelled with their lags); otherwise the unrolled graph of this run.
    """
    from .estimator import compile

    est = est or compile(model)
    g = est.rolled_graph(*args, **kwargs) if rolled else est.graph(*args, **kwargs)
    return to_graphviz(spec(g))
