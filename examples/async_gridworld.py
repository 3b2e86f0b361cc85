"""Asynchronous coagent networks on a gridworld (Kostas, Nota & Thomas 2020, appendix D).

Two coagents read the tabular state and each emit one bit to a third, which picks one of four
moves; every coagent executes with probability 0.5 at every atomic step. Two experiments:

(a) gradient: the cosine similarity between scg's Monte Carlo gradient estimate from n episodes
    and a finite-difference gradient of the exact objective (backward induction over the
    augmented state), as n grows;
(b) learning: online actor-critic with eligibility traces (estimator="td"), the three coagents
    sharing one tabular critic, mean return over 200 episodes.

Writes docs/async_gridworld.md and its two plots (docs/img/), so the page is never typed by hand.

    python examples/async_gridworld.py            # both experiments (a few minutes on CPU)
    python examples/async_gridworld.py --smoke    # tiny run, for tests (writes to a temp dir)
"""

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyro
import torch
from common import parse

import scg
from scg.models.async_gridworld import Gridworld

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    seed: int = 0
    """seed of torch and pyro"""
    rows: int = 4
    """grid rows"""
    cols: int = 4
    """grid columns"""
    horizon: int = 30
    """episode cap (atomic steps)"""
    budgets: str = "2,8,32,128,512,2048,8192"
    """(a) numbers of episodes per gradient estimate"""
    repeats: int = 20
    """(a) independent estimates per budget"""
    fd_eps: float = 1e-5
    """(a) central finite-difference step on the exact objective"""
    episodes: int = 200
    """(b) training episodes per run"""
    runs: int = 10
    """(b) independent training runs"""
    lr_actor: float = 0.1
    """(b) SGD step size of the three coagents"""
    lr_critic: float = 0.5
    """(b) SGD step size of the shared critic"""
    lam: float = 0.5
    """(b) eligibility-trace decay lambda"""
    out: str = "docs"
    """where the results page and plots go"""
    threads: int = 2
    """torch CPU threads"""
    smoke: bool = False
    """tiny run for tests"""


def parse_args():
    args = parse(Args, __doc__)
    if args.smoke:
        args.rows, args.cols, args.horizon = 2, 3, 10
        args.budgets, args.repeats, args.episodes, args.runs = "2,32", 2, 5, 1
    return args


# ============================================================================================
# (a) gradient estimate vs finite differences
# ============================================================================================
def flat_grad(y, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(y, params)])


def finite_differences(world, th, params, eps):
    """Central differences of the exact objective J(theta), one coordinate at a time."""
    flat = torch.cat([p.detach().flatten() for p in params])
    out = torch.zeros_like(flat)
    with torch.no_grad():
        for i in range(flat.numel()):
            vals = []
            for sign in (1, -1):
                x = flat.clone()
                x[i] += sign * eps
                assign(params, x)
                vals.append(world.exact_objective(th).item())
            out[i] = (vals[0] - vals[1]) / (2 * eps)
        assign(params, flat)
    return out


def assign(params, flat):
    i = 0
    for p in params:
        p.copy_(flat[i:i + p.numel()].view_as(p))
        i += p.numel()


def cosine(a, b):
    """Cosine similarity; 0 for an all-zero estimate (leave-one-out over equal returns)."""
    norm = (a.norm() * b.norm()).item()
    return (a @ b).item() / norm if norm > 0 else 0.0


