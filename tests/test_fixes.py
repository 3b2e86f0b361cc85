"""Regression tests for issue 14's fixes. Each oracle is plain torch (hand-written gradients or
exact enumeration), independent of scg's estimator."""

import copy
import itertools
import pickle

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import scg
from scg.core.record import Fix

GAMMA = 0.9


# ---- 1. online (td) state survives copy.deepcopy and pickle ---------------------------------
@scg.network
def corridor_step(s, theta, V):
    """One step of an online actor-critic on two cells (module level: picklable by name)."""
    with scg.episodes(s.shape[0]):
        for _ in scg.steps(1):
            scg.value("v", V[s])
            a = scg.message("a", dist.Bernoulli(logits=theta[s]), coagent="pi")
            scg.reward("r", (a == s).to(V.dtype) - 0.25 * s)
    return a


def td_window_gradient(s1, a1, s2, theta, V):
    """The second one-step window's gradient by hand (no value of window 1 is bootstrapped
    before window 2): -(1/N) sum_n delta_n grad [log pi(a1_n | s1_n), V(s1_n)], with
    delta_n = r1_n + gamma V(s2_n) - V(s1_n)."""
    with torch.no_grad():
        r1 = (a1 == s1).to(V.dtype) - 0.25 * s1
        delta = r1 + GAMMA * V[s2] - V[s1]
    lp = torch.distributions.Bernoulli(logits=theta[s1]).log_prob(a1)
    surrogate = -(delta * (lp + V[s1])).mean()
    return torch.autograd.grad(surrogate, [theta, V])


def test_td_state_survives_deepcopy_and_pickle():
    theta = torch.nn.Parameter(torch.tensor([0.3, -0.8]))
    V = torch.nn.Parameter(torch.tensor([0.2, -0.1]))
    est = scg.compile(corridor_step, estimator="td", gamma=GAMMA, lam=0.5)
    s1, s2 = torch.tensor([0, 1, 1, 0]), torch.tensor([1, 1, 0, 0])
    a1 = est(s1, theta, V).value
    copies = [copy.deepcopy((est, theta, V)), pickle.loads(pickle.dumps((est, theta, V)))]
    for e, th, v in [(est, theta, V)] + copies:
        assert th is not theta or e is est
        pyro.set_rng_seed(5)
        out = e(s2, th, v)
        got = torch.autograd.grad(out.loss, [th, v])
        want = td_window_gradient(s1, a1, s2, th, v)
        assert all(g.abs().sum() > 0 for g in want)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-12), (g, w)


# ---- 2. NaN padding of finished episodes ------------------------------------------------------
NAN = float("nan")


def padded_model(theta, w, predictor=True, binomial=False):
    """Two steps, two episodes; an episode ends at step 0 where a0 = 1 and is padded with NaN
    from then on: its step-1 logits, reward (and the predictor's obs) are NaN. The step-1
    message is Bernoulli (one site group with step 0's: stacked logits) or the same as a
    Binomial of one trial (a site of its own)."""
    @scg.network
    def padded(s):
        with scg.episodes(s.shape[0]):
            for t in scg.steps(2):
                if t == 0:
                    a = scg.message("a", dist.Bernoulli(logits=theta[0, s]), coagent="pi")
                    scg.reward("r", a - 0.5 * s)
                    done = a == 1
                    scg.done(done)
                else:
                    pad = torch.where(done, NAN, 0.0)
                    logits = theta[1, s] + pad
                    if binomial:
                        b = scg.message("a", dist.Binomial(1, logits=logits, validate_args=False),
                                        coagent="pi")
                    else:
                        b = scg.message("a", dist.Bernoulli(logits=logits, validate_args=False),
                                        coagent="pi")
                    scg.reward("r", torch.where(done, NAN, 2 * b - 1 + s))
                    if predictor:
                        scg.predict("p", dist.Normal(w[s], 1.0), obs=torch.where(done, NAN, b),
                                    coagent="q")
    return padded


