"""Two agents that talk about a shared data stream and predict it.

Agents A and B each have *one* parameter set, shared by their message policy and their
predictor. Moore timing: at every step t both speak first, from what they knew before the
step (their last observation and the partner's last message), then the datum D_t arrives,
each predicts its target from its state and the partner's message of this step, and observes.
The reward is the sum of both predictors' log-likelihoods: A's message is credited with B's
prediction (and later ones, through B's next message), so A learns to say what B needs.

Two streams:

* ``markov``: D_t is a Markov chain; A sees it, B sees nothing; both predict D_t. B can only
  do better than the chain's marginal through A's messages.
* ``split``: D_t = (X_t, Y_t), two independent Markov chains; A sees X, B sees Y; each predicts
  the *partner's* part. Neither can do better than the marginal without talking.

With Moore timing a message can carry at most the speaker's last observation, so the best
expected per-step reward is −(H(D_t | D_{t−1}) + H(D_t | D_{t−1})) for ``markov`` (both
predictors know D_{t−1} at best) and −(H(X_t | X_{t−1}) + H(Y_t | Y_{t−1})) for ``split``;
mute agents get −(H(D_t | D_{t−1}) + H(D)) and −(H(X) + H(Y)). :func:`bounds` computes both
from the chains (in nats).
"""

from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch.nn.functional import one_hot

import scg
from scg.errors import ScgError
from scg.zoo import Setup, register

STREAMS = ("markov", "split")
CHAIN = [[0.8, 0.1, 0.1, 0.0],      # a 4-state chain with structure: mostly drifts 0->1->2->3->0
         [0.0, 0.8, 0.1, 0.1],
         [0.1, 0.0, 0.8, 0.1],
         [0.1, 0.1, 0.0, 0.8]]


def stationary(P):
    """The stationary distribution of a row-stochastic matrix (left eigenvector for 1)."""
    evals, evecs = torch.linalg.eig(P.double().T)
    v = evecs[:, torch.argmin((evals - 1).abs())].real
    return v / v.sum()


def entropy_rate(P):
    """H(D_t | D_{t-1}) of a stationary chain, in nats."""
    P = P.double()
    pi = stationary(P)
    return -(pi[:, None] * torch.where(P > 0, P * P.log(), 0.0)).sum().item()


def entropy(p):
    """H of a distribution, in nats."""
    p = p.double()
    return -torch.where(p > 0, p * p.log(), 0.0).sum().item()


def bounds(stream, P):
    """(best achievable, mute agents') expected per-step reward, in nats."""
    h, h0 = entropy_rate(P), entropy(stationary(P))
    if stream == "markov":
        return -(h + h), -(h + h0)
    return -(h + h), -(h0 + h0)


class Agent(torch.nn.Module):
    """One agent: a body shared by the message head and the prediction head.

    ``speak(obs, heard)`` -> message logits from the last observation and the partner's last
    message; ``predict(obs, heard)`` -> logits over the target from the last observation and
    the partner's message of this step."""

    def __init__(self, observations, messages, targets, hidden=32):
        super().__init__()
        self.sizes = (observations, messages)
        self.body = torch.nn.Sequential(torch.nn.Linear(observations + messages, hidden),
                                        torch.nn.Tanh())
        self.say = torch.nn.Linear(hidden, messages)
        self.guess = torch.nn.Linear(hidden, targets)

    def features(self, obs, heard):
        o, m = self.sizes
        dtype = self.say.weight.dtype
        return self.body(torch.cat([one_hot(obs, o).to(dtype), one_hot(heard, m).to(dtype)], -1))

    def speak(self, obs, heard):
        return self.say(self.features(obs, heard))

    def predict(self, obs, heard):
        return self.guess(self.features(obs, heard))


