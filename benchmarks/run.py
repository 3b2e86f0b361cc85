"""scg's benchmarks: one command, a printed table, JSON, and docs/performance.md.

    python benchmarks/run.py            # chains to N = 1,000, layer, talking agents, online
                                        # actor-critic, compile time, variance (a few
                                        # minutes on 2 CPU cores)
    python benchmarks/run.py --full     # also the depth-10,000 chain and its peak memory
    python benchmarks/run.py --quick    # tiny sizes (a smoke run)

Per-iteration time (forward, backward, optimiser step) is measured against a hand-written torch
loss computing the same estimator (tests/test_benchmarks.py checks they give equal gradients),
side by side in the same run: scg and hand-written iterations alternate, and the table reports
medians and their ratio.
"""

import argparse
import gc
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scg  # noqa: E402
from benchmarks import dice  # noqa: E402
from benchmarks.variance import variance_table  # noqa: E402
from benchmarks.workloads import Chain, Layer, OnlineWalk, TalkingAgents  # noqa: E402


def timed(fn, mode=None):
    """Seconds of one call of ``fn`` (under a fresh ``mode()``, a TorchFunctionMode, if given)."""
    if mode is not None:
        with mode():
            return timed(fn)
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def per_iteration(work, repeats, warmup=2, clock=timed):
    """Median seconds per iteration of scg and of the hand-written loss, alternating."""
    for _ in range(warmup):
        work.scg_iteration()
        work.hand_iteration()
    s, h = [], []
    for _ in range(repeats):
        s.append(clock(work.scg_iteration))
        h.append(clock(work.hand_iteration))
    return statistics.median(s), statistics.median(h)


def reps_pyro(n, args):
    return 3 if args.quick else (10 if n <= 10 else 3)


