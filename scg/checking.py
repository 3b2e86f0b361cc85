"""``scg.check``: the estimator against the exact gradient.

Enumeration (discrete, few sites): J(theta) = sum_tau p(tau) R(tau) over every joint value of
the latent sites, set through :class:`~scg.trace.Fix` (latent, not observed); autograd gives the
exact grad J, and sum_tau p(tau) grad(-loss(tau)) is the estimator's expectation. Baselines are
frozen. The two must agree to float precision. Otherwise, central finite differences of a Monte
Carlo estimate of J (common random numbers) along random directions, against the Monte Carlo
mean of the estimator.
"""

import itertools
import math
from dataclasses import dataclass, field

import torch

from .errors import ScgError
from .estimator import Estimator, compile
from .trace import Fix, run

LATENT = ("message", "env")
ZERO = 1e-6  # a coagent's exact gradient below ZERO * |total gradient| counts as zero


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
    """Per-coagent and total agreement; ``ok`` when every relative error is within ``tol``."""

    method: str
    rows: list
    tol: float
    size: int = 0
    atol: float = 0.0
    dtype: str = ""
    notes: list = field(default_factory=list)
    exact: object = None      # the total exact gradient (enumeration) or FD derivatives
    estimate: object = None   # the estimator's expectation, same layout

    @property
    def ok(self):
        """Every row within ``tol`` relative error, or within ``atol`` absolutely (a gradient
        that is zero, as by symmetry, has only rounding noise to compare)."""
        return all(r.rel_error <= self.tol or r.abs_error <= self.atol for r in self.rows)

    def row(self, name):
        return next(r for r in self.rows if r.name == name)

    def __str__(self):
        head = (f"scg.check ({self.method}, {self.size} joint values, {self.dtype}, "
                f"tol {self.tol:g} relative or {self.atol:g} absolute): "
                f"{'OK' if self.ok else 'MISMATCH'}")
        lines = [head, f"{'coagent':<16}{'cosine':>10}{'rel error':>12}{'|exact|':>12}"
                       f"{'|estimate|':>12}"]
        lines += [f"{r.name:<16}{r.cosine:>10.6f}{r.rel_error:>12.3g}{r.norm_exact:>12.4g}"
                  f"{r.norm_estimate:>12.4g}" for r in self.rows]
        return "\n".join(lines + self.notes)


def check(model, *args, method="auto", max_size=4096, samples=2000, directions=8, eps=1e-3,
          est=None, **options):
    """Check the estimator of ``model(*args)``; returns a :class:`Report` (prints as a table).

    ``method``: "enumerate", "fd" or "auto" (enumerate when every latent site is discrete and
    the joint space has at most ``max_size`` values). ``options`` go to ``scg.compile``.
    """
    if method not in ("auto", "enumerate", "fd"):
        raise ScgError(f"unknown method {method!r}; valid: ['auto', 'enumerate', 'fd']")
    est = est if est is not None else compile(model, **options)
    sites, _ = run(est.model, args, {})
    est.plan_for(sites, args, {})
    size, why = space_size(sites)
    if method == "auto":
        method = "enumerate" if why is None and size <= max_size else "fd"
    if method == "enumerate":
        if why is not None:
            raise ScgError(f"cannot enumerate: {why}; use method='fd'")
        if size > max_size:
            raise ScgError(f"the joint space has {size} values (> max_size={max_size}); raise "
                           "max_size or use method='fd'")
        return enumerate_check(est, args)
    return fd_check(est, args, samples, directions, eps)


def space_size(sites):
    """Number of joint values of the latent sites, and why it cannot be enumerated (or None)."""
    size = 1
    for s in sites:
        if s.role == "message" and s.infer.get("scg_reparam"):
            return math.inf, f"message {s.name!r} is reparameterised (continuous)"
        if s.role in LATENT:
            if not s.fn.has_enumerate_support:
                return math.inf, f"site {s.name!r} ({type(s.fn).__name__}) is continuous"
            k = s.fn.enumerate_support(expand=False).shape[0]
            size *= k ** s.fn.batch_shape.numel()
    return size, None


class _Branch(Exception):
    def __init__(self, msg):
        super().__init__(msg["name"])
        self.msg = msg


def _raise(msg):
    raise _Branch(msg)


