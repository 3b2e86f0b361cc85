"""``scg.render``: a network as a picture, built in layers: graph -> plain spec -> graphviz.

The spec is a plain dict (nodes, edges, coagent clusters, plates), so tests and other front ends
use it without the ``dot`` binary; :func:`to_graphviz` only draws it.

What is drawn is the *declared* structure (:func:`direct`), not every dependency the analysis
found: provenance gives a site every site whose value reached it through torch state that is not
a site (a held output, the ``scg.done`` mask, an environment's state carried in a tensor), so in
a gridworld the unit reading the state at step t reads every earlier move. Those edges are the
transitive closure of the reads of the previous step, and the picture leaves them out; the
credit overlay and the estimator use the full graph.

Conventions (Pyro's plate notation, plus roles and time):

* roles by shape: message ellipse, environment draw diamond, reward box, cost dashed box, value
  hexagon, environment node (an escape node: values left torch there, e.g. into a gymnasium
  environment) dashed octagon; a predictor is shaded (its data is observed);
* an execution coagent's bit is a small filled circle inside its unit's cluster, with a bold
  edge ``e`` into the unit;
* one cluster per coagent (rounded, labelled), nested inside the plates its sites live in;
  plates are boxes labelled with their name and size, as in ``pyro.render_model``;
* time: the *rolled* view has one node per site name and draws reads of earlier steps as
  dashed back edges labelled with their lags (``t−1``; a few, or a range ``t−1…t−k``); an
  asynchronous unit's dashed self-loop ``t−1`` is its held output; the *unrolled* view repeats
  the network for T steps, laid out left to right in time order (each step in its own band of
  graphviz ranks, all of step t left of step t + 1);
* an edge that only masks its head (``scg.done``) is grey;
* ``credit=True`` overlays dotted red edges site -> cost for every cost in the site's return.
"""

import graphviz

from ..compiler.graph import credited_costs
from ..compiler.passes import climber, roll, rolled_credit, split, unroll
from ..errors import ScgError
from ..estimators.estimator import compile

STYLE = {
    "message": {"shape": "ellipse"},
    "exec": {"shape": "circle", "fixedsize": "true", "width": "0.2", "height": "0.2",
             "style": "filled", "fillcolor": "steelblue", "color": "steelblue",
             "fontsize": "9"},
    "env": {"shape": "diamond"},
    "predict": {"shape": "ellipse", "style": "filled", "fillcolor": "lightgrey"},
    "reward": {"shape": "box"},
    "cost": {"shape": "box", "style": "dashed"},
    "value": {"shape": "hexagon"},
    "escape": {"shape": "octagon", "style": "dashed", "fontsize": "10"},
}
CREDIT = {"style": "dotted", "color": "red"}
MASK = {"color": "grey55"}
MAX_LAGS = 2  # an edge label lists at most this many lags, more are a range


def kind(attrs):
    """The drawing role of a node: its role, or ``exec`` for an execution coagent's bit."""
    return "exec" if attrs.get("execution_of") else attrs["role"]


def held(attrs):
    """Whether a node is an asynchronous unit: where it does not execute it holds its output."""
    return attrs["role"] == "message" and attrs.get("execute") not in (None, "always")


