"""REINFORCE on gymnasium's CartPole-v1, trained with scg (a single, readable CleanRL-style
script).

One coagent, a policy network (two tanh layers of 32 units), acts in a batch of CartPole-v1
episodes (a gymnasium SyncVectorEnv) inside one ``scg.episodes`` plate; ``scg.done`` masks
finished episodes. scg's estimator with one coagent is REINFORCE (Williams 1992): each action's
score term weighted by the return after it, here with γ = 1 (J is the expected episode length,
the quantity the target is stated in) and a leave-one-out baseline (the mean return after the
same step in the other episodes of the batch). Adam on the loss, one update per batch, until
the mean return of the last 100 episodes reaches 475 (CartPole-v1's reward_threshold), for several
seeds. Writes docs/reinforce.md, docs/reinforce.json and docs/img/reinforce_learning.png.

    python examples/reinforce.py            # 8 seeds (about 5 minutes on one CPU core)
    python examples/reinforce.py --smoke    # tiny run, for tests (write with --out DIR)
"""

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyro
import torch
from common import parse

import scg
from scg.models.reinforce import Episodes, episode_seeds, mlp

ROOT = Path(__file__).resolve().parents[1]


# ============================================================================================
# Arguments
# ============================================================================================
@dataclass
class Args:
    seeds: int = 8
    """number of training runs (seeds first_seed, first_seed + 1, ...)"""
    first_seed: int = 0
    """seed of the first run (torch, pyro and the environments' resets)"""
    batch: int = 10
    """episodes per update (one scg.episodes plate)"""
    lr: float = 0.01
    """Adam step size"""
    hidden: int = 32
    """hidden units per layer of the policy"""
    gamma: float = 1.0
    """discount"""
    baseline: str = "loo"
    """scg baseline: none, avg, loo or critic"""
    target: float = 475.0
    """stop when the mean return of the last `window` episodes reaches this"""
    window: int = 100
    """episodes in the moving average"""
    max_updates: int = 300
    """give up after this many updates"""
    out: str = "docs"
    """where the results page, JSON and plot go"""
    threads: int = 1
    """torch CPU threads"""
    smoke: bool = False
    """tiny run for tests"""


def parse_args():
    args = parse(Args, __doc__)
    if args.smoke:
        args.seeds, args.batch, args.max_updates, args.window = 2, 4, 3, 8
    for name in ("seeds", "max_updates", "window", "hidden"):
        if getattr(args, name) < 1:
            raise scg.ScgError(f"--{name.replace('_', '-')} must be >= 1, got "
                               f"{getattr(args, name)}")
    return args


# ============================================================================================
# Training
# ============================================================================================
def train(args, seed):
    """One run: returns the per-episode returns, the number of updates, whether the target
    was reached, wall-clock seconds and the number of structures scg analysed."""
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    policy = mlp(4, 2, args.hidden, torch.float32)
    episodes = Episodes(policy)
    est = scg.compile(episodes.network, gamma=args.gamma, baseline=args.baseline)
    optimizer = None
    returns, solved, start = [], False, time.perf_counter()
    for update in range(args.max_updates):
        out = est(episode_seeds(seed, update, args.batch))
        if optimizer is None:   # est.parameters() is known after the first call
            optimizer = torch.optim.Adam(est.parameters(), lr=args.lr)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        returns += out.value.tolist()         # the network returns each episode's return
        recent = statistics.mean(returns[-args.window:])
        if (update + 1) % 10 == 0:
            print(f"  seed {seed} update {update + 1:4d}: batch mean {out.value.mean():6.1f}, "
                  f"last {args.window} episodes {recent:6.1f}", flush=True)
        if len(returns) >= args.window and recent >= args.target:
            solved = True
            break
    return {"seed": seed, "returns": returns, "updates": update + 1, "episodes": len(returns),
            "solved": solved, "seconds": time.perf_counter() - start,
            "structures": len(est.plans), "final": recent}


# ============================================================================================
# Report
# ============================================================================================
def moving_average(x, k):
    """Mean of the last (up to) k values at each index."""
    c = np.cumsum(np.insert(np.asarray(x, dtype=float), 0, 0.0))
    i = np.arange(1, len(x) + 1)
    return (c[i] - c[np.maximum(i - k, 0)]) / np.minimum(i, k)


