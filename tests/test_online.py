"""Online learning (estimator="td"): the Monte Carlo variant's expected update is the exact
gradient; window-by-window equals one window; bootstrapping's bias is measured, and vanishes
with the true value function."""

import pyro.distributions as dist
import pytest
import torch

import scg
from scg.tools.check import log_prob, trajectories

GAMMA = 0.8


def chain(T=2):
    """Two-state chain: a_t ~ pi(. | s_t, t), r_t = R[t, s_t, a_t], s_{t+1} = a_t; V a table."""
    theta = torch.nn.Parameter(torch.tensor([[0.3, -0.8], [1.1, -0.4], [0.2, 0.5]][:T]))
    V = torch.nn.Parameter(torch.zeros(T, 2))
    R = torch.tensor([[[1.0, -0.5], [0.2, 0.7]], [[-1.0, 2.0], [0.5, 0.0]],
                      [[0.3, 0.1], [-0.2, 1.0]]])[:T]

    def body(s, t):
        scg.value("v", V[t, s])
        a = scg.message("a", dist.Bernoulli(logits=theta[t, s]), coagent="pi").long()
        scg.reward("r", R[t, s, a])
        return a

    return (*windows(body, T), theta, V, R)


def windows(body, T):
    """The episode of ``T`` steps of ``body(s, t)`` as one network, and one step of it."""
    @scg.network
    def episode(s0):
        with scg.episodes(s0.shape[0]):
            s = s0
            for t in scg.steps(T):
                s = body(s, t)
        return s

    @scg.network
    def one_step(s, t):
        with scg.episodes(s.shape[0]):
            for _ in scg.steps(1):
                s = body(s, t)
        return s

    return episode, one_step


def flat(u_params, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(u_params, params,
                                                               allow_unused=False)])


def expected_update(est, model, args, theta):
    """E[u] by enumeration (u = -grad of window + finish surrogates) and the exact grad J."""
    E = torch.zeros(theta.numel())
    J = 0.0
    for out in trajectories(est, args):
        p = log_prob(out.sites).exp()
        fin = est.finish()
        u = -flat(out.loss + fin.loss, [theta])
        E = E + p.detach() * u
        J = J + p * out.stats["return"]
    return E, torch.autograd.grad(J, theta)[0].flatten()


def true_values(theta, R):
    """V_t(s) of the current policy, by backward induction."""
    T = theta.shape[0]
    V = torch.zeros(T + 1, 2)
    for t in reversed(range(T)):
        p1 = torch.sigmoid(theta[t]).detach()
        nxt = V[t + 1] * GAMMA if t + 1 < T else torch.zeros(2)
        V[t] = (1 - p1) * (R[t, :, 0] + nxt[0]) + p1 * (R[t, :, 1] + nxt[1])
    return V[:T]


@pytest.mark.parametrize("T", [2, 3])
@pytest.mark.slow
def test_monte_carlo_variant_expected_update_is_exact_gradient(T):
    episode, _, theta, V, R = chain(T)
    est = scg.compile(episode, estimator="td", lam=1.0, gamma=GAMMA)
    E, exact = expected_update(est, episode, (torch.tensor([0, 1]),), theta)
    assert exact.norm() > 1e-3
    assert torch.allclose(E, exact, rtol=1e-10, atol=1e-12), (E, exact)


@pytest.mark.slow
def test_true_value_function_makes_td0_unbiased():
    episode, _, theta, V, R = chain(3)
    with torch.no_grad():
        V.copy_(true_values(theta, R))
    est = scg.compile(episode, estimator="td", lam=0.0, gamma=GAMMA)
    E, exact = expected_update(est, episode, (torch.tensor([0, 1]),), theta)
    assert torch.allclose(E, exact, rtol=1e-10, atol=1e-12), (E, exact)


@pytest.mark.parametrize("lam", [0.0, 0.5])
@pytest.mark.slow
def test_bootstrapping_with_a_wrong_critic_is_biased(lam):
    """Measured, not assumed: with V = 0 the TD(lambda < 1) expected update is not grad J."""
    episode, _, theta, V, R = chain(3)
    est = scg.compile(episode, estimator="td", lam=lam, gamma=GAMMA)
    E, exact = expected_update(est, episode, (torch.tensor([0, 1]),), theta)
    rel = ((E - exact).norm() / exact.norm()).item()
    cos = (E @ exact / (E.norm() * exact.norm())).item()
    print(f"lambda={lam}: relative bias {rel:.3f}, cosine {cos:.3f}")
    assert rel > 0.05