def gradient_experiment(args, world):
    th = world.units()
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for k in ("u1", "u2", "pi"):
            th[k].copy_(torch.randn(th[k].shape, generator=gen, dtype=th[k].dtype))
    params = [th["u1"], th["u2"], th["pi"]]
    fd = finite_differences(world, th, params, args.fd_eps)
    exact = flat_grad(world.exact_objective(th), params)
    model = world.episodes(th)
    rows = []
    for baseline in ("none", "loo"):
        est = scg.compile(model, baseline=baseline)
        for n in [int(b) for b in args.budgets.split(",")]:
            cos = [cosine(-flat_grad(est(n).loss, params), fd) for _ in range(args.repeats)]
            rows.append({"baseline": baseline, "episodes": n, "mean": statistics.mean(cos),
                         "sd": statistics.stdev(cos) if len(cos) > 1 else 0.0})
            print(f"  baseline {baseline:4s}  n = {n:5d}  cosine {rows[-1]['mean']:.3f} "
                  f"± {rows[-1]['sd']:.3f}")
    return {"rows": rows, "fd_vs_autograd": (fd - exact).abs().max().item(),
            "J": world.exact_objective(th).item(), "params": len(fd)}


# ============================================================================================
# (b) online actor-critic with eligibility traces, one shared critic
# ============================================================================================
def train(args, world, seed):
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    th = world.units()
    step = world.step(th)
    est = scg.compile(step, estimator="td", lam=args.lam, gamma=1.0)
    opt = torch.optim.SGD([{"params": [th["u1"], th["u2"], th["pi"]], "lr": args.lr_actor},
                           {"params": [th["V"]], "lr": args.lr_critic}])
    returns = []
    for _ in range(args.episodes):
        s = torch.tensor([world.start])
        prev = (torch.zeros(1, dtype=th["V"].dtype),) * 2 + (torch.zeros(1, dtype=torch.long),)
        ret = 0.0
        for _t in range(world.horizon):
            out = est(s, prev)
            s, prev = out.value
            ret += out.stats["return"]
            apply(opt, out.loss)
            if s.item() == world.goal:
                break
        apply(opt, est.finish().loss)   # the last TD error, with V = 0 after the episode
        returns.append(ret)
    return returns, world.exact_objective(th).item()


def apply(opt, loss):
    opt.zero_grad()
    loss.backward()
    opt.step()


def learning_experiment(args, world):
    curves, finals = [], []
    for run in range(args.runs):
        t = time.time()
        returns, J = train(args, world, args.seed + run)
        curves.append(returns)
        finals.append(J)
        print(f"  run {run}: mean return of the last 20 episodes "
              f"{statistics.mean(returns[-20:]):.2f}, exact J of the final policy {J:.2f} "
              f"({time.time() - t:.0f}s)")
    mean = [statistics.mean(c[i] for c in curves) for i in range(args.episodes)]
    sd = [statistics.pstdev(c[i] for c in curves) for i in range(args.episodes)]
    uniform = world.exact_objective(world.units()).item()
    shortest = (world.rows - 1) + (world.cols - 1)
    return {"mean": mean, "sd": sd, "final_J": finals, "uniform_J": uniform,
            "shortest": shortest}


