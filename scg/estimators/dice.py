"""The any-order surrogate (``order="any"``, design.md §8): DiCE (Foerster et al. 2018) with the
baseline term of Mao et al. (2019), under the same plan as the first-order estimator.

For an objective J_o (the shared J, or coagent i's J_i):

    L_o = sum_c coef_c c box(Lambda_c)  +  sum_s kappa_s (1 - box(log p(s))) box(A_s) b_s

with box(x) = exp(x - x.detach()): value 1, and d box(x) = box(x) dx, so every derivative of
``c box(Lambda_c)`` carries the score terms of all orders. Lambda_c is the sum of log p(s) over
the stochastic sites that influence cost c (the plan's ``reach``: the causal credit before any
per-objective masking, since J_i depends on every coagent's sites), A_s over the sites s
descends from (``ancestry``). coef_c = gamma^(t_c) scale_c and kappa_s = gamma^(t_s) scale_s are
the first-order estimator's, b_s its baseline of the relative return of s in J_o.

Why it is right. The value of L_o is the estimate of J_o. Each cost's box holds every
stochastic site its value depends on, so E[d^k (c box(Lambda_c))] = d^k E[c] for every k; each
baseline term has expectation 0 in every derivative, because b_s reads no descendant of s and
E_s[d^k (1 - box(log p(s)))] = -d^k 1 = 0 given the sites before s (the box of A_s keeps the
cross terms d log p(s') d log p(s) b_s that reduce the variance of higher derivatives, Mao et
al.'s point). A masked element (``scg.done``, a held step) has log p = 0: box 1, no term. The
first derivative is exactly the first-order estimator's: sum_s kappa_s d log p(s) (R_s - b_s)
plus the pathwise terms.
"""

import torch

from ..core.terms import BATCHED, group_log_prob
from .monte_carlo import Output, Stats, _returns, costs, per_objective


def box(x):
    """The magic box of DiCE: value exactly 1, derivative ``box(x) dx``."""
    return torch.exp(x - x.detach())


class _Stack(torch.autograd.Function):
    """``torch.stack(xs)`` whose backward is one ``unbind``. torch.stack's backward takes one
    ``select`` per input, and a second-order pass through a select writes its slice into a zero
    tensor of the whole stack: quadratic in the number of sites of a group (on a 300-site group,
    the largest single cost of the second backward pass). ``unbind``'s own backward is one
    stack, so every order stays linear. Same values and gradients of every order."""

    @staticmethod
    def forward(ctx, *xs):
        return torch.stack(xs)

    @staticmethod
    def backward(ctx, grad):
        return grad.unbind(0)


def log_probs(group):
    """:func:`~scg.core.terms.group_log_prob` of a site group, with the logits of an unmasked
    Bernoulli or Categorical group stacked by :class:`_Stack` (derivatives of higher order
    linear in the group's size); any other group as there."""
    kind = type(group[0].fn)
    if len(group) > 1 and kind in BATCHED and \
            all(type(s.fn) is kind and s.mask is None for s in group):
        logits = [s.fn.logits for s in group]
        if all(x.shape == logits[0].shape for x in logits):
            values = torch.stack([s.value.detach() for s in group])
            return kind(logits=_Stack.apply(*logits)).log_prob(values)
    return group_log_prob(group)


def gather(lp, credit, n, shape):
    """The adjoint of credit: per target (a cost, or a site) of a group of ``n`` with batch
    ``shape``, the sum of the log-probabilities ``lp`` (``[n_s, *site batch]``) of the sites
    credited with it, ``[n, *reduced]`` (broadcastable to ``[n, *shape]``). Each run
    ``[a, b)`` adds its site's log p to targets a..b-1: a difference array and one cumsum."""
    view = credit.view
    dims = [d + 1 for d, (v, k) in enumerate(zip(view, lp.shape[1:])) if v == 1 and k != 1]
    x = lp.sum(dims, keepdim=True) if dims else lp
    x = x.reshape((x.shape[0],) + tuple(view))
    if credit.one_each:   # run k is site k's: the first r sites, a view (no index, no copy)
        x = x[:credit.site.shape[0]] if credit.site.shape[0] < x.shape[0] else x
    else:
        x = x[credit.site]
    D = x.new_zeros((n + 1,) + tuple(view)).index_add(0, credit.a, x)
    if not credit.to_end:
        D = D.index_add(0, credit.b, -x)
    reduced = list(shape)
    for d in credit.dims:
        reduced[d] = 1
    return D.cumsum(0)[:n].reshape((n,) + tuple(reduced))


