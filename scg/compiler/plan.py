"""The plan: a cached, tensor-light recipe that turns one run's sites into surrogate losses.

Built once per structure signature from the analysed graph (after the passes, each stochastic
site carries its downstream costs). Per call, the estimator only stacks log-probabilities and
costs by group and applies the credit: no provenance and no networkx work.

For a score site s and a cost c downstream of it, the credit weight is
``gamma^(t_c - t_s) * scale_c / scale_s``, so ``R_s = sum_c weight * c`` is the site's relative
return G_s (scale: 1 / product of episodes-plate sizes, and 1/T for ``objective="mean"``). The
score coefficient is ``kappa_s = gamma^(t_s) * scale_s`` (or ``scale_s`` under the common,
biased convention). A cost enters the objective with ``coef_c = gamma^(t_c) * scale_c``.

Credit by reverse cumulative sums: a site's downstream costs in a cost group are a few runs
``[a, b)`` of consecutive costs (one run, a suffix, on a chain). With the discounted suffix
sums ``S_k = sum_{j >= k} gamma^(t_j - t_k) c_j`` of the group (a log-depth scan),
``sum_{a <= j < b} gamma^(t_j - t_s) c_j = gamma^(t_a - t_s) (S_a - gamma^(t_b - t_a) S_b)``.
Memory and time are linear in sites + runs, never sites x costs.
"""

from dataclasses import dataclass, field

import torch

from . import graph

ELEMENTWISE = ("episodes", "plate", "independent")


def _scale(plates):
    n = 1
    for _, _, size, kind in plates:
        if kind == "episodes":
            n *= size
    return 1.0 / n


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
    """Sites (or costs) of one batch shape and plates, stacked into one tensor per call."""

    names: list
    index: list        # positions in the run's site list
    shape: tuple
    plates: tuple
    coagent: list = field(default_factory=list)


@dataclass
class Credit:
    """How site group i is credited with cost group j: runs r of consecutive costs."""

    site: torch.Tensor   # [r] site index within the site group
    a: torch.Tensor      # [r] first cost of the run
    b: torch.Tensor      # [r] one past the last (n_j: to the end; S_{n_j} = 0)
    wa: torch.Tensor     # [r] gamma^(t_a - t_s) * scale_c / scale_s
    wb: torch.Tensor     # [r] wa * gamma^(t_b - t_a) (0 when b = n_j)
    dims: tuple          # cost dims to sum for this site group
    view: tuple          # the reduced cost's view, aligned with the site group's batch
    to_end: bool = None    # every run goes to the end of the group (wb = 0: no S_b term)
    one_each: bool = None  # run k belongs to site k of every site (no index_add needed)
    unit: bool = None      # every wa is 1 (no multiplication)
    start: int = None      # a is start, start + 1, ...: S[a] is a slice (-1: it is not)

    def __post_init__(self):
        """The shortcuts' flags, read once from the CPU tensors the compiler builds."""
        if self.to_end is None:
            self.to_end = bool((self.wb == 0).all())
        if self.one_each is None:
            n = self.site.shape[0]
            self.one_each = bool(torch.equal(self.site, torch.arange(n, device=self.site.device)))
        if self.unit is None:
            self.unit = bool((self.wa == 1).all())
        if self.start is None:
            r = self.a.shape[0]
            first = int(self.a[0]) if r else 0
            self.start = first if torch.equal(self.a, torch.arange(first, first + r,
                                                                    device=self.a.device)) else -1

    def to(self, device, dtype):
        """The same credit on a device and dtype; the flags travel (reading them from a GPU
        tensor would wait for the device)."""
        mv = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        ix = lambda t: t.to(device=device)  # noqa: E731
        return Credit(ix(self.site), ix(self.a), ix(self.b), mv(self.wa), mv(self.wb),
                      self.dims, self.view, self.to_end, self.one_each, self.unit, self.start)


