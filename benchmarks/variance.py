"""Gradient variance: mean squared error of each estimator against the true gradient, at a fixed
episode budget per estimate and fixed parameters.

Three measurements:

- :func:`variance_table`: the 10-unit chain of :class:`benchmarks.workloads.Chain` (a reward
  x_t at every unit), whose exact objective is a forward recursion over P(x_t = 1).
- :func:`random_networks_table`: seeded random coagent networks
  (:class:`benchmarks.networks.RandomNetwork`) inside ``scg.episodes(N)``, with the exact
  gradient by enumeration; every baseline of scg, plain whole-return REINFORCE and the
  exact-value-baseline oracles, all as ratios to REINFORCE's MSE (geometric mean over
  networks).
- :func:`gridworld_tables`: the zoo's asynchronous gridworld (4x4, horizon 30; exact gradient
  from its backward induction, and a large-batch reference to validate the reference method)
  and the option-critic's episodic network on Four Rooms (short horizon, uniform start;
  large-batch reference gradient), for loo, critic (pre-trained at the fixed policy on the
  coagents' ``state=``), auto, avg and none.

Stateful baselines are warmed at the fixed policy first: ``avg`` by calls, ``critic`` by its
own Adam on its regression term (the policy does not move). MSE = mean over independent
estimator calls of |g_hat - g|^2.

    python benchmarks/variance.py [--out results.json]   # the full measurement (~30 min)
    python benchmarks/variance.py --quick                # tiny sizes (a smoke run)
"""

import argparse
import json
import math
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import scg  # noqa: E402
from benchmarks.networks import RandomNetwork, flat  # noqa: E402
from benchmarks.workloads import Chain  # noqa: E402
from scg.core.terms import canonical_params  # noqa: E402
from scg.estimators.baselines import LeaveOneOut  # noqa: E402

BASELINES = ("auto", "none", "avg", "loo", "critic")


# ---- the 10-unit chain -----------------------------------------------------------------
def exact_gradient(work):
    """grad J for J = sum_t P(x_t = 1), x_0 = 0 before the first unit."""
    p, J = torch.zeros(()), 0.0
    for t in range(work.N):
        p = p * torch.sigmoid(work.w[t] + work.b[t]) + (1 - p) * torch.sigmoid(work.b[t])
        J = J + p
    return torch.cat([g.flatten() for g in torch.autograd.grad(J, [work.w, work.b])])


def estimate(loss, work):
    return -torch.cat([g.flatten() for g in torch.autograd.grad(loss, [work.w, work.b])])


def reinforce_loss(work, B):
    """Plain REINFORCE: every log-probability times the whole return (no causality)."""
    x = torch.zeros(B)
    lp, ret = 0.0, 0.0
    for t in range(work.N):
        d = torch.distributions.Bernoulli(logits=work.w[t] * x + work.b[t])
        x = d.sample()
        lp, ret = lp + d.log_prob(x), ret + x
    return -(lp * ret).mean()


def warm(est, *args, iters=300, lr=1e-2, calls=None):
    """Let stateful baselines learn at fixed policy: the avg baseline's averages and the
    critic's regression (its parameters only, with its own Adam). ``calls``: a function
    giving the arguments of each warming call (default ``args``)."""
    calls = calls or (lambda: args)
    est(*calls())
    critic = list(est.critics.parameters())
    opt = torch.optim.Adam(critic, lr=lr) if critic else None
    for _ in range(iters):
        out = est(*calls())
        if opt:
            opt.zero_grad()
            grads = torch.autograd.grad(out.loss, critic, allow_unused=True)
            for p, g in zip(critic, grads):
                p.grad = g
            opt.step()


