"""The Monte Carlo surrogate of one recorded run under its plan (design.md §2 and §3.5).

Its value is ``-(estimate of J)``; its gradient is ``-(estimate of grad J)``:

    sum_c coef_c * c   +   sum_s kappa_s * log p(s) * (R_s - b_s).detach()

(the score part and critic regressions enter with zero value, as ``x - x.detach()``). The
relative returns R_s come from reverse cumulative sums of each cost group
(:func:`scg.compiler.plan.suffix_sums`), never from Python loops over costs.
"""

import math
from dataclasses import dataclass, field

import torch

from ..compiler.plan import apply_credit, suffix_sums
from ..core import devices
from ..core.terms import common_float, group_log_prob, stacked_costs
from ..errors import ScgError


class Stats(dict):
    """An Output's numbers for logs. Tensors among them become Python numbers when first read,
    so a training step that never reads them never waits for the device."""

    def __getitem__(self, key):
        v = super().__getitem__(key)
        if isinstance(v, torch.Tensor):
            v = v.item()
            super().__setitem__(key, v)
        return v

    def get(self, key, default=None):
        return self[key] if key in self else default

    def items(self):
        return [(k, self[k]) for k in self]

    def values(self):
        return [self[k] for k in self]

    def __repr__(self):
        return repr(dict(self.items()))


@dataclass
class Output:
    """One sampled run: ``loss`` (backward it), ``local`` (one surrogate per coagent, summing
    exactly to ``loss``), ``objective`` (the estimate of J: every cost, with its pathwise
    gradient), ``objectives`` (coagent -> the estimate of its J_i: the costs addressed to it,
    design.md §8; each is ``objective`` when no cost has ``to=``) and ``stats`` (numbers for
    logs, :class:`Stats`).

    With costs addressed by ``to=``, ``local[i]``'s value is ``-objectives[i]`` and its
    gradient in theta_i estimates -grad_i J_i (in another coagent's parameters it has none but
    pathwise terms, so one backward pass of ``loss`` gives every coagent its own gradient);
    without, the local losses split the loss's value.

    With ``order="any"`` (DiCE surrogates, :mod:`scg.estimators.dice`) and costs addressed by
    ``to=``, ``local[i]`` is J_i's surrogate in *every* parameter (its derivatives of any order
    estimate those of -J_i, LOLA's cross terms included), so ``loss`` (their sum) is no longer
    each agent's gradient: differentiate ``local[i]`` for agent i. ``climbs`` then maps each
    coagent to the key of the objective it climbs (``local[key]``), as ``scg.Trainer`` and
    ``scg.check`` step them; it is None otherwise."""

    loss: torch.Tensor
    local: dict
    objective: torch.Tensor
    stats: dict = field(default_factory=Stats)
    value: object = None
    sites: list = field(default_factory=list)
    objectives: dict = field(default_factory=dict)
    climbs: dict = None   # order="any" with to=: coagent -> its objective's key coagent


def emit(sites, plan, baseline, update=True, verify=False):
    """The :class:`Output` of one recorded run under ``plan``, with ``baseline`` (a
    :class:`scg.estimators.baselines.Baseline`; ``update``: let it learn from this run).

    A NaN or infinite cost is an error naming it: checked on the CPU always, on an accelerator
    only under ``verify`` (the check waits for the device; ``scg.Trainer`` still refuses a
    non-finite loss before stepping)."""
    tensors, C, per_cost, objective = costs(sites, plan, verify)
    parts = _score_parts(sites, plan, tensors, C, baseline, update)
    stats = Stats({"return": objective.detach(), "sites": len(sites)})
    if plan.objectives is None and len(plan.coagents) == 1:
        loss = _one_coagent(parts, objective)
        return Output(loss, {plan.coagents[0]: loss}, objective, stats,
                      objectives={plan.coagents[0]: objective})
    owned, unowned = _pathwise(per_cost, tensors, objective.new_zeros(len(plan.coagents)))
    local_terms = _per_coagent(parts, plan, tensors, owned)
    if plan.objectives is None:
        loss = -(local_terms.sum() + unowned)
        neg = -(local_terms + unowned / max(len(plan.coagents), 1))
        return Output(loss, dict(zip(plan.coagents, neg.unbind())), objective, stats,
                      objectives=dict.fromkeys(plan.coagents, objective))
    J = per_objective(per_cost, tensors["objectives"])
    neg = -local_terms - (J - owned).detach()   # value -J_i, gradient that of the terms
    return Output(neg.sum(), dict(zip(plan.coagents, neg.unbind())), objective, stats,
                  objectives=dict(zip(plan.coagents, J.unbind())))


def per_objective(per_cost, masks):
    """Each coagent's J_i estimate ``[n_coagents]``: the weighted costs of each group
    (``per_cost``) summed under each coagent's membership mask (``masks``, per group
    ``[n_coagents, n_costs]``)."""
    return sum(m @ v for m, v in zip(masks, per_cost))


