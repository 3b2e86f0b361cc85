"""The dependency graph of a network: structure only, as a networkx DiGraph.

Node and edge attributes: :mod:`scg.core.schema` ("The dependency graph").

Escape nodes (role ``escape``, named ``escape@t``, ``escape.2@t``, ...; ``escape`` outside
steps) stand for the world outside torch: their parents are the sites whose values escaped
(``int(a)`` fed to an environment) and the previous escape node; every site and cost emitted
after one reads it (the conservative fallback of design.md §3.2, linear in size).
"""

import networkx as nx

from ..core.schema import COSTS, GRAPH_ROLES
from ..errors import ScgError


def build(sites, parents, masks=None, bits=None, reads=None, worlds=None):
    """The graph of one analysed run: ``sites`` in order, ``parents[name]`` from provenance,
    ``masks[name]``, ``bits[name]`` and ``reads[name]`` (the parents reached through the site's
    mask, its execution bit, and its distribution or value), and the escape nodes ``worlds``
    (name -> time, order, parents: where values left torch)."""
    g = nx.DiGraph()
    for w, a in (worlds or {}).items():
        g.add_node(w, role="escape", coagent=None, time=a["time"], order=a["order"],
                   plates=(), shape=(), dist="escape", reparam=False, execute=None,
                   execution_of=None, base=w, via=a.get("via"), to=None, unit=None)
    for w, a in (worlds or {}).items():
        for p in a["parents"]:
            g.add_edge(p, w, mask=False, execute=False, reads=False)
    for i, s in enumerate(sites):
        g.add_node(s.name, role=s.role, coagent=s.coagent, time=s.time, order=i,
                   plates=s.plates, shape=tuple(s.fn.batch_shape), dist=type(s.fn).__name__,
                   reparam=bool(s.infer.get("scg_reparam", False)),
                   execute=_execute(s), execution_of=s.infer.get("scg_execution_of"),
                   base=s.infer.get("scg_base", s.name), to=s.infer.get("scg_to"),
                   unit=s.infer.get("scg_unit_coagent"))
    for s in sites:
        for p in parents.get(s.name, ()):
            if p in g and p != s.name:
                g.add_edge(p, s.name, mask=p in (masks or {}).get(s.name, ()),
                           execute=p in (bits or {}).get(s.name, ()),
                           reads=p in (reads or {}).get(s.name, ()))
    validate(g)
    return g


def _execute(site):
    src = site.infer.get("scg_execute")
    if src is None or src in ("bit", "always"):
        return src
    return f"{src}@{site.time}" if "@" in site.name else src


def validate(g):
    """Check the invariants every pass relies on; raise naming the offending node."""
    for n, a in g.nodes(data=True):
        if a["role"] not in GRAPH_ROLES:
            raise ScgError(f"node {n!r} has unknown role {a['role']!r}")
        if a["role"] in COSTS and g.out_degree(n):
            raise ScgError(f"cost {n!r} has children: costs are sinks")
        if a["role"] == "message" and a["coagent"] is None:
            raise ScgError(f"message {n!r} has no coagent")
    for u, v in g.edges:
        if g.nodes[u]["order"] >= g.nodes[v]["order"]:
            raise ScgError(f"edge {u!r} -> {v!r} goes backwards in execution order")
    if not nx.is_directed_acyclic_graph(g):
        raise ScgError("the unrolled graph has a cycle")
    return g


def stochastic(g):
    """Sites with a score term: messages that are not reparameterised."""
    return [n for n, a in g.nodes(data=True) if a["role"] == "message" and not a["reparam"]]


def costs(g):
    """Rewards, predictors and cost terms, in execution order."""
    return [n for n, a in g.nodes(data=True) if a["role"] in COSTS]


def cost_order(g):
    """The costs grouped as the plan groups them: by (batch shape, plates), groups in order of
    first appearance, execution order within each group."""
    groups = {}
    for c in sorted(costs(g), key=lambda n: g.nodes[n]["order"]):
        a = g.nodes[c]
        groups.setdefault((a["shape"], a["plates"]), []).append(c)
    return [c for cs in groups.values() for c in cs]


def site_order(g):
    """The stochastic sites grouped as the plan groups them (as :func:`cost_order`)."""
    groups = {}
    for n in sorted(stochastic(g), key=lambda n: g.nodes[n]["order"]):
        a = g.nodes[n]
        groups.setdefault((a["shape"], a["plates"]), []).append(n)
    return [n for ns in groups.values() for n in ns]


def downstream_costs(g):
    """The causal pass: for each stochastic site, the costs it can influence (its descendants),
    in execution order. Returns a new dict; the graph is not changed."""
    cs = costs(g)
    bits = downstream_bitsets(g, cs)
    return {s: [cs[k] for k in bitset_members(bits[s])] for s in stochastic(g)}


def credited_costs(g):
    """For each stochastic site, the costs it is credited with, in execution order: its
    ``downstream`` set where the passes have run (:func:`scg.compiler.passes.causal`, masked
    per objective by :func:`scg.compiler.passes.objectives`), else its descendants
    (:func:`downstream_costs`)."""
    order = g.graph.get("costs")
    if order is None:
        return downstream_costs(g)
    at = lambda c: g.nodes[c]["order"]  # noqa: E731
    return {s: sorted((order[k] for k in bitset_members(g.nodes[s]["downstream"])), key=at)
            for s in stochastic(g)}


def downstream_bitsets(g, targets):
    """For every node, the set of ``targets`` among its descendants as a bitset (a Python int;
    bit k is ``targets[k]``). One pass in reverse execution order, each node the union of its
    children's sets: linear in the edges, where one ``nx.descendants`` per site is quadratic on
    a chain."""
    pos = {c: k for k, c in enumerate(targets)}
    bits = {}
    for n in sorted(g, key=lambda n: g.nodes[n]["order"], reverse=True):
        b = 0
        for child in g.successors(n):
            b |= bits[child]
            if child in pos:
                b |= 1 << pos[child]
        bits[n] = b
    return bits


def bitset_members(b):
    """The set bits of ``b``, ascending."""
    out = []
    for lo, hi in bitset_ranges(b):
        out.extend(range(lo, hi))
    return out


def bitset_ranges(b):
    """The maximal runs of set bits of ``b`` as half-open ranges ``[lo, hi)``, ascending."""
    out = []
    while b:
        lo = (b & -b).bit_length() - 1
        x = b >> lo
        length = (~x & (x + 1)).bit_length() - 1
        out.append((lo, lo + length))
        b &= ~(((1 << length) - 1) << lo)
    return out


def to_text(g):
    """A readable listing: one line per node with its role, coagent, time and parents."""
    lines = []
    for n in sorted(g, key=lambda n: g.nodes[n]["order"]):
        a = g.nodes[n]
        who = f" [{a['coagent']}]" if a["coagent"] else ""
        parents = ", ".join(sorted(g.predecessors(n), key=lambda p: g.nodes[p]["order"]))
        plates = ",".join(p[0] for p in a["plates"])
        lines.append(f"t={a['time']:<3} {a['role']:<8} {n}{who} ~ {a['dist']}{list(a['shape'])}"
                     f"{' in ' + plates if plates else ''} <- {{{parents}}}")
    return "\n".join(lines)
