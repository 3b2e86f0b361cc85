"""The ``scg`` command (also ``python -m scg``): list, train, draw, derive and check models.

A MODEL is a zoo name (``scg models`` lists them) or ``path/to/file.py:function``, where the
function returns an :class:`scg.zoo.Setup` or is an ``@scg.network`` taking no arguments.

    scg models
    scg train signalling --updates 400 --seed 1 --out runs/signalling
    scg render async_gridworld -o gridworld.svg --rolled --credit
    scg derive signalling [--latex]
    scg check signalling
"""

import argparse
import ast
import inspect
import math
import os
import sys

from pyro.poutine.trace_messenger import TraceMessenger

from . import zoo
from .core.record import record
from .errors import ScgError
from .estimators.estimator import compile
from .tools.check import check as run_check
from .tools.check import raw_sites, space_size
from .tools.derive import derive as rules
from .tools.render import render as draw
from .train.trainer import Trainer

FORMATS = ("svg", "png", "pdf", "dot", "gv")


def _model(p):
    p.add_argument("model", help="a zoo name or path/to/file.py:function")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an argument of the model's build function (repeatable), e.g. "
                   "--arg agents=8; values are Python literals or plain strings")


def build_args(pairs):
    """``["agents=8", "stream=split"]`` -> ``{"agents": 8, "stream": "split"}``."""
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.isidentifier():
            raise ScgError(f"--arg {pair!r}: expected KEY=VALUE with KEY a Python name")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def load(args):
    s = zoo.load(args.model, **build_args(args.arg))
    path, _, name = args.model.rpartition(":")
    if path.endswith(".py") and getattr(s.network, "__name__", None) == name \
            and not _binds(s.network, s.example):
        raise ScgError(f"{args.model} is an @scg.network that takes arguments "
                       f"{_signature(s.network)}, and the command line has none to give it. A "
                       "model file's function must be either an @scg.network taking no "
                       "arguments, or a function returning an scg.zoo.Setup that says how to "
                       f"call the network: Setup(network={name}, inputs=lambda step: (ARGS...), "
                       "example=(SMALL ARGS...)) (see docs/cli.md, MODEL)")
    return s


def _signature(network):
    try:
        return str(inspect.signature(inspect.unwrap(network)))
    except (TypeError, ValueError):
        return "(...)"


def _binds(network, args):
    """Whether ``network(*args)`` fits the network's signature (True if it cannot be read)."""
    try:
        inspect.signature(inspect.unwrap(network)).bind(*args)
    except TypeError:
        return False
    except ValueError:
        pass
    return True


def parser():
    p = argparse.ArgumentParser(prog="scg", description="coagent networks: list, train, "
                                "render, derive and check models")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("models", help="list the zoo's models")

    t = sub.add_parser("train", help="train a model; writes metrics, checkpoints, a plot")
    _model(t)
    n = t.add_mutually_exclusive_group()
    n.add_argument("--updates", type=int, help="gradient updates (default: the model's)")
    n.add_argument("--episodes", type=int, help="training episodes, rounded up to whole "
                   "updates of the model's batch")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, help="output folder (default runs/MODEL)")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--optimizer", default=None)
    t.add_argument("--schedule", default=None, help="constant, robbins-monro or cosine")
    t.add_argument("--baseline", default=None, help="auto, none, avg, loo or critic")
    t.add_argument("--per-coagent", action="store_true",
                   help="one optimiser per coagent, on its local loss")
    t.add_argument("--checkpoint-every", type=int, default=50)
    t.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    t.add_argument("--tensorboard", action="store_true")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--workers", type=int, default=1,
                   help="train on this many Ray workers (pip install 'scg[ray]')")
    t.add_argument("--chunks", type=int, default=None,
                   help="with --workers: calls of the network per update (default 4)")
    t.add_argument("--address", default=None,
                   help="with --workers: join this Ray cluster (default: a local one on "
                        "127.0.0.1)")

    r = sub.add_parser("render", help="draw the network with graphviz")
    _model(r)
    r.add_argument("-o", "--output", required=True,
                   help=f"file to write; format from its suffix: {', '.join(FORMATS)}")
    v = r.add_mutually_exclusive_group()
    v.add_argument("--rolled", action="store_true", help="one node per site, back edges")
    v.add_argument("--unrolled", type=int, metavar="T", help="unroll the rolled graph T steps")
    r.add_argument("--credit", action="store_true", help="overlay credited costs")

    d = sub.add_parser("derive", help="print each coagent's learning rule")
    _model(d)
    d.add_argument("--latex", action="store_true")

    c = sub.add_parser("check", help="estimator vs exact enumeration or finite differences")
    _model(c)
    c.add_argument("--method", default="auto", choices=["auto", "enumerate", "fd"])
    c.add_argument("--order", type=int, default=1, choices=[1, 2],
                   help="2: also the expected Hessian of each any-order surrogate against the "
                        "exact Hessian (enumeration; the estimator compiled with order='any')")
    return p


def main(argv=None):
    """Run the CLI; returns the exit status (0 ok, 1 a failed check, 2 bad input)."""
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ScgError as e:
        print(f"scg: error: {e}", file=sys.stderr)
        return 2


