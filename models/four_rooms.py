"""Four Rooms (Sutton, Precup & Singh 1999) as Bacon, Harb & Precup (2017) describe it, as tensors.

104 empty cells in a 13 x 13 grid, four moves (up, down, left, right). A move *fails* with
probability 1/3 and the agent then goes to a uniformly random empty cell adjacent to the
**current** cell; otherwise it goes where it meant to (a move into a wall leaves it in place).
The goal is the east doorway (+1 on arrival, which ends the episode), gamma = 0.99, episodes are
capped at 1000 steps, and after 1000 episodes the goal moves to a random cell of the lower-right
room. Episodes start in a uniformly random empty cell other than the goal (Bacon et al.).

A widely copied implementation (the option-critic authors' ``fourrooms.py``) moves first and
then, with probability 1/3, hops to a random empty neighbour of the *new* cell: an extra step for
free, which makes the task about 30% shorter. :func:`hop_after_move` builds that variant's
transition matrix only so that the tests and the docs can tell the two apart.

Everything is a tensor: ``P[s, a, s']`` (:func:`transition`), batched stepping
(:meth:`FourRooms.step`), and value iteration for the optimal expected number of steps to the
goal (:func:`expected_steps`).
"""

from dataclasses import dataclass

import torch

import scg

LAYOUT = """\
wwwwwwwwwwwww
w     w     w
w     w     w
w           w
w     w     w
w     w     w
ww wwww     w
w     www www
w     w     w
w     w     w
w           w
w     w     w
wwwwwwwwwwwww"""
MOVES = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]])  # up, down, left, right
FAIL = 1.0 / 3.0
GAMMA = 0.99
HORIZON = 1000
EAST_DOORWAY = (7, 9)
LOWER_RIGHT = (slice(8, 12), slice(7, 12))  # rows 8-11, columns 7-11: the lower-right room


def parse(layout):
    """The empty cells of a layout ('w' walls, anything else empty): ``[H, W]`` bool grid and the
    (row, col) of each empty cell in row-major order (the state index)."""
    rows = layout.splitlines()
    if not rows or len({len(r) for r in rows}) != 1:
        raise scg.ScgError("a layout needs non-empty rows of equal length")
    grid = torch.tensor([[ch != "w" for ch in row] for row in rows])
    return grid, grid.nonzero()


def neighbours(grid, cells):
    """``[S, 4]``: the state each move leads to (itself where a wall is in the way)."""
    index = torch.full(grid.shape, -1, dtype=torch.long)
    index[cells[:, 0], cells[:, 1]] = torch.arange(len(cells))
    H, W = grid.shape
    to = cells[:, None, :] + MOVES[None]                                   # [S, 4, 2]
    inside = (to[..., 0] >= 0) & (to[..., 0] < H) & (to[..., 1] >= 0) & (to[..., 1] < W)
    r, c = to[..., 0].clamp(0, H - 1), to[..., 1].clamp(0, W - 1)
    target = torch.where(inside, index[r, c], -1)
    return torch.where(target >= 0, target, torch.arange(len(cells))[:, None])


def transition(nxt, fail=FAIL):
    """``P[s, a, s']``: with probability 1 - fail go to ``nxt[s, a]``; with probability ``fail``
    go to a uniformly random empty cell adjacent to the current cell ``s``."""
    S = nxt.shape[0]
    move = torch.nn.functional.one_hot(nxt, S).double()                   # [S, 4, S]
    around = _around(nxt)                                                 # [S, S]
    return (1 - fail) * move + fail * around[:, None, :]


def hop_after_move(nxt, fail=FAIL):
    """The copied implementation's ``P``: move, then with probability ``fail`` hop to a random
    empty neighbour of the *new* cell. Not used for training: it is what the tests rule out."""
    move = torch.nn.functional.one_hot(nxt, nxt.shape[0]).double()
    return (1 - fail) * move + fail * move @ _around(nxt)


def _around(nxt):
    """``[S, S]``: uniform over the empty cells adjacent to each cell (distinct from it)."""
    S = nxt.shape[0]
    adj = torch.zeros(S, S, dtype=torch.double)
    adj[torch.arange(S)[:, None].expand_as(nxt), nxt] = 1.0
    adj.fill_diagonal_(0.0)
    return adj / adj.sum(1, keepdim=True)


