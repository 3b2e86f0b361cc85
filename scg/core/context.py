"""Per-run state on Pyro's handler stack: the time index, site renaming, and ``done`` masks.

Every call of an ``@scg.network`` function enters one :class:`RunContext`. Primitives are plain
Pyro sample sites whose ``infer`` dict carries scg's metadata (the keys: :mod:`scg.core.schema`).

The fast path: when every handler on the stack is one whose effect on an scg site the fast path
reproduces (a class that says so with ``scg_fast_path = True`` in its own body, or
``poutine.mask``), a site skips Pyro's generic handler-stack machinery (:func:`sample_site`).
"""

import pyro
import torch
from pyro.poutine.indep_messenger import IndepMessenger
from pyro.poutine.mask_messenger import MaskMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.plate_messenger import PlateMessenger
from pyro.poutine.runtime import _PYRO_STACK

from ..errors import ScgError


class StackInfo:
    """What a site needs to know of the handler stack ``frames`` (innermost last):
    ``plates``, the enclosing plates as :func:`active_plates`; ``sizes``, their (dim, size);
    ``fast``, whether the fast path reproduces every handler (:func:`fast_path_frame`); and
    for the fast path, the ``poutine.mask`` masks (innermost first), the replaying handlers
    (innermost first) and the recorders (outermost first), in the order Pyro would call them."""

    __slots__ = ("plates", "sizes", "fast", "masks", "replays", "recorders")

    @classmethod
    def of(cls, frames):
        info = cls()
        info.plates = tuple(active_plates())
        info.sizes = tuple((dim, size) for _, dim, size, _ in info.plates)
        info.fast = all(fast_path_frame(f) for f in frames)
        inner = frames[::-1]
        info.masks = tuple(f.mask for f in inner if type(f) is MaskMessenger)
        info.replays = tuple(f for f in inner if type(f) is not MaskMessenger
                             and hasattr(f, "replay_site"))
        info.recorders = tuple(f for f in frames if hasattr(f, "record_site"))
        return info


class RunContext(Messenger):
    """Time and termination for one run of a network.

    ``t`` is the current step (0 before and during the first step; sites after an
    ``scg.steps`` loop keep the time of its last step). Inside a steps loop, site ``name``
    becomes ``name@t``. ``done`` is the accumulated per-episode termination mask (every
    ``scg.done`` call so far, True = finished).

    When a call takes effect (:func:`scg.done`): a finished episode's *sites* (messages, env)
    emitted after the call are masked at once; its *costs* (rewards, costs, predictors, value
    sites) from its next site on, or from the next step (or the end of the steps loop), whichever
    comes first. So the costs that close the ending step, such as the reward ``env.step``
    returned with ``terminated``, count even when emitted after the call, and no cost that
    counts can read a masked site (a cost reads only values made before it).
    """

    scg_fast_path = True

    def __init__(self):
        super().__init__()
        self.t = 0
        self.in_steps = False
        self.steps_used = False
        self._done = None     # bool, broadcastable to the episodes plate: every call so far
        self._costs = None    # the part of it in effect for costs
        self._pending = None  # (t, in_steps) of calls not yet in effect for costs, or None
        self.previous = {}  # asynchronous unit's base name -> its last output
        self._stack_key, self._stack_info = None, None   # stack_info's cache

    @property
    def done(self):
        """The accumulated termination mask: every ``scg.done`` call so far (None before);
        in effect for sites emitted now."""
        return self._done

    @done.setter
    def done(self, mask):
        self.cost_mask()              # calls of an earlier step are in effect for costs now
        self._done = mask
        self._pending = (self.t, self.in_steps)

    def stack_info(self):
        """A :class:`StackInfo` of Pyro's handler stack now: computed once per state of the
        stack (the key holds the frames, so it cannot match a new stack)."""
        key = tuple(_PYRO_STACK)
        if key != self._stack_key:
            self._stack_key, self._stack_info = key, StackInfo.of(key)
        return self._stack_info

    def cost_mask(self):
        """The termination mask in effect for a cost emitted now (see the class docstring)."""
        if self._pending is not None and self._pending != (self.t, self.in_steps):
            self._costs, self._pending = self._done, None
        return self._costs

    def _process_message(self, msg):
        infer = msg["infer"]
        if msg["type"] != "sample" or "scg_role" not in infer:
            return
        infer["scg_base"] = msg["name"]
        infer["scg_time"] = self.t
        if self.in_steps:
            msg["name"] = f"{msg['name']}@{self.t}"
        if infer["scg_role"] in ("message", "env"):
            done = self._done
            self._costs, self._pending = self._done, None   # a site ends the ending step
        else:
            done = self.cost_mask()
        if done is not None:
            alive = ~done
            msg["mask"] = alive if msg["mask"] is None else msg["mask"] & alive


def current_run():
    """The innermost :class:`RunContext`, or an error if no network is running."""
    for frame in reversed(_PYRO_STACK):
        if isinstance(frame, RunContext):
            return frame
    return None


def require_run(what):
    run = current_run()
    if run is None:
        raise ScgError(f"{what} must be called inside an @scg.network function")
    return run


def active_plates():
    """The vectorised plates enclosing the current point: list of (name, dim, size, kind)."""
    plates = []
    for frame in _PYRO_STACK:
        if isinstance(frame, IndepMessenger) and frame.dim is not None:
            plates.append((frame.name, frame.dim, frame.size, getattr(frame, "scg_kind", "plate")))
    return plates


