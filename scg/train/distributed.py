"""Training on Ray (design.md §7): rollouts and estimator calls in worker actors, the learner
in the calling process.

**Synchronous** (``sync=True``). An update's batch is ``chunks`` independent calls of the
network on the update's inputs (each a full batch of episodes: the update's estimate is their
mean, unbiased as each is). Chunk ``c`` of update ``k`` is a pure function of the learner's
state (parameters by name, the estimator's state: baselines and critics, and that chunk's
online traces) and of its seed, drawn from ``(seed, k, c)``: whichever worker computes it,
whenever, and however often (a killed worker's chunk is re-run by Ray on the restarted actor),
it gives the same gradient. The learner sums the chunks' gradients in chunk order and steps the
optimisers, so the parameters after K updates are the same for any number of workers (the
number of *chunks* is part of the experiment, the number of workers is not).

**Asynchronous** (``sync=False``). Each worker computes one chunk at a time with the
parameters it was sent, tagged with their version; the learner applies each gradient as it
arrives (one optimiser step per chunk) if it is at most ``max_staleness`` versions old, and
drops it otherwise. ``arrivals`` logs the order in which results were applied; passing it back
as ``replay=`` reproduces the run.

The learner owns every piece of state: baselines' averages (a chunk returns its baseline state
after its call, and the learner keeps their mean: the decaying average of the pooled chunk),
critics (their gradients come back with the others), and the online estimator's traces (one
set per chunk, by parameter name, shipped with the chunk). Ray is started on 127.0.0.1 with its
own temporary directory when no ``address`` is given (:func:`start`); only a cluster scg
started is shut down by scg.
"""

import os
import sys
import tempfile

import numpy as np
import pyro
import torch

from ..errors import ScgError

LOOPBACK = "127.0.0.1"
# Measured on Linux (ray 2.60): unless this is "0" when ray is *imported*, a local Ray binds
# its listeners to every interface, even with _node_ip_address="127.0.0.1". scg sets it when
# it is imported (before a user's import of ray, as a rule), and refuses to start a local
# cluster if ray came first without it.
LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
RAY_FIRST = "ray" in sys.modules and os.environ.get(LOOPBACK_VAR) != "0"
os.environ.setdefault(LOOPBACK_VAR, "0")


def _ray():
    try:
        import ray
    except ImportError:
        raise ScgError("workers > 1 (or backend='ray') needs Ray: pip install 'scg[ray]' "
                       "(or pip install ray)") from None
    return ray


class Cluster:
    """The Ray runtime training runs on; ``owned``: scg started it (and shuts it down)."""

    def __init__(self, address=None, num_cpus=None):
        ray = _ray()
        self.owned = False
        if ray.is_initialized():
            return
        if address is not None:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
            return
        if RAY_FIRST:
            raise ScgError(f"ray was imported before scg without {LOOPBACK_VAR}=0, so a local "
                           "Ray would listen on every network interface: import scg first, "
                           f"or set {LOOPBACK_VAR}=0 before importing ray, or pass address= "
                           "to join a cluster you started")
        self.tmp = tempfile.mkdtemp(prefix="scg-ray-")
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 _node_ip_address=LOOPBACK, _temp_dir=self.tmp, log_to_driver=False,
                 configure_logging=False)
        self.owned = True

    def shutdown(self):
        if self.owned:
            _ray().shutdown()
            self.owned = False


def chunk_seed(seed, update, chunk):
    """The seed of chunk ``chunk`` of update ``update``: one 32-bit draw (what
    ``pyro.set_rng_seed`` takes) of numpy's ``SeedSequence([seed, update, chunk])``."""
    return int(np.random.SeedSequence([seed, update, chunk]).generate_state(1)[0])


class Chunks:
    """Worker-side and learner-side code of one chunk, shared so both name things alike."""

    def __init__(self, est, inputs, done, names):
        self.est, self.inputs, self.done, self.names = est, inputs, done, names

    def params(self):
        """Name -> tensor of everything the learner steps: the model's parameters (the
        trainer's names) and the critics' (``critics.KEY.NAME``)."""
        named = dict(self.names(self.est))
        named.update(dict(self.est.critics.named_parameters(prefix="critics")))
        return named

    def run(self, update, seed, common, td):
        """One chunk: load the learner's state (``common``: parameters by name and the
        baseline's state; ``td``: this chunk's online traces, None at the start), seed, call
        the network on ``inputs(update)``, backward. Returns gradients by name, the numbers of
        its metrics row, the baseline's state after the call and the chunk's online traces."""
        torch.set_num_threads(1)
        named = self.params()
        with torch.no_grad():
            for k, v in common["params"].items():
                named[k].copy_(v)
        est = self.est
        est.baseline.load_state(common["baseline"])
        if est.online:
            est.load_online_state(td, self.names(est))
        pyro.set_rng_seed(seed)
        args = self.inputs(update)
        args = args if isinstance(args, tuple) else (args,)
        out = est(*args)
        if est.online and self.done is not None:
            ended = self.done(out)
            if ended is not None:
                out.loss = out.loss + est.finish(done=ended).loss
        for p in named.values():
            p.grad = None
        if out.loss.requires_grad:
            out.loss.backward()
        grads = {k: None if p.grad is None else p.grad.detach().clone()
                 for k, p in named.items()}
        row = {"objective": float(out.objective.detach()), "loss": float(out.loss.detach())}
        row.update({f"loss/{c}": float(v.detach()) for c, v in out.local.items()})
        td = est.online_state(self.names(est)) if est.online else None
        return {"grads": grads, "row": row, "baseline": est.baseline.state(), "td": td}


