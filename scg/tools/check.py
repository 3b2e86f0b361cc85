"""``scg.check``: the estimator against an oracle that does not use it.

The oracle derives J(theta) from each run's recorded sites with its own code
(:func:`objective`: discounted, plate-scaled, masked costs; design.md section 2), never from the
estimator's plan or ``out.objective``. The estimator is called as a user calls it, once per run.

Enumeration (discrete, few sites): J(theta) = sum_tau p(tau) J(tau) over every joint value of
the latent sites, set through :class:`~scg.core.record.Fix` (latent, not observed); autograd
gives the exact grad J over every parameter J reaches (found by walking its autograd graph), and
sum_tau p(tau) grad(-loss(tau)) is the estimator's expectation. Baselines are frozen. The two
must agree to float precision. A parameter J reaches that the estimator does not train, or an
exact gradient of zero (a comparison any estimator passes), is not OK. Cost: per joint value
one run of check's own and one of the estimator's (:func:`joint_values`), on one thread.

Otherwise, finite differences: per run (its own seed and, per site, its own uniforms through
the inverse CDF, the same for theta + eps u and theta - eps u: common random numbers) the
central difference of J(tau) along random unit directions u, against the estimator's per-run
gradient projected on u; a two-sided test per direction on the means, with standard errors
from the spread over runs and a Bonferroni correction over directions.
"""

import itertools
import math
import random
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pyro
import torch
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_messenger import TraceMessenger
from pyro.poutine.util import site_is_subsample

from ..core.record import Fix, record
from ..core.schema import COSTS
from ..errors import ScgError
from ..estimators.estimator import Estimator, compile

LATENT = ("message", "env")
ZERO = 1e-6  # a coagent's exact gradient below ZERO * |total gradient| counts as zero
# The exact total gradient counts as zero (the comparison is vacuous) below this norm.
VACUOUS = {torch.float64: 1e-10, torch.float32: 1e-6}
WRAPPERS = (torch.distributions.Independent, MaskedDistribution, ExpandedDistribution)


@dataclass
class Row:
    name: str
    cosine: float
    rel_error: float
    norm_exact: float
    norm_estimate: float
    abs_error: float = 0.0


@dataclass
class Report:
    """Per-coagent and total agreement. ``status`` is "OK", "MISMATCH" or "VACUOUS"; ``ok`` is
    ``status == "OK"``.

    Enumeration: OK when every row is within ``tol`` relative (or ``atol`` absolute) error, the
    exact gradient is not zero (``vacuous``) and no parameter that J reaches is missing from the
    estimator (``problems``). Finite differences: OK when every direction's ``|z|`` is at most
    ``z_max`` (``fd`` holds the per-direction numbers), the finite-difference gradient is
    distinguishable from zero in some direction, and there are no ``problems``.
    """

    method: str
    rows: list
    tol: float
    size: int = 0
    atol: float = 0.0
    dtype: str = ""
    notes: list = field(default_factory=list)
    exact: object = None      # the total exact gradient (enumeration) or FD derivatives
    estimate: object = None   # the estimator's expectation, same layout
    vacuous: bool = False     # the exact gradient is zero: any estimator would agree
    problems: list = field(default_factory=list)  # failures found outside the comparison
    fd: dict = field(default_factory=dict)        # fd: z, se_fd, se_mc, z_max, confidence
    space: int = 0            # enumeration: joint values spanned by the recorded run's sites

    @property
    def agree(self):
        """The numerical comparison alone: every row within tolerance (enumeration), every
        direction's |z| within ``z_max`` (finite differences)."""
        if self.method == "fd":
            return bool((self.fd["z"] <= self.fd["z_max"]).all())
        return all(r.rel_error <= self.tol or r.abs_error <= self.atol for r in self.rows)

    @property
    def status(self):
        if self.problems:
            return "MISMATCH"
        if self.vacuous:
            return "VACUOUS"
        return "OK" if self.agree else "MISMATCH"

    @property
    def ok(self):
        """The estimator passed: agreement, a non-zero exact gradient, no uncredited
        parameter."""
        return self.status == "OK"

    def row(self, name):
        return next(r for r in self.rows if r.name == name)

    def __str__(self):
        if self.method == "fd":
            f = self.fd
            head = (f"scg.check (fd, {self.size} samples, {f['directions']} directions, "
                    f"{self.dtype}, two-sided z test at {f['confidence']:.0%} confidence, "
                    f"Bonferroni over {f['directions']} directions: |z| <= {f['z_max']:.3g}): "
                    f"{self.status}")
        else:
            head = (f"scg.check (enumerate, {self.size} joint values, {self.dtype}, "
                    f"tol {self.tol:g} relative or {self.atol:g} absolute): {self.status}")
        lines = [head, f"{'coagent':<16}{'cosine':>10}{'rel error':>12}{'|exact|':>12}"
                       f"{'|estimate|':>12}"]
        lines += [f"{r.name:<16}{r.cosine:>10.6f}{r.rel_error:>12.3g}{r.norm_exact:>12.4g}"
                  f"{r.norm_estimate:>12.4g}" for r in self.rows]
        if self.method == "fd":
            f = self.fd
            lines.append(f"{'direction':<16}{'fd':>12}{'estimate':>12}{'se(fd)':>12}"
                         f"{'se(est)':>12}{'z':>8}")
            for j in range(f["directions"]):
                lines.append(f"{j:<16}{self.exact[j].item():>12.4g}"
                             f"{self.estimate[j].item():>12.4g}{f['se_fd'][j].item():>12.3g}"
                             f"{f['se_mc'][j].item():>12.3g}{f['z'][j].item():>8.2f}")
        return "\n".join(lines + self.notes)


