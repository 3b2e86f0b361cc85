"""The option-critic on Four Rooms (Bacon, Harb & Precup 2017; Kostas et al. 2020, section 7).

Three coagents (termination unit, policy over options with execute = the termination bit,
intra-option policy), tabular, learning **online** as in Bacon et al.: one update per step, from
scg's actor-critic estimator (``estimator="td"``, eligibility traces, a tabular critic
V(s_t, w_{t-1}) as the step's ``scg.value`` site). Several independent runs step together in one
``scg.episodes`` plate; each run's episode restarts on its own when it reaches the goal
(``est.finish(done=...)``). After ``episodes`` episodes a run's goal moves to a random cell of the
lower-right room and it learns on for as many episodes.

Reports steps per episode against the optimum computed by value iteration, the exact expected
steps of the learned policy (a linear solve, no sampling), the recovery after the goal moves, and
where each option terminates (beta per cell).

Writes docs/option_critic.md, docs/option_critic.json and two plots under docs/img/.

    python examples/option_critic.py            # the full run (about 12 minutes on one core)
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
from scg.models.four_rooms import GAMMA, FourRooms, expected_steps, hop_after_move
from scg.models.option_critic import BETA2, CRITIC_INIT, CRITIC_LR, LAM, LR, Episodes, OptionCritic

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    seed: int = 0
    """seed of torch and pyro (starts, moved goals)"""
    runs: int = 16
    """independent runs, stepped together"""
    options: int = 4
    """number of options"""
    episodes: int = 1000
    """episodes per run before the goal moves (and as many after)"""
    lr: float = LR
    """Adam step size of the three units (one update per step)"""
    beta2: float = BETA2
    """Adam's second-moment decay (0.99, not torch's 0.999: between two visits of a rarely
    visited cell its gradient scale is forgotten faster, so it takes larger steps)"""
    critic_lr: float = CRITIC_LR
    """SGD step size of each run's critic"""
    lam: float = LAM
    """eligibility-trace decay lambda (a short trace leans on the critic: far from the goal the
    returns vary much more than the critic errs)"""
    critic_init: float = CRITIC_INIT
    """initial V (1 = the largest possible value: optimistic, so untried moves look good)"""
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
        args.runs, args.options, args.episodes, args.horizon = 2, 2, 3, 40
    return args


def learn(args, oc, runs):
    """Online actor-critic until every run has finished ``2 * episodes`` episodes; returns the
    exact expected steps and termination maps of each run at its goal move and at its end."""
    est = scg.compile(oc.online(), estimator="td", gamma=GAMMA, lam=args.lam,
                      discount_score=False)
    with torch.no_grad():
        oc.critic.fill_(args.critic_init)
    units = torch.optim.Adam(oc.units.values(), lr=args.lr, betas=(0.9, args.beta2))
    # the estimator averages the plate's episodes: one run's critic step is critic_lr
    critic = torch.optim.SGD([oc.critic], lr=args.critic_lr * args.runs)
    snap = {"exact_before": {}, "greedy_before": {}, "maps": {}, "exact_after": {},
            "greedy_after": {}}
    steps = 0
    while min(len(x) for x in runs.lengths) < 2 * args.episodes:
        out = est(*runs())
        ended = runs.advance(out)
        loss = out.loss + est.finish(done=ended).loss if ended.any() else out.loss
        units.zero_grad()
        critic.zero_grad()
        loss.backward()
        units.step()
        critic.step()
        steps += 1
        for r in ended.nonzero().flatten().tolist():
            n = len(runs.lengths[r])
            if n == args.episodes:      # the goal has just moved: evaluate the east-goal policy
                snapshot(snap, "before", oc, r, oc.world.goal)
                snap["maps"][r] = oc.termination_map(r).tolist()
            elif n == 2 * args.episodes:
                snapshot(snap, "after", oc, r, int(runs.goal[r]))
        if steps % 5000 == 0:
            done = [len(x) for x in runs.lengths]
            recent = [statistics.mean(x[-50:]) if x else float("nan") for x in runs.lengths]
            print(f"  step {steps:6d}: episodes {done}, last 50 mean "
                  f"{[round(x, 1) for x in recent]}", flush=True)
    return {k: [v[r] for r in range(args.runs)] for k, v in snap.items()}, steps


