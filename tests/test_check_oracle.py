"""``scg.check`` is an oracle independent of the estimator it checks: its J comes from the sites
(not the plan), it compares every parameter J reaches, it does not pass a zero gradient, it
enumerates ``to_event`` sites, and its finite-difference test is a stated statistical test.
Each oracle here is plain torch, written without scg."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.nn.functional import logsigmoid, softplus

import scg
from scg.tools.check import objective, space_size, trajectories


def flat(gs):
    return torch.cat([g.flatten() for g in gs])


# ---- (a) the independent J ----------------------------------------------------------------
def two_steps():
    """Two episodes, two steps of one Bernoulli unit; an episode ends (scg.done) at a = 1."""
    w = torch.nn.Parameter(torch.tensor([0.4, -0.7]))

    @scg.network
    def net(s):
        with scg.episodes(2):
            for t in scg.steps(2):
                a = scg.message("a", dist.Bernoulli(logits=w[t] + s), coagent="f")
                scg.reward("r", a * (1.0 + s))
                scg.done(a == 1)
    return net, w


def hand_J(w, s, gamma, per_step=1.0):
    """J by hand: episode i gets r_0 + gamma * [a_0 = 0] r_1, r_t = a_t (1 + s_i); mean over
    the two episodes."""
    p0, p1 = torch.sigmoid(w[0] + s), torch.sigmoid(w[1] + s)
    return (per_step * (p0 * (1 + s) + gamma * (1 - p0) * p1 * (1 + s))).mean()


@pytest.mark.parametrize("kind", ["sum", "mean"])
def test_independent_objective_equals_hand_computed_J(kind):
    net, w = two_steps()
    s = torch.tensor([0.0, 1.0])
    est = scg.compile(net, gamma=0.9, objective=kind)
    per_step = 0.5 if kind == "mean" else 1.0
    J, n = 0.0, 0
    for out in trajectories(est, (s,)):
        n += 1
        a = {x.name: x.value for x in out.sites if x.role == "message"}
        alive = a["a@0"] == 0
        hand = per_step * (a["a@0"] * (1 + s) + 0.9 * torch.where(alive, a["a@1"], 0.0)
                           * (1 + s)).mean()
        assert torch.allclose(objective(out.sites, 0.9, kind), hand, atol=1e-14)
        p = 1.0
        for t in range(2):
            for i in range(2):
                if t == 1 and not alive[i]:
                    continue        # masked: counted once
                q = torch.sigmoid(w[t] + s[i])
                p = p * (q if a[f"a@{t}"][i] == 1 else 1 - q)
        J = J + p * hand
    assert n == 9                   # per episode: a_0 = 1, or a_0 = 0 and a_1 in {0, 1}
    exact = hand_J(w, s, 0.9, per_step)
    assert torch.allclose(J, exact, atol=1e-14)
    report = scg.check(net, s, gamma=0.9, objective=kind)
    assert report.ok and report.size == 9 and report.space == 16, str(report)
    assert torch.allclose(report.exact, flat(torch.autograd.grad(exact, [w])), atol=1e-14)


def test_objective_does_not_read_the_estimator(monkeypatch):
    """The exact gradient does not change when the estimator's own objective is wrong."""
    net, w = two_steps()
    s = torch.tensor([0.0, 1.0])
    est = scg.compile(net, gamma=0.9)
    run = est.run

    def lying(*a, **k):
        out = run(*a, **k)
        out.objective = 0.0 * out.objective + 7.0
        return out
    monkeypatch.setattr(est, "run", lying)
    report = scg.check(net, s, est=est)
    exact = flat(torch.autograd.grad(hand_J(w, s, 0.9), [w]))
    assert report.ok and torch.allclose(report.exact, exact, atol=1e-14), str(report)


# ---- (b) parameters the estimator does not train ------------------------------------------
def env_network(detach):
    """An scg.env site whose distribution holds a parameter (by mistake); ``detach=True`` is
    the same network as an estimator blind to that parameter sees it."""
    theta = torch.nn.Parameter(torch.tensor([0.5, -1.0, 0.2]))
    w = torch.nn.Parameter(torch.tensor([0.3]))

    def build(detach):
        @scg.network
        def net(n):
            with scg.episodes(n):
                logits = theta.detach() if detach else theta
                k = scg.env("noise", dist.Categorical(logits=logits.expand(n, 3)))
                a = scg.message("a", dist.Bernoulli(logits=w.expand(n)), coagent="f")
                scg.reward("r", (a == (k > 0)).double())
        return net
    return build(False), build(True), theta, w