def padded_trajectories(N):
    """Every (a0, a1) of N episodes, an episode's a1 fixed at 0 where it ended at step 0
    (a masked element is one value, as scg.check counts it)."""
    for a0 in itertools.product([0.0, 1.0], repeat=N):
        choices = [[0.0] if x == 1 else [0.0, 1.0] for x in a0]
        for a1 in itertools.product(*choices):
            yield torch.tensor(a0), torch.tensor(a1)


def padded_oracle(theta, w, s, predictor=True):
    """J(theta, w) by plain torch enumeration, and p(tau) for each trajectory."""
    J, probs = 0.0, []
    for a0, a1 in padded_trajectories(s.shape[0]):
        alive = a0 == 0
        p0 = torch.distributions.Bernoulli(logits=theta[0, s]).log_prob(a0)
        p1 = torch.distributions.Bernoulli(logits=theta[1, s]).log_prob(a1)
        p = (p0 + torch.where(alive, p1, 0.0)).sum().exp()
        ret = (a0 - 0.5 * s) + GAMMA * torch.where(alive, 2 * a1 - 1 + s, 0.0)
        if predictor:
            q = torch.distributions.Normal(w[s], 1.0).log_prob(a1)
            ret = ret + GAMMA * torch.where(alive, q, 0.0)
        J = J + p * ret.mean()
        probs.append(p.detach())
    return J, probs


@pytest.mark.parametrize("binomial", [False, True])
@pytest.mark.parametrize("predictor", [False, True])
@pytest.mark.parametrize("baseline", ["none", "avg", "loo", "critic"])
def test_nan_padding_of_finished_episodes_gives_the_exact_gradient(baseline, predictor,
                                                                   binomial):
    theta = torch.nn.Parameter(torch.tensor([[0.3, -0.8], [0.5, 0.2]]))
    w = torch.nn.Parameter(torch.tensor([0.1, -0.3]))
    s = torch.tensor([0, 1])
    est = scg.compile(padded_model(theta, w, predictor, binomial), gamma=GAMMA,
                      baseline=baseline)
    for _ in range(3):           # baselines with state; no run samples NaN logits (a0 = 0)
        est.run((s,), {}, Fix({"a@0": torch.zeros(2)}))
    J, probs = padded_oracle(theta, w, s, predictor)
    exact = torch.autograd.grad(J, [theta, w], allow_unused=True, materialize_grads=True)
    expect = [torch.zeros_like(theta), torch.zeros_like(w)]
    for p, (a0, a1) in zip(probs, padded_trajectories(2)):
        out = est.run((s,), {}, Fix({"a@0": a0, "a@1": a1}), update=False)
        assert torch.isfinite(out.loss)
        g = torch.autograd.grad(out.loss, [theta, w], allow_unused=True, materialize_grads=True)
        assert all(torch.isfinite(x).all() for x in g), g
        expect = [e - p * x for e, x in zip(expect, g)]
    for e, x in zip(expect, exact):
        assert torch.allclose(e, x, atol=1e-12), (e, x)


# ---- 3. asynchrony makes its tensors on the unit's device -------------------------------------
def test_asynchrony_tensors_follow_the_distribution_device(monkeypatch):
    from scg.core import asynchrony

    meta = torch.zeros(3, device="meta")
    fn = dist.Bernoulli(logits=meta, validate_args=False)
    assert asynchrony.device_of(fn) == torch.device("meta")
    assert asynchrony.device_of(dist.Categorical(probs=torch.ones(2, 3, device="meta") / 3,
                                                 validate_args=False)).type == "meta"
    for execute in (None, True, False):
        bit, _ = asynchrony.execution_bit("m", execute, fn.batch_shape, "here",
                                          asynchrony.device_of(fn))
        assert bit.device == torch.device("meta") and bit.dtype == torch.bool
        assert bit.shape == (3,)
    # a Python probability becomes the execution coagent's Bernoulli on the unit's device, in
    # its dtype
    seen = []

    def fake_site(name, fn, *a, **k):
        seen.append(fn)
        return torch.ones(fn.batch_shape, dtype=fn.probs.dtype)
    monkeypatch.setattr(asynchrony, "sample_site", fake_site)
    f32 = dist.Bernoulli(logits=torch.zeros(3, dtype=torch.float32))
    bit, source = asynchrony.execution_bit("m", 0.5, f32.batch_shape, "here",
                                           asynchrony.device_of(f32),
                                           asynchrony.float_dtype_of(f32))
    assert source == "m.exec" and bit.dtype == torch.bool
    assert seen[0].probs.dtype == torch.float32 and seen[0].probs.device == f32.logits.device


