"""LOLA from one network function: naive and LOLA learners on the iterated prisoner's dilemma
and on matching pennies, written with scg's per-agent objectives (to=) and any-order
surrogates (order="any"), against the same learners on the closed form.

The IPD (models/ipd.py) has memory-one policies, gamma 0.96 and T = 150-step rollouts; each
agent's reward is addressed to it, so out.local["A"] is agent 1's DiCE objective and its
derivatives of every order estimate those of V1. Naive learners step along their own sampled
gradient; LOLA learners (the DiCE paper's LOLA-DiCE, one look-ahead step) along the gradient
of their return after the opponent's sampled naive step, differentiated through that step
(models/lola.py). The exact learners (models/ipd_exact.py, written without scg) take the same
steps on V_i = p0^T (I - gamma P)^-1 r_i. Every policy is scored by the closed form: the
average per-step return (1 - gamma) V_i and P(cooperate) per state. Matching pennies
(models/pennies.py) is the general-sum (here zero-sum) check: naive learners circle away from
the equilibrium (1/2, 1/2), LOLA converges to it. Writes docs/lola_ipd.md, docs/lola_ipd.json
and docs/img/lola_ipd.png.

    python examples/lola_ipd.py            # 10 seeds, 200 updates per setting (~30 min on CPU)
    python examples/lola_ipd.py --smoke --out /tmp/lola    # tiny run, as the tests do
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyro
import torch
from common import parse

import scg
from scg.models import ipd, ipd_exact, pennies

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("naive", "lola")
COOPERATING = -1.3   # a seed "cooperates" when both agents' average per-step return exceeds it


@dataclass
class Args:
    seed: int = 0
    """seed of the initial thetas and of the rollouts"""
    seeds: int = 10
    """independent pairs of learners per setting (trained at once, one plate row each)"""
    updates: int = 200
    """updates per run"""
    episodes: int = 64
    """rollouts per update and seed (the DiCE paper's batch)"""
    T: int = 150
    """IPD rollout length"""
    settings: str = "0.2/0.3/0,1/1/1"
    """IPD settings lr/eta/init_std: the first like the LOLA-DiCE port's (thetas from 0), the
    second the LOLA paper's exact runs (thetas ~ N(0, 1))"""
    pennies_lr: float = 0.3
    """matching pennies: step size"""
    pennies_eta: float = 1.0
    """matching pennies: look-ahead step"""
    out: str = "docs"
    """where the page, its JSON and the plot go"""
    threads: int = 1
    """torch CPU threads"""
    smoke: bool = False
    """tiny run, for tests"""


def parse_args():
    args = parse(Args, __doc__)
    if args.smoke:
        args.seeds, args.updates, args.episodes, args.T = 2, 3, 8, 10
    return args


def settings(args):
    return [dict(zip(("lr", "eta", "init_std"), map(float, s.split("/"))))
            for s in args.settings.split(",")]


# ---- checks ----------------------------------------------------------------------------------
def checks():
    """scg.check of both zoo games' tiny versions, first and second order (exact enumeration)."""
    rows = {}
    for name in ("ipd", "matching_pennies"):
        net, inputs, options = scg.zoo.load(name).check
        for order in (1, 2):
            r = scg.check(net, *inputs, order=order, **options)
            worst = max(row.rel_error for row in r.rows)
            rows[f"{name} order {order}"] = {"ok": r.ok, "rel_error": worst, "size": r.size}
            print(f"  {name:16s} order {order}: {'OK' if r.ok else 'MISMATCH'} (largest rel "
                  f"error {worst:.1e} over {len(r.rows)} rows, {r.size} joint values)")
    return rows


# ---- the IPD ---------------------------------------------------------------------------------
def summary(returns, coop):
    """Final figures of per-seed curves: returns [U + 1, S, 2], coop [U + 1, S, 2, 5]."""
    final = returns[-1].mean(-1)                 # both agents' average per-step return
    return {"return": final.mean().item(), "return_std": final.std().item() if
            final.numel() > 1 else 0.0, "p_cooperate": coop[-1].mean().item(),
            "p_cooperate_state": coop[-1].mean((0, 1)).tolist(),
            "cooperating": (final > COOPERATING).double().mean().item(),
            "curve": returns.mean((1, 2)).tolist()}


def ipd_runs(args, setting):
    rows = {}
    for kind in KINDS:
        exact = ipd_exact.train_exact(kind, args.seeds, args.updates, setting["lr"],
                                      setting["eta"], ipd.GAMMA, setting["init_std"], args.seed)
        rows[f"{kind} exact"] = summary(exact.returns, exact.p_cooperate)
        t = time.time()
        run = ipd.train(kind, args.seeds, args.updates, args.episodes, setting["lr"],
                        setting["eta"], args.T, setting["init_std"], args.seed)
        seconds = time.time() - t
        rows[f"{kind} scg"] = {**summary(run.returns, run.p_cooperate),
                               "ms_per_update": 1e3 * seconds / max(args.updates, 1)}
        for method in ("exact", "scg"):
            r = rows[f"{kind} {method}"]
            print(f"  {kind:5s} {method:5s}: return {r['return']:7.3f} ± {r['return_std']:.3f}, "
                  f"P(cooperate) {r['p_cooperate']:.2f}")
    return rows


# ---- matching pennies ------------------------------------------------------------------------
def pennies_runs(args):
    rows = {}
    for kind in KINDS:
        for method in ("exact", "scg"):
            d = pennies.train(kind, args.seeds, args.updates, args.episodes, args.pennies_lr,
                              args.pennies_eta, args.seed, exact=method == "exact")
            rows[f"{kind} {method}"] = {"start": d[0].mean().item(), "end": d[-1].mean().item(),
                                        "end_max": d[-1].max().item(),
                                        "curve": d.mean(1).tolist()}
            r = rows[f"{kind} {method}"]
            print(f"  {kind:5s} {method:5s}: distance from (1/2, 1/2) {r['start']:.3f} -> "
                  f"{r['end']:.3f} (max over seeds {r['end_max']:.3f})")
    return rows


# ---- report ----------------------------------------------------------------------------------
def plot(out, args, ipd_rows, pennies_rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(ipd_rows)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.2 * (n + 1), 3.6), squeeze=False)
    styles = {"exact": "--", "scg": "-"}
    colours = {"naive": "tab:red", "lola": "tab:blue"}
    for ax, (label, rows) in zip(axes[0], ipd_rows.items()):
        for key, r in rows.items():
            kind, method = key.split()
            ax.plot(r["curve"], styles[method], color=colours[kind], label=key)
        ax.set_title(f"IPD, {label}", fontsize=9)
        ax.set_xlabel("update")
        ax.set_ylabel("average per-step return")
        ax.set_ylim(-2.1, -0.9)
    ax = axes[0][n]
    for key, r in pennies_rows.items():
        kind, method = key.split()
        ax.plot(r["curve"], styles[method], color=colours[kind], label=key)
    ax.set_title("matching pennies", fontsize=9)
    ax.set_xlabel("update")
    ax.set_ylabel("distance of (p, q) from (1/2, 1/2)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    (out / "img").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "img" / "lola_ipd.png", dpi=110)
    plt.close(fig)


def ipd_table(rows):
    lines = ["| learner | gradients | average per-step return (± sd over seeds) | "
             f"seeds above {COOPERATING:g} | P(cooperate) | ms per update |",
             "|---|---|---:|---:|---:|---:|"]
    for key, r in rows.items():
        kind, method = key.split()
        how = "closed form" if method == "exact" else "scg, sampled"
        ms = f"{r['ms_per_update']:.0f}" if "ms_per_update" in r else "—"
        lines.append(f"| {kind} | {how} | {r['return']:.3f} ± {r['return_std']:.3f} | "
                     f"{100 * r['cooperating']:.0f}% | {r['p_cooperate']:.2f} | {ms} |")
    return lines


def state_table(rows):
    lines = ["| learner | " + " | ".join(ipd_exact.STATES) + " |",
             "|---|" + "---:|" * len(ipd_exact.STATES)]
    for key, r in rows.items():
        lines.append(f"| {key} | " + " | ".join(f"{p:.2f}" for p in r["p_cooperate_state"])
                     + " |")
    return lines


def page(args, checked, ipd_rows, pennies_rows, seconds):
    lines = [
        "# LOLA on the iterated prisoner's dilemma",
        "",
        "*Generated by `python examples/lola_ipd.py`; do not edit by hand.*",
        "",
        "Two agents with their own objectives, and learners that differentiate through each "
        "other's update, from one network function: `models/ipd.py` writes the iterated "
        "prisoner's dilemma as two coagents whose rewards are addressed with `to=` "
        "(design.md §8), compiled with `order=\"any\"` so that `out.local[\"A\"]` is agent 1's "
        "DiCE objective (Foerster et al. 2018) with leave-one-out baselines in Mao et al.'s "
        "any-order form. The learners are `models/lola.py`: *naive* agents step along their "
        "own sampled gradient; *LOLA* agents (the DiCE paper's LOLA-DiCE, one look-ahead step) "
        "along the gradient of their return after the opponent's sampled naive step, "
        "differentiated through that step (three rollouts per update). The *closed form* rows "
        "take the same steps on the exact values V_i = p0ᵀ(I − γP)⁻¹r_i "
        "(`models/ipd_exact.py`, written without scg).",
        "",
        f"**Setting.** Memory-one policies (5 logits per agent), γ = {ipd.GAMMA}, rollouts of "
        f"T = {args.T} steps, {args.episodes} rollouts per update and seed, {args.seeds} seeds "
        f"(independent pairs trained at once in a plate), {args.updates} updates of plain "
        "gradient ascent on the discounted total. Each policy is scored by the closed form: "
        "the average per-step return (1 − γ)V_i of both agents (mutual cooperation −1, mutual "
        "defection −2), the share of seeds whose final return is above "
        f"{COOPERATING:g} (near mutual cooperation), and P(cooperate) averaged over the 5 "
        "states. The milliseconds per update are wall-clock on this machine's shared CPU "
        "(all seeds at once; a LOLA update is three rollouts and a second-order backward "
        "pass); `benchmarks/dice.py` times one update against hand-written torch.",
        "",
    ]
    for label, rows in ipd_rows.items():
        lines += [f"### {label}", ""] + ipd_table(rows) + [
            "", "P(cooperate) per state (each agent's own view: its action first), mean over "
            "seeds and agents:", ""] + state_table(rows) + [""]
    lines += [
        "![learning curves](img/lola_ipd.png)",
        "",
        "Mean over seeds and agents of the closed-form average per-step return (IPD) and of "
        "the distance from the equilibrium (matching pennies); dashed: closed-form learners, "
        "solid: scg's sampled surrogates.",
        "",
        "## Matching pennies",
        "",
        "`models/pennies.py`: each agent shows heads with probability sigmoid(θ_i); agent 1 "
        "gets +1 when the coins match and −1 otherwise, agent 2 the opposite (to= addresses "
        "each reward to its agent), so V1 = (2p − 1)(2q − 1) = −V2 and the only equilibrium is "
        f"p = q = 1/2. Step {args.pennies_lr:g}, look-ahead {args.pennies_eta:g}, "
        f"{args.episodes} plays per update and seed, {args.seeds} seeds from θ ~ N(0, 1).",
        "",
        "| learner | gradients | distance from (1/2, 1/2): start | end (mean) | end (max) |",
        "|---|---|---:|---:|---:|",
    ]
    for key, r in pennies_rows.items():
        kind, method = key.split()
        how = "closed form" if method == "exact" else "scg, sampled"
        lines.append(f"| {kind} | {how} | {r['start']:.3f} | {r['end']:.3f} | "
                     f"{r['end_max']:.3f} |")
    lines += [
        "",
        "## Checks",
        "",
        "`scg.check` by exact enumeration on each game's tiny zoo version (`scg.zoo.load(name)"
        ".check`), first order (each agent's gradient of its own J_i) and `order=2` (expected "
        "against exact Hessians of every objective): " + "; ".join(
            f"{k} {'OK' if c['ok'] else 'MISMATCH'} (largest relative error "
            f"{c['rel_error']:.1e}, {c['size']} joint values)" for k, c in checked.items())
        + ". `tests/test_ipd.py` checks, at T = 150, each agent's gradient from one run "
        "against ∇_iV_i, the DiCE Hessian block ∇₁∇₂V₁ against the closed form's (err/se "
        "over 400 seeds), and LOLA's direction against the exact look-ahead's.",
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
    checked = checks()
    ipd_rows = {}
    for s in settings(args):
        label = (f"step {s['lr']:g}, look-ahead {s['eta']:g}, θ ~ N(0, {s['init_std']:g}²)"
                 if s["init_std"] else f"step {s['lr']:g}, look-ahead {s['eta']:g}, θ = 0")
        print(f"=== IPD: {label} ===")
        ipd_rows[label] = ipd_runs(args, s)
    print("=== matching pennies ===")
    pennies_rows = pennies_runs(args)
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    plot(out, args, ipd_rows, pennies_rows)
    (out / "lola_ipd.md").write_text(page(args, checked, ipd_rows, pennies_rows,
                                          time.time() - start))
    (out / "lola_ipd.json").write_text(json.dumps(
        {"args": asdict(args), "check": checked, "ipd": ipd_rows, "pennies": pennies_rows},
        indent=1))
    print(f"wrote {out / 'lola_ipd.md'}")
    assert all(c["ok"] for c in checked.values()), checked


if __name__ == "__main__":
    main()
