"""The public surface: caching per structure, Pyro composition, coagent sugar, render, derive,
finite differences, state."""

import shutil

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import scg
from networks import REGISTRY, lin
from scg.tools import render as R


def test_analysis_is_cached_per_structure(monkeypatch):
    model, args, opts = REGISTRY["recurrent_steps"]()
    est = scg.compile(model, **opts)
    calls = []
    original = est.analyse
    monkeypatch.setattr(est, "analyse", lambda *a: calls.append(1) or original(*a))
    for _ in range(3):
        est(*args)
    assert len(calls) == 1
    est(*args, T=2)                      # another horizon: a new structure
    assert len(calls) == 2 and len(est.plans) == 2
    assert scg.check(model, *args, est=est, method="enumerate").ok


def test_composes_with_pyro_handlers():
    model, args, _ = REGISTRY["recurrent_steps"]()
    tr = poutine.trace(model).get_trace(*args)
    assert [n for n in tr.nodes if n.startswith("m@")] == ["m@0", "m@1", "m@2"]
    assert tr.nodes["m@1"]["infer"]["scg_coagent"] == "f"
    replayed = poutine.trace(poutine.replay(model, trace=tr)).get_trace(*args)
    for t in range(3):
        assert torch.equal(replayed.nodes[f"m@{t}"]["value"], tr.nodes[f"m@{t}"]["value"])
    fixed = torch.tensor([1.0, 0.0])
    cond = poutine.trace(poutine.condition(model, data={"m@1": fixed})).get_trace(*args)
    assert cond.nodes["m@1"]["is_observed"] and torch.equal(cond.nodes["m@1"]["value"], fixed)


def test_coagent_sugar_names_the_coagent():
    f = lin(2, 2)

    @scg.coagent
    def sender(x):
        return dist.Categorical(logits=f(x))

    receiver = scg.coagent(torch.nn.Sequential(lin(2, 2)), name="receiver")

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            x = torch.nn.functional.one_hot(s, 2).double()
            m = scg.message("m", sender(x))
            a = scg.message("a", receiver(torch.nn.functional.one_hot(m, 2).double()))
            scg.reward("r", (a == s).double())

    # a Module's output is a tensor, not a distribution: the hook refuses it clearly
    with pytest.raises(scg.ScgError, match="coagent 'receiver' must return a torch distribution"):
        scg.compile(model)(torch.tensor([0, 1]))

    class Policy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin(2, 2)

        def forward(self, x):
            return dist.Categorical(logits=self.lin(x))

    receiver = scg.coagent(Policy(), name="receiver")
    est = scg.compile(model)
    out = est(torch.tensor([0, 1]))
    assert set(out.local) == {"sender", "receiver"}
    assert scg.check(model, torch.tensor([0, 1]), est=est).ok


def test_finite_differences_for_continuous_sites():
    f = lin(1, 1)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            m = scg.message("m", dist.Normal(f(s[:, None]).squeeze(-1), 0.5), coagent="f")
            scg.reward("r", -(m - 2.0) ** 2)
    report = scg.check(model, torch.ones(4000), samples=10, directions=6)
    assert report.method == "fd"
    assert report.row("total").cosine > 0.95, str(report)


def test_reparam_message_gradient_is_pathwise():
    f = lin(1, 1)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            m = scg.message("m", dist.Normal(f(s[:, None]).squeeze(-1), 0.5), coagent="f",
                            reparam=True)
            scg.cost("c", -(m - 2.0) ** 2, coagent="f")
    est = scg.compile(model)
    s = torch.ones(20000)
    loss = est.loss(s)
    loss.backward()
    mu = f(torch.ones(1, 1)).item()
    # dJ/db = E[-2 (m - 2)] = -2 (mu - 2)
    assert f.bias.grad.item() == pytest.approx(2 * (mu - 2.0), rel=0.05)


def test_render_spec_and_svg():
    model, args, _ = REGISTRY["predictor_shared"]()
    est = scg.compile(model)
    spec = R.spec(est.graph(*args))
    roles = {n["name"]: n["role"] for n in spec["nodes"]}
    assert roles == {"m": "message", "a": "message", "p": "predict", "r": "reward"}
    assert spec["clusters"] == {"A": ["m", "p"], "B": ["a"]}
    assert ("m", "a") in spec["edges"] and ("a", "p") in spec["edges"]
    assert next(n for n in spec["nodes"] if n["name"] == "p")["filled"]
    dot = scg.render(model, *args)
    assert "cluster_A" in dot.source
    if shutil.which("dot"):
        assert "<svg" in dot.pipe(format="svg").decode()