def test_float32_asynchronous_unit_with_python_probability():
    """A float32 unit with execute=0.5 (a Python number) under a float64 default: the execution
    coagent is float32 too, and the estimator runs."""
    th = torch.nn.Parameter(torch.zeros(2, dtype=torch.float32))

    @scg.network
    def unit():
        with scg.episodes(2):
            for _ in scg.steps(2):
                m = scg.message("m", dist.Bernoulli(logits=th), coagent="u", execute=0.5)
                scg.reward("r", m)
    out = scg.compile(unit)()
    assert out.sites[0].fn.probs.dtype == torch.float32       # m.exec@0
    torch.autograd.grad(out.loss, th)


# ---- 4. a reward in another float dtype than the model's ----------------------------------------
def mixed_dtype_model(theta, reward_dtype, numpy_reward):
    """Two steps, two episodes of a Bernoulli policy in theta's dtype; the reward in another."""
    table = np.array([[-0.5, 1.0], [0.75, -0.25]])

    @scg.network
    def mixed(s):
        with scg.episodes(s.shape[0]):
            for t in scg.steps(2):
                a = scg.message("a", dist.Bernoulli(logits=theta[t, s]), coagent="pi")
                if numpy_reward:       # the environment computes in numpy (an escape)
                    r = table[t, a.long().numpy()] * (1 + s.numpy())
                else:
                    r = torch.as_tensor(table, dtype=reward_dtype)[t, a.long()] * (1 + s)
                scg.reward("r", torch.as_tensor(r, dtype=reward_dtype))
    return mixed


def mixed_dtype_oracle(theta, s):
    """J by plain torch enumeration in float64, and each trajectory's probability."""
    table = torch.tensor([[-0.5, 1.0], [0.75, -0.25]], dtype=torch.float64)
    th = theta.double()
    J, runs = 0.0, []
    for a in itertools.product([0.0, 1.0], repeat=2 * s.shape[0]):
        a = torch.tensor(a, dtype=torch.float64).reshape(2, -1)
        lp = sum(torch.distributions.Bernoulli(logits=th[t, s]).log_prob(a[t]).sum()
                 for t in range(2))
        ret = sum(GAMMA ** t * table[t, a[t].long()] * (1 + s) for t in range(2)).mean()
        J = J + lp.exp() * ret
        runs.append((lp.exp().detach(), a))
    return J, runs


@pytest.mark.parametrize("baseline", ["none", "loo", "critic"])
@pytest.mark.parametrize("model_dtype,reward_dtype,numpy_reward", [
    (torch.float32, torch.float64, True), (torch.float32, torch.float64, False),
    (torch.float64, torch.float32, False)])
def test_reward_dtype_differs_from_the_model(model_dtype, reward_dtype, numpy_reward, baseline):
    theta = torch.nn.Parameter(torch.tensor([[0.3, -0.8], [0.5, 0.2]], dtype=model_dtype))
    s = torch.tensor([0, 1])
    est = scg.compile(mixed_dtype_model(theta, reward_dtype, numpy_reward), gamma=GAMMA,
                      baseline=baseline)
    out = est(s)
    assert out.loss.dtype == model_dtype
    J, runs = mixed_dtype_oracle(theta, s)
    exact = torch.autograd.grad(J, theta)[0].double()
    expect = torch.zeros_like(exact)
    for p, a in runs:
        a = a.to(model_dtype)
        out = est.run((s,), {}, Fix({"a@0": a[0], "a@1": a[1]}), update=False)
        expect = expect - p * torch.autograd.grad(out.loss, theta)[0].double()
    tol = 1e-12 if model_dtype == torch.float64 else 1e-5
    assert torch.allclose(expect, exact, atol=tol), (expect, exact)


