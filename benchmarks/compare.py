"""Before and after: the small-model rows of benchmarks/run.py, the LOLA-DiCE update and one
``scg.check`` in two revisions of scg, measured in the same session.

    python benchmarks/compare.py 6627ccf            # that revision against the working tree
    python benchmarks/compare.py 6627ccf HEAD --rounds 5

Each revision is checked out in a temporary ``git worktree`` (the working tree itself for
``.``, the default second one), and each round runs every revision once in a fresh process,
alternating, so that drift in the machine's speed falls on both. The table gives each
figure's median over the rounds: per-iteration ratios to the hand-written torch loss measured
in the same process (chain of 10, layer of 300 units, the online td step, the LOLA-DiCE
update against the vectorised and the per-step references), the seconds of
``scg.check(method="enumerate")`` on the asynchronous ``async_bit`` network (576 joint
values, one torch thread, ``SCG_VERIFY=0``), and a fresh estimator's first call on the
depth-1,000 chain as a ratio to its steady call. Both revisions must have the workloads this
script reads (``benchmarks/workloads.py``, ``benchmarks/dice.py``, ``tests/networks.py``).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROWS = [("chain10", "chain of 10, ratio"), ("layer300", "layer of 300 units, ratio"),
        ("online", "online td step, ratio"), ("dice", "LOLA-DiCE vs vectorised, ratio"),
        ("dice_step", "LOLA-DiCE vs per-step, ratio"), ("check_s", "check async_bit (s)"),
        ("first1000", "first call / steady, depth 1,000")]


def one_round(root):
    """The figures of one process in the tree ``root`` (run as ``compare.py --measure``)."""
    sys.path[:0] = [root, os.path.join(root, "tests"), os.path.join(root, "benchmarks")]
    import time

    import torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import scg
    if not scg.__file__.startswith(root):
        raise RuntimeError(f"imported scg from {scg.__file__}, not from {root}")
    import dice

    from benchmarks.run import per_iteration
    from benchmarks.workloads import Chain, Layer, OnlineWalk
    from networks import REGISTRY
    out = {}
    for key, make, reps in (("chain10", lambda: Chain(10), 200),
                            ("layer300", lambda: Layer(300), 200), ("online", OnlineWalk, 300)):
        s, h = per_iteration(make(), reps)
        out[key] = s / h
    ms, _ = dice.measure(argparse.Namespace(batch=128, T=150, gamma=0.96, repeats=15,
                                            warmup=2))
    out["dice"] = ms["scg order='any'"] / ms["hand-written torch"]
    out["dice_step"] = ms["scg order='any'"] / ms["hand-written, per step"]
    model, args, opts = REGISTRY["async_bit"]()
    est = scg.compile(model, **opts)
    t = time.perf_counter()
    scg.check(model, *args, est=est, method="enumerate")
    out["check_s"] = time.perf_counter() - t
    out["first1000"] = first_call(Chain(1000, B=8))
    return out


def first_call(work):
    """A fresh estimator's first call (trace under provenance tracking, analysis, emission,
    backward) as a ratio to its steady call, the median of three."""
    import gc
    import time

    def timed():
        t = time.perf_counter()
        work.scg_iteration()
        return time.perf_counter() - t
    gc.collect()
    first = timed()
    return first / statistics.median(timed() for _ in range(3))


def tree(rev, tmp):
    """The directory of revision ``rev``: the working tree for ".", else a new worktree."""
    if rev == ".":
        return str(ROOT)
    path = os.path.join(tmp, rev.replace("/", "_"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", path, rev],
                   check=True, capture_output=True)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", help="a git revision")
    ap.add_argument("after", nargs="?", default=".", help="a git revision ('.': the working "
                                                           "tree, the default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--measure", help=argparse.SUPPRESS)   # internal: one round in this tree
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(one_round(args.measure)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        roots = [tree(args.before, tmp), tree(args.after, tmp)]
        try:
            figures = [[], []]
            env = {**os.environ, "SCG_VERIFY": "0"}
            for r in range(args.rounds):
                for k, root in enumerate(roots):
                    run = subprocess.run([sys.executable, __file__, args.before, "--measure",
                                          root], capture_output=True, text=True, env=env,
                                         check=True)
                    figures[k].append(json.loads(run.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)
        finally:
            for root in roots:
                if root != str(ROOT):
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                    root], capture_output=True)
    print(f"medians over {args.rounds} alternating rounds, 1 torch thread")
    print(f"| figure | {args.before} | {args.after} |\n|---|---:|---:|")
    for key, label in ROWS:
        a, b = (statistics.median(f[key] for f in fs) for fs in figures)
        print(f"| {label} | {a:.2f} | {b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
