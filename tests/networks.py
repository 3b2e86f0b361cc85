"""A registry of small coagent networks, each with its arguments: every pass, every network.

Each entry builds fresh float64 modules so tests are independent. Sites are binary or ternary
and few, so exact enumeration stays cheap with two episodes.
"""

import pyro
import pyro.distributions as dist
import torch
from torch.nn.functional import one_hot

import scg

REGISTRY = {}


def register(fn):
    REGISTRY[fn.__name__] = fn
    return fn


def lin(i, o):
    m = torch.nn.Linear(i, o).double()
    with torch.no_grad():
        m.weight.mul_(3.0)
    return m


def oh(x, k):
    return one_hot(x.long(), k).double()


@register
def chain():
    f, g = lin(2, 3), lin(3, 2)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            m = scg.message("m", dist.Categorical(logits=f(oh(s, 2))), coagent="f")
            a = scg.message("a", dist.Bernoulli(logits=g(oh(m, 3))[..., 0]), coagent="g")
            scg.reward("r", (a == s).double())
    return model, (torch.tensor([0, 1]),), {}


@register
def fork():
    f, g, h = lin(2, 2), lin(2, 1), lin(2, 1)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            m = scg.message("m", dist.Categorical(logits=f(oh(s, 2))), coagent="f")
            a = scg.message("a", dist.Bernoulli(logits=g(oh(m, 2)).squeeze(-1)), coagent="g")
            b = scg.message("b", dist.Bernoulli(logits=h(oh(m, 2)).squeeze(-1)), coagent="h")
            scg.reward("r0", 0.5 * m.double())
            scg.reward("ra", a * s)
            scg.reward("rb", 1.0 - b)
    return model, (torch.tensor([0., 1.]),), {}


@register
def collider():
    f, g, h = lin(2, 1), lin(2, 1), lin(4, 1)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            x = oh(s, 2)
            m1 = scg.message("m1", dist.Bernoulli(logits=f(x).squeeze(-1)), coagent="f")
            m2 = scg.message("m2", dist.Bernoulli(logits=g(x).squeeze(-1)), coagent="g")
            a = scg.message("a", dist.Bernoulli(logits=h(oh(m1 + 2 * m2, 4)).squeeze(-1)),
                            coagent="h")
            scg.reward("r", a * (m1 == m2).double() + 0.3 * m1)
    return model, (torch.tensor([0, 1]),), {}


@register
def shared_parameters():
    """One module feeds two coagents: the global gradient is the sum over coagents."""
    body, f, g = lin(2, 3), lin(3, 1), lin(5, 1)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            z = torch.tanh(body(oh(s, 2)))
            m = scg.message("m", dist.Bernoulli(logits=f(z).squeeze(-1)), coagent="A")
            a = scg.message("a", dist.Bernoulli(logits=g(torch.cat([z, oh(m, 2)], -1))
                                                .squeeze(-1)), coagent="B")
            scg.reward("r", (a == s).double() - 0.2 * m)
    return model, (torch.tensor([0, 1]),), {}


@register
def predictor_shared():
    """Coagent A's parameters are shared by its message policy and its predictor (seed 000)."""
    pa, pb = lin(2, 3), lin(2, 1)

    @scg.network
    def model(s, d):
        with scg.episodes(s.shape[0]):
            out = pa(oh(s, 2))
            m = scg.message("m", dist.Bernoulli(logits=out[..., 0]), coagent="A")
            a = scg.message("a", dist.Bernoulli(logits=pb(oh(m, 2)).squeeze(-1)), coagent="B")
            scg.predict("p", dist.Normal(out[..., 1] + a, out[..., 2].exp()), obs=d, coagent="A",
                        weight=0.5)
            scg.reward("r", a * d)
    return model, (torch.tensor([0, 1]), torch.tensor([0.3, -1.2])), {}


@register
def recurrent_steps():
    """Three steps, gamma < 1, recurrence through a Python variable, a predictor per step."""
    f, g, q = lin(3, 1), lin(2, 1), lin(2, 1)

    @scg.network
    def model(s, T=3):
        with scg.episodes(s.shape[0]):
            h = torch.zeros(s.shape[0], 2)
            for t in scg.steps(T):
                m = scg.message("m", dist.Bernoulli(logits=f(torch.cat([h, s[:, None]], -1))
                                                    .squeeze(-1)), coagent="f")
                h = torch.tanh(h + g(oh(m, 2)))
                scg.predict("p", dist.Normal(q(oh(m, 2)).squeeze(-1), 1.0), obs=s, coagent="q")
                scg.reward("r", m * s - 0.1 * t)
    return model, (torch.tensor([0., 1.]),), {"gamma": 0.8}