def snapshot(snap, key, oc, r, goal):
    """Run ``r``'s exact expected steps to ``goal`` (policy and mode) under ``key``."""
    if r in snap[f"exact_{key}"]:     # a run that goes on past 2 * episodes
        return
    snap[f"exact_{key}"][r] = oc.expected_steps(goal, r)
    snap[f"greedy_{key}"][r] = oc.expected_steps(goal, r, greedy=True)
    print(f"  run {r}: goal {goal}, exact expected steps {snap[f'exact_{key}'][r]:.2f}",
          flush=True)


def experiment(args):
    gen = torch.Generator().manual_seed(args.seed)
    world = FourRooms(horizon=args.horizon)
    oc = OptionCritic(world, args.options, args.runs)
    room = world.lower_right()
    moved = room[torch.randint(len(room), (args.runs,), generator=gen)]
    runs = Episodes(world, args.runs, args.episodes, moved, gen)
    snap, steps = learn(args, oc, runs)
    E = args.episodes
    copied = float(expected_steps(hop_after_move(world.next), world.goal).sum() / (world.S - 1))
    return {"before": [x[:E] for x in runs.lengths],
            "after": [x[E:2 * E] for x in runs.lengths], **snap, "steps": steps,
            "optimum_east": world.optimum(),
            "optimum_moved": [world.optimum(int(g)) for g in moved],
            "moved_goals": [tuple(world.cells[g].tolist()) for g in moved],
            "optimum_room": [world.optimum(int(g)) for g in room], "optimum_copied": copied}


def smooth(x, k):
    return [statistics.mean(x[max(0, i - k + 1):i + 1]) for i in range(len(x))]


def last(curves, k):
    """Mean steps per episode over each run's last ``k`` episodes, then over runs."""
    return statistics.mean(statistics.mean(c[-k:]) for c in curves)


def first(curves, k):
    return statistics.mean(statistics.mean(c[:k]) for c in curves)


