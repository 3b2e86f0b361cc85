"""Baselines b_s for the score terms. Each returns b with the shape of the relative returns R
(``[n_sites, *batch]``) for one site group, and never reads the site's descendants.

- ``auto`` (the default): ``loo`` for a site inside ``scg.episodes(N)`` with N >= 2, else
  ``avg``.
- ``none``: b = 0.
- ``avg``: a decaying average of R per site, updated after use.
- ``loo``: leave-one-out mean of R over the ``scg.episodes`` plate (needs N >= 2); where
  ``scg.done`` masks the site, the mean is over the other episodes still running (a finished
  episode's return of 0 is not a sample of a running one's), 0 when none is.
- ``critic``: a learned critic of the coagent's local state (its distribution's parameters
  and the step), trained by its own regression term, which has no gradient to the policy.
"""

import torch

from ..core.terms import canonical_params, masked
from ..errors import ScgError


class Baseline:
    """``baseline(group, R, sites, update) -> (b, regressions)`` for one site group: ``b``
    with R's shape (None: b = 0, no operation on R), and the critic regression terms
    ``[(coagent, loss)]`` (None if none). A baseline owns whatever state it keeps between
    calls; nothing else writes it."""

    def __call__(self, group, R, sites, update):
        raise NotImplementedError

    def state(self):
        """The state a checkpoint keeps (parameters of critics travel as modules)."""
        return {}

    def load_state(self, state):
        pass


class NoBaseline(Baseline):
    """b = 0 (returned as None: the estimators skip R - 0)."""

    def __call__(self, group, R, sites, update):
        return None, None


class DecayingAverage(Baseline):
    """A decaying average of R per site name, updated after use (so b never reads R)."""

    def __init__(self, decay):
        self.decay = float(decay)
        self.averages = {}   # site name -> running mean of its relative return

    def __call__(self, group, R, sites, update):
        b = torch.stack([self.averages.get(n, R.new_zeros(())).to(R) for n in group.names])
        b = b.reshape((-1,) + (1,) * (R.dim() - 1)).expand_as(R)
        if update:
            with torch.no_grad():
                for k, n in enumerate(group.names):
                    mean = _masked_mean(R[k], sites[group.index[k]].mask)
                    old = self.averages.get(n)
                    self.averages[n] = mean if old is None else \
                        self.decay * old + (1 - self.decay) * mean
        return b, None

    def state(self):
        return {"averages": {k: v.clone() for k, v in self.averages.items()}}

    def load_state(self, state):
        self.averages = dict(state.get("averages", {}))


class LeaveOneOut(Baseline):
    """The mean of R over the other episodes of the ``scg.episodes`` plate (N >= 2)."""

    def __call__(self, group, R, sites, update):
        ep = [p for p in group.plates if p[3] == "episodes"]
        if not ep or ep[-1][2] < 2:
            raise ScgError(f"baseline='loo' needs site {group.names[0]!r} inside "
                           "scg.episodes(N) with N >= 2")
        _, dim, n, _ = ep[-1]
        masks = [sites[i].mask for i in group.index]
        if all(m is None for m in masks):
            return (R.sum(dim, keepdim=True) - R) / (n - 1), None
        alive = torch.stack([torch.ones_like(R[k]) if m is None else
                             m.expand_as(R[k]).to(R.dtype) for k, m in enumerate(masks)])
        others = alive.sum(dim, keepdim=True) - alive
        total = (R * alive).sum(dim, keepdim=True) - R * alive
        return torch.where(others > 0, total / others.clamp(min=1), torch.zeros_like(R)), None


