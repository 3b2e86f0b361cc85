"""The option-critic on Four Rooms (Bacon, Harb & Precup 2017; Kostas et al. 2020, section 7).

Three coagents (termination unit, policy over options with execute = the termination bit,
intra-option policy), tabular, trained with scg's Monte Carlo estimator over batches of whole
episodes (leave-one-out baseline, Adam; by default the episodes of one update all start in the
same random cell, so the baseline compares episodes from the same start): `episodes` episodes
with the goal in the east doorway, then the goal moves to a random cell of the lower-right room
(one per run) and training goes on for as many episodes. Several independent runs train at once
(one table per run, one batched tensor program). Reports steps per episode against the optimum
computed by value iteration, the recovery after the goal moves, and where each option terminates
(beta per cell).

Why Monte Carlo over batches, not Bacon et al.'s online TD: scg's online estimator makes one
trace and one backward pass per episode and step (about 5 ms on one core), and 2,000 episodes of
up to 1,000 steps in several runs do not fit in ten minutes; batches of episodes from many runs
are one trace per step for all of them.

Writes docs/option_critic.md, docs/option_critic.json and two plots under docs/img/.

    python examples/option_critic.py            # the full run (about 5 minutes on one core)
    python examples/option_critic.py --smoke    # seconds, for tests
"""

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyro
import torch
from common import parse

import scg
from models.four_rooms import GAMMA, FourRooms, expected_steps, hop_after_move
from models.option_critic import OptionCritic, inputs_for

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    seed: int = 0
    """seed of torch and pyro (and of the moved goals)"""
    runs: int = 4
    """independent runs, trained together"""
    options: int = 4
    """number of options"""
    episodes: int = 1000
    """episodes per run before the goal moves (and as many after)"""
    batch: int = 10
    """episodes per run in one update"""
    independent_starts: bool = False
    """each episode draws its own start (default: the batch's episodes of a run share one
    random start cell, redrawn each update)"""
    lr: float = 0.3
    """Adam step size (all three units)"""
    horizon: int = 1000
    """episode cap"""
    out: str = "docs"
    """where the page, the JSON and the plots go"""
    threads: int = 1
    """torch CPU threads"""
    smoke: bool = False
    """tiny run for tests"""


def parse_args():
    args = parse(Args, __doc__)
    if args.smoke:
        args.runs, args.options, args.episodes, args.batch, args.horizon = 2, 2, 8, 4, 30
    return args


def optima(world, goals):
    """Optimal expected steps (value iteration, start uniform over the other cells)."""
    return [world.optimum(int(g)) for g in goals]