@register
def environment():
    """Environment randomness (scg.env) between coagents, a differentiable entropy cost."""
    f, g = lin(2, 2), lin(2, 1)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            pi = dist.Categorical(logits=f(oh(s, 2)))
            m = scg.message("m", pi, coagent="f")
            noise = scg.env("noise", dist.Bernoulli(0.3 * torch.ones(s.shape[0])))
            obs = (m + noise.long()) % 2
            a = scg.message("a", dist.Bernoulli(logits=g(oh(obs, 2)).squeeze(-1)), coagent="g")
            scg.reward("r", (a == s).double())
            scg.cost("entropy", 0.1 * pi.entropy(), coagent="f")
    return model, (torch.tensor([0, 1]),), {}


@register
def interacting_agents():
    """Two agents in scg.agents sharing one policy; each agent's reward depends on both."""
    pol = lin(2, 1)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]), scg.agents(2, dim=-2):
            x = oh(s, 2).expand(2, s.shape[0], 2)
            a = scg.message("a", dist.Bernoulli(logits=pol(x).squeeze(-1)), coagent="agent")
            same = (a[0] == a[1]).double().expand(2, s.shape[0])
            scg.reward("r", same * (1 + a))
    return model, (torch.tensor([0, 1]),), {}


@register
def terminating():
    """Per-episode termination with scg.done: later sites and costs are masked."""
    f = lin(2, 1)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            for t in scg.steps(3):
                m = scg.message("m", dist.Bernoulli(logits=f(torch.stack(
                    [s, torch.full_like(s, float(t))], -1)).squeeze(-1)), coagent="f")
                scg.reward("r", m + 0.5 * s)
                scg.done(m == 1)
    return model, (torch.tensor([0., 1.]),), {"gamma": 0.9}


@register
def escaping():
    """A value leaves torch (int()) into a Python environment: the fallback must be safe."""
    f, g = lin(2, 1), lin(1, 1)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]):
            m = scg.message("m", dist.Bernoulli(logits=f(oh(s, 2)).squeeze(-1)), coagent="f")
            table = [[0.0, 1.0], [1.0, -1.0]]
            env_r = torch.tensor([table[int(s[i])][int(m[i])] for i in range(s.shape[0])])
            a = scg.message("a", dist.Bernoulli(logits=g(torch.ones(s.shape[0], 1)).squeeze(-1)),
                            coagent="g")
            scg.reward("r", env_r + a)
    return model, (torch.tensor([0, 1]),), {}


@register
def replicas():
    """A plain pyro.plate of independent replicas inside the episodes."""
    f = lin(2, 1)

    @scg.network
    def model(s):
        with scg.episodes(s.shape[0]), pyro.plate("rep", 2, dim=-2):
            a = scg.message("a", dist.Bernoulli(logits=f(oh(s, 2)).squeeze(-1).expand(2, -1)),
                            coagent="f")
            scg.reward("r", a * torch.tensor([[1.0], [-2.0]]))
    return model, (torch.tensor([0, 1]),), {}


# ---- asynchronous units (issue 3): execution coagents, execution bits, recurrence ----------

@register
def async_fixed():
    """A unit executing with fixed probability 0.6 over two steps, read at the second step by
    a synchronous unit; gamma < 1 and a predictor of the state from the held output."""
    f, g, q = lin(2, 2), lin(2, 1), lin(2, 1)

    @scg.network
    def model(s):
        N = s.shape[0]
        with scg.episodes(N):
            for t in scg.steps(2):
                m = scg.message("m", dist.Categorical(logits=f(oh(s, 2))), coagent="f",
                                execute=torch.full((N,), 0.6))
                scg.predict("p", dist.Normal(q(oh(m, 2)).squeeze(-1), 1.0), obs=s, coagent="g")
                if t == 1:
                    a = scg.message("a", dist.Bernoulli(logits=g(oh(m, 2)).squeeze(-1)),
                                    coagent="g")
                    scg.reward("r", (a == s).double())
                scg.reward("rm", 0.5 * (m == s).double())
    return model, (torch.tensor([0., 1.]),), {"gamma": 0.7}


@register
def async_learnable():
    """Learnable execution probability depending on the state; init= gives the first output."""
    f, e = lin(2, 1), lin(2, 1)

    @scg.network
    def model(s):
        N = s.shape[0]
        with scg.episodes(N):
            for t in scg.steps(2):
                p = torch.sigmoid(e(oh(s, 2))).squeeze(-1)
                m = scg.message("m", dist.Bernoulli(logits=f(oh(s, 2)).squeeze(-1)),
                                coagent="f", execute=p, init=torch.ones(N))
                scg.reward("r", (m == s).double() - 0.2 * t * m)
    return model, (torch.tensor([0., 1.]),), {"gamma": 0.9}


