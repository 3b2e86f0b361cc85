"""Provenance tracking: which sites each site and cost was computed from, and where values
left torch (design.md §3.2, §3.4).

An analysed run executes under :class:`Provenance`, a ``TorchFunctionMode``: it sees every
torch operation of the run (tensor methods, functions, factories such as ``torch.tensor``) and
keeps, in a side table, the set of sources each tensor's data was computed from: by tensor
identity for what operations return, by *storage* for in-place writes, so views follow them
(``buf[0] = m`` makes ``buf`` depend on ``m``, and so does every view of it). The user's
program only ever holds plain tensors, so nothing tracked can leak into its state between runs.

Escapes are decided by *allow-list*, not by a list of known leaks: an operation on tracked data
whose result is not a tensor (``int(m)``, ``m.item()``, ``1 in m``, ``torch.equal``, ``f"{m}"``,
pickling, numpy, storage or dlpack access, ...) is an escape unless it is a metadata query
(shape, dtype, device, numel, ...). Operations whose output *shape* depends on the data
(``nonzero``, ``unique``, boolean-mask indexing, ...) are escapes too, since the shape is a
Python value. An in-place write into a sampled value is an error: its score would be taken at a
value the run did not sample.
"""

import gc
import os
import sys

import pyro
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK
from torch.overrides import TorchFunctionMode

from ..core.record import Recorder
from ..errors import ScgError
from .guards import check_raw_sample

INPUT = "<inputs>"  # the source of the model's tensor arguments
PARAMS = "<parameters>"  # the source of every leaf tensor that requires grad (parameters)
EXTERNAL = frozenset({INPUT, PARAMS})  # sources that are not sites: escapes, not graph nodes
NONE, ONLY_PARAMS = frozenset(), frozenset({PARAMS})
Tensor, CONTAINERS = torch.Tensor, (list, tuple, dict)

METADATA = frozenset({
    "__get__", "dim", "ndimension", "size", "numel", "nelement", "__len__", "stride",
    "storage_offset", "element_size", "is_floating_point", "is_complex", "is_signed",
    "is_contiguous", "get_device", "type", "is_pinned", "is_shared", "is_inference",
    "has_names", "__dlpack_device__", "register_hook", "backward", "_is_view", "is_set_to",
    "__hash__", "retain_grad", "__setstate__", "requires_grad_", "is_coalesced", "dense_dim",
    "sparse_dim",
})
DATA_DEPENDENT_SHAPE = frozenset({
    "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount",
    "repeat_interleave", "_unique", "_unique2", "unique_dim",
})
_INPLACE_DUNDERS = {f"__i{op}__" for op in (
    "add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow", "lshift", "rshift",
    "and", "xor", "or")} | {"__setitem__"}
_NOT_WRITES = {"requires_grad_", "share_memory_", "retain_grad"}


def _name(func):
    return getattr(func, "__name__", "")


def _writes_by_name(name):
    return name in _INPLACE_DUNDERS or (
        name.endswith("_") and not name.startswith("_") and name not in _NOT_WRITES)


# How an operation's output shape can depend on its inputs' values (see _shape_from_data).
NEVER, ALWAYS, WHERE, GETITEM = range(4)


def _shape_kind(func, name):
    if name in DATA_DEPENDENT_SHAPE:
        return ALWAYS
    if func is torch.where:
        return WHERE
    return GETITEM if name == "__getitem__" else NEVER


def _traits(func):
    """What the handler needs to know of ``func``, read off its name: whether it writes in
    place by name, how its output shape may depend on data, whether it is a metadata query,
    and the name. One tuple per function, computed once: the handler runs for every torch
    operation of an analysed run."""
    name = _name(func)
    return (_writes_by_name(name), _shape_kind(func, name), name in METADATA, name)


_TRAITS = {}   # func -> _traits(func)


def traits(func):
    try:
        return _TRAITS[func]
    except KeyError:
        t = _TRAITS[func] = _traits(func)
        return t
    except TypeError:   # an unhashable callable: read every time
        return _traits(func)


def _tensors(x, out):
    """Append every tensor in ``x`` (nested lists, tuples, dicts) to ``out``. Called for every
    operation of an analysed run: tensors and scalars among a container's items are handled
    without a call of their own."""
    if isinstance(x, torch.Tensor):
        out.append(x)
        return out
    if isinstance(x, dict):
        x = x.values()
    elif not isinstance(x, (list, tuple)):
        return out
    for y in x:
        if isinstance(y, torch.Tensor):
            out.append(y)
        elif isinstance(y, (list, tuple, dict)):
            _tensors(y, out)
    return out


def _only_tensors(x):
    """Whether a result carries no Python values: a tensor, None, or containers of them."""
    if x is None or isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (list, tuple)) and not isinstance(x, torch.Size):
        return all(_only_tensors(y) for y in x)
    return False


