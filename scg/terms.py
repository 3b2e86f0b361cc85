"""The terms a run's sites contribute, shared by the Monte Carlo and the TD estimators: a
stochastic site's masked log-probability, a cost site's masked value."""

import pyro.distributions as dist
import torch

from .errors import ScgError
from .provenance import Tracked


def stale(x, name):
    """``x``, unless it is a tensor tracked by an earlier analysis run (kept between runs)."""
    if isinstance(x, Tracked):
        raise ScgError(f"site {name!r} uses a tensor tracked in an earlier analysis run; "
                       "state kept between runs must be plain tensors")
    return x


def masked(x, mask):
    """``x`` where ``mask`` (from scg.done or an execution bit) holds, 0 elsewhere."""
    return x if mask is None else torch.where(mask, x, x.new_zeros(()))


def log_prob(site):
    """A stochastic site's masked log-probability (its score term's log p)."""
    return stale(masked(site.fn.log_prob(site.value.detach()), site.mask), site.name)


# Distributions whose log-probabilities a group computes in one call from stacked logits.
BATCHED = (dist.Bernoulli, dist.Categorical)


def group_log_prob(group):
    """The masked log-probabilities of a site group, stacked ``[n, *batch]``. Bernoulli and
    Categorical groups (one class, one number of categories) are evaluated as one distribution
    over stacked logits: one call instead of one per site (the same values and gradients)."""
    kind = type(group[0].fn)
    if len(group) > 1 and kind in BATCHED and all(type(s.fn) is kind for s in group):
        logits = [s.fn.logits for s in group]
        if all(x.shape == logits[0].shape for x in logits):
            lp = kind(logits=torch.stack(logits)).log_prob(
                torch.stack([s.value.detach() for s in group]))
            if any(s.mask is not None for s in group):
                ones = torch.ones((), dtype=torch.bool, device=lp.device)
                mask = torch.stack([(ones if s.mask is None else s.mask).expand(lp.shape[1:])
                                    for s in group])
                lp = torch.where(mask, lp, lp.new_zeros(()))
            return stale(lp, group[0].name)
    return torch.stack([log_prob(s) for s in group])


def cost(site):
    """A cost site's masked value: a reward or cost, or a predictor's weighted log-likelihood."""
    if site.role == "predict":
        v = site.infer["scg_weight"] * predictor_log_prob(site)
    else:
        v = site.fn.v.expand(site.fn.batch_shape)
        if not v.is_floating_point():
            v = v.to(torch.get_default_dtype())
    return stale(masked(v, site.mask), site.name)


def predictor_log_prob(site):
    """log q(obs) of a predictor, with a clear error for obs outside the support."""
    try:
        return site.fn.log_prob(site.value)
    except ValueError as e:
        raise ScgError(f"predict {site.name!r} (step {site.time}): obs is NaN or outside the "
                       f"support: {e}") from None
