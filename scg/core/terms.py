"""The terms a run's sites contribute, shared by the Monte Carlo and the TD estimators: a
stochastic site's masked log-probability, a cost site's masked value.

A masked-out element (``scg.done``, an execution bit) contributes exactly 0, to the value and to
every gradient, whatever numbers it holds (a user may pad finished episodes with NaN).
``torch.where`` alone does not do that for a log-probability: its backward multiplies the 0 it
sends to the masked element by the log-probability's own derivative there, and 0 * NaN is NaN,
which then reaches the parameters. So the distribution is evaluated from *guarded* parameters,
``where(mask, p, p.detach())``: the same numbers, but the gradient to each masked element of p
is selected away (exactly 0), not multiplied.
"""

import copy
import inspect

import pyro.distributions as dist
import torch

from ..errors import ScgError


def masked(x, mask):
    """``x`` where ``mask`` (from scg.done or an execution bit) holds, exactly 0 elsewhere (the
    gradient to a masked element is selected away, not multiplied by 0)."""
    return x if mask is None else torch.where(mask, x, x.new_zeros(()))


def canonical_params(fn):
    """The tensors that define distribution ``fn``, by name, the same whichever of its
    parameterisations it was built with and whatever it has computed lazily since: ``logits``
    (never ``probs``) for distributions that have both, ``scale_tril`` (never the covariance or
    precision matrix) for a multivariate normal, otherwise every key of its
    ``arg_constraints`` whose attribute is a tensor, in sorted order."""
    keys = _KEYS.get(type(fn)) if "arg_constraints" not in fn.__dict__ else None
    if keys is None:
        keys = _canonical_keys(fn.arg_constraints)
        if "arg_constraints" not in fn.__dict__ and \
                isinstance(inspect.getattr_static(type(fn), "arg_constraints", None), dict):
            _KEYS[type(fn)] = keys   # a class attribute, not computed per instance
    out = {}
    for k in keys:
        try:
            v = getattr(fn, k)
        except (AttributeError, NotImplementedError):
            continue
        if isinstance(v, torch.Tensor):
            out[k] = v
    return out


_KEYS = {}   # distribution class -> its canonical parameter names (canonical_params)


def _canonical_keys(arg_constraints):
    """The names :func:`canonical_params` reads: sorted, one parameterisation of each."""
    keys = sorted(arg_constraints)
    drop = set()
    if "logits" in keys:
        drop.add("probs")
    if "scale_tril" in keys:
        drop.update(("covariance_matrix", "precision_matrix"))
    return tuple(k for k in keys if k not in drop)


# Distribution classes whose constructor takes exactly their canonical parameters, so a copy
# with guarded parameters is the same distribution (subclasses and others are used as given).
REBUILD = tuple({getattr(m, n) for m in (torch.distributions, dist) for n in (
    "Bernoulli", "Categorical", "OneHotCategorical", "Geometric", "Binomial",
    "NegativeBinomial", "Normal", "LogNormal", "Beta", "Gamma", "Exponential", "Laplace",
    "Cauchy", "Dirichlet", "StudentT", "HalfNormal", "HalfCauchy", "Gumbel", "Kumaraswamy",
    "MultivariateNormal", "LowRankMultivariateNormal") if hasattr(m, n)})


def _param_mask(mask, p, batch):
    """``mask`` shaped to select the batch elements of parameter ``p`` (``[*batch, ...]``), or
    None when p does not carry the batch dims (then it is shared by all elements)."""
    n = len(batch)
    if p.dim() < n or p.shape[:n] != batch:
        return None
    m = mask.expand(batch) if mask.shape != batch else mask
    return m.reshape(batch + (1,) * (p.dim() - n))


# Distribution classes whose log_prob reads only ``logits``: guarded by a shallow copy with
# guarded logits (no constructor, no renormalisation: the same numbers, faster).
BY_LOGITS = tuple({getattr(m, n) for m in (torch.distributions, dist)
                   for n in ("Bernoulli", "Categorical")})


def guarded(fn, mask):
    """``fn`` with the gradient to its masked-out elements cut at its parameters (see the
    module docstring); ``fn`` itself when there is no mask or no safe way to rebuild it."""
    if mask is None or type(fn) not in REBUILD:
        return fn
    batch = fn.batch_shape
    if type(fn) in BY_LOGITS:
        logits = fn.logits
        m = _param_mask(mask, logits, batch) if logits.requires_grad else None
        if m is None:
            return fn
        out = copy.copy(fn)
        out.__dict__.pop("probs", None)
        out.__dict__["logits"] = out.__dict__["_param"] = torch.where(m, logits,
                                                                      logits.detach())
        return out
    params = {}
    for k, p in canonical_params(fn).items():
        m = _param_mask(mask, p, batch) if p.requires_grad else None
        params[k] = p if m is None else torch.where(m, p, p.detach())
    try:
        out = type(fn)(**params, validate_args=False)
    except (TypeError, ValueError):
        return fn
    if out.batch_shape != batch or out.event_shape != fn.event_shape:
        return fn
    return out


