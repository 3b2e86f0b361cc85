"""The cooperative matrix game: two agents, each choosing action 0 (safe) or 1
(risky), both receive ``PAYOFF[a1, a2]`` with payoff [[0, -5], [-5, 10]].

Three ways to learn it, each a coagent network written with scg's primitives:

- ``factored``: two coagents, each a Bernoulli message with its own logit of P(risky). With
  P(risky) = p and q, J = 10pq - 5p(1-q) - 5(1-p)q and dJ/dp = 20q - 5: an agent is pushed to
  the safe action whenever its partner is risky with probability below 1/4, so gradient
  ascent from p = q < 1/4 converges to (safe, safe) with payoff 0.
- ``joint_kl``: one coagent emits the joint action (a Categorical over the 4 joint actions,
  index 2*a1 + a2) and pays ``scg.cost`` -lam * KL(joint || product of its marginals), the
  mutual information between the two actions (a pathwise gradient), with lam annealed from 0
  upward so that the learned policy ends up factorising.
- ``mixture``: the executed policy is (1 - alpha) * joint + alpha * (product of the joint's
  marginals), alpha annealed from 0 to 1: at alpha = 1 the policy factorises exactly, and
  each agent can act alone by sampling its marginal.

Every network carries a plate of independent replicas (``pyro.plate("seeds", S)``: one
parameter set per seed, summed, so each seed's parameters get exactly their own gradient) around
``scg.episodes(N)``, so many seeds train in one batched tensor program.
"""

import math
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch

import scg

PAYOFF = torch.tensor([[0.0, -5.0], [-5.0, 10.0]])
VARIANTS = ("factored", "joint_kl", "mixture")


# ---- exact quantities ------------------------------------------------------------------------
def check_probability(name, p):
    """``p`` as a float in the open interval (0, 1), or ``scg.ScgError``."""
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise scg.ScgError(f"{name} must be a probability in (0, 1), got {p!r}") from None
    if not 0.0 < p < 1.0:
        raise scg.ScgError(f"{name} must be a probability in the open interval (0, 1) (a logit "
                           f"must be finite), got {p}")
    return p


def joint_table(probs):
    """A joint distribution over (a1, a2) as a ``[..., 2, 2]`` table, from ``[..., 4]`` (index
    2*a1 + a2) or ``[..., 2, 2]``; checks it is a distribution."""
    probs = torch.as_tensor(probs)
    if not probs.is_floating_point():
        probs = probs.to(torch.get_default_dtype())
    if probs.shape[-1:] == (4,):
        probs = probs.reshape(probs.shape[:-1] + (2, 2))
    if probs.shape[-2:] != (2, 2):
        raise scg.ScgError(f"a joint policy has shape [..., 4] or [..., 2, 2], got "
                           f"{tuple(probs.shape)}")
    total = probs.sum((-2, -1))
    with scg.validation():   # a check only: the values read here decide nothing else
        if (probs < 0).any() or not torch.allclose(total, torch.ones_like(total), atol=1e-6):
            raise scg.ScgError("a joint policy must be non-negative and sum to 1 over the 4 "
                               "joint actions")
    return probs


def marginals(probs):
    """P(a1 = 1) and P(a2 = 1) of a joint table ``[..., 2, 2]``."""
    return probs[..., 1, :].sum(-1), probs[..., :, 1].sum(-1)


def product_of_marginals(probs):
    """The factorised table p1(a1) p2(a2) with the same marginals as ``probs`` [..., 2, 2]."""
    m1, m2 = probs.sum(-1), probs.sum(-2)
    return m1[..., :, None] * m2[..., None, :]


