"""What a user writes: networks, coagents, and the sites of a coagent network (design.md §1).

Every site is a Pyro sample site, so models compose with ``poutine.trace``, ``replay``,
``condition`` and ``pyro.plate``; scg's metadata rides in the site's ``infer`` dict
(the keys: :mod:`scg.core.schema`).
"""

import functools
import inspect

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.broadcast_messenger import BroadcastMessenger
from pyro.poutine.indep_messenger import IndepMessenger
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.subsample_messenger import SubsampleMessenger

from .core.asynchrony import asynchronous_message
from .core.context import (
    RunContext,
    active_plates,
    current_run,
    expands_to,
    fast_path_frame,
    has_plate_sizes,
    no_episodes_hint,
    plate_shape,
    require_run,
    sample_site,
)
from .errors import ScgError


def network(fn):
    """Mark ``fn`` as a coagent network: a call runs inside its own :class:`RunContext`.

    Networks nest: a network called while another one runs (a helper ``@scg.network`` that
    builds part of an architecture) runs its body in the enclosing run, sharing its time index
    (inside ``scg.steps`` its sites are ``name@t``), plates, ``done`` masks and recorder, so
    its sites are exactly those of its body written inline.

    Called with arguments its signature does not take, it raises an :class:`ScgError` naming
    the network and its signature (not a bare ``TypeError``).
    """

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            if current_run() is not None:   # nested: part of the enclosing run
                return fn(*args, **kwargs)
            with RunContext():
                return fn(*args, **kwargs)
        except TypeError:
            why = _misfit(fn, args, kwargs)
            if why is None:   # raised inside the body: not a bad call of the network
                raise
            raise ScgError(why) from None

    run._scg_network = True
    return run


