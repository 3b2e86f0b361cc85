"""The iterated prisoner's dilemma (IPD) of LOLA (Foerster et al. 2018), in plain torch: the exact
values, exact naive and LOLA learners, and a hand-written DiCE estimator.

This module is the reference that scg's version of LOLA is measured against: the closed form is
the oracle for every derivative an estimator claims to be unbiased for, and :func:`sample_dice`
is the hand-written torch row of ``benchmarks/dice.py``. Nothing here uses scg's internals.

**The game.** Each step both agents choose action 0 (cooperate, C) or 1 (defect, D); the
payoffs (agent 1, agent 2) are CC (-1, -1), CD (-3, 0), DC (0, -3), DD (-2, -2), the first
letter being agent 1's action. Joint outcomes are indexed ``o = 2 * a1 + a2`` (CC, CD, DC, DD).

**The policies** are memory-one: each agent has 5 logits ``theta[..., 5]``, sigmoid(theta[s])
its probability of cooperating in state ``s``: s = 0 at the first step, and s = 1 + o' after a
step whose joint outcome *seen from the agent's own side* is o' = 2 * a_own + a_other, i.e.
states 1..4 are CC, CD, DC, DD with the agent's own action first. For agent 1 that is
``s = 1 + 2 * a1 + a2``; for agent 2 it is ``s = 1 + 2 * a2 + a1``, so agent 2's logit in the
joint state ``s`` of agent 1's view is ``theta2[SWAP[s]]``, SWAP = [0, 1, 3, 2, 4] (CD and DC
exchanged). A symmetric pair (theta1 == theta2) then means the same strategy for both agents
(tit-for-tat is [+, +, -, +, -] for either), and V1(a, b) == V2(b, a).
This is the convention of the DiCE paper's code (``lola_dice/envs/prisoners_dilemma.py`` in
github.com/alshedivat/lola, each agent observes ``own * 2 + other``) and of the PyTorch
LOLA-DiCE port (github.com/alexis-jacq/LOLA_DiCE, which permutes theta2 by [0, 1, 3, 2, 4] in
its exact objective). The LOLA paper's exact code (``lola/train_exact.py``) instead feeds both
agents agent 1's ordering and puts the start state last; the two parametrisations differ by a
fixed permutation of agent 2's logits, so the learning dynamics are the same up to the
initialisation's symmetry (which N(0, 1) does not see).

**Values.** With p0 the distribution of the first joint outcome and P[s, o] the probability of
outcome o after outcome s, V_i = sum_t gamma^t p0^T P^t r_i = p0^T (I - gamma P)^-1 r_i (the LOLA
paper's closed form: the discounted total, not the per-step average; (1 - gamma) V_i is the
average per-step return). :func:`values_finite` is the same sum truncated at T steps, the exact
value of what a T-step rollout samples.
"""

from dataclasses import dataclass

import torch

import scg

#: agent 1's and agent 2's payoff per joint outcome o = 2 * a1 + a2 (CC, CD, DC, DD)
PAYOFF1 = (-1.0, -3.0, 0.0, -2.0)
PAYOFF2 = (-1.0, 0.0, -3.0, -2.0)
#: agent 2's state index for each state of agent 1's view (CD and DC exchanged)
SWAP = (0, 1, 3, 2, 4)
STATES = ("start", "CC", "CD", "DC", "DD")
KINDS = ("naive", "lola")

#: the LOLA paper's exact-gradient IPD settings (scripts/run_lola.py and lola/train_exact.py of
#: github.com/alshedivat/lola): plain gradient ascent on the discounted total V_i with lr 1,
#: opponent step (``lr_correction``) 1, gamma 0.96, 200 updates per trial, theta ~ N(0, 1)
LOLA_PAPER = {"lr": 1.0, "eta": 1.0, "gamma": 0.96, "steps": 200, "init_std": 1.0}
#: the DiCE paper's sampled LOLA-DiCE on the IPD (scripts/run_lola_dice.py of the same repo):
#: SGD on the DiCE objective (the discounted total), outer lr 0.2, inner (look-ahead) lr 0.1,
#: 2 inner steps, batch 64, 150 steps, gamma 0.96, 200 updates. The PyTorch port
#: (github.com/alexis-jacq/LOLA_DiCE ipd_DiCE.py) uses Adam 0.2 outside, SGD 0.3 inside, batch
#: 128, and theta starting at 0.
LOLA_DICE_PAPER = {"lr_outer": 0.2, "lr_inner": 0.1, "inner_steps": 2, "batch": 64, "T": 150,
                   "gamma": 0.96, "updates": 200}