def test_derive_lists_each_coagents_rule():
    model, args, opts = REGISTRY["recurrent_steps"]()
    text = str(scg.derive(model, *args, est=scg.compile(model, **opts)))
    assert "coagent f\n" in text and "coagent q\n" in text
    assert "Δθ_f ∝ Σ_t γ^t ∇ log π_f(m_t | m_{t−1}, m_{t−2}) (G^m_t − b^m_t)" in text
    assert "G_t = Σ_{t' ≥ t} γ^(t'−t) log q_q(p_t') + Σ_{t' ≥ t} γ^(t'−t) r_t'" in text
    assert "Δθ_q ∝ Σ_t γ^t ∇ log q_q(p_t | m_t)" in text


def test_state_dict_roundtrip_and_parameters():
    model, args, opts = REGISTRY["chain"]()
    est = scg.compile(model, baseline="avg")
    est(*args)
    state = est.state_dict()
    est2 = scg.compile(model, baseline="avg")
    est2.load_state_dict(state)
    assert est2.baseline.averages.keys() == est.baseline.averages.keys() != set()
    assert {id(p) for p in est.parameters("f")} != {id(p) for p in est.parameters("g")}
    with pytest.raises(scg.ScgError, match="unknown coagent 'h'"):
        list(est.parameters("h"))


def test_unowned_reward_value_is_shared_by_local_losses():
    model, args, _ = REGISTRY["fork"]()
    out = scg.compile(model)(*args)
    vals = torch.stack(list(out.local.values()))
    assert torch.allclose(vals.sum(), out.loss)
    assert torch.allclose(vals, vals[0].expand(3))  # no owned costs: equal shares


def test_pyro_param_store_untouched():
    pyro.clear_param_store()
    model, args, _ = REGISTRY["chain"]()
    scg.compile(model, baseline="critic")(*args)
    assert len(pyro.get_param_store()) == 0


def _same(v, w):
    """Equal infer values: tensors by value, tuples (a message's local state) elementwise."""
    if isinstance(v, torch.Tensor):
        return isinstance(w, torch.Tensor) and torch.equal(v, w)
    if isinstance(v, tuple) and v and isinstance(v[0], torch.Tensor):
        return isinstance(w, tuple) and len(v) == len(w) and all(map(_same, v, w))
    return v == w


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_fast_path_equals_pyro_path(name):
    """With only scg's handlers active, sites skip Pyro's generic stack; under any other
    handler (here an inert poutine.block) they take the full path: the same run either way."""
    from scg.core.record import record

    model, args, opts = REGISTRY[name]()
    torch.manual_seed(5)
    fast, _ = record(model, args, {})
    torch.manual_seed(5)
    slow, _ = record(model, args, {}, poutine.block(hide_fn=lambda msg: False))
    assert [s.key for s in fast] == [s.key for s in slow]
    for a, b in zip(fast, slow):
        assert torch.equal(a.value, b.value), a.name
        assert (a.mask is None) == (b.mask is None)
        assert a.mask is None or torch.equal(a.mask, b.mask)
        assert a.infer.keys() == b.infer.keys()
        for k, v in a.infer.items():
            assert _same(v, b.infer[k]), k
        assert torch.equal(a.fn.log_prob(a.value), b.fn.log_prob(b.value)) or \
            a.role not in ("message", "env")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_analysis_fast_path_equals_pyro_path(name, monkeypatch):
    """Provenance analysis takes scg's fast path too (no Pyro handler-stack machinery for scg's
    sites): a replayed run under it finds the same parents, masks, bits, reads and escape
    nodes as one forced through Pyro's full path."""
    import pyro.primitives

    from scg.compiler.provenance import Analysis
    from scg.core.record import record

    model, args, opts = REGISTRY[name]()
    calls = []
    apply_stack = pyro.primitives.apply_stack   # what pyro.sample calls
    monkeypatch.setattr(pyro.primitives, "apply_stack", lambda msg: calls.append(msg) or
                        apply_stack(msg))

    def full_path():   # scg sites that went through Pyro's full path since the last look
        names = [m["name"] for m in calls if "scg_role" in m["infer"]]
        calls.clear()
        return names

    sites, _ = record(model, args, {})
    plain = full_path()   # (a site whose batch shape lacks a plate's size takes it)
    replay = {s.name: s.value for s in sites if s.role in ("message", "env")}
    fast = Analysis(replay, inputs=(args, {}))
    record(model, args, {}, recorder=fast)
    assert full_path() == plain
    slow = Analysis(replay, inputs=(args, {}))
    record(model, args, {}, poutine.block(hide_fn=lambda msg: False), recorder=slow)
    assert full_path()   # the full path, this time
    assert [s.name for s in fast.sites] == [s.name for s in slow.sites]
    for key in ("parents", "masks", "bits", "reads"):
        assert getattr(fast, key) == getattr(slow, key), key
    assert fast.worlds == slow.worlds