def mutual_information(probs):
    """I(a1; a2) = KL(joint || product of its marginals), in nats, of ``[..., 4]`` or
    ``[..., 2, 2]`` joint policies; differentiable (0 log 0 = 0).

    >>> round(float(mutual_information(torch.tensor([0.5, 0.0, 0.0, 0.5]))), 6)
    0.693147
    """
    probs = joint_table(probs)
    indep = product_of_marginals(probs)
    safe = torch.where(probs > 0, probs, torch.ones_like(probs))
    ratio = safe / torch.where(probs > 0, indep, torch.ones_like(indep))
    return (probs * ratio.log()).sum((-2, -1)).clamp(min=0.0)  # >= 0; rounding aside


def expected_payoff(probs):
    """J = sum over joint actions of policy * payoff, for ``[..., 4]`` or ``[..., 2, 2]``."""
    probs = joint_table(probs)
    return (probs * PAYOFF.to(probs)).sum((-2, -1))


def factored_objective(p, q):
    """J(p, q) = 10pq - 5p(1-q) - 5(1-p)q for independent P(risky) = p and q."""
    return 10 * p * q - 5 * p * (1 - q) - 5 * (1 - p) * q


def factored_gradient(q):
    """dJ/dp = 20q - 5 (by symmetry dJ/dq = 20p - 5): positive only when q > 1/4."""
    return 20 * q - 5


# ---- the networks ----------------------------------------------------------------------------
@dataclass
class Game:
    """One variant with per-seed parameters; ``network(N, coef)`` runs N episodes per seed.

    ``coef`` is the annealed coefficient: lam (``joint_kl``), alpha (``mixture``), unused by
    ``factored``. Keys of ``params``: ``agent1``/``agent2`` (logits [S]) or ``joint``
    (logits [S, 4]), initialised so that each agent is risky with probability ``p_risky``.
    """

    variant: str = "joint_kl"
    p_risky: float = 0.2
    seeds: int = 1
    dtype: torch.dtype = torch.float32
    params: torch.nn.ParameterDict = field(init=False)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise scg.ScgError(f"unknown matrix-game variant {self.variant!r}; valid: "
                               f"{list(VARIANTS)}")
        self.p_risky = check_probability("p_risky", self.p_risky)
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise scg.ScgError(f"seeds must be an int >= 1, got {self.seeds!r}")
        self.params = self.initial_params()

    def initial_params(self):
        """Logits giving P(risky) = p_risky to each agent (the joint: their product)."""
        logit = math.log(self.p_risky / (1 - self.p_risky))
        if self.variant == "factored":
            return torch.nn.ParameterDict({
                k: torch.nn.Parameter(torch.full((self.seeds,), logit, dtype=self.dtype))
                for k in ("agent1", "agent2")})
        row = torch.tensor([0.0, logit, logit, 2 * logit], dtype=self.dtype)
        return torch.nn.ParameterDict({"joint": torch.nn.Parameter(row.repeat(self.seeds, 1))})

    def policy(self, coef=0.0):
        """The executed joint policy of every seed, ``[S, 2, 2]`` (differentiable)."""
        if self.variant == "factored":
            p1, p2 = (torch.sigmoid(self.params[k]) for k in ("agent1", "agent2"))
            return torch.stack([1 - p1, p1], -1)[:, :, None] * \
                torch.stack([1 - p2, p2], -1)[:, None, :]
        joint = torch.softmax(self.params["joint"], -1).reshape(-1, 2, 2)
        if self.variant == "mixture":
            return (1 - coef) * joint + coef * product_of_marginals(joint)
        return joint

    @property
    def network(self):
        """The ``@scg.network`` of this variant: ``model(N, coef)``."""
        return {"factored": self._factored, "joint_kl": self._joint_kl,
                "mixture": self._mixture}[self.variant]()

    def _plates(self, N):
        return pyro.plate("seeds", self.seeds, dim=-2), scg.episodes(N, dim=-1)

    def _factored(self):
        @scg.network
        def matrix_game_factored(N, coef=0.0):
            seeds, episodes = self._plates(N)
            with seeds, episodes:
                shape = (self.seeds, N)
                a1 = scg.message("a1", dist.Bernoulli(
                    logits=self.params["agent1"][:, None].expand(shape)), coagent="agent1")
                a2 = scg.message("a2", dist.Bernoulli(
                    logits=self.params["agent2"][:, None].expand(shape)), coagent="agent2")
                scg.reward("r", PAYOFF.to(a1)[a1.long(), a2.long()])
        return matrix_game_factored

    def _joint_kl(self):
        @scg.network
        def matrix_game_joint_kl(N, lam=0.0):
            seeds, episodes = self._plates(N)
            with seeds, episodes:
                logits = self.params["joint"][:, None, :].expand(self.seeds, N, 4)
                a = scg.message("a", dist.Categorical(logits=logits), coagent="joint")
                scg.reward("r", PAYOFF.to(logits).flatten()[a])
                mi = mutual_information(torch.softmax(self.params["joint"], -1))
                scg.cost("kl", -lam * mi[:, None], coagent="joint")
        return matrix_game_joint_kl

    def _mixture(self):
        @scg.network
        def matrix_game_mixture(N, alpha=0.0):
            seeds, episodes = self._plates(N)
            with seeds, episodes:
                probs = self.policy(alpha).reshape(self.seeds, 1, 4).expand(self.seeds, N, 4)
                a = scg.message("a", dist.Categorical(probs=probs), coagent="joint")
                scg.reward("r", PAYOFF.to(probs).flatten()[a])
        return matrix_game_mixture


