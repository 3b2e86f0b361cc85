"""``scg.render``: a network as a picture, built in layers: graph -> plain spec -> graphviz.

The spec is a plain dict (nodes, edges, coagent clusters, plates), so tests and other front ends
use it without the ``dot`` binary; :func:`to_graphviz` only draws it.

Conventions (Pyro's plate notation, plus roles and time):

* roles by shape: message ellipse, execution bit small circle, environment draw diamond,
  reward box, cost dashed box, value hexagon, escape node (values left torch there, e.g. for
  an environment) dashed octagon; a predictor is shaded (its data is observed);
* one cluster per coagent (rounded, labelled), nested inside the plates its sites live in;
  plates are boxes labelled with their name and size, as in ``pyro.render_model``;
* time: the *rolled* view has one node per site name and draws reads of earlier steps as
  dashed back edges labelled ``t−k``; the *unrolled* view repeats the network for T steps;
* an edge into a unit's execution bit is bold and labelled ``e``;
* ``credit=True`` overlays dotted red edges site -> cost for every cost in the site's return.
"""

import graphviz

from ..compiler.graph import downstream_costs
from ..compiler.passes import roll, rolled_credit, unroll
from ..errors import ScgError
from ..estimators.estimator import compile

STYLE = {
    "message": {"shape": "ellipse"},
    "exec": {"shape": "circle", "width": "0.3", "fontsize": "10"},
    "env": {"shape": "diamond"},
    "predict": {"shape": "ellipse", "style": "filled", "fillcolor": "lightgrey"},
    "reward": {"shape": "box"},
    "cost": {"shape": "box", "style": "dashed"},
    "value": {"shape": "hexagon"},
    "escape": {"shape": "octagon", "style": "dashed", "fontsize": "10"},
}
CREDIT = {"style": "dotted", "color": "red", "constraint": "false"}


def kind(attrs):
    """The drawing role of a node: its role, or ``exec`` for an execution coagent's bit."""
    return "exec" if attrs.get("execution_of") else attrs["role"]


def spec(g, credited=None):
    """The plain description of graph ``g`` (unrolled or rolled).

    Keys: ``nodes`` (name, role, kind, coagent, plates, label and graphviz attributes), ``edges``
    (sorted (tail, head) pairs of data flow), ``back`` ({edge: lags} of a rolled graph's reads
    of earlier steps), ``credit`` ({(site, cost): lags}, empty unless ``credited`` is given),
    ``execute`` (edges into a unit's execution bit), ``clusters`` (coagent -> its nodes)
    and ``plates`` (name -> size, kind, nodes).
    """
    nodes, clusters, plates = [], {}, {}
    for n, a in sorted(g.nodes(data=True), key=lambda x: x[1]["order"]):
        k = kind(a)
        ps = tuple(p[0] for p in a.get("plates") or ())
        label = n + ("\n(observed)" if k == "predict" else "") + (
            f"\n(left torch: {a['via']})" if k == "escape" and a.get("via") else "")
        nodes.append({"name": n, "role": a["role"], "kind": k, "coagent": a["coagent"],
                      "plates": ps, "label": label, "filled": k == "predict",
                      "attrs": dict(STYLE[k])})
        if a["coagent"] is not None:
            clusters.setdefault(a["coagent"], []).append(n)
        for name, _, size, pkind in a.get("plates") or ():
            plates.setdefault(name, {"size": size, "kind": pkind, "nodes": []})["nodes"].append(n)
    back = {(u, v): a["lags"] for u, v, a in g.edges(data=True) if a.get("back")}
    execute = sorted((u, v) for u, v, a in g.edges(data=True) if a.get("execute"))
    return {"nodes": nodes, "edges": sorted(g.edges), "back": back, "execute": execute,
            "credit": dict(credited or {}), "clusters": clusters, "plates": plates}


def _plate_label(name, p):
    extra = {"agents": ", interacting", "episodes": ""}.get(p["kind"], "")
    return f"{name}  N={p['size']}{extra}"