def _misfit(fn, args, kwargs):
    """Why ``fn(*args, **kwargs)`` is not a valid call of ``fn`` (None if it is)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*args, **kwargs)
        return None
    except TypeError as e:
        given = [f"{len(args)} positional"] + ([f"keywords {sorted(kwargs)}"] if kwargs else [])
        return (f"@scg.network {getattr(fn, '__name__', 'network')}{sig} was called with "
                f"{' and '.join(given)} argument(s): {e}")


def coagent(fn=None, *, name=None):
    """Make a callable (function or ``nn.Module``) returning a distribution into a named coagent.

    Distributions it returns are tagged, so ``scg.message("m", unit(x))`` needs no ``coagent=``.
    Usable as ``@scg.coagent``, ``@scg.coagent(name="pi")`` or ``scg.coagent(module, name=...)``.
    """
    if fn is None:
        return functools.partial(coagent, name=name)
    label = name or getattr(fn, "__name__", None) or type(fn).__name__.lower()

    if isinstance(fn, torch.nn.Module):
        fn.register_forward_hook(lambda _m, inputs, out: _tag(out, label, inputs))
        fn._scg_coagent = label
        return fn

    @functools.wraps(fn)
    def unit(*args, **kwargs):
        return _tag(fn(*args, **kwargs), label, args + tuple(kwargs.values()))

    unit._scg_coagent = label
    return unit


def _tag(d, label, inputs=()):
    """Mark distribution ``d`` as coagent ``label``'s, with the unit's tensor inputs as its
    local state (what a ``critic`` baseline reads)."""
    if not isinstance(d, torch.distributions.Distribution):
        raise ScgError(f"coagent {label!r} must return a torch distribution, "
                       f"got {type(d).__name__}")
    d._scg_coagent = label
    d._scg_state = tuple(x for x in inputs if isinstance(x, torch.Tensor))
    return d


def _local_state(name, fn, state):
    """The local state of message ``name``: ``state`` (a tensor or a tuple of them) if given,
    each tensor's leading dims broadcasting to the distribution's batch shape (else an error);
    otherwise the inputs of the ``@scg.coagent`` unit that built ``fn`` that are so aligned
    (None if none is: the critic then reads the distribution's parameters). Detached."""
    batch = tuple(fn.batch_shape)
    if state is None:
        found = tuple(x.detach() for x in getattr(fn, "_scg_state", ()) if _aligned(x, batch))
        return found or None
    state = (state,) if isinstance(state, torch.Tensor) else tuple(state)
    for k, x in enumerate(state):
        if not isinstance(x, torch.Tensor):
            raise ScgError(f"message {name!r}: state= holds tensors, got {type(x).__name__} at "
                           f"position {k}")
        if not _aligned(x, batch):
            raise ScgError(f"message {name!r}: state tensor {k} has shape {tuple(x.shape)}; its "
                           f"leading dims must broadcast to the batch shape {batch}")
    return tuple(x.detach() for x in state)


def _aligned(x, batch):
    """Whether tensor ``x``'s leading dims broadcast to ``batch`` (one row per batch element)."""
    return x.dim() >= len(batch) and expands_to(tuple(x.shape[:len(batch)]), batch)


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise ScgError(f"site names must be non-empty strings, got {name!r}")
    if "@" in name or "." in name:
        raise ScgError(f"site name {name!r}: '@' and '.' are reserved (m@3 is step 3, m.exec an "
                       "execution coagent)")


def _check_coagent(label, where):
    """User coagent labels: '@' and the '.exec' suffix are reserved (``m@3`` is a step,
    ``a.exec`` the execution coagent scg inserts for unit ``a``)."""
    if not isinstance(label, str) or not label:
        raise ScgError(f"{where}: coagent must be a non-empty string, got {label!r}")
    if "@" in label or label.endswith(".exec"):
        raise ScgError(f"{where}: coagent name {label!r} is reserved ('@' marks a step, "
                       "'NAME.exec' is the execution coagent scg inserts for an asynchronous "
                       "unit NAME); choose another name")


def message(name, fn, coagent=None, execute=None, init=None, reparam=False, state=None):
    """A coagent's stochastic output. Its value is detached unless ``reparam=True``.

    Credit reaches the coagent through its score term ``log p(m | parents)``; with
    ``reparam=True`` the value is a reparameterised sample and gradients flow pathwise instead.
    ``execute``/``init`` make the unit asynchronous (:mod:`scg.core.asynchrony`). ``state``: the
    coagent's local state (a tensor or a tuple of tensors whose leading dims are the batch), the
    input of a ``baseline="critic"``; default: the inputs of the ``@scg.coagent`` unit that
    built ``fn``, else the distribution's parameters. It must be known before the draw (it is),
    so the critic stays an unbiased baseline.
    """
    _check_name(name)
    coagent = coagent or getattr(fn, "_scg_coagent", None)
    if coagent is None:
        raise ScgError(f"message {name!r} has no coagent: pass coagent='...' or build its "
                       "distribution with an @scg.coagent unit")
    _check_coagent(coagent, f"message {name!r}")
    if reparam and not fn.has_rsample:
        raise ScgError(f"message {name!r}: reparam=True needs a reparameterisable distribution, "
                       f"{type(fn).__name__} is not")
    local = _local_state(name, fn, state)
    if execute is None and init is None:
        value = sample_site(name, fn, "message", coagent, scg_reparam=bool(reparam),
                            scg_state=local)
        return value if reparam else value.detach()
    return asynchronous_message(name, fn, coagent, execute, init, reparam, local)


def env(name, fn):
    """Environment randomness inside the model: no score term, but enumerable by ``check``."""
    _check_name(name)
    return sample_site(name, fn, "env").detach()


def predict(name, fn, obs=None, coagent=None, weight=1.0, to=None):
    """A predictor: ``weight * log p(obs)`` is a cost for upstream sites and a supervised term.

    ``to``: the coagents whose objective the cost enters (default: all; design.md §8); the
    predictor's own coagent must be among them (its supervised term trains its parameters)."""
    _check_name(name)
    if obs is None:
        raise ScgError(f"predict {name!r} needs obs= (the value it predicts)")
    coagent = coagent or getattr(fn, "_scg_coagent", None)
    if coagent is None:
        raise ScgError(f"predict {name!r} has no coagent: pass coagent='...'")
    _check_coagent(coagent, f"predict {name!r}")
    to = addressed(to, f"predict {name!r}")
    if to is not None and coagent not in to:
        raise ScgError(f"predict {name!r} belongs to coagent {coagent!r} but is addressed to "
                       f"{list(to)}: its supervised term trains {coagent!r}'s parameters, so "
                       f"{coagent!r} must be among to=")
    sample_site(name, fn, "predict", coagent, obs=obs, scg_weight=float(weight), scg_to=to)
    return obs


def as_tensor(x):
    """``x`` as a tensor; a tensor stays where it is (``torch.as_tensor`` would copy it to the
    default device when one is set)."""
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def addressed(to, where):
    """``to=`` of a cost site as a sorted tuple of coagent names, or None (every coagent: the
    shared objective)."""
    if to is None:
        return None
    names = [to] if isinstance(to, str) else to
    try:
        names = list(names)
    except TypeError:
        names = [names]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ScgError(f"{where}: to= must be a coagent name or a non-empty list of them, got "
                       f"{to!r}")
    for n in names:
        _check_coagent(n, where)
    return tuple(sorted(set(names)))


def point_mass(v, shape=None):
    """``pyro.distributions.Delta(v, validate_args=False)``, the distribution of a cost's
    site, built without its generic constructor (argument binding, a zero ``log_density`` the
    size of the batch): a cost is a site per step, and this is its largest fixed cost. Its
    ``log_density`` is a zero scalar, which broadcasts where Delta's has the batch shape.
    ``shape``: ``v.shape``, where the caller has read it already."""
    d = object.__new__(dist.Delta)
    d.v, d.log_density = v, v.new_zeros(())
    d._batch_shape = v.shape if shape is None else shape
    d._event_shape, d._validate_args = torch.Size(), False
    return d


def _value_site(name, value, role, coagent=None, to=None):
    _check_name(name)
    to = addressed(to, f"{role} {name!r}")
    if to is not None and coagent is not None and coagent not in to:
        raise ScgError(f"{role} {name!r} belongs to coagent {coagent!r} but is addressed to "
                       f"{list(to)}: its pathwise gradient trains {coagent!r}'s parameters, so "
                       f"{coagent!r} must be among to=")
    value = as_tensor(value)
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    plates = require_run(f"scg.{role}({name!r})").stack_info().plates
    shape = plate_shape(plates)
    vshape = value.shape   # read once: under provenance tracking each read is an operation
    if vshape != shape and not expands_to(vshape, shape):
        raise ScgError(f"{role} {name!r} has shape {tuple(vshape)}, but its plates imply "
                       f"batch shape {tuple(shape)}{no_episodes_hint(plates, vshape)}")
    fn = point_mass(value.expand(shape), shape) if vshape != shape else point_mass(value, vshape)
    sample_site(name, fn, role, coagent, obs=value, scg_value_shape=tuple(vshape), scg_to=to)
    return value


def reward(name, value, to=None):
    """An environment reward. It carries no gradient: a value that requires grad is an error.

    ``to``: the coagent (or list of coagents) whose objective it enters; default: every
    coagent's (the shared J). With ``to=``, coagent i climbs J_i, the costs addressed to it
    (design.md §8)."""
    if isinstance(value, torch.Tensor) and value.requires_grad:
        raise ScgError(f"reward {name!r} requires grad: rewards carry no gradient; use "
                       "scg.cost for a differentiable objective term")
    return _value_site(name, value, "reward", to=to)


def cost(name, value, coagent=None, to=None):
    """A differentiable objective term (pathwise gradient), also credited to upstream sites.

    Its pathwise gradient belongs to ``coagent``'s local loss; if omitted, to the one coagent
    whose parameters it reaches. ``to``: as for :func:`reward`.
    """
    return _value_site(name, value, "cost", coagent, to=to)


def value(name, v):
    """A learned state value V(s_t) for bootstrapping (``estimator="td"``,
    :mod:`scg.estimators.online`).

    Not a cost and never a baseline: the TD estimator uses it in its TD errors and trains it by
    semi-gradient TD(lambda); the Monte Carlo estimator ignores it.
    """
    v = as_tensor(v)
    if not v.is_floating_point():
        raise ScgError(f"value {name!r} must be a floating tensor, got {v.dtype}")
    return _value_site(name, v, "value")


def done(mask):
    """Per-episode termination: ``mask`` (bool ``[N]`` over the innermost ``scg.episodes``
    plate, True = finished) is accumulated for the rest of the run.

    A finished episode's sites (messages, env) emitted after the call are masked at once; its
    costs (rewards, costs, predictors, value sites) from its next site on, or from the next
    step (or the end of the ``scg.steps`` loop), whichever comes first. So the reward that
    closes the ending step counts whether it is emitted before or after the call::

        a = scg.message("a", policy(obs), coagent="policy")
        obs, r, terminated, truncated, _ = env.step(a.numpy())
        scg.done(torch.as_tensor(terminated | truncated))
        scg.reward("r", torch.as_tensor(r))   # counts: the reward of the last transition

    and no cost that counts can read a masked site (a cost reads only values made before it).
    """
    run = require_run("scg.done")
    mask = as_tensor(mask)
    if mask.dtype != torch.bool:
        raise ScgError(f"scg.done needs a bool mask (True = finished), got {mask.dtype}")
    episodes = [p for p in active_plates() if p[3] == "episodes"]
    if not episodes:
        raise ScgError("scg.done must be called inside scg.episodes(N)")
    _, dim, size, _ = episodes[-1]
    if mask.shape != (size,):
        raise ScgError(f"scg.done mask has shape {tuple(mask.shape)}, expected ({size},)")
    mask = mask.reshape((size,) + (1,) * (-dim - 1))
    run.done = mask if run.done is None else run.done | mask


class _plate(pyro.plate):
    """``pyro.plate`` that skips Pyro's broadcast when a site's distribution already has every
    enclosing plate's size at that plate's dim: the broadcast would be ``dist.expand`` to the
    same batch shape, a no-op that costs more than the rest of a small site.

    scg's plates never subsample. Under scg's own handlers only (the fast path of
    :func:`scg.core.context.sample_site`) they also skip the subsample site Pyro sends through
    the handler stack on every plate, whose value (``arange(size)``, what ``with plate as i``
    gives) no scg handler reads; under any other handler it is sent as Pyro does."""

    def __init__(self, name, size, dim=None):
        if all(fast_path_frame(f) for f in _PYRO_STACK):
            IndepMessenger.__init__(self, name, size, dim)
            self.subsample_size = size
        else:
            super().__init__(name, size, dim=dim)

    def __enter__(self):
        super().__enter__()
        if self._vectorized and self._indices is None:
            self._indices = torch.arange(self.size)
        return self._indices if self._vectorized else None

    def _process_message(self, msg):
        SubsampleMessenger._process_message(self, msg)
        if not _broadcast_already(msg):
            BroadcastMessenger._pyro_sample(msg)


def _broadcast_already(msg):
    if msg["done"] or msg["type"] != "sample":
        return False
    return has_plate_sizes(msg["fn"], [(f.dim, f.size) for f in msg["cond_indep_stack"]
                                       if f.dim is not None and f.size != -1])


class episodes(_plate):
    """A plate of independent episodes: estimates average over it."""

    scg_kind = "episodes"
    scg_fast_path = True   # the fast path reproduces a plate the distribution already fills

    def __init__(self, size, name="episodes", dim=None):
        super().__init__(name, size, dim=dim)


class agents(_plate):
    """A plate of interacting agents: a cost at one index credits sites at all indices,
    unless ``independent=True``."""

    scg_fast_path = True

    def __init__(self, size, name="agents", dim=None, independent=False):
        super().__init__(name, size, dim=dim)
        self.scg_kind = "independent" if independent else "agents"



class steps:
    """A sequential loop over time: ``for t in scg.steps(T)``. Sites inside are named ``name@t``."""

    def __init__(self, T):
        if not isinstance(T, int) or T < 0:
            raise ScgError(f"scg.steps(T) needs a non-negative int, got {T!r}")
        self.T = T

    def __iter__(self):
        run = require_run("scg.steps")
        if run.in_steps:
            raise ScgError("scg.steps loops cannot be nested")
        start = run.t + 1 if run.steps_used else 0
        run.in_steps, run.steps_used = True, True
        try:
            for t in range(start, start + self.T):
                run.t = t
                yield t
        finally:
            run.in_steps = False
