"""The asynchronous gridworld network of Kostas, Nota & Thomas (2020), appendix D.

A gridworld (start in the top-left corner, goal in the bottom-right, reward -1 per step until
the goal, episodes capped at ``horizon`` steps). Two coagents read the tabular state and each
emit one bit; a third reads the two bits and picks one of four moves. Every coagent executes
with probability 0.5 at every atomic step (an execution coagent ``name.exec`` each); a unit
that does not execute repeats its previous output (zeros before the first step).

Three views of the same network:
- :meth:`Gridworld.episodes`: a batch of whole episodes (``scg.steps(horizon)`` with
  ``scg.done``) for the Monte Carlo estimator;
- :meth:`Gridworld.step`: one atomic step, carrying the units' outputs between calls, with
  the shared tabular critic as an ``scg.value`` site, for online actor-critic (``estimator="td"``);
- :meth:`Gridworld.exact_objective`: J(theta) by backward induction over the augmented state
  (cell, both bits, the last move), in float64, so gradients can be checked exactly.
"""

from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch.nn.functional import one_hot

import scg

MOVES = torch.tensor([[-1, 0], [0, 1], [1, 0], [0, -1]])  # up, right, down, left
EXECUTE = 0.5


@dataclass
class Gridworld:
    """A ``rows x cols`` grid; moves into a wall leave the agent in place."""

    rows: int = 4
    cols: int = 4
    horizon: int = 30

    def __post_init__(self):
        if self.rows < 1 or self.cols < 1 or self.rows * self.cols < 2:
            raise ValueError(f"a gridworld needs at least 2 cells, got {self.rows}x{self.cols}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        n = self.rows * self.cols
        r, c = torch.arange(n) // self.cols, torch.arange(n) % self.cols
        nr = (r[:, None] + MOVES[:, 0]).clamp(0, self.rows - 1)
        nc = (c[:, None] + MOVES[:, 1]).clamp(0, self.cols - 1)
        self.next = nr * self.cols + nc          # [cells, 4] -> next cell
        self.cells, self.start, self.goal = n, 0, n - 1

    # ---- the network ---------------------------------------------------------------------
    def units(self, dtype=torch.float64, device=None):
        """Tabular parameters of the three coagents and the shared critic (zeros: uniform).
        The networks run on the parameters' device."""
        def zeros(*shape):
            return torch.nn.Parameter(torch.zeros(shape, dtype=dtype, device=device))
        return torch.nn.ParameterDict({"u1": zeros(self.cells), "u2": zeros(self.cells),
                                       "pi": zeros(2, 2, 4), "V": zeros(self.cells)})

    def atomic_step(self, th, s, prev, execute=EXECUTE):
        """One atomic step of the three asynchronous units from cell ``s``: (b1, b2, a)."""
        p = torch.full(s.shape, execute, dtype=th["u1"].dtype, device=s.device)
        x = one_hot(s, self.cells).to(p.dtype)   # the cell: local state for a critic baseline
        b1 = scg.message("b1", dist.Bernoulli(logits=th["u1"][s]), coagent="u1",
                         execute=p, init=prev[0], state=x)
        b2 = scg.message("b2", dist.Bernoulli(logits=th["u2"][s]), coagent="u2",
                         execute=p, init=prev[1], state=x)
        a = scg.message("a", dist.Categorical(logits=th["pi"][b1.long(), b2.long()]),
                        coagent="pi", execute=p, init=prev[2], state=(x, b1[:, None], b2[:, None]))
        return b1, b2, a

    def episodes(self, th):
        """The episodic network: ``model(N)`` runs N episodes in a batch."""

        device = th["u1"].device
        nxt = self.next.to(device)

        @scg.network
        def gridworld(N):
            with scg.episodes(N):
                s = torch.full((N,), self.start, dtype=torch.long, device=device)
                zero = torch.zeros(N, dtype=th["u1"].dtype, device=device)
                prev = (zero, zero, torch.zeros(N, dtype=torch.long, device=device))
                for _ in scg.steps(self.horizon):
                    _, _, a = self.atomic_step(th, s, prev)  # prev: outputs before t = 0
                    scg.reward("r", -torch.ones(N, dtype=zero.dtype, device=device))
                    s = nxt[s, a]
                    scg.done(s == self.goal)
            return s
        return gridworld

    def step(self, th):
        """The one-step network for online learning: ``model(s, prev)`` returns
        ``(next cell, (b1, b2, a))``; V(s_t) is the shared critic ``th["V"][s]``."""

        @scg.network
        def gridworld_step(s, prev):
            with scg.episodes(s.shape[0]):
                for _ in scg.steps(1):
                    scg.value("V", th["V"][s])
                    out = self.atomic_step(th, s, prev)
                    scg.reward("r", -torch.ones(s.shape[0], dtype=th["V"].dtype))
            return self.next[s, out[2]], out
        return gridworld_step

    # ---- the exact objective ---------------------------------------------------------------
    def exact_objective(self, th, execute=EXECUTE):
        """J(theta) = E[sum of rewards] over ``horizon`` steps, by backward induction over the
        augmented state x = (cell, b1, b2, a) of 16 x cells values. Differentiable."""
        dt = th["u1"].dtype
        P = self.transition(th, execute)                      # [X, X]
        alive = torch.ones(self.cells, 2, 2, 4, dtype=dt)
        alive[self.goal] = 0.0
        alive = alive.flatten()
        V = torch.zeros_like(alive)
        for _ in range(self.horizon):
            V = alive * (-1.0 + P @ V)
        x0 = self._index(self.start, 0, 0, 0)
        return V[x0]

    def transition(self, th, execute=EXECUTE):
        """P[x, x'] of one atomic step from a live state (the goal is absorbing)."""
        dt = th["u1"].dtype
        p1, p2 = torch.sigmoid(th["u1"]), torch.sigmoid(th["u2"])    # [cells]
        pa = torch.softmax(th["pi"], -1)                              # [2, 2, 4]
        e = torch.tensor(execute, dtype=dt)
        eye2, eye4 = torch.eye(2, dtype=dt), torch.eye(4, dtype=dt)
        # bit i: with prob e a fresh draw, else the old bit: B[s, b, b']
        fresh1 = torch.stack([1 - p1, p1], -1)[:, None, :]
        fresh2 = torch.stack([1 - p2, p2], -1)[:, None, :]
        B1 = e * fresh1 + (1 - e) * eye2
        B2 = e * fresh2 + (1 - e) * eye2
        # move: A[b1', b2', a, a'] = e pi(a' | b1', b2') + (1 - e) [a' = a]
        A = e * pa[:, :, None, :] + (1 - e) * eye4
        # cell: S[s, a', s'] = [next(s, a') = s']
        S = torch.nn.functional.one_hot(self.next, self.cells).to(dt)
        P = torch.einsum("sbc,sde,ceaf,sft->sbdatcef", B1, B2, A, S)
        # order the target axes as (t, c, e, f) = (cell', b1', b2', a')
        X = self.cells * 16
        return P.reshape(X, X)

    def _index(self, s, b1, b2, a):
        return ((s * 2 + b1) * 2 + b2) * 4 + a


@scg.zoo.register("async_gridworld", "Kostas et al. appendix D: three asynchronous coagents "
                  "(execution probability 0.5) on a 4x4 gridworld")
def build(batch=64, rows=4, cols=4, horizon=30):
    """The zoo entry: episodes of the 4x4 world for training; for ``scg check``, the 1x2 world
    over two steps, one episode (1,629 joint values once finished episodes stop branching;
    about 30 s to enumerate on one CPU core)."""
    world = Gridworld(rows, cols, horizon)
    th = world.units(torch.float32)
    tiny = Gridworld(1, 2, 2)
    return scg.zoo.Setup(network=world.episodes(th), inputs=lambda step: (batch,),
                         example=(2,), options={"baseline": "loo"},
                         train={"lr": 0.05, "updates": 200}, modules=th,
                         check=(tiny.episodes(tiny.units()), (1,), {"max_size": 2 ** 14}),
                         episodes_per_update=batch)
