"""The model zoo's registry: named models the CLI and the docs can train, draw and check.

A zoo entry is a function returning a :class:`Setup`: the network, how to make its inputs for
each update, small arguments for pictures and rules, and training defaults. The zoo itself is
the package ``scg.models`` (the repository's ``models/`` folder; each module registers its
entries when imported), so it never clashes with a user's own ``models`` package. A model can
also be named as ``path/to/file.py:function``, where the function returns a :class:`Setup` (or
is an ``@scg.network`` taking no arguments).
"""

import importlib
import importlib.util
import inspect
import os
from dataclasses import dataclass, field

from .errors import ScgError

REGISTRY = {}


@dataclass
class Setup:
    """A model ready to train, draw, derive and check.

    Attributes:
        network: the ``@scg.network`` function.
        inputs: ``step -> args`` for training (a tuple, or one value).
        example: small arguments for ``render``/``derive`` (and ``check`` unless ``check`` is
            given).
        options: ``scg.compile`` options.
        train: :class:`scg.Trainer` defaults (``lr``, ``optimizer``, ``updates``, ...).
        modules: the modules holding its parameters (names parameters in checkpoints).
        check: (network, args, keyword arguments of ``scg.check``: compile options and check
            options such as ``max_size``) of a version small enough to enumerate, when the
            trained one is not.
        summary: one line for ``scg models``.
        episodes_per_update: episodes in one update's batch (``scg train --episodes``); None
            for a model that learns online (an update is a step, not a batch of episodes).
    """

    network: object
    inputs: object
    example: tuple
    options: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    modules: object = None
    check: tuple = None
    summary: str = ""
    episodes_per_update: object = 1


def register(name, summary):
    """Decorator: register ``build() -> Setup`` under ``name``."""
    if not name or "@" in name or ":" in name:
        raise ScgError(f"invalid zoo name {name!r}: non-empty, without '@' or ':'")

    def deco(build):
        REGISTRY[name] = (build, summary)
        return build
    return deco


def _load_zoo():
    importlib.import_module("scg.models")


def names():
    """The registered model names, with their one-line summaries."""
    _load_zoo()
    return {n: s for n, (_, s) in sorted(REGISTRY.items())}


def load(target, **kwargs):
    """A :class:`Setup` from a zoo name or ``path/to/file.py:function``; ``kwargs`` go to the
    model's build function (e.g. ``load("shared_agents", agents=8)``)."""
    if ":" in target and target.split(":", 1)[0].endswith(".py"):
        return _from_file(*target.rsplit(":", 1), **kwargs)
    _load_zoo()
    if target not in REGISTRY:
        valid = ", ".join(sorted(REGISTRY)) or "(none registered)"
        raise ScgError(f"unknown model {target!r}; zoo models: {valid}; or give "
                       "path/to/file.py:function")
    setup = _call(REGISTRY[target][0], target, kwargs)
    setup.summary = setup.summary or REGISTRY[target][1]
    return setup


def _call(build, target, kwargs):
    """``build(**kwargs)``, with unknown arguments named against the valid ones."""
    params = inspect.signature(build).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise ScgError(f"model {target!r} takes no argument(s) {unknown}; valid: "
                       f"{sorted(params)}")
    try:
        inspect.signature(build).bind(**kwargs)
    except TypeError as e:
        raise ScgError(f"model {target!r}: {e}; give it with --arg KEY=VALUE") from None
    return build(**kwargs)


def _from_file(path, name, **kwargs):
    if not os.path.exists(path):
        raise ScgError(f"model file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(
        f"scg_user_{os.path.splitext(os.path.basename(path))[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if fn is None:
        found = sorted(k for k, v in vars(module).items()
                       if callable(v) and not k.startswith("_"))
        raise ScgError(f"{path} has no function {name!r}; it defines: {found}")
    if getattr(fn, "_scg_network", False):
        if kwargs:
            raise ScgError(f"{path}:{name} is a network: it takes no build arguments")
        return Setup(network=fn, inputs=lambda step: (), example=(),
                     summary=f"{name} from {path}")
    setup = _call(fn, f"{path}:{name}", kwargs)
    if not isinstance(setup, Setup):
        raise ScgError(f"{path}:{name} must be an @scg.network taking no arguments or return "
                       f"an scg.zoo.Setup, got {type(setup).__name__}")
    return setup