def _shape_from_data(func, args, kind=None):
    """Whether the op's output shape depends on the values of its inputs."""
    kind = traits(func)[1] if kind is None else kind
    if kind == NEVER:
        return False
    if kind == ALWAYS:
        return True
    if kind == WHERE:
        return len(args) == 1
    if len(args) > 1:   # __getitem__: a boolean mask selects a data-dependent number
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                   for i in index)
    return False


class validation(Messenger):
    """``with scg.validation():`` marks a block that only *checks* values (of the model's
    inputs, say) and raises if they are bad. Values that leave torch inside it are not escapes:
    they decide whether the run fails, not what it computes. Do not branch on them otherwise:
    that is exactly the data flow an escape stands for.

    For example:

    ```python
    with scg.validation():
        if s.min() < 0:
            raise ValueError("states must be non-negative")
    ```
    """

    scg_fast_path = True   # it has no effect on sites


def _validating():
    return any(isinstance(f, validation) for f in _PYRO_STACK)


_SCG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the scg package
_ZOO = os.path.join(_SCG, "models")   # where a regular install puts the zoo: model code


def scg_code(path):
    """Whether source file ``path`` is scg's own code: inside the scg package, but not the
    zoo's models (installed as ``scg.models`` inside it by a regular install), which are
    models like any user's and whose escapes count."""
    return path.startswith(_SCG + os.sep) and not path.startswith(_ZOO + os.sep)
_LIBRARIES = (os.path.dirname(os.path.abspath(torch.__file__)),
              os.path.dirname(os.path.abspath(pyro.__file__)))


_VALIDATION = os.path.join(_LIBRARIES[0], "distributions", "distribution.py")


def _by_scg():
    """Whether the operation being handled was issued by scg itself (its checks of a site's
    arguments, say) or by torch.distributions' argument validation, rather than by the model:
    the nearest caller outside torch, Pyro and this module is in scg's package, or a
    distribution's validation is on the way. Looked up only when an escape happens."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path == _VALIDATION:
            return True
        if not path.startswith(_LIBRARIES) and path != __file__:
            return scg_code(path)
        frame = frame.f_back
    return False


def _storage(t):
    """The storage a tensor's data lives in (views share it), or None for an empty tensor."""
    if t.numel() == 0:
        return None
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return ("id", id(t))


# The mode's own table work (reading a tensor's flags, its storage; an untracked copy) runs
# with torch-function handling off: its operations skip the handler (a C switch, cheaper than
# the handler's dispatch). None of them is a factory, so a device context mode is not missed.
untracked = torch._C.DisableTorchFunction


class _Quiet:
    """``with mode.hushed:``: scg's own bookkeeping inside a run, whose operations are not the
    model's escapes (a class, not a generator: it is entered for every site)."""

    __slots__ = ("mode",)

    def __init__(self, mode):
        self.mode = mode

    def __enter__(self):
        self.mode.quiet += 1

    def __exit__(self, *exc):
        self.mode.quiet -= 1