# ---- 5. critic features do not depend on lazily computed attributes -------------------------
def test_critic_features_ignore_lazy_attributes():
    from scg.core.record import Site
    from scg.estimators.baselines import features

    logits = torch.tensor([[0.2, -1.0, 0.5], [1.5, 0.0, -0.3]])
    fn = dist.Categorical(logits=logits)
    site = Site("m", "message", "c", 3, fn, torch.tensor([0, 2]), None, (), {})
    before = features(site)
    _ = fn.probs                                      # materialised lazily: fn.__dict__ grows
    assert "probs" in fn.__dict__
    after = features(site)
    want = torch.cat([logits.log_softmax(-1), torch.full((2, 1), 3.0)], -1)
    assert torch.allclose(before, want) and torch.allclose(after, want)
    # the same distribution built from probs has the same features
    same = Site("m", "message", "c", 3, dist.Categorical(probs=logits.softmax(-1)),
                torch.tensor([0, 2]), None, (), {})
    assert torch.allclose(features(same), want)


def test_one_critic_when_a_model_reads_probs_on_some_steps():
    W = torch.nn.Parameter(torch.tensor([[[0.2, -1.0, 0.5], [1.5, 0.0, -0.3]],
                                         [[0.1, 0.4, -0.2], [-0.6, 0.9, 0.3]]]))

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            for t in scg.steps(2):
                d = dist.Categorical(logits=W[t, s])
                if t == 1:
                    _ = d.probs                          # e.g. logged by the model
                a = scg.message("a", d, coagent="pi")
                scg.reward("r", (a == s + t).to(W.dtype))
    s = torch.tensor([0, 1])
    est = scg.compile(model, baseline="critic")
    for _ in range(3):
        est(s)                     # sampling a Categorical computes its probs
    report = scg.check(model, s, est=est, method="enumerate")   # values set: no sampling
    assert report.ok, str(report)
    assert len(est.critics) == 1, list(est.critics)


# ---- 6. the reward of the ending step counts, emitted before or after scg.done -----------------
R0 = torch.tensor([[1.0, -0.5], [2.0, 0.25]], dtype=torch.float64)   # R0[a0, s]: ending step
R1 = torch.tensor([[-1.0, 0.5], [0.75, 1.5]], dtype=torch.float64)   # R1[a1, s]


def ending_model(theta, phi, steps=True):
    """FrozenLake's loop: act, the environment says whether the episode ended, scg.done, then
    the reward of that step (emitted after the call: it counts). Then a message c, drawn
    after the call (masked where the episode ended), and a cost reading it (masked too), and a
    second step (masked). ``steps=False``: the same without scg.steps (names a0, a1)."""
    def body(t, s):
        name = "a" if steps else f"a{t}"
        a = scg.message(name, dist.Bernoulli(logits=theta[t, s]), coagent="pi")
        if t == 0:
            scg.done(a == 1)                          # reaching the goal ends the episode
            scg.reward("r", R0[a.long(), s])
            c = scg.message("c", dist.Bernoulli(logits=phi[s]), coagent="sig")
            scg.reward("q", 0.5 * c)
        else:
            scg.reward("r" if steps else "r1", R1[a.long(), s])

    @scg.network
    def ending(s):
        with scg.episodes(s.shape[0]):
            for t in (scg.steps(2) if steps else range(2)):
                body(t, s)
    return ending


def ending_oracle(theta, phi, s, steps=True):
    """J by plain torch enumeration (an ended episode's masked messages fixed at 0)."""
    J, runs = 0.0, []
    B = torch.distributions.Bernoulli
    N = s.shape[0]
    names = ("a@0", "c@0", "a@1") if steps else ("a0", "c", "a1")
    for a0 in itertools.product([0.0, 1.0], repeat=N):
        a0 = torch.tensor(a0)
        alive = a0 == 0
        live = [[0.0, 1.0] if x else [0.0] for x in alive.tolist()]
        for c0, a1 in itertools.product(itertools.product(*live), repeat=2):
            c0, a1 = torch.tensor(c0), torch.tensor(a1)
            lp = B(logits=theta[0, s]).log_prob(a0) + torch.where(
                alive, B(logits=phi[s]).log_prob(c0) + B(logits=theta[1, s]).log_prob(a1), 0.0)
            p = lp.sum().exp()
            ret = R0[a0.long(), s] + torch.where(
                alive, 0.5 * c0 + (GAMMA if steps else 1.0) * R1[a1.long(), s], 0.0)
            J = J + p * ret.mean()
            runs.append((p.detach(), dict(zip(names, (a0, c0, a1))), ret.mean()))
    return J, runs


