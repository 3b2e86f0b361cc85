"""The benchmark workloads, each written twice: as an scg network and as a hand-written torch
loss computing the same estimator (same sites, same credit, same discounting).

Every workload is a class with ``scg_iteration()`` and ``hand_iteration()``: one training
iteration (forward, backward, optimiser step) each, on the same parameters.
"""

import pyro
import pyro.distributions as dist
import torch
from torch.nn.functional import one_hot

import scg


def reverse_cumsum(x, dim=0):
    return x.flip(dim).cumsum(dim).flip(dim)


class Chain:
    """N binary units in a chain, x_t ~ Bernoulli(sigmoid(w_t x_{t-1} + b_t)), a cost (reward
    x_t) at every unit; gamma = 1, no baseline. Batch of B episodes."""

    def __init__(self, N, B=32):
        self.N, self.B = N, B
        self.w = torch.nn.Parameter(torch.randn(N) * 0.1)
        self.b = torch.nn.Parameter(torch.zeros(N))
        self.opt = torch.optim.SGD([self.w, self.b], lr=1e-3)
        w, b = self.w, self.b

        @scg.network
        def chain(B):
            with scg.episodes(B):
                x = torch.zeros(B)
                for t in scg.steps(N):
                    x = scg.message("x", dist.Bernoulli(logits=w[t] * x + b[t]), coagent="u")
                    scg.reward("r", x)

        self.model = chain
        self.est = scg.compile(chain, baseline="none")   # the hand-written loss has none

    def scg_iteration(self):
        out = self.est(self.B)
        self.step(out.loss)

    def hand_iteration(self):
        x = torch.zeros(self.B)
        lps, rs = [], []
        for t in range(self.N):
            d = torch.distributions.Bernoulli(logits=self.w[t] * x + self.b[t])
            x = d.sample()
            lps.append(d.log_prob(x))
            rs.append(x)
        lp, r = torch.stack(lps), torch.stack(rs)
        self.step(-(lp * reverse_cumsum(r)).sum(0).mean())

    def pyro_iteration(self, elbo):
        """The same chain through Pyro's SVI formulation: the policy is both model and guide
        (log p - log q cancels) and each reward a ``pyro.factor``, so the ELBO is J."""
        if hasattr(elbo, "differentiable_loss"):
            self.step(elbo.differentiable_loss(self.pyro_model, self.pyro_guide, self.B))
        else:  # TraceGraph_ELBO: its surrogate is backpropagated inside loss_and_grads
            self.opt.zero_grad()
            elbo.loss_and_grads(self.pyro_model, self.pyro_guide, self.B)
            self.opt.step()

    def pyro_model(self, B, rewards=True, infer=None):
        with pyro.plate("episodes", B):
            x = torch.zeros(B)
            for t in range(self.N):
                x = pyro.sample(f"x{t}", dist.Bernoulli(logits=self.w[t] * x + self.b[t]),
                                infer=dict(infer or {}))
                if rewards:
                    pyro.factor(f"r{t}", x)

    def pyro_guide(self, B, infer=None):
        self.pyro_model(B, rewards=False, infer=infer)

    def step(self, loss):
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


class Layer:
    """One layer of U binary units (a pyro.plate of independent units) reading a 16-dim input;
    each unit's reward is 1 when it matches a target bit. Batch of B episodes."""

    def __init__(self, U=300, B=64):
        self.U, self.B = U, B
        self.lin = torch.nn.Linear(16, U)
        self.opt = torch.optim.SGD(self.lin.parameters(), lr=1e-3)
        self.x = torch.randn(B, 16)
        self.target = (torch.rand(B, U) < 0.5).float()
        lin, target = self.lin, self.target

        @scg.network
        def layer(x):
            with scg.episodes(x.shape[0], dim=-2), scg.agents(U, dim=-1, independent=True):
                a = scg.message("a", dist.Bernoulli(logits=lin(x)), coagent="layer")
                scg.reward("r", (a == target).float())

        self.est = scg.compile(layer, baseline="none")

    def scg_iteration(self):
        self.step(self.est(self.x).loss)

    def hand_iteration(self):
        d = torch.distributions.Bernoulli(logits=self.lin(self.x))
        a = d.sample()
        r = (a == self.target).float()
        self.step(-(d.log_prob(a) * r).sum(-1).mean())

    def step(self, loss):
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


