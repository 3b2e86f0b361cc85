"""Soundness as a property (issue 14): random small coagent networks, generated as data, are
exact in expectation or refused with an ScgError naming a site.

A network is a :class:`Spec`: 1-3 steps, each with 1-3 Bernoulli or Categorical(3) messages
owned by 1-3 coagents, whose logits are linear in a random subset of earlier messages; rewards
that are random tables over a subset of messages; values read through random kinds of escape
(``int()``, ``.item()``, a bool branch, a ``torch.tensor`` rebuild, an in-place write into a
fresh buffer); ``scg.done`` at random steps; a Python argument that switches the wiring;
``scg.episodes(2)``, ``scg.episodes(1)`` or no plate at all. :func:`interpret` runs a spec as an
``@scg.network`` model; :func:`oracle` interprets the same spec directly in plain torch, without
scg, for exact enumeration (tests/test_soundness.py has the machinery: :class:`World`, forced
values, the estimator's expectation over every joint value with one estimator object whose
first call is a run drawn by the example, under the other wiring argument).
"""

import warnings
from dataclasses import dataclass

import pyro.distributions as dist
import pytest
import torch
from test_soundness import enumerate_world, exact_gradient, expected_gradient, forced

import scg

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

ESCAPES = ("none", "int", "item", "branch", "tolist", "copy", "buffer")
K = {"bern": 2, "cat": 3}
BUDGET = {None: 128, 1: 128, 2: 8}  # joint values per episode (squared for two episodes)


@dataclass(frozen=True)
class Msg:
    kind: str     # bern | cat
    coagent: int
    srcs: tuple   # ((t, k), escape) pairs: earlier messages its logits read, wiring 0
    alt: tuple    # the same under wiring 1


@dataclass(frozen=True)
class Rew:
    srcs: tuple   # ((t, k), escape) pairs: messages the reward table is indexed by, wiring 0
    alt: tuple


@dataclass(frozen=True)
class Step:
    msgs: tuple
    rews: tuple
    done: object  # None or ((t, k), escape, value): the episode ends where that message == value


@dataclass(frozen=True)
class Spec:
    steps: tuple
    plate: object     # None (no plate), 1 or 2 (scg.episodes(N))
    gamma: float
    baseline: str
    first_arg: int    # the wiring of the estimator's first call
    arg: int          # the wiring of the enumerated calls
    first: int        # which joint value the first call runs (-1: all choices 0)
    seed: int         # parameters and reward tables


@st.composite
def specs(draw):
    plate = draw(st.sampled_from([None, 1, 2]))
    N = plate or 1
    T = draw(st.integers(1, 3))
    size, steps, earlier = 1, [], []  # earlier: (t, k, kind) of messages so far

    def refs(pool, most):
        chosen = draw(st.lists(st.sampled_from(pool), max_size=most, unique=True)) if pool else []
        return tuple(((t, k), draw(st.sampled_from(ESCAPES))) for t, k, _ in chosen)

    for t in range(T):
        msgs = []
        for k in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["bern", "cat"]))
            if size * K[kind] ** N > BUDGET[plate] ** N:
                break
            size *= K[kind] ** N
            msgs.append(Msg(kind, draw(st.integers(0, 2)), refs(earlier, 2), refs(earlier, 2)))
            earlier.append((t, k, kind))
        if not msgs:
            break
        n_rews = draw(st.integers(0, 2))
        rews = tuple(Rew(refs(earlier, 2), refs(earlier, 2)) for _ in range(n_rews))
        done = None
        if plate is not None and draw(st.booleans()):
            (dt, dk, _), escape = draw(st.sampled_from(earlier)), draw(st.sampled_from(ESCAPES))
            done = ((dt, dk), escape, draw(st.integers(0, 1)))
        steps.append(Step(tuple(msgs), rews, done))
    if not any(s.rews for s in steps):  # something to optimise
        last = steps[-1]
        steps[-1] = Step(last.msgs, (Rew(refs(earlier, 2), refs(earlier, 2)),), last.done)
    baseline = draw(st.sampled_from(["none", "loo"])) if plate == 2 else "none"
    return Spec(tuple(steps), plate, draw(st.sampled_from([1.0, 0.8])), baseline,
                draw(st.integers(0, 1)), draw(st.integers(0, 1)),
                draw(st.one_of(st.just(-1), st.integers(0, 10 ** 6))), draw(st.integers(0, 999)))


# ---- parameters and tables, shared by the two interpreters (plain numbers, no scg) ---------

def parameters(spec):
    """Per message: a bias and one weight row per source (either wiring); per reward: a table
    of values for each wiring. float64, from the spec's seed."""
    g = torch.Generator().manual_seed(spec.seed)
    params, tables = {}, {}
    for t, step in enumerate(spec.steps):
        for k, m in enumerate(step.msgs):
            width = 1 if m.kind == "bern" else 3
            srcs = sorted({r for r, _ in m.srcs + m.alt})
            params[t, k] = {"bias": torch.randn(width, generator=g, dtype=torch.float64),
                            **{r: 1.5 * torch.randn(width, generator=g, dtype=torch.float64)
                               for r in srcs}}
        for j, rew in enumerate(step.rews):
            for wiring, srcs in enumerate((rew.srcs, rew.alt)):
                n = 1
                for r, _ in srcs:
                    n *= K[kind_of(spec, r)]
                tables[t, j, wiring] = torch.randn(n, generator=g, dtype=torch.float64)
    for ps in params.values():
        for p in ps.values():
            p.requires_grad_(True)
    flat = [p for ps in params.values() for p in ps.values()]
    return params, tables, flat


