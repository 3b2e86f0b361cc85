"""Passes over the dependency graph: each takes a graph and returns a new one (or a new value
computed from it), never changing its input, so passes compose and are tested alone.

- :func:`owned`: unlabelled costs get the coagent owning their pathwise gradient.
- :func:`causal`: every stochastic site gets its downstream costs (design.md §3.3), the
  credit the plan emits; :func:`sequential`: every cost emitted after it (no data flow).
- :func:`roll` / :func:`unroll`: recurrence over time (design.md §3 and §5).

Tracing a run of ``scg.steps(T)`` already yields the unrolled graph: one node ``name@t`` per
site and step, edges from real data flow. :func:`roll` folds it into the rolled graph: node
``name`` for every ``name@t``, and an edge ``u -> v`` labelled with its *lags* (``t_v - t_u``);
an edge with a positive lag is a *back edge* (v reads u's output from an earlier step), and back
edges may close cycles. :func:`unroll` goes the other way for ``T`` steps, repeating the rolled
structure at every step where both ends exist; on a network whose structure is the same at
every step, ``unroll(roll(g), T)`` has exactly ``g``'s nodes and edges. A site outside
``scg.steps`` (before or after the loop) is linked to every step of a stepped neighbour.

Execution coagents are not a graph pass: an execution bit is drawn while the model runs, so
its ``name.exec`` site is recorded like any other (:mod:`scg.core.asynchrony`) and arrives in
the graph with ``execution_of`` set and an ``execute`` edge to its unit.
"""

import networkx as nx

from ..errors import ScgError
from .graph import cost_order, credited_costs, downstream_bitsets, site_order, stochastic

KEEP = ("role", "coagent", "dist", "reparam", "execution_of", "execute", "plates", "shape",
        "owner", "to", "unit")
FLAGS = ("mask", "execute", "reads")  # edge flags kept when rolling: true if any occurrence


def owned(g, cost_owner):
    """A new graph in which each unlabelled cost named in ``cost_owner`` has attribute
    ``owner``: the coagent owning its pathwise gradient (None: no coagent's). With no such
    cost, ``g`` itself: nothing changes, and no pass writes into its input."""
    if not cost_owner:
        return g
    h = g.copy()
    for c, o in cost_owner.items():
        h.nodes[c]["owner"] = o
    return h


def causal(g):
    """The causal pass: a new graph in which every stochastic site has attribute
    ``downstream``, the costs among its descendants as a bitset (a Python int) over
    ``h.graph["costs"]``: the costs in the plan's grouping (by batch shape and plates, groups
    in order of first appearance, execution order within a group), so that each cost group is
    one contiguous range of bits."""
    h = g.copy()
    order = cost_order(g)
    bits = downstream_bitsets(g, order)
    h.graph["costs"] = order
    for s in stochastic(g):
        h.nodes[s]["downstream"] = bits[s]
    return h


def sequential(g):
    """The causal pass without data flow: a new graph in which every stochastic site's
    ``downstream`` is every cost emitted after it (reward-to-go), in the bitset layout of
    :func:`causal`. Unbiased for any run, since a cost emitted before a site cannot depend on
    it; wider than the data flow allows (more variance): the plan of a structure's first run
    before it is analysed (:meth:`scg.estimators.estimator.Estimator.traced`). Linear."""
    h = g.copy()
    order = cost_order(g)
    pos = {c: k for k, c in enumerate(order)}
    scored = set(stochastic(g))
    later = 0
    for n in sorted(g, key=lambda n: g.nodes[n]["order"], reverse=True):
        if n in pos:
            later |= 1 << pos[n]
        elif n in scored:
            h.nodes[n]["downstream"] = later
    h.graph["costs"] = order
    h.graph["sequential"] = True
    return h