# ============================================================================================
# Report
# ============================================================================================
def plots(out, grad, learn):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for baseline in ("none", "loo"):
        rows = [r for r in grad["rows"] if r["baseline"] == baseline]
        ax.errorbar([r["episodes"] for r in rows], [r["mean"] for r in rows],
                    yerr=[r["sd"] for r in rows], marker="o", capsize=3,
                    label=f"scg, baseline={baseline}")
    ax.set_xscale("log")
    ax.set_xlabel("episodes per estimate")
    ax.set_ylabel("cosine to finite differences")
    ax.set_ylim(-0.1, 1.05)
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.legend()
    fig.tight_layout()
    fig.savefig(img / "async_gridworld_cosine.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = range(1, len(learn["mean"]) + 1)
    lo = [m - s for m, s in zip(learn["mean"], learn["sd"])]
    hi = [m + s for m, s in zip(learn["mean"], learn["sd"])]
    ax.plot(x, learn["mean"], label="actor-critic, eligibility traces")
    ax.fill_between(x, lo, hi, alpha=0.25)
    ax.axhline(-learn["shortest"], color="green", ls="--", label="shortest path")
    ax.axhline(learn["uniform_J"], color="grey", ls=":", label="initial (uniform) policy")
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.legend()
    fig.tight_layout()
    fig.savefig(img / "async_gridworld_learning.png", dpi=120)
    plt.close(fig)


def page(args, grad, learn, seconds):
    lines = [
        "# Asynchronous gridworld (Kostas, Nota & Thomas 2020, appendix D)",
        "",
        "*Generated by `python examples/async_gridworld.py`; do not edit by hand.*",
        "",
        f"A {args.rows}x{args.cols} gridworld (start top-left, goal bottom-right, reward -1 per "
        f"step, episodes capped at {args.horizon} steps). Two coagents read the tabular state "
        "and each emit a bit; a third reads both bits and picks one of four moves. Every "
        "coagent executes with probability 0.5 at each atomic step and otherwise repeats its "
        "last output. Model: `models/async_gridworld.py`.",
        "",
        "## (a) Gradient estimate against finite differences",
        "",
        f"At a random parameter point ({grad['params']} parameters, exact J = "
        f"{grad['J']:.3f}), scg's Monte Carlo estimate from n episodes is compared with central "
        f"finite differences (step {args.fd_eps:g}) of the exact objective, computed by "
        "backward induction over the augmented state (cell, both bits, last move). The "
        "finite differences agree with autograd of the exact objective to "
        f"{grad['fd_vs_autograd']:.1e}. Mean ± sd over {args.repeats} independent estimates:",
        "",
        "| episodes | cosine (no baseline) | cosine (leave-one-out) |",
        "|---:|---:|---:|",
    ]
    by = {(r["baseline"], r["episodes"]): r for r in grad["rows"]}
    for n in [int(b) for b in args.budgets.split(",")]:
        a, b = by[("none", n)], by[("loo", n)]
        lines.append(f"| {n} | {a['mean']:.3f} ± {a['sd']:.3f} | {b['mean']:.3f} ± "
                     f"{b['sd']:.3f} |")
    last = learn["mean"]
    k = min(20, len(last))
    lines += [
        "",
        "![cosine](img/async_gridworld_cosine.png)",
        "",
        "## (b) Learning curve",
        "",
        f"Online actor-critic with eligibility traces (`estimator=\"td\"`, λ = {args.lam}, "
        f"γ = 1), the three coagents sharing one tabular critic (an `scg.value` site), SGD "
        f"(actor {args.lr_actor}, critic {args.lr_critic}), updated at every atomic step; "
        f"{args.runs} runs of {args.episodes} episodes.",
        "",
        "| | return |",
        "|---|---:|",
        f"| initial (uniform) policy, exact | {learn['uniform_J']:.2f} |",
        f"| first {k} episodes, mean over runs | {statistics.mean(last[:k]):.2f} |",
        f"| last {k} episodes, mean over runs | {statistics.mean(last[-k:]):.2f} |",
        f"| final policies, exact J (mean over runs) | {statistics.mean(learn['final_J']):.2f} |",
        f"| shortest path | {-learn['shortest']} |",
        "",
        "![learning](img/async_gridworld_learning.png)",
        "",
        f"Total time {seconds / 60:.1f} min on this machine's CPU.",
        "",
    ]
    return "\n".join(lines)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    print(f"args: {args}")
    world = Gridworld(args.rows, args.cols, args.horizon)
    start = time.time()
    print("=== (a) gradient estimate vs finite differences ===")
    grad = gradient_experiment(args, world)
    print("=== (b) online actor-critic with eligibility traces ===")
    learn = learning_experiment(args, world)
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    plots(out, grad, learn)
    (out / "async_gridworld.md").write_text(page(args, grad, learn, time.time() - start))
    (out / "async_gridworld.json").write_text(json.dumps(
        {"args": asdict(args), "gradient": grad, "learning": learn}, indent=1))
    best = max(r["mean"] for r in grad["rows"])
    print(f"max mean cosine {best:.3f}; last-20 mean return "
          f"{statistics.mean(learn['mean'][-20:]):.2f}; wrote {out / 'async_gridworld.md'}")
    assert math.isfinite(best)


if __name__ == "__main__":
    main()
