"""``scg.compile``: the estimator of a coagent network.

Per call: run the model under a light recorder and look up the plan cached for the run's
structure signature and argument fingerprint (analysing a new structure by replaying the run
with provenance tracking); or, for the first call, under ``verify`` and once a value has
escaped torch in any run, analyse the run as it happens and use the plan of its own data flow
(:mod:`scg.compiler.guards`). Then emit the surrogate. Its value is ``-(estimate of J)``; its
gradient is ``-(estimate of grad J)``:

    sum_c coef_c * c   +   sum_s kappa_s * log p(s) * (R_s - b_s).detach()

(the score part and critic regressions enter with zero value, as ``x - x.detach()``).
"""

import inspect
import os
from dataclasses import dataclass, field

import torch

from ..compiler import graph as G
from ..compiler import plan as P
from ..compiler.guards import arguments, check_replay, check_sites, data_flow, first_difference
from ..compiler.passes import roll
from ..compiler.provenance import Analysis
from ..core.record import run
from ..core.terms import common_float, cost, group_log_prob, predictor_log_prob
from ..errors import ScgError
from . import baselines as B
from .online import TD

OPTIONS = {
    "gamma": 1.0,            # discount, in [0, 1]
    "baseline": "none",      # none | avg | loo | critic
    "objective": "sum",      # sum | mean (finite-horizon average reward: (1/T) sum_t)
    "discount_score": True,  # False: seed 000's common rule without gamma^t_s (biased)
    "decay": 0.9,            # the avg baseline's decay
    "critic_hidden": 32,     # hidden units of each coagent's critic
    "estimator": "mc",       # mc (exact score-function surrogate) | td (online TD)
    "lam": 1.0,              # td: trace decay lambda in [0, 1]
    "avg_rate": 0.01,        # td with objective="average": step size of the reward average
    "verify": None,          # analyse every run, raise where the cached plan would differ
}                            # (default: the SCG_VERIFY environment variable, else False)


@dataclass
class Output:
    """One sampled run: ``loss`` (backward it), ``local`` (one surrogate per coagent, summing
    exactly to ``loss``), ``objective`` (the estimate of J, with its pathwise gradient) and
    ``stats`` (plain numbers for logs)."""

    loss: torch.Tensor
    local: dict
    objective: torch.Tensor
    stats: dict = field(default_factory=dict)
    value: object = None
    sites: list = field(default_factory=list)


def compile(model, **options):
    """Compile ``model`` (an ``@scg.network`` function) into an :class:`Estimator`.

    Options: ``gamma``, ``baseline`` (none, avg, loo, critic), ``objective`` (sum, mean),
    ``discount_score`` (default True; False is seed 000's biased rule), ``decay``,
    ``critic_hidden``, ``estimator`` (mc, td), ``lam``, ``avg_rate``, ``verify`` (analyse
    every run and raise where the cached plan would differ; default: the ``SCG_VERIFY``
    environment variable).
    """
    return Estimator(model, **options)