class Provenance(TorchFunctionMode):
    """The provenance side table of one analysed run.

    - ``table``: tensor (by identity) -> frozenset of source names (site names, or
      :data:`INPUT`): every tensor an operation returns gets the union of its arguments'
      provenance (``tab[i]`` depends on ``i`` even where it is a view of ``tab``).
    - ``writes``: storage -> the provenance written into it in place (``buf[0] = m``), which
      every tensor on that storage, every view, carries from then on.
    - ``sampled``: storage -> the site whose sampled value it holds (never written in place).

    Tensors in the table are kept alive for the run, so an identity is never reused while the
    table refers to it. ``escape(names, func)`` is called for every escape of tracked data
    (``quiet`` suppresses it during scg's own bookkeeping).
    """

    def __init__(self, escape):
        super().__init__()
        self.table, self.writes, self.sampled, self.keep = {}, {}, {}, []
        self.escape = escape
        self.quiet = 0
        self.hushed = _Quiet(self)

    def source(self, tensor, name, sampled=False):
        """Make ``tensor``'s data a source named ``name`` (called from outside the mode). A
        sampled value's provenance is its site alone: what its draw was computed from reaches
        later readers through the site's own parents."""
        with untracked():
            k = _storage(tensor)
        old = frozenset() if sampled else self.table.get(id(tensor), frozenset())
        self.table[id(tensor)] = old | {name}
        self.keep.append(tensor)
        if sampled and k is not None:
            self.sampled[k] = name

    def of(self, x):
        """The union of the provenance of every tensor in ``x`` (called from outside the mode)."""
        with untracked():
            return self._of(x)

    def plain(self, tensor):
        """An untracked copy of ``tensor`` (what a distribution reads, without the data)."""
        with untracked():
            return tensor.clone()

    def _of(self, x):
        """The union of the provenance of the tensors in ``x`` (a tensor, or nested lists,
        tuples and dicts): a shared frozenset where one argument carries it all."""
        if isinstance(x, Tensor):
            x = (x,)
        elif isinstance(x, dict):
            x = x.values()
        elif not isinstance(x, (list, tuple)):
            return NONE
        table, writes = self.table, self.writes
        prov = NONE
        for t in x:
            if isinstance(t, Tensor):
                p = table.get(id(t))
                if p is None and t.requires_grad and t.is_leaf:   # a parameter, first seen
                    p = table[id(t)] = ONLY_PARAMS
                    self.keep.append(t)
                if writes:
                    w = writes.get(_storage(t))
                    if w is not None:
                        p = w if p is None else p | w
            elif isinstance(t, CONTAINERS):
                p = self._of(t)
            else:
                continue
            if p and p is not prov:
                prov = p if not prov else prov | p
        return prov

    def _mark(self, ret, prov):
        table = self.table
        for t in _tensors(ret, []):
            old = table.get(id(t))
            table[id(t)] = prov if old is None or old is prov else old | prov
            self.keep.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        try:
            writes_by_name, shape, metadata, name = _TRAITS[func]
        except (KeyError, TypeError):
            writes_by_name, shape, metadata, name = traits(func)
        table = self.table
        prov = self._of(args)
        if kwargs:
            p = self._of(kwargs)
            prov = prov | p if prov and p else prov or p
            target = kwargs.get("out")
            if not isinstance(target, Tensor):
                target = args[0] if writes_by_name and args else None
        else:
            kwargs = {}
            target = args[0] if writes_by_name and args else None
        k = _storage(target) if isinstance(target, Tensor) else None
        if k is not None and k in self.sampled and not self.quiet:
            raise ScgError(f"in-place write ({name}) into the sampled value of site "
                           f"{self.sampled[k]!r}: its score term would be taken at a value "
                           "the run did not sample; write into a copy (m = m.clone())")
        ret = func(*args, **kwargs)
        if not prov:
            return ret
        if isinstance(ret, Tensor):   # the common case: one tensor returned
            if shape and not self.quiet and _shape_from_data(func, args, shape):
                self.escape(prov, name)
            old = table.get(id(ret))
            table[id(ret)] = prov if old is None or old is prov else old | prov
            self.keep.append(ret)
        elif not metadata:
            if not self.quiet and (shape and _shape_from_data(func, args, shape)
                                   or not _only_tensors(ret)):
                self.escape(prov, name)
            self._mark(ret, prov)
        elif isinstance(ret, CONTAINERS) and type(ret) is not torch.Size:
            self._mark(ret, prov)   # a metadata query's tensors (a shape is none)
        if k is not None:   # pin the storage: its address must not be reused during the run
            self.writes[k] = self.writes.get(k, NONE) | prov
            self.keep.append(target)
        return ret


