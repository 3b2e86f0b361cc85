"""Random coagent networks (seeded) small enough to enumerate, for the variance benchmark.

A network runs ``T`` steps (2 or 3) of a few slots each. A slot is a message (Bernoulli or
Categorical, owned by one of the coagents ``A``, ``B``, ``C``; the same coagent owns the slot at
every step) or, at the start of some steps, an environment site with fixed probabilities. Every
site reads a random subset (at most 3) of the earlier sites of its step and of the previous
step, through a table of logits (entries N(0, 1)) indexed by its parents' joint value (tabular
coagents); rewards, one or two per step, are tables of a random subset of the sites drawn so
far, with entries N(0, 1) (``rewards="normal"``: zero-mean payoffs, as in
``tests/test_random_networks.py``) or uniform in [0, 1] (``rewards="uniform"``: non-negative
payoffs, whose mean a baseline removes). The joint space of one episode is kept at most
``max_space`` values.

One definition, three readings (:meth:`RandomNetwork.run`):

- :meth:`RandomNetwork.model`: the scg network ``model(N)`` (``scg.episodes(N)``,
  ``scg.steps(T)``), optionally with each message's parents (one-hot) as its ``state=``;
- :meth:`RandomNetwork.sample`: the same network sampled in plain torch, with every message's
  log-probability (for hand-written estimators);
- :meth:`RandomNetwork.enumerate`: every joint value of one episode with its probability
  (differentiable) and rewards, for the exact J, its gradient and exact conditional values.

Nothing here calls scg's estimators: the exact gradient, plain REINFORCE and the exact-value
baseline oracle are written in torch from the network's own tables.
"""

import itertools
import math
import random
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch.nn.functional import one_hot

import scg

REWARDS = {   # the distribution of a reward table's entries
    "normal": lambda n, gen, dtype: torch.randn(n, generator=gen, dtype=dtype),
    "uniform": lambda n, gen, dtype: torch.rand(n, generator=gen, dtype=dtype),
}


@dataclass
class Node:
    name: str
    kind: str            # "message" | "env"
    K: int               # number of values
    parents: tuple       # indices of earlier nodes
    coagent: str = None
    step: int = 0
    table: torch.Tensor = None   # [prod K_parents, K] logits ([.., 1]: Bernoulli; a Parameter
    #                              for messages)


@dataclass
class Reward:
    name: str
    parents: tuple
    step: int
    table: torch.Tensor  # [prod K_parents] reward values


