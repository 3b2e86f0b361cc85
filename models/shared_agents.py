"""Many agents, one set of parameters: N homogeneous agents in an ``scg.agents`` plate.

The task is channel selection, a cooperative game where coordination is everything: N agents
each pick one of N channels at once; the team's reward is the fraction of channels used by
exactly one agent (1 for a permutation; colliding agents waste both channels). Every agent runs
the *same* policy network; what tells agents apart is their observation, their index as a
one-hot vector, so the shared network must learn a different channel for every index.

Because one parameter set drives all N coagent sites, the gradient of J is the sum of the
per-agent terms (the coagent policy gradient theorem for shared parameters):

    ∇_θ J = Σ_i E[∇_θ log π_θ(a_i | o_i) (G − b)]  =  Σ_i ∇_{θ_i} J(θ_1, ..., θ_N) at θ_i = θ,

and every agent is credited with the team's reward (a cost at one agents index credits sites at
all indices, as for any ``scg.agents`` plate). tests/test_shared_agents.py checks both
identities exactly.
"""

import pyro.distributions as dist
import torch
from torch.nn.functional import one_hot

import scg
from scg.errors import ScgError
from scg.zoo import Setup, register


class Policy(torch.nn.Module):
    """The one policy every agent runs: observation (agent index, one-hot) -> channel logits."""

    def __init__(self, agents, hidden=32):
        super().__init__()
        self.agents = agents
        self.net = torch.nn.Sequential(torch.nn.Linear(agents, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, agents))

    def forward(self, obs):
        return self.net(obs)


def observations(agents, batch, dtype):
    """Agent i observes one_hot(i): a tensor [agents, batch, agents]."""
    eye = torch.eye(agents, dtype=dtype)
    return eye[:, None, :].expand(agents, batch, agents)


def team_reward(channels, agents):
    """Fraction of channels used by exactly one agent; ``channels``: [agents, batch]."""
    counts = one_hot(channels, agents).sum(0)           # [batch, channels]
    return (counts == 1).to(torch.get_default_dtype()).sum(-1) / agents


def make_network(agents, policy=None):
    """The channel-selection network for ``agents`` agents sharing ``policy``."""
    if not isinstance(agents, int) or agents < 2:
        raise ScgError(f"shared agents: need an int number of agents >= 2, got {agents!r}")
    policy = policy or Policy(agents)
    if policy.agents != agents:
        raise ScgError(f"shared agents: the policy was built for {policy.agents} agents, "
                       f"the network has {agents}")

    @scg.network
    def channel_selection(batch):
        with scg.episodes(batch):
            with scg.agents(agents, dim=-2):
                obs = observations(agents, batch, policy.net[0].weight.dtype)
                channel = scg.message("channel", dist.Categorical(logits=policy(obs)),
                                      coagent="agent")
            scg.reward("r", team_reward(channel, agents).to(obs.dtype))

    return channel_selection, policy


@register("shared_agents", "N agents in one scg.agents plate share a policy and must pick "
          "distinct channels")
def build(agents=4, batch=64):
    network, policy = make_network(agents)
    return Setup(network=network, inputs=lambda step: (batch,), example=(2,),
                 options={"baseline": "loo"}, train={"lr": 0.02, "updates": 300},
                 modules={"policy": policy}, episodes_per_update=batch,
                 check=(make_network(2)[0], (2,), {}))
