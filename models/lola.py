"""Naive and LOLA learners for two-agent games written as scg networks with per-agent objectives
(Foerster et al. 2018: LOLA; the DiCE paper's LOLA-DiCE), and their exact counterparts on a
closed-form value.

A game here is an ``@scg.network`` ``game(theta1, theta2, *args, objective="own")`` whose
coagents ``A`` and ``B`` read ``theta1`` and ``theta2``: with ``objective="own"`` agent 1's
costs are addressed to A and agent 2's to B (``to=``), so ``out.local["A"]`` is -J_A's
surrogate; with ``objective="A"`` (``"B"``) only that agent's costs are emitted, unaddressed, so
the network's one objective J_A is credited to every site, which LOLA's look-ahead
differentiates: agent 1's return after its opponent's step, in theta_1 *through* the
opponent's look-ahead parameters theta_2 + eta * grad_2 J_B (a function of theta_1). The thetas
are arguments, not modules, so a look-ahead theta can be passed in.

Every step returns new leaves (``requires_grad``), one update of both agents.
"""

import torch

import scg

KINDS = ("naive", "lola")


def naive_step(est, theta1, theta2, args, lr):
    """Naive learners: each agent ascends its own J_i, both from one rollout ``est(theta1,
    theta2, *args)``."""
    out = est(theta1, theta2, *args)
    g1, = torch.autograd.grad(out.local["A"], theta1, retain_graph=True)
    g2, = torch.autograd.grad(out.local["B"], theta2)
    return leaf(theta1 - lr * g1), leaf(theta2 - lr * g2)


def lola_step(est, theta1, theta2, args, lr, eta):
    """LOLA-DiCE learners with one look-ahead step each: three rollouts, one at (theta1,
    theta2) for both look-aheads, then one per agent after its opponent's look-ahead. ``est``
    must be compiled with ``order="any"`` (the look-ahead's gradient is differentiated)."""
    out = est(theta1, theta2, *args)
    # each agent's naive step, differentiable in both thetas: out.local[i] has value -J_i
    g1, = torch.autograd.grad(out.local["A"], theta1, create_graph=True)
    g2, = torch.autograd.grad(out.local["B"], theta2, create_graph=True)
    ahead1 = est(theta1, theta2 - eta * g2, *args, objective="A")   # J_A after B's step
    d1, = torch.autograd.grad(ahead1.loss, theta1, retain_graph=True)  # g2 shares out's graph
    ahead2 = est(theta1 - eta * g1, theta2, *args, objective="B")   # J_B after A's step
    d2, = torch.autograd.grad(ahead2.loss, theta2)
    return leaf(theta1 - lr * d1), leaf(theta2 - lr * d2)


def step(kind, est, theta1, theta2, args, lr, eta):
    """One update of ``kind`` (``"naive"`` or ``"lola"``)."""
    if kind == "naive":
        return naive_step(est, theta1, theta2, args, lr)
    if kind == "lola":
        return lola_step(est, theta1, theta2, args, lr, eta)
    raise scg.ScgError(f"unknown learner {kind!r}; valid: {list(KINDS)}")


def exact_step(kind, values, theta1, theta2, lr, eta):
    """The same update on a closed form ``values(theta1, theta2) -> (V1, V2)`` (each summed
    over any batch of seeds): exact gradients, and for LOLA the look-ahead differentiated
    exactly."""
    if kind not in KINDS:
        raise scg.ScgError(f"unknown learner {kind!r}; valid: {list(KINDS)}")
    t1, t2 = leaf(theta1), leaf(theta2)
    v1, v2 = values(t1, t2)
    g1, = torch.autograd.grad(v1, t1, create_graph=True, retain_graph=True)
    g2, = torch.autograd.grad(v2, t2, create_graph=True)
    if kind == "lola":
        g1, g2 = (torch.autograd.grad(values(t1, t2 + eta * g2)[0], t1, retain_graph=True)[0],
                  torch.autograd.grad(values(t1 + eta * g1, t2)[1], t2)[0])
    return leaf(t1 + lr * g1), leaf(t2 + lr * g2)


def train(kind, est, theta1, theta2, args, updates, lr, eta, record):
    """``updates`` sampled updates of ``kind`` from (theta1, theta2); ``record(theta1,
    theta2)`` sees the start and every update's thetas. Returns the final thetas."""
    record(theta1, theta2)
    for _ in range(updates):
        theta1, theta2 = step(kind, est, theta1, theta2, args, lr, eta)
        record(theta1, theta2)
    return theta1.detach(), theta2.detach()


def train_exact(kind, values, theta1, theta2, updates, lr, eta, record):
    """:func:`train` on the closed form ``values`` (:func:`exact_step`)."""
    record(theta1, theta2)
    for _ in range(updates):
        theta1, theta2 = exact_step(kind, values, theta1, theta2, lr, eta)
        record(theta1, theta2)
    return theta1.detach(), theta2.detach()


def leaf(t):
    """``t`` detached, as a new leaf that requires grad."""
    return t.detach().requires_grad_()