def models(args):
    for name, summary in zoo.names().items():
        print(f"{name:20s} {summary}")
    return 0


def train(args):
    s = load(args)
    options = dict(s.options)
    if args.baseline:
        options["baseline"] = args.baseline
    kw = {k: v for k, v in s.train.items() if k != "updates"}
    for key in ("lr", "optimizer", "schedule"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    updates = args.updates if args.updates is not None else s.train.get("updates", 100)
    if args.episodes is not None:
        if s.episodes_per_update is None:
            raise ScgError(f"{args.model} learns online (one update per step; episodes take "
                           "varying numbers of steps): give --updates, not --episodes")
        updates = math.ceil(args.episodes / s.episodes_per_update)
    if updates < 1:
        raise ScgError(f"--updates/--episodes must give at least one update, got {updates}")
    out = args.out or os.path.join("runs", _slug(args.model))
    needs = kw.pop("per_coagent", False)   # a model's defaults may need it
    per_coagent = args.per_coagent or needs
    if args.workers > 1:
        kw.update(workers=args.workers, backend="ray", chunks=args.chunks,
                  address=args.address)
    elif args.chunks is not None or args.address is not None:
        raise ScgError("--chunks and --address are for --workers N (N > 1)")
    trainer = Trainer(s.network, s.inputs, seed=args.seed, out=out, modules=s.modules,
                      checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
                      tensorboard=args.tensorboard, per_coagent=per_coagent, **kw, **options)
    try:
        if not args.no_resume and trainer.resume(total=updates):
            print(f"resumed from {trainer.checkpoint_path} at update {trainer.step}")
        history = trainer.fit(updates)
        trainer.save()
    finally:
        trainer.close()
    plot = trainer.plot()
    last = history[-min(len(history), 20):]
    mean = sum(r["objective"] for r in last) / max(len(last), 1)
    print(f"{args.model}: {trainer.step} updates; mean estimated return over the last "
          f"{len(last)} updates {mean:.4f}")
    print(f"wrote {os.path.join(out, 'metrics.csv')}, {trainer.checkpoint_path}, {plot}")
    return 0


def render(args):
    s = load(args)
    fmt = os.path.splitext(args.output)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise ScgError(f"cannot tell the format of {args.output!r}; use a suffix among "
                       f"{', '.join('.' + f for f in FORMATS)}")
    dot = draw(s.network, *s.example, est=compile(s.network, **s.options), rolled=args.rolled,
               unrolled=args.unrolled, credit=args.credit)
    if fmt in ("dot", "gv"):
        with open(args.output, "w") as f:
            f.write(dot.source)
    else:
        import graphviz

        try:
            data = dot.pipe(format=fmt)
        except graphviz.ExecutableNotFound as e:
            raise ScgError("graphviz's dot binary is not installed (apt-get install graphviz);"
                           " write a .dot file instead") from e
        with open(args.output, "wb") as f:
            f.write(data)
    print(f"wrote {args.output}")
    return 0


def derive(args):
    s = load(args)
    d = rules(s.network, *s.example, est=compile(s.network, **s.options))
    print(d.latex() if args.latex else d)
    return 0


def check(args):
    s = load(args)
    network, example, options = s.check or (s.network, s.example, s.options)
    if s.check is None and args.method == "auto":
        why = _not_enumerable(network, example, options)
        if why is not None:
            raise ScgError(f"{args.model} has no check instance (Setup.check: a version small "
                           f"enough to enumerate) and its example cannot be enumerated: {why}. "
                           "Finite differences would take minutes and are only a statistical "
                           "test: give its Setup check=(network, args, options) small enough to "
                           "enumerate, or pass --method fd to run them anyway")
    options = dict(options)
    surrogate = options.pop("order", 1)   # a compile option; check's own order is --order
    if args.order == 2 or surrogate != 1:   # Hessians: of the any-order surrogates (§8)
        options["est"] = compile(network, **{k: v for k, v in options.items()
                                             if k not in CHECK_OPTIONS},
                                 order="any" if args.order == 2 else surrogate)
    report = run_check(network, *example, method=args.method, order=args.order, **options)
    print(report)
    return 0 if report.ok else 1


CHECK_OPTIONS = set(inspect.signature(run_check).parameters) - {"options"}


def _not_enumerable(network, example, options):
    """Why ``scg check``'s enumeration cannot take ``network(*example)`` (None if it can): a
    continuous or non-scg latent site, or a joint space over ``max_size`` (one plain run)."""
    tracer = TraceMessenger()
    sites, _ = record(network, example, {}, tracer)
    raw = raw_sites(tracer.trace)
    if raw:
        return f"pyro.sample site {raw[0]['name']!r} is not an scg site"
    size, why = space_size(sites)
    limit = options.get("max_size", inspect.signature(run_check).parameters["max_size"].default)
    if why is None and size > limit:
        why = f"its joint space has {size} values (> max_size={limit})"
    return why


def _slug(model):
    return os.path.splitext(os.path.basename(model.split(":")[0]))[0] + (
        "_" + model.rsplit(":", 1)[1] if ":" in model else "")


COMMANDS = {"models": models, "train": train, "render": render, "derive": derive,
            "check": check}