def train(args, oc, est, opt, goals, gen):
    """``args.episodes`` episodes per run towards ``goals`` [runs]: mean steps per update."""
    curve = []
    for _ in range(args.episodes // args.batch):
        shared = not args.independent_starts
        out = est(*inputs_for(oc.world, args.batch, args.runs, goals, gen, shared))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        steps = out.value.double().reshape(args.runs, args.batch).mean(1)   # per run
        curve.append(steps.tolist())
        print(f"  episodes {len(curve) * args.batch:5d}: mean steps {steps.mean():7.1f}",
              flush=True)
    return curve


def experiment(args):
    gen = torch.Generator().manual_seed(args.seed)
    world = FourRooms(horizon=args.horizon)
    oc = OptionCritic(world, args.options, args.runs)
    est = scg.compile(oc.episodes(), gamma=GAMMA, baseline="loo")
    opt = torch.optim.Adam(oc.units.values(), lr=args.lr)
    east = torch.full((args.runs,), world.goal)
    room = world.lower_right()
    moved = room[torch.randint(len(room), (args.runs,), generator=gen)]
    print("=== goal in the east doorway ===")
    before = train(args, oc, est, opt, east, gen)
    maps = [oc.termination_map(r).tolist() for r in range(args.runs)]
    print("=== goal moved to the lower-right room ===")
    after = train(args, oc, est, opt, moved, gen)
    copied = float(expected_steps(hop_after_move(world.next), world.goal).sum() / (world.S - 1))
    return {"before": before, "after": after, "maps": maps,
            "optimum_east": world.optimum(), "optimum_moved": optima(world, moved),
            "moved_goals": [tuple(world.cells[g].tolist()) for g in moved],
            "optimum_room": optima(world, room), "optimum_copied": copied}


def mean_curve(curve):
    return [statistics.mean(row) for row in curve]


def window(curve, k):
    """Mean steps per episode over the last ``k`` updates (all runs)."""
    return statistics.mean(x for row in curve[-k:] for x in row)


def plots(out, args, res):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    curve = mean_curve(res["before"]) + mean_curve(res["after"])
    x = [(i + 1) * args.batch for i in range(len(curve))]
    ax.plot(x, curve, label=f"option-critic (mean of {args.runs} runs)")
    n = len(res["before"]) * args.batch
    ax.hlines(res["optimum_east"], 0, n, colors="green", linestyles="--", label="optimum")
    ax.hlines(statistics.mean(res["optimum_moved"]), n, 2 * n, colors="green", linestyles="--")
    ax.axvline(n, color="grey", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("episode")
    ax.set_ylabel("steps per episode")
    ax.legend()
    fig.tight_layout()
    fig.savefig(img / "option_critic_learning.png", dpi=120)
    plt.close(fig)

    maps = torch.tensor(res["maps"][0])
    fig, axes = plt.subplots(1, args.options, figsize=(2.6 * args.options, 2.8))
    for k, ax in enumerate([axes] if args.options == 1 else axes):
        im = ax.imshow(maps[k].numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"option {k}: β")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.savefig(img / "option_critic_termination.png", dpi=120)
    plt.close(fig)


def page(args, res, seconds):
    k = max(1, len(res["before"]) // 10)
    moved = statistics.mean(res["optimum_moved"])
    b_last, a_first, a_last = window(res["before"], k), statistics.mean(res["after"][0]), \
        window(res["after"], k)
    room = res["optimum_room"]
    lines = [
        "# Option-critic on Four Rooms",
        "",
        "*Generated by `python examples/option_critic.py`; do not edit by hand.*",
        "",
        "Bacon, Harb & Precup's option-critic as three coagents (Kostas, Nota & Thomas 2020, "
        "section 7): a termination unit β(s_t, ω_{t−1}) emits a bit, the policy over options "
        "μ(ω | s_t) runs with `execute=` that bit, and the intra-option policy π(a | s_t, ω_t) "
        "moves. Four Rooms as the paper describes it (`models/four_rooms.py`): 104 cells, a move "
        "fails with probability 1/3 and then goes to a random empty neighbour of the current "
        "cell, +1 on reaching the goal (east doorway), γ = 0.99, episodes capped at "
        f"{args.horizon} steps, start uniform over the other cells. Network: "
        "`models/option_critic.py` (zoo: `option_critic`).",
        "",
        f"Training: scg's Monte Carlo estimator (leave-one-out baseline) on batches of "
        f"{args.batch} whole episodes per run"
        + (" that all start in one random cell (redrawn each update: the gradient is still "
           "that of the uniform start, and the baseline compares episodes from the same start)"
           if not args.independent_starts else "")
        + f", Adam (lr {args.lr}), {args.options} options, "
        f"tabular; {args.runs} runs of {args.episodes} episodes, then the goal moves to a "
        f"random cell of the lower-right room (per run: {res['moved_goals']}) and "
        f"{args.episodes} more. Online TD as in Bacon et al. does not fit the time budget "
        "(see the script's docstring).",
        "",
        "| | steps per episode |",
        "|---|---:|",
        f"| optimum (value iteration), goal in the east doorway | {res['optimum_east']:.2f} |",
        f"| optimum of the copied dynamics (extra hop from the new cell) | "
        f"{res['optimum_copied']:.2f} |",
        f"| first update, mean over runs | {statistics.mean(res['before'][0]):.1f} |",
        f"| last {k * args.batch} episodes before the move, mean over runs | {b_last:.1f} |",
        f"| ratio to the optimum (target ≤ 1.10) | {b_last / res['optimum_east']:.2f} |",
        f"| optimum (value iteration), moved goals (mean over runs) | {moved:.2f} |",
        f"| first update after the move | {a_first:.1f} |",
        f"| last {k * args.batch} episodes after the move | {a_last:.1f} |",
        f"| ratio to the optimum after the move | {a_last / moved:.2f} |",
        "",
        f"Optimum for a goal anywhere in the lower-right room: {min(room):.2f} to "
        f"{max(room):.2f} steps (mean {statistics.mean(room):.2f}).",
        "",
        "![learning curve](img/option_critic_learning.png)",
        "",
        "Where the options terminate (run 0, at the end of the first phase): β(s, ω) per cell, "
        "walls blank.",
        "",
        "![termination](img/option_critic_termination.png)",
        "",
        f"Total time {seconds / 60:.1f} min on one CPU thread.",
        "",
    ]
    return "\n".join(lines)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    print(f"args: {args}")
    start = time.time()
    res = experiment(args)
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    plots(out, args, res)
    seconds = time.time() - start
    (out / "option_critic.md").write_text(page(args, res, seconds))
    (out / "option_critic.json").write_text(json.dumps(
        {"args": asdict(args), "seconds": seconds, **res}, indent=1))
    print(f"optimum {res['optimum_east']:.2f}; wrote {out / 'option_critic.md'}")


if __name__ == "__main__":
    main()
