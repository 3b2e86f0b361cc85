"""Online learning: actor-critic with eligibility traces, window by window (``estimator="td"``).

For long or endless streams the model is run one *window* at a time (a call of the estimator:
one or more steps of ``scg.steps``), carrying recurrent state through the model's own arguments
and return value, and eligibility traces, the time origin and the last step's pending TD error
through the estimator. Per step t (the backward view; Sutton & Barto 2018, section 13.6):

    delta_t = r_t + gamma V(s_{t+1}) - V(s_t)              (r_t: every cost emitted at step t)
    z_t     = gamma lambda z_{t-1} + I_t grad sum_s log p(s_t)     (actor; I_t = gamma^t)
    u      += delta_t z_t  +  I_t grad_pathwise r_t               (ascent direction on J)
    z^w_t   = gamma lambda z^w_{t-1} + grad V(s_t);  u_w += delta_t z^w_t     (the critic)

``V`` is the ``scg.value`` site of each step (0 where there is none: then lambda = 1 is the Monte
Carlo estimator, whose expected update is the exact gradient). ``delta_t`` needs V(s_{t+1}), so
the last step of a window is settled at the start of the next; :meth:`TD.finish` settles it
with V = 0 (episode end) and resets traces and the time origin. The *time origin* is the first
step after the last ``finish`` (or the first call): ``I_t = gamma^t`` counts from there, which is
the true gradient of the discounted objective of an episode. ``discount_score=False`` drops
``I_t`` (the common convention for continuing streams; biased for the discounted objective).
``objective="average"`` is the continuing average-reward variant: ``delta_t = r_t - rho +
V(s_{t+1}) - V(s_t)`` with ``rho`` a running average (rate ``avg_rate``); it needs gamma = 1.

Bootstrapping (lambda < 1 with a learned V) trades bias for variance: the expected update equals
the gradient only when V is the true value function (tests/test_online.py measures both).

The estimate of u is returned as a surrogate ``-(u . theta)`` (its gradient is ``-u``; its value
is minus the window's discounted return), so any torch optimiser applies it. Each episode of the
``scg.episodes`` plate keeps its own traces (one backward pass per episode and step).
"""

import torch

from .errors import ScgError
from .terms import cost, log_prob, masked


class TD:
    """The state of an online actor-critic over one estimator's windows."""

    def __init__(self, est):
        self.gamma = est.gamma
        self.lam = float(est.options["lam"])
        self.average = est.options["objective"] == "average"
        self.rate = float(est.options["avg_rate"])
        self.discount = bool(est.options["discount_score"])
        self.rho = 0.0
        self.reset()

    def reset(self):
        """Forget traces, the pending step and the time origin (a new episode)."""
        self.z = None        # per episode: list over actor params
        self.zw = None       # per episode: list over critic params
        self.pending = None  # (r [N], v [N]) of the last step, awaiting V(s_{t+1})
        self.t0 = 0          # steps since the time origin

    # ---- one window -------------------------------------------------------------------
    def window(self, sites, actor, critic):
        """The update u (per parameter) of one recorded window, and its discounted return."""
        steps = sorted({s.time for s in sites})
        N = _episodes(sites)
        like = (actor + critic)[0] if actor + critic else torch.zeros(())
        u = {id(p): torch.zeros_like(p) for p in actor + critic}
        ret = 0.0
        for t in steps:
            at = [s for s in sites if s.time == t]
            r, pathwise = _step_reward(at, N, like)
            v = _step_value(at, N, like)
            if self.pending is not None:
                self._settle(u, actor, critic, v.detach())
            I_t = self.gamma ** self.t0 if self.discount else 1.0
            self._accumulate(at, actor, critic, v, I_t, N, like)
            if pathwise is not None:
                for p, g in zip(actor, _grad(pathwise, actor)):
                    u[id(p)] += I_t * g
            self.pending = (r.detach(), v.detach())
            ret += (self.gamma ** self.t0) * r.detach().mean().item()
            self.t0 += 1
        return u, ret

    def finish(self, actor, critic):
        """Settle the last step with V(s_T) = 0 and reset: the update it adds."""
        u = {id(p): torch.zeros_like(p) for p in actor + critic}
        if self.pending is not None:
            self._settle(u, actor, critic, torch.zeros_like(self.pending[1]))
        self.reset()
        return u

    def _settle(self, u, actor, critic, v_next):
        r, v = self.pending
        delta = r + (v_next if self.average else self.gamma * v_next) - v
        if self.average:
            delta = delta - self.rho
            self.rho += self.rate * delta.mean().item()
        for n in range(delta.shape[0]):
            for p, z in zip(actor, self.z[n]):
                u[id(p)] += delta[n] * z / delta.shape[0]
            for p, z in zip(critic, self.zw[n]):
                u[id(p)] += delta[n] * z / delta.shape[0]
        self.pending = None

    def _accumulate(self, at, actor, critic, v, I_t, N, like):
        lp = sum((_score(s, N) for s in at if _scored(s)), like.new_zeros(N))
        decay = self.gamma * self.lam
        if self.z is None:
            self.z = [[torch.zeros_like(p) for p in actor] for _ in range(N)]
            self.zw = [[torch.zeros_like(p) for p in critic] for _ in range(N)]
        for n in range(N):
            ga = _grad(lp[n], actor, retain=True)
            gw = _grad(v[n], critic, retain=True)
            self.z[n] = [decay * z + I_t * g for z, g in zip(self.z[n], ga)]
            self.zw[n] = [decay * z + g for z, g in zip(self.zw[n], gw)]


def _episodes(sites):
    for s in sites:
        for _, _, size, kind in s.plates:
            if kind == "episodes":
                return size
    return 1


def _per_episode(x, site, N):
    """Reduce a site's per-element tensor to one number per episode: [N]."""
    dims = [d for _, d, _, kind in site.plates if kind == "episodes"]
    x = x.expand(site.fn.batch_shape) if x.dim() < len(site.fn.batch_shape) else x
    if not dims:
        return x.sum().expand(N)
    d = dims[-1]
    x = x.movedim(d, 0) if x.dim() >= -d else x.expand((N,) + x.shape)
    return x.reshape(N, -1).sum(1)


def _scored(site):
    return site.role == "message" and not site.infer.get("scg_reparam", False)


def _score(site, N):
    return _per_episode(log_prob(site), site, N)


def _step_reward(at, N, like):
    """r_t per episode (detached use) and, if any, the pathwise part (predictors, costs)."""
    total = like.new_zeros(N)
    pathwise = None
    for s in at:
        if s.role in ("reward", "cost", "predict"):
            c = _per_episode(cost(s), s, N)
            total = total + c.detach()
            if c.requires_grad:
                part = c.sum() / N
                pathwise = part if pathwise is None else pathwise + part
    return total, pathwise


def _step_value(at, N, like):
    vs = [s for s in at if s.role == "value"]
    if len(vs) > 1:
        raise ScgError(f"step {at[0].time} has several value sites "
                       f"{[s.name for s in vs]}: the TD estimator needs one V(s_t) per step")
    if not vs:
        return like.new_zeros(N)
    s = vs[0]
    return _per_episode(masked(s.fn.v.expand(s.fn.batch_shape), s.mask), s, N)


def _grad(y, params, retain=False):
    if not params:
        return []
    if not y.requires_grad:
        return [torch.zeros_like(p) for p in params]
    gs = torch.autograd.grad(y, params, retain_graph=True if retain else None,
                             allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, params)]