def to_graphviz(s):
    """Draw a spec: plates as nested clusters holding coagent clusters, roles by shape."""
    dot = graphviz.Digraph(graph_attr={"rankdir": "LR", "fontname": "Helvetica"},
                           node_attr={"fontname": "Helvetica"})
    tree = {}  # plate path -> coagent -> nodes
    for node in s["nodes"]:
        tree.setdefault(node["plates"], {}).setdefault(node["coagent"], []).append(node)
    seen = {}

    def cluster(key):
        """A unique graphviz cluster name: ``cluster_<key>``, suffixed when repeated."""
        seen[key] = seen.get(key, -1) + 1
        return f"cluster_{key}" + (f"_{seen[key]}" if seen[key] else "")

    def fill(sub, path):
        for coagent, members in tree.get(path, {}).items():
            if coagent is None:
                target = sub
                for node in members:
                    target.node(node["name"], node["label"], **node["attrs"])
                continue
            with sub.subgraph(name=cluster(coagent)) as c:
                c.attr(label=str(coagent), style="rounded", color="steelblue")
                for node in members:
                    c.node(node["name"], node["label"], **node["attrs"])
        children = sorted({p[:len(path) + 1] for p in tree if len(p) > len(path)
                           and p[:len(path)] == path})
        for child in children:
            with sub.subgraph(name=cluster(f"plate_{child[-1]}")) as c:
                name = child[-1]
                c.attr(label=_plate_label(name, s["plates"][name]), labeljust="r",
                       labelloc="b", style="solid", color="black")
                fill(c, child)

    fill(dot, ())
    bits = set(s["execute"])
    for u, v in s["edges"]:
        lags = s["back"].get((u, v))
        attrs = {"style": "dashed", "label": _lags(lags)} if lags else {}
        if (u, v) in bits:
            attrs.update(penwidth="2", label=("e " + attrs.get("label", "")).strip())
        dot.edge(u, v, **attrs)
    for (u, v), lags in sorted(s["credit"].items()):
        dot.edge(u, v, label=_span(lags), fontcolor="red", **CREDIT)
    return dot


def _lags(lags):
    """Label of a back edge: ``t−1``, ``t−1,t−3`` or a range ``t−1…t−29``."""
    back = [k for k in lags if k]
    if len(back) > 2 and back == list(range(back[0], back[-1] + 1)):
        return f"t−{back[0]}…t−{back[-1]}"
    return ",".join(f"t−{k}" for k in back)


def _span(lags):
    """Label of a rolled credit edge: the steps of the cost relative to the site's step t."""
    if not lags:
        return ""
    lo, hi = ("t" if k == 0 else f"t+{k}" for k in (lags[0], lags[-1]))
    return lo if lo == hi else f"{lo}…{hi}"


def view(est, args, kwargs, rolled=False, unrolled=None):
    """The graph to draw and its credit: this run's graph, the rolled graph, or the rolled graph
    unrolled for ``unrolled`` steps."""
    if rolled and unrolled:
        raise ScgError("render: choose rolled=True or unrolled=T, not both")
    g = est.graph(*args, **kwargs)
    if rolled:
        return roll(g), rolled_credit(g)
    if unrolled:
        g = unroll(roll(g), unrolled)
    return g, {(s, c): [] for s, cs in downstream_costs(g).items() for c in cs}


def render(model, *args, est=None, rolled=False, unrolled=None, credit=False, **kwargs):
    """A ``graphviz.Digraph`` of ``model(*args, **kwargs)``.

    Args:
        est: a compiled estimator to reuse (its cached analysis); compiled if None.
        rolled: draw the rolled graph (one node per site name; back edges dashed, ``t−k``).
        unrolled: draw the rolled structure unrolled for this many steps.
        credit: overlay the credit assignment (dotted red edges site -> credited cost).
    """
    est = est or compile(model)
    g, cr = view(est, args, kwargs, rolled=rolled, unrolled=unrolled)
    return to_graphviz(spec(g, cr if credit else None))