def test_parameter_inside_env_distribution_is_refused_or_fails_named():
    """As a user runs it: the estimator refuses the network itself (naming the site), or
    check's report fails naming it."""
    net, _, _, _ = env_network(False)
    try:
        report = scg.check(net, 2)
    except scg.ScgError as e:
        assert "'noise'" in str(e)
    else:
        assert not report.ok and "through site 'noise'" in str(report), str(report)


def test_parameter_inside_env_distribution_fails_named():
    """check's own J reaches theta through the env site's log-probability even when the
    estimator does not see theta at all: the report fails and names it."""
    net, blind, theta, w = env_network(False)
    report = scg.check(net, 2, est=scg.compile(blind))
    assert report.method == "enumerate"
    assert not report.ok and report.status == "MISMATCH"
    text = str(report)
    assert ("parameter of shape (3,) reached by J through site 'noise' is not trained by the "
            "estimator") in text, text
    # the oracle, by hand: J = P(a = [k > 0]) with a ~ Bernoulli(sigmoid(w)), k ~ softmax(theta)
    q, pk = torch.sigmoid(w[0]), torch.softmax(theta, 0)
    J = q * (1 - pk[0]) + (1 - q) * pk[0]
    assert torch.allclose(report.exact, flat(torch.autograd.grad(J, [w, theta])), atol=1e-14)
    assert report.estimate[1:].abs().max() == 0        # no credit reaches theta
    assert torch.allclose(report.estimate[:1], report.exact[:1], atol=1e-14)  # w is right


def test_parameter_of_a_raw_pyro_sample_site_fails_named():
    phi = torch.nn.Parameter(torch.tensor(0.3))
    w = torch.nn.Parameter(torch.tensor(-0.2))

    def build(detach):
        @scg.network
        def net(n):
            with scg.episodes(n):
                logits = phi.detach() if detach else phi
                coin = pyro.sample("coin", dist.Bernoulli(logits=logits.expand(n)))
                a = scg.message("a", dist.Bernoulli(logits=w.expand(n)), coagent="f")
                scg.reward("r", (a == coin).double())
        return net

    net = build(False)
    with pytest.raises(scg.ScgError, match="pyro.sample site 'coin' is not an scg site"):
        scg.check(net, 2, method="enumerate", est=scg.compile(build(True)))
    report = scg.check(net, 200, samples=20, directions=2, est=scg.compile(build(True)))
    assert report.method == "fd" and not report.ok
    assert "parameter of shape () reached by J through site 'coin (pyro.sample, not an scg " \
           "site)' is not trained" in str(report), str(report)


# ---- (c) a zero exact gradient is no pass -------------------------------------------------
def test_zero_exact_gradient_is_not_ok():
    w = torch.nn.Parameter(torch.tensor([0.3, -0.5]))

    @scg.network
    def net(n):
        with scg.episodes(n):
            a = scg.message("a", dist.Categorical(logits=w.expand(n, 2)), coagent="f")
            scg.reward("r", torch.ones(n) + 0.0 * a)      # the same reward for every action

    report = scg.check(net, 2)
    assert report.rows[0].norm_exact < 1e-12             # by hand: J = 1 whatever w is
    assert report.vacuous and not report.ok and report.status == "VACUOUS"
    assert report.agree                                   # the numbers agree, vacuously
    text = str(report)
    assert "VACUOUS" in text.splitlines()[0]
    assert "the exact gradient is zero" in text and "choose inputs or parameters" in text
    fd = scg.check(net, 50, method="fd", samples=10, directions=2)
    assert fd.vacuous and not fd.ok and "not distinguishable from zero" in str(fd)


# ---- (d) enumeration of to_event / Independent sites --------------------------------------
def test_to_event_sites_are_enumerated_exactly():
    W = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    V = torch.nn.Parameter(torch.tensor([[0.2, -0.3, 0.1], [-0.4, 0.6, 0.0]]))

    @scg.network
    def net(n):
        with scg.episodes(n):
            b = scg.message("b", dist.Bernoulli(logits=W.expand(n, 2)).to_event(1),
                            coagent="f")
            c = scg.message("c", dist.Independent(dist.Categorical(
                logits=V.expand(n, 2, 3) + b[..., None]), 1), coagent="g")
            scg.reward("r", (c == 2 * b).double().sum(-1) + b[..., 0] * c[..., 1])

    est = scg.compile(net)
    sites = est(1).sites
    assert space_size(sites) == (4 * 9, None)
    report = scg.check(net, 1, est=est)
    assert report.method == "enumerate" and report.size == 36
    # by hand: every (b1, b2) in {0,1}^2 and (c1, c2) in {0,1,2}^2
    J = 0.0
    for b in itertools.product((0.0, 1.0), repeat=2):
        b = torch.tensor(b)
        lb = (b * logsigmoid(W) + (1 - b) * logsigmoid(-W)).sum()
        for c in itertools.product(range(3), repeat=2):
            c = torch.tensor(c)
            lc = torch.log_softmax(V + b[:, None], -1)[torch.arange(2), c].sum()
            r = (c == 2 * b).double().sum() + b[0] * c[1]
            J = J + (lb + lc).exp() * r
    exact = flat(torch.autograd.grad(J, [W, V]))
    assert torch.allclose(report.exact, exact, atol=1e-14), str(report)
    assert report.ok, str(report)