@pytest.mark.parametrize("lam", [0.0, 0.7, 1.0])
def test_windows_of_one_step_equal_one_window(lam):
    episode, one_step, theta, V, R = chain(3)
    with torch.no_grad():
        V.normal_()
    s0 = torch.tensor([0, 1])
    whole = scg.compile(episode, estimator="td", lam=lam, gamma=GAMMA)
    out = whole(s0)
    values = {s.name: s.value for s in out.sites if s.role == "message"}
    u1 = -flat(out.loss + whole.finish().loss, [theta, V])

    split = scg.compile(one_step, estimator="td", lam=lam, gamma=GAMMA)
    s, total = s0, 0.0
    for t in range(3):
        o = split.run((s, t), {}, scg.core.record.Fix({"a@0": values[f"a@{t}"]}))
        s, total = o.value, total + o.loss
    u2 = -flat(total + split.finish().loss, [theta, V])
    assert torch.allclose(u1, u2, atol=1e-12)


def test_local_losses_sum_to_loss_and_critic_has_its_own():
    episode, _, theta, V, R = chain(2)
    est = scg.compile(episode, estimator="td", lam=0.9, gamma=GAMMA)
    out = est(torch.tensor([0, 1]))
    assert set(out.local) == {"pi", "critic"}
    assert torch.allclose(sum(out.local.values()), out.loss)


@pytest.mark.slow
def test_average_reward_variant_tracks_the_reward_rate():
    _, one_step, theta, V, R = chain(2)
    est = scg.compile(one_step, estimator="td", lam=0.5, objective="average", avg_rate=0.05)
    s = torch.tensor([0, 1])
    rewards = []
    for _ in range(400):
        out = est(s, 0)
        s = out.value
        rewards.append(out.stats["return"])
    avg = sum(rewards[-200:]) / 200
    assert abs(est.td.rho - avg) < 0.2, (est.td.rho, avg)


@pytest.mark.parametrize("opts, match", [
    ({"estimator": "sarsa"}, "unknown estimator 'sarsa'"),
    ({"estimator": "td", "lam": 1.5}, "lam must be in"),
    ({"estimator": "td", "objective": "average", "gamma": 0.9}, "needs gamma=1.0"),
    ({"estimator": "td", "objective": "mean"}, "unknown objective 'mean' for estimator='td'"),
])
def test_bad_online_options(opts, match):
    episode, *_ = chain(2)
    with pytest.raises(scg.ScgError, match=match):
        scg.compile(episode, **opts)


def test_finish_needs_td():
    episode, *_ = chain(2)
    with pytest.raises(scg.ScgError, match="finish"):
        scg.compile(episode).finish()


def bias_and_variance(lam, exact_critic):
    """Relative bias |E u - grad J| / |grad J| and total variance E|u - E u|^2 of one
    episode's update, by enumeration."""
    episode, _, theta, V, R = chain(3)
    if exact_critic:
        with torch.no_grad():
            V.copy_(true_values(theta, R))
    est = scg.compile(episode, estimator="td", lam=lam, gamma=GAMMA)
    E, second, J = torch.zeros(theta.numel()), 0.0, 0.0
    for out in trajectories(est, (torch.tensor([0, 1]),)):
        p = log_prob(out.sites).exp()
        u = -flat(out.loss + est.finish().loss, [theta])
        E, second = E + p.detach() * u, second + p.detach() * (u @ u)
        J = J + p * out.stats["return"]
    g = torch.autograd.grad(J, theta)[0].flatten()
    return ((E - g).norm() / g.norm()).item(), (second - E @ E).item()


@pytest.mark.slow
def test_bootstrapping_trades_bias_for_variance():
    """The figures in docs/asynchrony.md: with the true V every lambda is unbiased and the
    variance falls with lambda; with V = 0 bootstrapping cuts variance and adds bias."""
    table = {(lam, c): bias_and_variance(lam, c) for lam in (1.0, 0.5, 0.0)
             for c in (True, False)}
    for (lam, c), (bias, var) in sorted(table.items()):
        print(f"lambda={lam} exact critic={c}: relative bias {bias:.3f}, variance {var:.4f}")
    assert all(table[(lam, True)][0] < 1e-10 for lam in (1.0, 0.5, 0.0))
    assert table[(1.0, False)][0] < 1e-10
    assert table[(1.0, True)][1] > table[(0.5, True)][1] > table[(0.0, True)][1]
    assert table[(1.0, False)][1] > table[(0.5, False)][1] > table[(0.0, False)][1]
    assert table[(0.0, False)][0] > table[(0.5, False)][0] > 0.05