@dataclass
class Plan:
    """The recipe of one structure: the analysed graph, the coagents (their order indexes the
    local losses), the site and cost groups, and per (site group, cost group) the
    :class:`Credit`; ``kappa`` and ``coef`` are the score and cost coefficients. Tensors are
    kept in float64 on the CPU and moved once per device and dtype (:meth:`on`)."""

    graph: object
    coagents: list
    sites: list        # score-site groups
    costs: list        # cost groups
    credit: dict       # (site group i, cost group j) -> Credit
    scans: list        # per cost group: the decays of each level of the suffix-sum scan
    kappa: list        # per site group, tensor [n]
    coef: list         # per cost group, tensor [n]
    cost_owner: list   # per cost group, list of coagent index or -1
    site_owner: list   # per site group, list of coagent index
    objectives: list = None  # per coagent, per cost group: 1 where the cost is in its J_i
    reach: dict = None       # (i, j) -> Credit of every cost a site influences (any order)
    ancestry: dict = None    # (i, k) -> Credit: site group i's sites that site group k's descend
    _cache: dict = field(default_factory=dict)

    def on(self, device, dtype):
        """The plan's tensors on a device and dtype (cached)."""
        key = (device, dtype)
        if key not in self._cache:
            mv = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
            self._cache[key] = {
                "credit": {k: c.to(device, dtype) for k, c in self.credit.items()},
                "scans": [[mv(d) for d in levels] for levels in self.scans],
                "kappa": [mv(k) for k in self.kappa],
                "kappa_one": [bool((k == 1).all()) for k in self.kappa],   # skip * 1
                "coef": [mv(c) for c in self.coef],
                "site_owner": [torch.tensor(o, device=device) for o in self.site_owner],
                "cost_owner": [_owners(o, device) for o in self.cost_owner],
                "reach": None if self.reach is None else
                {k: c.to(device, dtype) for k, c in self.reach.items()}
                if self.reach is not self.credit else None,
                "ancestry": None if self.ancestry is None else
                {k: c.to(device, dtype) for k, c in self.ancestry.items()},
                "objectives": None if self.objectives is None else
                [torch.stack([mv(m[j]) for m in self.objectives]) for j in range(len(self.coef))],
            }
            if self.reach is self.credit:   # no per-objective masking: the same credit
                self._cache[key]["reach"] = self._cache[key]["credit"]
        return self._cache[key]


def _owners(owner, device):
    """A cost group's owners for emission: (index of the owned costs, their coagents) or None
    when no cost is owned, and the index of the unowned ones or None."""
    owned = [k for k, o in enumerate(owner) if o >= 0]
    free = [k for k, o in enumerate(owner) if o < 0]
    own = (torch.tensor(owned, device=device), torch.tensor([owner[k] for k in owned],
                                                             device=device)) if owned else None
    return own, (torch.tensor(free, device=device) if free else None)


def build(g, gamma, objective="sum", discount_score=True):
    """Compile an analysed graph into a :class:`Plan`.

    ``g`` has been through the passes :func:`~scg.compiler.passes.owned` (each unlabelled
    cost's ``owner``) and :func:`~scg.compiler.passes.causal` (each stochastic site's
    ``downstream`` costs, over ``g.graph["costs"]``), and optionally
    :func:`~scg.compiler.passes.objectives` (``reach``: the unmasked credit) and
    :func:`~scg.compiler.passes.ancestry` (``descendants``: the sites each site influences),
    which the any-order estimator reads (:attr:`Plan.reach`, :attr:`Plan.ancestry`).
    """
    attrs = dict(g.nodes(data=True))
    horizon = 1 + max((a["time"] for a in attrs.values()), default=0)
    per_step = 1.0 / horizon if objective == "mean" else 1.0
    coagents = sorted({a["coagent"] for a in attrs.values() if a["coagent"] is not None})
    index = {c: i for i, c in enumerate(coagents)}
    site_groups = _groups(graph.stochastic(g), attrs)
    cost_groups = _groups(g.graph["costs"], attrs)
    cscale = {c: _scale(attrs[c]["plates"]) * per_step for cg in cost_groups for c in cg.names}
    credit, scans, offset = {}, [], 0
    reach = {} if g.graph.get("objectives") is not None else None
    for j, cg in enumerate(cost_groups):
        times = [attrs[c]["time"] for c in cg.names]
        scans.append(scan_levels([gamma ** (b - a) for a, b in zip(times, times[1:])] + [0.0]))
        for i, sg in enumerate(site_groups):
            c = _credit(sg, cg, attrs, times, offset, cscale[cg.names[0]], gamma)
            if c is not None:
                credit[(i, j)] = c
            c = None if reach is None else \
                _credit(sg, cg, attrs, times, offset, cscale[cg.names[0]], gamma, "reach")
            if c is not None:
                reach[(i, j)] = c
        offset += len(cg.names)
    ancestry = _ancestry(site_groups, attrs, gamma) if "scored" in g.graph else None
    t = lambda n: attrs[n]["time"]  # noqa: E731
    kappa = [torch.tensor([(gamma ** t(s) if discount_score else 1.0) * _scale(attrs[s]["plates"])
                           for s in sg.names], dtype=torch.float64) for sg in site_groups]
    coef = [torch.tensor([gamma ** t(c) * cscale[c] for c in cg.names], dtype=torch.float64)
            for cg in cost_groups]
    bits = g.graph.get("objectives")
    pos = {c: k for k, c in enumerate(g.graph["costs"])}
    member = lambda x, c: bits is None or bool(bits[x] >> pos[c] & 1)  # noqa: E731

    def owner(c):   # the coagent whose local loss takes c's pathwise term (-1: none)
        x = attrs[c].get("owner", attrs[c]["coagent"])
        return index[x] if x in index and member(x, c) else -1

    objectives = None if bits is None else [
        [torch.tensor([float(member(x, c)) for c in cg.names], dtype=torch.float64)
         for cg in cost_groups] for x in coagents]
    return Plan(g, coagents, site_groups, cost_groups, credit, scans, kappa, coef,
                [[owner(c) for c in cg.names] for cg in cost_groups],
                [[index[attrs[s]["coagent"]] for s in sg.names] for sg in site_groups],
                objectives, credit if reach is None else reach, ancestry)


