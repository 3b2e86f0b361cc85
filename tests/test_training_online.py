"""scg.Trainer driving the online actor-critic (estimator="td"): the same updates as the loop
written out by hand, the critic trained by its own optimiser, checkpoints that resume exactly
(eligibility traces and the environment driver's state included), and clear errors."""

import pyro
import pytest
import torch
from test_online import GAMMA, chain

import scg
from scg.errors import ScgError


class Driver:
    """``N`` episodes of the ``T``-step chain, staggered, each restarting in a random state
    when it ends: ``__call__`` the current window's arguments, ``advance`` as ``done``."""

    def __init__(self, N=3, T=3, seed=0):
        self.T, self.gen = T, torch.Generator().manual_seed(seed)
        self.s = torch.randint(0, 2, (N,), generator=self.gen)
        self.t = torch.arange(N) % T

    def __call__(self, step):
        return self.s, self.t

    def advance(self, out):
        self.t = self.t + 1
        ended = self.t == self.T
        fresh = torch.randint(0, 2, self.s.shape, generator=self.gen)
        self.s = torch.where(ended, fresh, out.value)
        self.t = torch.where(ended, torch.zeros_like(self.t), self.t)
        return ended

    def state_dict(self):
        return {"s": self.s, "t": self.t, "gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.s, self.t = state["s"], state["t"]
        self.gen.set_state(state["gen"])


def by_hand(updates, lam=0.6):
    """The online loop written out: Adam on the policy, SGD on the critic."""
    _, one_step, theta, V, _ = chain(3)
    est = scg.compile(one_step, estimator="td", lam=lam, gamma=GAMMA)
    drv = Driver()
    pyro.set_rng_seed(1)
    est.trace(drv(0), {})            # the Trainer's set-up run (its draws are discarded)
    actor, critic = torch.optim.Adam([theta], lr=0.1), torch.optim.SGD([V], lr=0.5)
    for _ in range(updates):
        out = est(*drv(0))
        loss = out.loss + est.finish(done=drv.advance(out)).loss
        actor.zero_grad()
        critic.zero_grad()
        loss.backward()
        actor.step()
        critic.step()
    return theta.detach().clone(), V.detach().clone()


def trainer(out=None, lam=0.6, **kw):
    _, one_step, theta, V, _ = chain(3)
    drv = Driver()
    t = scg.Trainer(one_step, drv, done=drv.advance, estimator="td", lam=lam, gamma=GAMMA,
                    per_coagent=True, optimizer={"critic": "sgd", "default": "adam"},
                    lr={"critic": 0.5, "default": 0.1}, seed=1, progress=False, out=out, **kw)
    return t, theta, V


@pytest.mark.parametrize("lam", [0.0, 0.6])
def test_trainer_equals_the_loop_written_by_hand(lam):
    t, theta, V = trainer(lam=lam)
    history = t.fit(8)
    want_theta, want_V = by_hand(8, lam)
    assert V.abs().max() > 0                     # the critic was trained
    assert torch.allclose(theta, want_theta, atol=1e-6)
    assert torch.allclose(V, want_V, atol=1e-6)
    assert sum(r["episodes_ended"] for r in history) == 8   # 3 episodes, staggered, T = 3
    assert set(t.groups) == {"pi", "critic"}
    assert isinstance(t.groups["critic"][1], torch.optim.SGD)


def test_resumed_online_run_equals_uninterrupted(tmp_path):
    whole, theta, V = trainer()
    whole.fit(11)
    td = whole.est.td
    want = (theta.detach().clone(), V.detach().clone(), td.z, td.t0, td.zw, td.pending)
    first, *_ = trainer(out=tmp_path, checkpoint_every=3)
    first.fit(7)                                 # checkpoint at update 6; updates 7 are lost
    again, theta, V = trainer(out=tmp_path)
    assert again.resume(total=11) and again.step == 6
    again.fit(11)
    assert torch.equal(theta, want[0]) and torch.equal(V, want[1])
    assert torch.equal(again.est.td.t0, want[3])
    for got, saved in ((again.est.td.z, want[2]), (again.est.td.zw, want[4])):
        assert [torch.equal(a, b) for a, b in zip(got.values(), saved.values())] == [True]
    assert all(torch.equal(a, b) for a, b in zip(again.est.td.pending, want[5]))


def test_online_bad_configurations():
    _, one_step, *_ = chain(3)
    mc_episode, *_ = chain(3)
    with pytest.raises(ScgError, match="done= is a callable .* for estimator='td'"):
        scg.Trainer(mc_episode, (torch.tensor([0, 1]),), done=lambda out: None)
    with pytest.raises(ScgError, match="done= must be a callable"):
        scg.Trainer(one_step, Driver(), done=True, estimator="td")
    with pytest.raises(ScgError, match="a dict of optimizers needs per_coagent=True"):
        scg.Trainer(one_step, Driver(), optimizer={"critic": "sgd"}, estimator="td")
    t = scg.Trainer(one_step, Driver(), done=lambda out: torch.tensor([True]),
                    estimator="td", progress=False)
    with pytest.raises(ScgError, match=r"bool tensor of shape \[3\]"):
        t.fit(1)


def test_a_coagent_that_acts_only_later_is_an_error():
    theta = torch.nn.Parameter(torch.zeros(2))
    phi = torch.nn.Parameter(torch.zeros(2))

    @scg.network
    def step(s, t):
        with scg.episodes(s.shape[0]):
            for _ in scg.steps(1):
                if t >= 1:
                    scg.message("b", pyro.distributions.Bernoulli(logits=phi[s]),
                                coagent="late")
                a = scg.message("a", pyro.distributions.Bernoulli(logits=theta[s]),
                                coagent="early").long()
                scg.reward("r", (a == s).float())
        return a

    s = torch.tensor([0, 1])
    t = scg.Trainer(step, lambda k: (s, k), estimator="td", progress=False)
    with pytest.raises(ScgError, match=r"update 1: .*coagents \['late'\].*inputs\(0\)"):
        t.fit(3)


def test_a_checkpoint_that_would_lose_the_critic_is_an_error(tmp_path):
    _, one_step, theta, V, _ = chain(3)
    drv = Driver()
    t = scg.Trainer(one_step, drv, done=drv.advance, estimator="td", progress=False,
                    out=tmp_path, modules=torch.nn.ParameterDict({"theta": theta}))
    t.fit(2)
    with pytest.raises(ScgError, match=r"\['all'\] train parameters that are not in modules="):
        t.save()
    t = scg.Trainer(one_step, drv, done=drv.advance, estimator="td", progress=False,
                    out=tmp_path, modules=torch.nn.ParameterDict({"theta": theta, "V": V}))
    t.fit(2)
    assert set(t.state_dict()["td"]["z"]) == {"model.theta"}
    assert set(t.state_dict()["td"]["zw"]) == {"model.V"}


def test_monte_carlo_ignores_value_sites_and_coagents_may_not_take_group_names(tmp_path):
    episode, _, theta, V, _ = chain(3)
    t = scg.Trainer(episode, (torch.tensor([0, 1]),), progress=False, out=tmp_path,
                    per_coagent=True, modules=torch.nn.ParameterDict({"theta": theta}))
    t.fit(2)
    assert set(t.groups) == {"pi"} and t.save()       # V is no Monte Carlo parameter
    with pytest.raises(ScgError, match=r"optimizer names unknown coagent\(s\) \['critc'\]"):
        scg.Trainer(episode, (torch.tensor([0, 1]),), progress=False, per_coagent=True,
                    optimizer={"critc": "sgd"}).fit(1)

    @scg.network
    def named_critic(s):
        with scg.episodes(s.shape[0]):
            a = scg.message("a", pyro.distributions.Bernoulli(logits=theta[0, s]),
                            coagent="critic")
            scg.reward("r", a)
    with pytest.raises(ScgError, match=r"coagent name\(s\) \['critic'\] clash"):
        scg.Trainer(named_critic, (torch.tensor([0, 1]),), progress=False,
                    per_coagent=True).fit(1)