def check(model, *args, method="auto", max_size=4096, samples=2000, directions=8, eps=1e-2,
          est=None, confidence=0.99, seed=0, order=1, **options):
    """Check the estimator of ``model(*args)``; returns a :class:`Report` (prints as a table).

    ``method``: "enumerate", "fd" or "auto" (enumerate when every latent site is discrete and
    the joint space has at most ``max_size`` values). ``samples``, ``directions``, ``eps``,
    ``confidence`` and ``seed`` are the finite-difference test's. ``options`` go to
    ``scg.compile``. ``order=2`` (enumeration only; the estimator compiled with
    ``order="any"``) also compares the expected Hessian of each surrogate with the exact
    Hessian of its objective: in full up to :data:`FULL_HESSIAN` parameters, else as
    Hessian-vector products along ``directions`` random unit vectors: rows ``hessian`` (of
    ``loss``) and ``hessian <coagent>`` (of each ``local[coagent]``). This ``order`` is the
    check's, not a compile option: to check an ``order="any"`` estimator at first order, pass
    it as ``est=``. With costs addressed by ``to=``, each coagent's row compares with the
    gradient of its own J_i (in every parameter for an ``order="any"`` estimator).
    """
    if method not in ("auto", "enumerate", "fd"):
        raise ScgError(f"unknown method {method!r}; valid: ['auto', 'enumerate', 'fd']")
    if order not in (1, 2):
        raise ScgError(f"check order must be 1 or 2, got {order!r}")
    if order == 2 and est is None:
        options.setdefault("order", "any")
    est = est if est is not None else compile(model, **options)
    if order == 2 and est.order != "any":
        raise ScgError("check(order=2) compares second derivatives: compile the estimator with "
                       "order='any' (the first-order surrogate's Hessian is not J's)")
    tracer = TraceMessenger()
    sites, _ = record(model, args, {}, tracer)   # a plain recorded run: sizes the space
    raw = raw_sites(tracer.trace)
    size, why = space_size(sites)
    if why is None and raw:
        size, why = math.inf, (f"pyro.sample site {raw[0]['name']!r} is not an scg site "
                               "(use scg.env or scg.message for it)")
    if method == "auto":
        method = "enumerate" if why is None and size <= max_size else "fd"
    if method == "enumerate":
        if why is not None:
            raise ScgError(f"cannot enumerate: {why}; use method='fd'")
        if size > max_size:
            raise ScgError(f"the joint space has {size} values (> max_size={max_size}); raise "
                           "max_size or use method='fd'")
        return enumerate_check(est, args, space=size, model=model, order=order,
                               directions=directions, seed=seed)
    if order == 2:
        raise ScgError("check(order=2) compares Hessians by enumeration, and "
                       + ("method='fd' (finite differences) checks first derivatives only"
                          if why is None and size <= max_size else
                          f"this network cannot be enumerated: {why or ''}"
                          f"{'' if why else f'{size} joint values > max_size={max_size}'}"))
    return fd_check(est, args, samples, directions, eps, seed=seed, confidence=confidence,
                    raw=raw, first=sites, model=model)


# ---- the objective, from the sites alone ---------------------------------------------------
def cost_value(site):
    """A cost site's masked value: ``fn.v`` of a reward or cost (expanded to its batch shape),
    ``weight * log q(obs)`` of a predictor; 0 where ``mask`` is False."""
    if site.role == "predict":
        v = site.infer["scg_weight"] * site.fn.log_prob(site.value)
    else:
        v = site.fn.v.expand(site.fn.batch_shape)
        if not v.is_floating_point():
            v = v.to(torch.get_default_dtype())
    return v if site.mask is None else torch.where(site.mask, v, v.new_zeros(()))


