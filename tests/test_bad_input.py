"""Bad input: a clear ScgError naming the site (and step) or argument, before any gradient."""

import pyro.distributions as dist
import pytest
import torch

import scg
from networks import REGISTRY, lin


def net(body):
    return scg.network(body)


def one(s):
    return dist.Bernoulli(logits=torch.zeros(s.shape[0]))


def test_site_name_twice_in_one_step():
    @scg.network
    def model(s):
        with scg.episodes(2):
            for _t in scg.steps(2):
                scg.message("m", one(s), coagent="f")
                scg.message("m", one(s), coagent="f")
                scg.reward("r", torch.zeros(2))
    with pytest.raises(scg.ScgError, match=r"'m' is used twice in step 0"):
        scg.compile(model)(torch.zeros(2))


def test_message_without_coagent():
    @scg.network
    def model(s):
        with scg.episodes(2):
            scg.message("m", one(s))
    with pytest.raises(scg.ScgError, match="message 'm' has no coagent"):
        scg.compile(model)(torch.zeros(2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_reward_not_finite(bad):
    @scg.network
    def model(s):
        with scg.episodes(2):
            for t in scg.steps(2):
                scg.message("m", one(s), coagent="f")
                scg.reward("r", torch.tensor([0.0, bad if t == 1 else 0.0]))
    with pytest.raises(scg.ScgError, match=r"reward 'r@1' \(step 1\) is NaN or infinite"):
        scg.compile(model)(torch.zeros(2))


def test_predictor_not_finite():
    @scg.network
    def model(s):
        with scg.episodes(2):
            scg.message("m", one(s), coagent="f")
            scg.predict("p", dist.Normal(torch.zeros(2), 1.0),
                        obs=torch.tensor([0.0, float("nan")]), coagent="f")
    with pytest.raises(scg.ScgError, match="predict 'p'.*NaN"):
        scg.compile(model)(torch.zeros(2))


def test_reward_wrong_batch_shape():
    @scg.network
    def model(s):
        with scg.episodes(2):
            scg.message("m", one(s), coagent="f")
            scg.reward("r", torch.zeros(3))
    with pytest.raises(scg.ScgError, match=r"reward 'r' has shape \(3,\).*batch shape \(2,\)"):
        scg.compile(model)(torch.zeros(2))


def test_predict_without_obs():
    @scg.network
    def model(s):
        scg.predict("p", dist.Normal(0.0, 1.0), coagent="f")
    with pytest.raises(scg.ScgError, match="predict 'p' needs obs="):
        scg.compile(model)(torch.zeros(2))


def test_reward_requires_grad():
    w = torch.nn.Parameter(torch.ones(2))

    @scg.network
    def model(s):
        with scg.episodes(2):
            scg.reward("r", w * 2)
    with pytest.raises(scg.ScgError, match="reward 'r' requires grad"):
        scg.compile(model)(torch.zeros(2))


def test_check_refuses_continuous_site():
    f = lin(1, 1)

    @scg.network
    def model(s):
        with scg.episodes(2):
            m = scg.message("m", dist.Normal(f(s[:, None]).squeeze(-1), 1.0), coagent="f")
            scg.reward("r", -m ** 2)
    with pytest.raises(scg.ScgError, match=r"site 'm' \(Normal\) is continuous"):
        scg.check(model, torch.zeros(2), method="enumerate")


def test_check_refuses_too_large_space():
    model, args, _ = REGISTRY["recurrent_steps"]()
    with pytest.raises(scg.ScgError, match=r"has 64 values \(> max_size=10\)"):
        scg.check(model, *args, method="enumerate", max_size=10)


def test_unknown_compile_option():
    model, _, _ = REGISTRY["chain"]()
    with pytest.raises(scg.ScgError, match=r"unknown compile option\(s\) \['gama'\]; valid:"):
        scg.compile(model, gama=0.9)


@pytest.mark.parametrize("kw,match", [({"gamma": 1.5}, "gamma must be in"),
                                      ({"baseline": "mean"}, "unknown baseline 'mean'"),
                                      ({"objective": "avg"}, "unknown objective")])
def test_bad_option_values(kw, match):
    model, _, _ = REGISTRY["chain"]()
    with pytest.raises(scg.ScgError, match=match):
        scg.compile(model, **kw)


@pytest.mark.parametrize("name", ["m@1", "m.exec"])
def test_reserved_characters(name):
    @scg.network
    def model(s):
        scg.message(name, one(s), coagent="f")
    with pytest.raises(scg.ScgError, match="reserved"):
        scg.compile(model)(torch.zeros(2))


def test_execute_outside_steps():
    @scg.network
    def model(s):
        with scg.episodes(2):
            scg.message("m", one(s), coagent="f", execute=torch.tensor(0.5))
    with pytest.raises(scg.ScgError, match="message 'm': execute=/init= need .*scg.steps"):
        scg.compile(model)(torch.zeros(2))


def async_model(execute=None, init=None, batch=2):
    @scg.network
    def model(s):
        with scg.episodes(batch):
            for _ in scg.steps(2):
                m = scg.message("m", one(s), coagent="f", execute=execute, init=init)
                scg.reward("r", m)
    return model


@pytest.mark.parametrize("p", [1.5, -0.1, float("nan"), float("inf")])
def test_execution_probability_out_of_range(p):
    model = async_model(execute=torch.tensor([0.5, p]))
    with pytest.raises(scg.ScgError, match=r"message 'm' \(step 0\): execution probability "
                                           r"must be finite and in \[0, 1\]"):
        scg.compile(model)(torch.zeros(2))


def test_execution_bit_wrong_shape():
    model = async_model(execute=torch.ones(3, dtype=torch.bool))
    with pytest.raises(scg.ScgError, match=r"message 'm' \(step 0\): execute= has shape "
                                           r"\(3,\)"):
        scg.compile(model)(torch.zeros(2))


def test_execution_bit_not_bool():
    model = async_model(execute=torch.tensor([1, 0]))
    with pytest.raises(scg.ScgError, match=r"message 'm' \(step 0\): execute= has dtype "
                                           r"torch.int64.*bool"):
        scg.compile(model)(torch.zeros(2))


def test_execute_of_wrong_type():
    model = async_model(execute="always")
    with pytest.raises(scg.ScgError, match="message 'm' .*probability .* or an execution bit"):
        scg.compile(model)(torch.zeros(2))


def test_init_wrong_shape():
    model = async_model(execute=torch.full((2,), 0.5), init=torch.zeros(3))
    with pytest.raises(scg.ScgError, match=r"message 'm' \(step 0\): init= has shape \(3,\)"):
        scg.compile(model)(torch.zeros(2))


def test_previous_output_of_another_shape():
    @scg.network
    def model(s):
        for t in scg.steps(2):
            with scg.episodes(2 + t):
                m = scg.message("m", dist.Bernoulli(logits=torch.zeros(2 + t)), coagent="f",
                                execute=torch.full((2 + t,), 0.5))
                scg.reward("r", m)
    with pytest.raises(scg.ScgError, match=r"message 'm' \(step 1\): its previous output has "
                                           r"shape \(2,\)"):
        scg.compile(model)(torch.zeros(2))


def test_loo_needs_two_episodes():
    model, _, _ = REGISTRY["chain"]()
    with pytest.raises(scg.ScgError, match="baseline='loo' needs site 'm'.*N >= 2"):
        scg.compile(model, baseline="loo")(torch.tensor([1]))


def test_not_a_network():
    with pytest.raises(scg.ScgError, match="is not an @scg.network function"):
        scg.compile(lambda s: s)


def test_state_kept_between_runs_is_a_plain_input():
    """An environment that keeps a sampled value between runs: the analysis leaves nothing
    tracked in it (provenance lives in a side table), and the kept value is an input of the
    next run, not a site of it."""
    kept = []
    f = lin(1, 1)

    @scg.network
    def model(s):
        with scg.episodes(2):
            m = scg.message("m", dist.Bernoulli(logits=f(s[:, None]).squeeze(-1)), coagent="f")
            prev = kept[-1] if kept else torch.zeros(2)
            kept.append(m)
            scg.reward("r", m + prev)
    est = scg.compile(model)
    for _ in range(3):
        est(torch.zeros(2))
    assert all(type(m) is torch.Tensor for m in kept)
    assert set(est.graph(torch.zeros(2)).edges) == {("m", "r")}


def test_cost_reaching_two_coagents_must_be_labelled():
    f, g = lin(1, 1), lin(1, 1)

    @scg.network
    def model(s):
        with scg.episodes(2):
            scg.message("m", dist.Bernoulli(logits=f(s[:, None]).squeeze(-1)), coagent="f")
            scg.message("a", dist.Bernoulli(logits=g(s[:, None]).squeeze(-1)), coagent="g")
            scg.cost("c", (f(s[:, None]) + g(s[:, None])).squeeze(-1))
    with pytest.raises(scg.ScgError, match=r"cost 'c' reaches parameters of coagents"):
        scg.compile(model)(torch.zeros(2))


def test_previous_output_no_step_produced():
    @scg.network
    def late(s):
        with scg.episodes(2):
            for t in scg.steps(2):
                if t == 1:
                    m = scg.message("m", one(s), coagent="f", execute=torch.full((2,), 0.5))
                    scg.reward("r", m)
    with pytest.raises(scg.ScgError, match=r"message 'm' \(step 1\): no previous output to "
                                           r"repeat.*init="):
        scg.compile(late)(torch.zeros(2))

    @scg.network
    def skipping(s):
        with scg.episodes(2):
            for t in scg.steps(3):
                if t != 1:
                    m = scg.message("m", one(s), coagent="f", execute=torch.full((2,), 0.5))
                    scg.reward("r", m)
    with pytest.raises(scg.ScgError, match=r"message 'm' \(step 2\): no output at step 1 to "
                                           r"repeat"):
        scg.compile(skipping)(torch.zeros(2))


def test_torch_distribution_instead_of_pyro():
    @scg.network
    def model(s):
        with scg.episodes(2):
            scg.message("m", torch.distributions.Bernoulli(logits=torch.zeros(2)), coagent="f")
    with pytest.raises(scg.ScgError, match="message 'm': torch.distributions.bernoulli.Bernoulli "
                                           "is not a Pyro distribution"):
        scg.compile(model)(torch.zeros(2))


def test_invalid_distribution_parameters_name_the_cause():
    """A distribution built from NaN: torch's validation error becomes one that says whether
    a coagent's parameters diverged (named) or the model's inputs are at fault."""
    theta = torch.nn.Parameter(torch.tensor([0.5, -0.5]))

    @scg.network
    def model(x):
        with scg.episodes(2):
            m = scg.message("m", dist.Bernoulli(logits=theta * x), coagent="pi")
            scg.reward("r", m)
    est = scg.compile(model)
    est(torch.ones(2))
    with pytest.raises(scg.ScgError, match=r"model: a distribution got invalid parameters "
                                           r".*check the model's inputs"):
        est(torch.tensor([1.0, float("nan")]))
    with torch.no_grad():
        theta[1] = float("inf") - float("inf")
    with pytest.raises(scg.ScgError, match=r"non-finite parameters: \['pi'\]"):
        est(torch.ones(2))