# ---- the declared structure ------------------------------------------------------------------
def direct(g):
    """The structure a picture shows, from an unrolled graph ``g`` (a run's, or
    :func:`~scg.compiler.passes.unroll`'s): a new graph with ``g``'s nodes,

    * plus a *hold* edge ``m@t−1 -> m@t`` (flag ``hold``) for every asynchronous unit ``m``:
      its output at t is its output at t − 1 where it does not execute (design.md §4);
    * less the edges that are only the transitive closure of others. An edge ``u -> v`` is a
      closure when another parent ``w`` of v descends from u and reaches v the same way (for
      each of the edge's flags ``reads``, ``mask`` and ``execute`` some such w's edge into v
      has it; a hold counts as a read); it is left out when, besides, either its lag
      (``time(v) − time(u)``) is not the least lag between those two site names, or u is the
      execution bit of a held unit w (v reads the unit's output, which the bit chose).

    So a read of an earlier step is drawn at its least lag, and the larger lags through the
    state in between are not: in a gridworld the unit reading the state at t reads the move of
    t − 1 (``t−1``), not every earlier move (``t−1…t−29``). Every other edge stays, however
    many paths run in parallel to it: a unit reading the state and an option computed from the
    state reads both. An edge is removed only where a longer path leads from u to v, which
    keeps reachability: every site reaches the costs it reaches in ``g``."""
    h = g.copy()
    for n, a in g.nodes(data=True):
        base, t = split(n)
        prev = f"{base}@{t - 1}" if t else None
        if held(a) and prev in g:
            if h.has_edge(prev, n):
                h.edges[prev, n]["hold"] = True
            else:
                h.add_edge(prev, n, mask=False, execute=False, reads=False, hold=True)
    order = sorted(h, key=lambda n: h.nodes[n]["order"])
    pos = {n: i for i, n in enumerate(order)}
    below = {}  # node -> its descendants, as a bitset over pos
    for n in reversed(order):
        b = 0
        for c in h.successors(n):
            b |= below[c] | 1 << pos[c]
        below[n] = b

    name = {n: split(n)[0] for n in h}
    least = {}  # (tail's name, head's name) -> the least lag of an edge between them
    for u, v in h.edges:
        lag, pair = h.nodes[v]["time"] - h.nodes[u]["time"], (name[u], name[v])
        least[pair] = min(lag, least.get(pair, lag))

    def how(a):
        """The ways an edge reaches its head: its flags (a hold is a read); ``any`` if none."""
        ways = {k for k in ("mask", "execute") if a.get(k)}
        ways |= {"reads"} if a.get("reads") or a.get("hold") else set()
        return ways or {"any"}

    def closure(u, v):
        a = h.edges[u, v]
        if a.get("hold") or kind(h.nodes[u]) == kind(h.nodes[v]) == "escape":
            return False  # a held output, the environment's own state: declared recurrence
        via = [w for w in h.predecessors(v) if w != u and below[u] >> pos[w] & 1]
        if not all(any(k == "any" or k in how(h.edges[w, v]) for w in via) for k in how(a)):
            return False
        if h.nodes[v]["time"] - h.nodes[u]["time"] > least[name[u], name[v]]:
            return True
        return any(h.has_edge(u, w) and h.edges[u, w].get("execute") and held(h.nodes[w])
                   for w in via)

    h.remove_edges_from([(u, v) for u, v in h.edges if closure(u, v)])
    return h


# ---- the spec ----------------------------------------------------------------------------------
def spec(g, credited=None):
    """The plain description of graph ``g`` (unrolled or rolled; :func:`view` gives the
    declared structure of either).

    Keys: ``nodes`` (name, role, kind, coagent, cluster (the coagent whose cluster it is drawn
    in), plates, label, step (unrolled), unit (the unit an execution bit drives) and graphviz
    attributes), ``edges`` (sorted (tail, head) pairs of data flow), ``back`` ({edge: lags} of a
    rolled graph's reads of earlier steps), ``hold`` (the edges holding an asynchronous unit's
    output: its self-loop in a rolled graph, ``m@t−1 -> m@t`` unrolled), ``mask`` (edges that
    only mask their head), ``credit`` ({(site, cost): lags}, empty unless ``credited`` is
    given), ``execute`` (edges into a unit's execution bit), ``clusters`` (coagent -> the nodes
    drawn in its cluster: its sites and the execution bits of its units), ``plates`` (name ->
    size, kind, nodes), ``steps`` (an unrolled graph's step -> its nodes; empty when rolled) and
    ``time_order`` (the invisible edges of :func:`time_order`).
    """
    rolled = any("times" in a for _, a in g.nodes(data=True))
    nodes, clusters, plates, steps = [], {}, {}, {}
    execute = sorted((u, v) for u, v, a in g.edges(data=True) if a.get("execute"))
    drives = {u: v for u, v in execute if kind(g.nodes[u]) == "exec"}
    for n, a in sorted(g.nodes(data=True), key=lambda x: x[1]["order"]):
        k = kind(a)
        ps = tuple(p[0] for p in a.get("plates") or ()) if k != "escape" else _inside(g, n)
        unit = drives.get(n) if k == "exec" else None
        cluster = g.nodes[unit]["coagent"] if unit is not None else a["coagent"]
        step = None if rolled else split(n)[1]
        nodes.append({"name": n, "role": a["role"], "kind": k, "coagent": a["coagent"],
                      "cluster": cluster, "plates": ps, "label": _label(n, k, a),
                      "filled": k == "predict", "step": step, "unit": unit,
                      "attrs": dict(STYLE[k], tooltip=n, **({"xlabel": n} if k == "exec"
                                                            and rolled else {}))})
        if cluster is not None:
            clusters.setdefault(cluster, []).append(n)
        if step is not None:
            steps.setdefault(step, []).append(n)
        for name, _, size, pkind in a.get("plates") or ():
            plates.setdefault(name, {"size": size, "kind": pkind, "nodes": []})["nodes"].append(n)
    for node in nodes:  # an environment node belongs to the plates it is drawn in
        if node["kind"] == "escape":
            for name in node["plates"]:
                plates[name]["nodes"].append(node["name"])
    back = {(u, v): a["lags"] for u, v, a in g.edges(data=True) if a.get("back")}
    if rolled:
        hold = sorted((u, v) for u, v, a in g.edges(data=True)
                      if u == v and held(g.nodes[u]) and 1 in a["lags"])
    else:
        hold = sorted((u, v) for u, v, a in g.edges(data=True) if a.get("hold"))
    mask = sorted((u, v) for u, v, a in g.edges(data=True) if a.get("mask")
                  and not (a.get("reads") or a.get("execute") or (u, v) in hold))
    steps = dict(sorted(steps.items()))
    return {"nodes": nodes, "edges": sorted(g.edges), "back": back, "hold": hold,
            "mask": mask, "execute": execute, "credit": dict(credited or {}),
            "clusters": clusters, "plates": plates, "steps": steps,
            "time_order": time_order(steps, g.edges)}