def payload(chunks, *more):
    """``chunks`` as bytes for the workers. The modules that define the user's code (the
    network, the inputs, ``done``, module classes) are pickled by value unless they are
    installed packages, so a network written in a script or a test file reaches workers that
    cannot import it."""
    import cloudpickle
    objs = [chunks.est.model, getattr(chunks.est.model, "__wrapped__", None), chunks.inputs,
            chunks.done, *more]
    names = {getattr(o, "__module__", None) for o in objs if o is not None}
    names |= {type(o).__module__ for o in objs if isinstance(o, torch.nn.Module)}
    for o in objs:
        if isinstance(o, torch.nn.Module):
            names |= {type(m).__module__ for m in o.modules()}
    mods = [sys.modules[n] for n in names if n in sys.modules and _user_code(sys.modules[n])]
    for m in mods:
        cloudpickle.register_pickle_by_value(m)
    try:
        return cloudpickle.dumps(chunks)
    finally:
        for m in mods:
            cloudpickle.unregister_pickle_by_value(m)


def _user_code(module):
    f = getattr(module, "__file__", None)
    if module.__name__ == "__main__" or f is None:
        return False   # __main__ is pickled by value already; builtins have no file
    parts = os.path.normpath(f).split(os.sep)
    return not ({"site-packages", "dist-packages"} & set(parts)) and \
        module.__name__.split(".")[0] not in ("scg", "torch", "pyro")


def mean_state(states):
    """The elementwise mean of baseline states (nested dicts of tensors); a key missing from
    some chunks is the mean over those that have it."""
    if not states or not isinstance(states[0], dict):
        return states[0] if states else {}
    keys = []
    for s in states:
        keys += [k for k in s if k not in keys]
    out = {}
    for k in keys:
        vs = [s[k] for s in states if k in s]
        out[k] = torch.stack(vs).mean(0) if isinstance(vs[0], torch.Tensor) else mean_state(vs)
    return out


def actor_class():
    """The Ray actor holding one copy of the estimator (restarted and retried on failure)."""
    ray = _ray()

    @ray.remote(max_restarts=-1, max_task_retries=-1)
    class Worker:
        def __init__(self, data):
            import cloudpickle
            torch.set_num_threads(1)
            self.chunks = cloudpickle.loads(data)

        def run(self, update, seed, common, td):
            return self.chunks.run(update, seed, common, td)

        def pid(self):
            return os.getpid()
    return Worker


class Pool:
    """N worker actors, each with a copy of the learner's :class:`Chunks` (sent once)."""

    def __init__(self, chunks, workers, cluster, modules=None):
        ray = _ray()
        Worker = actor_class()
        # No CPU reservation: two trainers (or a trainer and its checkpoint's resumption) on
        # one cluster must not wait for each other's CPUs; each worker runs one torch thread.
        per = 0
        self.cluster = cluster
        self.data = ray.put(payload(chunks, modules))   # kept: a restarted actor reads it
        self.actors = [Worker.options(num_cpus=per).remote(self.data) for _ in range(workers)]

    def map(self, tasks):
        """``tasks``: the arguments of :meth:`Chunks.run` per chunk, run round-robin over the
        workers; the results in chunk order."""
        ray = _ray()
        futures = [self.submit(c, t) for c, t in enumerate(tasks)]
        return ray.get(futures)

    def submit(self, worker, task):
        """Run one chunk on worker ``worker % N``; returns its future."""
        return self.actors[worker % len(self.actors)].run.remote(*task)

    def pids(self):
        ray = _ray()
        return ray.get([a.pid.remote() for a in self.actors])

    def close(self):
        ray = _ray()
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        self.cluster.shutdown()


def check_inputs(inputs):
    """Workers call ``inputs(update)`` themselves: an inputs object with state (an
    environment driver) would be stepped in each worker separately."""
    if hasattr(inputs, "state_dict") or hasattr(inputs, "advance"):
        raise ScgError("workers > 1 need inputs that are a function of the update number (or "
                       "fixed args): an inputs object with state (state_dict/advance, an "
                       "environment driver) would be stepped in every worker separately")


def put(obj):
    return _ray().put(obj)


def wait_one(futures):
    ray = _ray()
    done, _ = ray.wait(list(futures), num_returns=1)
    return done[0]


def get(ref):
    return _ray().get(ref)
