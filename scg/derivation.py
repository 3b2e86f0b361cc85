"""``scg.derive``: each coagent's local learning rule, read off the analysed graph."""

from . import graph as G


def rules(g, gamma=1.0, baseline="none", discount_score=True):
    """A dict coagent -> list of lines: its sites, their credited costs and discounting."""
    down = G.downstream_costs(g)
    out = {}
    for s in G.stochastic(g):
        a = g.nodes[s]
        parents = sorted(g.predecessors(s), key=lambda p: g.nodes[p]["order"]) or ["(inputs)"]
        credited = " + ".join(f"γ^{g.nodes[c]['time'] - a['time']}·{c}" for c in down[s]) or "0"
        disc = f"γ^{a['time']}·" if discount_score else ""
        ex = a.get("execute")
        bit = {None: "", "always": "", "bit": "e·"}.get(ex, f"{ex}·")
        held = "  (held where the bit is 0: no term)" if bit else ""
        out.setdefault(a["coagent"], []).append(
            f"  {disc}{bit}∇ log π({s} | {', '.join(parents)}) · (G − b),  G = {credited},  "
            f"b: {baseline}{held}")
    for c in G.costs(g):
        a = g.nodes[c]
        if a["role"] == "predict":
            out.setdefault(a["coagent"], []).append(
                f"  γ^{a['time']}·∇ log q({c})   (supervised predictor term)")
    return out


def derive(model, *args, est=None, **kwargs):
    """Each coagent's learning rule as text (gradient ascent direction on J)."""
    from .estimator import compile

    est = est or compile(model)
    g = est.graph(*args, **kwargs)
    lines = []
    for coagent, rs in rules(g, est.gamma, est.options["baseline"],
                             est.options["discount_score"]).items():
        lines.append(f"coagent {coagent}:")
        lines += rs
    return "\n".join(lines)
