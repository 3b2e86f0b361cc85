"""Guards (design.md §3.4): when a cached plan is reused, when a run is analysed afresh, and the
allow-list that decides what is an escape. Oracles: exact enumeration in plain torch, or the
graph a run must have."""

import os

import pyro.distributions as dist
import pytest
import torch

import scg
from networks import REGISTRY, lin
from scg.compiler.provenance import Provenance


def escapes_of(fn, *tensors):
    """The escapes recorded while ``fn(*tensors)`` runs with each tensor a tracked source."""
    seen = []
    mode = Provenance(lambda prov, func: seen.append(func))
    for k, t in enumerate(tensors):
        mode.source(t, f"s{k}", sampled=True)
    with mode:
        fn(*tensors)
    return seen


@pytest.mark.parametrize("op", [
    lambda m: m.shape, lambda m: m.size(0), lambda m: m.dim(), lambda m: m.numel(),
    lambda m: len(m), lambda m: m.dtype, lambda m: m.device, lambda m: m + 1,
    lambda m: torch.stack([m, m]), lambda m: m.max(0), lambda m: list(m),
    lambda m: torch.tensor([m[0], m[1]]), lambda m: torch.as_tensor(m, dtype=torch.float64),
    lambda m: m.float().split(1),
], ids=["shape", "size", "dim", "numel", "len", "dtype", "device", "add", "stack", "max",
        "list", "torch.tensor", "as_tensor", "split"])
def test_metadata_and_tensor_ops_are_not_escapes(op):
    assert escapes_of(op, torch.tensor([1, 0, 1])) == []


@pytest.mark.parametrize("op", [
    lambda m: int(m[0]), lambda m: m[0].item(), lambda m: bool(m[0]), lambda m: m.tolist(),
    lambda m: 1 in m, lambda m: torch.equal(m, m), lambda m: str(m), lambda m: f"{m}",
    lambda m: m.numpy(), lambda m: m.untyped_storage(), lambda m: m.nonzero(),
    lambda m: torch.unique(m), lambda m: m[m > 0], lambda m: m.__reduce_ex__(2),
    lambda m: [10, 20][m[0]], lambda m: m[0].is_nonzero(),
], ids=["int", "item", "bool", "tolist", "in", "equal", "str", "format", "numpy", "storage",
        "nonzero", "unique", "bool-mask index", "pickle", "__index__", "is_nonzero"])
def test_values_leaving_torch_are_escapes(op):
    assert escapes_of(op, torch.tensor([1, 0, 1]))


def test_in_place_write_into_a_sampled_value_is_an_error():
    with pytest.raises(scg.ScgError, match="in-place write .*'s0'"):
        escapes_of(lambda m: m.clamp_(max=0), torch.tensor([1, 0, 1]))


def test_in_place_edit_after_the_run_is_caught_by_the_version_counter():
    """The plain (unanalysed) path has no provenance mode: the version counter catches it."""
    f = lin(1, 1)
    edit = []

    @scg.network
    def model(n):
        with scg.episodes(n):
            m = scg.message("m", dist.Bernoulli(logits=f(torch.ones(n, 1)).squeeze(-1)),
                            coagent="f")
            scg.reward("r", m)
            if edit:
                m.zero_()

    est = scg.compile(model, verify=False)
    est(2)
    edit.append(True)
    with pytest.raises(scg.ScgError, match="message 'm' .*written in place"):
        est(2)


def two_coagents():
    fa, fb = lin(1, 1), lin(1, 1)

    @scg.network
    def model(n, task):
        with scg.episodes(n):
            a = scg.message("a", dist.Bernoulli(logits=fa(torch.ones(n, 1)).squeeze(-1)),
                            coagent="A")
            b = scg.message("b", dist.Bernoulli(logits=fb(torch.ones(n, 1)).squeeze(-1)),
                            coagent="B")
            scg.reward("r", a if task == 0 else b)
    return model, fa, fb


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("role", ["reward", "predict"])
def test_a_cost_written_in_place_after_its_site_is_refused(role, verify):
    """A reward buffer filled after it was emitted (or a predictor's observation) would read
    sites emitted after it, which neither the analysed nor the sequential plan credits: a
    silently wrong gradient (scg.check: MISMATCH) before it was refused."""
    w = torch.nn.Parameter(torch.tensor(0.3))

    @scg.network
    def model(n):
        with scg.episodes(n):
            x = torch.zeros(n)
            if role == "reward":
                scg.reward("r", x)
            else:
                scg.predict("p", dist.Normal(w.expand(n), 1.0), obs=x, coagent="u")
            m = scg.message("m", dist.Bernoulli(logits=w.expand(n)), coagent="u")
            x += m
            scg.reward("r2", m)

    est = scg.compile(model, verify=verify)
    name = "r" if role == "reward" else "p"
    with pytest.raises(scg.ScgError, match=f"{role} '{name}' .*written in place after the site"):
        est(3)