def test_batched_group_log_prob_equals_per_site():
    """Bernoulli/Categorical groups are scored as one distribution over stacked logits: the
    same values and gradients as one log_prob per site (masks included)."""
    from scg.core.record import record
    from scg.core.terms import group_log_prob, log_prob

    model, args, opts = REGISTRY["async_fixed"]()
    sites, _ = record(model, args, {})
    for prefix in ("m@", "m.exec@"):
        group = [s for s in sites if s.name.startswith(prefix)]
        assert len(group) == 2
        a = group_log_prob(group)
        b = torch.stack([log_prob(s) for s in group])
        assert torch.allclose(a, b, atol=1e-12)
    group = [s for s in sites if s.name.startswith("m@")]
    assert all(s.mask is not None for s in group)
    est = scg.compile(model, **opts)
    est(*args)
    params = list(est.parameters("f"))
    ga = torch.autograd.grad(group_log_prob(group).sum(), params, retain_graph=True)
    gb = torch.autograd.grad(torch.stack([log_prob(s) for s in group]).sum(), params)
    assert any(x.abs().sum() > 0 for x in ga)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-12)


def test_loo_baseline_averages_only_running_episodes(monkeypatch):
    """After episode 0 finishes, the two running episodes' leave-one-out baselines average
    each other only (1), not the finished episode's return of 0 too (0.5)."""
    from scg.estimators import baselines

    seen = []
    rule = baselines.LeaveOneOut.__call__

    def spy(self, group, R, sites, update):
        b, extra = rule(self, group, R, sites, update)
        seen.append((R.detach().clone(), b.detach().clone()))
        return b, extra
    monkeypatch.setattr(baselines.LeaveOneOut, "__call__", spy)
    th = torch.nn.Parameter(torch.zeros(3, dtype=torch.double))

    @scg.network
    def model():
        with scg.episodes(3):
            for _ in scg.steps(3):
                a = scg.message("a", dist.Bernoulli(logits=th), coagent="p")
                scg.reward("r", torch.ones(3, dtype=torch.double) + 0 * a)
                scg.done(torch.tensor([True, False, False]))
    scg.compile(model, baseline="loo")()
    R, b = seen[-1]
    assert torch.equal(R, torch.tensor([[1., 1., 1.], [0., 1., 1.], [0., 1., 1.]],
                                       dtype=R.dtype))
    assert torch.equal(b[1:, 1:], R[1:, 1:])      # the other running episode's return
    assert torch.equal(b[0], R[0])


def test_a_plain_pyro_plate_keeps_the_fast_path(monkeypatch):
    """A vectorised pyro.plate that does not subsample has no effect on a site whose
    distribution already has its size: scg's sites skip Pyro's full path under it, and the
    estimator's gradient equals the full path's (forced by an inert poutine.block). A
    subsampling plate (its scale is not 1) takes the full path."""
    import pyro.primitives

    calls = []
    apply_stack = pyro.primitives.apply_stack
    monkeypatch.setattr(pyro.primitives, "apply_stack", lambda msg: calls.append(msg) or
                        apply_stack(msg))
    w = torch.tensor([0.3, -0.4], requires_grad=True)

    @scg.network
    def net(subsample=None):
        with scg.episodes(4), pyro.plate("rep", 2, dim=-2, subsample_size=subsample):
            n = 2 if subsample is None else subsample
            a = scg.message("a", dist.Bernoulli(logits=w[:n, None].expand(n, 4)), coagent="f")
            scg.reward("r", a * torch.tensor([[1.0], [-2.0]])[:n])

    est = scg.compile(net)
    torch.manual_seed(0)
    fast = torch.autograd.grad(est().loss, w)[0]
    assert not [m for m in calls if "scg_role" in m["infer"]]
    torch.manual_seed(0)
    with poutine.block(hide_fn=lambda msg: False):
        slow = torch.autograd.grad(est().loss, w)[0]
    assert [m for m in calls if "scg_role" in m["infer"]]
    assert torch.equal(fast, slow)
    from scg.core.context import fast_path_frame
    for size, fast in ((None, True), (3, False)):
        plate = pyro.plate("p", 10, dim=-1, subsample_size=size)
        with plate:
            assert fast_path_frame(plate) is fast


