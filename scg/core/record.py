"""Recording one run of a network: a light Pyro messenger that keeps scg's sites in order.

This runs on every call of a compiled estimator, so it does no provenance or graph work.
"""

import gc
from dataclasses import dataclass

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from ..errors import ScgError


@dataclass
class Site:
    """One scg site of one run (the keys: :mod:`scg.core.schema`, "A recorded site")."""

    name: str
    role: str
    coagent: object
    time: int
    fn: object
    value: object
    mask: object
    plates: tuple
    infer: dict
    version: int = 0
    sampled: bool = False   # the value is the site's own draw from fn (so in its support)

    def check_unchanged(self):
        """Raise if the site's value was written in place after the site: a sampled value's
        score term would be taken at a value the run did not sample, and a cost's value (or a
        predictor's observation) could depend on sites after it, which no plan credits
        (design.md §3.4)."""
        value = self.value
        if not isinstance(value, torch.Tensor) or value._version == self.version:
            return
        if self.role in ("message", "env"):
            raise ScgError(f"{self.role} {self.name!r} (step {self.time}): its sampled value was "
                           "written in place after it was drawn, so its score term would be "
                           "taken at a value the run did not sample; write into a copy "
                           "(m = m.clone())")
        what = "observation" if self.role == "predict" else "value"
        raise ScgError(f"{self.role} {self.name!r} (step {self.time}): its {what} was written in "
                       "place after the site was emitted, so it may depend on sites emitted "
                       f"after it, which are not credited with it; pass a copy "
                       f"(scg.{self.role}({self.infer.get('scg_base', self.name)!r}, "
                       "x.clone()))")

    @property
    def key(self):
        """This site's part of the structure signature."""
        return (self.name, self.role, self.coagent, self.time, self.fn.batch_shape,
                self.plates, type(self.fn), self.mask is not None,
                self.infer.get("scg_reparam", False), self.infer.get("scg_to"))


class Recorder(Messenger):
    """Collect the scg sites of a run, in execution order."""

    scg_fast_path = True   # the fast path calls record_site itself

    def __init__(self):
        super().__init__()
        self.sites = []
        self.names = set()
        self.raw = False   # a pyro.sample site that is not scg's (a plate's subsample aside)

    def _postprocess_message(self, msg):
        if msg["type"] != "sample":
            return
        if "scg_role" not in msg["infer"]:
            self.raw = self.raw or not isinstance(msg["fn"], _Subsample)
            return
        self.record_site(msg)

    def record_site(self, msg):
        infer = msg["infer"]
        name = msg["name"]
        if name in self.names:
            raise ScgError(f"site name {infer['scg_base']!r} is used twice in step "
                           f"{infer['scg_time']} (site {name!r})")
        self.names.add(name)
        self.sites.append(self.site(msg))

    @staticmethod
    def site(msg):
        infer = msg["infer"]
        value = msg["value"]
        return Site(msg["name"], infer["scg_role"], infer["scg_coagent"], infer["scg_time"],
                    msg["fn"], value, msg["mask"], infer["scg_plates"], infer,
                    getattr(value, "_version", 0), msg.get("scg_sampled", False))



class Fix(Messenger):
    """Set latent scg sites (messages, env) to given values without making them observed.

    Unlike ``poutine.condition`` the sites stay latent, so their score terms remain. A latent
    site missing from ``values`` calls ``missing(msg)`` (which may raise to stop the run).
    Under scg's own handlers only, sites take the fast path (:func:`scg.core.context.
    sample_site`), which calls :meth:`replay_site` as Pyro calls ``_pyro_sample``.
    """

    scg_fast_path = True

    def __init__(self, values, missing=None):
        super().__init__()
        self.values = values
        self.missing = missing

    def replay_site(self, msg):
        if msg["infer"].get("scg_role") not in ("message", "env") or msg["is_observed"]:
            return
        if msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]
            msg["done"] = True
        elif self.missing is not None:
            self.missing(msg)

    _pyro_sample = replay_site


class paused_collector:
    """Python's cyclic garbage collector paused for one run (``with paused_collector():``).

    A run allocates a few containers per site (its message, its record) and keeps them alive
    to the end, so collections triggered during the run find nothing to free but scan every
    live object, and more of them the longer the run: on a depth-10,000 chain they were a
    third of the call. Nothing is lost: garbage made during the run is collected once the
    collector is back on. A collector the program paused itself stays paused."""

    def __enter__(self):
        self.was_on = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc):
        if self.was_on:
            gc.enable()
        return False


def record(model, args, kwargs, *handlers, recorder=None):
    """Run ``model`` once under ``handlers`` (outermost first) and ``recorder`` (a new
    :class:`Recorder` if None, outermost of all); return its sites and the model's value."""
    recorder = Recorder() if recorder is None else recorder
    fn = model
    for h in reversed(handlers):
        fn = h(fn) if not isinstance(h, Messenger) else _wrap(h, fn)
    with recorder:
        out = fn(*args, **kwargs)
    return recorder.sites, out


def _wrap(handler, fn):
    def wrapped(*a, **k):
        with handler:
            return fn(*a, **k)
    return wrapped


__all__ = ["Site", "Recorder", "Fix", "record"]