# ---- input checks ----------------------------------------------------------------------------
def _theta(name, theta):
    theta = torch.as_tensor(theta)
    if not theta.is_floating_point():
        theta = theta.to(torch.get_default_dtype())
    if theta.dim() < 1 or theta.shape[-1] != 5:
        raise scg.ScgError(f"{name} must hold 5 logits in its last dim (start, CC, CD, DC, DD),"
                           f" got shape {tuple(theta.shape)}")
    return theta


def _gamma(gamma, closed=False):
    try:
        gamma = float(gamma)
    except (TypeError, ValueError):
        raise scg.ScgError(f"gamma must be a number, got {gamma!r}") from None
    top_ok = gamma <= 1.0 if closed else gamma < 1.0
    if not (0.0 <= gamma and top_ok):
        why = "" if closed else " (the infinite sum needs gamma < 1)"
        raise scg.ScgError(f"gamma must be in [0, {'1]' if closed else '1)'}{why}, got {gamma}")
    return gamma


def _count(name, n, least):
    if isinstance(n, bool) or not isinstance(n, int) or n < least:
        raise scg.ScgError(f"{name} must be an int >= {least}, got {n!r}")
    return n


# ---- exact values ----------------------------------------------------------------------------
def _chain(theta1, theta2):
    """(p0 [..., 4], P [..., 4, 4], r1 [4], r2 [4]): the Markov chain over joint outcomes."""
    theta1, theta2 = _theta("theta1", theta1), _theta("theta2", theta2)
    dtype = torch.promote_types(theta1.dtype, theta2.dtype)
    theta1, theta2 = torch.broadcast_tensors(theta1.to(dtype), theta2.to(dtype))
    p1 = torch.sigmoid(theta1)                      # P(agent 1 cooperates) per state
    p2 = torch.sigmoid(theta2[..., list(SWAP)])     # agent 2's, indexed by agent 1's view
    joint = torch.stack([p1 * p2, p1 * (1 - p2), (1 - p1) * p2, (1 - p1) * (1 - p2)], -1)
    r1 = torch.tensor(PAYOFF1, dtype=joint.dtype, device=joint.device)
    r2 = torch.tensor(PAYOFF2, dtype=joint.dtype, device=joint.device)
    return joint[..., 0, :], joint[..., 1:, :], r1, r2


def values(theta1, theta2, gamma=0.96):
    """(V1, V2): the exact discounted totals sum_t gamma^t E[r_i,t] over the infinite horizon,
    p0^T (I - gamma P)^-1 r_i, each of shape ``theta``'s leading (broadcast) dims; differentiable
    to any order in both thetas.

    >>> tft = torch.tensor([50.0, 50.0, -50.0, 50.0, -50.0])   # tit-for-tat, for either agent
    >>> [round(float(v), 6) for v in values(tft, tft, 0.5)]
    [-2.0, -2.0]
    """
    gamma = _gamma(gamma)
    p0, P, r1, r2 = _chain(theta1, theta2)
    eye = torch.eye(4, dtype=P.dtype, device=P.device)
    # x^T = p0^T (I - gamma P)^-1, i.e. (I - gamma P)^T x = p0: the discounted occupancy
    x = torch.linalg.solve((eye - gamma * P).transpose(-1, -2), p0.unsqueeze(-1)).squeeze(-1)
    return x @ r1, x @ r2