def plot(out, args, runs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in runs:
        ax.plot(range(1, r["episodes"] + 1), moving_average(r["returns"], args.window), lw=1.2,
                label=f"seed {r['seed']}")
    ax.axhline(args.target, color="grey", ls="--", lw=0.8, label=f"target {args.target:g}")
    ax.set_xlabel("episode")
    ax.set_ylabel(f"mean return, last {args.window} episodes")
    ax.set_ylim(0, 510)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(img / "reinforce_learning.png", dpi=120)
    plt.close(fig)


def summary(runs, key):
    vals = [r[key] for r in runs if r["solved"]]
    if not vals:
        return "–"
    return f"{statistics.median(vals):.0f} (min {min(vals):.0f}, max {max(vals):.0f})"


def page(args, runs, seconds):
    solved = sum(r["solved"] for r in runs)
    lines = [
        "# REINFORCE on CartPole-v1",
        "",
        "*Generated by `python examples/reinforce.py`; do not edit by hand.*",
        "",
        "One coagent, a policy network (4 → "
        f"{args.hidden} → {args.hidden} → 2, tanh), acts in a batch of {args.batch} "
        "episodes of gymnasium's CartPole-v1 (a `SyncVectorEnv`, reset with one seed per "
        "episode) inside one `scg.episodes` plate; `scg.done` masks finished episodes. The "
        "actions leave torch for the environment (`.numpy()`), which scg's provenance "
        "analysis treats as an escape: every later reward counts as downstream of each "
        "action, as the environment's state makes it. With one coagent scg's estimator is "
        f"REINFORCE: γ = {args.gamma:g} (J is the expected episode length, at most 500), "
        f"baseline `{args.baseline}`, Adam (step size {args.lr:g}), one update per batch. "
        f"A run stops when the mean return of the last {args.window} episodes reaches "
        f"{args.target:g} (CartPole-v1's `reward_threshold` in gymnasium, the return at which "
        "it counts as solved), or after {args.max_updates} updates. Model: "
        "`models/reinforce.py`; its estimator matches exact enumeration on CartPole started "
        "near failure (`tests/test_reinforce.py`, `scg check reinforce_cartpole`).",
        "",
        f"Target reached in **{solved} of {len(runs)}** runs. Median over those runs "
        f"(min, max): {summary(runs, 'updates')} updates, {summary(runs, 'episodes')} "
        f"episodes, {summary(runs, 'seconds')} s of wall time on one CPU thread.",
        "",
        f"| seed | updates | episodes | reached {args.target:g} | mean of last "
        f"{args.window} | wall time (s) | structures analysed |",
        "|---:|---:|---:|:---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(f"| {r['seed']} | {r['updates']} | {r['episodes']} | "
                     f"{'yes' if r['solved'] else 'no'} | {r['final']:.1f} | "
                     f"{r['seconds']:.1f} | {r['structures']} |")
    lines += [
        "",
        "*Structures analysed*: each new loop length is a new structure for scg (analysed "
        "once, then cached); the network pads the loop to a multiple of 25 steps after every "
        "episode has ended, so there are at most 20.",
        "",
        "![learning curves](img/reinforce_learning.png)",
        "",
        f"Total time {seconds / 60:.1f} min on this machine's CPU "
        f"(`torch.set_num_threads({args.threads})`).",
        "",
    ]
    return "\n".join(lines)


# ============================================================================================
# Main
# ============================================================================================
def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"args: {args}")
    start = time.time()
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        runs.append(train(args, seed))
        r = runs[-1]
        print(f"seed {seed}: {'reached' if r['solved'] else 'did not reach'} {args.target:g} "
              f"after {r['updates']} updates ({r['episodes']} episodes), {r['seconds']:.1f} s")
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    plot(out, args, runs)
    (out / "reinforce.md").write_text(page(args, runs, time.time() - start))
    (out / "reinforce.json").write_text(json.dumps({"args": asdict(args), "runs": runs},
                                                   indent=1))
    print(f"reached the target in {sum(r['solved'] for r in runs)} of {len(runs)} runs; "
          f"wrote {out / 'reinforce.md'}")


if __name__ == "__main__":
    main()
