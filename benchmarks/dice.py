"""One LOLA-DiCE update on the iterated prisoner's dilemma: ms per update, hand-written torch
(models/ipd_exact.py) against scg's ``order="any"`` estimator, measured in the same run.

    python benchmarks/dice.py            # batch 128, T = 150, gamma 0.96, 1 torch thread
    python benchmarks/dice.py --quick    # tiny sizes (a smoke run)

One update (the DiCE paper's LOLA setting, Foerster et al. 2018: 150 steps, gamma 0.96; batch
128 as in github.com/alexis-jacq/LOLA_DiCE): sample one batch of episodes; both agents' DiCE
objectives; their first-order gradients with ``create_graph=True`` (grad_1 L1, grad_2 L1 and
grad_2 L2); and agent 1's mixed second-order LOLA term grad_1 [stop(grad_2 L1) . grad_2 L2] =
(grad_1 grad_2 L2)^T grad_2 L1, one more backward pass through the differentiable gradient.
Like benchmarks/run.py, the two implementations alternate and the table reports medians and
their ratio (an implementation that raises NotImplementedError is skipped).
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scg.models.ipd_exact import sample_dice  # noqa: E402


def hand_update(theta1, theta2, batch, T, gamma, generator):
    """One LOLA-DiCE update with the hand-written DiCE objectives: (grad_1 L1, grad_2 L2,
    mixed1), mixed1 = grad_1 [stop(grad_2 L1) . grad_2 L2], agent 1's LOLA correction (its
    update direction is grad_1 L1 + eta * mixed1). ``theta1``, ``theta2``: leaves [5] with
    ``requires_grad``."""
    L1, L2 = sample_dice(theta1, theta2, batch, T, gamma, generator)
    g11, g12 = torch.autograd.grad(L1, (theta1, theta2), create_graph=True)
    g22, = torch.autograd.grad(L2, theta2, create_graph=True)
    mixed1, = torch.autograd.grad((g12.detach() * g22).sum(), theta1)
    return g11.detach(), g22.detach(), mixed1


def stepwise_update(theta1, theta2, batch, T, gamma, generator):
    """The same update written by hand the way the scg model is written: one
    ``torch.distributions.Bernoulli`` per agent and step, its log-probability kept per step,
    then the same DiCE objectives (:func:`scg.models.ipd_exact.dice_objective`) and the same
    three quantities as :func:`hand_update`. It separates what a per-step model costs in
    torch itself (a few autograd nodes per step, where :func:`hand_update` gathers all steps'
    log-probabilities in a handful of [T, batch] operations) from what scg adds to it."""
    from scg.models.ipd_exact import PAYOFF1, PAYOFF2, SWAP, dice_objective

    swap = torch.tensor(SWAP)
    pay1, pay2 = torch.tensor(PAYOFF1), torch.tensor(PAYOFF2)
    s = torch.zeros(batch, dtype=torch.long)
    lps, r1, r2 = [], [], []
    for _ in range(T):
        d1 = torch.distributions.Bernoulli(logits=theta1[s])
        d2 = torch.distributions.Bernoulli(logits=theta2[swap[s]])
        c1, c2 = d1.sample(), d2.sample()
        lps.append(d1.log_prob(c1) + d2.log_prob(c2))
        o = 2 * (1 - c1).long() + (1 - c2).long()
        r1.append(pay1[o])
        r2.append(pay2[o])
        s = 1 + o
    lp = torch.stack(lps)
    L1 = dice_objective(lp, torch.stack(r1), gamma)
    L2 = dice_objective(lp, torch.stack(r2), gamma)
    g11, g12 = torch.autograd.grad(L1, (theta1, theta2), create_graph=True)
    g22, = torch.autograd.grad(L2, theta2, create_graph=True)
    mixed1, = torch.autograd.grad((g12.detach() * g22).sum(), theta1)
    return g11.detach(), g22.detach(), mixed1


_ESTIMATORS = {}


def scg_update(theta1, theta2, batch, T, gamma, generator):
    """The same update through scg: the IPD as an scg network (:func:`scg.models.ipd.ipd`, two
    coagents, agent 1's reward ``to="A"`` and agent 2's ``to="B"``), compiled once per gamma
    (:func:`scg.models.ipd.compile_ipd`: ``baseline="loo"``, ``order="any"``; cached here, so
    the timed calls are steady calls), ``-out.local[agent]`` as each agent's DiCE objective
    (``out.local``'s value is minus the objective), then the same three quantities as
    :func:`hand_update`, in the same order.

    ``generator`` is ignored: scg samples through Pyro with torch's global RNG (seed it with
    ``pyro.set_rng_seed``); the two implementations draw different episodes, which does not
    matter for timing (tests/test_ipd.py checks both against the closed form)."""
    from scg.models.ipd import compile_ipd

    est = _ESTIMATORS.get(gamma)
    if est is None:
        est = _ESTIMATORS[gamma] = compile_ipd(gamma=gamma)
    out = est(theta1, theta2, batch, T)
    L1, L2 = -out.local["A"], -out.local["B"]
    g11, g12 = torch.autograd.grad(L1, (theta1, theta2), create_graph=True)
    g22, = torch.autograd.grad(L2, theta2, create_graph=True)
    mixed1, = torch.autograd.grad((g12.detach() * g22).sum(), theta1)
    return g11.detach(), g22.detach(), mixed1


UPDATES = [("hand-written torch", hand_update), ("hand-written, per step", stepwise_update),
           ("scg order='any'", scg_update)]


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(args):
    """({name: median ms per update}, [(name, why) skipped]), the implementations alternating;
    one that raises NotImplementedError on its first call is skipped."""
    theta1, theta2, g = _thetas()
    run, skipped = {}, []
    for name, fn in UPDATES:
        def call(fn=fn):
            return fn(theta1, theta2, args.batch, args.T, args.gamma, g)
        try:
            call()
        except NotImplementedError as e:
            skipped.append((name, str(e)))
            continue
        run[name] = call
    for _ in range(args.warmup):
        for call in run.values():
            call()
    times = {name: [] for name in run}
    for _ in range(args.repeats):
        for name, call in run.items():
            times[name].append(timed(call))
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}, skipped


def phases(batch, T, gamma, repeats=20):
    """Median ms of the parts of :func:`scg_update` (its profile, without a profiler's
    overhead): ``trace``, the model's run through Pyro with scg recording its sites (the plan
    cached); ``emit``, the any-order surrogates (:func:`scg.estimators.dice.emit`); ``grads``,
    the three autograd passes; and ``hand`` the whole hand-written update, interleaved."""
    from scg.estimators import dice

    scg_update(*_thetas()[:2], batch, T, gamma, None)   # compile, analyse
    est = _ESTIMATORS[gamma]
    theta1, theta2, g = _thetas()
    times = {"trace": [], "emit": [], "grads": [], "hand": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        sites, _, plan = est.traced((theta1, theta2, batch, T), {})
        t1 = time.perf_counter()
        out = dice.emit(sites, plan, est.baseline_of)
        t2 = time.perf_counter()
        g11, g12 = torch.autograd.grad(-out.local["A"], (theta1, theta2), create_graph=True)
        g22, = torch.autograd.grad(-out.local["B"], theta2, create_graph=True)
        torch.autograd.grad((g12.detach() * g22).sum(), theta1)
        t3 = time.perf_counter()
        hand_update(theta1, theta2, batch, T, gamma, g)
        t4 = time.perf_counter()
        for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[k].append(dt)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _thetas():
    g = torch.Generator().manual_seed(0)
    theta1 = (0.5 * torch.randn(5, generator=g, dtype=torch.float32)).requires_grad_()
    theta2 = (0.5 * torch.randn(5, generator=g, dtype=torch.float32)).requires_grad_()
    return theta1, theta2, g


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--T", type=int, default=150)
    ap.add_argument("--gamma", type=float, default=0.96)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: the ops are small)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    ap.add_argument("--phases", action="store_true",
                    help="also time the parts of the scg update (trace, emit, autograd)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.T, args.repeats, args.warmup = 16, 10, 3, 1
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        print(f"LOLA-DiCE update on the IPD (batch {args.batch}, T = {args.T}, gamma "
              f"{args.gamma}, {args.threads} thread(s)): median ms per update")
        ms, skipped = measure(args)
        parts = phases(args.batch, args.T, args.gamma, args.repeats) if args.phases else None
    finally:
        torch.set_num_threads(threads)
    hand = ms["hand-written torch"]
    rows = []
    for name, t in ms.items():
        rows.append({"implementation": name, "ms": t, "ratio": t / hand})
        print(f"  {name:24s} {t:9.2f} ms   ratio to hand-written {t / hand:5.2f}")
    for name, why in skipped:
        print(f"  {name:24s} skipped ({why})")
    if parts:
        print("  scg's update in parts (median ms): " + ", ".join(
            f"{k} {v:.2f}" for k, v in parts.items() if k != "hand") +
            f"; hand-written update {parts['hand']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, "
                       f"torch {torch.__version__}",
            "batch": args.batch, "T": args.T, "gamma": args.gamma, "rows": rows,
            "phases": parts}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