def ancestry(g):
    """A new graph in which every stochastic site has attribute ``descendants``: the
    stochastic sites among its descendants as a bitset over ``h.graph["scored"]`` (the sites in
    the plan's grouping, each group one contiguous range); after :func:`sequential`, every site
    emitted after it (unbiased for any run, as its credit). The any-order estimator's baseline
    term of site s is boxed by the log-probabilities of the sites s descends from (Mao et
    al. 2019)."""
    h = g.copy()
    order = site_order(g)
    if g.graph.get("sequential"):
        pos = {n: k for k, n in enumerate(order)}
        later = 0
        for n in sorted(order, key=lambda n: g.nodes[n]["order"], reverse=True):
            h.nodes[n]["descendants"] = later
            later |= 1 << pos[n]
    else:
        bits = downstream_bitsets(g, order)
        for n in order:
            h.nodes[n]["descendants"] = bits[n]
    h.graph["scored"] = order
    return h


def climber(attrs):
    """The coagent whose objective a node's coagent climbs: an execution coagent climbs its
    unit's (design.md §8), every other coagent its own."""
    return attrs.get("unit") or attrs["coagent"]


def objectives(g):
    """The objectives pass (after :func:`causal` or :func:`sequential`): a new graph in which
    every stochastic site's ``downstream`` keeps only the costs of its coagent's objective J_i
    (every cost without ``to=`` and those addressed to i), and ``reach`` keeps the unmasked set
    (the any-order estimator's magic boxes need every cost a site influences, whoever climbs
    it). ``h.graph["objectives"]``: coagent -> bitset of its objective's costs over
    ``h.graph["costs"]``, or None when no cost has ``to=`` (the shared J: nothing changes).
    A cost addressed to a coagent with no site in the run is an error naming both."""
    h = g.copy()
    order = g.graph["costs"]
    attrs = dict(g.nodes(data=True))
    coagents = sorted({a["coagent"] for a in attrs.values() if a["coagent"] is not None})
    climbers = {climber(a) for a in attrs.values() if a["coagent"] is not None}
    for n in stochastic(g):
        h.nodes[n]["reach"] = g.nodes[n]["downstream"]
    if all(attrs[c].get("to") is None for c in order):
        h.graph["objectives"] = None
        return h
    everyone = 0
    for k, c in enumerate(order):
        a = attrs[c]
        for x in a["to"] or ():
            if x not in climbers:
                step = f" (step {a['time']})" if "@" in c else ""
                raise ScgError(f"{a['role']} {c!r}{step} is addressed to coagent {x!r}, which "
                               f"has no site in this run (coagents: {sorted(climbers)})")
        if a["to"] is None:
            everyone |= 1 << k
    bits = {}
    for x in coagents:
        who = climber(next(a for a in attrs.values() if a["coagent"] == x))
        bits[x] = everyone | sum(1 << k for k, c in enumerate(order)
                                 if attrs[c]["to"] is not None and who in attrs[c]["to"])
    for n in stochastic(g):
        h.nodes[n]["downstream"] = g.nodes[n]["downstream"] & bits[attrs[n]["coagent"]]
    h.graph["objectives"] = bits
    return h


def split(name):
    """``"m@3"`` -> ``("m", 3)``; a name outside ``scg.steps`` -> ``(name, None)``."""
    base, at, t = name.rpartition("@")
    return (base, int(t)) if at else (name, None)