@dataclass
class Talk:
    """A stream and two agents; :meth:`episodes` and :meth:`step` are the two views."""

    stream: str = "split"
    messages: int = 4
    chain: torch.Tensor = None
    bonus: float = 0.0
    """weight of an entropy bonus on both message policies (an ``scg.cost``, so it is part of
    the trained objective: anneal it to 0; it keeps messages exploring until a code forms)"""

    def __post_init__(self):
        if self.stream not in STREAMS:
            raise ScgError(f"unknown stream {self.stream!r}; valid: {list(STREAMS)}")
        if not isinstance(self.messages, int) or self.messages < 1:
            raise ScgError(f"messages must be an int >= 1 (1: mute agents), got {self.messages!r}")
        P = torch.tensor(CHAIN) if self.chain is None else torch.as_tensor(self.chain)
        if P.dim() != 2 or P.shape[0] != P.shape[1] or not torch.allclose(
                P.sum(-1), torch.ones(P.shape[0], dtype=P.dtype)):
            raise ScgError(f"chain must be a square row-stochastic matrix, got shape "
                           f"{tuple(P.shape)}")
        self.P, k = P.to(torch.get_default_dtype()), P.shape[0]
        # A observes D (markov) or X (split); B observes nothing (one dummy symbol) or Y
        seen_b = 1 if self.stream == "markov" else k
        self.A = Agent(k, self.messages, k)
        self.B = Agent(seen_b, self.messages, k)

    def bounds(self):
        return bounds(self.stream, self.P)

    def start(self, n, inside=True):
        """The state before the first step: data from the stationary distribution (as
        ``scg.env`` sites inside a network, so ``check`` enumerates them), silent messages."""
        pi = stationary(self.P).to(self.P.dtype).expand(n, -1)
        if inside:
            x = scg.env("X0", dist.Categorical(probs=pi))
            y = scg.env("Y0", dist.Categorical(probs=pi)) if self.stream == "split" else x
        else:
            x, y = (torch.multinomial(pi, 1).squeeze(-1) for _ in range(2))
        zero = torch.zeros(n, dtype=torch.long)
        return {"x": x, "y": y, "ma": zero, "mb": zero}

    def one_step(self, state):
        """One Moore step inside an ``scg.episodes`` plate: both speak, the data moves, both
        predict. Returns the next state."""
        x, y, ma, mb = state["x"], state["y"], state["ma"], state["mb"]
        obs_b = torch.zeros_like(y) if self.stream == "markov" else y
        pa = dist.Categorical(logits=self.A.speak(x, mb))
        pb = dist.Categorical(logits=self.B.speak(obs_b, ma))
        new_ma = scg.message("mA", pa, coagent="A")
        new_mb = scg.message("mB", pb, coagent="B")
        if self.bonus:
            scg.cost("bonusA", self.bonus * pa.entropy(), coagent="A")
            scg.cost("bonusB", self.bonus * pb.entropy(), coagent="B")
        nx = scg.env("X", dist.Categorical(probs=self.P[x]))
        target_a, target_b = nx, nx
        if self.stream == "split":
            ny = scg.env("Y", dist.Categorical(probs=self.P[y]))
            target_a, target_b = ny, nx        # each predicts the partner's part
        else:
            ny = y
        scg.predict("predA", dist.Categorical(logits=self.A.predict(x, new_mb)), obs=target_a,
                    coagent="A")
        scg.predict("predB", dist.Categorical(logits=self.B.predict(obs_b, new_ma)),
                    obs=target_b, coagent="B")
        return {"x": nx, "y": ny, "ma": new_ma, "mb": new_mb}

    def episodes(self):
        """The episodic network: ``model(n, T)`` runs n episodes of T steps."""

        @scg.network
        def talking_agents(n, T):
            with scg.episodes(n):
                state = self.start(n)
                for _ in scg.steps(T):
                    state = self.one_step(state)
        return talking_agents

    def step(self):
        """The online network: ``model(state)`` runs one step of a stream carried between
        calls and returns the next state (detached, so it can be kept)."""

        @scg.network
        def talking_step(state):
            with scg.episodes(state["x"].shape[0]):
                nxt = self.one_step(state)
            return {k: v.detach().clone() for k, v in nxt.items()}
        return talking_step


@register("talking_agents", "two agents, one parameter set each, talk about a split Markov "
          "stream and predict the partner's part")
def build(stream="split", messages=4, batch=64, T=16):
    talk = Talk(stream, messages)
    tiny = Talk(stream, 2, chain=[[0.9, 0.1], [0.2, 0.8]])
    return Setup(network=talk.episodes(), inputs=lambda step: (batch, T), example=(2, 3),
                 options={"baseline": "loo", "objective": "mean"},
                 train={"lr": 0.01, "updates": 500}, modules={"A": talk.A, "B": talk.B},
                 episodes_per_update=batch, check=(tiny.episodes(), (1, 2), {}))