def costs(sites, plan, verify=False):
    """A run's costs under ``plan``, shared by both orders: the plan's tensors on the run's
    device and float dtype, the cost groups ``C`` (``[n, *batch]``, with their pathwise
    gradients), each cost's weighted total ``per_cost`` (``[n]`` per group) and the
    objective (their sum). A NaN or infinite cost is an error naming it (see :func:`emit`)."""
    if not plan.costs:
        raise ScgError("the network emitted no reward, cost or predictor: nothing to optimise")
    ref = common_float(sites)   # the run's float dtype and device; costs are cast to it
    tensors = plan.on(ref.device, ref.dtype)
    C = [stacked_costs([sites[i] for i in g.index], ref) for g in plan.costs]
    per_cost = [c.reshape(c.shape[0], -1).sum(1) * k for c, k in zip(C, tensors["coef"])]
    objective = sum(v.sum() for v in per_cost)
    if (verify or devices.reads_are_free(objective)) and not math.isfinite(objective.item()):
        for g, c in zip(plan.costs, C):   # one fused check; the culprit only on failure
            _check_finite(g, c, sites)
    return tensors, C, per_cost, objective


def _pathwise(per_cost, tensors, zeros):
    """The costs' own (pathwise) terms: summed per owning coagent, and the unowned rest."""
    owned, unowned = zeros, 0.0
    for v, (own, free) in zip(per_cost, tensors["cost_owner"]):
        if own is not None:
            owned = owned.index_add(0, own[1], v[own[0]])
        if free is not None:
            unowned = unowned + (v[free].sum() if own is not None else v.sum())
    return owned, unowned


def _score_parts(sites, plan, tensors, C, baseline, update):
    """Per site group i: ``(i, lp, w, regressions)``, its log-probabilities ``[n, *batch]``,
    their detached weights ``w = kappa_s (R_s - b_s)`` (zeros where nothing is credited) and
    its baseline's critic regressions ``[(coagent, r)]`` (or None). Evaluated at once, in
    group order (a baseline learns from each group as it goes)."""
    parts, sums = [], {}   # suffix sums per (cost group, reduction), shared by site groups
    for i, g in enumerate(plan.sites):
        lp = group_log_prob([sites[k] for k in g.index])
        R = _returns(lp, i, plan, tensors, C, sums)
        b, regressions = baseline(g, R, sites, update)
        A = R if b is None else R - b   # kappa_s is per site
        if not tensors["kappa_one"][i]:
            A = A * tensors["kappa"][i].view((-1,) + (1,) * (A.dim() - 1))
        parts.append((i, lp, A.detach(), regressions))
    return parts


def _one_coagent(parts, objective):
    """The loss of a run with one coagent (its local loss too), summed as scalars in as few
    autograd nodes as it takes (the common small model: the fixed cost per call is its cost):
    ``(score.detach() - score) + (regression - regression.detach()) - objective``."""
    score = _total((lp * w).sum() for _, lp, w, _ in parts)
    loss = -objective if score is None else (score.detach() - score) - objective
    regression = _total(r for *_, rs in parts for _, r in rs or ())
    return loss if regression is None else loss + (regression - regression.detach())


def _total(xs):
    """The sum of ``xs`` (None for none), without Python's ``0 +`` node."""
    total = None
    for x in xs:
        total = x if total is None else total + x
    return total


def _zero_valued(x, w=None, per_site=False):
    """``sum(x * w)`` (per site: over all but dim 0) with value zero and its gradient: a score
    term (``w`` its weights) or a critic's regression (``w`` None)."""
    t = x if w is None else x * w
    t = t.reshape(t.shape[0], -1).sum(1) if per_site else t.sum()
    return t - t.detach()


def _per_coagent(parts, plan, tensors, score):
    """The score terms of every site group added into ``score`` (per coagent), less the
    critics' regression terms (minimised) in their coagents' entries."""
    for i, lp, w, regressions in parts:
        score = score.index_add(0, tensors["site_owner"][i], _zero_valued(lp, w, per_site=True))
        for coagent, r in regressions or ():
            at = torch.tensor([plan.coagents.index(coagent)], device=r.device)
            score = score.index_add(0, at, -_zero_valued(r)[None])   # minimised
    return score


def _returns(lp, i, plan, tensors, C, sums):
    """The relative returns R of site group i (``[n_sites, *batch]``), from the suffix sums of
    every cost group it is credited with."""
    R = None
    for j in range(len(plan.costs)):
        credit = tensors["credit"].get((i, j))
        if credit is not None:
            key = (j, credit.dims, credit.view)
            if key not in sums:
                c = C[j].detach()
                c = c.sum(credit.dims, keepdim=True) if credit.dims else c
                sums[key] = suffix_sums(c.reshape((c.shape[0],) + credit.view),
                                        tensors["scans"][j])
            R = apply_credit(R, credit, sums[key], lp)
    return lp.new_zeros(lp.shape) if R is None else R


def _check_finite(group, c, sites):
    if not torch.isfinite(c).all():
        bad = [n for n, x in zip(group.names, c) if not torch.isfinite(x).all()][0]
        s = sites[group.index[group.names.index(bad)]]
        raise ScgError(f"{s.role} {bad!r} (step {s.time}) is NaN or infinite")