@register
def async_bit():
    """Options: a termination unit's bit drives the policy over options; the intra-option
    policy reads the option and the previous action (the option-critic's three units)."""
    beta, over, intra = lin(3, 1), lin(2, 2), lin(4, 1)

    @scg.network
    def model(s):
        N = s.shape[0]
        with scg.episodes(N):
            w = torch.zeros(N, dtype=torch.long)
            act = torch.zeros(N)
            for t in scg.steps(2):
                if t == 0:  # the first option is always chosen
                    fire = torch.ones(N, dtype=torch.bool)
                else:
                    fire = scg.message("term", dist.Bernoulli(logits=beta(torch.cat(
                        [oh(w, 2), s[:, None]], -1)).squeeze(-1)), coagent="beta").bool()
                w = scg.message("w", dist.Categorical(logits=over(oh(s, 2))), coagent="over",
                                execute=fire)
                act = scg.message("act", dist.Bernoulli(logits=intra(torch.cat(
                    [oh(w, 2), oh(act, 2)], -1)).squeeze(-1)), coagent="intra")
                scg.reward("r", (act == s).double() + 0.3 * (w == 1).double())
    return model, (torch.tensor([0., 1.]),), {"gamma": 0.8}


# Larger networks for render and derive (enumerated once each, with one episode, in
# tests/test_derive.py): kept out of REGISTRY, which every estimator option runs on.
SHAPES = {}


def shape(fn):
    SHAPES[fn.__name__] = fn
    return fn


@shape
def option_critic():
    """The option-critic's three units (Bacon et al. 2017; Kostas et al. section 7) on a
    two-state chain: a termination unit beta(s_t, w_{t-1}) whose bit makes the policy over
    options mu(s_t) draw w_t afresh, an intra-option policy pi(s_t, w_t), environment moves."""
    beta, over, intra = lin(4, 1), lin(2, 2), lin(4, 2)

    @scg.network
    def model(s0):
        N = s0.shape[0]
        with scg.episodes(N):
            s, w = s0, torch.zeros(N, dtype=torch.long)
            for t in scg.steps(2):
                if t == 0:
                    fire = torch.ones(N, dtype=torch.bool)
                else:
                    fire = scg.message("term", dist.Bernoulli(logits=beta(torch.cat(
                        [oh(s, 2), oh(w, 2)], -1)).squeeze(-1)), coagent="termination").bool()
                w = scg.message("option", dist.Categorical(logits=over(oh(s, 2))),
                                coagent="policy_over_options", execute=fire)
                a = scg.message("action", dist.Categorical(logits=intra(torch.cat(
                    [oh(s, 2), oh(w, 2)], -1))), coagent="intra_option")
                scg.reward("r", (a == s).double() + 0.5 * (w == s).double())
                if t == 0:
                    s = scg.env("s", dist.Categorical(probs=OC_MOVES[a]))
    model.units = {"beta": beta, "over": over, "intra": intra}
    return model, (torch.tensor([0, 1]),), {"gamma": 0.9}


OC_MOVES = torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.double)  # P(s_1 | a_0)


class Agent(torch.nn.Module):
    """One talking agent: a single parameter set shared by its message policy and predictor.
    State: the last datum it saw and the partner's last message."""

    def __init__(self):
        super().__init__()
        self.body = lin(4, 3)

    def forward(self, d, heard):
        z = self.body(torch.cat([oh(d, 2), oh(heard, 2)], -1))
        return z[..., 0], z[..., 1:]  # message logit, prediction logits


@shape
def talking_agents():
    """Seed 000's talking agents, Moore timing: at each step both speak from their state, then
    each predicts D_t from the partner's message; the reward is both log-likelihoods."""
    A, B = Agent(), Agent()
    chain = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.double)

    @scg.network
    def model(d0):
        N = d0.shape[0]
        with scg.episodes(N):
            d, ha, hb = d0, torch.zeros(N, dtype=torch.long), torch.zeros(N, dtype=torch.long)
            for _ in scg.steps(2):  # ha, hb: what A and B heard last
                ma = scg.message("mA", dist.Bernoulli(logits=A(d, ha)[0]), coagent="A").long()
                mb = scg.message("mB", dist.Bernoulli(logits=B(d, hb)[0]), coagent="B").long()
                seen, d = d, scg.env("D", dist.Categorical(probs=chain[d]))
                scg.predict("predA", dist.Categorical(logits=A(seen, mb)[1]), obs=d, coagent="A")
                scg.predict("predB", dist.Categorical(logits=B(seen, ma)[1]), obs=d, coagent="B")
                ha, hb = mb, ma
    return model, (torch.tensor([0, 1]),), {"gamma": 0.9}
