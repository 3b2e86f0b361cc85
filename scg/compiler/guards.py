"""Guards: when a cached plan may be reused, and what an analysed run must satisfy
(design.md §3.4).

A plan is derived from the data flow of one analysed run. It holds for another run only if the
data flow is the same, and the site sequence alone does not say so: a Python argument can
rewire the model (``a if task == 0 else b``), and a sampled value that leaves torch
(``int(a)`` fed to an environment) can change what later sites read. So:

- a plan is cached under the run's *structure signature* and the *fingerprint* of its non-tensor
  arguments (:func:`fingerprint`); a change re-analyses;
- a run in which anything escaped torch is *dynamic*: escapes are monotone, so from then on every
  run of the estimator is analysed as it happens (one run under provenance tracking, no replay),
  and its plan is looked up by its own data flow (:func:`data_flow`);
- ``verify=True`` analyses every run and raises where the cached plan would differ
  (:func:`first_difference`).

The remaining checks refuse models whose gradient scg could not make unbiased, naming the site.
"""

import numbers

import torch

from ..core import devices
from ..errors import ScgError

SMALL_ARRAY = 4096  # numpy arguments up to this many elements are guarded by value


def fingerprint(x):
    """A hashable summary of a model argument: tensors by dtype, device and shape (their values
    reach the plan only through torch ops, which provenance sees, or through escapes, which make
    the run dynamic); Python values by value; other objects by identity."""
    if isinstance(x, torch.Tensor):
        return ("tensor", x.dtype, x.device.type, tuple(x.shape))
    if x is None or isinstance(x, (bool, numbers.Number, str, bytes)):
        return (type(x).__name__, x)
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(fingerprint(y) for y in x))
    if isinstance(x, dict):
        return ("dict", tuple((fingerprint(k), fingerprint(v)) for k, v in x.items()))
    if type(x).__module__ == "numpy" and hasattr(x, "tobytes"):
        if getattr(x, "size", SMALL_ARRAY + 1) <= SMALL_ARRAY:
            return ("ndarray", str(x.dtype), x.shape, x.tobytes())
    return ("object", type(x).__qualname__, id(x))


def arguments(args, kwargs):
    """The fingerprint of a call's arguments."""
    return fingerprint((tuple(args), dict(sorted(kwargs.items()))))


def data_flow(sites, analysis):
    """The data flow of an analysed run as a hashable key: per site (in order) one string of its
    parents and how they reach them, then one per escape node. Strings, not nested sets: the
    key lives as long as its plan, and the garbage collector rescans every container object
    (a set per parent list made steady calls of a 10,000-site chain a third slower)."""
    def row(name, *groups):
        return "|".join([name] + [",".join(sorted(g)) for g in groups])

    per_site = tuple(row(s.name, analysis.parents[s.name], analysis.masks[s.name],
                         analysis.bits[s.name], analysis.reads[s.name]) for s in sites)
    worlds = tuple(row(w, a["parents"]) for w, a in analysis.worlds.items())
    return per_site, worlds


def first_difference(cached, now, sites):
    """The message for a run whose data flow differs from the cached plan's."""
    by_name = {s.name: s for s in sites}
    for old, new in zip(cached[0], now[0]):
        if old != new:
            name, parents = new.split("|")[:2]
            was = old.split("|")[1]
            s = by_name[name]
            return (f"{s.role} {s.name!r} (step {s.time}) reads {parents.split(',')} in this "
                    f"run but {was.split(',')} in the run its cached plan was derived from, with "
                    "the same sites and arguments: the model's data flow depends on state "
                    "outside its arguments, sampled values and parameters (a global, an object's "
                    "attribute); pass that state as an argument")
    return ("the escape nodes differ from those of the run the cached plan was derived from "
            f"({[w.split('|')[0] for w in now[1]]} against "
            f"{[w.split('|')[0] for w in cached[1]]}): the model's data "
            "flow depends on state outside its arguments and sampled values")