def roll(g):
    """The rolled graph of an unrolled one: node attributes ``times`` (the steps the site
    occurs at; None outside steps) and the unrolled ones in ``KEEP`` (from its first occurrence);
    edge attributes ``lags`` (sorted), ``back`` (any lag > 0), ``mask``, ``execute`` and
    ``reads`` (any occurrence reaches v through its mask / execution bit / distribution), and
    ``read_lags`` (the lags at which v's distribution reads u)."""
    r = nx.DiGraph()
    for n in sorted(g, key=lambda n: g.nodes[n]["order"]):
        base, t = split(n)
        if base not in r:
            r.add_node(base, times=[], **{k: g.nodes[n].get(k) for k in KEEP},
                       order=len(r))
        if t is not None:
            r.nodes[base]["times"].append(t)
    first = min((g.nodes[n]["order"] for n in g if split(n)[1] is not None), default=0)
    for n in r:
        r.nodes[n]["times"] = r.nodes[n]["times"] or None
        r.nodes[n]["after"] = r.nodes[n]["times"] is None and g.nodes[n]["order"] > first
    for u, v in g.edges:
        (bu, tu), (bv, tv) = split(u), split(v)
        lag = (tv - tu) if tu is not None and tv is not None else 0
        flags = {k: bool(g.edges[u, v].get(k)) for k in FLAGS}
        if not r.has_edge(bu, bv):
            r.add_edge(bu, bv, lags=[], read_lags=[], **flags)
        e = r.edges[bu, bv]
        e["lags"] = sorted(set(e["lags"]) | {lag})
        if flags["reads"]:
            e["read_lags"] = sorted(set(e["read_lags"]) | {lag})
        for k in FLAGS:
            e[k] = e[k] or flags[k]
        r.edges[bu, bv]["back"] = max(r.edges[bu, bv]["lags"]) > 0
    return r


def rolled_credit(g):
    """Rolled credit of an unrolled graph: ``{(site, cost): lags}`` over base names, where a lag
    k means the site at step t is credited with the cost at step t + k."""
    out = {}
    for s, cs in credited_costs(g).items():
        bs, ts = split(s)
        for c in cs:
            bc, tc = split(c)
            lag = tc - ts if ts is not None and tc is not None else 0
            out.setdefault((bs, bc), set()).add(lag)
    return {k: sorted(v) for k, v in out.items()}


def back_edges(r):
    """The rolled graph's back edges (reads of earlier steps' outputs), with their lags."""
    return {(u, v): a["lags"] for u, v, a in r.edges(data=True) if a["back"]}


def unroll(r, T):
    """The DAG over ``T`` steps of a rolled graph: ``name@t`` for t < T (a site outside steps
    keeps its name), an edge ``u@(t - lag) -> v@t`` for every lag of every rolled edge."""
    if not isinstance(T, int) or T < 1:
        raise ScgError(f"unroll needs T >= 1 steps, got {T!r}")
    g = nx.DiGraph()
    stepped = [n for n in r if r.nodes[n]["times"] is not None]
    rank = {n: r.nodes[n]["order"] for n in r}

    def at(n, t):
        return f"{n}@{t}" if t is not None and r.nodes[n]["times"] is not None else n

    outside = [n for n in r if r.nodes[n]["times"] is None]
    order = [(n, None) for n in outside if not r.nodes[n]["after"]]
    order += [(n, t) for t in range(T) for n in sorted(stepped, key=rank.get)]
    order += [(n, None) for n in outside if r.nodes[n]["after"]]
    for i, (n, t) in enumerate(order):
        attrs = {k: r.nodes[n][k] for k in KEEP}
        time = t if t is not None else (T - 1 if r.nodes[n]["after"] else 0)
        g.add_node(at(n, t), time=time, order=i, **attrs)
    for u, v, a in r.edges(data=True):
        su, sv = r.nodes[u]["times"] is not None, r.nodes[v]["times"] is not None
        flags = {k: bool(a.get(k)) for k in FLAGS}
        if su and sv:
            g.add_edges_from(((at(u, t - lag), at(v, t)) for lag in a["lags"]
                              for t in range(max(lag, 0), T)), **flags)
        elif su or sv:  # one end outside the loop: linked to every step of the other
            g.add_edges_from(((at(u, t), v) if su else (u, at(v, t)) for t in range(T)),
                             **flags)
        else:
            g.add_edge(u, v, **flags)
    if not nx.is_directed_acyclic_graph(g):
        raise ScgError("the rolled graph has a cycle with no back edge: a site reads its own "
                       "output of the same step")
    # execution order: by step, then the rolled order, but never against an edge (a site that
    # first appears at a later step may run early within its step)
    key = lambda n: (g.nodes[n]["time"], g.nodes[n]["order"])  # noqa: E731
    for i, n in enumerate(nx.lexicographical_topological_sort(g, key=key)):
        g.nodes[n]["order"] = i
    return g
