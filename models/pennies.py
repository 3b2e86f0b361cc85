"""Matching pennies: a zero-sum (general-sum in form) game of two agents with their own
objectives, where naive gradient learners circle away from the equilibrium and LOLA converges
to it (Foerster et al. 2018, LOLA, section 5).

Each agent shows heads (message value 1) with probability sigmoid(theta_i); agent 1 (coagent
``A``) gets +1 when the coins match and -1 otherwise, agent 2 (``B``) the opposite, each reward
addressed to its agent with ``to=``. With p, q the probabilities of heads, the exact values are
V1 = (2p - 1)(2q - 1) = -V2, the only Nash equilibrium p = q = 1/2. Naive learners follow
(dV1/dtheta1, dV2/dtheta2), a rotation around it that gradient steps turn outwards; LOLA's
look-ahead adds a term pointing inwards. The learners are :mod:`scg.models.lola`'s, so the
network takes ``objective=`` as :func:`scg.models.ipd.ipd` does.
"""

import pyro
import pyro.distributions as dist
import torch

import scg
from scg.models import lola
from scg.zoo import Setup, register

OBJECTIVES = ("own", "A", "B")


@scg.network
def pennies(theta1, theta2, episodes, objective="own"):
    """``episodes`` plays per seed of logits ``theta1``, ``theta2`` [S] (P(heads) logits)."""
    if objective not in OBJECTIVES:
        raise scg.ScgError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if theta1.dim() != 1 or theta1.shape != theta2.shape:
        raise scg.ScgError(f"theta1 and theta2 must be logits of shape [S] (one per seed), got "
                           f"{tuple(theta1.shape)} and {tuple(theta2.shape)}")
    seeds = theta1.shape[0]
    with pyro.plate("seeds", seeds, dim=-2), scg.episodes(episodes, dim=-1):
        shape = (seeds, episodes)
        h1 = scg.message("h1", dist.Bernoulli(logits=theta1[:, None].expand(shape)), coagent="A")
        h2 = scg.message("h2", dist.Bernoulli(logits=theta2[:, None].expand(shape)), coagent="B")
        r1 = 2 * (h1 == h2).to(theta1.dtype) - 1
        if objective != "B":
            scg.reward("r1", r1, to="A" if objective == "own" else None)
        if objective != "A":
            scg.reward("r2", -r1, to="B" if objective == "own" else None)


def values(theta1, theta2):
    """(V1, V2) = ((2p - 1)(2q - 1), -(2p - 1)(2q - 1)) per seed, p, q = sigmoid(theta)."""
    v1 = (2 * torch.sigmoid(theta1) - 1) * (2 * torch.sigmoid(theta2) - 1)
    return v1, -v1


def summed(theta1, theta2):
    """:func:`values` summed over seeds: each seed's exact gradient is its own."""
    v1, v2 = values(theta1, theta2)
    return v1.sum(), v2.sum()


def distance(theta1, theta2):
    """Each seed's distance of (p, q) from the equilibrium (1/2, 1/2)."""
    return torch.hypot(torch.sigmoid(theta1) - 0.5, torch.sigmoid(theta2) - 0.5)


def compile_pennies(**options):
    """The estimator: leave-one-out baselines, any-order surrogates (LOLA's look-ahead)."""
    return scg.compile(pennies, **{"baseline": "loo", "order": "any", **options})


def start(seeds, seed=0, dtype=torch.float64):
    """Initial logits [S] of both agents, ~ N(0, 1) from ``Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(seed)
    return tuple(lola.leaf(torch.randn(seeds, generator=g, dtype=dtype)) for _ in range(2))


def train(kind, seeds=10, updates=200, episodes=64, lr=0.3, eta=1.0, seed=0, exact=False,
          est=None):
    """Per-update distances from the equilibrium [updates + 1, seeds] of naive or LOLA learners,
    sampled (scg's surrogates; rollouts seeded by ``pyro.set_rng_seed(seed)``) or ``exact``."""
    t1, t2 = start(seeds, seed)
    curve = []

    def record(t1, t2):
        curve.append(distance(t1, t2).detach())

    if exact:
        lola.train_exact(kind, summed, t1, t2, updates, lr, eta, record)
    else:
        pyro.set_rng_seed(seed)
        est = compile_pennies() if est is None else est
        lola.train(kind, est, t1, t2, (episodes,), updates, lr, eta, record)
    return torch.stack(curve)


@register("matching_pennies", "Matching pennies: two agents with opposite rewards (to=), naive "
          "learners")
def build(episodes=64, seeds=1):
    params = torch.nn.ParameterDict({"A": torch.nn.Parameter(torch.full((seeds,), 0.5)),
                                     "B": torch.nn.Parameter(torch.full((seeds,), -0.5))})
    tiny = torch.nn.ParameterDict({
        "A": torch.nn.Parameter(torch.tensor([0.4], dtype=torch.float64)),
        "B": torch.nn.Parameter(torch.tensor([-0.7], dtype=torch.float64))})

    @scg.network
    def pennies_naive(episodes):
        pennies(params["A"], params["B"], episodes)

    @scg.network
    def pennies_tiny(episodes):
        pennies(tiny["A"], tiny["B"], episodes)

    return Setup(network=pennies_naive, inputs=lambda step: (episodes,), example=(2,),
                 options={"baseline": "loo"}, train={"optimizer": "sgd", "lr": 0.3,
                                                     "updates": 200},
                 modules=params, check=(pennies_tiny, (2,), {}),
                 episodes_per_update=episodes * seeds)