def trajectories(est: Estimator, args):
    """Every joint value of the latent sites, as (Output, sites) of the run it fixes."""
    stack = [{}]
    while stack:
        values = stack.pop()
        try:
            out = est.run(args, {}, Fix(values, _raise), update=False)
        except _Branch as b:
            fn, name = b.msg["fn"], b.msg["name"]
            if not fn.has_enumerate_support:
                raise ScgError(f"cannot enumerate continuous site {name!r}") from None
            support = fn.enumerate_support(expand=True)
            K, batch = support.shape[0], fn.batch_shape
            flat = support.reshape((K, batch.numel()) + support.shape[1 + len(batch):])
            cols = torch.arange(batch.numel())
            mask = b.msg["mask"]
            alive = [True] * batch.numel() if mask is None else \
                mask.expand(batch).flatten().tolist()
            # a masked (finished) element is counted once, not once per possible value
            choices = [range(K) if a else range(1) for a in alive]
            for combo in itertools.product(*choices):
                v = flat[torch.tensor(combo), cols].reshape(support.shape[1:])
                stack.append({**values, name: v})
            continue
        yield out


def log_prob(sites):
    """log p(tau) of one run: every latent site's masked log-probability."""
    total = 0.0
    for s in sites:
        if s.role in LATENT:
            lp = s.fn.log_prob(s.value.detach())
            total = total + (lp if s.mask is None else torch.where(s.mask, lp, 0.0)).sum()
    return total


def enumerate_check(est, args):
    params = {c: list(ps.values()) for c, ps in est.params.items()}
    allp = list({id(p): p for ps in params.values() for p in ps}.values())
    J = E = 0.0
    Ei = {c: 0.0 for c in params}
    size = 0
    for out in trajectories(est, args):
        size += 1
        p = log_prob(out.sites).exp()
        J = J + p * out.objective
        E = E - p.detach() * out.loss
        for c in Ei:
            Ei[c] = Ei[c] - p.detach() * out.local[c]
    exact, estimate = _grad(J, allp), _grad(E, allp)
    rows = [_row("total", exact, estimate)]
    floor = ZERO * rows[0].norm_exact
    shared = set(est.shared)
    for c, ps in params.items():
        own = [p for p in ps if id(p) not in shared]
        if own:
            rows.append(_row(c, _grad(J, own), _grad(Ei[c], own), floor))
    dtype = allp[0].dtype if allp else torch.get_default_dtype()
    tol, atol = (1e-8, 1e-12) if dtype == torch.float64 else (1e-4, 1e-6)
    return Report("enumerate", rows, tol, size, atol, str(dtype).replace("torch.", ""),
                  exact=exact, estimate=estimate)


def _grad(y, params):
    if not params:
        return torch.zeros(0)
    if not isinstance(y, torch.Tensor) or not y.requires_grad:
        return torch.cat([torch.zeros_like(p).flatten() for p in params])
    gs = torch.autograd.grad(y, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                      for g, p in zip(gs, params)]).double()


def _row(name, exact, estimate, floor=0.0):
    """Agreement of two gradients. A coagent whose exact gradient is numerically zero (below
    ``floor``, a tiny fraction of the total gradient's norm) is measured against ``floor``:
    its relative error would otherwise compare rounding noise with rounding noise."""
    ne, nm = exact.norm().item(), estimate.norm().item()
    scale = max(ne, floor)
    err = (estimate - exact).norm().item() / scale if scale > 0 else nm
    cos = (exact @ estimate).item() / (ne * nm) if ne > 0 and nm > 0 else float(ne == nm)
    return Row(name, cos, err, ne, nm, (estimate - exact).norm().item())


def fd_check(est, args, samples, directions, eps, seed=0):
    """Finite differences of Monte Carlo J (common random numbers) vs the mean estimator."""
    params = list({id(p): p for ps in est.params.values() for p in ps.values()}.values())
    rng = torch.Generator().manual_seed(seed)

    def mean_objective(grad):
        torch.manual_seed(seed)
        total = 0.0
        for _ in range(samples):
            out = est.run(args, {}, update=False)
            total = total + (-out.loss if grad else out.objective.detach())
        return total / samples

    g = _grad(mean_objective(True), params)
    flat = torch.cat([p.detach().flatten() for p in params])
    fd, mc = [], []
    for _ in range(directions):
        u = torch.randn(flat.shape, generator=rng, dtype=torch.float64)
        u = u / u.norm()
        vals = []
        for sign in (1, -1):
            _assign(params, flat + sign * eps * u.to(flat))
            with torch.no_grad():
                vals.append(float(mean_objective(False)))
        _assign(params, flat)
        fd.append((vals[0] - vals[1]) / (2 * eps))
        mc.append(float(g @ u))
    fd, mc = torch.tensor(fd, dtype=torch.float64), torch.tensor(mc, dtype=torch.float64)
    row = _row("total", fd, mc)
    return Report("fd", [row], 0.1, samples, 0.0, str(flat.dtype).replace("torch.", ""),
                  [f"{directions} random directions, {samples} runs each, eps={eps}"], fd, mc)


def _assign(params, flat):
    with torch.no_grad():
        i = 0
        for p in params:
            p.copy_(flat[i:i + p.numel()].view_as(p))
            i += p.numel()