def test_a_python_argument_is_part_of_the_guard():
    model, _, _ = two_coagents()
    est = scg.compile(model, verify=False)
    g0, g1 = est.graph(2, 0), est.graph(2, 1)
    assert set(g0.edges) == {("a", "r")} and set(g1.edges) == {("b", "r")}
    assert len(est.structures) == 2 and not est.dynamic


def test_an_escape_makes_the_estimator_dynamic_for_good():
    f = lin(1, 1)

    @scg.network
    def model(n, peek):
        with scg.episodes(n):
            m = scg.message("m", dist.Bernoulli(logits=f(torch.ones(n, 1)).squeeze(-1)),
                            coagent="f")
            if peek:
                int(m[0])
            scg.reward("r", m)

    est = scg.compile(model, verify=False)
    est(2, False)
    assert not est.dynamic
    est(2, True)      # a structure met once: the sequential plan (sound whatever escapes)
    assert not est.dynamic and est.last_plan.graph.graph.get("sequential")
    est(2, True)      # met again: analysed, and the escape seen
    assert est.dynamic
    est(2, False)     # still analysed as it happens: escapes are monotone
    assert est.dynamic and est.last_plan.graph.number_of_nodes() == 2


def test_verify_names_the_site_when_hidden_state_rewires_the_model():
    """Wiring that depends on state outside the arguments and the sampled values (a counter)
    is invisible to any guard; verify mode re-analyses every run and says where it differs."""
    fa, fb = lin(1, 1), lin(1, 1)
    calls = []

    @scg.network
    def model(n):
        calls.append(1)
        with scg.episodes(n):
            a = scg.message("a", dist.Bernoulli(logits=fa(torch.ones(n, 1)).squeeze(-1)),
                            coagent="A")
            b = scg.message("b", dist.Bernoulli(logits=fb(torch.ones(n, 1)).squeeze(-1)),
                            coagent="B")
            scg.reward("r", a if len(calls) < 2 else b)

    est = scg.compile(model, verify=True)
    est(2)
    with pytest.raises(scg.ScgError, match=r"reward 'r' \(step 0\) reads \['b'\]"):
        est(2)


def test_a_replay_that_does_not_reproduce_the_run_is_refused():
    """A model that steps hidden tensor state (no escape, so nothing makes it dynamic): when a
    new structure is analysed (the second time it is met), its replay would describe another
    run."""
    f = lin(1, 1)
    state = {"s": torch.zeros(2)}

    @scg.network
    def model(T):
        with scg.episodes(2):
            for _ in scg.steps(T):
                m = scg.message("m", dist.Bernoulli(logits=f(torch.ones(2, 1)).squeeze(-1)),
                                coagent="f")
                state["s"] = state["s"] + m
                scg.reward("r", state["s"])

    est = scg.compile(model, verify=False)
    est(1)
    est(2)     # met once: the sequential plan, which needs no replay (and no data flow)
    with pytest.raises(scg.ScgError, match="changed when the run was replayed"):
        est(2)