def objective(sites, gamma=1.0, kind="sum", climber=None):
    """J(tau) of one run, computed from its sites:

        J(tau) = sum_c gamma^(t_c) * scale_c * sum(masked value_c)

    over the cost sites c (rewards, costs, predictors), where ``scale_c`` is 1 / (the product of
    the sizes of the site's ``scg.episodes`` plates) and, for ``kind="mean"``, also 1 / T with
    T = 1 + the largest site time. Independent of the estimator's plan. ``climber``: J_i of
    coagent i (design.md §8): only the costs addressed to it (``to=``) and those without
    ``to=``."""
    per_step = 1.0
    if kind == "mean" and sites:
        per_step = 1.0 / (1 + max(s.time for s in sites))
    total = 0.0
    for s in sites:
        if s.role not in COSTS or (climber is not None and s.infer.get("scg_to") is not None
                                   and climber not in s.infer["scg_to"]):
            continue
        n = 1
        for _name, _dim, size, plate_kind in s.plates:
            if plate_kind == "episodes":
                n *= size
        total = total + (float(gamma) ** s.time * per_step / n) * cost_value(s).sum()
    return total


def climbers(sites):
    """coagent -> the coagent whose objective it climbs (its unit's, for an execution coagent),
    from the sites' own declarations; None when no cost has ``to=`` (one shared J)."""
    if all(s.infer.get("scg_to") is None for s in sites if s.role in COSTS):
        return None
    return {s.coagent: s.infer.get("scg_unit_coagent") or s.coagent
            for s in sites if s.coagent is not None}


def log_prob(sites):
    """log p(tau) of one run: every latent site's masked log-probability."""
    total = 0.0
    for s in sites:
        if s.role in LATENT:
            lp = s.fn.log_prob(s.value.detach())
            total = total + (lp if s.mask is None else torch.where(s.mask, lp, 0.0)).sum()
    return total


def raw_sites(trace):
    """Latent ``pyro.sample`` sites of a trace that are not scg sites (neither enumerated nor
    credited)."""
    return [n for n in trace.nodes.values() if n["type"] == "sample" and not n["is_observed"]
            and "scg_role" not in n["infer"] and not site_is_subsample(n)]


# ---- enumeration -------------------------------------------------------------------------
def enumerable(fn):
    """The distribution whose support enumerates ``fn`` element by element, or None: ``fn``
    itself, or its base through ``Independent`` (``.to_event``), masking and expansion, whose
    ``batch_shape + event_shape`` is ``fn``'s value shape."""
    d = fn
    while not d.has_enumerate_support:
        if not isinstance(d, WRAPPERS):
            return None
        d = d.base_dist
    if d.batch_shape + d.event_shape != fn.batch_shape + fn.event_shape:
        return None
    return d


def space_size(sites):
    """Number of joint values of the latent sites, and why it cannot be enumerated (or None).
    A site with event dimensions (``to_event``) counts K^(batch elements x event elements)."""
    size = 1
    for s in sites:
        if s.role == "message" and s.infer.get("scg_reparam"):
            return math.inf, f"message {s.name!r} is reparameterised (continuous)"
        if s.role in LATENT:
            d = enumerable(s.fn)
            if d is None:
                return math.inf, f"site {s.name!r} ({type(s.fn).__name__}) is continuous"
            k = d.enumerate_support(expand=False).shape[0]
            size *= k ** d.batch_shape.numel()
    return size, None


def joint_values(model, args):
    """Every joint value of the latent sites of ``model(*args)``, depth first, as ``(values,
    sites)``: the values set (site name -> value) and the sites of check's own recorded run
    with them (no estimator involved). A run that reaches a latent site without a value
    branches over the site's support, element by element (a masked element has one branch),
    and goes on with the last branch; each other branch is a run of its own, from the start.
    So every run gives one joint value (not one run per branch point as well), in the order
    of stopping at the site and running every branch again."""
    stack = [{}]
    while stack:
        values = stack.pop()

        def branch(msg, values=values):
            rest = _branches(values, msg)
            stack.extend(rest[:-1])
            values[msg["name"]] = msg["value"] = rest[-1][msg["name"]]
            msg["done"] = True

        sites, _ = record(model, args, {}, Fix(values, branch))
        yield values, sites


def _branches(values, msg):
    fn, name = msg["fn"], msg["name"]
    d = enumerable(fn)
    if d is None:
        raise ScgError(f"cannot enumerate continuous site {name!r}") from None
    support = d.enumerate_support(expand=True)
    K, elems = support.shape[0], d.batch_shape
    flat = support.reshape((K, elems.numel()) + support.shape[1 + len(elems):])
    cols = torch.arange(elems.numel())
    mask = msg["mask"]
    if mask is None:
        alive = [True] * elems.numel()
    else:  # per batch element of fn, repeated over its event elements
        batch = fn.batch_shape
        m = mask.expand(batch).reshape(batch + (1,) * (len(elems) - len(batch)))
        alive = m.expand(elems).flatten().tolist()
    # a masked (finished) element is counted once, not once per possible value
    choices = [range(K) if a else range(1) for a in alive]
    return [{**values, name: flat[torch.tensor(combo), cols].reshape(support.shape[1:])}
            for combo in itertools.product(*choices)]


def _unexpected(msg):
    raise ScgError(f"the estimator's run reached latent site {msg['name']!r}, which the "
                   "model's run with the same values did not: the estimator's model is not "
                   "this model")