def tracegraph_estimator(work, B, warmup=50):
    """Pyro's TraceGraph_ELBO on the same chain (policy as model and guide, rewards as
    factors), with its decaying-average baseline on every guide site, warmed up first."""
    import pyro

    elbo = pyro.infer.TraceGraph_ELBO()
    infer = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}
    pyro.clear_param_store()

    def guide(B):
        work.pyro_guide(B, infer=infer)

    def draw():
        for p in (work.w, work.b):
            p.grad = None
        elbo.loss_and_grads(work.pyro_model, guide, B)
        # Pyro's plates sum over episodes where scg's episodes average: divide by B
        return -torch.cat([work.w.grad.flatten(), work.b.grad.flatten()]) / B

    for _ in range(warmup):
        draw()
    return draw


def variance_table(episodes=8, repeats=400, seed=0):
    torch.manual_seed(seed)
    work = Chain(10, B=episodes)
    with torch.no_grad():
        work.w.normal_()
        work.b.normal_()
    g = exact_gradient(work)
    rows = []

    def mse(draw):
        return torch.stack([((draw() - g) ** 2).sum() for _ in range(repeats)]).mean().item()

    rows.append({"estimator": "plain REINFORCE (whole return)",
                 "mse": mse(lambda: estimate(reinforce_loss(work, episodes), work))})
    for baseline in ("auto", "none", "avg", "loo", "critic"):
        est = scg.compile(work.model, baseline=baseline)
        if baseline in ("avg", "critic"):
            warm(est, episodes)
        rows.append({"estimator": f"scg, baseline={baseline}",
                     "mse": mse(lambda est=est: estimate(est(episodes).loss, work))})
    rows.append({"estimator": "Pyro TraceGraph_ELBO, decaying-average baseline",
                 "mse": mse(tracegraph_estimator(work, episodes))})
    for r in rows:
        r["reduction"] = rows[0]["mse"] / r["mse"]
    return {"setup": f"10-unit chain, reward at every unit, {episodes} episodes per estimate, "
                     f"{repeats} estimates, parameters drawn N(0, 1); MSE = E|g_hat - grad J|^2 "
                     "with grad J exact (forward recursion + autograd).", "rows": rows}


# ---- shared measurement ----------------------------------------------------------------------
def squared_errors(draw, g, repeats):
    """|draw() - g|^2 over ``repeats`` independent draws (a float64 tensor)."""
    return torch.stack([((draw().detach() - g) ** 2).sum() for _ in range(repeats)]).double()


def summary(err):
    """MSE and the standard error of log MSE (delta method: sd(err) / (sqrt(n) MSE))."""
    m = err.mean().item()
    se = (err.std().item() / math.sqrt(len(err)) / m) if len(err) > 1 and m > 0 else 0.0
    return m, se