def test_escape_nodes_keep_the_graph_linear():
    """An environment stepped with int(a) at every step: one escape node per step, so edges
    grow linearly with the horizon (the old fallback added every escaped site as a parent of
    everything later: quadratic)."""
    f = lin(1, 1)

    @scg.network
    def model(T):
        state = 0
        for _ in scg.steps(T):
            a = scg.message("a", dist.Bernoulli(logits=f(torch.full((1,), float(state)))),
                            coagent="f")
            state = (state + int(a)) % 3
            scg.reward("r", torch.tensor(float(state == 2)))

    sizes = [scg.compile(model).graph(T).number_of_edges() for T in (10, 20, 40)]
    assert sizes[1] - sizes[0] == (sizes[2] - sizes[1]) / 2     # linear in T
    assert sizes[2] <= 4 * 40


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_plain_path_equals_verified_path(name):
    """The fast plain path with cached plans gives the same losses and gradients as analysing
    every run (verify mode), draw for draw."""
    results = []
    for verify in (False, True):
        torch.manual_seed(0)
        model, args, opts = REGISTRY[name]()
        est = scg.compile(model, verify=verify, **opts)
        torch.manual_seed(3)
        outs = [est(*args) for _ in range(3)]
        params = list(est.parameters())
        grads = torch.autograd.grad(sum(o.loss for o in outs), params, allow_unused=True)
        results.append(([o.loss.item() for o in outs],
                        [g if g is not None else torch.zeros_like(p)
                         for g, p in zip(grads, params)]))
    (l0, g0), (l1, g1) = results
    assert l0 == pytest.approx(l1, abs=1e-12)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, atol=1e-12)


def test_env_site_with_parameters_is_named():
    w = torch.zeros(2, requires_grad=True)

    @scg.network
    def model():
        with scg.episodes(2):
            e = scg.env("noise", dist.Bernoulli(logits=w))
            scg.reward("r", e)

    with pytest.raises(scg.ScgError, match="env site 'noise'.*no gradient"):
        scg.compile(model)()


def test_validation_blocks_are_not_escapes():
    """Checking an input and raising is not data flow: inside scg.validation() the model stays
    static; the same check outside it makes the estimator dynamic (a value left torch)."""
    f = lin(1, 1)

    def network(validated):
        @scg.network
        def model(s):
            if validated:
                with scg.validation():
                    if s.min() < 0:
                        raise ValueError("negative state")
            elif s.min() < 0:
                raise ValueError("negative state")
            with scg.episodes(2):
                m = scg.message("m", dist.Bernoulli(logits=f(s[:, None]).squeeze(-1)),
                                coagent="f")
                scg.reward("r", m)
        return model

    for validated in (True, False):
        est = scg.compile(network(validated), verify=False)
        est(torch.zeros(2))
        assert est.dynamic is not validated


def test_a_cost_on_parameters_no_coagent_uses_must_be_labelled():
    """Its pathwise gradient would be in the loss, but no coagent's parameters (nor the
    Trainer) would include them: refused, naming the cost; with coagent= they are its."""
    f, w = lin(1, 1), torch.nn.Parameter(torch.ones(2))

    def network(label):
        @scg.network
        def model():
            with scg.episodes(2):
                m = scg.message("m", dist.Bernoulli(logits=f(torch.ones(2, 1)).squeeze(-1)),
                                coagent="f")
                scg.reward("r", m)
            scg.cost("pen", -(w ** 2).sum(), coagent=label)
        return model

    with pytest.raises(scg.ScgError, match="cost 'pen'.*no coagent"):
        scg.compile(network(None))()
    est = scg.compile(network("f"))
    est()
    assert any(p is w for p in est.parameters("f"))


def test_wiring_chosen_by_a_parameter_value_makes_the_estimator_dynamic():
    """A branch on a parameter's value may change as the parameter is trained: the run that
    reads it is dynamic, so every later run is analysed as it happens."""
    fa, fb = lin(1, 1), lin(1, 1)
    switch = torch.nn.Parameter(torch.tensor(1.0))

    @scg.network
    def model():
        with scg.episodes(2):
            a = scg.message("a", dist.Bernoulli(logits=fa(torch.ones(2, 1)).squeeze(-1)),
                            coagent="A")
            b = scg.message("b", dist.Bernoulli(logits=fb(torch.ones(2, 1)).squeeze(-1)),
                            coagent="B")
            scg.reward("r", a if switch.item() > 0 else b)

    est = scg.compile(model, verify=False)
    assert set(est.graph().edges) == {("a", "r")} and est.dynamic
    with torch.no_grad():
        switch.fill_(-1.0)
    est()
    assert set(est.last_plan.graph.edges) == {("b", "r")}


