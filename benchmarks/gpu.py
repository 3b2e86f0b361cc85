"""scg on a CUDA device: the GPU rows of the benchmark (issue 16 §5), written to JSON.

    python benchmarks/gpu.py --out benchmarks/gpu.json

Needs a machine with CUDA; ``benchmarks/run.py`` puts the stored ``benchmarks/gpu.json`` into
``docs/performance.md`` (a machine without a GPU cannot remeasure it). Rows:

* the talking agents (GRU, 16 steps) at batch 512 and 4,096 on the GPU, per iteration against
  the hand-written torch loss on the same GPU, alternating; each iteration's clock stops after
  ``torch.cuda.synchronize()``;
* the batched asynchronous gridworld, environment steps per second at batch 1,024 and 16,384
  on the GPU, and at 1,024 on the same machine's CPU for scale.

(Not named cuda.py: run as a script, its folder comes first on sys.path, and torch imports a
module ``cuda``.)
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.run import gridworld_throughput, per_iteration  # noqa: E402
from benchmarks.workloads import TalkingAgents  # noqa: E402


def synced(fn):
    """Seconds of ``fn()`` including the GPU work it queued."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def talking_agents(batch, repeats):
    s, h = per_iteration(TalkingAgents(B=batch, device="cuda"), repeats, 3, clock=synced)
    return {"workload": f"talking agents (GRU, batch {batch}, 16 steps)", "batch": batch,
            "scg_ms": 1e3 * s, "hand_ms": 1e3 * h, "ratio": s / h}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu.json"))
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False)")
    torch.manual_seed(0)
    r = {"machine": f"{torch.cuda.get_device_name()}, {platform.processor() or platform.machine()}"
                    f" host, torch {torch.__version__}", "iteration": [], "throughput": []}
    print(r["machine"])
    for batch in (512, 4096):
        row = talking_agents(batch, args.repeats)
        r["iteration"].append(row)
        print(f"  {row['workload']:44s} scg {row['scg_ms']:8.2f} ms   hand "
              f"{row['hand_ms']:8.2f} ms   ratio {row['ratio']:5.2f}")
    for batch, device in ((1024, "cpu"), (1024, "cuda"), (16384, "cuda")):
        t = gridworld_throughput(batch, device=device)
        r["throughput"].append(t)
        print(f"  gridworld batch {batch:6d} on {device:4s}: {t['steps_per_s']:10.0f} steps/s")
    Path(args.out).write_text(json.dumps(r, indent=1))


def markdown(r):
    """The GPU section of docs/performance.md from a stored gpu.json."""
    lines = [f"Measured on {r['machine']} by `python benchmarks/gpu.py` (not rerun by this "
             "command); each iteration's clock stops after a device synchronisation.", "",
             "| workload | scg (ms) | hand-written (ms) | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {x['workload']} | {x['scg_ms']:.2f} | {x['hand_ms']:.2f} | "
              f"{x['ratio']:.2f} |" for x in r["iteration"]]
    lines += ["", "| asynchronous gridworld (4x4, horizon 30) | environment steps / s |",
              "|---|---:|"]
    lines += [f"| batch {t['batch']} on {t['device']} | {t['steps_per_s']:.0f} |"
              for t in r["throughput"]]
    return lines


if __name__ == "__main__":
    main()
