"""scg.check's faster enumeration against the straightforward one: the same joint values in the
same order, one run of the model per joint value, and the same gradients to float64 precision.

The straightforward enumeration is written out here: a run that reaches a latent site without
a value stops, and every branch runs again from the start; each row's gradients come from
their own ``autograd.grad`` calls."""

import pyro.distributions as dist
import pytest
import torch

import scg
from networks import REGISTRY
from scg import ScgError
from scg.core.record import Fix, record
from scg.tools.check import (
    _branches,
    _grad,
    estimator_run,
    joint_values,
    log_prob,
    objective,
    one_thread,
)

NETWORKS = ["async_learnable", "chain", "environment", "escaping", "interacting_agents",
            "predictor_shared", "recurrent_steps", "replicas", "shared_parameters",
            "terminating"]


class Stop(Exception):
    def __init__(self, msg):
        super().__init__(msg["name"])
        self.msg = msg


def stop(msg):
    raise Stop(msg)


def by_restart(model, args):
    """Every joint value, restarting the model from the start for every branch."""
    stack = [{}]
    while stack:
        values = stack.pop()
        try:
            sites, _ = record(model, args, {}, Fix(values, stop))
        except Stop as s:
            stack.extend(_branches(values, s.msg))
            continue
        yield values, sites


def straightforward(est, args):
    """The exact total gradient, the estimator's expectation, and per coagent both, each
    from its own backward pass over the sum over joint values."""
    gamma, kind = float(est.options["gamma"]), est.options["objective"]
    J, E, Ei = 0.0, 0.0, {}
    for values, sites in by_restart(est.model, args):
        p = log_prob(sites).exp()
        out = estimator_run(est, args, values)
        J = J + p * objective(sites, gamma, kind)
        E = E - p.detach() * out.loss
        for c, loss in out.local.items():
            Ei[c] = Ei.get(c, 0.0) - p.detach() * loss
    params = {c: list(ps.values()) for c, ps in est.params.items()}
    allp = list({id(p): p for ps in params.values() for p in ps}.values())
    rows = {"total": (_grad(J, allp), _grad(E, allp))}
    for c, ps in params.items():
        own = [p for p in ps if id(p) not in est.shared]
        if own:
            rows[c] = (_grad(J, own), _grad(Ei.get(c, 0.0), own))
    return rows


def counted(model):
    def run(*args, **kwargs):
        run.calls += 1
        return model(*args, **kwargs)
    run.calls, run._scg_network = 0, True
    return run


@pytest.mark.parametrize("name", NETWORKS)
def test_joint_values_as_by_restart_with_one_run_each(name):
    model, args, _ = REGISTRY[name]()
    model = counted(model)
    with one_thread():
        fast = list(joint_values(model, args))
        runs, model.calls = model.calls, 0
        slow = list(by_restart(model, args))
    assert runs == len(fast) and model.calls > len(fast)   # the restarts' extra runs
    assert len(fast) == len(slow)
    for (v1, s1), (v2, s2) in zip(fast, slow):
        assert list(v1) == list(v2) and all(torch.equal(v1[k], v2[k]) for k in v1)
        assert [s.name for s in s1] == [s.name for s in s2]
        assert all(torch.equal(a.value, b.value) for a, b in zip(s1, s2))


@pytest.mark.parametrize("baseline", ["none", "loo"])
@pytest.mark.parametrize("name", NETWORKS)
def test_fast_check_equals_straightforward(name, baseline):
    model, args, opts = REGISTRY[name]()
    est = scg.compile(model, baseline=baseline, **opts)
    report = scg.check(model, *args, est=est, method="enumerate")
    assert report.ok, str(report)
    with one_thread():   # as check enumerates: quicker on a busy machine, the same numbers
        reference = straightforward(est, args)
    assert sorted(r.name for r in report.rows) == sorted(reference)
    exact, estimate = reference["total"]
    torch.testing.assert_close(report.exact, exact, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(report.estimate, estimate, rtol=1e-13, atol=1e-15)
    for row in report.rows:
        e, m = reference[row.name]
        assert row.norm_exact == pytest.approx(e.norm().item(), rel=1e-13, abs=1e-15)
        assert row.norm_estimate == pytest.approx(m.norm().item(), rel=1e-13, abs=1e-15)


@pytest.mark.parametrize("name, size", [("async_learnable", 81), ("terminating", 16)])
def test_check_runs_the_model_once_per_joint_value(name, size):
    """check's own runs: one to size the space, then one per joint value; the estimator's:
    one per joint value."""
    model, args, opts = REGISTRY[name]()
    own = counted(model)
    est = scg.compile(counted(model), **opts)
    report = scg.check(own, *args, est=est, method="enumerate")
    assert report.ok and report.size == size, str(report)
    assert own.calls == 1 + size and est.model.calls == size


def test_a_continuous_site_reached_by_a_branch_is_named():
    """The recorded run (a = 0) has no continuous site; a branch (a = 1) reaches one."""
    @scg.network
    def net(n):
        with scg.episodes(n):
            a = scg.message("a", dist.Bernoulli(probs=torch.zeros(n)), coagent="f")
            if a.any():
                scg.env("x", dist.Normal(torch.zeros(n), 1.0))
            scg.reward("r", a)
    with pytest.raises(ScgError, match="cannot enumerate continuous site 'x'"):
        scg.check(net, 2, method="enumerate")


def test_enumeration_runs_on_one_thread_and_restores_the_setting():
    seen = []
    model, args, opts = REGISTRY["chain"]()

    @scg.network
    def spy(s, fail=False):
        seen.append(torch.get_num_threads())
        if fail and len(seen) == 3:
            raise RuntimeError("a model that fails while enumerated")
        return model(s)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert scg.check(spy, *args, method="enumerate").ok
        assert torch.get_num_threads() == 2 and set(seen[1:]) == {1}   # seen[0]: the sizing run
        seen.clear()
        with pytest.raises(RuntimeError, match="while enumerated"):
            scg.check(spy, *args, True, method="enumerate")
        assert torch.get_num_threads() == 2 and seen == [2, 1, 1]
    finally:
        torch.set_num_threads(threads)
