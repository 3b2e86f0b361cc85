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
with V = 0 (episode end) and resets traces and the time origin, of every episode or only of
those that ended (``done``: a batch of environments that restart independently). The *time
origin* is the first step after the last ``finish`` (or the first call): ``I_t = gamma^t``
counts from there, which is the true gradient of the discounted objective of an episode.
``discount_score=False`` drops ``I_t`` (the common convention for continuing streams; biased
for the discounted objective).
``objective="average"`` is the continuing average-reward variant: ``delta_t = r_t - rho +
V(s_{t+1}) - V(s_t)`` with ``rho`` a running average (rate ``avg_rate``); it needs gamma = 1.

Bootstrapping (lambda < 1 with a learned V) trades bias for variance: the expected update equals
the gradient only when V is the true value function (tests/test_online.py measures both).

The estimate of u is returned as a surrogate ``-(u . theta)`` (its gradient is ``-u``; its value
is minus the window's discounted return), so any torch optimiser applies it. Each episode of the
``scg.episodes`` plate keeps its own traces and time origin; per-episode gradients come from one
vectorised backward pass per step (``is_grads_batched``).

The state survives ``copy.deepcopy`` and ``pickle`` of the estimator together with the
parameters it trains (one copy, one memo): traces are matched to the copied parameters.
"""

import torch

from ..core.terms import cost, log_prob, masked
from ..errors import ScgError
from .monte_carlo import Output, Stats


class TD:
    """The state of an online actor-critic over one estimator's windows.

    Everything is kept per episode of the ``scg.episodes`` plate: traces ``[N, *param]``, the
    pending step, and the time origin (steps since that episode's last ``finish``), so episodes
    of one plate may end at different steps (``finish(done)``: a batch of environments that
    restart independently)."""

    def __init__(self, gamma=1.0, lam=1.0, average=False, rate=0.01, discount=True):
        self.gamma, self.lam = float(gamma), float(lam)
        self.average, self.rate, self.discount = bool(average), float(rate), bool(discount)
        self.rho = 0.0
        self.reset()

    @classmethod
    def from_options(cls, opts):
        """The TD state for validated ``scg.compile`` options."""
        return cls(opts["gamma"], opts["lam"], opts["objective"] == "average",
                   opts["avg_rate"], opts["discount_score"])

    def reset(self):
        """Forget traces, the pending step and the time origin of every episode."""
        self.z = None        # actor traces: {id(p): [N, *p.shape]}
        self.zw = None       # critic traces, the same
        self.refs = {}       # id(p) -> p, for every traced parameter (see __getstate__)
        self.pending = None  # (r [N], v [N], open [N] bool) of the last step, awaiting V(s_{t+1})
        self.t0 = None       # [N] steps since each episode's time origin

    # Traces are keyed by id(p) for speed, and ids do not survive copy.deepcopy or pickle. The
    # state holds the traced parameters themselves instead, as (parameter, trace) pairs: copied
    # with the estimator (one deepcopy or pickle, one memo), each pair's parameter *is* the
    # copy the copied estimator trains, whatever order parameters were first seen in.
    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("z", "zw"):
            if state[key] is not None:
                state[key] = [(self.refs[k], z) for k, z in state[key].items()]
        del state["refs"]
        return state

    def __setstate__(self, state):
        state = dict(state)
        refs = {}
        for key in ("z", "zw"):
            if state[key] is not None:
                refs.update({id(p): p for p, _ in state[key]})
                state[key] = {id(p): z for p, z in state[key]}
        self.__dict__.update(state, refs=refs)

    def state(self, named):
        """Everything between windows, for a checkpoint: traces by parameter *name*
        (``named``: name -> parameter; ids do not survive a process), the pending step, the
        time origins and rho. The caller (``scg.Trainer.state_dict``) has checked that every
        trained parameter is named."""
        names = {id(p): n for n, p in named.items()}   # every traced parameter is named
        traces = {key: None if getattr(self, key) is None else
                  {names[k]: z for k, z in getattr(self, key).items()} for key in ("z", "zw")}
        return {**traces, "pending": self.pending, "t0": self.t0, "rho": self.rho}

    def load_state(self, state, named):
        """Restore :meth:`state`, matching traces to parameters by name."""
        for key in ("z", "zw"):
            saved = state[key]
            if saved is not None:
                bad = sorted(n for n, z in saved.items()
                             if n not in named or z.shape[1:] != named[n].shape)
                if bad:
                    raise ScgError(f"saved eligibility traces {bad} match no parameter of this "
                                   f"model by name and shape (its parameters: {sorted(named)})")
                self.refs.update({id(named[n]): named[n] for n in saved})
                saved = {id(named[n]): z.to(named[n].device) for n, z in saved.items()}
            setattr(self, key, saved)
        device = next(iter(named.values())).device if named else None

        def move(x):
            return x if x is None or device is None else x.to(device)
        pending = state["pending"]
        self.pending = None if pending is None else tuple(move(x) for x in pending)
        self.t0, self.rho = move(state["t0"]), float(state["rho"])

    # ---- one window -------------------------------------------------------------------
    def window(self, sites, actor, critic, separable=False):
        """The update u (per parameter) of one recorded window, and its discounted return (a
        0-dim tensor: no host synchronisation per step). ``separable``: the value sites read
        no actor parameter (then one backward pass of ``log p + V`` gives both gradients)."""
        N = _episodes(sites)
        like = (actor + critic)[0] if actor + critic else torch.zeros(())
        u = {id(p): torch.zeros_like(p) for p in actor + critic}
        if self.t0 is not None and self.t0.shape[0] != N:
            raise ScgError(f"the episodes plate changed size from {self.t0.shape[0]} to {N} "
                           "between windows; call finish() first")
        ret = like.new_zeros(())
        for at in _by_step(sites):
            r, pathwise = _step_reward(at, N, like)
            v = _step_value(at, N, like)
            if self.pending is not None:
                self._settle(u, actor, critic, v.detach(), self.pending[2])
            if self.t0 is None:
                self.t0 = torch.zeros(N, dtype=torch.long, device=like.device)
            I_t = self._discount(like)
            self._accumulate(at, actor, critic, v, I_t, N, like, separable)
            if pathwise is not None:
                for p, g in zip(actor, _grad(pathwise, actor, weights=I_t)):
                    u[id(p)] += g
            self.pending = (r.detach(), v.detach(), torch.ones(N, dtype=torch.bool,
                                                                device=r.device))
            ret = ret + (self.gamma ** self.t0.to(r.dtype) * r.detach()).mean()
            self.t0 = self.t0 + 1
        return u, ret

    def finish(self, actor, critic, done=None):
        """Settle the last step of the episodes in ``done`` (a bool [N]; all by default) with
        V(s_T) = 0 and reset their traces and time origins: the update it adds. The other
        episodes keep their pending step, to be settled by the next window."""
        if done is None:                      # every episode ends: forget everything
            u = (self.finish(actor, critic, torch.ones_like(self.t0, dtype=torch.bool))
                 if self.t0 is not None else {id(p): torch.zeros_like(p) for p in actor + critic})
            self.reset()
            return u
        u = {id(p): torch.zeros_like(p) for p in actor + critic}
        N = None if self.t0 is None else self.t0.shape[0]
        if not isinstance(done, torch.Tensor) or done.dtype != torch.bool or done.dim() != 1 \
                or (N is not None and done.shape[0] != N):
            raise ScgError(f"finish(done=...) takes a bool tensor of shape [{N or 'N'}] (one "
                           f"per episode of the plate), got "
                           f"{getattr(done, 'dtype', type(done).__name__)} "
                           f"{tuple(getattr(done, 'shape', ()))}")
        if self.t0 is None:
            return u
        done = done.to(self.t0.device)
        if self.pending is not None:
            r, v, open_ = self.pending
            self._settle(u, actor, critic, torch.zeros_like(v), open_ & done)
            self.pending = (r, v, open_ & ~done)
        for zs in (self.z or {}, self.zw or {}):
            for k, z in zs.items():
                zs[k] = _rows(~done, z) * z
        self.t0 = torch.where(done, torch.zeros_like(self.t0), self.t0)
        return u

    def _discount(self, like):
        """I_t per episode: gamma^(steps since its time origin), or 1."""
        if not self.discount:
            return like.new_ones(self.t0.shape[0])
        return like.new_tensor(self.gamma) ** self.t0.to(like.dtype)

    def _settle(self, u, actor, critic, v_next, which):
        """Add delta_t z_t for the episodes in ``which`` (their pending step is settled)."""
        r, v, _ = self.pending
        delta = r + (v_next if self.average else self.gamma * v_next) - v
        delta = torch.where(which, delta, torch.zeros_like(delta))
        if self.average:   # rho moves by the mean of the settled episodes' delta (a tensor)
            delta = delta - self.rho * which.to(delta.dtype)
            self.rho = self.rho + self.rate * delta.sum() / which.sum().clamp(min=1)
        N = delta.shape[0]
        for p in actor + critic:
            z = self.z.get(id(p), self.zw.get(id(p)))
            if z is not None:
                u[id(p)] += torch.tensordot(delta.to(z.dtype), z, dims=1) / N
        self.pending = None

    def _accumulate(self, at, actor, critic, v, I_t, N, like, separable):
        """z_t = gamma lambda z_{t-1} + I_t grad log p(s_t) and z^w_t likewise with grad V(s_t),
        per episode: both from one batched backward pass."""
        lp = _total((_score(s, N) for s in at if _scored(s)), N, like)
        g_actor, g_critic = _per_episode_grads(lp, actor, v, critic, separable)
        decay = self.gamma * self.lam
        if self.z is None:
            self.z, self.zw = {}, {}
        # keyed by parameter: one that first appears in a later window starts from zero
        for traces, params, grads, w in ((self.z, actor, g_actor, I_t),
                                         (self.zw, critic, g_critic, None)):
            for p, g in zip(params, grads):
                z = traces.get(id(p))
                g = g if w is None else _rows(w, g) * g
                traces[id(p)] = g if z is None else decay * z + g
                self.refs[id(p)] = p


def _rows(x, like):
    """A per-episode ``[N]`` tensor shaped to scale the rows of ``like`` ``[N, ...]``."""
    return x.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


def _per_episode_grads(lp, actor, v, critic, separable):
    """d lp[n] / d theta and d v[n] / d w for every episode n: one ``[N, *p.shape]`` per
    parameter of ``actor`` and of ``critic``.

    One vectorised backward pass (``is_grads_batched``) for both: of ``lp + v`` when
    ``separable`` (V reads no actor parameter and log p no critic parameter, the usual case:
    then each parameter's gradient of the sum is its own part's), else of the pair with stacked
    one-hot cotangents ``[2N]``. Where an operation of the model has
    no batching rule, one backward pass per episode and part instead (same numbers)."""
    N = lp.shape[0]
    wanted = [(y, ps) for y, ps in ((lp, actor), (v, critic)) if ps and y.requires_grad]
    if not wanted:
        return ([p.new_zeros((N,) + p.shape) for p in actor],
                [p.new_zeros((N,) + p.shape) for p in critic])
    eye = torch.eye(N, dtype=lp.dtype, device=lp.device)
    try:
        if len(wanted) == 1:     # one part has no gradient: the other's alone
            y, ps = wanted[0]
            gs = torch.autograd.grad(y, ps, grad_outputs=eye, retain_graph=True,
                                     allow_unused=True, is_grads_batched=True)
            none = [None] * len(actor if ps is critic else critic)
            ga, gc = (gs, none) if ps is actor else (none, gs)
        elif separable:
            gs = torch.autograd.grad(lp + v, actor + critic, grad_outputs=eye,
                                     retain_graph=True, allow_unused=True,
                                     is_grads_batched=True)
            ga, gc = gs[:len(actor)], gs[len(actor):]
        else:
            zero = torch.zeros_like(eye)
            gs = torch.autograd.grad((lp, v), actor + critic, retain_graph=True,
                                     allow_unused=True, is_grads_batched=True,
                                     grad_outputs=(torch.cat([eye, zero]),
                                                   torch.cat([zero, eye])))
            ga = [g if g is None else g[:N] for g in gs[:len(actor)]]
            gc = [g if g is None else g[N:] for g in gs[len(actor):]]
    except RuntimeError:
        ga = _looped(lp, actor)
        gc = _looped(v, critic)

    def filled(gs, ps):
        return [g if g is not None else p.new_zeros((N,) + p.shape) for g, p in zip(gs, ps)]
    return filled(ga, actor), filled(gc, critic)


def _looped(y, params):
    """d y[n] / d p, one backward pass per episode."""
    if not params or not y.requires_grad:
        return [None] * len(params)
    rows = [_grad(y[n], params, retain=True) for n in range(y.shape[0])]
    return [torch.stack(g) for g in zip(*rows)]


def _by_step(sites):
    """The window's sites grouped by step, in step order."""
    steps = {}
    for s in sites:
        steps.setdefault(s.time, []).append(s)
    return [steps[t] for t in sorted(steps)]


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
    return x if x.dim() == 1 else x.reshape(N, -1).sum(1)   # no op in the graph if [N]


def _total(xs, N, like):
    """The sum of per-episode tensors ``[N]`` (zeros if none), with no extra op for one."""
    xs = list(xs)
    if not xs:
        return like.new_zeros(N)
    return xs[0] if len(xs) == 1 else torch.stack(xs).sum(0)


def _scored(site):
    return site.role == "message" and not site.infer.get("scg_reparam", False)


def _score(site, N):
    return _per_episode(log_prob(site), site, N)


def _step_reward(at, N, like):
    """r_t per episode (detached) and, if any, the pathwise part per episode [N] (predictors,
    costs whose value depends on parameters)."""
    total = like.new_zeros(N)
    pathwise = None
    for s in at:
        if s.role in ("reward", "cost", "predict"):
            c = _per_episode(cost(s, like), s, N)
            total = total + c.detach()
            if c.requires_grad:
                pathwise = c if pathwise is None else pathwise + c
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


def _grad(y, params, retain=False, weights=None):
    if weights is not None:   # y is [N] per episode: d (sum_n w_n y_n) / N
        y = (weights.to(y.dtype) * y).sum() / y.shape[0]
    if not params:
        return []
    if not y.requires_grad:
        return [torch.zeros_like(p) for p in params]
    gs = torch.autograd.grad(y, params, retain_graph=True if retain else None,
                             allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, params)]


def surrogate(u, ret, params, coagents, rho):
    """The :class:`~scg.estimators.monte_carlo.Output` of an update ``u`` (per parameter id):
    the surrogate ``-(u . theta)``, gradient ``-u``, value minus the window's return ``ret``.
    ``params``: the estimator's :class:`~scg.estimators.parameters.CoagentParameters` (a
    shared parameter's update goes to its first owner; the online critic's to ``"critic"``);
    ``coagents``: every coagent of the run, each given a local loss."""
    first = params.owner()
    ref = next(iter(u.values())) if u else torch.zeros(())
    terms = {}
    for p in params.of() + params.critic():
        terms.setdefault(first.get(id(p), "critic"), []).append(-(u[id(p)].detach() * p).sum())
    local = {}
    for owner, ts in terms.items():
        term = ts[0] if len(ts) == 1 else torch.stack(ts).sum()
        local[owner] = term - term.detach()
    for c in coagents:
        local.setdefault(c, ref.new_zeros(()))
    for c in local:  # the value, minus the return, shared evenly (as in the Monte Carlo emit)
        local[c] = local[c] - ret / len(local)
    loss = sum(local.values(), ref.new_zeros(()))
    ret = torch.as_tensor(ret, dtype=ref.dtype, device=ref.device)
    return Output(loss, local, ret, Stats({"return": ret, "rho": rho}))