def estimator_run(est, args, values):
    """The estimator's output for one joint value, called as a user calls it."""
    return est.run(args, {}, Fix(values, _unexpected), update=False, sequential=False)


def trajectories(est: Estimator, args):
    """Every joint value of the latent sites, as the :class:`~scg.estimators.estimator.Output`
    of the estimator's run it fixes (``est.run(args, {}, Fix(values), update=False)``)."""
    for values, _ in joint_values(est.model, args):
        yield estimator_run(est, args, values)


@contextmanager
def one_thread():
    """torch on one intra-op thread inside the block (the setting is restored after). Many
    tiny runs gain nothing from more threads, and on a machine whose cores are busy some tiny
    ops (``binary_cross_entropy_with_logits``: Bernoulli's log-probability) wait milliseconds
    per call for another thread: a check became several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def enumerate_check(est, args, space=0, model=None, order=1, directions=8, seed=0):
    """Exact enumeration: J and p(tau) from check's own runs of ``model`` (default
    ``est.model``), the estimate from ``est``'s run of each joint value; on one thread
    (:func:`one_thread`). ``order=2``: Hessians too."""
    with one_thread():
        return _enumerate_check(est, args, space, model, order, directions, seed)


FULL_HESSIAN = 64   # check(order=2): full Hessians up to this many parameters, else HVPs


def _enumerate_check(est, args, space, model, order=1, directions=8, seed=0):
    gamma, kind = float(est.options["gamma"]), est.options["objective"]
    runs = []   # (p(tau), J(tau), estimator's output, own sites)
    Jc = {}     # coagent -> exact J_i (per-coagent objectives only)
    for values, sites in joint_values(model or est.model, args):
        p = log_prob(sites).exp()
        runs.append((p, objective(sites, gamma, kind), estimator_run(est, args, values), sites))
        for c, x in (climbers(sites) or {}).items():
            Jc[c] = Jc.get(c, 0.0) + p * objective(sites, gamma, kind, climber=x)
    J = sum((r[0] * r[1] for r in runs), 0.0)
    E = sum((-r[0].detach() * r[2].loss for r in runs), 0.0)
    Ei = {}
    for p, _, out, _ in runs:
        for c, loss in out.local.items():
            Ei[c] = Ei.get(c, 0.0) - p.detach() * loss
    params = {c: list(ps.values()) for c, ps in est.params.items()}
    credited = {id(p): p for ps in params.values() for p in ps}
    extras = [p for k, p in leaves(J).items() if k not in credited]
    allp = list(credited.values()) + extras
    anyorder = est.order == "any"
    coagents = list(params)
    # the estimator's gradients (its loss, then each local loss) in one pass over its graph
    estimate, *local = _grads([E] + [Ei.get(c, 0.0) for c in coagents], allp)
    local = dict(zip(coagents, local))
    target = J if not (Jc and anyorder) else sum(Jc[c] for c in est.coagents if c in Jc)
    exact, *mine_exact = _grads([target] + ([Jc.get(c, J) for c in coagents] if anyorder
                                            else []), allp)
    mine_exact = dict(zip(coagents, mine_exact))
    if Jc and not anyorder:   # each coagent's parameters climb its own J_i: that block
        exact = _objective_grads(Jc, params, allp, exact)
    rows = [_row("total", exact, estimate)]
    floor = ZERO * rows[0].norm_exact
    shared = set(est.shared)
    at, i = {}, 0       # where each parameter's gradient lies in ``exact``
    for p in allp:
        at[id(p)] = slice(i, i + p.numel())
        i += p.numel()
    for c, ps in params.items():
        own = [p for p in ps if id(p) not in shared]
        if anyorder:   # local[c] is L of J_c in every parameter (design.md §8)
            rows.append(_row(c, mine_exact[c], local[c], floor))
        elif own:   # grad J on a coagent's parameters: its part of the total
            mine = torch.cat([exact[at[id(p)]] for p in own])
            rows.append(_row(c, mine, torch.cat([local[c][at[id(p)]] for p in own]), floor))
    if order == 2:
        U, H = _directions(allp, directions, seed), {}

        def hess(y):   # each objective's exact Hessian once (shared J: every row's)
            if id(y) not in H:
                H[id(y)] = (y, _hessian(y, allp, U))
            return H[id(y)][1]
        rows.append(_row("hessian", hess(target), _hessian(E, allp, U)))
        for c in params:
            rows.append(_row(f"hessian {c}", hess(Jc.get(c, J)),
                             _hessian(Ei.get(c, 0.0), allp, U), floor))
    dtype = allp[0].dtype if allp else torch.get_default_dtype()
    tol, atol = (1e-8, 1e-12) if dtype == torch.float64 else (1e-4, 1e-6)
    notes, problems = [], uncredited(extras, [r[3] for r in runs])
    zero = VACUOUS.get(dtype, 1e-3)
    top = max(r.norm_exact for r in rows)   # per objective, J_A + J_B may be constant
    vacuous = top < zero
    if vacuous:
        notes.append(f"the exact gradient is zero (|grad J| = {top:.3g} < "
                     f"{zero:g}): any estimator would agree, so this is not a check; choose "
                     "inputs or parameters where J changes with the parameters (rewards that "
                     "differ between actions, weights away from a symmetric point)")
    if space and space != len(runs):
        notes.append(f"{len(runs)} joint values enumerated; the recorded run's latent sites "
                     f"span {space} (a masked element counts once; branches add or drop sites)")
    return Report("enumerate", rows, tol, len(runs), atol, str(dtype).replace("torch.", ""),
                  problems + notes, exact=exact, estimate=estimate, vacuous=vacuous,
                  problems=problems, space=space)


# ---- parameters --------------------------------------------------------------------------
def leaves(t):
    """Requires-grad leaf tensors that autograd reaches from ``t``, keyed by id, in the order
    found."""
    out = {}
    if not isinstance(t, torch.Tensor):
        return out
    if t.requires_grad and t.grad_fn is None:
        out[id(t)] = t
    stack, seen = ([t.grad_fn] if t.grad_fn is not None else []), set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        v = getattr(fn, "variable", None)
        if v is not None:
            out.setdefault(id(v), v)
        stack.extend(f for f, _ in reversed(fn.next_functions))
    return out


def site_term(site):
    """The tensor through which J depends on a site: a latent site's masked log-probability,
    a cost site's masked value; None for other sites."""
    if site.role in LATENT:
        lp = site.fn.log_prob(site.value.detach())
        return lp if site.mask is None else torch.where(site.mask, lp, 0.0)
    if site.role in COSTS:
        return cost_value(site)
    return None