def plots(out, args, res):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    E = args.episodes
    curves = [b + a for b, a in zip(res["before"], res["after"])]
    mean = [statistics.mean(c[i] for c in curves) for i in range(2 * E)]
    k = max(1, E // 50)
    ax.plot(range(1, 2 * E + 1), smooth(mean, k),
            label=f"option-critic (mean of {args.runs} runs, moving average of {k})")
    ax.hlines(res["optimum_east"], 0, E, colors="green", linestyles="--", label="optimum")
    ax.hlines(statistics.mean(res["optimum_moved"]), E, 2 * E, colors="green",
              linestyles="--")
    ax.axvline(E, color="grey", lw=0.8)
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
    k = min(100, args.episodes)
    E = args.episodes
    moved = statistics.mean(res["optimum_moved"])
    b_last, a_last = last(res["before"], k), last(res["after"], k)
    opt = res["optimum_east"]
    mean = statistics.mean
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
        "`models/option_critic.py` (`OptionCritic.online()`: one step; zoo: `option_critic`).",
        "",
        "Training: online, one update per step as in Bacon et al., from scg's actor-critic "
        f"estimator (`estimator=\"td\"`, λ = {args.lam}, no γ^t factor on the score) with a "
        "tabular critic V(s_t, ω_{t−1}) (the step's `scg.value` site; initialised to "
        f"{args.critic_init}, optimistic), Adam (lr {args.lr}, β₂ {args.beta2}) on the three "
        "units' logit "
        f"tables, SGD (lr {args.critic_lr}) on the critic; {args.options} options; "
        f"{args.runs} independent runs stepped together in one `scg.episodes` plate (each "
        "run's episode restarts on its own: `est.finish(done=...)`). After "
        f"{E} episodes a run's goal moves to a random cell of the lower-right room (per run: "
        f"{res['moved_goals']}) and it learns on for {E} more episodes. Nothing is "
        "hand-derived: the three units' updates are the estimator's.",
        "",
        "| | steps per episode |",
        "|---|---:|",
        f"| optimum (value iteration), goal in the east doorway | {opt:.2f} |",
        f"| optimum of the copied dynamics (extra hop from the new cell) | "
        f"{res['optimum_copied']:.2f} |",
        f"| first 10 episodes, mean over runs | {first(res['before'], 10):.1f} |",
        f"| last {k} episodes before the move, mean over runs | {b_last:.1f} |",
        f"| **ratio to the optimum** (target ≤ 1.10) | **{b_last / opt:.2f}** |",
        f"| exact expected steps of the learned policy at episode {E} (mean over runs) | "
        f"{mean(res['exact_before']):.2f} |",
        f"| … of its mode (each unit's most likely output) | "
        f"{mean(res['greedy_before']):.2f} |",
        f"| optimum (value iteration), moved goals (mean over runs) | {moved:.2f} |",
        f"| first 10 episodes after the move | {first(res['after'], 10):.1f} |",
        f"| last {k} episodes after the move | {a_last:.1f} |",
        f"| **ratio to the optimum after the move** | **{a_last / moved:.2f}** |",
        f"| exact expected steps at episode {2 * E} | {mean(res['exact_after']):.2f} |",
        f"| … of its mode | {mean(res['greedy_after']):.2f} |",
        "",
        "Per run, last episodes before / after the move: "
        + ", ".join(f"{mean(b[-k:]):.1f} / {mean(a[-k:]):.1f}"
                    for b, a in zip(res["before"], res["after"]))
        + f". Optimum for a goal anywhere in the lower-right room: {min(room):.2f} to "
        f"{max(room):.2f} steps (mean {mean(room):.2f}).",
        "",
        "The exact expected steps are computed from the learned tables by a linear solve over "
        "(cell, held option) (`OptionCritic.expected_steps`): the sampled learning curve's "
        "average without its sampling noise. The gap between the policy and its mode is the "
        "policy's remaining randomness: softmax units that are still learning.",
        "",
        "What limits it: the units end nearly deterministic (the mode is about as far from "
        "the optimum as the policy) but wrong in some cells, most of them in the lower-left "
        "room, far from the goal: there a move that costs a step or two more changes the "
        "value by about 0.02 (0.99^20 against 0.99^22), against returns that vary far more. "
        "The trace decay λ matters most: a short trace leans on the critic, whose error there "
        "is smaller than the spread of the returns (λ = 0.8, `--lam 0.8`, this page at "
        "commit 92bc6bf: 1.11× before the move and 1.21× after; λ = 0.5 at commit 3fafc8a: "
        "1.08× and 1.16×). Adam's β₂ comes next: between "
        "two visits of a rarely visited cell a smaller β₂ forgets the gradient scale sooner "
        "(`--beta2 0.999`, torch's default, with λ = 0.8 at commit 7ec04f3: 1.22× before and "
        "1.21× after). A critic initialised to 0 (`--critic-init 0`) commits early to the "
        "first moves that reached the goal. The Monte Carlo estimator on batches of whole "
        "episodes (`OptionCritic.episodes()`; this page at commit 43e2709) measured 2.06× "
        "before and 2.35× after the move. The zoo entry (`scg train option_critic --updates "
        "N`) is this online setting for one run, driven by `scg.Trainer` "
        "(`scg.models.option_critic.Episodes` restarts the episodes; checkpoints resume "
        "exactly).",
        "",
        "![learning curve](img/option_critic_learning.png)",
        "",
        f"Where the options terminate (run 0, at episode {E}): β(s, ω) per cell, walls blank.",
        "",
        "![termination](img/option_critic_termination.png)",
        "",
        f"{res['steps']} steps of the batch of runs, {seconds / 60:.1f} min on one CPU thread.",
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