def test_point_mass_behaves_as_pyros_delta():
    """A cost site's distribution is built without Delta's constructor: the same class, shapes,
    value, log-probability and expansion as ``dist.Delta(v, validate_args=False)``, and a
    Pyro trace scores it."""
    from scg.primitives import point_mass

    for v in (torch.tensor(1.5), torch.randn(4), torch.randn(3, 2, dtype=torch.float64)):
        a, b = point_mass(v), dist.Delta(v, validate_args=False)
        assert type(a) is type(b) and a.batch_shape == b.batch_shape
        assert a.event_shape == b.event_shape and a.v is v
        for x in (v, v + 1):
            assert torch.equal(a.log_prob(x), b.log_prob(x))
        big = (5,) + tuple(v.shape)
        assert torch.equal(a.expand(big).log_prob(v.expand(big)),
                           b.expand(big).log_prob(v.expand(big)))

    @scg.network
    def net():
        with scg.episodes(3):
            scg.message("m", dist.Bernoulli(logits=torch.zeros(3)), coagent="u")
            scg.reward("r", torch.ones(3))

    tr = poutine.trace(net).get_trace()
    tr.compute_log_prob()
    assert torch.equal(tr.nodes["r"]["log_prob"], torch.zeros(3))


def test_stacked_costs_equal_each_cost():
    """A cost group's values stacked at once equal :func:`scg.core.terms.cost` of each site,
    cast to the run's dtype: rewards of mixed dtypes, a masked reward and a predictor."""
    from scg.core.terms import cost, stacked_costs

    pyro.set_rng_seed(0)
    pred = torch.nn.Parameter(torch.zeros(4))

    @scg.network
    def net(kind):
        with scg.episodes(4):
            m = scg.message("m", dist.Bernoulli(logits=torch.zeros(4, dtype=torch.float64)),
                            coagent="u")
            scg.reward("r32", torch.arange(4.0))
            scg.reward("r64", torch.arange(4, dtype=torch.float64) * 0.1)
            if kind == "done":
                scg.done(m.bool())
                scg.reward("late", torch.ones(4))
            if kind == "predict":
                scg.predict("p", dist.Normal(pred, 1.0), obs=m.float(), coagent="u")

    for kind in ("plain", "done", "predict"):
        est = scg.compile(net)
        sites = est.run((kind,), {}).sites
        group = [s for s in sites if s.role != "message"]
        like = torch.zeros((), dtype=torch.float64)
        want = torch.stack([cost(s, like) for s in group])
        got = stacked_costs(group, like)
        assert got.dtype == torch.float64 and torch.equal(got, want), kind


def test_canonical_params_of_per_instance_constraints():
    """Parameter names are cached per distribution class only where ``arg_constraints`` is a
    class attribute: a class that computes them per instance is asked every time."""
    from scg.core.terms import canonical_params

    class Either(dist.TorchDistribution):
        def __init__(self, **params):
            self.params = params
            for k, v in params.items():
                setattr(self, k, v)
            super().__init__(torch.Size(), torch.Size(), validate_args=False)

        @property
        def arg_constraints(self):
            return {k: torch.distributions.constraints.real for k in self.params}

    a, b = torch.tensor(1.0), torch.tensor(2.0)
    assert list(canonical_params(Either(loc=a))) == ["loc"]
    assert list(canonical_params(Either(scale=b))) == ["scale"]
    assert list(canonical_params(dist.Bernoulli(logits=a))) == ["logits"]
    assert list(canonical_params(dist.Bernoulli(probs=torch.tensor(0.3)))) == ["logits"]


def test_a_group_still_validates_replayed_values():
    """Scoring still refuses a value outside the support where a replay or a user's handler
    put it there, in a group and for one site: only a site's own draw (in the support by
    construction) and the logits each site's distribution checked are not validated again."""
    from scg.core.terms import group_log_prob, log_prob

    @scg.network
    def net():
        with scg.episodes(2):
            for _ in scg.steps(2):
                scg.message("m", dist.Bernoulli(logits=torch.zeros(2)), coagent="u")
            scg.reward("r", torch.ones(2))

    from scg.core.record import Fix, record
    sites, _ = record(net, (), {})
    group = [s for s in sites if s.role == "message"]
    assert all(s.sampled for s in group)   # own draws: in the support, not validated again
    assert group_log_prob(group).shape == (2, 2)
    sites, _ = record(net, (), {}, Fix({"m@1": torch.tensor([2.0, 0.0])}))
    group = [s for s in sites if s.role == "message"]
    assert [s.sampled for s in group] == [True, False]
    with pytest.raises(ValueError, match="support"):
        group_log_prob(group)
    with pytest.raises(ValueError, match="support"):
        log_prob(group[1])