@pytest.mark.parametrize("lam", [0.0, 0.6, 1.0])
def test_finish_of_some_episodes_equals_separate_runs(lam):
    """Two episodes in one plate, one restarting after 2 steps (``finish(done)``): the update is
    the mean of the three episodes run alone (traces, pending TD errors and time origins are
    per episode)."""
    _, one_step, theta, V, R = chain(3)
    with torch.no_grad():
        V.normal_()
    acts = {0: [1, 0, 1], 1: [0, 1, 1]}   # per plate element, per window

    def run(est, s, t, a):
        return est.run((s, t), {}, scg.core.record.Fix({"a@0": a.float()}))

    est = scg.compile(one_step, estimator="td", lam=lam, gamma=GAMMA)
    s, t, total = torch.tensor([0, 1]), torch.tensor([0, 0]), 0.0
    for k in range(3):
        o = run(est, s, t, torch.tensor([acts[0][k], acts[1][k]]))
        total, s, t = total + o.loss, o.value, t + 1
        if k == 1:   # episode 0 ends and restarts from state 1 at t = 0
            total = total + est.finish(done=torch.tensor([True, False])).loss
            s, t = torch.tensor([1, s[1].item()]), torch.tensor([0, t[1].item()])
    batched = -flat(total + est.finish().loss, [theta, V])

    def alone(s0, actions):
        e = scg.compile(one_step, estimator="td", lam=lam, gamma=GAMMA)
        s, tot = torch.tensor([s0]), 0.0
        for k, a in enumerate(actions):
            o = run(e, s, torch.tensor([k]), torch.tensor([a]))
            tot, s = tot + o.loss, o.value
        return -flat(tot + e.finish().loss, [theta, V])

    separate = (alone(0, acts[0][:2]) + alone(1, acts[0][2:]) + alone(1, acts[1])) / 2
    assert torch.allclose(batched, separate, atol=1e-6)


def test_finish_done_must_name_episodes():
    _, one_step, *_ = chain(2)
    est = scg.compile(one_step, estimator="td")
    est(torch.tensor([0, 1]), 0)
    with pytest.raises(scg.ScgError, match=r"bool tensor of shape \[2\]"):
        est.finish(done=torch.tensor([True]))
    with pytest.raises(scg.ScgError, match="bool tensor"):
        est.finish(done=[True, False])


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_a_parameter_first_used_in_a_later_window(lam):
    """A coagent that first acts at step 1 (its parameter is discovered in the second window):
    windows of one step still equal one window (traces are kept per parameter)."""
    theta = torch.nn.Parameter(torch.tensor([0.3, -0.8]))
    phi = torch.nn.Parameter(torch.tensor([0.5, 1.2]))
    V = torch.nn.Parameter(torch.tensor([0.2, -0.4]))

    def body(s, t):
        scg.value("v", V[s])
        if t >= 1:
            b = scg.message("b", dist.Bernoulli(logits=phi[s]), coagent="late").long()
            scg.reward("rb", 0.7 * b.float() - 0.2)
        a = scg.message("a", dist.Bernoulli(logits=theta[s]), coagent="early").long()
        scg.reward("r", torch.where(a == s, 1.0, -0.5))
        return a

    episode, one_step = windows(body, 3)
    s0 = torch.tensor([0, 1])
    whole = scg.compile(episode, estimator="td", lam=lam, gamma=GAMMA)
    out = whole(s0)
    values = {s.name: s.value for s in out.sites if s.role == "message"}
    u1 = -flat(out.loss + whole.finish().loss, [theta, phi, V])
    split = scg.compile(one_step, estimator="td", lam=lam, gamma=GAMMA)
    s, total = s0, 0.0
    for t in range(3):
        fix = {"a@0": values[f"a@{t}"]} | ({"b@0": values[f"b@{t}"]} if t else {})
        o = split.run((s, t), {}, scg.core.record.Fix(fix))
        s, total = o.value, total + o.loss
    u2 = -flat(total + split.finish().loss, [theta, phi, V])
    assert u1[2:4].abs().max() > 0
    assert torch.allclose(u1, u2, atol=1e-6)