class Analysis(Recorder):
    """Run (or replay) a run under provenance tracking; record each site's parents.

    It takes scg's fast path (:func:`scg.core.context.sample_site`) like the plain recorder:
    provenance is read off the torch operations, not Pyro's handler machinery.

    ``parents[name]`` is the set of nodes it depends on: the sites its distribution's
    parameters (a cost: its value; a predictor: also its observed data) and its mask were
    computed from, and the *escape node* current when it was emitted. ``masks[name]``,
    ``bits[name]`` and ``reads[name]`` are the parts that reached it through its mask (an
    execution bit, a done mask), its execution bit, and its distribution's parameters (a
    cost's value) only.

    Escape nodes stand for the world outside torch: when tracked values escape (``int(a)``
    fed to an environment), a node ``escape@t`` is created whose parents are the escaped sites
    and the previous escape node; every later site and cost reads the current one. That keeps
    the conservative rule of design.md §3.2 (after a value escapes, everything later in the run
    is downstream of it) linear in size. ``worlds[name]`` holds each escape node's step, its
    place in execution order and its parents. ``escaped`` is every source that escaped
    (sites, :data:`INPUT` when a model argument's value did, :data:`PARAMS` when a
    parameter's did: then the wiring may change as the parameters are trained).

    ``scores[name]``: a message's log-probability at its value, taken for its provenance; in
    a fresh run (not a replay) :func:`scg.compiler.owners.find` reuses it.

    ``replay`` (site name -> value) replays a recorded run; without it the run samples afresh.
    ``inputs`` are the model's arguments: their tensors are the source :data:`INPUT`.
    """

    scg_fast_path = True

    def __init__(self, replay=None, inputs=()):
        super().__init__()
        self.replay = replay or {}
        self.inputs = inputs
        self.parents, self.masks, self.bits, self.reads = {}, {}, {}, {}
        self.escaped, self.worlds, self.scores = set(), {}, {}
        self.world, self.world_read, self.time = None, False, 0
        self.mode = Provenance(self.on_escape)

    def on_escape(self, prov, func):
        if _validating() or _by_scg():
            return
        new = set(prov) - self.escaped
        self.escaped |= new
        new -= EXTERNAL
        if not new:
            return
        if self.world is not None and not self.world_read:
            self.worlds[self.world]["parents"] |= new
            return
        name = self._escape_name()
        parents = new | ({self.world} if self.world is not None else set())
        self.worlds[name] = {"time": self.time, "order": len(self.sites) - 0.5 +
                             len(self.worlds) * 1e-6, "parents": parents, "via": func,
                             "stepped": bool(self.sites) and "@" in self.sites[-1].name}
        self.world, self.world_read = name, False

    def _escape_name(self):
        """``escape@t`` for the first escape node of step t (``escape`` outside
        ``scg.steps``), ``escape.2@t``, ... for later ones: the rolled graph folds them into
        one node per position in the step, as it does sites."""
        stepped = bool(self.sites) and "@" in self.sites[-1].name
        k = sum(1 for a in self.worlds.values() if a["time"] == self.time and
                a["stepped"] == stepped)
        base = "escape" if k == 0 else f"escape.{k + 1}"
        return f"{base}@{self.time}" if stepped else base

    def __enter__(self):
        # The run keeps every tracked tensor alive: without this, the cyclic garbage collector
        # would rescan them again and again (compile time superlinear in the number of sites).
        self._gc = gc.isenabled()
        gc.disable()
        self.mode.__enter__()
        for t in _tensors(self.inputs, []):
            self.mode.source(t, INPUT)
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self.mode.__exit__(*exc)
        self.mode.table.clear()
        self.mode.writes.clear()
        self.mode.keep.clear()
        self.mode.escape = None   # no cycle analysis <-> mode: the run's objects die with it
        if self._gc:
            gc.enable()
        return out

    def replay_site(self, msg):
        """Set a latent scg site to its recorded value (Pyro's path and the fast path)."""
        if msg["infer"].get("scg_role") in ("message", "env") and not msg["is_observed"]:
            if msg["name"] in self.replay:
                msg["value"] = self.replay[msg["name"]]
                msg["done"] = True

    _pyro_sample = replay_site

    def _postprocess_message(self, msg):
        if msg["type"] == "sample" and "scg_role" not in msg["infer"]:
            with self.mode.hushed:
                check_raw_sample(msg)
        super()._postprocess_message(msg)   # an scg site: record_site

    def log_prob(self, msg):
        """The site's log-probability at an untracked copy of its value: its provenance is
        what the distribution read. A site's own draw lies in the support and is not
        validated again; other values (replayed, observed) are the emitter's to name."""
        fn, value = msg["fn"], self.mode.plain(msg["value"])
        if msg.get("scg_sampled", False) and fn._validate_args:
            fn._validate_args = False   # for this call only
            try:
                return fn.log_prob(value)
            finally:
                fn._validate_args = True
        with pyro.validation_enabled(False):
            return fn.log_prob(value)

    @staticmethod
    def site(msg):
        with untracked():   # the record's reads (the value's version) are not the model's
            return Recorder.site(msg)

    def record_site(self, msg):
        """Record the site and what it was computed from (Pyro's path and the fast path)."""
        super().record_site(msg)
        infer = msg["infer"]
        with self.mode.hushed:
            if infer["scg_role"] in ("message", "env", "predict"):
                lp = self.log_prob(msg)
                reads = self.mode.of(lp)
                if infer["scg_role"] == "message" and not self.replay:
                    self.scores[msg["name"]] = lp   # owners.find's, in a fresh run
                prov = reads | (self.mode.of(msg["value"]) if infer["scg_role"] == "predict"
                                else frozenset())
            else:
                prov = reads = self.mode.of(msg["value"])
            masked_by = self.mode.of(msg["mask"])
            bit_from = self.mode.of(infer.get("scg_bit"))
        name = msg["name"]
        self.time = infer["scg_time"]
        self.masks[name] = set(masked_by - EXTERNAL)
        self.bits[name] = set(bit_from - EXTERNAL)
        self.reads[name] = set(reads - EXTERNAL)
        self.parents[name] = set((prov | masked_by) - EXTERNAL)
        if self.world is not None:   # read, conservatively: the world may carry anything
            self.parents[name].add(self.world)
            self.reads[name].add(self.world)
            self.world_read = True
        if infer["scg_role"] in ("message", "env"):
            self.mode.source(msg["value"], name, sampled=True)