class RandomNetwork:
    """A seeded random coagent network (see the module docstring)."""

    def __init__(self, seed, max_space=4096, rewards="normal", scale=1.0, dtype=torch.float64):
        if rewards not in REWARDS:
            raise ValueError(f"rewards must be one of {list(REWARDS)}, got {rewards!r}")
        rng = random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        self.seed, self.dtype = seed, dtype
        while True:   # draw structures until one fits max_space
            T = rng.choice([2, 3])
            slots = rng.randint(2, 4)
            owners = [rng.choice("ABC") for _ in range(slots)]
            Ks = [rng.choice([2, 2, 3]) for _ in range(slots)]
            envs = [rng.random() < 0.4 for _ in range(T)]
            space = math.prod(Ks) ** T * math.prod(2 if e else 1 for e in envs)
            if space <= max_space:
                break
        self.T, self.nodes, self.rewards = T, [], []
        prev = []
        for t in range(T):
            now = []
            if envs[t]:
                now.append(self._node(rng, gen, f"e{t}", "env", 2, now, prev, None, t, scale))
            for j in range(slots):
                now.append(self._node(rng, gen, f"m{j}", "message", Ks[j], now, prev,
                                      owners[j], t, scale))
            drawn = list(range(len(self.nodes)))
            for k in range(rng.choice([1, 2])):
                recent = [i for i in now] + [i for i in prev if rng.random() < 0.3]
                pool = recent if rng.random() < 0.8 else drawn
                ps = tuple(sorted(rng.sample(pool, min(len(pool), rng.randint(1, 3)))))
                size = math.prod(self.nodes[i].K for i in ps)
                table = REWARDS[rewards](size, gen, dtype)
                self.rewards.append(Reward(f"r{k}", ps, t, table))
            prev = now
        self.params = [n.table for n in self.nodes if n.kind == "message"]
        self.messages = [i for i, n in enumerate(self.nodes) if n.kind == "message"]
        anc = []
        for n in self.nodes:
            a = set(n.parents)
            for p in n.parents:
                a |= anc[p]
            anc.append(a)
        # the rewards downstream of each node (reading it or a descendant of it)
        self.downstream = [[k for k, r in enumerate(self.rewards)
                            if any(i == p or i in anc[p] for p in r.parents)]
                           for i in range(len(self.nodes))]

    def _node(self, rng, gen, name, kind, K, now, prev, coagent, t, scale):
        index = len(self.nodes)
        pool = now + prev
        ps = tuple(sorted(i for i in pool if rng.random() < (0.5 if i in now else 0.3)))[:3]
        size = math.prod(self.nodes[i].K for i in ps)
        width = 1 if kind == "message" and K == 2 else K   # Bernoulli: one logit
        table = scale * torch.randn(size, width, generator=gen, dtype=self.dtype)
        if kind == "message":
            table = torch.nn.Parameter(table)
        self.nodes.append(Node(name, kind, K, ps, coagent, t, table))
        now.append(index)
        return index

    # ---- one definition, three readings ---------------------------------------------------
    def key(self, vals, parents, n):
        """The joint value of ``parents`` (mixed radix), a LongTensor [n]."""
        k = torch.zeros(n, dtype=torch.long)
        for p in parents:
            k = k * self.nodes[p].K + vals[p]
        return k

    def dist(self, node, vals, n):
        logits = node.table[self.key(vals, node.parents, n)]
        if node.K == 2 and node.kind == "message":   # binary messages are Bernoulli
            return dist.Bernoulli(logits=logits[:, 0])
        return dist.Categorical(logits=logits)

    def run(self, n, draw, reward, steps=range):
        """Walk the network over a batch of ``n``: ``draw(i, node, d, vals)`` returns node i's
        value, ``reward(k, r, value)`` takes reward k's value."""
        vals = [None] * len(self.nodes)
        by_step = [[i for i, x in enumerate(self.nodes) if x.step == t] for t in range(self.T)]
        for t in steps(self.T):
            for i in by_step[t]:
                vals[i] = draw(i, self.nodes[i], self.dist(self.nodes[i], vals, n), vals).long()
            for k, r in enumerate(self.rewards):
                if r.step == t:
                    reward(k, r, r.table[self.key(vals, r.parents, n)])
        return vals

    def model(self, state=False):
        """The scg network ``model(N)``; ``state=True``: each message's parents, one-hot, are
        its local ``state=`` (none for a message without parents)."""

        def draw(i, node, d, vals):
            if node.kind == "env":
                return scg.env(node.name, d)
            local = None
            if state and node.parents:
                local = tuple(one_hot(vals[p], self.nodes[p].K).to(self.dtype)
                              for p in node.parents)
            return scg.message(node.name, d, coagent=node.coagent, state=local)

        @scg.network
        def random_network(N):
            with scg.episodes(N):
                self.run(N, draw, lambda k, r, v: scg.reward(r.name, v), steps=scg.steps)
        return random_network

    def sample(self, n):
        """``(values [n, nodes], log-probabilities [n, messages], rewards [n, rewards])`` of n
        episodes sampled in plain torch; the log-probabilities carry the gradient."""
        lps, rews = {}, {}

        def draw(i, node, d, vals):
            v = d.sample()
            if node.kind == "message":
                lps[i] = d.log_prob(v)
            return v

        vals = self.run(n, draw, lambda k, r, v: rews.__setitem__(k, v))
        return (torch.stack(vals, 1), torch.stack([lps[i] for i in self.messages], 1),
                torch.stack([rews[k] for k in range(len(self.rewards))], 1))

    def enumerate(self):
        """``(values [M, nodes], p [M] (differentiable), rewards [M, rewards])`` over every
        joint value of one episode."""
        grid = torch.tensor(list(itertools.product(*[range(x.K) for x in self.nodes])),
                            dtype=torch.long)
        M = grid.shape[0]
        logp, rews = torch.zeros(M, dtype=self.dtype), {}

        def draw(i, node, d, vals):
            nonlocal logp
            v = grid[:, i]
            logp = logp + d.log_prob(v.to(d.logits.dtype) if node.K == 2 and
                                     node.kind == "message" else v)
            return v

        self.run(M, draw, lambda k, r, v: rews.__setitem__(k, v))
        return grid, logp.exp(), torch.stack([rews[k] for k in range(len(self.rewards))], 1)

    # ---- exact quantities and hand-written estimators -------------------------------------
    def space(self):
        return math.prod(x.K for x in self.nodes)

    def exact(self):
        """``(J, grad J)`` by enumeration (J = expected sum of rewards of one episode)."""
        _, p, R = self.enumerate()
        J = (p * R.sum(1)).sum()
        return J.detach(), flat(torch.autograd.grad(J, self.params))

    def returns(self, R):
        """Each message's causal return: its downstream rewards summed, [batch, messages]."""
        return torch.stack([R[:, self.downstream[i]].sum(1) for i in self.messages], 1)

    def value_tables(self, given="parents"):
        """Exact E[G_s | ...] for each message s, by enumeration: given its ``"parents"`` (the
        coagent's local state) or its ``"history"`` (every site drawn before it). A list of
        (conditioning node indices, table over their joint value)."""
        vals, p, R = self.enumerate()
        p, G = p.detach(), self.returns(R)
        out = []
        for k, i in enumerate(self.messages):
            cond = self.nodes[i].parents if given == "parents" else tuple(range(i))
            key = self.key([vals[:, j] for j in range(len(self.nodes))], cond, len(p))
            size = math.prod(self.nodes[j].K for j in cond)
            num = torch.zeros(size, dtype=p.dtype).index_add(0, key, p * G[:, k])
            den = torch.zeros(size, dtype=p.dtype).index_add(0, key, p)
            out.append((cond, num / den.clamp(min=1e-300)))
        return out

    def reinforce(self, n):
        """Plain REINFORCE on n episodes: every message's score times the whole return, no
        baseline; the gradient estimate (flat)."""
        _, lp, R = self.sample(n)
        return flat(torch.autograd.grad((lp.sum(1) * R.sum(1)).mean(), self.params))

    def causal(self, n, tables=None):
        """Each message's score times its causal return minus ``b``: b = 0 without ``tables``,
        else b_s from :meth:`value_tables` (the exact-value-baseline oracle)."""
        vals, lp, R = self.sample(n)
        G = self.returns(R)
        if tables is not None:
            cols = [vals[:, j] for j in range(len(self.nodes))]
            G = G - torch.stack([t[self.key(cols, cond, n)] for cond, t in tables], 1)
        return flat(torch.autograd.grad((lp * G).sum(1).mean(), self.params))

    def describe(self):
        m = len(self.messages)
        return (f"seed {self.seed}: T={self.T}, {m} messages, "
                f"{len(self.nodes) - m} env sites, {len(self.rewards)} rewards, "
                f"{len({n.coagent for n in self.nodes if n.coagent})} coagents, "
                f"{sum(p.numel() for p in self.params)} parameters, space {self.space()}")


def flat(gs):
    return torch.cat([g.flatten() for g in gs])
