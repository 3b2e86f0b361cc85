"""The iterated prisoner's dilemma as a coagent network of two agents with their own objectives,
and LOLA written with scg's any-order surrogates (Foerster et al. 2018: LOLA, and DiCE).

**The network.** Each step both agents (coagents ``A`` and ``B``) choose to cooperate (message
value 1) or defect (0) from memory-one policies: agent i's logits ``theta_i[..., 5]`` give
sigmoid(theta_i[s]) = P(cooperate) in state s (start, then CC, CD, DC, DD seen from the
agent's own side, :mod:`scg.models.ipd_exact`'s convention). Agent 1's reward is
addressed to ``A`` and agent 2's to ``B`` (``scg.reward(..., to=...)``, design.md §8), so with
``objective="own"`` coagent A climbs J_A = E[sum_t gamma^t r1_t] and B climbs J_B: a
general-sum game. ``objective="A"`` (or ``"B"``) emits only that agent's reward, unaddressed:
the network's one objective is then J_A, credited to every site, which is what LOLA's
look-ahead differentiates (agent 1's return after the opponent's step, in theta_1 *through* the
opponent's look-ahead parameters).

The thetas are arguments, not modules: a learner may pass a look-ahead theta_2 + eta * g_2 that
depends on theta_1. A leading dim of S seeds runs S independent pairs in one batch
(``pyro.plate("seeds")`` outside ``scg.episodes``): J sums the seeds, so each seed's thetas get
exactly their own gradient.

**The learners** (:mod:`scg.models.lola`): naive learners ascend their own J_i from one
rollout; LOLA-DiCE learners differentiate through the opponent's one-step look-ahead. The
exact counterparts on the closed form are :func:`scg.models.ipd_exact.train_exact`.
"""

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch

import scg
from scg.models import lola
from scg.models.ipd_exact import PAYOFF1, PAYOFF2, SWAP, values
from scg.zoo import Setup, register

AGENTS = ("A", "B")
OBJECTIVES = ("own", "A", "B")
#: the IPD's rollout settings (the DiCE paper's: 150 steps, gamma 0.96)
T, GAMMA = 150, 0.96