def gridworld_throughput(batch, iterations=5, device="cpu"):
    """Environment steps per second of the episodic asynchronous gridworld network (estimator
    call, backward and SGD step included); steps are live (not yet finished) episode-steps.
    On CUDA the clock stops after a device synchronisation."""
    from scg.models.async_gridworld import Gridworld

    world = Gridworld(4, 4, 30)
    th = world.units(dtype=torch.float32, device=device)
    est = scg.compile(world.episodes(th), baseline="loo")
    opt = torch.optim.SGD(th.parameters(), lr=0.01)
    est(batch)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    steps, seconds = 0, 0.0
    for _ in range(iterations):
        sync()
        t = time.perf_counter()
        out = est(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sync()
        seconds += time.perf_counter() - t
        steps += sum(int(s.mask.sum()) if s.mask is not None else s.fn.batch_shape.numel()
                     for s in out.sites if s.role == "reward")
    return {"batch": batch, "steps_per_s": steps / seconds, "device": device}


def autograd_walk():
    """The online step with the reference that takes per-episode gradients from autograd."""
    work = OnlineWalk()
    work.hand_iteration = work.autograd_iteration
    return work


class PassThrough(TorchFunctionMode):
    """A ``TorchFunctionMode`` that does nothing but call each operation: what a run pays for
    a Python handler per torch operation before any bookkeeping (the provenance tracker's
    floor)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def compile_time(N):
    """The first calls of a depth-N chain against a steady call (seconds, each a forward and
    backward pass): ``first`` of a fresh estimator (trace, provenance analysis, graph, passes,
    plan), and for an estimator already analysed at another horizon, the ``new`` horizon's
    first call (the sequential plan, no provenance run) and ``again``, its second (analysed by
    replaying the run), then ``steady``."""
    work = Chain(N, B=8)
    gc.collect()   # garbage of earlier workloads is not compile time (a collection lands here)
    first = timed(work.scg_iteration)
    steady = statistics.median(timed(work.scg_iteration) for _ in range(3))
    dispatch = statistics.median(timed(work.scg_iteration, mode=PassThrough) for _ in range(3))
    w, b = work.w, work.b

    @scg.network
    def chain(B, T):
        with scg.episodes(B):
            x = torch.zeros(B)
            for t in scg.steps(T):
                x = scg.message("x", dist.Bernoulli(logits=w[t] * x + b[t]), coagent="u")
                scg.reward("r", x)

    est = scg.compile(chain, baseline="none")
    est(8, max(N // 2, 1)).loss.backward()
    gc.collect()
    new = timed(lambda: est(8, N).loss.backward())
    again = timed(lambda: est(8, N).loss.backward())
    steady_h = statistics.median(timed(lambda: est(8, N).loss.backward()) for _ in range(3))
    return {"depth": N, "first_s": first, "steady_s": steady, "dispatch_s": dispatch,
            "new_s": new, "again_s": again,
            "steady_h_s": steady_h, "compile_s": first - steady,
            "per_site_ms": 1e3 * (first - steady) / (2 * N)}


def dice_update(args):
    """One LOLA-DiCE update (benchmarks/dice.py: batch 128, T = 150, gamma 0.96): scg's
    ``order="any"`` surrogates against DiCE written in plain torch, alternating, medians; and
    scg's update in parts (trace, emit, autograd)."""
    size = dict(batch=16, T=10) if args.quick else dict(batch=128, T=150)
    reps = 3 if args.quick else 30
    ms, skipped = dice.measure(argparse.Namespace(**size, gamma=0.96, repeats=reps, warmup=3))
    if skipped:
        raise RuntimeError(f"benchmarks/dice.py skipped {skipped}")
    s, h, w = ms["scg order='any'"], ms["hand-written torch"], ms["hand-written, per step"]
    return {**size, "gamma": 0.96, "scg_ms": s, "hand_ms": h, "ratio": s / h,
            "step_ms": w, "step_ratio": s / w,
            "phases": dice.phases(size["batch"], size["T"], 0.96, reps)}


def peak_memory(N):
    """Peak resident memory (MiB) of a process that compiles and trains a depth-N chain."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from benchmarks.workloads import Chain\n"
            "import resource\n"
            "w = Chain(%d, B=8)\n"
            "for _ in range(3): w.scg_iteration()\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n") % (str(ROOT), N)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="include depth 10,000")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    ap.add_argument("--docs", default=str(ROOT / "docs" / "performance.md"))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: these models' ops are small, and "
                         "a second thread on a busy core makes them wait)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    chains = [10, 100] if args.quick else [10, 100, 1000] + ([10000] if args.full else [])
    results = {"machine": f"{platform.processor() or platform.machine()}, "
                          f"{torch.get_num_threads()} threads, torch {torch.__version__}",
               "iteration": [], "compile": [], "variance": None, "memory": None}

    print("per-iteration time (median; scg / hand-written torch)")
    reps = {10: 60, 100: 30, 1000: 9, 10000: 3}
    works = [(f"chain N={n}", lambda n=n: Chain(n), reps[n]) for n in chains]
    works += [("layer of 300 units", lambda: Layer(300 if not args.quick else 30), 100),
              ("talking agents (GRU, batch 512, 16 steps)",
               lambda: TalkingAgents(B=64, T=4) if args.quick else TalkingAgents(), 10),
              ("online actor-critic step (td, 32 walks)", lambda: OnlineWalk(), 200),
              ("online step, against autograd's per-episode gradients", autograd_walk, 200)]
    for name, make, reps in works:
        s, h = per_iteration(make(), 3 if args.quick else reps)
        results["iteration"].append({"workload": name, "scg_ms": 1e3 * s, "hand_ms": 1e3 * h,
                                     "ratio": s / h})
        print(f"  {name:44s} scg {1e3 * s:9.2f} ms   hand {1e3 * h:9.2f} ms   "
              f"ratio {s / h:5.2f}")

    print("second-order surrogate: one LOLA-DiCE update on the IPD (median; scg order='any' / "
          "DiCE in plain torch)")
    results["dice"] = dice_update(args)
    d, p = results["dice"], results["dice"]["phases"]
    print(f"  batch {d['batch']}, T = {d['T']}   scg {d['scg_ms']:9.2f} ms   hand "
          f"{d['hand_ms']:9.2f} ms   ratio {d['ratio']:5.2f}   per-step hand "
          f"{d['step_ms']:9.2f} ms   ratio {d['step_ratio']:5.2f}   (scg: trace "
          f"{p['trace']:.2f}, emit {p['emit']:.2f}, autograd {p['grads']:.2f} ms)")

    print("Pyro's formulation of the same chains (Trace_ELBO, TraceGraph_ELBO) / hand-written")
    results["pyro"] = []
    for n in [10, 100]:
        work = Chain(n)
        for name, elbo in (("Trace_ELBO", pyro.infer.Trace_ELBO()),
                           ("TraceGraph_ELBO", pyro.infer.TraceGraph_ELBO())):
            run = lambda elbo=elbo, work=work: work.pyro_iteration(elbo)  # noqa: E731
            times = [(timed(run), timed(work.hand_iteration)) for _ in range(reps_pyro(n, args))]
            p, h = (statistics.median(x) for x in zip(*times))
            results["pyro"].append({"workload": f"chain N={n}", "elbo": name,
                                    "pyro_ms": 1e3 * p, "hand_ms": 1e3 * h, "ratio": p / h})
            print(f"  chain N={n:<5d} {name:16s} pyro {1e3 * p:9.2f} ms   hand {1e3 * h:9.2f} "
                  f"ms   ratio {p / h:6.2f}")

    print("throughput: batched asynchronous gridworld (batch 1,024), environment steps / s")
    results["throughput"] = gridworld_throughput(64 if args.quick else 1024)
    print(f"  {results['throughput']['steps_per_s']:.0f} steps/s on "
          f"{results['throughput']['device']}")

    print("first calls against depth (seconds; ratios to a steady call)")
    for n in chains:
        c = compile_time(n)
        results["compile"].append(c)
        print(f"  depth {n:6d}   fresh {c['first_s']:8.3f} s ({c['first_s'] / c['steady_s']:5.2f}x)"
              f"   new horizon {c['new_s']:8.3f} s ({c['new_s'] / c['steady_h_s']:5.2f}x)"
              f"   again {c['again_s']:8.3f} s ({c['again_s'] / c['steady_h_s']:5.2f}x)"
              f"   steady {c['steady_s']:8.3f} s"
              f"   dispatch alone {c['dispatch_s'] / c['steady_s']:5.2f}x")

    print("gradient variance on a 10-unit chain (MSE against the exact gradient)")
    results["variance"] = variance_table(episodes=8, repeats=50 if args.quick else 400)
    for row in results["variance"]["rows"]:
        print(f"  {row['estimator']:36s} MSE {row['mse']:.5f}   "
              f"REINFORCE / this {row['reduction']:6.1f}x")

    if args.full:
        results["memory"] = {"depth": 10000, "peak_mib": peak_memory(10000)}
        print(f"peak memory, depth-10,000 chain: {results['memory']['peak_mib']:.0f} MiB")
    results["self_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    Path(args.out).write_text(json.dumps(results, indent=1))
    if not args.quick:
        Path(args.docs).write_text(page(results, args))
    print(f"wrote {args.out}" + ("" if args.quick else f" and {args.docs}"))


def page(r, args):
    lines = ["# Performance", "",
             "*Generated by `python benchmarks/run.py"
             f"{' --full' if args.full else ''}`; do not edit by hand.* Machine: {r['machine']}.",
             "",
             "## Time per training iteration", "",
             "Forward, backward and an optimiser step, against a hand-written torch loss "
             "computing the same estimator (equal gradients on equal draws: "
             "`tests/test_benchmarks.py`). Iterations alternate; medians.", "",
             "| workload | scg (ms) | hand-written (ms) | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {x['workload']} | {x['scg_ms']:.2f} | {x['hand_ms']:.2f} | {x['ratio']:.2f} |"
              for x in r["iteration"]]
    lines += ["", "The online actor-critic step (`OnlineWalk`: one-step windows of "
              "`estimator=\"td\"` on a tabular corridor, traces and `finish(done=...)` every "
              "step) is compared with the same update written by hand twice: with the tabular "
              "score in closed form and no autograd, and with per-episode gradients from "
              "autograd (one batched backward pass of log pi + V per step, as for a neural "
              "policy; both references give the same parameters, `tests/test_benchmarks.py`). "
              "The first ratio is the price of tracing a window through Pyro and of any "
              "per-episode backward pass, which dominate when the model is this small."]
    d = r.get("dice")
    if d:
        p = d["phases"]
        lines += ["", "## Second-order surrogate (LOLA-DiCE)", "",
                  f"One LOLA-DiCE update on the iterated prisoner's dilemma "
                  f"(`benchmarks/dice.py`: batch {d['batch']}, T = {d['T']}, gamma "
                  f"{d['gamma']}): both agents' DiCE objectives from one batch of episodes, "
                  "their first-order gradients with `create_graph=True` and agent 1's mixed "
                  "second-order LOLA term, one more backward pass. scg "
                  "(`scg.models.ipd.compile_ipd`: `order=\"any\"`, leave-one-out baselines, "
                  "`out.local[agent]`) against the same update written by hand in plain torch "
                  "(`scg.models.ipd_exact.sample_dice`, which samples the episodes in a "
                  "no-grad loop and takes every log-probability in a handful of [T, batch] "
                  "operations), and against it written by hand the way the scg model is "
                  "written (`benchmarks/dice.py`'s `stepwise_update`: one "
                  "`torch.distributions.Bernoulli` per agent and step, the same DiCE "
                  "objectives); updates alternate, medians.", "",
                  "| workload | scg (ms) | hand-written (ms) | ratio | hand-written per step "
                  "(ms) | ratio |", "|---|---:|---:|---:|---:|---:|",
                  f"| LOLA-DiCE update (batch {d['batch']}, T = {d['T']}) | {d['scg_ms']:.2f} | "
                  f"{d['hand_ms']:.2f} | {d['ratio']:.2f} | {d['step_ms']:.2f} | "
                  f"{d['step_ratio']:.2f} |", "",
                  f"scg's update in parts (median ms, `python benchmarks/dice.py --phases`): "
                  f"the model's run through Pyro, recording its {4 * d['T']} sites, "
                  f"{p['trace']:.2f}; the surrogates (`scg/estimators/dice.py`) "
                  f"{p['emit']:.2f}; the three autograd passes {p['grads']:.2f}; the whole "
                  f"hand-written update {p['hand']:.2f} in the same loop."]
    lines += ["", "## First calls against depth", "",
              "A chain with a reward at every unit (2 sites per unit), each call a forward and "
              "backward pass, as a ratio to a steady call. *Fresh*: the first call of an "
              "estimator (trace, provenance analysis, graph, passes, plan; compile = fresh - "
              "steady). *New horizon*: the first call at depth N of an estimator analysed at "
              "depth N/2, served by the sequential plan without a provenance run; *again*: its "
              "second call, analysed by replaying the run. *Dispatch alone*: a steady call "
              "run under a `TorchFunctionMode` that only calls each operation, the price of a "
              "Python handler per torch operation before any provenance bookkeeping (the "
              "tracked run also scores each site once more, so it has more operations).", "",
              "| depth | fresh (s) | fresh / steady | compile per site (ms) | new horizon / "
              "steady | again / steady | dispatch alone / steady |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {x['depth']} | {x['first_s']:.3f} | {x['first_s'] / x['steady_s']:.2f} | "
              f"{x['per_site_ms']:.3f} | {x['new_s'] / x['steady_h_s']:.2f} | "
              f"{x['again_s'] / x['steady_h_s']:.2f} | {x['dispatch_s'] / x['steady_s']:.2f} |"
              for x in r["compile"]]
    lines += ["", "## Pyro's formulation", "",
              "The same chains written for Pyro's SVI (the policy as model and guide, rewards as "
              "`pyro.factor`), per iteration against the hand-written loss:", "",
              "| workload | ELBO | Pyro (ms) | hand-written (ms) | ratio |",
              "|---|---|---:|---:|---:|"]
    lines += [f"| {x['workload']} | {x['elbo']} | {x['pyro_ms']:.2f} | {x['hand_ms']:.2f} | "
              f"{x['ratio']:.2f} |" for x in r["pyro"]]
    t = r["throughput"]
    lines += ["", "## Throughput", "",
              f"Batched asynchronous gridworld network (batch {t['batch']}, 4x4, horizon 30, "
              "estimator call + backward + SGD step): "
              f"{t['steps_per_s']:.0f} environment steps per second on {t['device']}."]
    stored_gpu = ROOT / "benchmarks" / "gpu.json"
    if stored_gpu.exists():
        from benchmarks.gpu import markdown as gpu_markdown
        lines += ["", "## On a GPU", ""] + gpu_markdown(json.loads(stored_gpu.read_text()))
    else:
        lines += ["", "No stored `benchmarks/gpu.json`: the "
                  "CUDA rows (the talking agents at batch 4,096 and the gridworld on the GPU) "
                  "are written by `python benchmarks/gpu.py` on a machine with one."]
    v = r["variance"]
    lines += ["", "## Gradient variance", "",
              f"{v['setup']}", "",
              "| estimator | gradient MSE | REINFORCE MSE / this |", "|---|---:|---:|"]
    lines += [f"| {x['estimator']} | {x['mse']:.5f} | {x['reduction']:.1f} |" for x in v["rows"]]
    stored = ROOT / "benchmarks" / "variance.json"
    if stored.exists():
        from benchmarks.variance import markdown
        lines += ["", "## Gradient variance on random networks and the zoo", "",
                  "From `benchmarks/variance.json`, written by `python benchmarks/variance.py "
                  "--out benchmarks/variance.json` (about 30 minutes on one thread; not rerun "
                  "by this command), every baseline against plain REINFORCE and the "
                  "exact-value-baseline oracles."]
        lines += markdown(json.loads(stored.read_text()))
    if r["memory"]:
        lines += ["", "## Memory", "",
                  f"Peak resident memory of a process compiling and training the depth-10,000 "
                  f"chain: {r['memory']['peak_mib']:.0f} MiB."]
    lines += ["", "Targets: ≤ 1.15× on the talking agents, ≤ 1.5× on chains up to N = 10,000, "
              "compile linear in depth, ≥ 18× lower gradient MSE than plain REINFORCE on the "
              "10-unit chain, ≤ 1.25× on the chain of 10 and the layer (met); ≤ 1.5× on the "
              "online step (met against autograd's per-episode gradients, not against the "
              "closed-form tabular update), ≤ 1.5× on the LOLA-DiCE update and the first "
              "call within 2× a steady call (not met: see below); "
              "defaults ≤ 0.25× REINFORCE's MSE on random networks and a local-state critic "
              "below leave-one-out on both gridworlds (met).", ""]
    lines += NOTES
    return "\n".join(lines)


NOTES = """## Where the time goes, and what was changed

Profiled with cProfile (`python -m cProfile -s tottime`) on the chains:

- **Credit** was a dense sites × costs matrix per group (800 MB and 10^8 Python iterations at
  depth 10,000; the causal pass ran `nx.descendants` per site, quadratic on a chain). Now the
  causal pass is one reverse pass of bitsets, each site's downstream costs are runs of
  consecutive costs, and returns come from discounted suffix sums (a log-depth scan): linear
  in sites + runs (`scg/plan.py`, `tests/test_credit.py`).
- **Pyro's plate broadcast** called `dist.expand` on every site even when the batch shape
  already matched (a no-op costing more than the site); scg's plates skip it then. Rewards
  build their `Delta` without validation and skip shape broadcasting when shapes match.
- **Provenance tracking** (first call only) went through `torch.utils._pytree` on every op;
  flat arguments are now walked directly (the compile-time table above is after this).
- **Scoring** computed one validated `log_prob` per site; a group of Bernoulli or Categorical
  sites is now one distribution over stacked logits (one call; same values and gradients,
  `tests/test_api.py`); on the chains this was the largest single saving.
- **Small models and the online step.** Per call, scg no longer waits for the device: the
  NaN check of costs is one fused check (on the CPU always, on an accelerator under
  `verify`), returns stay tensors (`Output.stats` converts when read), scg's plates skip the
  subsample site Pyro sends through the handler stack, and credit of the common shapes (a run
  to the end of the group, one per site) skips its no-op index and scatter. The online step
  takes one batched backward pass for actor and critic together (of `log p + V` when the value
  sites read no actor parameter). Its floor is that pass: per-episode gradients
  (`is_grads_batched`, a vmap) cost more than the whole closed-form update of the tabular
  reference, so the online row is also given against the same update with autograd's
  per-episode gradients, as one writes it for a neural policy.
- **Devices.** On an H200 (issue 16's one GPU session, torch 2.11) every Monte Carlo
  estimate first failed: a plan moved to the GPU read its shortcut flags again from the GPU
  tensors, against a CPU `arange`. The flags now travel with the plan, and the CPU suite runs
  every estimator, the gridworld and a LOLA-DiCE update on `meta` parameters (shapes without
  values: a value read or a CPU tensor mixed in raises) and records the host reads of steady
  calls with value checks answered as on a GPU (none are left). The GPU rows
  (`python benchmarks/gpu.py`) wait for a session with a GPU: the one lent this issue was
  withdrawn after the first run.
- **First calls.** The first call of an estimator is analysed as it happens: a run under
  provenance tracking costs several plain runs (a Python `TorchFunctionMode` handler per torch
  operation, about 26,000 of them on the depth-1,000 chain). Its bookkeeping per operation is
  one cached tuple of traits per function and a flat walk of the arguments; the tracker's own
  reads (a tensor's flags, its storage, an untracked copy) run with torch-function handling
  switched off, so they are not dispatched to the handler; and the owners' pass reuses the
  log-probabilities the analysis took, walking each coagent's autograd graph once (it walked a
  recurrent history once per step). That run went 194 → 130 ms over the issue and the
  analysis after it 50 → 30 ms: the fresh first call went from 4.6-5.8× to about 4× a steady
  call (the table). It cannot reach 2× as a Python mode: the *dispatch alone* column
  (1.6-1.8×) is what a handler that does nothing costs on a steady call's operations, before
  any bookkeeping, and the analysis after the run (graph, passes, plan) adds about 0.65×
  more. A structure met *later* (another horizon, episode length or branch) is served by
  the sequential plan (reward-to-go credit, unbiased for any run) with no provenance run,
  and analysed by replay when it comes again. Reusing one horizon's analysis for another
  without a run is not sound (a model may branch on `t` in Python), so a repeated new
  structure still pays one analysis.
- **Fixed cost per call** (the chain of 10 and the layer). A run with one coagent sums its
  score terms as scalars, in as few autograd nodes as it takes, and its local loss is its
  loss (no per-coagent scatter); a group of one site is a view of it (no `stack` to
  differentiate through); a run of credit over consecutive costs is a slice, not an index;
  the NaN check of the costs reads one number; a site's own draw is not re-validated by
  copying its distribution (`tests/test_emission.py` checks both reductions agree, critics
  included). Layer 1.41× → 1.22×, chain of 10 1.29× → 1.16×.
- **The garbage collector.** A run keeps its sites' containers alive to its end, so Python's
  cyclic collections during a run freed nothing but scanned every live object, more of them
  the longer the run: a third of a depth-10,000 call. `Estimator.run` pauses the collector
  for the run (`scg.core.record.paused_collector`; back on after it, also on an error). Chain
  N = 10,000 1.50× → 0.95×; its fresh first call 5.4 s → 3.3 s.
- **Per-site work.** A reward's point mass is built without Delta's generic constructor (no
  zero `log_density` the size of the batch); what the fast path needs of the handler stack
  (plates, masks, replaying handlers, recorders) is found once per state of the stack; an
  asynchronous unit's execution bit is applied as the site's mask without entering a
  `poutine.mask` per site (which changed the stack at every site); a cost group is stacked
  and cast once; undiscounted credit (gamma = 1) is one reversed cumulative sum instead of
  the log-depth scan; a Bernoulli or Categorical group's stacked logits are not validated
  again (each site validated its own; the values still are).
- What remains on chains is Pyro's per-site machinery (`pyro.sample`, a distribution
  object per site, a site record) against a hand-written loop that creates no site
  objects at all. Part of the gap is not scg's: the scg workloads sample from
  `pyro.distributions`, the hand-written losses from `torch.distributions`, and Pyro's
  Bernoulli samples more slowly than torch's on this CPU.
- **The LOLA-DiCE update** (the second-order row, target 1.5x, not met) is about 7x the
  vectorised hand-written update and about as fast as the same update written by hand one
  step at a time. The gap is the per-step form of the model, not the surrogate: the network
  has 4 sites per step (two messages, two rewards), 600 at T = 150, and each message takes
  one `gather` with a graph and a validated `Bernoulli`, so each of the three backward passes
  walks hundreds of nodes where the vectorised reference walks a handful. Written by hand in
  that same per-step form, with `torch.distributions`, the update costs as much as scg's:
  what scg adds (the handler stack, the site records, the surrogates) is no more than it saves
  by stacking each group's logits once (a function whose backward is one `unbind`:
  torch.stack's backward is one `select` per site, and the second-order pass turns each
  select into a zero tensor of the whole stack, quadratic in the group's size). Now a
  vectorised `pyro.plate` that does not subsample (the model's seeds plate) no
  longer sends every site through Pyro's generic handler stack, and the fast path's check of
  the stack runs once per state of the stack rather than once per site: in back-to-back
  `--phases` runs the model's run fell from about 80 to about 45 ms. Reaching 1.5x needs
  the log-probabilities of a whole rollout taken in one batched operation after the fact,
  which needs the model's per-step logits rebuilt from the recorded states: a model-specific
  rewrite that the reference makes by hand.
""".splitlines()


if __name__ == "__main__":
    main()
