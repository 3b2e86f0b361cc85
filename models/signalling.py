"""The signalling game (Lewis 1969): a sender sees a state in {0..3} and emits one of 8
messages; a receiver sees only the message and picks an action. Both get reward 1 when the
action equals the state. Neither coagent backpropagates into the other: each learns from its own
score term, with the shared reward as credit (see the docs' Concepts page, Coagents)."""

import pyro.distributions as dist
import torch
from torch.nn.functional import one_hot

import scg
from scg.zoo import Setup, register

N_STATES, N_MESSAGES = 4, 8


def make_network():
    """The network and its two coagents' modules (a linear layer each)."""
    sender = torch.nn.Linear(N_STATES, N_MESSAGES)
    receiver = torch.nn.Linear(N_MESSAGES, N_STATES)

    @scg.network
    def signalling(state):                                   # state: LongTensor[batch]
        with scg.episodes(state.shape[0]):                   # independent episodes, averaged
            x = one_hot(state, N_STATES).to(sender.weight.dtype)
            m = scg.message("m", dist.Categorical(logits=sender(x)), coagent="sender")
            y = one_hot(m, N_MESSAGES).to(receiver.weight.dtype)
            a = scg.message("a", dist.Categorical(logits=receiver(y)), coagent="receiver")
            scg.reward("r", (a == state).to(x.dtype))

    return signalling, sender, receiver


def sample_states(n):
    return torch.randint(0, N_STATES, (n,))


@register("signalling", "Lewis signalling game: sender (4 states -> 8 messages), receiver")
def build(batch=64):
    network, sender, receiver = make_network()
    return Setup(network=network, inputs=lambda step: (sample_states(batch),),
                 example=(torch.tensor([0, 3]),), options={"baseline": "loo"},
                 train={"lr": 0.02, "updates": 400},
                 modules={"sender": sender, "receiver": receiver}, episodes_per_update=batch)