# ---- annealing -------------------------------------------------------------------------------
def annealed(variant, step, anneal, lam_max=1.0):
    """The coefficient at update ``step``: lam rises linearly from 0 to ``lam_max`` over
    ``anneal`` updates (``joint_kl``), alpha from 0 to 1 (``mixture``), then both stay."""
    frac = min(1.0, step / anneal) if anneal > 0 else 1.0
    return {"factored": 0.0, "joint_kl": lam_max * frac, "mixture": frac}[variant]


# ---- zoo entries -----------------------------------------------------------------------------
def setup(variant, p_risky, batch, seeds, anneal, lam_max=1.0):
    """A :class:`scg.zoo.Setup` for one variant; ``check`` is one seed of two episodes (16 joint
    values), at a mid-anneal coefficient, in float64."""
    game = Game(variant, p_risky, seeds)
    tiny = Game(variant, p_risky, 1, torch.float64)
    with torch.no_grad():   # away from the symmetric start, so every gradient is non-trivial
        for i, p in enumerate(tiny.params.values()):
            p.add_(torch.linspace(-0.3, 0.4, p.numel(), dtype=p.dtype).view_as(p) + 0.2 * i)
    mid = annealed(variant, 1, 2, lam_max)
    return scg.zoo.Setup(
        network=game.network,
        inputs=lambda step: (batch, annealed(variant, step, anneal, lam_max)),
        example=(2, mid), options={"baseline": "loo"},
        train={"optimizer": "sgd", "lr": 0.1, "updates": 2 * anneal},
        modules=game.params, check=(tiny.network, (2, mid), {}),
        episodes_per_update=batch * seeds)


@scg.zoo.register("matrix_game_factored", "Cooperative matrix game [[0,-5],[-5,10]]: two "
                  "independent Bernoulli coagents")
def build_factored(p_risky=0.2, batch=16, seeds=1, anneal=1000):
    return setup("factored", p_risky, batch, seeds, anneal)


@scg.zoo.register("matrix_game_joint_kl", "Cooperative matrix game: a joint-action coagent "
                  "with a KL penalty towards its marginals' product, lam annealed from 0")
def build_joint_kl(p_risky=0.2, batch=16, seeds=1, anneal=1000, lam_max=1.0):
    return setup("joint_kl", p_risky, batch, seeds, anneal, lam_max)


@scg.zoo.register("matrix_game_mixture", "Cooperative matrix game: (1-alpha) joint + alpha "
                  "product of marginals, alpha annealed from 0 to 1")
def build_mixture(p_risky=0.2, batch=16, seeds=1, anneal=1000):
    return setup("mixture", p_risky, batch, seeds, anneal)