def _ancestry(site_groups, attrs, gamma):
    """(i, k) -> the :class:`Credit` runs of site group i's sites over site group k's sites
    that descend from them (``descendants`` of :func:`scg.compiler.passes.ancestry`)."""
    out, offset = {}, 0
    for k, tg in enumerate(site_groups):
        times = [attrs[n]["time"] for n in tg.names]
        for i, sg in enumerate(site_groups):
            c = _credit(sg, tg, attrs, times, offset, _scale(attrs[tg.names[0]]["plates"]),
                        gamma, "descendants")
            if c is not None:
                out[(i, k)] = c
        offset += len(tg.names)
    return out


def _groups(names, attrs):
    """Sites (or costs) grouped by batch shape and plates, in order of first appearance."""
    groups = {}
    for n in names:
        groups.setdefault((attrs[n]["shape"], attrs[n]["plates"]), []).append(n)
    return [Group(ns, [attrs[n]["order"] for n in ns], k[0], k[1]) for k, ns in groups.items()]


def _credit(sg, cg, attrs, times, offset, scale, gamma, key="downstream"):
    """The :class:`Credit` of site group ``sg`` with cost group ``cg`` (bits ``offset`` on of
    each site's ``key`` set), or None when no site of it is credited with any."""
    rows, width = [], (1 << len(cg.names)) - 1
    for k, s in enumerate(sg.names):
        ratio, ts = scale / _scale(attrs[s]["plates"]), attrs[s]["time"]
        for a, b in graph.bitset_ranges((attrs[s][key] >> offset) & width):
            wa = gamma ** (times[a] - ts) * ratio
            wb = wa * gamma ** (times[b] - times[a]) if b < len(times) else 0.0
            rows.append((k, a, b, wa, wb))
    if not rows:
        return None
    cols = list(zip(*rows))
    return Credit(torch.tensor(cols[0]), torch.tensor(cols[1]), torch.tensor(cols[2]),
                  torch.tensor(cols[3], dtype=torch.float64),
                  torch.tensor(cols[4], dtype=torch.float64),
                  *_reduction((cg.shape, cg.plates), (sg.shape, sg.plates)))


def scan_levels(decay):
    """The per-level decays of the log-depth suffix scan: level l has ``d_l[k]``, the
    discount from cost k to cost k + 2^l (0 past the end). No levels when every discount is 1
    (gamma = 1): the suffix sums are then a reversed cumulative sum."""
    if all(x == 1.0 for x in decay[:-1]):
        return []
    levels, d, shift = [], torch.tensor(decay, dtype=torch.float64), 1
    while shift < len(decay):
        levels.append(d)
        d = torch.cat([d[:-shift] * d[shift:], d.new_zeros(shift)])
        shift *= 2
    return levels


def suffix_sums(c, levels):
    """``S_k = sum_{j >= k} (discount from k to j) c_j`` along dim 0, plus a zero row S_n: the
    Hillis-Steele scan, log2(n) vectorised steps; without levels (every discount 1), a
    reversed cumulative sum."""
    if not levels:
        S = c.flip(0).cumsum(0).flip(0) if c.shape[0] > 1 else c
        return torch.cat([S, S.new_zeros((1,) + S.shape[1:])])
    S, shift = c, 1
    view = (-1,) + (1,) * (c.dim() - 1)
    for d in levels:
        S = torch.cat([S[:-shift] + d[:-shift].view(view) * S[shift:], S[-shift:]])
        shift *= 2
    return torch.cat([S, S.new_zeros((1,) + S.shape[1:])])


def apply_credit(R, credit, S, like):
    """Add the credited runs of suffix sums ``S`` into the relative returns ``R`` (None:
    zeros) of ``like``'s shape and dtype (the log-probabilities', when costs arrive in another
    dtype). The common shapes of credit (runs to the end of the group, one run per site, unit
    weights) skip the operations they would make no-ops."""
    view = (-1,) + (1,) * (S.dim() - 1)
    runs = S[credit.start:credit.start + credit.a.shape[0]] if credit.start >= 0 else S[credit.a]
    runs = runs if credit.unit else credit.wa.view(view) * runs
    if not credit.to_end:
        runs = runs - credit.wb.view(view) * S[credit.b]
    if credit.one_each and runs.shape[0] == like.shape[0]:
        runs = runs.to(like.dtype).expand(like.shape)   # may be a view of S: never written
        return runs if R is None else R + runs
    R = like.new_zeros(like.shape) if R is None else R
    return R.index_add(0, credit.site, runs.expand((runs.shape[0],) + R.shape[1:]).to(R.dtype))
