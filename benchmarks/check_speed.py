"""How long ``scg.check(..., method="enumerate")`` takes, and how many runs of the model it makes.

    python benchmarks/check_speed.py                       # every registry network, verify off/on
    python benchmarks/check_speed.py async_bit chain       # some of them
    git show HEAD:scg/tools/check.py > /tmp/check_head.py
    python benchmarks/check_speed.py --baseline /tmp/check_head.py   # side by side with another
                                                                     # version of check.py

The networks are ``tests/networks.py``'s REGISTRY (``async_bit`` is the asynchronous network
with 576 joint values) and the signalling network of docs/check.md (1024 joint values). Per
network and per estimator mode (``verify=False``, and ``verify=True`` as the test suite runs
it): the seconds of one check, its joint values, and the runs of the model: check's own
(sizing and enumeration) and the estimator's (one per joint value). With ``--baseline FILE``
that file (a ``check.py`` of another revision) is imported as a module of ``scg.tools`` and
timed in turn with the current one, alternating, on fresh copies of the same network; the
table adds its time and runs, and the speedup. Each time is the minimum over ``--repeat``.

``--threads`` sets torch's intra-op threads for the script (default: torch's own default, one
per core). The current check enumerates on one thread whatever the setting; a baseline runs on
the script's threads. With more than one thread and other work on the cores, some tiny torch
ops (``binary_cross_entropy_with_logits``: Bernoulli's log-probability) wait milliseconds per
call for a thread; compare ``--threads 1``.
"""

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
from torch.nn.functional import one_hot  # noqa: E402

import scg  # noqa: E402
import scg.tools.check as current  # noqa: E402
from networks import REGISTRY  # noqa: E402


def signalling():
    """docs/check.md's signalling network: 8^2 * 4^2 = 1024 joint values, baseline loo."""
    S, R = torch.nn.Linear(4, 8).double(), torch.nn.Linear(8, 4).double()

    @scg.network
    def sig(s):
        with scg.episodes(s.shape[0]):
            m = scg.message("m", dist.Categorical(logits=S(one_hot(s, 4).double())),
                            coagent="sender")
            a = scg.message("a", dist.Categorical(logits=R(one_hot(m, 8).double())),
                            coagent="receiver")
            scg.reward("r", (a == s).double())
    return sig, (torch.tensor([0, 3]),), {"baseline": "loo"}


NETWORKS = {**REGISTRY, "signalling": signalling}


def counted(model):
    """``model`` with a call counter (``.calls``), still an ``@scg.network`` function."""
    def run(*args, **kwargs):
        run.calls += 1
        return model(*args, **kwargs)
    run.calls, run._scg_network, run.__name__ = 0, True, getattr(model, "__name__", "model")
    return run


def load(path):
    """A ``check.py`` file as the module ``scg.tools._check_baseline`` (its relative imports
    resolve in ``scg.tools``)."""
    spec = importlib.util.spec_from_file_location("scg.tools._check_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def one(module, name, verify):
    """One check of a fresh copy of network ``name``: (seconds, joint values, own runs,
    estimator runs, status)."""
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    model, args, opts = NETWORKS[name]()
    own = counted(model)
    est = scg.compile(counted(model), verify=verify, **opts)
    t = time.perf_counter()
    report = module.check(own, *args, method="enumerate", est=est)
    seconds = time.perf_counter() - t
    return seconds, report.size, own.calls, est.model.calls, report.status


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="networks (default: all)")
    ap.add_argument("--baseline", help="another check.py to time side by side")
    ap.add_argument("--repeat", type=int, default=1, help="time each check this many times")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (default: torch's default)")
    ap.add_argument("--verify", choices=["off", "on", "both"], default="both")
    a = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    if a.threads:
        torch.set_num_threads(a.threads)
    names = a.names or sorted(NETWORKS)
    modes = {"off": [False], "on": [True], "both": [False, True]}[a.verify]
    versions = [("now", current)] + ([("baseline", load(a.baseline))] if a.baseline else [])
    one(current, "chain", False)    # warm up: first-call imports inside torch
    print(f"scg.check(method='enumerate'); the script on {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; torch {torch.__version__}; "
          "runs = check's own + the estimator's")
    head = f"{'network':<20}{'verify':>7}{'joint':>7}{'runs':>12}{'seconds':>9}"
    if a.baseline:
        head += f"{'base runs':>12}{'base s':>9}{'speedup':>9}"
    print(head)
    for name in names:
        for verify in modes:
            best = {}
            for _ in range(a.repeat):
                for label, module in versions:   # alternate, so load changes hit both
                    r = one(module, name, verify)
                    if label not in best or r[0] < best[label][0]:
                        best[label] = r
            s, size, own, by_est, status = best["now"]
            line = (f"{name:<20}{'on' if verify else 'off':>7}{size:>7}"
                    f"{f'{own}+{by_est}':>12}{s:>9.3f}")
            if a.baseline:
                bs, bsize, bown, bby_est, bstatus = best["baseline"]
                assert (bsize, bstatus) == (size, status), (name, bsize, bstatus, size, status)
                line += f"{f'{bown}+{bby_est}':>12}{bs:>9.3f}{bs / s:>8.2f}x"
            print(line + ("" if status == "OK" else f"  {status}"), flush=True)


if __name__ == "__main__":
    main()