class Critic(Baseline):
    """A learned critic per coagent (and feature size) of the coagent's local state, made on
    first use; its regression term trains it and has no gradient to the policy."""

    def __init__(self, hidden, critics=None, owner=None, prefix=""):
        self.hidden = int(hidden)
        # key "coagent|dim" -> MLP (``prefix`` first: one objective's critics among others')
        self.critics = torch.nn.ModuleDict() if critics is None else critics
        self.owner = {} if owner is None else owner   # key -> coagent
        self.prefix = prefix

    def __call__(self, group, R, sites, update):
        values, losses = [], []
        for k in range(len(group.names)):
            s = sites[group.index[k]]
            x = features(s)
            if s.mask is not None:   # a masked element's parameters may be NaN padding
                x = torch.where(s.mask.expand(x.shape[:-1])[..., None], x, x.new_zeros(()))
            v = masked(self.critic_for(s, x)(x).squeeze(-1), s.mask)
            values.append(v.detach())
            err = (v - R[k].detach()) ** 2
            losses.append((s.coagent, 0.5 * _masked_mean(err, s.mask)))
        return torch.stack(values), losses

    def critic_for(self, site, x):
        key = f"{self.prefix}{site.coagent}|{x.shape[-1]}".replace(".", ":")  # no "." in names
        self.owner[key] = site.coagent
        if key not in self.critics:
            self.critics[key] = torch.nn.Sequential(
                torch.nn.Linear(x.shape[-1], self.hidden), torch.nn.Tanh(),
                torch.nn.Linear(self.hidden, 1)).to(device=x.device, dtype=x.dtype)
        return self.critics[key]


class Auto(Baseline):
    """The best unbiased baseline the batch allows, per site group: leave-one-out inside
    ``scg.episodes(N)`` with N >= 2 (the other episodes of the same call), else the decaying
    average (a single episode has no other episode to compare with). The default."""

    def __init__(self, decay):
        self.loo, self.avg = LeaveOneOut(), DecayingAverage(decay)

    def __call__(self, group, R, sites, update):
        ep = [p for p in group.plates if p[3] == "episodes"]
        rule = self.loo if ep and ep[-1][2] >= 2 else self.avg
        return rule(group, R, sites, update)

    def state(self):
        return self.avg.state()

    def load_state(self, state):
        self.avg.load_state(state)


KINDS = ("auto", "none", "avg", "loo", "critic")


def make(kind, decay=0.9, critic_hidden=32, critics=None, owner=None, prefix=""):
    """The baseline named ``kind`` (one of :data:`KINDS`), with its options; a critic keeps
    its networks in ``critics`` and ``owner`` under keys starting with ``prefix`` when given
    (the critics of several objectives in one ModuleDict)."""
    if kind == "auto":
        return Auto(decay)
    if kind == "none":
        return NoBaseline()
    if kind == "avg":
        return DecayingAverage(decay)
    if kind == "loo":
        return LeaveOneOut()
    if kind == "critic":
        return Critic(critic_hidden, critics, owner, prefix)
    raise ScgError(f"unknown baseline {kind!r}; valid: {list(KINDS)}")


def features(site):
    """A site's local state for its critic, and t: the message's ``state`` (its
    ``@scg.coagent`` unit's inputs, or ``state=``) where it has one, else its distribution's
    canonical parameters (:func:`scg.core.terms.canonical_params`, detached, flattened in name
    order; the same features whichever parameterisation built it and whatever it has computed
    lazily since)."""
    fn, batch = site.fn, site.fn.batch_shape
    state = site.infer.get("scg_state")
    parts = []
    for p in state if state else canonical_params(fn).values():
        p = p.detach()
        if not p.is_floating_point():
            p = p.to(torch.get_default_dtype())
        try:
            p = p.expand(batch + p.shape[len(batch):])
        except RuntimeError:   # a parameter not aligned with the batch: no feature
            continue
        parts.append(p.reshape(batch + (-1,)))
    ref = parts[0] if parts else site.value.detach().to(torch.get_default_dtype())
    parts.append(torch.full(batch + (1,), float(site.time), dtype=ref.dtype, device=ref.device))
    return torch.cat([x.to(ref.dtype) for x in parts], -1)


def _masked_mean(x, mask):
    if mask is None:
        return x.mean()
    m = mask.expand_as(x)
    return masked(x, m).sum() / m.sum().clamp(min=1).to(x.dtype)