def values_finite(theta1, theta2, gamma=0.96, T=150):
    """(V1, V2) over a finite horizon: sum_{t<T} gamma^t E[r_i,t], by the recursion
    d_{t+1} = d_t P from d_0 = p0 (d_t: the distribution of step t's joint outcome). This is
    exactly what a T-step rollout's discounted return estimates; gamma = 1 is allowed."""
    gamma, T = _gamma(gamma, closed=True), _count("T", T, 0)
    p0, P, r1, r2 = _chain(theta1, theta2)
    occupancy, d, discount = torch.zeros_like(p0), p0, 1.0
    for _ in range(T):
        occupancy = occupancy + discount * d
        d = (d.unsqueeze(-2) @ P).squeeze(-2)
        discount *= gamma
    return occupancy @ r1, occupancy @ r2


def p_cooperate(theta):
    """P(cooperate) in each state (start, CC, CD, DC, DD from the agent's own view)."""
    return torch.sigmoid(_theta("theta", theta))


# ---- exact learners --------------------------------------------------------------------------
def _leaves(theta1, theta2):
    t1 = _theta("theta1", theta1).detach().requires_grad_()
    t2 = _theta("theta2", theta2).detach().requires_grad_()
    return t1, t2


def naive_step(theta1, theta2, lr=1.0, gamma=0.96):
    """One simultaneous step of naive learners: theta_i + lr * grad_i V_i(theta1, theta2) for
    each agent, on the exact values; batched over leading dims (one seed per row)."""
    t1, t2 = _leaves(theta1, theta2)
    v1, v2 = values(t1, t2, gamma)
    g1, = torch.autograd.grad(v1.sum(), t1, retain_graph=True)
    g2, = torch.autograd.grad(v2.sum(), t2)
    return (t1 + lr * g1).detach(), (t2 + lr * g2).detach()


def lola_step(theta1, theta2, lr=1.0, eta=1.0, gamma=0.96, form="lookahead"):
    """One simultaneous step of exact LOLA learners, batched over leading dims.

    ``form="lookahead"`` (the DiCE paper's LOLA, Foerster et al. 2018b): agent 1
    ascends V1(theta1, theta2 + eta * grad_2 V2(theta1, theta2)), differentiated in theta1
    *through* the opponent's one naive step (``create_graph=True``), so its gradient is
    grad_1 V1' + eta * (grad_1 grad_2 V2)^T grad_2 V1' at the looked-ahead point; agent 2
    symmetrically. ``form="taylor"`` is the LOLA paper's first-order expansion
    (``lola/train_exact.py``): grad_1 V1 + eta * grad_1 [stop(grad_2 V1) . grad_2 V2], all at
    the current point. To first order in eta the lookahead's gradient is
    grad_1 V1 + eta [(grad_2 grad_1 V2)^T grad_2 V1 + (grad_2 grad_1 V1)^T grad_2 V2]: the Taylor
    form drops the second term, as the LOLA paper does (its code's default ``pseudo=False``
    stops the gradient through grad_2 V1), so the two forms differ at first order in eta."""
    if form not in ("lookahead", "taylor"):
        raise scg.ScgError(f"form must be 'lookahead' or 'taylor', got {form!r}")
    t1, t2 = _leaves(theta1, theta2)
    v1, v2 = values(t1, t2, gamma)
    if form == "lookahead":
        g1, = torch.autograd.grad(v1.sum(), t1, create_graph=True, retain_graph=True)
        g2, = torch.autograd.grad(v2.sum(), t2, create_graph=True)   # the naive steps
        d1, = torch.autograd.grad(values(t1, t2 + eta * g2, gamma)[0].sum(), t1,
                                  retain_graph=True)   # g1 and g2 share v's graph
        d2, = torch.autograd.grad(values(t1 + eta * g1, t2, gamma)[1].sum(), t2)
    else:
        g11, g12 = torch.autograd.grad(v1.sum(), (t1, t2), create_graph=True)
        g21, g22 = torch.autograd.grad(v2.sum(), (t1, t2), create_graph=True)
        c1, = torch.autograd.grad((g12.detach() * g22).sum(), t1, retain_graph=True)
        c2, = torch.autograd.grad((g21.detach() * g11).sum(), t2)
        d1, d2 = g11 + eta * c1, g22 + eta * c2
    return (t1 + lr * d1).detach(), (t2 + lr * d2).detach()