class TalkingAgents:
    """The talking agents: A and B, each a GRU cell whose state emits a message (one of
    M) and predicts the data D_t from the partner's message; the per-step data is a Markov chain
    over K symbols. Cost: both predictors' log-likelihoods (also trained directly). Batch B,
    T steps, gamma = 1, no baseline; on ``device``."""

    def __init__(self, B=512, T=16, H=32, M=8, K=4, device="cpu"):
        self.B, self.T, self.H, self.M, self.K, self.device = B, T, H, M, K, device
        g = torch.Generator().manual_seed(0)
        self.P = torch.softmax(3 * torch.randn(K, K, generator=g), -1).to(device)
        self.agents = torch.nn.ModuleDict({n: torch.nn.ModuleDict({
            "gru": torch.nn.GRUCell(K + M, H), "msg": torch.nn.Linear(H, M),
            "pred": torch.nn.Linear(H + M, K)}) for n in "AB"}).to(device)
        self.opt = torch.optim.Adam(self.agents.parameters(), lr=1e-3)
        agents = self.agents

        @scg.network
        def talk(D):
            with scg.episodes(D.shape[1]):
                h = {n: torch.zeros(D.shape[1], H, device=D.device) for n in "AB"}
                for t in scg.steps(D.shape[0]):
                    m = {n: scg.message(f"m{n}", dist.Categorical(logits=agents[n]["msg"](h[n])),
                                        coagent=n) for n in "AB"}
                    other = {"A": "B", "B": "A"}
                    for n in "AB":
                        mo = one_hot(m[other[n]], M).float()
                        scg.predict(f"q{n}", dist.Categorical(logits=agents[n]["pred"](
                            torch.cat([h[n], mo], -1))), obs=D[t], coagent=n)
                    for n in "AB":
                        inp = torch.cat([one_hot(D[t], K).float(),
                                         one_hot(m[other[n]], M).float()], -1)
                        h[n] = agents[n]["gru"](inp, h[n])

        self.est = scg.compile(talk, baseline="none")

    def data(self):
        D = [torch.randint(0, self.K, (self.B,), device=self.device)]
        for _ in range(self.T - 1):
            D.append(torch.multinomial(self.P[D[-1]], 1).squeeze(-1))
        return torch.stack(D)

    def scg_iteration(self, D=None):
        D = self.data() if D is None else D
        self.step(self.est(D).loss)

    def hand_iteration(self, D=None):
        D = self.data() if D is None else D
        ag, M, K = self.agents, self.M, self.K
        h = {n: torch.zeros(self.B, self.H, device=self.device) for n in "AB"}
        lps, qs = {n: [] for n in "AB"}, {n: [] for n in "AB"}
        for t in range(self.T):
            m = {}
            for n in "AB":
                d = torch.distributions.Categorical(logits=ag[n]["msg"](h[n]))
                m[n] = d.sample()
                lps[n].append(d.log_prob(m[n]))
            other = {"A": "B", "B": "A"}
            for n in "AB":
                mo = one_hot(m[other[n]], M).float()
                q = torch.distributions.Categorical(logits=ag[n]["pred"](torch.cat([h[n], mo], -1)))
                qs[n].append(q.log_prob(D[t]))
            for n in "AB":
                inp = torch.cat([one_hot(D[t], K).float(), one_hot(m[other[n]], M).float()], -1)
                h[n] = ag[n]["gru"](inp, h[n])
        q = {n: torch.stack(qs[n]) for n in "AB"}                       # [T, B]
        later = reverse_cumsum(q["A"] + q["B"]) - (q["A"] + q["B"])     # costs after step t
        score = 0.0
        for n in "AB":
            o = "B" if n == "A" else "A"
            G = (q[o] + later).detach()         # m_n at t reaches the partner's q at t onwards
            score = score + (torch.stack(lps[n]) * G).sum(0)
        loss = -(score + q["A"].sum(0) + q["B"].sum(0)).mean()
        self.step(loss)

    def step(self, loss):
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