def time_order(steps, edges):
    """The invisible edges that lay an unrolled graph out in time order: from each step's last
    nodes (no edge to a node of the same step) to the next step's first ones (no edge from
    one). Every node of step t then lies left of every node of step t + 1."""
    at = {n: t for t, ns in steps.items() for n in ns}
    inner = [(u, v) for u, v in edges if u in at and at[u] == at.get(v)]
    tails, heads = {u for u, _ in inner}, {v for _, v in inner}
    ts = list(steps)
    return [(u, v) for t, t2 in zip(ts, ts[1:]) for u in steps[t] if u not in tails
            for v in steps[t2] if v not in heads]


def _inside(g, n):
    """The plates an environment (escape) node is drawn in: those of all the sites it links
    (it stands for the world of one episode: design.md §3.2)."""
    near = [m for m in (*g.predecessors(n), *g.successors(n)) if kind(g.nodes[m]) != "escape"]
    paths = [tuple(p[0] for p in g.nodes[m].get("plates") or ()) for m in near]
    common = ()
    for names in zip(*paths) if paths else ():
        if len(set(names)) > 1:
            break
        common += (names[0],)
    return common


def _label(n, k, a):
    if k == "exec":
        return ""  # a small circle: its name is beside it (rolled) and its tooltip
    if k == "predict":
        return n + "\n(observed)"
    if k == "escape":  # escape, escape.2, escape@3: the environment, where values left torch
        via = f"left torch: {a['via']}" if a.get("via") else "values left torch"
        return f"environment{n[len('escape'):]}\n({via})"
    return n


def _plate_label(name, p):
    extra = {"agents": ", interacting", "episodes": ""}.get(p["kind"], "")
    return f"{name}  N={p['size']}{extra}"


# ---- drawing -------------------------------------------------------------------------------------
def to_graphviz(s):
    """Draw a spec: plates as nested clusters holding coagent clusters, roles by shape; an
    unrolled spec lays its steps out left to right in time order (:func:`time_order`)."""
    graph = {"rankdir": "LR", "fontname": "Helvetica", "nodesep": "0.3", "ranksep": "0.45"}
    if s["steps"]:
        graph["newrank"] = "true"  # one ranking for all clusters: time order holds across them
    dot = graphviz.Digraph(graph_attr=graph, node_attr={"fontname": "Helvetica"},
                           edge_attr={"fontname": "Helvetica", "fontsize": "11"})
    tree = {}  # plate path -> cluster -> nodes
    for node in s["nodes"]:
        tree.setdefault(node["plates"], {}).setdefault(node["cluster"], []).append(node)
    seen = {}

    def cluster(key):
        """A unique graphviz cluster name: ``cluster_<key>``, suffixed when repeated."""
        seen[key] = seen.get(key, -1) + 1
        return f"cluster_{key}" + (f"_{seen[key]}" if seen[key] else "")

    def fill(sub, path):
        for coagent, members in tree.get(path, {}).items():
            if coagent is None:
                for node in members:
                    sub.node(node["name"], node["label"], **node["attrs"])
                continue
            with sub.subgraph(name=cluster(coagent)) as c:
                # set every label attribute: a cluster inherits its plate's otherwise
                c.attr(label=str(coagent), labelloc="t", labeljust="l", style="rounded",
                       color="steelblue", fontcolor="steelblue4")
                for node in members:
                    c.node(node["name"], node["label"], **node["attrs"])
        children = sorted({p[:len(path) + 1] for p in tree if len(p) > len(path)
                           and p[:len(path)] == path})
        for child in children:
            with sub.subgraph(name=cluster(f"plate_{child[-1]}")) as c:
                name = child[-1]
                c.attr(label=_plate_label(name, s["plates"][name]), labeljust="r",
                       labelloc="b", style="solid", color="black", fontcolor="black",
                       margin="14")
                fill(c, child)

    fill(dot, ())
    for u, v in s["time_order"]:
        dot.edge(u, v, style="invis", weight="0")
    bits, holds, masks = set(s["execute"]), set(s["hold"]), set(s["mask"])
    for u, v in s["edges"]:
        lags = s["back"].get((u, v))
        attrs = {"style": "dashed", "label": _lags(lags)} if lags else {}
        if lags and 0 not in lags:  # a read of earlier steps: the layout follows the step
            attrs["constraint"] = "false"
        if (u, v) in holds and not lags:
            attrs["style"] = "dashed"
        if (u, v) in masks:
            attrs.update(MASK)
        if (u, v) in bits:
            attrs.update(penwidth="2", label=("e " + attrs.get("label", "")).strip())
            if s["steps"]:
                attrs["weight"] = "4"
        dot.edge(u, v, **attrs)
    for u, v, label in credit_edges(s):
        dot.edge(u, v, label=label, fontcolor="red", **CREDIT)
    return dot