def check_replay(sites, replayed):
    """A replay with the same sampled values must reproduce the run: same sites, same costs.
    Otherwise the model keeps state that changes between runs (an environment stepped inside
    it) and the analysis would describe another run."""
    if [s.key for s in replayed] != [s.key for s in sites]:
        raise ScgError("the model's structure changed when replayed with the same sampled "
                       "values: randomness outside scg sites? use scg.env for it")
    for s, r in zip(sites, replayed):
        if s.role in ("reward", "cost") and not devices.same_values(s.fn.v, r.fn.v):
            raise ScgError(
                f"{s.role} {s.name!r} (step {s.time}) changed when the run was replayed with the "
                "same sampled values: the model keeps state between runs (an environment "
                "stepped inside it, a counter), so the analysis would describe another run. "
                "Pass that state through the model's arguments and return value")


def check_sites(sites, analysis):
    """Refuse what no plan could make unbiased: batch dimensions outside every plate, costs
    that pool episodes, parameters of distributions that have no score term. Without an
    ``analysis`` (None) the checks that need no data flow."""
    by_name = {x.name: x for x in sites}
    for s in sites:
        _check_batch(s)
        if s.role in ("reward", "cost", "value") and analysis is not None:
            _check_pooled(s, analysis.reads[s.name], by_name)
        if s.role == "env":
            _check_no_parameters(s)


def pools_episodes(site):
    """Whether a cost has one value for all episodes of an ``scg.episodes`` plate of two or
    more (a batch statistic if computed from sites: only the data flow can tell)."""
    shape = tuple(site.infer.get("scg_value_shape", site.fn.batch_shape))
    return any(kind == "episodes" and size >= 2 and (len(shape) < -dim or shape[dim] == 1)
               for _, dim, size, kind in site.plates)


def _check_batch(s):
    shape = tuple(s.fn.batch_shape)
    by_dim = {dim: size for _, dim, size, _ in s.plates}
    for k, size in enumerate(shape):
        dim = k - len(shape)
        if size != 1 and by_dim.get(dim) != size:
            raise ScgError(
                f"{s.role} {s.name!r} (step {s.time}) has batch shape {shape}, but dim {dim} "
                f"(size {size}) belongs to no enclosing plate (plates: "
                f"{[(n, d, z) for n, d, z, _ in s.plates]}): every batch dimension must belong to "
                "scg.episodes, scg.agents or a pyro.plate; move event dims to the right with "
                ".to_event() or wrap the site in a plate")


def _check_pooled(s, reads, by_name):
    """A cost with one value for every episode of a plate, computed from sites of those
    episodes, is a batch statistic: it couples the episodes, which every estimator assumes
    independent, and would be credited once per episode."""
    shape = tuple(s.infer.get("scg_value_shape", s.fn.batch_shape))
    for name, dim, size, kind in s.plates:
        if kind != "episodes" or size < 2:
            continue
        pooled = len(shape) < -dim or shape[dim] == 1
        sources = sorted(r for r in reads if r in by_name and any(
            p[0] == name for p in by_name[r].plates))
        if pooled and sources:
            raise ScgError(
                f"{s.role} {s.name!r} (step {s.time}) has one value (shape {shape}) for all "
                f"{size} episodes of plate {name!r} but is computed from site(s) {sources} of "
                "those episodes: a batch-level statistic (a mean over episodes) couples them. "
                f"Give each episode its own value (shape ({size},) at dim {dim})")


def _check_no_parameters(s):
    lp = s.fn.log_prob(s.value)
    if lp.requires_grad:
        raise ScgError(
            f"env site {s.name!r} (step {s.time}): its distribution depends on parameters "
            "that require grad, but scg.env has no score term, so they would get no gradient. "
            "Make it a coagent's scg.message, or detach them")


def check_raw_sample(msg):
    """A raw ``pyro.sample`` inside a network is outside scg: refuse one whose distribution
    depends on parameters (they would silently get no gradient)."""
    value = msg["value"]
    lp = msg["fn"].log_prob(value.detach() if isinstance(value, torch.Tensor) else value)
    if isinstance(lp, torch.Tensor) and lp.requires_grad:
        raise ScgError(
            f"pyro.sample site {msg['name']!r} depends on parameters that require grad, but it "
            "is not an scg site, so they would get no gradient: use scg.message (a coagent's "
            "output), scg.predict (observed data) or scg.env (randomness without parameters)")