def kind_of(spec, ref):
    t, k = ref
    return spec.steps[t].msgs[k].kind


def strides(spec, srcs):
    out, s = [], 1
    for r, _ in reversed(srcs):
        out.append(s)
        s *= K[kind_of(spec, r)]
    return out[::-1]


# ---- the spec as an scg model ----------------------------------------------------------------

def escape(v, how):
    """The value of message ``v`` (any batch shape) as a float64 tensor, read through ``how``."""
    shape = v.shape
    flat = v.reshape(-1)
    n = flat.shape[0]
    if how == "none":
        return v.double()
    if how == "int":
        return torch.tensor([float(int(flat[i])) for i in range(n)]).reshape(shape)
    if how == "item":
        return torch.tensor([float(flat[i].item()) for i in range(n)]).reshape(shape)
    if how == "branch":
        return torch.tensor([1.0 if bool(flat[i] == 1) else 2.0 if bool(flat[i] == 2) else 0.0
                             for i in range(n)]).reshape(shape)
    if how == "tolist":
        return torch.tensor(v.tolist(), dtype=torch.float64)
    if how == "copy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns when a tensor is copy-constructed
            return torch.tensor(v, dtype=torch.float64)
    buf = torch.zeros(shape, dtype=torch.float64)
    buf[...] = v
    return buf


def interpret(spec, params, tables):
    """An ``@scg.network`` model of ``spec``: ``model(wiring)``."""

    def body(wiring):
        vals = {}
        for t in scg.steps(len(spec.steps)):
            step = spec.steps[t]
            for k, m in enumerate(step.msgs):
                ps = params[t, k]
                logits = ps["bias"].expand(shape + ps["bias"].shape)
                for r, how in (m.alt if wiring else m.srcs):
                    logits = logits + escape(vals[r], how)[..., None] * ps[r]
                fn = dist.Bernoulli(logits=logits[..., 0]) if m.kind == "bern" else \
                    dist.Categorical(logits=logits)
                vals[t, k] = scg.message(f"m{k}", fn, coagent=f"c{m.coagent}")
            for j, rew in enumerate(step.rews):
                srcs = rew.alt if wiring else rew.srcs
                index = torch.zeros(shape, dtype=torch.float64)
                for (r, how), s in zip(srcs, strides(spec, srcs)):
                    index = index + s * escape(vals[r], how)
                scg.reward(f"r{j}", tables[t, j, wiring][index.long()])
            if step.done is not None:
                r, how, value = step.done
                scg.done((escape(vals[r], how) == value).reshape(-1))

    shape = () if spec.plate is None else (spec.plate,)

    @scg.network
    def model(wiring):
        if spec.plate is None:
            return body(wiring)
        with scg.episodes(spec.plate):
            return body(wiring)

    return model


# ---- the spec in plain torch: the oracle -----------------------------------------------------

def oracle(spec, params, tables, wiring):
    """``world(w)`` for :func:`enumerate_world`: each episode of the spec, with plain ints."""
    N = spec.plate or 1
    index = (lambda i: ()) if spec.plate is None else (lambda i: (i,))

    def world(w):
        total = 0.0
        for i in range(N):
            vals, finished, ret = {}, False, 0.0
            for t, step in enumerate(spec.steps):
                for k, m in enumerate(step.msgs):
                    ps = params[t, k]
                    logits = ps["bias"]
                    for r, _ in (m.alt if wiring else m.srcs):
                        logits = logits + float(vals[r]) * ps[r]
                    if m.kind == "bern":
                        p = torch.sigmoid(logits[0])
                        probs = torch.stack([1 - p, p])
                    else:
                        probs = torch.softmax(logits, -1)
                    vals[t, k] = w.draw(f"m{k}@{t}", probs, index(i))
                for j, rew in enumerate(step.rews):
                    srcs = rew.alt if wiring else rew.srcs
                    cell = sum(s * vals[r] for (r, _), s in zip(srcs, strides(spec, srcs)))
                    if not finished:  # costs after scg.done are masked
                        ret = ret + spec.gamma ** t * tables[t, j, wiring][cell]
                if step.done is not None:
                    r, _, value = step.done
                    finished = finished or vals[r] == value
            total = total + ret / N
        return total

    return world


def site_names(spec):
    names = set()
    for t, step in enumerate(spec.steps):
        names |= {f"m{k}@{t}" for k in range(len(step.msgs))}
        names |= {f"r{j}@{t}" for j in range(len(step.rews))}
    return names


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True, database=None,
                     phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # no shrinking
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(specs())
@pytest.mark.slow
def test_random_network_is_exact_or_refused(spec):
    params, tables, flat = parameters(spec)
    taus = enumerate_world(oracle(spec, params, tables, spec.arg))
    G = exact_gradient(taus, flat)
    first = taus[0] if spec.first < 0 else taus[spec.first % len(taus)]
    model = forced(interpret(spec, params, tables))
    try:
        for order, start in (("forward", (first, (spec.first_arg,))), ("reverse", None)):
            est = scg.compile(model, gamma=spec.gamma, baseline=spec.baseline)
            seq = taus if order == "forward" else taus[::-1]
            E = expected_gradient(est, model, flat, seq, (spec.arg,), first=start)
            err = (E - G).norm().item()
            assert err <= 1e-8 * max(G.norm().item(), 1e-3), (
                f"{order} pass: estimator's expected gradient {E.tolist()} != exact "
                f"{G.tolist()} (error {err:.3g})")
    except scg.ScgError as e:
        names = site_names(spec)
        assert any(n in str(e) or n.split("@")[0] in str(e) for n in names), \
            f"ScgError names no site of the network: {e}"
