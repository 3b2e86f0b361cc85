"""Training on Ray: time per update and throughput with 1 and 2 workers, against the same update
in one process, and the overhead Ray adds per update.

    python benchmarks/distributed.py [--quick] [--out results.json]

Workloads: the talking agents (two GRU agents, 16 steps) at batch 4,096, and the batched
asynchronous gridworld (4x4, horizon 30) at batch 1,024. Rows, per workload:

- *in process*: ``scg.Trainer`` without workers, one call of the network per update;
- *1 worker, 1 chunk*: the same update computed by one Ray actor (its extra time over the row
  above is Ray's overhead per update: shipping parameters and baseline state, the call, the
  gradients back, the learner's sum and step);
- *2 workers, 2 chunks*: two chunks per update in parallel (twice the episodes per update).

Each time is the median of a few updates after a warm-up. The machine's cores bound what two
workers can gain; the per-update overhead and the gradient size give the model of
docs/distributed.md for many workers.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scg  # noqa: E402  (before ray: keeps a local Ray on loopback)
from benchmarks.workloads import TalkingAgents  # noqa: E402
from scg.train import distributed  # noqa: E402


def talking(batch):
    work = TalkingAgents(B=batch)

    def inputs(step):   # the update's data, a function of the update number
        g = torch.Generator().manual_seed(step)
        D = [torch.randint(0, work.K, (batch,), generator=g)]
        for _ in range(work.T - 1):
            D.append(torch.multinomial(work.P[D[-1]], 1, generator=g).squeeze(-1))
        return torch.stack(D)
    return work.est.model, inputs, work.agents, {"baseline": "none"}


def gridworld(batch):
    from scg.models.async_gridworld import Gridworld
    world = Gridworld(4, 4, 30)
    th = world.units(dtype=torch.float32)
    return world.episodes(th), (lambda step: batch), th, {"baseline": "loo"}


def per_update(make, batch, workers, chunks, updates):
    """Median seconds per update (after one warm-up update) and the gradient's size."""
    model, inputs, modules, opts = make(batch)
    kw = {} if workers == 0 else {"workers": workers, "backend": "ray", "chunks": chunks}
    t = scg.Trainer(model, inputs, optimizer="adam", lr=1e-3, seed=0, progress=False,
                    modules=modules, verify=False, **opts, **kw)
    try:
        t.fit(1)
        times = []
        for k in range(updates):
            start = time.perf_counter()
            t.fit(k + 2)
            times.append(time.perf_counter() - start)
        size = sum(p.numel() * p.element_size() for p in modules.parameters())
        return statistics.median(times), size
    finally:
        t.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches (a smoke run)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cluster = distributed.Cluster(num_cpus=os.cpu_count())
    rows = []
    try:
        for name, make, batch in [("talking agents", talking, 256 if args.quick else 4096),
                                  ("async gridworld", gridworld, 64 if args.quick else 1024)]:
            for label, workers, chunks in [("in process", 0, 1), ("1 worker, 1 chunk", 1, 1),
                                           ("2 workers, 2 chunks", 2, 2)]:
                s, size = per_update(make, batch, workers, chunks, 2 if args.quick else 5)
                rows.append({"workload": name, "batch": batch, "setup": label,
                             "workers": workers, "chunks": chunks, "update_s": s,
                             "episodes_per_s": batch * chunks / s, "gradient_bytes": size})
                print(f"  {name:16s} batch {batch:5d}  {label:22s} {s * 1e3:9.1f} ms/update "
                      f"{batch * chunks / s:10.0f} episodes/s", flush=True)
    finally:
        cluster.shutdown()
    for name in {r["workload"] for r in rows}:
        by = {r["setup"]: r for r in rows if r["workload"] == name}
        over = by["1 worker, 1 chunk"]["update_s"] - by["in process"]["update_s"]
        print(f"  {name}: Ray's overhead per update {over * 1e3:.1f} ms, gradient "
              f"{by['in process']['gradient_bytes'] / 1e3:.1f} kB")
    results = {"rows": rows, "machine": f"{os.cpu_count()} cores, torch {torch.__version__}"}
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
