"""The plan: a cached, tensor-light recipe that turns one run's sites into surrogate losses.

Built once per structure signature from the analysed graph (the causal pass gives each
stochastic site's downstream costs). Per call, the estimator only stacks log-probabilities and
costs by group and applies the credit matrices: no provenance and no networkx work.

For a score site s and a cost c downstream of it, the credit weight is
``W[s, c] = gamma^(t_c - t_s) * scale_c / scale_s``, so ``R_s = sum_c W[s, c] c`` is the site's
relative return G_s (scale: 1 / product of episodes-plate sizes, and 1/T for
``objective="mean"``). The score coefficient is ``kappa_s = gamma^(t_s) * scale_s`` (or
``scale_s`` under the common, biased convention). A cost enters the objective with
``coef_c = gamma^(t_c) * scale_c``.
"""

from dataclasses import dataclass, field

import torch

from . import graph as G

ELEMENTWISE = ("episodes", "plate", "independent")


def _scale(plates):
    n = 1
    for _, _, size, kind in plates:
        if kind == "episodes":
            n *= size
    return 1.0 / n


def _group(names, attrs):
    groups = {}
    for n in names:
        key = (attrs[n]["shape"], attrs[n]["plates"])
        groups.setdefault(key, []).append(n)
    return groups


def _reduction(cost_key, site_key):
    """Dims of a cost group to sum (keepdim) so each element credits only the sites it may,
    then the view that right-aligns it with the site group's batch shape."""
    shape, plates = cost_key
    site_shape, site_plates = site_key
    shared = {p[0] for p in site_plates if p[3] in ELEMENTWISE}
    dims, reduced = [], list(shape)
    for name, dim, _size, _kind in plates:
        if -dim <= len(shape) and shape[dim] > 1 and name not in shared:
            dims.append(dim)
            reduced[dim] = 1
    nd = len(site_shape)
    view = reduced[len(reduced) - nd:] if nd else []
    view = [1] * (nd - len(view)) + view
    return tuple(dims), tuple(view)


@dataclass
class Group:
    names: list
    index: list        # positions in the run's site list
    shape: tuple
    plates: tuple
    coagent: list = field(default_factory=list)


@dataclass
class Plan:
    graph: object
    coagents: list
    sites: list        # score-site groups
    costs: list        # cost groups
    weights: dict      # (site group i, cost group j) -> (W, sum dims, view)
    kappa: list        # per site group, tensor [n]
    coef: list         # per cost group, tensor [n]
    cost_owner: list   # per cost group, list of coagent index or -1
    site_owner: list   # per site group, list of coagent index
    _cache: dict = field(default_factory=dict)

    def on(self, device, dtype):
        """The plan's tensors on a device and dtype (cached)."""
        key = (device, dtype)
        if key not in self._cache:
            mv = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
            self._cache[key] = {
                "weights": {k: (mv(w), d, v) for k, (w, d, v) in self.weights.items()},
                "kappa": [mv(k) for k in self.kappa],
                "coef": [mv(c) for c in self.coef],
                "site_owner": [torch.tensor(o, device=device) for o in self.site_owner],
                "cost_owner": [torch.tensor(o, device=device) for o in self.cost_owner],
            }
        return self._cache[key]


def build(g, gamma, objective="sum", discount_score=True, cost_owner=None):
    """Compile an analysed graph into a :class:`Plan`.

    ``cost_owner`` maps cost names to the coagent owning their pathwise gradient (None: unowned).
    """
    attrs = dict(g.nodes(data=True))
    order = {n: a["order"] for n, a in attrs.items()}
    horizon = 1 + max((a["time"] for a in attrs.values()), default=0)
    per_step = 1.0 / horizon if objective == "mean" else 1.0
    coagents = sorted({a["coagent"] for a in attrs.values() if a["coagent"] is not None})
    index = {c: i for i, c in enumerate(coagents)}
    cost_owner = cost_owner or {}
    down = G.downstream_costs(g)

    def mk(groups):
        return [Group(ns, [order[n] for n in ns], k[0], k[1]) for k, ns in groups.items()]

    site_groups = mk(_group(G.stochastic(g), attrs))
    cost_groups = mk(_group(G.costs(g), attrs))
    t = lambda n: attrs[n]["time"]  # noqa: E731
    cscale = {c: _scale(attrs[c]["plates"]) * per_step for cg in cost_groups for c in cg.names}
    weights = {}
    for i, sg in enumerate(site_groups):
        for j, cg in enumerate(cost_groups):
            W = torch.zeros(len(sg.names), len(cg.names), dtype=torch.float64)
            for a, s in enumerate(sg.names):
                ds = set(down[s])
                for b, c in enumerate(cg.names):
                    if c in ds:
                        W[a, b] = gamma ** (t(c) - t(s)) * cscale[c] / _scale(attrs[s]["plates"])
            if W.any():
                weights[(i, j)] = (W,) + _reduction((cg.shape, cg.plates), (sg.shape, sg.plates))
    kappa = [torch.tensor([(gamma ** t(s) if discount_score else 1.0) * _scale(attrs[s]["plates"])
                           for s in sg.names], dtype=torch.float64) for sg in site_groups]
    coef = [torch.tensor([gamma ** t(c) * cscale[c] for c in cg.names], dtype=torch.float64)
            for cg in cost_groups]
    owner = lambda c: index.get(cost_owner.get(c, attrs[c]["coagent"]), -1)  # noqa: E731
    return Plan(g, coagents, site_groups, cost_groups, weights, kappa, coef,
                [[owner(c) for c in cg.names] for cg in cost_groups],
                [[index[attrs[s]["coagent"]] for s in sg.names] for sg in site_groups])