def log_prob(site):
    """A stochastic site's masked log-probability (its score term's log p). The value of a
    site's own draw is not validated again (it lies in the support: it was drawn from ``fn``,
    and :meth:`~scg.core.record.Site.check_unchanged` refuses one written in place)."""
    fn = guarded(site.fn, site.mask)
    if site.sampled and fn._validate_args:
        fn._validate_args = False   # switched off for this call only (no copy: it is hot)
        try:
            return masked(fn.log_prob(site.value.detach()), site.mask)
        finally:
            fn._validate_args = True
    return masked(fn.log_prob(site.value.detach()), site.mask)


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
            stacked = torch.stack(logits)
            values = torch.stack([s.value.detach() for s in group])
            if all(s.mask is None for s in group):
                # each site's distribution validated its own logits; the values are validated
                # here unless each is its site's own draw (a replayed or conditioned one may
                # lie outside the support)
                d = kind(logits=stacked, validate_args=False)
                if group[0].fn._validate_args and not all(s.sampled for s in group):
                    d._validate_sample(values)
                return d.log_prob(values)
            ones = torch.ones((), dtype=torch.bool, device=stacked.device)
            mask = torch.stack([(ones if s.mask is None else s.mask).expand(values.shape[1:])
                                for s in group])
            m = mask.reshape(mask.shape + (1,) * (stacked.dim() - mask.dim()))
            stacked = torch.where(m, stacked, stacked.detach())   # as guarded()
            # each site's distribution validated its own logits; masked ones may hold NaN
            lp = kind(logits=stacked, validate_args=False).log_prob(values)
            return torch.where(mask, lp, lp.new_zeros(()))
    if len(group) == 1:
        return log_prob(group[0]).unsqueeze(0)   # a view: no stack to differentiate through
    return torch.stack([log_prob(s) for s in group])


def common_float(sites):
    """A zero-dim tensor on the device and in the floating dtype one run is evaluated in (its
    credit weights, returns and costs): the promotion of the dtypes of its messages'
    distributions (the model's), else of its predictors', else of its cost values (a model
    without a stochastic site); the device of the first of those. A reward in another dtype
    (a float64 numpy reward of a float32 model, or the reverse) is cast to it by :func:`cost`.
    """
    for roles in (("message",), ("predict",), ("reward", "cost")):
        found = []
        for s in sites:
            if s.role in roles:
                ts = list(canonical_params(s.fn).values()) if s.role != "reward" and \
                    s.role != "cost" else [s.fn.v]
                found += [t for t in ts if isinstance(t, torch.Tensor)]
        floats = [t for t in found if t.is_floating_point()]
        if floats:
            dtype = floats[0].dtype
            for t in floats[1:]:
                dtype = torch.promote_types(dtype, t.dtype)
            return torch.zeros((), dtype=dtype, device=floats[0].device)
        if found:
            return torch.zeros((), device=found[0].device)
    return torch.zeros(())


def cost(site, like=None):
    """A cost site's masked value: a reward or cost, or a predictor's weighted log-likelihood;
    in ``like``'s dtype and on its device when given (:func:`common_float` of the run)."""
    if site.role == "predict":
        v = site.infer["scg_weight"] * predictor_log_prob(site)
    else:
        v = site.fn.v.expand(site.fn.batch_shape)
        if not v.is_floating_point():
            v = v.to(torch.get_default_dtype())
    if like is not None and (v.dtype != like.dtype or v.device != like.device):
        v = v.to(device=like.device, dtype=like.dtype)
    return masked(v, site.mask)


def stacked_costs(group, like):
    """The masked values of a cost group, stacked ``[n, *batch]``: :func:`cost` of each site,
    in ``like``'s dtype and on its device. Unmasked rewards and costs of one shape are stacked
    as they are and cast once."""
    vs = [s.fn.v for s in group if s.role != "predict" and s.mask is None]
    if len(vs) == len(group) and all(v.shape == vs[0].shape for v in vs):
        C = vs[0].unsqueeze(0) if len(vs) == 1 else torch.stack(vs)
        return C if C.dtype == like.dtype and C.device == like.device else \
            C.to(device=like.device, dtype=like.dtype)
    return torch.stack([cost(s, like) for s in group])


def predictor_log_prob(site):
    """log q(obs) of a predictor, masked (0 where ``scg.done`` masks it), with a clear error
    for obs outside the support where it is not masked. A masked element's obs may be anything
    (NaN padding; for a discrete predictor, a value outside the support is replaced by one in
    it before the masked-out log-probability is computed)."""
    fn, obs = site.fn, site.value
    if site.mask is None:
        try:
            return fn.log_prob(obs)
        except ValueError as e:
            raise ScgError(f"predict {site.name!r} (step {site.time}): obs is NaN or outside "
                           f"the support: {e}") from None
    batch = fn.batch_shape
    mask = site.mask.expand(batch)
    ok = fn.support.check(obs)
    ok = ok.reshape(ok.shape[:len(batch)] + (-1,)).all(-1) if ok.dim() > len(batch) else ok
    bad = ~ok.expand(batch) & mask
    if fn._validate_args and bad.any():
        raise ScgError(f"predict {site.name!r} (step {site.time}): obs is NaN or outside the "
                       f"support at batch index {bad.nonzero()[0].tolist()}, where it is not "
                       "masked")
    if fn.has_enumerate_support and not ok.all():
        fill = fn.enumerate_support(expand=False)[0].to(obs.dtype)
        keep = ok.reshape(ok.shape + (1,) * (obs.dim() - ok.dim()))
        obs = torch.where(keep, obs, fill)
    return masked(guarded(fn, site.mask).log_prob(obs), site.mask)
