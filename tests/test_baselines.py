"""The default baseline ``auto`` and the critic's local state (``state=``, ``@scg.coagent``
inputs): each is checked against exact enumeration and against the baseline it stands for."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.nn.functional import one_hot

import scg
from scg.estimators.baselines import features


def signalling(n_episodes, th):
    """Two coagents; the reward depends on the state, so a state-aware critic helps."""
    sender, receiver = th

    @scg.network
    def model(state):
        with scg.episodes(n_episodes):
            x = one_hot(state, 3).double()
            m = scg.message("m", dist.Categorical(logits=x @ sender), coagent="sender",
                            state=x)
            y = one_hot(m, 3).double()
            a = scg.message("a", dist.Categorical(logits=y @ receiver), coagent="receiver")
            scg.reward("r", (a == state).double() + state.double())
    return model


def params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, 3, generator=g, dtype=torch.double))
            for _ in range(2)]


@pytest.mark.parametrize("n, expect", [(4, "loo"), (1, "avg")])
def test_auto_is_loo_with_several_episodes_and_avg_with_one(n, expect):
    th = params()
    model = signalling(n, th)
    state = torch.arange(n) % 3
    grads = {}
    for kind in ("auto", expect):
        est = scg.compile(model, baseline=kind)
        pyro.set_rng_seed(3)
        for _ in range(3):   # the avg baseline's state moves between calls
            out = est(state)
        grads[kind] = torch.autograd.grad(out.loss, th)
    for a, b in zip(grads["auto"], grads[expect]):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_auto_is_the_default_and_matches_exact_enumeration():
    th = params(1)
    model = signalling(3, th)
    est = scg.compile(model)
    assert est.options["baseline"] == "auto"
    for _ in range(3):
        est(torch.arange(3))
    report = scg.check(model, torch.arange(3), est=est, method="enumerate")
    assert report.ok and report.rows[0].norm_exact > 1e-3, str(report)


def test_critic_reads_the_local_state_given_with_state():
    th = params()
    est = scg.compile(signalling(4, th), baseline="critic")
    out = est(torch.arange(4) % 3)
    m = next(s for s in out.sites if s.name == "m")
    a = next(s for s in out.sites if s.name == "a")
    x = one_hot(torch.arange(4) % 3, 3).double()
    assert torch.equal(features(m), torch.cat([x, torch.zeros(4, 1, dtype=x.dtype)], -1))
    assert features(a).shape == (4, 3 + 1)   # no state: the distribution's logits and t
    assert torch.equal(features(a)[:, :3], a.fn.logits.detach())


def test_a_coagent_units_inputs_are_its_local_state():
    """An ``@scg.coagent`` module's inputs (its forward hook) and a decorated function's tensor
    arguments are the local state, without ``state=``."""
    net = torch.nn.Linear(2, 3).double()
    module = scg.coagent(torch.nn.Sequential(net, _Categorical()), name="pi")
    function = scg.coagent(lambda x: dist.Categorical(logits=net(x)), name="pi")
    inputs = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.double)
    for unit in (module, function):
        @scg.network
        def model(unit=unit):
            with scg.episodes(2):
                a = scg.message("a", unit(inputs))
                scg.reward("r", a.double())

        out = scg.compile(model, baseline="critic")()
        assert torch.equal(features(out.sites[0]),
                           torch.cat([inputs, torch.zeros(2, 1, dtype=inputs.dtype)], -1))


class _Categorical(torch.nn.Module):
    def forward(self, logits):
        return dist.Categorical(logits=logits)


@pytest.mark.slow
def test_critic_on_local_state_is_unbiased_by_enumeration():
    th = params(2)
    model = signalling(3, th)
    est = scg.compile(model, baseline="critic")
    est(torch.arange(3))   # the critics are made on first use
    opt = torch.optim.Adam(est.critics.parameters(), lr=0.05)
    for _ in range(30):   # a critic that has learned something, not its initial guess
        opt.zero_grad()
        est(torch.arange(3)).loss.backward()
        opt.step()
    report = scg.check(model, torch.arange(3), est=est, method="enumerate")
    assert report.ok and report.rows[0].norm_exact > 1e-3, str(report)


def test_state_that_does_not_match_the_batch_is_an_error_naming_the_site():
    th = torch.nn.Parameter(torch.zeros(3, dtype=torch.double))

    @scg.network
    def model():
        with scg.episodes(4):
            scg.message("m", dist.Categorical(logits=th.expand(4, 3)), coagent="p",
                        state=torch.zeros(5, 2))

    with pytest.raises(scg.ScgError, match=r"message 'm': state tensor 0 has shape \(5, 2\)"):
        scg.compile(model)()
    with pytest.raises(scg.ScgError, match="message 'm': state= holds tensors"):
        scg.compile(scg.network(lambda: scg.message(
            "m", dist.Categorical(logits=th), coagent="p", state=[1.0])))()


def test_a_units_inputs_that_are_not_per_episode_are_not_its_state():
    """Only explicit ``state=`` must match the batch: a unit input with other leading dims
    (here a shared table) is left out of the implicit state instead of an error."""
    table = torch.randn(5, 3, dtype=torch.double)
    unit = scg.coagent(lambda x, t: dist.Categorical(logits=x @ t[:2]), name="pi")
    x = torch.randn(4, 2, dtype=torch.double)

    @scg.network
    def model():
        with scg.episodes(4):
            a = scg.message("a", unit(x, table))
            scg.reward("r", a.double())

    out = scg.compile(model, baseline="critic")()
    assert len(out.sites[0].infer["scg_state"]) == 1
    assert torch.equal(features(out.sites[0])[:, :2], x)