@dataclass
class Trajectories:
    """Per-seed learning curves of :func:`train_exact`, index 0 being the start.

    ``returns``: [steps + 1, seeds, 2], each agent's average per-step return (1 - gamma) V_i;
    ``p_cooperate``: [steps + 1, seeds, 2, 5], each agent's P(cooperate) per state (start, CC,
    CD, DC, DD, own view); ``theta1``, ``theta2``: the final logits [seeds, 5]."""

    returns: torch.Tensor
    p_cooperate: torch.Tensor
    theta1: torch.Tensor
    theta2: torch.Tensor


def train_exact(kind="lola", seeds=10, steps=200, lr=1.0, eta=1.0, gamma=0.96, init_std=1.0,
                seed=0, form="lookahead", dtype=torch.float64):
    """Train ``seeds`` independent pairs of naive or LOLA learners on the exact values, all
    seeds batched; thetas start ~ N(0, init_std^2) per entry (the LOLA paper's exact runs:
    ``tf.random_normal``), from ``torch.Generator().manual_seed(seed)``.

    The defaults are the LOLA paper's (:data:`LOLA_PAPER`)."""
    if kind not in KINDS:
        raise scg.ScgError(f"unknown learner {kind!r}; valid: {list(KINDS)}")
    seeds, steps = _count("seeds", seeds, 1), _count("steps", steps, 0)
    gamma = _gamma(gamma)
    g = torch.Generator().manual_seed(seed)
    t1 = init_std * torch.randn(seeds, 5, generator=g, dtype=dtype)
    t2 = init_std * torch.randn(seeds, 5, generator=g, dtype=dtype)
    rets, coop = [], []

    def record(t1, t2):
        with torch.no_grad():
            v1, v2 = values(t1, t2, gamma)
            rets.append((1 - gamma) * torch.stack([v1, v2], -1))
            coop.append(torch.stack([torch.sigmoid(t1), torch.sigmoid(t2)], -2))

    record(t1, t2)
    for _ in range(steps):
        if kind == "naive":
            t1, t2 = naive_step(t1, t2, lr, gamma)
        else:
            t1, t2 = lola_step(t1, t2, lr, eta, gamma, form)
        record(t1, t2)
    return Trajectories(torch.stack(rets), torch.stack(coop), t1, t2)


# ---- the hand-written DiCE estimator ---------------------------------------------------------
def magic_box(x):
    """DiCE's MagicBox: value 1, and d/dx magic_box(x) = magic_box(x) (to every order)."""
    return torch.exp(x - x.detach())


def rollout(theta1, theta2, batch, T, generator=None):
    """Sample ``batch`` episodes of T steps: (lp1, lp2, r1, r2, a1, a2), each [T, batch];
    lp_i the log-probabilities of agent i's actions (differentiable in theta_i), a_i the
    actions (0 cooperate, 1 defect), r_i the rewards.

    One Python loop over T samples the actions without recording a graph (the states are
    integers); the log-probabilities are then gathered for all steps at once, so autograd
    sees a handful of [T, batch] operations rather than a few per step."""
    theta1, theta2 = _theta("theta1", theta1), _theta("theta2", theta2)
    if theta1.shape != (5,) or theta2.shape != (5,):
        raise scg.ScgError(f"sample_dice takes one policy per agent (shape [5]), got "
                           f"{tuple(theta1.shape)} and {tuple(theta2.shape)}")
    batch, T = _count("batch", batch, 1), _count("T", T, 1)
    dtype, device = torch.promote_types(theta1.dtype, theta2.dtype), theta1.device
    with torch.no_grad():
        # per joint state of agent 1's view, both agents' P(cooperate): [5, 2]
        pc = torch.stack([torch.sigmoid(theta1.to(dtype)),
                          torch.sigmoid(theta2.to(dtype)[list(SWAP)])], -1)
        u = torch.rand(T, batch, 2, generator=generator, dtype=dtype, device=device)
        weight = torch.tensor([2, 1], device=device)
        s, states = torch.zeros(batch, dtype=torch.long, device=device), []
        for t in range(T):
            states.append(s)
            s = 1 + ((u[t] >= pc[s]).long() * weight).sum(-1)   # defect = 1; s = 1 + 2a1 + a2
        states.append(s)
        states = torch.stack(states)                          # [T + 1, batch], agent 1's view
        o = states[1:] - 1                                    # step t's joint outcome
        a1, a2, states1 = o // 2, o % 2, states[:-1]
        states2 = torch.tensor(SWAP, device=device)[states1]  # agent 2's own view
    # log P(a) = logsigmoid(+logit) when cooperating, logsigmoid(-logit) when defecting
    sign1, sign2 = 1 - 2 * a1.to(dtype), 1 - 2 * a2.to(dtype)
    lp1 = torch.nn.functional.logsigmoid(sign1 * theta1.to(dtype)[states1])
    lp2 = torch.nn.functional.logsigmoid(sign2 * theta2.to(dtype)[states2])
    r1 = torch.tensor(PAYOFF1, dtype=dtype, device=device)[o]
    r2 = torch.tensor(PAYOFF2, dtype=dtype, device=device)[o]
    return lp1, lp2, r1, r2, a1, a2