class Estimator(torch.nn.Module):
    """Callable: ``est(*args)`` returns an :class:`Output` for one fresh run of the model."""

    max_plans = 1024  # plans kept per estimator (the oldest analysis is dropped first)

    def __init__(self, model, **options):
        super().__init__()
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ScgError(f"unknown compile option(s) {unknown}; valid: {sorted(OPTIONS)}")
        if not getattr(model, "_scg_network", False):
            raise ScgError(f"{getattr(model, '__name__', model)!r} is not an @scg.network function")
        opts = {**OPTIONS, **options}
        if opts["verify"] is None:
            opts["verify"] = os.environ.get("SCG_VERIFY", "") not in ("", "0")
        if not 0.0 <= float(opts["gamma"]) <= 1.0:
            raise ScgError(f"gamma must be in [0, 1], got {opts['gamma']}")
        if opts["baseline"] not in B.KINDS:
            raise ScgError(f"unknown baseline {opts['baseline']!r}; valid: {list(B.KINDS)}")
        if opts["estimator"] not in ("mc", "td"):
            raise ScgError(f"unknown estimator {opts['estimator']!r}; valid: ['mc', 'td']")
        objectives = ["sum", "mean"] if opts["estimator"] == "mc" else ["sum", "average"]
        if opts["objective"] not in objectives:
            raise ScgError(f"unknown objective {opts['objective']!r} for estimator="
                           f"{opts['estimator']!r}; valid: {objectives}")
        if not 0.0 <= float(opts["lam"]) <= 1.0:
            raise ScgError(f"lam must be in [0, 1], got {opts['lam']}")
        if opts["objective"] == "average" and float(opts["gamma"]) != 1.0:
            raise ScgError("objective='average' needs gamma=1.0 (the differential TD error "
                           "has no discount)")
        if not 0.0 <= float(opts["decay"]) < 1.0:
            raise ScgError(f"decay must be in [0, 1), got {opts['decay']}")
        self.model, self.options = model, opts
        self.gamma, self.decay = float(opts["gamma"]), float(opts["decay"])
        self.plans, self.averages, self.params = {}, {}, {}
        self.structures = {}  # (signature, argument fingerprint) -> plan, for static runs
        self.dynamic = False  # something escaped torch in an analysed run: analyse every run
        self.verify = bool(opts["verify"])
        self.critics = torch.nn.ModuleDict()
        self.critic_owner = {}  # critic key -> coagent
        self.shared = {}
        self.value_params = {}  # critic parameters reached from scg.value sites, by id
        self.last_plan = None
        self.td = TD(self) if opts["estimator"] == "td" else None

    # ---- public conveniences -------------------------------------------------------------
    def forward(self, *args, **kwargs):
        return self.run(args, kwargs)

    def loss(self, *args, **kwargs):
        """``-(estimate of J)`` of one fresh run, with the estimator's gradient."""
        return self.run(args, kwargs).loss

    def local_losses(self, *args, **kwargs):
        """One surrogate per coagent of one fresh run; they sum exactly to the loss."""
        return self.run(args, kwargs).local

    def graph(self, *args, **kwargs):
        """The dependency graph of a run with these arguments (the last analysed if none)."""
        if not args and not kwargs and self.last_plan is not None:
            return self.last_plan.graph
        if not args and not kwargs and not _takes_no_arguments(self.model):
            raise ScgError("no structure analysed yet: call est.graph(*args)")
        return self.traced(args, kwargs)[2].graph

    def rolled_graph(self, *args, **kwargs):
        """The rolled graph (one node per site name, back edges to earlier steps): see
        :func:`scg.compiler.passes.roll`."""
        return roll(self.graph(*args, **kwargs))

    def parameters(self, coagent=None, recurse=True):
        """Model parameters reached from coagent ``coagent``'s sites (all coagents if None),
        plus its critics' parameters. Known after the first call."""
        if coagent is not None and coagent not in self.params:
            raise ScgError(f"unknown coagent {coagent!r}; known: {sorted(self.params)}")
        seen, out = set(), []
        for c, ps in self.params.items():
            if coagent is None or c == coagent:
                out += [p for p in ps.values() if id(p) not in seen and not seen.add(id(p))]
        for key, m in self.critics.items():
            if coagent is None or self.critic_owner.get(key) == coagent:
                out += list(m.parameters())
        return iter(out)

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True, coagent=None):
        """``(name, parameter)`` for every tensor :meth:`parameters` yields, in its order:
        ``COAGENT.k`` for the k-th model parameter reached from a coagent's sites (a shared one
        under its first coagent), ``critics.KEY.NAME`` for a baseline critic's."""
        params = list(self.parameters(coagent))
        names, seen = {}, set()
        for c, ps in self.params.items():
            for k, p in enumerate(ps.values()):
                if id(p) not in seen:
                    seen.add(id(p))
                    names[id(p)] = f"{c}.{k}"
        for n, p in self.critics.named_parameters(prefix="critics"):
            names[id(p)] = n
        return iter([(prefix + names[id(p)], p) for p in params])

    def __setstate__(self, state):
        """After a copy or unpickling, parameters are new objects: re-key what is keyed by
        their identity (each coagent's parameters, the shared ones, the value sites')."""
        super().__setstate__(state)
        moved = {k: id(p) for ps in self.params.values() for k, p in ps.items()}
        moved.update({k: id(p) for k, p in self.value_params.items()})
        self.params = {c: {id(p): p for p in ps.values()} for c, ps in self.params.items()}
        self.value_params = {id(p): p for p in self.value_params.values()}
        self.shared = {moved.get(k, k): cs for k, cs in self.shared.items()}

    def get_extra_state(self):
        return {"averages": {k: v.clone() for k, v in self.averages.items()}}

    def set_extra_state(self, state):
        self.averages = dict(state["averages"])

    # ---- analysis ------------------------------------------------------------------------
    def traced(self, args, kwargs, *handlers):
        """Run the model once and find the plan of that run: ``(sites, value, plan)``.

        The first run, every run of a *dynamic* estimator (something escaped torch in an
        earlier run: escapes are monotone) and every run under ``verify`` are analysed as they
        happen; others run plainly and reuse the plan cached for their structure signature
        and argument fingerprint, replaying the run under analysis when there is none."""
        guard = arguments(args, kwargs)
        if self.dynamic or self.verify or not self.structures:
            analysis = Analysis(inputs=(args, kwargs))
            sites, value = self.trace(args, kwargs, *handlers, record=analysis)
            plan = self.plan_of(sites, analysis, guard)
        else:
            sites, value = self.trace(args, kwargs, *handlers)
            plan = self.plan_for(sites, args, kwargs, guard)
        self.last_plan = plan
        return sites, value, plan

    def plan_for(self, sites, args, kwargs, guard=None):
        """The plan for a plainly recorded run: cached for its structure and arguments, or
        derived now by replaying the run under provenance tracking."""
        guard = arguments(args, kwargs) if guard is None else guard
        plan = self.structures.get((tuple(s.key for s in sites), guard))
        if plan is None:
            replay = {s.name: s.value for s in sites if s.role in ("message", "env")}
            analysis = Analysis(replay, inputs=(args, kwargs))
            with analysis:
                self.model(*args, **kwargs)
            check_replay(sites, analysis.sites)
            plan = self.plan_of(sites, analysis, guard)
        self.last_plan = plan
        return plan

    def plan_of(self, sites, analysis, guard):
        """The plan of an analysed run, cached by its signature and data flow."""
        sig = tuple(s.key for s in sites)
        flow = data_flow(sites, analysis)
        plan = self.plans.get((sig, flow))
        if plan is None:
            check_sites(sites, analysis)
            plan = self.plans[(sig, flow)] = self.analyse(sites, analysis)
            plan.flow = flow
            while len(self.plans) > self.max_plans:   # a dynamic model's flows may not repeat
                self.plans.pop(next(iter(self.plans)))
        if analysis.escaped:
            self.dynamic = True
        else:
            cached = self.structures.get((sig, guard))
            if cached is not None and cached.flow != flow:   # not identity: plans get evicted
                raise ScgError(first_difference(cached.flow, flow, sites))
            self.structures[(sig, guard)] = plan
        return plan

    def analyse(self, sites, analysis):
        g = G.build(sites, analysis.parents, analysis.masks, analysis.bits,
                    analysis.reads, analysis.worlds)
        owner = self._find_parameters(sites)
        for c, o in owner.items():
            g.nodes[c]["owner"] = o
        return P.build(g, self.gamma, self.options["objective"],
                       self.options["discount_score"], owner)

    def _find_parameters(self, sites):
        """theta_i per coagent by autograd reachability; owners of unlabelled cost terms."""
        reach = {}
        for s in sites:
            if s.coagent is not None and s.role in ("message", "predict"):
                lp = s.fn.log_prob(s.value.detach()) if s.role == "message" else \
                    predictor_log_prob(s)
                reach.setdefault(s.coagent, {}).update(_leaves(lp))
            elif s.coagent is not None:
                reach.setdefault(s.coagent, {}).update(_leaves(s.value))
        for s in sites:
            if s.role == "value":
                self.value_params.update(_leaves(s.fn.v))
        owner = {}
        for s in sites:
            if s.role == "cost" and s.coagent is None:
                leaves = _leaves(s.value)
                hits = [c for c, ps in reach.items() if leaves.keys() & ps.keys()]
                if len(hits) > 1:
                    raise ScgError(f"cost {s.name!r} reaches parameters of coagents {hits}: "
                                   "say whose it is with scg.cost(..., coagent=...)")
                if leaves and not hits:
                    raise ScgError(f"cost {s.name!r} (step {s.time}) reaches parameters that no "
                                   "coagent's sites use, so no coagent would train them: say "
                                   "whose they are with scg.cost(..., coagent=...)")
                owner[s.name] = hits[0] if hits else None
        for c, ps in reach.items():
            self.params.setdefault(c, {}).update(ps)
        ids = {}
        for c, ps in self.params.items():
            for k in ps:
                ids.setdefault(k, []).append(c)
        self.shared = {k: cs for k, cs in ids.items() if len(cs) > 1}
        return owner

    def critic_for(self, site):
        dim = B.features(site).shape[-1]
        key = f"{site.coagent}|{dim}".replace(".", ":")  # module names cannot hold "."
        self.critic_owner[key] = site.coagent
        if key not in self.critics:
            h = int(self.options["critic_hidden"])
            self.critics[key] = torch.nn.Sequential(
                torch.nn.Linear(dim, h), torch.nn.Tanh(), torch.nn.Linear(h, 1)).to(
                device=site.value.device, dtype=B.features(site).dtype)
        return self.critics[key]

    # ---- emission ------------------------------------------------------------------------
    def run(self, args, kwargs, *handlers, update=True):
        sites, value, plan = self.traced(args, kwargs, *handlers)
        for s in sites:   # both estimators: no score at a value the run did not sample
            if s.role in ("message", "env"):
                s.check_unchanged()
        if self.td is not None:
            u, ret = self.td.window(sites, *self._td_params())
            out = self._td_output(u, ret, plan)
        else:
            out = self.emit(sites, plan, update=update)
        out.value, out.sites = value, sites
        return out

    def trace(self, args, kwargs, *handlers, record=None):
        """Run the model once, recording its sites: ``(sites, return value)``."""
        try:
            return run(self.model, args, kwargs, *handlers, record=record)
        except (ValueError, RuntimeError) as e:
            # torch.distributions' validation, or sampling from invalid numbers (a model
            # built without validate_args)
            if "Expected parameter" not in str(e) and "inf`, `nan`" not in str(e):
                raise
            raise ScgError(self._invalid_parameters(e)) from None

    def _invalid_parameters(self, e):
        """The message for a distribution built from invalid numbers (NaN, inf) in the model:
        which coagents' parameters are no longer finite (a diverged update, usually)."""
        bad = sorted(c for c, ps in self.params.items()
                     if any(not torch.isfinite(p).all() for p in ps.values()))
        first = str(e).splitlines()[0]
        where = (f"coagents with non-finite parameters: {bad} (training diverged: lower the "
                 "step size, or check the updates)") if bad else \
            "no coagent's parameters are non-finite: check the model's inputs"
        return (f"{getattr(self.model, '__name__', 'the model')}: a distribution got invalid "
                f"parameters ({first}); {where}")

    # ---- online (estimator="td") -----------------------------------------------------------
    def finish(self, done=None):
        """``estimator="td"``: end the episode (V = 0 after the last step). Returns the
        :class:`Output` of the last step's update, and resets traces and the time origin.

        ``done``: a bool tensor [N], one per episode of the ``scg.episodes`` plate, ends only
        those episodes (the others go on in the next window): a batch of environments that
        restart independently, e.g. several runs learning online in one tensor program."""
        if self.td is None:
            raise ScgError("finish() is for estimator='td'; the Monte Carlo estimator has no "
                           "state between calls")
        return self._td_output(self.td.finish(*self._td_params(), done=done), 0.0,
                               self.last_plan)

    def _td_params(self):
        actor = list({id(p): p for ps in self.params.values() for p in ps.values()}.values())
        ids = {id(p) for p in actor}
        critic = [p for k, p in self.value_params.items() if k not in ids]
        return actor, critic

    def _td_output(self, u, ret, plan):
        """The surrogate -(u . theta): gradient -u, value minus the window's return."""
        actor, critic = self._td_params()
        first, local = {}, {}
        for c in sorted(self.params):  # a shared parameter's update goes to its first owner
            for k in self.params[c]:
                first.setdefault(k, c)
        ref = next(iter(u.values())) if u else torch.zeros(())
        for k, p in [(id(p), p) for p in actor + critic]:
            owner = first.get(k, "critic")
            term = -(u[k].detach() * p).sum()
            local[owner] = local.get(owner, ref.new_zeros(())) + term - term.detach()
        for c in (plan.coagents if plan is not None else []):
            local.setdefault(c, ref.new_zeros(()))
        for c in local:  # the value, minus the return, shared evenly (as in emit)
            local[c] = local[c] - ret / len(local)
        loss = sum(local.values(), ref.new_zeros(()))
        objective = ref.new_tensor(ret)
        return Output(loss, local, objective, {"return": ret, "rho": self.td.rho})

    def emit(self, sites, plan, update=True):
        """The surrogate of one recorded run under ``plan``."""
        if not plan.costs:
            raise ScgError("the network emitted no reward, cost or predictor: nothing to optimise")
        ref = common_float(sites)   # the run's float dtype and device; costs are cast to it
        T = plan.on(ref.device, ref.dtype)
        n = len(plan.coagents)
        C = [torch.stack([cost(sites[i], ref) for i in g.index]) for g in plan.costs]
        for g, c in zip(plan.costs, C):
            _check_finite(g, c, sites)
        per_cost = [c.reshape(c.shape[0], -1).sum(1) * k for c, k in zip(C, T["coef"])]
        objective = sum(v.sum() for v in per_cost)
        owned = objective.new_zeros(n)
        unowned = 0.0
        for v, (own, free) in zip(per_cost, T["cost_owner"]):
            if own is not None:
                owned = owned.index_add(0, own[1], v[own[0]])
            if free is not None:
                unowned = unowned + (v[free].sum() if own is not None else v.sum())
        score = owned
        critic = None
        rule = B.RULES[self.options["baseline"]]
        S = {}  # suffix sums per (cost group, reduction), shared by site groups
        for i, g in enumerate(plan.sites):
            lp = group_log_prob([sites[k] for k in g.index])
            R = lp.new_zeros(lp.shape)
            for j in range(len(plan.costs)):
                credit = T["credit"].get((i, j))
                if credit is not None:
                    key = (j, credit.dims, credit.view)
                    if key not in S:
                        c = C[j].detach()
                        c = c.sum(credit.dims, keepdim=True) if credit.dims else c
                        S[key] = P.suffix_sums(c.reshape((c.shape[0],) + credit.view),
                                               T["scans"][j])
                    R = P.apply_credit(R, credit, S[key])
            b, reg = rule(self, g, R, sites, update)
            kappa = T["kappa"][i].reshape((-1,) + (1,) * (R.dim() - 1))
            term = (lp * (kappa * (R - b)).detach()).reshape(lp.shape[0], -1).sum(1)
            score = score.index_add(0, T["site_owner"][i], term - term.detach())
            for coagent, r in reg or ():
                critic = (objective.new_zeros(n) if critic is None else critic).index_add(
                    0, torch.tensor([plan.coagents.index(coagent)], device=r.device),
                    (r - r.detach())[None])
        local_terms = score if critic is None else score - critic
        loss = -(local_terms.sum() + unowned)
        share = unowned / max(n, 1)
        neg = -(local_terms + share)
        local = dict(zip(plan.coagents, neg.unbind()))
        stats = {"return": objective.item(), "sites": len(sites)}
        return Output(loss, local, objective, stats)


def _takes_no_arguments(model):
    try:
        inspect.signature(getattr(model, "__wrapped__", model)).bind()
        return True
    except (TypeError, ValueError):
        return False


def _leaves(t):
    """Parameters (requires-grad leaves) that autograd reaches from ``t``, keyed by id."""
    out, seen = {}, set()
    stack = [t.grad_fn] if isinstance(t, torch.Tensor) and t.grad_fn is not None else []
    if isinstance(t, torch.Tensor) and t.requires_grad and t.grad_fn is None:
        out[id(t)] = t
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            out[id(fn.variable)] = fn.variable
        stack.extend(f for f, _ in fn.next_functions)
    return out


def _check_finite(group, c, sites):
    if not torch.isfinite(c).all():
        bad = [n for n, x in zip(group.names, c) if not torch.isfinite(x).all()][0]
        s = sites[group.index[group.names.index(bad)]]
        raise ScgError(f"{s.role} {bad!r} (step {s.time}) is NaN or infinite")