def credit_edges(s):
    """The drawn credit edges ``(site, cost, label)``. Rolled: one per credited pair, labelled
    with its steps (:func:`_span`). Unrolled: the costs of one name credited at consecutive
    steps are one edge, to the first, labelled ``…r@k`` with the last (a site credited with
    every later reward is one edge, not one per step)."""
    if not s["steps"]:
        return [(u, v, _span(lags)) for (u, v), lags in sorted(s["credit"].items())]
    runs = {}  # (site, cost name) -> runs of consecutive steps, as [first, last] pairs
    for u, v in sorted(s["credit"], key=lambda e: (e[0], split(e[1])[0], split(e[1])[1] or 0)):
        base, t = split(v)
        rs = runs.setdefault((u, base), [])
        if t is not None and rs and rs[-1][1] is not None and rs[-1][1] == t - 1:
            rs[-1][1] = t
        else:
            rs.append([t, t])
    return [(u, _at(base, lo), "" if lo == hi else f"…{_at(base, hi)}")
            for (u, base), rs in runs.items() for lo, hi in rs]


def _at(base, t):
    return base if t is None else f"{base}@{t}"


def _lags(lags):
    """Label of a rolled edge's lags: ``t−1``, ``t, t−1``, ``t−1, t−3``; more than
    :data:`MAX_LAGS` are a range, ``t−1…t−18`` (consecutive) or ``t−1…t−18 (5 lags)``."""
    names = [f"t−{k}" if k else "t" for k in lags]
    if len(lags) <= MAX_LAGS:
        return ", ".join(names)
    gaps = "" if lags == list(range(lags[0], lags[-1] + 1)) else f" ({len(lags)} lags)"
    return f"{names[0]}…{names[-1]}{gaps}"


def _span(lags):
    """Label of a rolled credit edge: the steps of the cost relative to the site's step t."""
    if not lags:
        return ""
    lo, hi = ("t" if k == 0 else f"t+{k}" for k in (lags[0], lags[-1]))
    return lo if lo == hi else f"{lo}…{hi}"


def view(est, args, kwargs, rolled=False, unrolled=None):
    """The graph to draw (its declared structure, :func:`direct`) and its credit (from the full
    graph): this run's graph, the rolled graph, or the rolled graph unrolled for ``unrolled``
    steps."""
    if rolled and unrolled:
        raise ScgError("render: choose rolled=True or unrolled=T, not both")
    g = est.graph(*args, **kwargs)
    if rolled:
        return roll(direct(g)), rolled_credit(g)
    if unrolled:
        g = unroll(roll(g), unrolled)
    return direct(g), {(s, c): [] for s, cs in credited_costs(g).items() for c in cs
                       if in_objective(g, s, c)}


def in_objective(g, site, cost):
    """Whether ``cost`` enters the objective the coagent of ``site`` climbs (design.md §8): a
    graph unrolled from the rolled one has not been through the objectives pass."""
    to = g.nodes[cost].get("to")
    return to is None or climber(g.nodes[site]) in to


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
