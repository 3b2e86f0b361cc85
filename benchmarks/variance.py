"""Gradient variance: mean squared error against the exact gradient, at a fixed episode budget.

The 10-unit chain of :class:`benchmarks.workloads.Chain` (a reward x_t at every unit) has an
exact objective by a forward recursion over P(x_t = 1), so its exact gradient comes from
autograd. Each estimator gets the same number of episodes per estimate.
"""

import torch

import scg
from benchmarks.workloads import Chain


def exact_gradient(work):
    """grad J for J = sum_t P(x_t = 1), x_0 = 0 before the first unit."""
    p, J = torch.zeros(()), 0.0
    for t in range(work.N):
        p = p * torch.sigmoid(work.w[t] + work.b[t]) + (1 - p) * torch.sigmoid(work.b[t])
        J = J + p
    return torch.cat([g.flatten() for g in torch.autograd.grad(J, [work.w, work.b])])


def estimate(loss, work):
    return -torch.cat([g.flatten() for g in torch.autograd.grad(loss, [work.w, work.b])])


def reinforce_loss(work, B):
    """Plain REINFORCE: every log-probability times the whole return (no causality)."""
    x = torch.zeros(B)
    lp, ret = 0.0, 0.0
    for t in range(work.N):
        d = torch.distributions.Bernoulli(logits=work.w[t] * x + work.b[t])
        x = d.sample()
        lp, ret = lp + d.log_prob(x), ret + x
    return -(lp * ret).mean()


def warm(est, B, iters=300):
    """Let stateful baselines learn at fixed policy: the avg baseline's averages and the
    critic's regression (its parameters only)."""
    est(B)
    critic = list(est.critics.parameters())
    opt = torch.optim.Adam(critic, lr=1e-2) if critic else None
    for _ in range(iters):
        out = est(B)
        if opt:
            opt.zero_grad()
            grads = torch.autograd.grad(out.loss, critic)
            for p, g in zip(critic, grads):
                p.grad = g
            opt.step()


def tracegraph_estimator(work, B, warmup=50):
    """Pyro's TraceGraph_ELBO on the same chain (policy as model and guide, rewards as
    factors), with its decaying-average baseline on every guide site, warmed up first."""
    import pyro

    elbo = pyro.infer.TraceGraph_ELBO()
    infer = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}
    pyro.clear_param_store()

    def guide(B):
        work.pyro_guide(B, infer=infer)

    def draw():
        for p in (work.w, work.b):
            p.grad = None
        elbo.loss_and_grads(work.pyro_model, guide, B)
        # Pyro's plates sum over episodes where scg's episodes average: divide by B
        return -torch.cat([work.w.grad.flatten(), work.b.grad.flatten()]) / B

    for _ in range(warmup):
        draw()
    return draw


def variance_table(episodes=8, repeats=400, seed=0):
    torch.manual_seed(seed)
    work = Chain(10, B=episodes)
    with torch.no_grad():
        work.w.normal_()
        work.b.normal_()
    g = exact_gradient(work)
    rows = []

    def mse(draw):
        return torch.stack([((draw() - g) ** 2).sum() for _ in range(repeats)]).mean().item()

    rows.append({"estimator": "plain REINFORCE (whole return)",
                 "mse": mse(lambda: estimate(reinforce_loss(work, episodes), work))})
    for baseline in ("none", "avg", "loo", "critic"):
        est = scg.compile(work.model, baseline=baseline)
        if baseline in ("avg", "critic"):
            warm(est, episodes)
        rows.append({"estimator": f"scg, baseline={baseline}",
                     "mse": mse(lambda est=est: estimate(est(episodes).loss, work))})
    rows.append({"estimator": "Pyro TraceGraph_ELBO, decaying-average baseline",
                 "mse": mse(tracegraph_estimator(work, episodes))})
    for r in rows:
        r["reduction"] = rows[0]["mse"] / r["mse"]
    return {"setup": f"10-unit chain, reward at every unit, {episodes} episodes per estimate, "
                     f"{repeats} estimates, parameters drawn N(0, 1); MSE = E|g_hat - grad J|^2 "
                     "with grad J exact (forward recursion + autograd).", "rows": rows}