def dice_objective(lp, rewards, gamma, baseline="loo"):
    """The DiCE objective of one reward stream from a sampled batch: ``lp`` [T, B] the summed
    log-probabilities of every stochastic node at each step (both agents' actions), ``rewards``
    [T, B]. Its value is the batch mean of sum_t gamma^t r_t; its derivatives of every order are
    unbiased for those of the finite-horizon value.

    sum_t MagicBox(sum_{t' <= t} lp_t') gamma^t r_t (Foerster et al. 2018), plus with
    ``baseline="loo"`` the any-order baseline term of Mao et al. 2019,
    sum_t (1 - MagicBox(lp_t)) MagicBox(sum_{t' < t} lp_t') b_t, where b_t is the leave-one-out
    batch mean of the discounted return-to-go sum_{t' >= t} gamma^t' r_t' (other episodes only,
    so it is independent of this episode's actions: value 0, derivatives 0 in expectation).
    ``baseline="none"`` leaves the term out."""
    if baseline not in ("loo", "none"):
        raise scg.ScgError(f"baseline must be 'loo' or 'none', got {baseline!r}")
    T, B = rewards.shape
    discount = gamma ** torch.arange(T, dtype=rewards.dtype, device=rewards.device)
    discounted = rewards * discount[:, None]
    upto = torch.cumsum(lp, 0)                        # log-probs of steps <= t
    objective = (magic_box(upto) * discounted).sum(0)
    if baseline == "loo":
        if B < 2:
            raise scg.ScgError("baseline='loo' needs batch >= 2 (a leave-one-out mean)")
        to_go = discounted.flip(0).cumsum(0).flip(0)
        b = (to_go.sum(1, keepdim=True) - to_go) / (B - 1)
        objective = objective + ((1 - magic_box(lp)) * magic_box(upto - lp) * b).sum(0)
    return objective.mean()


def sample_dice(theta1, theta2, batch=128, T=150, gamma=0.96, generator=None, baseline="loo"):
    """(L1, L2): hand-written DiCE objectives of both agents from ``batch`` sampled episodes of
    T steps. L_i's value is the batch mean of agent i's discounted return sum_{t<T} gamma^t r_i,t
    and its derivatives of any order in (theta1, theta2) are unbiased for those of
    ``values_finite(theta1, theta2, gamma, T)[i]``.

    Both agents' log-probabilities enter each reward's magic box: both actions at step t set
    both rewards at t, and the states at t + 1 (hence everything later)."""
    gamma = _gamma(gamma, closed=True)
    lp1, lp2, r1, r2, _, _ = rollout(theta1, theta2, batch, T, generator)
    lp = lp1 + lp2
    return dice_objective(lp, r1, gamma, baseline), dice_objective(lp, r2, gamma, baseline)