def uncredited(extras, site_lists, raw=()):
    """One failure line per parameter J reaches that the estimator does not train, naming the
    sites (scg sites of the runs, then raw ``pyro.sample`` sites) it is reached through."""
    if not extras:
        return []
    want = {id(p) for p in extras}
    where = {k: [] for k in want}
    for sites in site_lists:
        for s in sites:
            t = site_term(s)
            for k in (leaves(t).keys() & want if t is not None else ()):
                if s.name not in where[k]:
                    where[k].append(s.name)
        if all(where.values()):
            break
    for n in raw:
        lp = n["fn"].log_prob(n["value"])
        for k in (leaves(lp).keys() | leaves(n["value"]).keys()) & want:
            where[k].append(f"{n['name']} (pyro.sample, not an scg site)")
    lines = []
    for p in extras:
        names = where[id(p)]
        via = ("sites " if len(names) > 1 else "site ") + ", ".join(
            repr(n) for n in names[:4]) + (", ..." if len(names) > 4 else "") \
            if names else "no recorded site"
        lines.append(f"parameter of shape {tuple(p.shape)} reached by J through {via} is not "
                     "trained by the estimator (not in est.params: no score term or cost of "
                     "a coagent reaches it)")
    return lines


def _grad(y, params):
    if not params:
        return torch.zeros(0)
    if not isinstance(y, torch.Tensor) or not y.requires_grad:
        return torch.cat([torch.zeros_like(p).flatten() for p in params]).double()
    gs = torch.autograd.grad(y, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                      for g, p in zip(gs, params)]).double()


def _grads(ys, params):
    """``[_grad(y, params) for y in ys]`` in one vmapped backward pass where the outputs share
    a graph (the estimator's loss and its local losses: one walk of every enumerated run's
    graph instead of one per output); one pass per output where an op has no batching rule."""
    live = [i for i, y in enumerate(ys) if isinstance(y, torch.Tensor) and y.requires_grad]
    if len(live) < 2 or not params:
        return [_grad(y, params) for y in ys]
    y = torch.stack([ys[i].reshape(()) for i in live])
    try:
        with warnings.catch_warnings():   # vmap's note on ops it loops over
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            gs = torch.autograd.grad(y, params, grad_outputs=torch.eye(len(live)).to(y),
                                     retain_graph=True, allow_unused=True,
                                     is_grads_batched=True)
    except RuntimeError:
        return [_grad(y, params) for y in ys]
    flat = torch.cat([(g if g is not None else torch.zeros((len(live),) + p.shape,
                                                            dtype=p.dtype))
                      .reshape(len(live), -1) for g, p in zip(gs, params)], 1).double()
    rows = dict(zip(live, flat))
    return [rows[i] if i in rows else _grad(y, params) for i, y in enumerate(ys)]