class OnlineWalk:
    """Online actor-critic (``estimator="td"``): B random walks on a corridor of S cells, a
    tabular softmax policy (left or right) and a tabular critic V, reward 1 on reaching the
    last cell, where the episode ends and restarts in cell 0 (``finish(done=...)``). One
    iteration is one step of every walk: settle the last step's TD error, update the traces,
    SGD. The hand-written version keeps its own traces, with the tabular score in closed form
    (one-hot of the cell times one-hot of the move minus the policy)."""

    def __init__(self, S=10, B=32, gamma=0.95, lam=0.8):
        self.S, self.B, self.gamma, self.lam = S, B, gamma, lam
        self.theta = torch.nn.Parameter(torch.zeros(S, 2))
        self.V = torch.nn.Parameter(torch.zeros(S))
        self.opt = torch.optim.SGD([self.theta, self.V], lr=0.1)
        theta, V = self.theta, self.V

        @scg.network
        def walk(s):
            with scg.episodes(s.shape[0]):
                for _ in scg.steps(1):
                    scg.value("v", V[s])
                    a = scg.message("a", dist.Categorical(logits=theta[s]), coagent="policy")
                    s = (s + 2 * a - 1).clamp(0, S - 1)
                    arrived = s == S - 1
                    scg.reward("r", arrived.float())
            return s, arrived

        self.est = scg.compile(walk, estimator="td", gamma=gamma, lam=lam,
                               discount_score=False)
        self.s = torch.zeros(B, dtype=torch.long)         # scg's walks
        self.hs = torch.zeros(B, dtype=torch.long)        # the hand-written walks
        self.z = self.zw = self.pending = None

    def scg_iteration(self):
        out = self.est(self.s)
        s, arrived = out.value
        loss = out.loss + self.est.finish(done=arrived).loss
        self.s = torch.where(arrived, torch.zeros_like(s), s)
        self.step(loss)

    def hand_iteration(self):
        """The tabular score in closed form: no autograd."""
        S, theta, V = self.S, self.theta, self.V
        s = self.hs
        with torch.no_grad():
            v = V[s]
            pi = torch.softmax(theta[s], -1)
            a = torch.distributions.Categorical(logits=theta[s]).sample()
            cell = one_hot(s, S).to(v.dtype)                                  # [B, S]
            g_theta = cell[:, :, None] * (one_hot(a, 2).to(v.dtype) - pi)[:, None, :]
        self.hs = self.hand_update(s, a, v, g_theta, cell)

    def autograd_iteration(self):
        """The same update with per-episode gradients from autograd, as one would write it for
        a neural policy and critic: one batched backward pass of log pi(a|s) + V(s) per step."""
        theta, V = self.theta, self.V
        s = self.hs
        v = V[s]
        d = torch.distributions.Categorical(logits=theta[s])
        a = d.sample()
        g_theta, g_V = torch.autograd.grad(d.log_prob(a) + v, [theta, V],
                                           grad_outputs=torch.eye(self.B),
                                           is_grads_batched=True)
        self.hs = self.hand_update(s, a, v.detach(), g_theta, g_V)

    def hand_update(self, s, a, v, g_theta, g_V):
        """Settle the pending TD error, update the traces, step; the walks' next cells."""
        B, theta, V = self.B, self.theta, self.V
        with torch.no_grad():
            u_theta, u_V = torch.zeros_like(theta), torch.zeros_like(V)
            if self.pending is not None:                 # settle the last step with V(s_t)
                r, v_prev = self.pending
                delta = r + self.gamma * v - v_prev
                u_theta += torch.einsum("b,bsa->sa", delta, self.z) / B
                u_V += delta @ self.zw / B
            decay = self.gamma * self.lam
            self.z = g_theta if self.z is None else decay * self.z + g_theta
            self.zw = g_V if self.zw is None else decay * self.zw + g_V
            s2 = (s + 2 * a - 1).clamp(0, self.S - 1)
            arrived = s2 == self.S - 1
            r = arrived.to(v.dtype)
            end = torch.where(arrived, r - v, torch.zeros_like(v))   # V = 0 after the goal
            u_theta += torch.einsum("b,bsa->sa", end, self.z) / B
            u_V += end @ self.zw / B
            keep = (~arrived).to(v.dtype)
            self.z, self.zw = keep[:, None, None] * self.z, keep[:, None] * self.zw
            self.pending = (r * keep, v * keep)   # ended walks restart: nothing pending
        theta.grad, V.grad = -u_theta, -u_V
        self.opt.step()
        return torch.where(arrived, torch.zeros_like(s2), s2)

    def step(self, loss):
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