def _policies(theta1, theta2):
    """Both thetas as [S, 5] (a [5] theta is one seed), same dtype and device."""
    th = []
    for name, t in (("theta1", theta1), ("theta2", theta2)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise scg.ScgError(f"{name} must be a floating tensor of logits [5] or [S, 5]")
        if t.dim() == 1:
            t = t.unsqueeze(0)
        if t.dim() != 2 or t.shape[-1] != 5:
            raise scg.ScgError(f"{name} must have shape [5] or [S, 5] (start, CC, CD, DC, DD),"
                               f" got {tuple(t.shape)}")
        th.append(t)
    if th[0].shape != th[1].shape:
        raise scg.ScgError(f"theta1 and theta2 must have the same shape, got "
                           f"{tuple(th[0].shape)} and {tuple(th[1].shape)}")
    return th


@scg.network
def ipd(theta1, theta2, episodes, T=T, objective="own"):
    """``episodes`` rollouts of T steps per seed of the memory-one pair (theta1, theta2).

    ``objective``: ``"own"`` addresses r1 to A and r2 to B; ``"A"`` (``"B"``) emits only
    r1 (r2), the shared objective of every site."""
    if objective not in OBJECTIVES:
        raise scg.ScgError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    th1, th2 = _policies(theta1, theta2)
    seeds = th1.shape[0]
    swap = torch.tensor(SWAP, device=th1.device)
    pay1 = torch.tensor(PAYOFF1, dtype=th1.dtype, device=th1.device)
    pay2 = torch.tensor(PAYOFF2, dtype=th1.dtype, device=th1.device)
    with pyro.plate("seeds", seeds, dim=-2), scg.episodes(episodes, dim=-1):
        s = torch.zeros(seeds, episodes, dtype=torch.long, device=th1.device)   # A's view
        for _ in scg.steps(T):
            c1 = scg.message("c1", dist.Bernoulli(logits=th1.gather(-1, s)), coagent="A")
            c2 = scg.message("c2", dist.Bernoulli(logits=th2.gather(-1, swap[s])), coagent="B")
            o = 2 * (1 - c1).long() + (1 - c2).long()    # joint outcome CC, CD, DC, DD
            if objective != "B":
                scg.reward("r1", pay1[o], to="A" if objective == "own" else None)
            if objective != "A":
                scg.reward("r2", pay2[o], to="B" if objective == "own" else None)
            s = 1 + o


# ---- learners --------------------------------------------------------------------------------
def compile_ipd(**options):
    """The IPD's estimator: leave-one-out baselines, gamma 0.96, any-order surrogates."""
    return scg.compile(ipd, **{"baseline": "loo", "gamma": GAMMA, "order": "any", **options})


@dataclass
class Run:
    """Per-seed curves of :func:`train`, index 0 being the start: ``returns`` [updates + 1,
    seeds, 2], each agent's average per-step return (1 - gamma) V_i by the closed form of the
    current policies; ``p_cooperate`` [updates + 1, seeds, 2, 5]."""

    returns: torch.Tensor
    p_cooperate: torch.Tensor
    theta1: torch.Tensor
    theta2: torch.Tensor


def train(kind="lola", seeds=10, updates=200, episodes=64, lr=1.0, eta=1.0, T=T,
          init_std=1.0, seed=0, dtype=torch.float32, est=None):
    """Train ``seeds`` independent pairs of naive or LOLA learners on sampled rollouts (all seeds
    in one batch), thetas ~ N(0, init_std^2) from ``torch.Generator().manual_seed(seed)``
    (the initial thetas of :func:`scg.models.ipd_exact.train_exact` with the same seed), the
    rollouts' randomness from ``pyro.set_rng_seed(seed)``. Each update's policies are scored by
    the closed form."""
    if kind not in lola.KINDS:
        raise scg.ScgError(f"unknown learner {kind!r}; valid: {list(lola.KINDS)}")
    est = compile_ipd() if est is None else est
    g = torch.Generator().manual_seed(seed)
    t1, t2 = (lola.leaf(init_std * torch.randn(seeds, 5, generator=g, dtype=torch.float64)
                        .to(dtype)) for _ in range(2))
    pyro.set_rng_seed(seed)
    rets, coop = [], []

    def record(t1, t2):
        with torch.no_grad():
            v1, v2 = values(t1.double(), t2.double(), GAMMA)
            rets.append((1 - GAMMA) * torch.stack([v1, v2], -1))
            coop.append(torch.stack([torch.sigmoid(t1), torch.sigmoid(t2)], -2).double())

    t1, t2 = lola.train(kind, est, t1, t2, (episodes, T), updates, lr, eta, record)
    return Run(torch.stack(rets), torch.stack(coop), t1, t2)


# ---- zoo -------------------------------------------------------------------------------------
@register("ipd", "Iterated prisoner's dilemma: two memory-one agents, each climbing its own "
          "return (to=), naive learners")
def build(episodes=64, seeds=1, T=T):
    """Naive learners trained by :class:`scg.Trainer` (each agent steps on its own local loss);
    LOLA is :func:`scg.models.lola.lola_step` (``examples/lola_ipd.py``)."""
    params = torch.nn.ParameterDict({
        "A": torch.nn.Parameter(torch.zeros(seeds, 5)),
        "B": torch.nn.Parameter(torch.zeros(seeds, 5))})
    tiny = torch.nn.ParameterDict({
        "A": torch.nn.Parameter(torch.linspace(-0.4, 0.5, 5, dtype=torch.float64)),
        "B": torch.nn.Parameter(torch.linspace(0.3, -0.6, 5, dtype=torch.float64))})

    @scg.network
    def ipd_naive(episodes, T=T):
        ipd(params["A"], params["B"], episodes, T)

    @scg.network
    def ipd_tiny(episodes, T=2):
        ipd(tiny["A"], tiny["B"], episodes, T)

    return Setup(network=ipd_naive, inputs=lambda step: (episodes, T), example=(2, 2),
                 options={"baseline": "loo", "gamma": GAMMA},
                 train={"optimizer": "sgd", "lr": 0.1, "updates": 200}, modules=params,
                 check=(ipd_tiny, (1, 2), {"gamma": GAMMA}),
                 episodes_per_update=episodes * seeds)