def _directions(params, directions, seed):
    """The directions of check(order=2): every unit vector (the full Hessian) up to
    :data:`FULL_HESSIAN` parameters, else ``directions`` random unit vectors."""
    n = sum(p.numel() for p in params)
    if n <= FULL_HESSIAN:
        return torch.eye(n, dtype=torch.float64)
    U = torch.randn((directions, n), generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    return U / U.norm(dim=1, keepdim=True)


def _hessian(y, params, U):
    """The Hessian of ``y`` in ``params`` applied to the rows of ``U`` (flattened ``[k * n]``):
    double backward, every row's Hessian-vector product in one vmapped pass (one pass per row
    where an op has no batching rule)."""
    n = sum(p.numel() for p in params)
    if not isinstance(y, torch.Tensor) or not y.requires_grad:
        return torch.zeros(U.shape[0] * n, dtype=torch.float64)
    gs = torch.autograd.grad(y, params, create_graph=True, allow_unused=True)
    g = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten()
                   for x, p in zip(gs, params)])
    if not g.requires_grad:
        return torch.zeros(U.shape[0] * n, dtype=torch.float64)
    k = U.shape[0]
    try:   # all directions in one vmapped backward pass
        with warnings.catch_warnings():   # vmap's note on ops it loops over
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            hv = torch.autograd.grad(g, params, grad_outputs=U.to(g), retain_graph=True,
                                     allow_unused=True, is_grads_batched=True)
    except RuntimeError:   # an op without a batching rule: one pass per direction
        hv = [torch.stack(xs) if xs[0] is not None else None for xs in zip(*(
            torch.autograd.grad(g @ u.to(g), params, retain_graph=True, allow_unused=True)
            for u in U))]
    return torch.cat([(x if x is not None else torch.zeros((k,) + p.shape, dtype=p.dtype))
                      .reshape(k, -1) for x, p in zip(hv, params)], 1).double().flatten()


def _objective_grads(Jc, params, allp, exact):
    """The exact per-objective gradient over ``allp``: on coagent i's parameters grad J_i (a
    parameter shared by coagents has one objective: the estimator refuses others), elsewhere
    ``exact`` (grad J of every cost, for parameters no coagent trains)."""
    out, at, i = exact.clone(), {}, 0
    for p in allp:
        at[id(p)] = slice(i, i + p.numel())
        i += p.numel()
    for c, ps in params.items():
        if ps:
            for p, g in zip(ps, _grad(Jc.get(c, 0.0), ps).split([p.numel() for p in ps])):
                out[at[id(p)]] = g
    return out


def _row(name, exact, estimate, floor=0.0):
    """Agreement of two gradients. A coagent whose exact gradient is numerically zero (below
    ``floor``, a tiny fraction of the total gradient's norm) is measured against ``floor``:
    its relative error would otherwise compare rounding noise with rounding noise."""
    ne, nm = exact.norm().item(), estimate.norm().item()
    scale = max(ne, floor)
    err = (estimate - exact).norm().item() / scale if scale > 0 else nm
    cos = (exact @ estimate).item() / (ne * nm) if ne > 0 and nm > 0 else float(ne == nm)
    return Row(name, cos, err, ne, nm, (estimate - exact).norm().item())