def test_escape_nodes_are_drawn_and_roll_into_one():
    """An environment stepped with int(a): the unrolled picture has one escape node per step,
    labelled with the op where values left torch; the rolled one folds them into a single
    ``escape`` node that the policy reads at lag 1 (what a researcher draws)."""
    from scg.tools import render as R

    f = lin(1, 1)

    @scg.network
    def model(T):
        state = 0
        for _ in scg.steps(T):
            a = scg.message("a", dist.Bernoulli(logits=f(torch.full((1,), float(state)))[0]),
                            coagent="policy")
            state = (state + int(a)) % 3
            scg.reward("r", float(state == 2))

    est = scg.compile(model)
    spec = R.spec(est.graph(3))
    escapes = [n for n in spec["nodes"] if n["kind"] == "escape"]
    assert [n["name"] for n in escapes] == ["escape@0", "escape@1", "escape@2"]
    assert all("left torch: __int__" in n["label"] for n in escapes)
    rolled = est.rolled_graph(3)
    assert rolled.edges["escape", "a"]["lags"] == [1] and rolled.has_edge("a", "escape")
    assert "a_t | escape_{t−1}" in str(scg.derive(model, 3, est=est))


def test_the_plan_cache_is_bounded():
    """A dynamic model whose data flow rarely repeats must not grow the cache without end."""
    f = lin(1, 1)

    @scg.network
    def model(k):
        with scg.episodes(2):
            ms = [scg.message(f"m{i}", dist.Bernoulli(logits=f(torch.ones(2, 1)).squeeze(-1)),
                              coagent="f") for i in range(3)]
            int(ms[k][0])                       # which message escapes: a new flow per k
            scg.reward("r", ms[0])

    est = scg.compile(model)
    est.max_plans = 2
    for k in (0, 1, 2, 0):
        est(k)
    assert len(est.plans) == 2 and est.dynamic


def test_an_evicted_plan_is_rebuilt_without_a_verify_error():
    """verify compares data flows, not plan objects: a plan dropped from the bounded cache and
    rebuilt for the same flow is the same plan."""
    f = lin(1, 1)

    @scg.network
    def model(n):
        with scg.episodes(n):
            m = scg.message("m", dist.Bernoulli(logits=f(torch.ones(n, 1)).squeeze(-1)),
                            coagent="f")
            scg.reward("r", m)

    est = scg.compile(model, verify=True)
    est.max_plans = 1
    for n in (2, 3, 2):
        est(n)
    assert len(est.plans) == 1 and not est.dynamic


def test_in_place_edit_is_caught_by_the_online_estimator_too():
    theta = torch.nn.Parameter(torch.zeros(2))
    edit = []

    @scg.network
    def model():
        with scg.episodes(2):
            for _ in scg.steps(1):
                m = scg.message("m", dist.Bernoulli(logits=theta), coagent="pi")
                scg.reward("r", m)
                if edit:
                    m.zero_()

    est = scg.compile(model, estimator="td", verify=False)
    est()
    edit.append(True)
    with pytest.raises(scg.ScgError, match="message 'm@0' .*written in place"):
        est()


def test_scg_own_checks_inside_its_subpackages_are_not_escapes():
    """scg checks an execution probability computed from a sampled value (``bad.any()`` in
    scg.core.asynchrony): scg's own code, in any of its subpackages, is not the model's data
    flow leaving torch, so the estimator stays static."""
    th = torch.nn.Parameter(torch.zeros(2, dtype=torch.double))

    @scg.network
    def model():
        with scg.episodes(2):
            for _ in scg.steps(2):
                a = scg.message("a", dist.Bernoulli(logits=th), coagent="p")
                p = 0.25 + 0.5 * a
                b = scg.message("b", dist.Bernoulli(logits=th), coagent="q", execute=p)
                scg.reward("r", a + b)

    est = scg.compile(model)
    est()
    assert not est.dynamic


def test_the_zoos_models_are_model_code_even_when_installed_inside_scg():
    """A regular install puts the zoo at site-packages/scg/models: escapes there (CartPole's
    environment loop) are the model's, not scg's own bookkeeping."""
    from scg.compiler import provenance

    root = provenance._SCG
    assert provenance.scg_code(os.path.join(root, "core", "asynchrony.py"))
    assert not provenance.scg_code(os.path.join(root, "models", "reinforce.py"))
    assert not provenance.scg_code(os.path.join(os.path.dirname(root), "models", "x.py"))
