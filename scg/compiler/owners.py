"""Who owns which parameters: theta_i per coagent, by autograd reachability (design.md §3).

theta_i is the set of parameters autograd reaches from coagent i's site distributions (a
message's log-probability, a predictor's) and its costs. An unlabelled ``scg.cost`` belongs to
the one coagent whose parameters it reaches (two: an error; none while it reaches parameters:
an error, nothing would train them). :func:`find` reads one recorded run and changes nothing.
"""

from dataclasses import dataclass

import torch

from ..core.terms import predictor_log_prob
from ..errors import ScgError


@dataclass
class Owners:
    """What one run's sites reach.

    Attributes:
        reach: coagent -> {id(p): p}, the parameters its sites reach, in discovery order.
        values: {id(p): p} reached from ``scg.value`` sites (the online critic).
        cost_owner: unlabelled cost name -> the coagent owning its pathwise gradient (None:
            it reaches no parameter).
    """

    reach: dict
    values: dict
    cost_owner: dict


def find(sites, scores=None):
    """The :class:`Owners` of one recorded run. ``scores``: site name -> the site's
    log-probability at its value already taken in this run (a provenance analysis takes one
    per message), so it is not computed again where it carries autograd's graph."""
    reach, seen = {}, {}
    for s in sites:
        if s.coagent is None:
            continue
        if s.role == "message":
            lp = scores.get(s.name) if scores else None
            if lp is None or not lp.requires_grad:
                lp = s.fn.log_prob(s.value.detach())
        else:
            lp = predictor_log_prob(s) if s.role == "predict" else s.value
        # one walk per coagent: a node seen for one of its sites has given its parameters
        leaves(lp, reach.setdefault(s.coagent, {}), seen.setdefault(s.coagent, set()))
    values = {}
    for s in sites:
        if s.role == "value":
            values.update(leaves(s.fn.v))
    return Owners(reach, values, _cost_owners(sites, reach))


def check_objectives(found, objectives):
    """Refuse a parameter reached by coagents with different objectives (design.md §8): one
    tensor cannot climb J_A and J_B at once. ``objectives``: coagent -> its objective's cost
    bitset (:func:`scg.compiler.passes.objectives`), None for the shared J."""
    if objectives is None:
        return
    seen = {}   # id(p) -> first coagent reaching it
    for c, ps in found.reach.items():
        for k, p in ps.items():
            other = seen.setdefault(k, c)
            if other != c and objectives.get(other) != objectives.get(c):
                raise ScgError(f"a parameter of shape {tuple(p.shape)} is reached by coagents "
                               f"{other!r} and {c!r}, which climb different objectives (to= "
                               "addresses different costs to them): one parameter cannot climb "
                               "both; give each coagent its own parameters (to differentiate one "
                               "objective through another coagent's inputs, as LOLA's look-ahead "
                               "does, emit only that objective's costs, without to=, in that run)")


def _cost_owners(sites, reach):
    owner = {}
    for s in sites:
        if s.role == "cost" and s.coagent is None:
            found = leaves(s.value)
            hits = [c for c, ps in reach.items() if found.keys() & ps.keys()]
            if len(hits) > 1:
                raise ScgError(f"cost {s.name!r} reaches parameters of coagents {hits}: "
                               "say whose it is with scg.cost(..., coagent=...)")
            if found and not hits:
                raise ScgError(f"cost {s.name!r} (step {s.time}) reaches parameters that no "
                               "coagent's sites use, so no coagent would train them: say "
                               "whose they are with scg.cost(..., coagent=...)")
            owner[s.name] = hits[0] if hits else None
    return owner


def leaves(t, out=None, seen=None):
    """Parameters (requires-grad leaves) that autograd reaches from ``t``, keyed by id (added
    to ``out``). ``seen``: autograd nodes already walked, whose parameters ``out`` holds: a
    coagent's sites share one, so a recurrent history is walked once, not once per step."""
    out = {} if out is None else out
    seen = set() if seen is None else seen
    stack = [t.grad_fn] if isinstance(t, torch.Tensor) and t.grad_fn is not None else []
    if isinstance(t, torch.Tensor) and t.requires_grad and t.grad_fn is None:
        out[id(t)] = t
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            out[id(fn.variable)] = fn.variable
        stack.extend(f for f, _ in fn.next_functions)
    return out