def expected_steps(P, goal, tol=1e-10, max_iter=100_000):
    """Value iteration for the minimal expected number of steps to reach ``goal`` from each
    state: V(goal) = 0, V(s) = 1 + min_a sum_s' P[s, a, s'] V(s'). Returns ``[S]`` (float64)."""
    V = torch.zeros(P.shape[0], dtype=torch.double)
    for _ in range(max_iter):
        new = 1.0 + (P.double() @ V).min(-1).values
        new[goal] = 0.0
        if (new - V).abs().max() < tol:
            return new
        V = new
    raise scg.ScgError(f"value iteration did not converge in {max_iter} sweeps")


@dataclass
class FourRooms:
    """The world: ``layout`` (default Four Rooms), ``fail`` probability, ``goal`` a state index
    or ``"east"`` (the east doorway), episode cap ``horizon``."""

    layout: str = LAYOUT
    fail: float = FAIL
    goal: object = "east"
    horizon: int = HORIZON

    def __post_init__(self):
        self.grid, self.cells = parse(self.layout)
        self.S = len(self.cells)
        if self.S < 2:
            raise scg.ScgError(f"a world needs at least 2 empty cells, got {self.S}")
        if not 0.0 <= self.fail <= 1.0:
            raise scg.ScgError(f"fail must be a probability in [0, 1], got {self.fail}")
        if not isinstance(self.horizon, int) or self.horizon < 1:
            raise scg.ScgError(f"horizon must be a positive int, got {self.horizon!r}")
        self.next = neighbours(self.grid, self.cells)
        self.P = transition(self.next, self.fail)
        self.goal = self.state(self.goal)

    def state(self, where):
        """A state index from an index, a (row, col) pair or ``"east"``; else ``ScgError``."""
        if isinstance(where, str):
            if where != "east":
                raise scg.ScgError(f"unknown goal {where!r}: 'east' (the east doorway), a state "
                                   f"index in [0, {self.S}) or an empty (row, col) cell")
            where = EAST_DOORWAY
        if isinstance(where, tuple):
            hit = ((self.cells == torch.tensor(where)).all(1)).nonzero()
            if len(hit) != 1:
                raise scg.ScgError(f"goal cell {where} is not an empty cell of the layout")
            return int(hit[0, 0])
        if isinstance(where, bool) or not isinstance(where, int) or not 0 <= where < self.S:
            raise scg.ScgError(f"goal must be 'east', a state index in [0, {self.S}) or an "
                               f"empty (row, col) cell, got {where!r}")
        return where

    def lower_right(self):
        """State indices of the lower-right room (where the goal moves after 1000 episodes)."""
        r, c = self.cells[:, 0], self.cells[:, 1]
        rows, cols = LOWER_RIGHT
        inside = (r >= rows.start) & (r < rows.stop) & (c >= cols.start) & (c < cols.stop)
        return inside.nonzero().squeeze(1)

    def starts(self, n, goal, generator=None):
        """``n`` start states, uniform over the empty cells except ``goal`` (a LongTensor [n]
        of per-episode goals, or an int)."""
        goal = torch.as_tensor(goal).expand(n)
        s = torch.randint(0, self.S - 1, (n,), generator=generator)
        return s + (s >= goal).long()             # skip the goal: uniform over the others

    def step(self, s, a, generator=None):
        """Batched stepping outside scg (``s``, ``a``: LongTensor [n]) -> next states [n]."""
        self._check_states(s)
        return torch.multinomial(self.P[s, a], 1, generator=generator).squeeze(1)

    def _check_states(self, s):
        with scg.validation():   # checks only: values read here decide nothing else
            if not isinstance(s, torch.Tensor) or s.dtype != torch.long or s.dim() != 1:
                raise scg.ScgError(f"states must be a 1-d LongTensor [episodes], got "
                                   f"{getattr(s, 'dtype', type(s).__name__)} of shape "
                                   f"{tuple(getattr(s, 'shape', ()))}")
            if len(s) and (s.min() < 0 or s.max() >= self.S):
                raise scg.ScgError(f"states must lie in [0, {self.S}), got values in "
                                   f"[{int(s.min())}, {int(s.max())}]")

    def optimum(self, goal=None):
        """Optimal expected steps to ``goal`` from the start distribution (uniform over the
        other cells), by value iteration."""
        goal = self.goal if goal is None else self.state(goal)
        V = expected_steps(self.P, goal)
        return float(V.sum() / (self.S - 1))