# ---- (e) finite differences: a stated test -----------------------------------------------
def reparam_net():
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2]))

    @scg.network
    def net(n):
        with scg.episodes(n):
            m = scg.message("m", dist.Normal(w[0].expand(n), softplus(w[1]).expand(n)),
                            coagent="f", reparam=True)
            scg.cost("c", -(m - 1.0) ** 2, coagent="f")
    return net, w


def poisson_net():
    w = torch.nn.Parameter(torch.tensor([0.5, -0.3]))

    @scg.network
    def net(n):
        with scg.episodes(n):
            k = scg.env("k", dist.Poisson(torch.tensor(2.0).expand(n)))
            m = scg.message("m", dist.Poisson(softplus(w[0] + w[1] * k)), coagent="f")
            scg.reward("r", -(m - k) ** 2 / 4)
    return net, w


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("make", [reparam_net, poisson_net], ids=["reparam", "poisson"])
@pytest.mark.slow
def test_fd_says_ok_on_correct_estimators(make, seed):
    torch.manual_seed(seed)
    report = scg.check(make()[0], 200, samples=40, directions=3, seed=seed)
    assert report.method == "fd"
    assert report.ok, str(report)
    assert report.fd["z"].max() <= report.fd["z_max"]


def test_fd_reparam_directional_derivatives_match_the_closed_form():
    """J = -E(m - 1)^2 = -((mu - 1)^2 + sigma^2): the fd estimates within their standard
    errors of the exact directional derivatives."""
    net, w = reparam_net()
    report = scg.check(net, 200, samples=40, directions=3)
    J = -((w[0] - 1) ** 2 + softplus(w[1]) ** 2)
    g = torch.autograd.grad(J, [w])[0]
    U = torch.randn((3, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = (U / U.norm(dim=1, keepdim=True)) @ g
    assert ((report.exact - exact).abs() <= 4 * report.fd["se_fd"]).all(), str(report)


def test_fd_says_mismatch_on_a_biased_estimator():
    """Seed 000's rule (no gamma^t on the score term) with gamma = 0.5 on a unit shared by two
    steps: dJ/dw = (1 + gamma) p (1 - p) by hand, the biased rule's expectation 2 p (1 - p), a
    third more, far outside the test's noise."""
    w = torch.nn.Parameter(torch.tensor(0.2))

    @scg.network
    def net(n):
        with scg.episodes(n):
            for _ in scg.steps(2):
                a = scg.message("a", dist.Bernoulli(logits=w.expand(n)), coagent="f")
                scg.reward("r", a)

    p = torch.sigmoid(w).item()
    opts = dict(method="fd", samples=24, directions=1, eps=0.2, gamma=0.5)
    right = scg.check(net, 200, **opts)
    assert right.ok, str(right)
    assert abs(abs(right.exact.item()) - 1.5 * p * (1 - p)) <= 4 * right.fd["se_fd"].item()
    wrong = scg.check(net, 200, discount_score=False, **opts)
    assert wrong.status == "MISMATCH" and wrong.fd["z"].max() > wrong.fd["z_max"], str(wrong)
    assert abs(abs(wrong.estimate.item()) - 2 * p * (1 - p)) <= 4 * wrong.fd["se_mc"].item()


# ---- (f) the header says what was done ---------------------------------------------------
def test_header_wording():
    net, _ = two_steps()
    head = str(scg.check(net, torch.tensor([0.0, 1.0]))).splitlines()[0]
    assert head.startswith("scg.check (enumerate, 9 joint values, float64") and "OK" in head
    fd = scg.check(reparam_net()[0], 50, samples=10, directions=2, confidence=0.95)
    head = str(fd).splitlines()[0]
    assert "10 samples" in head and "joint values" not in head, head
    assert "95% confidence" in head and "Bonferroni over 2 directions" in head, head
    assert f"|z| <= {fd.fd['z_max']:.3g}" in head
    assert "Student t, 9 dof" in str(fd)