@pytest.mark.parametrize("steps", [True, False])
@pytest.mark.parametrize("baseline", ["none", "loo"])
def test_reward_after_done_in_the_ending_step_counts(baseline, steps):
    theta = torch.nn.Parameter(torch.tensor([[0.3, -0.8], [0.5, 0.2]]))
    phi = torch.nn.Parameter(torch.tensor([-0.4, 0.9]))
    s = torch.tensor([0, 1])
    model = ending_model(theta, phi, steps)
    est = scg.compile(model, gamma=GAMMA, baseline=baseline)
    J, runs = ending_oracle(theta, phi, s, steps)
    exact = torch.autograd.grad(J, [theta, phi])
    expect = [torch.zeros_like(theta), torch.zeros_like(phi)]
    for p, values, ret in runs:
        out = est.run((s,), {}, Fix(values), update=False)
        assert torch.allclose(out.objective, ret)     # the ending step's reward counts
        expect = [e - p * g for e, g in zip(expect, torch.autograd.grad(out.loss, [theta, phi]))]
    for e, x in zip(expect, exact):
        assert x.abs().sum() > 0.01
        assert torch.allclose(e, x, atol=1e-12), (e, x)
    assert scg.check(model, s, gamma=GAMMA, baseline=baseline).ok


# ---- 7. (estimator.py) named_parameters agrees with parameters; copies keep their owners ------
sender7, receiver7 = torch.nn.Linear(4, 8), torch.nn.Linear(8, 4)


@scg.network
def signalling7(state):
    with scg.episodes(state.shape[0]):
        x = torch.nn.functional.one_hot(state, 4).to(sender7.weight.dtype)
        m = scg.message("m", dist.Categorical(logits=sender7(x)), coagent="sender")
        y = torch.nn.functional.one_hot(m, 8).to(x.dtype)
        a = scg.message("a", dist.Categorical(logits=receiver7(y)), coagent="receiver")
        scg.reward("r", (a == state).to(x.dtype))


def test_named_parameters_match_parameters():
    est = scg.compile(signalling7, baseline="critic")
    est(torch.arange(4))
    for coagent in (None, "sender", "receiver"):
        named = list(est.named_parameters(coagent=coagent))
        assert [id(p) for _, p in named] == [id(p) for p in est.parameters(coagent)]
        assert len({n for n, _ in named}) == len(named)
    names = [n for n, _ in est.named_parameters()]
    assert len(names) == 12 == len(list(est.parameters()))   # 4 model tensors, 2 critics' 8
    critics = {id(p) for p in est.critics.parameters()}
    for n, p in est.named_parameters():
        assert n.startswith("critics.") == (id(p) in critics), n


def test_td_copy_keeps_local_losses():
    """After a copy, the update of theta is still pi's local loss (owners found by id)."""
    theta = torch.nn.Parameter(torch.tensor([0.3, -0.8]))
    V = torch.nn.Parameter(torch.tensor([0.2, -0.1]))
    est = scg.compile(corridor_step, estimator="td", gamma=GAMMA)
    s = torch.tensor([0, 1, 1, 0])
    est(s, theta, V)
    for e, th, v in (copy.deepcopy((est, theta, V)), pickle.loads(pickle.dumps((est, theta, V)))):
        pyro.set_rng_seed(3)
        out = e(s, th, v)
        g_pi = torch.autograd.grad(out.local["pi"], [th, v], allow_unused=True)
        g_critic = torch.autograd.grad(out.local["critic"], [th, v], allow_unused=True)
        assert g_pi[0] is not None and g_pi[1] is None
        assert g_critic[0] is None and g_critic[1] is not None
