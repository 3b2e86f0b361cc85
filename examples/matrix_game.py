"""The cooperative matrix game: factored policies vs an annealed joint policy.

Two agents choose safe (0) or risky (1); both receive PAYOFF[a1, a2] = [[0, -5], [-5, 10]].
Independent (factored) policy-gradient agents with P(risky) = p, q follow dJ/dp = 20q - 5, so
from p = q < 1/4 they slide to (safe, safe) and payoff 0. A joint-action coagent has no such
trap; it is made to factorise at the end either by a KL penalty towards the product of its
marginals (lam annealed from 0 upward) or by executing the mixture (1 - alpha) joint + alpha
(product of marginals), alpha annealed from 0 to 1.

For each method and starting P(risky) in {0.5, 0.2, 0.1}, many seeds train at once in one
batched program (a ``pyro.plate`` of independent replicas around ``scg.episodes``). Reported:
the share of seeds whose final policy plays (risky, risky) with probability > 0.95 (payoff 10),
and the final mutual information between the two agents' actions. Writes
docs/matrix_game.md, docs/matrix_game.json and docs/img/matrix_game.png.

    python examples/matrix_game.py            # 200 seeds per setting (a few minutes on CPU)
    python examples/matrix_game.py --smoke    # tiny run, for tests (writes to a temp dir)
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyro
import torch
from common import parse

import scg
from scg.models.matrix_game import (
    VARIANTS,
    Game,
    annealed,
    expected_payoff,
    factored_gradient,
    mutual_information,
    setup,
)

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"factored": "factored (two Bernoulli coagents)",
          "joint_kl": "joint + annealed KL to product of marginals",
          "mixture": "annealed mixture joint -> product of marginals"}


@dataclass
class Args:
    seed: int = 0
    """seed of torch and pyro"""
    seeds: int = 200
    """independent training runs per setting (trained at once, one replica each)"""
    starts: str = "0.5,0.2,0.1"
    """starting P(risky) of each agent"""
    methods: str = ",".join(VARIANTS)
    """which variants to train"""
    batch: int = 16
    """episodes per update and seed"""
    updates: int = 3000
    """SGD updates per run"""
    anneal: int = 2000
    """updates over which lam rises from 0 to lam_max (alpha from 0 to 1); then held"""
    lam_max: float = 1.0
    """final KL weight of joint_kl"""
    lr: float = 0.1
    """SGD step size"""
    threshold: float = 0.95
    """a seed reaches 10 when its final P(risky, risky) exceeds this"""
    curve_every: int = 50
    """updates between points of the learning curves"""
    out: str = "docs"
    """where the results page and plot go"""
    threads: int = 1
    """torch CPU threads"""
    smoke: bool = False
    """tiny run, for tests"""


def parse_args():
    args = parse(Args, __doc__)
    if args.smoke:
        args.seeds, args.updates, args.anneal, args.curve_every = 8, 20, 10, 5
    return args


# ============================================================================================
# Checks: the gradient analysis and scg's estimator against exact enumeration
# ============================================================================================
def checks(args):
    """scg.check of every variant on a one-seed, two-episode instance (float64, mid-anneal)."""
    rows = {}
    for v in args.methods.split(","):
        net, inputs, options = setup(v, 0.2, 2, 1, 2).check
        report = scg.check(net, *inputs, baseline="loo", **options)
        rows[v] = {"ok": report.ok, "rel_error": report.row("total").rel_error,
                   "size": report.size}
        print(f"  {v:9s} scg.check {'OK' if report.ok else 'MISMATCH'} "
              f"(rel error {rows[v]['rel_error']:.1e}, {report.size} joint values)")
    return rows


# ============================================================================================
# Training: all seeds of one setting at once
# ============================================================================================
def snapshot(game, coef, threshold):
    """Per-seed summaries of the executed policy: P(both risky), reached, MI, payoff."""
    with torch.no_grad():
        policy = game.policy(coef)
        both = policy[:, 1, 1]
        return {"reach": (both > threshold).double().mean().item(),
                "safe": (policy[:, 0, 0] > threshold).double().mean().item(),
                "mi": mutual_information(policy), "payoff": expected_payoff(policy)}


def train(args, variant, p):
    """Train ``args.seeds`` replicas of one variant from P(risky) = p; returns curves and the
    final summary."""
    game = Game(variant, p, args.seeds, torch.float64)
    est = scg.compile(game.network, baseline="loo")
    opt = torch.optim.SGD(game.params.values(), lr=args.lr)
    curve = {"step": [], "reach": [], "mi": [], "payoff": []}
    for step in range(args.updates + 1):
        coef = annealed(variant, step, args.anneal, args.lam_max)
        if step % args.curve_every == 0 or step == args.updates:
            s = snapshot(game, coef, args.threshold)
            curve["step"].append(step)
            curve["reach"].append(s["reach"])
            curve["mi"].append(s["mi"].mean().item())
            curve["payoff"].append(s["payoff"].mean().item())
        if step == args.updates:
            break
        out = est(args.batch, coef)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    final = snapshot(game, annealed(variant, args.updates, args.anneal, args.lam_max),
                     args.threshold)
    return {"variant": variant, "p_risky": p, "reach": final["reach"], "safe": final["safe"],
            "mi_mean": final["mi"].mean().item(), "mi_max": final["mi"].max().item(),
            "payoff": final["payoff"].mean().item(), "curve": curve}


def experiment(args):
    results = []
    for variant in args.methods.split(","):
        for p in [float(x) for x in args.starts.split(",")]:
            t = time.time()
            r = train(args, variant, p)
            results.append(r)
            print(f"  {variant:9s} P(risky)={p:.2f}: reach 10 {100 * r['reach']:5.1f}%, "
                  f"(safe, safe) {100 * r['safe']:5.1f}%, mean payoff {r['payoff']:6.3f}, "
                  f"MI mean {r['mi_mean']:.2e} max {r['mi_max']:.2e} "
                  f"({time.time() - t:.0f}s)")
    return results


# ============================================================================================
# Report
# ============================================================================================
def plot(out, args, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = [float(x) for x in args.starts.split(",")]
    fig, axes = plt.subplots(2, len(starts), figsize=(4 * len(starts), 6), squeeze=False,
                             sharex=True)
    for j, p in enumerate(starts):
        for r in (r for r in results if r["p_risky"] == p):
            c = r["curve"]
            axes[0][j].plot(c["step"], [100 * x for x in c["reach"]], label=r["variant"])
            axes[1][j].plot(c["step"], c["mi"], label=r["variant"])
        axes[0][j].set_title(f"start P(risky) = {p}")
        axes[0][j].set_ylabel("% seeds with P(risky, risky) > 0.95")
        axes[1][j].set_ylabel("mean mutual information (nats)")
        axes[1][j].set_xlabel("update")
        for ax in (axes[0][j], axes[1][j]):
            ax.axvline(args.anneal, color="grey", lw=0.5, ls=":")
    axes[0][0].legend()
    fig.tight_layout()
    (out / "img").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "img" / "matrix_game.png", dpi=110)
    plt.close(fig)


def page(args, results, checked, seconds):
    lines = [
        "# Cooperative matrix game",
        "",
        "*Generated by `python examples/matrix_game.py`; do not edit by hand.*",
        "",
        "Two agents each choose safe (0) or risky (1) and both receive the payoff "
        "[[0, −5], [−5, 10]]. Model: `models/matrix_game.py` (zoo entries "
        "`matrix_game_factored`, `matrix_game_joint_kl`, `matrix_game_mixture`).",
        "",
        "**Gradient analysis.** With independent P(risky) = p and q, "
        "J = 10pq − 5p(1−q) − 5(1−p)q, so dJ/dp = 20q − 5 "
        f"(= {factored_gradient(0.5):g} at q = 0.5, {factored_gradient(0.2):g} at q = 0.2): "
        "an agent is pushed towards safe whenever its partner is risky with probability below "
        "1/4, and factored gradient ascent from p = q < 1/4 ends at (safe, safe), payoff 0. "
        "(`tests/test_matrix_game.py` checks 20q − 5 against enumeration and finite "
        "differences.)",
        "",
        "**Methods.** *factored*: two coagents, each a Bernoulli message with its own logit. "
        "*joint_kl*: one coagent emits the joint action (Categorical over 4) and pays "
        "`scg.cost` −λ·KL(joint ‖ product of its marginals) (the mutual information; pathwise "
        f"gradient), λ rising linearly from 0 to {args.lam_max:g} over the first "
        f"{args.anneal} updates. *mixture*: the executed policy is (1−α)·joint + α·(product "
        f"of the joint's marginals), α rising from 0 to 1 over the first {args.anneal} "
        "updates, so the final policy factorises exactly.",
        "",
        f"**Training.** {args.seeds} seeds per setting, trained at once as independent "
        f"replicas (a `pyro.plate`); SGD, step {args.lr:g}, {args.updates} updates of "
        f"{args.batch} episodes per seed, leave-one-out baseline, float64. Reached 10: final "
        f"P(risky, risky) > {args.threshold:g}; (safe, safe): P(safe, safe) > "
        f"{args.threshold:g}. MI: mutual information between the two agents' actions under "
        "the final executed policy (nats).",
        "",
        "| method | start P(risky) | reached 10 | (safe, safe) | mean payoff | MI mean | "
        "MI max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['variant']} | {r['p_risky']:g} | {100 * r['reach']:.1f}% | "
                     f"{100 * r['safe']:.1f}% | {r['payoff']:.3f} | {r['mi_mean']:.1e} | "
                     f"{r['mi_max']:.1e} |")
    lines += [
        "",
        "![learning curves](img/matrix_game.png)",
        "",
        "Top: share of seeds at (risky, risky); bottom: mean mutual information; the dotted "
        "line is the end of annealing.",
        "",
        "**Estimator check.** `scg.check` (exact enumeration, one seed, two episodes, "
        "mid-anneal coefficient, float64) of each variant's estimator, including the KL "
        "cost's pathwise gradient: " + "; ".join(
            f"{v} {'OK' if c['ok'] else 'MISMATCH'} (relative error {c['rel_error']:.1e})"
            for v, c in checked.items()) + ".",
        "",
        f"Total time {seconds / 60:.1f} min on this machine's CPU "
        f"({args.threads} thread{'s' if args.threads > 1 else ''}).",
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
    print("=== scg.check against exact enumeration ===")
    checked = checks(args)
    print("=== training ===")
    results = experiment(args)
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    plot(out, args, results)
    (out / "matrix_game.md").write_text(page(args, results, checked, time.time() - start))
    (out / "matrix_game.json").write_text(json.dumps(
        {"args": asdict(args), "check": checked, "results": results}, indent=1))
    print(f"wrote {out / 'matrix_game.md'}")
    assert all(c["ok"] for c in checked.values()), checked


if __name__ == "__main__":
    main()
