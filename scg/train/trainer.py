"""The training loop of a compiled network, the loop researchers otherwise rewrite for every
experiment: set-up, one update after another, and exact save and resume.

``scg.Trainer(model, inputs, ...)`` runs updates of the Monte Carlo estimator, or windows of the
online actor-critic (``estimator="td"``, one update per window, episodes ended by ``done``),
with either one optimiser over every parameter (``per_coagent=False``: step on the total
loss) or one optimiser per coagent, each stepping on the gradient of *its own local loss*
(the groups: :mod:`scg.train.optimizers`). Metrics go to CSV and TensorBoard
(:mod:`scg.train.logs`); checkpoints (:mod:`scg.train.checkpoint`) resume *exactly*:
parameters, optimiser and schedule state, baselines and critics, online eligibility traces, the
state of an ``inputs`` object that has a ``state_dict`` (an environment driver), the metrics so
far, and the random state of torch, Python and numpy. The trainer reads the estimator only
through its public surface.
"""

import functools
import os
import time

import pyro
import torch

from ..errors import ScgError
from ..estimators.estimator import Estimator, compile
from . import checkpoint, distributed, logs, optimizers


class Trainer:
    """Train ``model`` (an ``@scg.network`` or a compiled :class:`scg.Estimator`) on
    ``inputs``: a callable ``step -> args`` (a tuple, or one tensor) or fixed args.

    Online (``estimator="td"``): each update is one *window* (a call of the network, one or
    more of its steps); ``done(out)`` returns the bool ``[N]`` of episodes that ended in it
    (``est.finish(done=...)`` settles them; None: none ended), and ``inputs(step)`` then gives
    the next window's arguments, the ended episodes restarted. ``inputs`` is typically an
    environment driver object: ``__call__(step)`` the current arguments (called twice for
    step 0), an ``advance(out)`` method as ``done``, and ``state_dict``/``load_state_dict``
    so checkpoints hold its state too. The critic (the parameters of the ``scg.value``
    sites) is trained too: group ``critic`` with ``per_coagent=True``.

    Before the first update, one run on ``inputs(0)`` discovers the parameters (no baseline
    update; its draws are discarded), so ``inputs(0)`` is called twice. ``max_grad_norm``
    clips the norm over all parameters, also with ``per_coagent=True``.

    Args:
        optimizer: ``adam``, ``adamw``, ``sgd``, ``rmsprop``, ``adagrad`` or a callable
            ``(params, lr) -> Optimizer``; with ``per_coagent=True`` also a dict group ->
            one of those (``default`` for groups not named).
        lr: a step size, or (``per_coagent=True``) a dict group -> step size (a coagent,
            ``shared``, or ``critic``: the online critic); groups not named use
            ``lr["default"]`` (0.01 if absent).
        per_coagent: one optimiser per coagent, stepping on its local loss.
        schedule: ``constant``, ``robbins-monro``, ``cosine`` or a callable ``step -> factor``.
        seed: seeds torch, Python and numpy (``pyro.set_rng_seed``) before anything runs.
        out: a folder for ``metrics.csv``, ``checkpoint.pt``, ``tensorboard/`` and plots.
        checkpoint_every: write a checkpoint every this many updates (0: only on request).
        progress: show a progress bar with the estimated return and the losses.
        tensorboard: also log metrics to TensorBoard (needs the ``tensorboard`` package).
        max_grad_norm: clip the global gradient norm (None: no clipping).
        modules: ``nn.Module`` or dict of them holding the model's parameters; checkpoints then
            name parameters by module path instead of by discovery order.
        done: ``estimator="td"`` only: ``done(out) -> bool [N] or None`` after each window.
        callback: ``callback(trainer, out, row)`` after every update, with the update's
            :class:`scg.Output` (``out.value`` is the network's return value; None with
            workers, where the runs happen elsewhere) and its metrics row; numbers it adds
            to ``row`` are logged like the others (CSV, TensorBoard).
        workers, backend: ``workers > 1`` or ``backend="ray"`` trains on Ray
            (:mod:`scg.train.distributed`): each update is ``chunks`` independent calls of
            the network (default 4, each on ``inputs(update)`` with a seed drawn from
            ``(seed, update, chunk)``) in worker actors, their gradients averaged in chunk
            order, so the result does not depend on the number of workers.
        sync: False applies each chunk's gradient as it arrives (``max_staleness``: drop
            gradients computed with parameters more than this many versions old);
            ``trainer.arrivals`` logs the order, ``replay=`` a log to reproduce a run.
        address: join the Ray cluster at this address; by default scg starts one on
            127.0.0.1 (and stops it in :meth:`close`).
        **options: compile options when ``model`` is a network (``gamma``, ``baseline``, ...).
    """

    def __init__(self, model, inputs, *, optimizer="adam", lr=0.01, per_coagent=False,
                 schedule=None, seed=None, out=None, checkpoint_every=0, progress=True,
                 tensorboard=False, max_grad_norm=None, modules=None, callback=None,
                 done=None, workers=1, backend=None, sync=True, address=None,
                 max_staleness=None, chunks=None, replay=None, **options):
        if isinstance(model, Estimator):
            if options:
                raise ScgError(f"compile options {sorted(options)} given with an already "
                               "compiled estimator: pass them to scg.compile instead")
            self.est = model
        else:
            self.est = compile(model, **options)
        if done is not None and (not self.est.online or not callable(done)):
            raise ScgError("done= is a callable out -> bool [N] for estimator='td' (episodes "
                           "that ended in the window); the Monte Carlo estimator runs whole "
                           "episodes" if not self.est.online else
                           f"done= must be a callable out -> bool [N], got {done!r}")
        if isinstance(optimizer, dict) and not per_coagent:
            raise ScgError("a dict of optimizers needs per_coagent=True")
        self.done = done
        if checkpoint_every and out is None:
            raise ScgError("checkpoint_every needs out= (the folder for checkpoint.pt)")
        if tensorboard and out is None:
            raise ScgError("tensorboard=True needs out= (the folder for its event files)")
        self.inputs = inputs if callable(inputs) else (lambda step: inputs)
        self.optimizer, self.lr, self.per_coagent = optimizer, lr, per_coagent
        self.schedule_spec, self.max_grad_norm = schedule, max_grad_norm
        self.out, self.checkpoint_every, self.progress = out, checkpoint_every, progress
        self.tensorboard, self.modules, self.callback = tensorboard, modules, callback
        self.step, self.history, self.groups = 0, [], None
        self._writer, self._total, self._schedule = None, None, None
        self.seed = 0 if seed is None else int(seed)
        self.distribution = _distribution(workers, backend, sync, address, max_staleness,
                                          chunks, replay, self.est)
        self.pool, self.chunk_td, self.arrivals, self.dropped = None, None, [], 0
        if seed is not None:
            pyro.set_rng_seed(seed)

    # ---- set-up ------------------------------------------------------------------------------
    def _args(self, step):
        args = self.inputs(step)
        return args if isinstance(args, tuple) else (args,)

    def _setup(self, total):
        """Discover parameters with one run (no baseline update), then build the optimisers:
        ``groups`` maps a group name (``all``; or a coagent, ``shared``, ``critic``) to
        (params, optimiser, scheduler)."""
        if self.groups is not None:
            return
        self._total = total
        self.est.discover(*self._args(0))   # meet the parameters; its draws are discarded
        self.groups = optimizers.make_groups(self.est, self.optimizer, self.lr,
                                             self.per_coagent, self._factor)
        self._known = {id(p) for ps, _, _ in self.groups.values() for p in ps}
        if self.distribution is not None:
            self._start_workers()

    def _check_known(self):
        """A window may reach parameters the set-up run did not (a coagent that acts only
        later): they would never be stepped, so say so."""
        known = self._known
        new = [c for c in self.est.coagents
               if any(id(p) not in known for p in self.est.parameters(c))]
        if new or any(id(p) not in known for p in self.est.critic_parameters()):
            what = f"coagents {sorted(new)}" if new else "the critic"
            raise ScgError(f"update {self.step}: the window reached parameters the set-up run "
                           f"on inputs(0) did not ({what}); "
                           "the optimisers are built at set-up: make inputs(0) a window in "
                           "which every coagent acts and every value site is read")

    def _factor(self, step):
        """The schedule's factor at ``step``, over the total of the current ``fit`` (a cosine
        schedule resumed with another total follows the new one); built once per total."""
        if self._schedule is None or self._schedule[0] != self._total:
            self._schedule = (self._total, optimizers.schedule(self.schedule_spec, self._total))
        return self._schedule[1](step)

    # ---- one update --------------------------------------------------------------------------
    def update(self):
        """One run, one gradient step on every group; returns the metrics row."""
        if self.pool is not None:
            return self._update_sync() if self.distribution["sync"] else self._update_async()
        t0 = time.perf_counter()
        out = self.est(*self._args(self.step))
        ended = self._end_episodes(out) if self.est.online else None
        self._check_finite(out)
        self._backward(out)
        self._clip()
        used = self._step()
        self.step += 1
        row = self._row(out, used, ended, t0)
        if self.callback is not None:
            self.callback(self, out, row)
        return row

    def _check_finite(self, out):
        """Raise before any step if the total or a local loss is not finite (one check, one
        wait for the device; the culprit is looked for only on failure)."""
        losses = [("total", out.loss)] + sorted(out.local.items())
        if bool(torch.isfinite(torch.stack([x.detach().reshape(()) for _, x in losses])).all()):
            return
        for c, loss in losses:
            if not torch.isfinite(loss).all():
                kept = "the last checkpoint and the parameters are as before this update" \
                    if not self.est.online else "the parameters are as before this update; " \
                    "the online traces and the inputs have moved on: resume from the last " \
                    "checkpoint"
                raise ScgError(f"update {self.step}: the local loss of coagent {c!r} is "
                               f"{loss.item()}; no step taken ({kept})")

    def _backward(self, out):
        """The gradients of this update: one backward pass of the total loss.

        With ``per_coagent`` each coagent steps on its local loss, and the gradient of the total
        is that gradient on each coagent's parameters: a parameter is in theta_c exactly when
        autograd reaches it from coagent c's terms (:mod:`scg.compiler.owners`, through
        reparameterised messages and labelled costs), so the other local losses have none on
        it, and a shared parameter gets the sum over the coagents reaching it either way
        (tests/test_training.py compares with one pass per local loss).

        With ``order="any"`` and per-coagent objectives (``out.climbs``), a local loss is its
        objective's surrogate in every parameter (design.md §8): each objective's parameters
        step on the gradient of its own surrogate (one pass per distinct objective)."""
        for _, opt, _ in self.groups.values():
            opt.zero_grad(set_to_none=True)
        if out.climbs is None:
            out.loss.backward()
            return
        # order="any" with to=: local[i] is the surrogate of J_i in *every* parameter, so each
        # objective's parameters take the gradient of its own surrogate alone
        for key in dict.fromkeys(out.climbs.values()):
            params = list({id(p): p for c, o in out.climbs.items() if o == key
                           for p in self.est.parameters(c)}.values())
            grads = torch.autograd.grad(out.local[key], params, retain_graph=True,
                                        allow_unused=True)
            for p, g in zip(params, grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g

    def _clip(self):
        """Clip the norm of the gradient over every group's parameters to ``max_grad_norm``."""
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for ps, _, _ in self.groups.values() for p in ps], self.max_grad_norm)

    def _step(self):
        """Step every group's optimiser and schedule; returns group -> the step size used."""
        used = {g: opt.param_groups[0]["lr"] for g, (_, opt, _) in self.groups.items()}
        for _, opt, sched in self.groups.values():
            opt.step()
            sched.step()
        return used

    def _row(self, out, used, ended, t0):
        """The metrics row of the update just done (started at ``t0``)."""
        row = {"step": self.step, "objective": float(torch.as_tensor(out.objective).detach()),
               "loss": float(out.loss.detach())}
        row.update({f"loss/{c}": float(v.detach()) for c, v in sorted(out.local.items())})
        row.update({f"lr/{g}": lr for g, lr in used.items()})  # the step size this update used
        if ended is not None:
            row["episodes_ended"] = int(ended.sum())
        row["seconds"] = time.perf_counter() - t0
        return row

    def _end_episodes(self, out):
        """``estimator="td"``: settle the episodes ``done(out)`` names (``est.finish``) and add
        that update to ``out``; returns the mask (empty without ``done``)."""
        self._check_known()
        ended = self.done(out) if self.done is not None else None
        if ended is None:
            return torch.zeros(0, dtype=torch.bool)
        fin = self.est.finish(done=ended)
        out.loss = out.loss + fin.loss
        out.local = {c: out.local.get(c, 0.0) + fin.local.get(c, 0.0)
                     for c in out.local.keys() | fin.local.keys()}
        return ended

    def fit(self, updates):
        """Train until ``updates`` updates have been done in total (a resumed trainer goes on
        from its checkpoint's step). Returns the metrics history (a list of dicts)."""
        if not isinstance(updates, int) or updates < 0:
            raise ScgError(f"fit: updates must be a non-negative int, got {updates!r}")
        self._setup(updates)
        self._total = updates
        bar = logs.progress_bar(self.progress, updates, self.step)
        try:
            while self.step < updates:
                row = self.update()
                self.history.append(row)
                self._log(row)
                bar.update(1)
                bar.set_postfix(J=f"{row['objective']:.4g}", loss=f"{row['loss']:.4g}",
                                refresh=False)
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save()
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.flush()
        return self.history

    # ---- metrics ----------------------------------------------------------------------------
    def _log(self, row):
        """The row to ``out/metrics.csv`` and, with ``tensorboard``, to TensorBoard."""
        if self.out is None:
            return
        logs.append_csv(os.path.join(self.out, "metrics.csv"), self.history)
        if self.tensorboard:
            logs.add_scalars(self._tensorboard(), row)

    def _tensorboard(self):
        if self._writer is None:
            self._writer = logs.tensorboard_writer(os.path.join(self.out, "tensorboard"),
                                                   purge_step=self.step or None)
        return self._writer

    def plot(self, path=None, smooth=20):
        """The learning curve (the estimated return and its moving average) as a PNG."""
        return logs.plot(self.history,
                         path or os.path.join(self.out or ".", "learning_curve.png"), smooth)

    # ---- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_path(self):
        if self.out is None:
            raise ScgError("no out= folder: pass a path to save()/resume()")
        return os.path.join(self.out, "checkpoint.pt")

    def _parameters(self):
        """Name -> parameter: module paths when ``modules`` is given, else discovery order."""
        return parameter_names(self.est, self.modules)

    # ---- workers (scg.train.distributed) ----------------------------------------------------
    def _start_workers(self):
        d = self.distribution
        distributed.check_inputs(self.inputs)
        cluster = distributed.Cluster(d["address"])
        chunks = distributed.Chunks(self.est, self.inputs, self.done,
                                    functools.partial(parameter_names, modules=self.modules))
        self.chunks = chunks
        self.pool = distributed.Pool(chunks, d["workers"], cluster, self.modules)
        if self.chunk_td is None:
            self.chunk_td = [None] * d["chunks"]
        self.inflight = {}   # async: task number -> (future, worker, parameter version)
        self.version, self.tasks = 0, 0

    def close(self):
        """Stop the workers (and the local Ray runtime, if scg started it)."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def _common(self):
        """What every chunk needs of the learner: parameters by name and baseline state."""
        return distributed.put({
            "params": {k: p.detach().clone() for k, p in self.chunks.params().items()},
            "baseline": self.est.baseline.state()})

    def _apply(self, results, t0):
        """Set the mean of the chunks' gradients (summed in chunk order), take the baseline
        state they leave, clip and step; the metrics row."""
        named = self.chunks.params()
        for _, opt, _ in self.groups.values():
            opt.zero_grad(set_to_none=True)
        for k, p in named.items():
            gs = [r["grads"][k] for r in results if r["grads"][k] is not None]
            if gs:
                total = gs[0].clone()
                for g in gs[1:]:
                    total += g
                p.grad = total / len(results)
        self.est.baseline.load_state(distributed.mean_state([r["baseline"] for r in results]))
        self._clip()
        used = self._step()
        row = {"step": self.step}
        for key in results[0]["row"]:
            row[key] = sum(r["row"][key] for r in results) / len(results)
        row.update({f"lr/{g}": lr for g, lr in used.items()})
        row["seconds"] = time.perf_counter() - t0
        return row

    def _update_sync(self):
        """One update from ``chunks`` chunks, whatever worker computes each."""
        t0 = time.perf_counter()
        common = self._common()
        C = self.distribution["chunks"]
        td = self.chunk_td if self.chunk_td is not None else [None] * C
        tasks = [(self.step, distributed.chunk_seed(self.seed, self.step, c), common, td[c])
                 for c in range(C)]
        results = self.pool.map(tasks)
        self.chunk_td = [r["td"] for r in results]
        return self._finish(self._apply(results, t0))

    def _update_async(self):
        """Apply the next gradient to arrive (or, replaying, the next in ``replay``) if it is
        at most ``max_staleness`` parameter versions old; send that worker new work."""
        t0 = time.perf_counter()
        d = self.distribution
        while len(self.inflight) < d["workers"]:
            self._dispatch(len(self.inflight) % d["workers"])
        if d["replay"] is not None:
            n = d["replay"][len(self.arrivals)]
        else:
            ref = distributed.wait_one([f for f, _, _ in self.inflight.values()])
            n = next(k for k, (f, _, _) in self.inflight.items() if f == ref)
        future, worker, version = self.inflight.pop(n)
        result = distributed.get(future)
        stale = self.version - version
        self.arrivals.append(n)
        if d["max_staleness"] is not None and stale > d["max_staleness"]:
            self.dropped += 1
            row = {"step": self.step, **result["row"], "applied": 0}
        else:
            row = {**self._apply([result], t0), "applied": 1}
            self.version += 1
        row.update({"task": n, "staleness": stale, "dropped": self.dropped})
        self._dispatch(worker)
        return self._finish(row)

    def _dispatch(self, worker):
        n = self.tasks
        task = (n, distributed.chunk_seed(self.seed, n, 0), self._common(), None)
        self.inflight[n] = (self.pool.submit(worker, task), worker, self.version)
        self.tasks += 1

    def _finish(self, row):
        self.step += 1
        if self.callback is not None:
            self.callback(self, None, row)
        return row

    def state_dict(self):
        """Everything an exact resume needs."""
        if self.pool is not None and not self.distribution["sync"]:
            raise ScgError("checkpoints of asynchronous runs (sync=False) are not supported: "
                           "gradients in flight would be lost; use sync=True to resume exactly")
        named = self._parameters()
        kept = {id(p) for p in named.values()} | {id(p) for p in self.est.critics.parameters()}
        lost = sorted(g for g, (ps, _, _) in self.groups.items() if any(id(p) not in kept
                                                                       for p in ps))
        if lost:
            raise ScgError(f"group(s) {lost} train parameters that are not in modules=, so a "
                           "checkpoint would lose them: pass every module the model uses "
                           "(the critic of its scg.value sites included)")
        return {"step": self.step, "history": list(self.history),
                "parameters": {k: p.detach().clone() for k, p in named.items()},
                "estimator": self.est.state_dict(),
                "optimizers": {g: opt.state_dict() for g, (_, opt, _) in self.groups.items()},
                "schedulers": {g: s.state_dict() for g, (_, _, s) in self.groups.items()},
                "rng": checkpoint.rng_state(),
                "td": self.est.online_state(named),
                "inputs": self.inputs.state_dict() if hasattr(self.inputs, "state_dict")
                else None, "chunk_td": self.chunk_td}

    def load_state_dict(self, state, total=None):
        """Restore a :meth:`state_dict`; ``total``: the updates the run will go to (only
        needed before ``fit`` builds the optimisers; ``fit`` sets it)."""
        self._setup(total if total is not None else self._total or state["step"])
        params = self._parameters()
        saved = state["parameters"]
        if set(saved) != set(params) or any(saved[k].shape != params[k].shape for k in saved):
            raise ScgError(f"checkpoint parameters {sorted(saved)} do not match this model's "
                           f"{sorted(params)} (shapes included): a different model, or "
                           "parameters discovered in another order (pass modules=)")
        if set(state["optimizers"]) != set(self.groups):
            raise ScgError(f"checkpoint optimiser groups {sorted(state['optimizers'])} differ "
                           f"from this trainer's {sorted(self.groups)} (per_coagent changed?)")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])
        self.est.load_state_dict(state["estimator"])
        for g, (_, opt, sched) in self.groups.items():
            opt.load_state_dict(state["optimizers"][g])
            sched.load_state_dict(state["schedulers"][g])
        self.est.load_online_state(state.get("td"), params)
        if state.get("inputs") is not None:
            if not hasattr(self.inputs, "load_state_dict"):
                raise ScgError("the checkpoint holds the state of the inputs object, but these "
                               "inputs have no load_state_dict")
            self.inputs.load_state_dict(state["inputs"])
        self.step, self.history = state["step"], list(state["history"])
        self.chunk_td = state.get("chunk_td")
        checkpoint.set_rng_state(state["rng"])
        if self.out is not None and self.history:
            logs.write_csv(os.path.join(self.out, "metrics.csv"), self.history)

    def save(self, path=None):
        """Write a checkpoint atomically (default ``out/checkpoint.pt``); returns its path."""
        path = path or self.checkpoint_path
        checkpoint.save(path, self.state_dict())
        return path

    def resume(self, path=None, total=None):
        """Load the checkpoint at ``path`` (default ``out/checkpoint.pt``) if it exists.
        Returns True if training state was restored."""
        path = path or self.checkpoint_path
        if not os.path.exists(path):
            return False
        self.load_state_dict(checkpoint.load(path), total)
        return True


def parameter_names(est, modules=None):
    """Name -> parameter of what a trainer trains and checkpoints: module paths when
    ``modules`` is given, else ``p0, p1, ...`` in discovery order (critics travel in the
    estimator's own state)."""
    if modules is not None:
        mods = modules if isinstance(modules, dict) else {"model": modules}
        return {f"{k}.{n}": p for k, m in mods.items() for n, p in m.named_parameters()}
    critics = {id(p) for p in est.critics.parameters()}
    model = [p for p in est.parameters() if id(p) not in critics]
    ps = {id(p): p for p in model + est.critic_parameters()}
    return {f"p{i}": p for i, p in enumerate(ps.values())}


def _distribution(workers, backend, sync, address, max_staleness, chunks, replay, est):
    """The validated worker options, or None to train in this process."""
    if not isinstance(workers, int) or workers < 1:
        raise ScgError(f"workers must be a positive int, got {workers!r}")
    if backend not in (None, "ray"):
        raise ScgError(f"unknown backend {backend!r}; valid: 'ray'")
    if workers == 1 and backend is None:
        if address is not None or chunks is not None or not sync or replay is not None:
            raise ScgError("address=, chunks=, sync=False and replay= are for workers "
                           "(workers > 1 or backend='ray')")
        return None
    chunks = 4 if chunks is None else chunks
    if not isinstance(chunks, int) or chunks < 1:
        raise ScgError(f"chunks must be a positive int, got {chunks!r}")
    if max_staleness is not None and (not isinstance(max_staleness, int) or max_staleness < 0):
        raise ScgError(f"max_staleness must be None or an int >= 0, got {max_staleness!r}")
    if not sync and est.online:
        raise ScgError("sync=False is for the Monte Carlo estimator: online traces follow "
                       "one stream of windows (use sync=True with workers)")
    return {"workers": workers, "sync": bool(sync), "address": address, "chunks": chunks,
            "max_staleness": max_staleness, "replay": replay}


def train(model, inputs, updates, resume=True, **kwargs):
    """Build a :class:`Trainer` (keyword arguments as there), resume from ``out/checkpoint.pt``
    if ``resume`` and one exists, run ``updates`` updates in total, and return the trainer."""
    trainer = Trainer(model, inputs, **kwargs)
    if resume and trainer.out is not None:
        trainer.resume(total=updates)
    trainer.fit(updates)
    return trainer