def exponents(lps, credits, groups):
    """Per target group k: the summed log-probabilities of its targets' credited sites
    (``credits[(i, k)]`` from site group i), or None where no site is credited."""
    out = []
    for k, tg in enumerate(groups):
        total = None
        for i, lp in enumerate(lps):
            c = credits.get((i, k))
            if c is not None:
                x = gather(lp, c, len(tg.names), tg.shape)
                total = x if total is None else total + x
        out.append(total)
    return out


def emit(sites, plan, baseline_of, update=True, verify=False):
    """The any-order :class:`Output` of one recorded run under ``plan``. ``baseline_of(o)``:
    the :class:`~scg.estimators.baselines.Baseline` of objective ``o`` (None: the shared J;
    else the coagent whose J_i it is, one per distinct objective).

    ``loss``: without ``to=``, L of J (value -J); ``local[i]`` is the same surrogate (value -J,
    the objective every coagent climbs) with coagent i's critic terms. With ``to=``,
    ``local[i]`` is L of J_i (derivatives of every order, in every parameter, for -J_i: what
    LOLA differentiates) and ``loss`` their sum; step coagent i on the gradient of
    ``local[i]`` in its own parameters (``scg.Trainer`` does)."""
    tensors, C, per_cost, objective = costs(sites, plan, verify)
    lps = [log_probs([sites[k] for k in g.index]) for g in plan.sites]
    lam = exponents(lps, tensors["reach"], plan.costs)
    boxed = [(c if x is None else c * box(x)).reshape(c.shape[0], -1).sum(1) * k
             for c, x, k in zip(C, lam, tensors["coef"])]
    above = exponents(lps, tensors["ancestry"], plan.sites)
    # (1 - box(log p(s))) box(A_s) per site group: the baseline terms' factor, shared by every
    # objective (each objective only weighs it by its own detached kappa_s b_s)
    score = [(1 - box(lp)) if a is None else (1 - box(lp)) * box(a) for lp, a in zip(lps, above)]
    reps = representatives(plan)
    critic = {}
    values = {}
    for o in dict.fromkeys(reps.values()):
        masks = None if o is None else [m[plan.coagents.index(o)] for m in tensors["objectives"]]
        value = sum(v.sum() for v in boxed) if masks is None else \
            sum(m @ v for m, v in zip(masks, boxed))
        values[o] = value + _baseline_terms(sites, plan, tensors, C, lps, score, masks,
                                            baseline_of(o), update, critic)
    crit = {c: sum(critic.get(c, [])) for c in plan.coagents}
    stats = Stats({"return": objective.detach(), "sites": len(sites)})
    if plan.objectives is None:
        dice = values[None]
        local = {c: -dice - crit[c] for c in plan.coagents}
        loss = -dice - sum(crit.values())
        return Output(loss, local, objective, stats,
                      objectives=dict.fromkeys(plan.coagents, objective))
    local = {c: -values[reps[c]] - sum(crit[x] for x in plan.coagents if reps[x] == reps[c])
             for c in plan.coagents}
    J = per_objective(per_cost, tensors["objectives"])
    return Output(sum(local.values()), local, objective, stats,
                  objectives=dict(zip(plan.coagents, J.unbind())), climbs=reps)


def representatives(plan):
    """coagent -> its objective's key: None for the shared J; else the first coagent (in plan
    order) with the same objective, so coagents climbing the same costs share one surrogate."""
    if plan.objectives is None:
        return dict.fromkeys(plan.coagents)
    bits = plan.graph.graph["objectives"]
    first = {}
    return {c: first.setdefault(bits[c], c) for c in plan.coagents}


def _baseline_terms(sites, plan, tensors, C, lps, score, masks, baseline, update, critic):
    """sum_s kappa_s (1 - box(log p(s))) box(A_s) b_s over every site (``score[i]``: site group
    i's factor (1 - box(log p(s))) box(A_s)), with b_s the baseline of its relative return in
    the objective whose cost ``masks`` are given (None: every cost); collects critic regression
    terms into ``critic`` (coagent -> list)."""
    if masks is not None:
        C = [c * m.reshape((-1,) + (1,) * (c.dim() - 1)) for c, m in zip(C, masks)]
    total, sums = 0.0, {}
    credit = {"credit": tensors["reach"], "scans": tensors["scans"]}
    for i, g in enumerate(plan.sites):
        R = _returns(lps[i], i, plan, credit, C, sums)
        b, regressions = baseline(g, R, sites, update)
        for coagent, r in regressions or ():
            critic.setdefault(coagent, []).append(r - r.detach())
        if b is None:   # b = 0: no term
            continue
        kappa = tensors["kappa"][i].reshape((-1,) + (1,) * (R.dim() - 1))
        total = total + (score[i] * (kappa * b.detach())).sum()
    return total
