"""Bad input: a clear ScgError naming the site (and step) or argument, before any gradient."""

import pyro
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


# ---- errors at the edges (issue 17 §4) ----------------------------------------------------
def test_network_called_with_the_wrong_arguments():
    """A network called with arguments its signature does not take: an ScgError naming the
    network and its signature, not a bare TypeError; a TypeError inside the body stays one."""
    @scg.network
    def model(s):
        with scg.episodes(2):
            scg.reward("r", s)
    with pytest.raises(scg.ScgError, match=r"@scg.network model\(s\) was called with 0 "
                                           r"positional argument\(s\): missing a required "
                                           r"argument: 's'"):
        scg.compile(model)()
    with pytest.raises(scg.ScgError, match=r"model\(s\) was called with 1 positional and "
                                           r"keywords \['t'\] argument\(s\)"):
        scg.compile(model)(torch.zeros(2), t=1)

    @scg.network
    def broken(s):
        return len(3)
    with pytest.raises(TypeError, match="has no len"):
        scg.compile(broken)(torch.zeros(2))


def counted_model(w, takes_input):
    def body():
        body.calls += 1
        with scg.episodes(2):
            a = scg.message("a", dist.Bernoulli(logits=w.expand(2)), coagent="me")
            scg.reward("r", a)
    body.calls = 0
    model = scg.network((lambda s: body()) if takes_input else body)
    return model, body


def test_optimiser_before_the_first_call():
    """Before any call, est.parameters() of a model that takes arguments says to call it once
    (torch's "optimizer got an empty parameter list" before); a model that takes none is run
    once to meet them. nn.Module's own machinery (state_dict, .to, repr, zero_grad) neither
    raises nor runs the model."""
    w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    model, body = counted_model(w, takes_input=True)
    est = scg.compile(model)
    est.zero_grad()
    est.requires_grad_(True)
    assert est.state_dict() is not None and est.to("cpu") is est and repr(est)
    assert body.calls == 0
    call_first = r"has not run yet.*call est\(\*args\) or est.discover\(\*args\) once"
    with pytest.raises(scg.ScgError, match=r"est.parameters\(\): network '<lambda>' " + call_first):
        torch.optim.Adam(est.parameters())
    with pytest.raises(scg.ScgError, match=call_first):
        est.parameters("me")
    est.discover(torch.zeros(2))
    assert [id(p) for p in torch.optim.Adam(est.parameters()).param_groups[0]["params"]] == \
        [id(w)]

    model, body = counted_model(w, takes_input=False)
    est = scg.compile(model)
    opt = torch.optim.SGD(est.parameters(), lr=1.0)   # runs it once (discover)
    assert body.calls == 1 and [id(p) for p in opt.param_groups[0]["params"]] == [id(w)]
    assert [id(p) for p in est.parameters("me")] == [id(w)] and body.calls == 1


def test_forgotten_episodes_plate():
    """A model without scg.episodes: the error says to wrap its body in scg.episodes(N)
    (before: only "plates imply batch shape ()")."""
    @scg.network
    def rewards_only(s):
        scg.reward("r", s)
    with pytest.raises(scg.ScgError, match=r"reward 'r' has shape \(2,\), but its plates imply "
                                           r"batch shape \(\): no scg.episodes plate is open\. "
                                           r"Wrap the model's body in `with scg.episodes\(2\):`"):
        scg.compile(rewards_only)(torch.zeros(2))

    @scg.network
    def no_plate(s):
        for _t in scg.steps(2):
            a = scg.message("a", one(s), coagent="f")
            scg.reward("r", a)
    with pytest.raises(scg.ScgError, match=r"message 'a' \(step 0\) has batch shape \(2,\), "
                                           r"but no plate encloses it \(every batch dimension "
                                           r"must belong to a plate\): no scg.episodes plate is "
                                           r"open.*`with scg.episodes\(2\):`"):
        scg.compile(no_plate)(torch.zeros(2))

    @scg.network
    def agents_only(s):
        with scg.agents(3):
            scg.reward("r", torch.zeros(4, 3))
    with pytest.raises(scg.ScgError, match=r"batch shape \(3,\): no scg.episodes plate is "
                                           r"open\. Wrap the model's body in `with "
                                           r"scg.episodes\(4\):`"):
        scg.compile(agents_only)(torch.zeros(2))


def nested_pair():
    """The same network twice: ``inline`` writes a helper's body in place, ``nested`` calls
    it as an ``@scg.network`` (once before the steps loop, then once per step)."""
    f, g = lin(1, 1), lin(2, 1)

    def act(s, prev):
        x = torch.stack([s, prev], -1)
        a = scg.message("a", dist.Bernoulli(logits=g(x).squeeze(-1)), coagent="g")
        scg.reward("r", (a == s).double())
        return a

    def first(s):
        return scg.message("m", dist.Bernoulli(logits=f(s[:, None]).squeeze(-1)), coagent="f")

    @scg.network
    def inline(s):
        with scg.episodes(s.shape[0]):
            prev = first(s)
            for _t in scg.steps(3):
                prev = act(s, prev)

    helper, opening = scg.network(act), scg.network(first)

    @scg.network
    def nested(s):
        with scg.episodes(s.shape[0]):
            prev = opening(s)
            for _t in scg.steps(3):
                prev = helper(s, prev)
    return inline, nested, list(f.parameters()) + list(g.parameters())


def test_nested_network_runs_in_the_enclosing_run():
    """A helper @scg.network called inside a running network (inside scg.steps too) runs its
    body in the enclosing run: the same sites and the same gradient as the body inline (before:
    "site name 'a' is used twice in step 0", the nested run had reset time)."""
    inline, nested, params = nested_pair()
    s = torch.tensor([0.0, 1.0, 1.0])
    grads, names = [], []
    for model in (inline, nested):
        est = scg.compile(model, baseline="none")
        pyro.set_rng_seed(3)
        out = est(s)
        names.append([(x.name, x.role, x.coagent, x.time) for x in out.sites])
        grads.append(torch.autograd.grad(out.loss, params))
    assert names[0] == names[1] and names[0][1][0] == "a@0" and len(names[0]) == 7
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    rep = [scg.check(m, s[:2], baseline="none") for m in (inline, nested)]
    assert all(r.ok for r in rep) and torch.allclose(rep[0].exact, rep[1].exact)
