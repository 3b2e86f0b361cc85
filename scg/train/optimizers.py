"""Optimisers for the trainer: step-size schedules, one optimiser from a spec, and the groups.

A *group* is a set of parameters stepped by one optimiser: ``all`` (one optimiser on the total
loss), or with ``per_coagent=True`` one per coagent (the parameters it owns alone, stepped on
its local loss: the coagent policy gradient theorem), ``shared`` (parameters several coagents
reach, stepped on the sum of their local gradients) and ``critic`` (the online critic).
"""

import math

import torch

from ..errors import ScgError

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}
RESERVED = ("shared", "critic", "default")   # group names beside the coagents'


# ---- step-size schedules ---------------------------------------------------------------------
def robbins_monro(tau=100.0, kappa=1.0):
    """Step-size factor ``(1 + t / tau)^(-kappa)``: for 1/2 < kappa <= 1 the step sizes sum to
    infinity and their squares do not (Robbins & Monro 1951), the condition of the stochastic
    approximation convergence results policy-gradient coagents rely on."""
    if not 0.5 < kappa <= 1.0:
        raise ScgError(f"robbins_monro: kappa must be in (0.5, 1] (sum of steps infinite, sum of "
                       f"squares finite), got {kappa}")
    if tau <= 0:
        raise ScgError(f"robbins_monro: tau must be > 0, got {tau}")
    return lambda t: (1.0 + t / tau) ** (-kappa)


def cosine(total):
    """Step-size factor from 1 down to 0 over ``total`` updates along half a cosine."""
    return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


SCHEDULES = {"constant": lambda total: (lambda t: 1.0),
             "robbins-monro": lambda total: robbins_monro(),
             "cosine": cosine}


def schedule(spec, total):
    """A ``step -> factor`` function from a name (``constant``, ``robbins-monro``, ``cosine``),
    a callable, or None (constant)."""
    if spec is None:
        spec = "constant"
    if callable(spec):
        return spec
    if spec not in SCHEDULES:
        raise ScgError(f"unknown schedule {spec!r}; valid: {sorted(SCHEDULES)} or a callable "
                       "step -> factor (e.g. scg.train.optimizers.robbins_monro(tau, kappa))")
    return SCHEDULES[spec](total)


# ---- optimisers ------------------------------------------------------------------------------
def make_optimizer(spec, params, lr, group="all"):
    """The optimiser of one group: ``spec`` is a name in :data:`OPTIMIZERS`, a callable
    ``(params, lr) -> Optimizer``, or a dict group -> one of those (``default`` for groups not
    named; ``adam`` if neither is)."""
    if isinstance(spec, dict):
        spec = spec.get(group, spec.get("default", "adam"))
    if callable(spec) and not isinstance(spec, str):
        return spec(params, lr)
    if str(spec).lower() not in OPTIMIZERS:
        raise ScgError(f"unknown optimizer {spec!r}; valid: {sorted(OPTIMIZERS)} or a callable "
                       "(params, lr) -> torch.optim.Optimizer")
    return OPTIMIZERS[str(spec).lower()](params, lr=lr)


def make_groups(est, optimizer, lr, per_coagent, factor):
    """Group name -> ``(params, optimiser, scheduler)`` for the parameters ``est`` has met
    (read through ``est.coagents``, ``est.parameters``, ``est.shared`` and
    ``est.critic_parameters``); a group with no parameters is left out. ``factor`` is the
    schedule ``step -> factor`` of every group's ``LambdaLR``."""
    named, rates = _coagent_groups(est, optimizer, lr) if per_coagent else _joint_group(est, lr)
    groups = {}
    for g, ps in named.items():
        if ps:
            opt = make_optimizer(optimizer, ps, rates[g], g)
            groups[g] = (ps, opt, torch.optim.lr_scheduler.LambdaLR(opt, factor))
    return groups


def _joint_group(est, lr):
    """``({"all": params}, {"all": lr})``: every parameter, the critic's included."""
    if isinstance(lr, dict):
        raise ScgError("a dict of step sizes needs per_coagent=True")
    return {"all": list(est.parameters()) + est.critic_parameters()}, {"all": lr}


def _coagent_groups(est, optimizer, lr):
    """``(group -> params, group -> step size)`` for one group per coagent (the parameters it
    owns alone), ``shared`` and ``critic``; ``lr`` and ``optimizer`` may be dicts by group."""
    clash = sorted(set(est.coagents) & set(RESERVED))
    if clash:
        raise ScgError(f"coagent name(s) {clash} clash with the trainer's optimiser "
                       "groups ('shared', 'critic', 'default') under per_coagent=True: "
                       "rename the coagent(s)")
    shared = est.shared
    named = {c: [p for p in est.parameters(c) if id(p) not in shared] for c in est.coagents}
    named["shared"] = [p for p in est.parameters() if id(p) in shared]
    named["critic"] = est.critic_parameters()
    lrs = lr if isinstance(lr, dict) else {"default": lr}
    for what, spec in (("lr", lrs), ("optimizer", optimizer)):
        _check_names(what, spec, named, est.coagents)
    return named, {g: lrs.get(g, lrs.get("default", 0.01)) for g in named}


def _check_names(what, spec, named, coagents):
    """A dict ``spec`` (of step sizes or optimisers) names only groups there are."""
    unknown = set(spec) - set(named) - {"default"} if isinstance(spec, dict) else set()
    if unknown:
        raise ScgError(f"{what} names unknown coagent(s) {sorted(unknown)}; "
                       f"coagents: {sorted(coagents)} (and 'shared', "
                       "'critic', 'default')")