def plate_shape(plates):
    """The batch shape the enclosing plates imply, right-aligned by plate dim."""
    if not plates:
        return torch.Size()
    n = max(-dim for _, dim, _, _ in plates)
    shape = [1] * n
    for _, dim, size, _ in plates:
        shape[dim] = size
    return torch.Size(shape)


def no_episodes_hint(plates, shape):
    """The advice for a site whose batch shape has more leading dims than its ``plates`` imply
    when no ``scg.episodes`` plate is among them (the plate forgotten, usually): the text to
    append to the error ("" when an episodes plate is there or ``shape`` has no extra dim)."""
    if any(kind == "episodes" for _, _, _, kind in plates):
        return ""
    extra = len(shape) - len(plate_shape(plates))
    if extra <= 0:
        return ""
    return (f": no scg.episodes plate is open. Wrap the model's body in "
            f"`with scg.episodes({shape[0]}):` (one episode per row of the batch; "
            "scg.agents(N) for interacting entities)")


def fast_path_frame(frame):
    """Whether the fast path reproduces handler ``frame``'s effect on an scg site: its class
    (not a subclass) declares ``scg_fast_path = True``, or it is ``poutine.mask``, or a
    vectorised ``pyro.plate`` that does not subsample (its effect on a site whose distribution
    already has the plate's size is none: scale 1, no broadcast; scg reads plates from the
    stack, not from ``cond_indep_stack``)."""
    cls = type(frame)
    if cls is pyro.plate or cls is PlateMessenger:
        return frame.dim is not None and frame.subsample_size == frame.size
    return cls is MaskMessenger or cls.__dict__.get("scg_fast_path", False)


def sample_site(name, fn, role, coagent=None, obs=None, mask=None, **extra):
    """A Pyro sample site carrying scg's metadata in its ``infer`` dict; ``mask``: a bool mask
    applied as an innermost ``poutine.mask`` would (an asynchronous unit's execution bit),
    without entering one (a handler per site changes the stack the fast path checks)."""
    run = require_run(f"scg.{role}({name!r})")
    if not callable(fn):
        raise ScgError(f"{role} {name!r}: {type(fn).__module__}.{type(fn).__name__} is not a "
                       "Pyro distribution; use pyro.distributions (same names as "
                       "torch.distributions)")
    info = run.stack_info()
    plates = info.plates
    if not plates and any(n != 1 for n in getattr(fn, "batch_shape", ())):
        step = f" (step {run.t})" if run.in_steps else ""
        raise ScgError(f"{role} {name!r}{step} has batch shape {tuple(fn.batch_shape)}, but no "
                       "plate encloses it (every batch dimension must belong to a plate)"
                       f"{no_episodes_hint(plates, fn.batch_shape)}; or, if these dims are "
                       "one draw's event dims, move them to the right with .to_event()")
    infer = {"scg_role": role, "scg_coagent": coagent, "scg_plates": plates}
    infer.update(extra)
    if info.fast and has_plate_sizes(fn, info.sizes):
        return _fast_sample(run, info, name, fn, obs, infer, mask)
    if mask is not None:
        with pyro.poutine.mask(mask=mask):
            return pyro.sample(name, fn, obs=obs, infer=infer)
    return pyro.sample(name, fn, obs=obs, infer=infer)


def has_plate_sizes(fn, dims_sizes):
    """Whether ``fn``'s batch shape already has each plate's size at the plate's dim (then
    Pyro's plate broadcast would be a no-op ``expand``)."""
    shape = getattr(fn, "batch_shape", None)
    if shape is None:
        return False
    for dim, size in dims_sizes:   # a plain loop: all() over a generator costs more here
        if len(shape) < -dim or shape[dim] != size:
            return False
    return True


def _fast_sample(run, info, name, fn, obs, infer, mask=None):
    """``pyro.sample`` when the only handlers are scg's own: the same message, processed by
    what those handlers do (plates: nothing, the distribution already has their sizes; the run
    context: time, ``@t`` and the done mask; ``poutine.mask``: its mask; the recorder: the
    site; a replaying recorder: its ``replay_site``), without Pyro's generic handler-stack
    machinery, which costs more than a small site. Any other handler (``poutine.trace``,
    ``condition``, a user's plate) takes the full path."""
    msg = {"type": "sample", "name": name, "fn": fn, "is_observed": obs is not None,
           "args": (), "kwargs": {}, "value": obs, "infer": infer, "mask": mask,
           "done": False, "stop": False, "cond_indep_stack": ()}
    for mask in info.masks:  # as MaskMessenger._process_message
        msg["mask"] = mask if msg["mask"] is None else msg["mask"] & mask
    run._process_message(msg)   # time, name@t, done: before a replay looks the name up
    for frame in info.replays:
        frame.replay_site(msg)
    if obs is None and not msg["done"]:
        msg["value"], msg["scg_sampled"] = fn(), True
    for frame in info.recorders:
        frame.record_site(msg)
    return msg["value"]


def expands_to(shape, target):
    """Whether a tensor of ``shape`` broadcasts to exactly ``target`` (no new batch dims).
    Plain Python: ``torch.broadcast_shapes`` goes through torch's reference implementation
    (symbolic shapes), which costs more than a small site."""
    if len(shape) > len(target):
        return False
    return all(a == 1 or a == b for a, b in zip(reversed(shape), reversed(target)))
