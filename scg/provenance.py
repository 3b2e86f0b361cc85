"""Provenance tracking with escape detection: which sites each site and cost depends on.

A :class:`Tracked` tensor carries the set of sites its value was computed from through every
torch op (as ``pyro.ops.provenance``). An empty set is not a proof of independence: a value
that leaves torch (``.item()``, ``int()``, ``bool()``, ``.tolist()``, numpy, an in-place write
into an untracked tensor) can come back untracked. Such an *escape* is intercepted, and every
later site and cost of the run is then treated as downstream of the escaped sites.
Provenance entries are ``(trace_id, site)`` pairs: a tensor kept from an earlier analysis run
(say, by an environment between calls) is detected and refused.
"""

import itertools

import pyro
import torch
from pyro.poutine.runtime import _PYRO_STACK
from torch.utils._pytree import tree_map

from .errors import ScgError
from .trace import Record

_ESCAPES = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
            torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
            torch.Tensor.__complex__, torch.Tensor.__array__}
_NEUTRAL = {torch.Tensor.__repr__, torch.Tensor.__format__, torch.Tensor.__str__}
_trace_ids = itertools.count()


class Tracked(torch.Tensor):
    """A tensor with a provenance set of ``(trace_id, site_name)`` pairs."""

    @staticmethod
    def __new__(cls, data, provenance):
        if not provenance:
            return data
        ret = data.as_subclass(cls)
        ret._t, ret._prov = data, frozenset(provenance)
        return ret

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        prov = provenance_of((args, kwargs))
        plain_args, plain_kwargs = untrack((args, kwargs))
        analysis = _current_analysis()
        if analysis is not None:
            analysis.observe(func, args, kwargs, prov)
        ret = func(*plain_args, **plain_kwargs)
        if func in _ESCAPES or func in _NEUTRAL:
            return ret
        if args and isinstance(args[0], Tracked) and _is_inplace(func):
            args[0]._prov = args[0]._prov | prov
            return args[0]
        return track(ret, prov)


_INPLACE_DUNDERS = {f"__i{op}__" for op in (
    "add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow", "lshift", "rshift",
    "and", "xor", "or")} | {"__setitem__"}


def _is_inplace(func):
    """``x.add_(y)``, ``x += y``, ``x[i] = y``: ops that write into their first argument (not
    ``__invert__``, ``__index__``, ...)."""
    name = getattr(func, "__name__", "")
    return name in _INPLACE_DUNDERS or (name.endswith("_") and not name.startswith("__"))


def provenance_of(x):
    """The union of the provenance sets of the tensors in ``x`` (tensors nested in lists,
    tuples and dicts, as a pytree). Walked directly: this runs on every tracked op, and
    ``torch.utils._pytree`` costs more than the op."""
    prov = frozenset()
    stack = [x]
    while stack:
        y = stack.pop()
        if isinstance(y, Tracked):
            prov = prov | y._prov
        elif isinstance(y, (list, tuple)):
            stack.extend(y)
        elif isinstance(y, dict):
            stack.extend(y.values())
    return prov


def untrack(x):
    """The same structure with plain tensors (plain lists, tuples and dicts walked directly,
    anything else through pytree)."""
    if isinstance(x, Tracked):
        return x._t
    kind = type(x)
    if kind is tuple or kind is list:
        return kind(untrack(y) for y in x)
    if kind is dict:
        return {k: untrack(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, dict)):
        return tree_map(lambda t: t._t if isinstance(t, Tracked) else t, x)
    return x


def track(x, prov):
    """Wrap every tensor in ``x`` (a tensor, or a pytree of them) with provenance ``prov``."""
    if isinstance(x, torch.Tensor):
        return Tracked(x, prov)
    kind = type(x)
    if kind is tuple or kind is list:
        return kind(track(y, prov) for y in x)
    return tree_map(lambda t: Tracked(t, prov) if isinstance(t, torch.Tensor) else t, x)


def _current_analysis():
    for frame in reversed(_PYRO_STACK):
        if isinstance(frame, Analysis):
            return frame
    return None


class Analysis(Record):
    """Replay a run with provenance tracking; record each site's parents.

    ``parents[name]`` is the set of site names it reads (for a site, through its
    distribution's parameters; for a cost, through its value), the provenance of its mask (an
    execution bit, a done mask), and every site whose value escaped before it; ``masks[name]``
    is the part that reached it through the mask, ``bits[name]`` through its execution bit,
    ``reads[name]`` through its distribution's parameters (or a cost's value) only: not a
    predictor's observed data, not its mask.
    """

    def __init__(self, replay):
        super().__init__()
        self.id = next(_trace_ids)
        self.replay = replay
        self.parents = {}
        self.masks = {}  # name -> sites its mask (execution bit, done) was computed from
        self.bits = {}   # name -> sites its execution bit was computed from
        self.reads = {}  # name -> sites its distribution (a cost: its value) read as data
        self.escaped = set()
        self.internal = False

    def observe(self, func, args, kwargs, prov):
        """Called on every op over tracked tensors: check staleness, record escapes."""
        stale = {name for tid, name in prov if tid != self.id}
        if stale:
            raise ScgError(f"a tensor tracked in an earlier run (from site(s) {sorted(stale)}) "
                           "was kept between runs: store plain values (e.g. .clone() outside "
                           "the model) or pass state in as arguments")
        if self.internal:
            return
        target = args[0] if args else None
        escapes = func in _ESCAPES or (
            _is_inplace(func) and not isinstance(target, Tracked) and prov) or (
            isinstance(kwargs.get("out"), torch.Tensor) and not isinstance(kwargs["out"], Tracked))
        if escapes:
            self.escaped |= {name for _, name in prov}

    def __enter__(self):
        self._validation = pyro.validation_enabled(False)
        self._validation.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self._validation.__exit__(*exc)
        return out

    def _pyro_sample(self, msg):
        if msg["infer"].get("scg_role") in ("message", "env") and not msg["is_observed"]:
            if msg["name"] in self.replay:
                msg["value"] = self.replay[msg["name"]]
                msg["done"] = True

    def _postprocess_message(self, msg):
        infer = msg["infer"]
        if msg["type"] != "sample" or "scg_role" not in infer:
            return
        super()._postprocess_message(msg)
        self.internal = True
        try:
            if infer["scg_role"] in ("message", "env", "predict"):
                value = untrack(msg["value"])
                reads = provenance_of(msg["fn"].log_prob(value))
                prov = reads | (provenance_of(msg["value"]) if infer["scg_role"] == "predict"
                                else frozenset())
            else:
                prov = reads = provenance_of(msg["value"])
            masked_by = provenance_of(msg["mask"])
            bit_from = provenance_of(infer.get("scg_bit"))
        finally:
            self.internal = False
        name = msg["name"]
        self.masks[name] = {n for _, n in masked_by}
        self.bits[name] = {n for _, n in bit_from}
        self.reads[name] = {n for _, n in reads}
        prov |= masked_by
        self.parents[name] = {n for _, n in prov} | self.escaped
        if infer["scg_role"] in ("message", "env"):
            msg["value"] = Tracked(untrack(msg["value"]), {(self.id, name)})