def scg_draw(est, params, *args):
    """One scg gradient estimate: -grad of the loss of one call (the critics' regression terms
    have no gradient to the policy's parameters)."""
    def draw():
        grads = torch.autograd.grad(est(*args).loss, params, allow_unused=True)
        return -flat([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
    return draw


# ---- random coagent networks -----------------------------------------------------------------
def random_networks_table(networks=20, episodes=8, repeats=300, warm_iters=600, warm_batch=64,
                          max_space=4096, rewards="normal", seed=0, oracle=True, log=None):
    """Each estimator's gradient MSE on ``networks`` random coagent networks (seeds ``seed``,
    ``seed + 1``, ...), as a ratio to plain whole-return REINFORCE's MSE on the same network;
    the geometric mean of the ratios over networks, with a 95% interval for its Monte Carlo
    error (delta method on each MSE; the networks are a fixed sample)."""
    names = ["plain REINFORCE (whole return)", "hand: causal credit, b = 0"]
    if oracle:
        names += ["oracle: b = E[G_s | parents] exact", "oracle: b = E[G_s | history] exact"]
    names += [f"scg, baseline={b}" for b in BASELINES] + ["scg, baseline=critic, state=parents"]
    per = {n: [] for n in names}
    nets = []
    for k in range(networks):
        net = RandomNetwork(seed + k, max_space=max_space, rewards=rewards)
        torch.manual_seed(seed + k)
        J, g = net.exact()
        draws = {names[0]: partial(net.reinforce, episodes),
                 names[1]: partial(net.causal, episodes)}
        if oracle:
            for name, given in ((names[2], "parents"), (names[3], "history")):
                draws[name] = partial(net.causal, episodes, net.value_tables(given))
        for b in BASELINES + ("critic+state",):
            state = b == "critic+state"
            kind = "critic" if state else b
            est = scg.compile(net.model(state=state), baseline=kind)
            if kind in ("avg", "critic"):
                warm(est, warm_batch if kind == "critic" else episodes,
                     iters=warm_iters if kind == "critic" else 50)
            name = "scg, baseline=critic, state=parents" if state else f"scg, baseline={b}"
            draws[name] = scg_draw(est, net.params, episodes)
        t0 = time.perf_counter()
        res = {n: summary(squared_errors(draws[n], g, repeats)) for n in names}
        for n in names:
            per[n].append(res[n])
        nets.append({"network": net.describe(), "J": J.item(), "grad_norm": g.norm().item(),
                     "mse": {n: res[n][0] for n in names}})
        if log:
            base = res[names[0]][0]
            log(f"  {net.describe()}  ({time.perf_counter() - t0:.0f} s)\n    " +
                "  ".join(f"{n.replace('scg, baseline=', '')[:14]}: {res[n][0] / base:.3f}"
                          for n in names[1:]))
    rows = []
    for n in names:
        logs = [math.log(m / r[0]) for (m, _), r in zip(per[n], per[names[0]])]
        ses = [math.hypot(s, r[1]) if n != names[0] else 0.0
               for (_, s), r in zip(per[n], per[names[0]])]
        mean, se = sum(logs) / len(logs), math.sqrt(sum(s * s for s in ses)) / len(logs)
        rows.append({"estimator": n, "ratio": math.exp(mean),
                     "ratio_lo": math.exp(mean - 1.96 * se), "ratio_hi": math.exp(mean + 1.96 * se),
                     "ratio_min": math.exp(min(logs)), "ratio_max": math.exp(max(logs))})
    return {"setup": f"{networks} random coagent networks (benchmarks/networks.py, seeds "
                     f"{seed}..{seed + networks - 1}: 2-3 steps, 2-4 slots per step, Bernoulli/"
                     "Categorical tabular messages reading random earlier sites, env sites, "
                     f"rewards at every step, entries {REWARD_TEXT[rewards]}, joint space <= "
                     f"{max_space}); "
                     f"{episodes} episodes per estimate (scg.episodes({episodes})), {repeats} "
                     "estimates per estimator and network; exact gradient by enumeration. "
                     f"avg warmed by 50 calls; critic trained by {warm_iters} Adam steps "
                     f"(lr 1e-2) of {warm_batch} episodes at the fixed policy. Ratio = "
                     "MSE / plain REINFORCE's MSE, geometric mean over networks (95% interval "
                     "of its Monte Carlo error; min and max over networks).",
            "rewards": rewards, "rows": rows, "networks": nets}


REWARD_TEXT = {"normal": "N(0, 1)", "uniform": "uniform in [0, 1]"}


# ---- the zoo's gridworlds --------------------------------------------------------------------
def reinforce_from_sites(est, params, gamma, *args):
    """Plain REINFORCE from one scg run's recorded sites: every message's (masked) score times
    the episode's whole discounted return, no baseline, no causality."""
    def draw():
        out = est(*args)
        lp, ret = 0.0, 0.0
        for s in out.sites:
            if s.role == "message":
                v = s.fn.log_prob(s.value)
                lp = lp + (v if s.mask is None else torch.where(s.mask, v, 0.0))
            elif s.role == "reward":
                v = s.fn.v.expand(s.fn.batch_shape)
                v = v if s.mask is None else torch.where(s.mask, v, 0.0)
                ret = ret + gamma ** s.time * v.detach()
        grads = torch.autograd.grad((lp * ret).mean(), params, allow_unused=True)
        return flat([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
    return draw


def reference_gradient(est, params, inputs, chunks, size):
    """The mean of ``chunks`` leave-one-out estimates of ``size`` episodes each, and its
    squared standard error summed over coordinates (trace of the mean's covariance)."""
    gs = torch.stack([scg_draw(est, params, *inputs(size))().detach() for _ in range(chunks)])
    return gs.mean(0), (gs.var(0).sum() / chunks).item()


class Residuals:
    """A transparent wrapper of an estimator's baseline (the ``Baseline`` protocol of
    :mod:`scg.estimators.baselines`: ``baseline(group, R, sites, update) -> (b, regressions)``)
    that adds up, over the unmasked elements of every site whose distribution has a parameter
    that requires grad, (R - b)^2 for its own b and for leave-one-out's on the same R: how well
    a critic fits, next to loo, on the draws being measured. It changes nothing it returns."""

    def __init__(self, inner):
        self.inner, self.loo = inner, LeaveOneOut()
        self.own = self.other = self.count = 0.0

    def __call__(self, group, R, sites, update):
        b, regressions = self.inner(group, R, sites, update)
        loo, _ = self.loo(group, R, sites, update)
        with torch.no_grad():
            for k, i in enumerate(group.index):
                s = sites[i]
                if not any(p.requires_grad for p in canonical_params(s.fn).values()):
                    continue
                m = torch.ones_like(R[k], dtype=torch.bool) if s.mask is None else \
                    s.mask.expand_as(R[k])
                self.own += ((R[k] - b[k]) ** 2)[m].sum().item()
                self.other += ((R[k] - loo[k]) ** 2)[m].sum().item()
                self.count += m.sum().item()
        return b, regressions

    def __getattr__(self, name):
        return getattr(self.inner, name)


def zoo_case(title, network, params, inputs, gamma, exact=None, episodes=16, repeats=200,
             warm_iters=1000, warm_lr=1e-2, warm_batch=64, reference=(16, 8192), log=None):
    """MSE of each estimator of ``network`` (a function of ``inputs(N)``) at batch ``episodes``
    against ``exact`` (if given) or a large-batch reference gradient."""
    t0 = time.perf_counter()
    ref_est = scg.compile(network, gamma=gamma, baseline="loo")
    ref, ref_se2 = reference_gradient(ref_est, params, inputs, *reference)
    case = {"case": title, "episodes": episodes, "repeats": repeats,
            "reference": {"episodes": reference[0] * reference[1], "chunks": reference[0],
                          "se2": ref_se2, "norm": ref.norm().item()}}
    target = ref if exact is None else exact
    case["against"] = "reference" if exact is None else "exact"
    if exact is not None:
        case["reference"]["err2_vs_exact"] = ((ref - exact) ** 2).sum().item()
        case["exact_norm"] = exact.norm().item()
    draws = {"plain REINFORCE (whole return)":
             _per_call_reinforce(network, params, gamma, inputs, episodes)}
    fit = None
    for b in ("none", "auto", "loo", "avg", "critic"):
        est = scg.compile(network, gamma=gamma, baseline=b)
        if b == "avg":
            warm(est, iters=50, calls=lambda: inputs(episodes))
        if b == "critic":
            warm(est, iters=warm_iters, lr=warm_lr, calls=lambda: inputs(warm_batch))
            est.baseline = fit = Residuals(est.baseline)
        draws[f"scg, baseline={b}"] = _per_call(est, params, inputs, episodes)
    rows = []
    for name, draw in draws.items():
        err = squared_errors(draw, target, repeats)
        m, se = summary(err)
        rows.append({"estimator": name, "mse": m, "se_log": se})
    base = {r["estimator"]: r["mse"] for r in rows}
    for r in rows:
        r["vs_reinforce"] = r["mse"] / base["plain REINFORCE (whole return)"]
        r["vs_loo"] = r["mse"] / base["scg, baseline=loo"]
    case["rows"] = rows
    case["critic_over_loo"] = base["scg, baseline=critic"] / base["scg, baseline=loo"]
    case["critic_fit"] = {"critic_residual": fit.own / fit.count,
                          "loo_residual": fit.other / fit.count}
    case["seconds"] = time.perf_counter() - t0
    if log:
        log(f"  {title}: {case['seconds']:.0f} s")
    return case


def _per_call(est, params, inputs, n):
    def draw():
        return scg_draw(est, params, *inputs(n))()
    return draw


def _per_call_reinforce(network, params, gamma, inputs, n):
    est = scg.compile(network, gamma=gamma, baseline="none")

    def draw():
        return reinforce_from_sites(est, params, gamma, *inputs(n))()
    return draw


def gridworld_tables(episodes=16, repeats=200, warm_iters=1000, warm_lr=1e-2, warm_batch=64,
                     reference=(16, 8192), grid=(4, 4, 30), four_rooms_horizon=16, seed=0,
                     log=None):
    """The asynchronous gridworld and the option-critic on Four Rooms, parameters drawn
    N(0, 1) (seeded): each estimator's MSE at ``episodes`` episodes per estimate."""
    from scg.models.async_gridworld import Gridworld
    from scg.models.four_rooms import GAMMA, FourRooms
    from scg.models.option_critic import OptionCritic

    cases = []
    gen = torch.Generator().manual_seed(seed)
    world = Gridworld(*grid)
    th = world.units(torch.float64)
    with torch.no_grad():
        for k in ("u1", "u2", "pi"):
            th[k].copy_(torch.randn(th[k].shape, generator=gen, dtype=th[k].dtype))
    params = [th["u1"], th["u2"], th["pi"]]
    exact = flat(torch.autograd.grad(world.exact_objective(th), params)).detach()
    torch.manual_seed(seed)
    cases.append(zoo_case(f"async gridworld {grid[0]}x{grid[1]}, horizon {grid[2]}",
                          world.episodes(th), params, lambda n: (n,), 1.0, exact=exact,
                          episodes=episodes, repeats=repeats, warm_iters=warm_iters,
                          warm_lr=warm_lr, warm_batch=warm_batch, reference=reference,
                          log=log))

    oc = OptionCritic(FourRooms(), options=4, runs=1, dtype=torch.float64)
    with torch.no_grad():
        for p in oc.units.values():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    w = oc.world

    def inputs(n):   # uniform start over the other cells, drawn afresh per call
        goal = torch.full((n,), w.goal)
        return w.starts(n, goal), goal, torch.zeros(n, dtype=torch.long), four_rooms_horizon

    torch.manual_seed(seed)
    cases.append(zoo_case(f"option-critic, Four Rooms, horizon {four_rooms_horizon}, uniform "
                          "start", oc.episodes(), list(oc.units.values()), inputs, GAMMA,
                          episodes=episodes, repeats=repeats, warm_iters=warm_iters,
                          warm_lr=warm_lr, warm_batch=warm_batch, reference=reference,
                          log=log))
    setup = (f"Parameters drawn N(0, 1) (seed {seed}); {episodes} episodes per estimate, "
             f"{repeats} estimates per estimator; avg warmed by 50 calls; critic (its input: "
             f"the coagents' state=, one-hot cells and options, plus t) trained by {warm_iters} "
             f"Adam steps (lr {warm_lr:g}) of {warm_batch} episodes at the fixed policy. Reference "
             f"gradient: the mean of {reference[0]} leave-one-out estimates of {reference[1]} "
             "episodes each; the async gridworld's MSE is against its exact gradient "
             "(backward induction, Gridworld.exact_objective), the option-critic's against "
             "the reference (se2: the reference's own expected squared error, to compare with "
             "the MSEs).")
    return {"setup": setup, "cases": cases}


# ---- the command -----------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)   # tiny tensors: one thread is several times faster
    results = run(quick=args.quick, log=print)
    print_tables(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")
    return results


def run(quick=False, log=None):
    """Every table; ``quick``: tiny sizes (seconds), for a smoke test."""
    t0 = time.perf_counter()
    if quick:
        nets = [random_networks_table(networks=2, episodes=4, repeats=4, warm_iters=3,
                                      warm_batch=8, max_space=64, rewards=r, log=log)
                for r in ("normal", "uniform")]
        grids = gridworld_tables(episodes=4, repeats=3, warm_iters=2, warm_batch=8,
                                 reference=(2, 64), grid=(2, 2, 4), four_rooms_horizon=3,
                                 log=log)
    else:
        nets = [random_networks_table(rewards=r, log=log) for r in ("normal", "uniform")]
        grids = gridworld_tables(log=log)
    return {"random_networks": nets, "gridworlds": grids, "quick": quick,
            "seconds": time.perf_counter() - t0,
            "machine": f"{torch.get_num_threads()} threads, torch {torch.__version__}"}


def print_tables(results):
    for nets in results["random_networks"]:
        print(f"random coagent networks, rewards {REWARD_TEXT[nets['rewards']]}: gradient MSE / "
              "plain REINFORCE's (geometric mean over networks)")
        for r in nets["rows"]:
            print(f"  {r['estimator']:40s} {r['ratio']:7.3f}x  (95% {r['ratio_lo']:.3f}-"
                  f"{r['ratio_hi']:.3f}; networks {r['ratio_min']:.3f}-{r['ratio_max']:.3f})")
    for case in results["gridworlds"]["cases"]:
        ref = case["reference"]
        extra = (f", |ref - exact|^2 {ref['err2_vs_exact']:.3g}"
                 if "err2_vs_exact" in ref else "")
        print(f"{case['case']}: {case['episodes']} episodes per estimate; reference "
              f"{ref['episodes']} episodes, se^2 {ref['se2']:.3g}{extra}")
        for r in case["rows"]:
            print(f"  {r['estimator']:40s} MSE {r['mse']:10.4g}  / REINFORCE "
                  f"{r['vs_reinforce']:6.3f}  / loo {r['vs_loo']:6.3f}")
        fit = case["critic_fit"]
        print(f"  critic / loo: {case['critic_over_loo']:.3f}   (mean (G - b)^2 per score "
              f"element: critic {fit['critic_residual']:.4g}, loo {fit['loo_residual']:.4g})")


def markdown(results):
    """The tables of :func:`run`'s results as Markdown lines (for docs/performance.md)."""
    lines = []
    for nets in results["random_networks"]:
        lines += ["", f"Random coagent networks, rewards {REWARD_TEXT[nets['rewards']]}: "
                  "gradient MSE as a ratio to plain REINFORCE's (geometric mean over "
                  "networks, its 95% interval, and the range over networks).", "",
                  "| estimator | MSE / REINFORCE | 95% | networks |", "|---|---:|---:|---:|"]
        lines += [f"| {_cell(r['estimator'])} | {r['ratio']:.3f} | {r['ratio_lo']:.3f}-"
                  f"{r['ratio_hi']:.3f} | {r['ratio_min']:.3f}-{r['ratio_max']:.3f} |"
                  for r in nets["rows"]]
    lines += ["", results["random_networks"][0]["setup"]]
    for case in results["gridworlds"]["cases"]:
        lines += ["", f"{case['case']}: {case['episodes']} episodes per estimate, "
                  f"{case['repeats']} estimates, MSE against the "
                  f"{'exact gradient' if case['against'] == 'exact' else 'reference gradient'}.",
                  "", "| estimator | MSE | / REINFORCE | / leave-one-out |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {_cell(r['estimator'])} | {r['mse']:.4g} | {r['vs_reinforce']:.3f} | "
                  f"{r['vs_loo']:.3f} |" for r in case["rows"]]
    lines += ["", results["gridworlds"]["setup"]]
    return lines


def _cell(text):
    return text.replace("|", "\\|")   # a Markdown table cell


if __name__ == "__main__":
    main()