# ---- finite differences ------------------------------------------------------------------
def t_quantile(p, nu):
    """The p-quantile of Student's t with ``nu`` degrees of freedom (Cornish-Fisher expansion
    about the normal quantile, Abramowitz & Stegun 26.7.5: within 0.5% for nu >= 5)."""
    z = NormalDist().inv_cdf(p)
    g = [(z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
         (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
         (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160]
    return z + sum(gi / nu ** (i + 1) for i, gi in enumerate(g))


def _seed(seed, k):
    pyro.set_rng_seed((seed * 1_000_003 + k) % 2 ** 32)


class Couple(Messenger):
    """Draw every latent sample site of a run from its own uniforms, seeded by (run key, site
    name), through the inverse CDF where there is one: common random numbers that stay in step
    when theta moves. Each element's value is a monotone function of its own uniform, so a
    small move changes a discrete value only where the uniform lies near a CDF step, and a
    changed value at one site (a Poisson draw consuming another number of uniforms in torch's
    sampler) cannot shift the random numbers of any other element or site."""

    def __init__(self, key):
        super().__init__()
        self.key = key

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["done"] or site_is_subsample(msg):
            return
        seed = (self.key * 1_000_033 + zlib.crc32(msg["name"].encode())) % 2 ** 63
        msg["value"] = coupled_sample(msg["fn"], seed)
        msg["done"] = True


def _elementwise(fn):
    """``fn`` without ``Independent`` and masking wrappers: a distribution of the same value
    shape whose log-probability is elementwise (scalar events), or None."""
    d = fn
    while isinstance(d, (torch.distributions.Independent, MaskedDistribution)):
        d = d.base_dist
    shape = fn.batch_shape + fn.event_shape
    return d if d.event_shape == () and d.batch_shape == shape else None


def coupled_sample(fn, seed):
    """One draw of ``fn`` from uniforms of a generator seeded with ``seed``: the inverse CDF of
    an enumerable or non-negative-integer distribution, ``icdf`` of a continuous one, else
    ``fn.sample()`` under that seed."""
    gen = torch.Generator().manual_seed(seed)
    shape = fn.batch_shape + fn.event_shape
    d = enumerable(fn)
    if d is not None:
        support = d.enumerate_support(expand=True)      # [K, *batch, *event]
        K, n = support.shape[0], d.batch_shape.numel()
        cdf = d.log_prob(support).exp().double().cumsum(0)
        u = torch.rand(d.batch_shape, generator=gen, dtype=torch.float64).to(cdf.device)
        idx = (cdf < u * cdf[-1]).sum(0).clamp(max=K - 1).flatten()
        flat = support.reshape((K, n) + d.event_shape)
        return flat[idx, torch.arange(n, device=idx.device)].reshape(shape)
    e = _elementwise(fn)
    if e is not None:
        if e.support is torch.distributions.constraints.nonnegative_integer:
            dev = e.mean.device
            u = torch.rand(shape, generator=gen, dtype=torch.float64).to(dev)
            value = torch.zeros(shape, dtype=torch.float64, device=dev)
            cdf, done = torch.zeros_like(value), torch.zeros(shape, dtype=torch.bool, device=dev)
            for k in range(1_000_000):
                p = e.log_prob(torch.full(shape, float(k), dtype=e.mean.dtype,
                                          device=dev)).exp().double()
                cdf = cdf + p
                new = ~done & (u <= cdf)
                value = torch.where(new, float(k), value)
                done = done | new
                rest = ~done
                if not rest.any():
                    break
                if (p[rest] == 0).all() and (cdf[rest] > 0.5).all():  # the tail underflowed
                    value = torch.where(rest, float(k), value)
                    break
            return value.to(e.mean.dtype)
        if not e.support.is_discrete:
            u = torch.rand(shape, generator=gen, dtype=torch.float64)
            try:
                return e.icdf(u.to(device=e.mean.device, dtype=e.mean.dtype))
            except (NotImplementedError, AttributeError, ValueError):
                pass
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return fn.sample()


def fd_check(est, args, samples, directions, eps, seed=0, confidence=0.99, raw=(), first=(),
             model=None):
    """Finite differences of J against the estimator, with a stated statistical test.

    Run k (k < ``samples``) has its own seed. The estimator's gradient of run k,
    ``g_k = grad(-loss_k)`` (``est.run`` as a user calls it), is projected on ``directions``
    random unit vectors u_j; the finite difference of run k along u_j is
    ``(J_k(theta + eps u_j) - J_k(theta - eps u_j)) / (2 eps)``, J_k from check's own run of
    the model (:func:`objective` of its sites) with common random numbers on both sides: run
    k's seed, and every latent site drawn by :class:`Couple` (inverse CDF of its own seeded
    uniforms). Per direction, with means and standard errors over runs,

        z_j = |fd_j - est_j| / sqrt(max(se_fd^2 + se_est^2, se_diff^2) + rounding^2)

    (se_diff: of the per-run differences, which covers a negative correlation of the two).
    OK when every z_j <= t_{n-1}^{-1}(1 - (1 - confidence) / (2 directions)): a two-sided test
    at level 1 - confidence with a Bonferroni correction. VACUOUS when no direction's fd is
    significantly non-zero (a zero gradient would pass). The central difference's truncation
    bias, O(eps^2), is not in the standard errors.
    """
    if samples < 6:
        raise ScgError(f"fd needs samples >= 6 runs for its standard errors, got {samples}")
    if not 0.0 < confidence < 1.0:
        raise ScgError(f"confidence must be in (0, 1), got {confidence}")
    gamma, kind = float(est.options["gamma"]), est.options["objective"]
    model = model or est.model
    state = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    try:
        _seed(seed, 0)
        out0 = est.run(args, {}, update=False)
        credited = {id(p): p for ps in est.params.values() for p in ps.values()}
        reached = {}
        for sites in (first, out0.sites):
            for s in sites:
                t = site_term(s)
                reached.update(leaves(t) if t is not None else {})
        for n in raw:
            reached.update(leaves(n["fn"].log_prob(n["value"])))
            reached.update(leaves(n["value"]))
        extras = [p for k, p in reached.items() if k not in credited]
        params = list(credited.values()) + extras
        if not params:
            raise ScgError("nothing to check: no parameter reaches J or the estimator")
        flat = torch.cat([p.detach().flatten() for p in params])
        rng = torch.Generator().manual_seed(seed)
        U = torch.randn((directions, flat.numel()), generator=rng, dtype=torch.float64)
        U = U / U.norm(dim=1, keepdim=True)
        mc = torch.zeros(samples, directions, dtype=torch.float64)
        for k in range(samples):
            out = out0 if k == 0 else None
            if out is None:
                _seed(seed, k)
                out = est.run(args, {}, update=False)
            mc[k] = U @ _climbing_grad(est, out, params)
            del out
        out0 = None
        Jpm = torch.zeros(2, directions, samples, dtype=torch.float64)
        blocks = _blocks(est, params, flat, climbers(first) if first else None)
        try:
            for j in range(directions):
                for side, sign in enumerate((1.0, -1.0)):
                    for mask, climber in blocks:
                        _assign(params, flat + sign * eps * (U[j].to(flat) * mask))
                        with torch.no_grad():
                            for k in range(samples):
                                _seed(seed, k)
                                sites, _ = record(model, args, {},
                                                  Couple(seed * 1_000_003 + k))
                                Jpm[side, j, k] += float(objective(sites, gamma, kind,
                                                                   climber))
        finally:
            _assign(params, flat)
    finally:
        torch.set_rng_state(state[0])
        random.setstate(state[1])
        np.random.set_state(state[2])
    fdk = ((Jpm[0] - Jpm[1]) / (2 * eps)).T          # [samples, directions]
    n = samples
    fd, est_mean = fdk.mean(0), mc.mean(0)
    se_fd, se_mc = fdk.std(0) / n ** 0.5, mc.std(0) / n ** 0.5
    se_diff = (fdk - mc).std(0) / n ** 0.5
    tiny = torch.finfo(flat.dtype).eps
    rounding = 8 * tiny * (Jpm.abs().mean((0, 2)) / eps + est_mean.abs())
    se = (torch.maximum(se_fd ** 2 + se_mc ** 2, se_diff ** 2) + rounding ** 2).sqrt()
    z = (fd - est_mean).abs() / se
    z = torch.where(se > 0, z, torch.where(fd == est_mean, 0.0, math.inf))
    z_max = t_quantile(1 - (1 - confidence) / (2 * directions), n - 1)
    signal = fd.abs() / (se_fd ** 2 + rounding ** 2).sqrt()
    vacuous = not bool((signal > z_max).any())
    row = _row("total", fd, est_mean)
    notes = [f"test: per direction, z = |fd - estimate| / se, se from the spread over {n} "
             f"runs; fd: central differences of J (eps={eps}) with common random numbers (each "
             "site drawn by its inverse CDF from uniforms seeded by run and site, the same at "
             f"theta +- eps u); OK when every |z| <= {z_max:.3g} (Student t, {n - 1} dof, "
             f"two-sided, {confidence:.0%} with Bonferroni over {directions} directions); "
             f"largest |z| = {z.max().item():.3g}"]
    problems = uncredited(extras, [first], raw)
    if vacuous:
        notes.append(f"the finite-difference gradient is not distinguishable from zero in any "
                     f"direction (largest |fd| / se(fd) = {signal.max().item():.3g} <= "
                     f"{z_max:.3g}): a zero gradient would pass, so this is not a check; raise "
                     "samples (or eps, for discrete sites), or choose inputs or parameters "
                     "where J changes with the parameters")
    dtype = str(flat.dtype).replace("torch.", "")
    stats = {"z": z, "se_fd": se_fd, "se_mc": se_mc, "se_diff": se_diff, "z_max": z_max,
             "confidence": confidence, "directions": directions, "eps": eps}
    return Report("fd", [row], 0.0, n, 0.0, dtype, problems + notes, fd, est_mean,
                  vacuous=vacuous, problems=problems, fd=stats)


def _climbing_grad(est, out, params):
    """The estimator's ascent direction of run ``out`` on ``params``, as a user steps it:
    grad(-loss), or with ``order="any"`` and per-coagent objectives (``out.climbs``: there a
    local loss is its objective's surrogate in every parameter) each objective's parameters on
    grad(-local[i]) of their own objective alone, the rest on grad(-loss)."""
    g = _grad(-out.loss, params)
    if out.climbs is None:
        return g
    at, i = {}, 0
    for p in params:
        at[id(p)] = slice(i, i + p.numel())
        i += p.numel()
    for key in dict.fromkeys(out.climbs.values()):
        mine = {id(p) for c, o in out.climbs.items() if o == key for p in est.parameters(c)}
        block = [p for p in params if id(p) in mine]
        if block:
            gb = _grad(-out.local[key], block)
            j = 0
            for p in block:
                g[at[id(p)]] = gb[j:j + p.numel()]
                j += p.numel()
    return g


def _blocks(est, params, flat, climbs):
    """The parameter blocks finite differences perturb, each with the objective it climbs:
    ``[(mask over flat, climber)]``. One block, J, without per-coagent objectives; with them,
    one per objective (the parameters of the coagents climbing J_i, with J_i: the directional
    derivative of the per-objective gradient is the sum over blocks), and the parameters no
    coagent trains with J."""
    if climbs is None:
        return [(torch.ones_like(flat), None)]
    owner = {}
    for c, ps in est.params.items():
        for k in ps:
            owner.setdefault(k, climbs.get(c, c))
    sizes = [p.numel() for p in params]
    out = []
    for x in sorted(set(owner.values())) + [None]:
        mask = torch.cat([torch.full((n,), float(owner.get(id(p)) == x), dtype=flat.dtype)
                          for p, n in zip(params, sizes)])
        if mask.any():
            out.append((mask, x))
    return out


def _assign(params, flat):
    with torch.no_grad():
        i = 0
        for p in params:
            p.copy_(flat[i:i + p.numel()].view_as(p))
            i += p.numel()
