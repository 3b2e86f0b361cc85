"""The iterated prisoner's dilemma reference (models/ipd_exact.py): the closed form and the
finite-horizon recursion against an independent enumeration of every joint history, the
agents' state convention, exact naive and LOLA learners reaching their regimes, and the
hand-written DiCE estimator's first and second derivatives against the exact finite-horizon
ones (z-tests over independent batches, float64 from conftest)."""

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

import scg
from scg.models.ipd_exact import (
    LOLA_PAPER,
    PAYOFF1,
    PAYOFF2,
    dice_objective,
    lola_step,
    naive_step,
    p_cooperate,
    rollout,
    sample_dice,
    train_exact,
    values,
    values_finite,
)

ROOT = Path(__file__).resolve().parents[1]
C, D = 0, 1
# the payoff table written out, not read from the module: (agent 1, agent 2) per (a1, a2)
GAME = {(C, C): (-1.0, -1.0), (C, D): (-3.0, 0.0), (D, C): (0.0, -3.0), (D, D): (-2.0, -2.0)}
BIG = 40.0   # a logit that makes an action certain to double precision (sigmoid(-40) ~ 4e-18)


def policy(*cooperate):
    """Deterministic logits: +BIG where the agent cooperates in (start, CC, CD, DC, DD)."""
    return torch.tensor([BIG if c else -BIG for c in cooperate], dtype=torch.float64)


TFT = policy(1, 1, 0, 1, 0)          # cooperate first, then copy the other's last action
ALL_C, ALL_D = policy(1, 1, 1, 1, 1), policy(0, 0, 0, 0, 0)


def enumerated(theta1, theta2, gamma, T):
    """(V1, V2) over T steps by summing over all 4^T joint histories, each agent reading its
    own view of the last outcome (own action first): independent of the matrix form."""
    pc1, pc2 = torch.sigmoid(theta1), torch.sigmoid(theta2)
    v1 = v2 = 0.0
    for history in itertools.product(list(GAME), repeat=T):
        prob, ret1, ret2, s1, s2 = 1.0, 0.0, 0.0, 0, 0
        for t, (a1, a2) in enumerate(history):
            prob = prob * (pc1[s1] if a1 == C else 1 - pc1[s1])
            prob = prob * (pc2[s2] if a2 == C else 1 - pc2[s2])
            ret1, ret2 = ret1 + gamma ** t * GAME[a1, a2][0], ret2 + gamma ** t * GAME[a1, a2][1]
            s1, s2 = 1 + 2 * a1 + a2, 1 + 2 * a2 + a1
        v1, v2 = v1 + prob * ret1, v2 + prob * ret2
    return v1, v2


def random_thetas(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(5, generator=g), scale * torch.randn(5, generator=g)


# ---- the game and the convention -------------------------------------------------------------
def test_payoff_tables_are_the_lola_papers():
    assert [GAME[divmod(o, 2)] for o in range(4)] == list(zip(PAYOFF1, PAYOFF2))


@pytest.mark.parametrize("gamma", [0.5, 0.96])
def test_known_strategies_have_their_textbook_values(gamma):
    n = 1 / (1 - gamma)
    cases = [(ALL_D, ALL_D, -2 * n, -2 * n), (TFT, TFT, -n, -n), (ALL_C, ALL_C, -n, -n),
             (ALL_C, ALL_D, -3 * n, 0.0), (ALL_D, ALL_C, 0.0, -3 * n),
             # tit-for-tat is exploited once, then both defect forever
             (TFT, ALL_D, -3 - 2 * gamma * n, 0 - 2 * gamma * n),
             (ALL_D, TFT, 0 - 2 * gamma * n, -3 - 2 * gamma * n)]
    for a, b, v1, v2 in cases:
        got = values(a, b, gamma)
        assert torch.allclose(torch.stack(got), torch.tensor([v1, v2]), atol=1e-9), (a, b)


def test_a_symmetric_pair_is_symmetric_and_swapping_agents_swaps_values():
    """Own-view states: V1(a, b) = V2(b, a), so V1 = V2 when both play the same logits; this
    fails if agent 2 read agent 1's ordering of CD and DC."""
    for seed in range(5):
        a, b = random_thetas(seed)
        v1, v2 = values(a, b)
        w1, w2 = values(b, a)
        assert torch.allclose(v1, w2) and torch.allclose(v2, w1)
        s1, s2 = values(a, a)
        assert torch.allclose(s1, s2)
    # (ALL_D, TFT) in the test above pins the convention too: agent 2 reads the first outcome
    # (D, C) as CD (it cooperated, was defected on) and defects; read as DC it would cooperate
    assert torch.allclose(values(ALL_D, TFT)[1], torch.tensor(-3.0 - 2 * 0.96 / 0.04))


@pytest.mark.parametrize("T", [1, 2, 3, 4])
def test_values_finite_is_the_enumeration_of_all_histories(T):
    """values_finite against the 4^T joint histories: values and both agents' gradients."""
    for seed in range(3):
        t1, t2 = (t.requires_grad_() for t in random_thetas(seed, 1.5))
        exact = values_finite(t1, t2, 0.9, T)
        oracle = enumerated(t1, t2, 0.9, T)
        for e, o in zip(exact, oracle):
            assert torch.allclose(e, o, atol=1e-12)
            ge = torch.autograd.grad(e, (t1, t2), retain_graph=True)
            go = torch.autograd.grad(o, (t1, t2), retain_graph=True)
            for x, y in zip(ge, go):
                assert torch.allclose(x, y, atol=1e-12)


def test_values_finite_converges_to_the_closed_form():
    """|V_T - V| <= gamma^T * 3 / (1 - gamma) (|r| <= 3), shrinking to rounding; gamma = 1 is
    the plain finite sum."""
    t1, t2 = random_thetas(7)
    v = torch.stack(values(t1, t2, 0.96))
    for T in [10, 50, 150, 400]:
        gap = (torch.stack(values_finite(t1, t2, 0.96, T)) - v).abs().max()
        assert gap <= 0.96 ** T * 3 / 0.04 + 1e-12
    assert torch.allclose(torch.stack(values_finite(t1, t2, 0.96, 1500)), v, atol=1e-12)
    assert torch.allclose(torch.stack(values_finite(ALL_D, ALL_D, 1.0, 7)),
                          torch.tensor([-14.0, -14.0]))
    assert torch.stack(values_finite(t1, t2, 0.9, 0)).abs().max() == 0


def test_values_are_batched_over_leading_dims():
    g = torch.Generator().manual_seed(3)
    t1, t2 = torch.randn(4, 3, 5, generator=g), torch.randn(3, 5, generator=g)   # broadcast
    v1, v2 = values(t1, t2)
    f1, f2 = values_finite(t1, t2, 0.96, 20)
    assert v1.shape == f1.shape == (4, 3)
    for i, j in itertools.product(range(4), range(3)):
        w1, w2 = values(t1[i, j], t2[j])
        assert torch.allclose(v1[i, j], w1) and torch.allclose(v2[i, j], w2)
        w1, w2 = values_finite(t1[i, j], t2[j], 0.96, 20)
        assert torch.allclose(f1[i, j], w1) and torch.allclose(f2[i, j], w2)


# ---- exact learners --------------------------------------------------------------------------
def test_naive_and_lola_steps_are_their_formulas():
    t1, t2 = random_thetas(11)
    lr, eta = 0.7, 0.4

    def v(i):
        return lambda a, b: values(a, b)[i]

    J1 = torch.autograd.functional.jacobian(v(0), (t1, t2))
    J2 = torch.autograd.functional.jacobian(v(1), (t1, t2))
    n1, n2 = naive_step(t1, t2, lr)
    assert torch.allclose(n1, t1 + lr * J1[0]) and torch.allclose(n2, t2 + lr * J2[1])
    # lookahead: grad_1 of V1(theta1, theta2 + eta grad_2 V2(theta1, theta2)), by the chain
    # rule written out: grad_1 V1' + eta (grad_2 grad_1 V2)^T grad_2 V1' at the lookahead point
    ahead = t2 + eta * J2[1]
    Ja = torch.autograd.functional.jacobian(v(0), (t1, ahead))
    H2 = torch.autograd.functional.hessian(v(1), (t1, t2))   # H2[1][0][p, q]: d2/dt2_p dt1_q
    want1 = t1 + lr * (Ja[0] + eta * H2[1][0].T @ Ja[1])
    ahead1 = t1 + eta * J1[0]
    Jb = torch.autograd.functional.jacobian(v(1), (ahead1, t2))
    H1 = torch.autograd.functional.hessian(v(0), (t1, t2))
    want2 = t2 + lr * (Jb[1] + eta * H1[0][1].T @ Jb[0])
    l1, l2 = lola_step(t1, t2, lr, eta)
    assert torch.allclose(l1, want1) and torch.allclose(l2, want2)
    # the LOLA paper's Taylor form: grad_1 V1 + eta (grad_2 grad_1 V2)^T grad_2 V1, here
    k1, k2 = lola_step(t1, t2, lr, eta, form="taylor")
    assert torch.allclose(k1, t1 + lr * (J1[0] + eta * H2[1][0].T @ J1[1]))
    assert torch.allclose(k2, t2 + lr * (J2[1] + eta * H1[0][1].T @ J2[0]))
    # eta = 0 is the naive learner
    for form in ("lookahead", "taylor"):
        z1, z2 = lola_step(t1, t2, lr, 0.0, form=form)
        assert torch.allclose(z1, n1) and torch.allclose(z2, n2)
    # to first order in eta the lookahead is the Taylor form plus the term the LOLA paper drops,
    # eta (grad_2 grad_1 V1)^T grad_2 V2 (its stop-gradient on grad_2 V1): the gap to that
    # full expansion shrinks as eta^2, the gap to the paper's form as eta
    def gaps(eta):
        full = t1 + (J1[0] + eta * (H2[1][0].T @ J1[1] + H1[1][0].T @ J2[1]))
        ahead = lola_step(t1, t2, 1.0, eta)[0]
        return (ahead - full).norm(), (ahead - lola_step(t1, t2, 1.0, eta, form="taylor")[0]).norm()

    (full_a, paper_a), (full_b, paper_b) = gaps(1e-3), gaps(5e-4)
    assert 3.9 < float(full_a / full_b) < 4.1 and 1.9 < float(paper_a / paper_b) < 2.1


def test_naive_learners_defect_and_lola_learners_cooperate():
    """The LOLA paper's exact IPD (lr 1, opponent step 1, gamma 0.96, theta ~ N(0, 1), 200
    updates), 10 seeds: naive learners end in mutual defection (-2 per step), LOLA near mutual
    cooperation (-1) with a tit-for-tat-like policy; both forms of LOLA."""
    kw = dict(seeds=10, steps=LOLA_PAPER["steps"], lr=LOLA_PAPER["lr"], eta=LOLA_PAPER["eta"],
              gamma=LOLA_PAPER["gamma"], init_std=LOLA_PAPER["init_std"], seed=0)
    naive = train_exact("naive", **kw)
    assert naive.returns.shape == (201, 10, 2) and naive.p_cooperate.shape == (201, 10, 2, 5)
    joint = naive.returns[-1].mean(-1)
    assert joint.max() < -1.99
    assert naive.p_cooperate[-1][..., [0, 4]].max() < 0.05     # defect at start and after DD
    for form in ("lookahead", "taylor"):
        lola = train_exact("lola", form=form, **kw)
        joint = lola.returns[-1].mean(-1)
        assert joint.mean() > -1.1 and joint.median() > -1.01, form
        pc = lola.p_cooperate[-1].mean((0, 1))                 # start, CC, CD, DC, DD
        assert pc[1] > 0.9 and pc[3] > 0.8 and pc[2] < 0.3 and pc[4] < 0.2, (form, pc)
    first = train_exact("lola", seeds=10, steps=0, seed=0)
    assert torch.equal(first.returns, naive.returns[:1])        # same starts
    assert torch.allclose(first.p_cooperate[0, :, 0], p_cooperate(first.theta1))


# ---- the hand-written DiCE estimator ---------------------------------------------------------
def test_dice_value_is_the_sampled_discounted_return():
    t1, t2 = random_thetas(2)
    g = torch.Generator().manual_seed(5)
    L = sample_dice(t1, t2, 64, 9, 0.9, g)
    g = torch.Generator().manual_seed(5)
    _, _, r1, r2, a1, a2 = rollout(t1, t2, 64, 9, g)
    disc = 0.9 ** torch.arange(9.0)[:, None]
    for Li, r in zip(L, (r1, r2)):
        assert torch.allclose(Li, (disc * r).sum(0).mean())
    assert torch.equal(r1, torch.tensor(PAYOFF1)[2 * a1 + a2])
    assert set(a1.unique().tolist()) <= {0, 1}
    for baseline in ("loo", "none"):   # the baseline term's value is exactly 0
        g = torch.Generator().manual_seed(5)
        assert torch.allclose(sample_dice(t1, t2, 64, 9, 0.9, g, baseline)[0], L[0])


def derivative_estimates(t1, t2, T, gamma, batch, K, seed, baseline, estimator=None):
    """K independent estimates (each from one batch) of [grad_1 V1, grad_2 V1, grad_1 V2,
    grad_2 V2, grad_1 grad_2 V1 (rows: theta2), grad_1 grad_2 V2, grad_1 grad_1 V1], flat."""
    g, out = torch.Generator().manual_seed(seed), []
    for _ in range(K):
        a, b = t1.detach().requires_grad_(), t2.detach().requires_grad_()
        L1, L2 = (estimator or sample_dice)(a, b, batch, T, gamma, g, baseline)
        g11, g12 = grads(L1, (a, b))
        g21, g22 = grads(L2, (a, b))
        mixed1, mixed2, own1 = (rows(g, a) for g in (g12, g22, g11))
        out.append(torch.cat([x.detach().flatten() for x in
                              (g11, g12, g21, g22, mixed1, mixed2, own1)]))
    return torch.stack(out)


def grads(objective, thetas):
    """Differentiable gradients (zeros, constant, where the objective does not reach one)."""
    out = torch.autograd.grad(objective, thetas, create_graph=True, allow_unused=True)
    return [torch.zeros(5) if g is None else g for g in out]


def rows(grad, theta):
    """The 5 x 5 block d grad[p] / d theta[q] (zeros where grad does not depend on theta)."""
    if not grad.requires_grad:
        return torch.zeros(5, 5)
    block, = torch.autograd.grad(grad, theta, torch.eye(5), retain_graph=True,
                                 is_grads_batched=True, allow_unused=True)
    return torch.zeros(5, 5) if block is None else block


def exact_derivatives(t1, t2, T, gamma):
    def v(i):
        return lambda a, b: values_finite(a, b, gamma, T)[i]

    J1 = torch.autograd.functional.jacobian(v(0), (t1, t2))
    J2 = torch.autograd.functional.jacobian(v(1), (t1, t2))
    H1 = torch.autograd.functional.hessian(v(0), (t1, t2))   # H[i][j][p, q]: d2/dx_i,p dx_j,q
    H2 = torch.autograd.functional.hessian(v(1), (t1, t2))
    return torch.cat([x.flatten() for x in
                      (J1[0], J1[1], J2[0], J2[1], H1[1][0], H2[1][0], H1[0][0])])


# 95 entries from K = 48 batches: P(|t_47| > 4.5) ~ 4e-5 per entry, ~ 0.4% for the family
K, BOUND = 48, 4.5


@pytest.mark.parametrize("baseline", ["loo", "none"])
def test_dice_derivatives_are_unbiased_to_second_order(baseline):
    """Both agents' own and cross gradients, the mixed blocks grad_1 grad_2 V_i (the LOLA
    term) and agent 1's own Hessian, each against the exact finite-horizon derivative: every
    entry within BOUND standard errors, and the standard errors small against the exact
    entries (so the test could see a wrong estimator: see the next test)."""
    T, gamma = 7, 0.9
    t1, t2 = random_thetas(21)
    est = derivative_estimates(t1, t2, T, gamma, 1024, K, 0, baseline)
    exact = exact_derivatives(t1, t2, T, gamma)
    mean, se = est.mean(0), est.std(0) / math.sqrt(K)
    z = (mean - exact) / se
    assert z.abs().max() < BOUND, (z.abs().max(), z.abs().argmax())
    first, second = slice(0, 20), slice(20, 95)
    assert se[first].max() < 0.1 * exact[first].abs().max()
    assert se[second].max() < 0.1 * exact[second].abs().max()


def test_the_z_test_catches_estimators_that_are_right_to_first_order_only():
    """Two surrogates with the right first derivatives, each wrong at second order, fail the
    same z-test by a wide margin: the score-function surrogate sum_t lp_t * stop(return to go)
    (its own Hessian misses the score products), and a DiCE objective with only the agent's
    own log-probabilities in its magic boxes (no cross or mixed derivatives)."""
    def first_order(a, b, batch, T, gamma, g, baseline):
        lp1, lp2, r1, r2, _, _ = rollout(a, b, batch, T, g)
        disc = gamma ** torch.arange(T, dtype=r1.dtype)[:, None]
        return tuple(((lp1 + lp2) * (disc * r).flip(0).cumsum(0).flip(0)).sum(0).mean()
                     for r in (r1, r2))

    def own_only(a, b, batch, T, gamma, g, baseline):
        lp1, lp2, r1, r2, _, _ = rollout(a, b, batch, T, g)
        return dice_objective(lp1, r1, gamma, baseline), dice_objective(lp2, r2, gamma, baseline)

    T, gamma = 7, 0.9
    t1, t2 = random_thetas(21)
    exact = exact_derivatives(t1, t2, T, gamma)
    est = derivative_estimates(t1, t2, T, gamma, 1024, 16, 1, "none", first_order)
    z = (est.mean(0) - exact) / (est.std(0) / 4).clamp(min=1e-12)
    assert z[:20].abs().max() < BOUND                  # first order: right
    assert z[70:95:6].abs().min() > 3 * BOUND          # every diagonal of grad_1 grad_1 V1
    est = derivative_estimates(t1, t2, T, gamma, 1024, 16, 1, "loo", own_only)
    z = (est.mean(0) - exact) / (est.std(0) / 4).clamp(min=1e-12)
    assert z[5:10].abs().max() > 3 * BOUND             # grad_2 V1, estimated as 0
    assert z[20:45].abs().max() > 3 * BOUND            # grad_1 grad_2 V1, estimated as 0


def test_the_leave_one_out_baseline_reduces_the_variance():
    T, gamma = 7, 0.9
    t1, t2 = random_thetas(21)
    var = {b: derivative_estimates(t1, t2, T, gamma, 256, 12, 2, b).var(0)
           for b in ("loo", "none")}
    assert var["loo"][:20].sum() < 0.5 * var["none"][:20].sum()


# ---- bad input -------------------------------------------------------------------------------
def test_bad_input_raises_scg_errors():
    t = torch.zeros(5)
    cases = [lambda: values(torch.zeros(4), t), lambda: values(t, t, 1.0),
             lambda: values(t, t, -0.1), lambda: values_finite(t, t, 0.9, -1),
             lambda: values_finite(t, t, 0.9, 2.5), lambda: lola_step(t, t, form="exact"),
             lambda: train_exact("selfish"), lambda: train_exact("naive", seeds=0),
             lambda: sample_dice(t, t, 1, 5), lambda: sample_dice(t, t, 8, 5, baseline="mean"),
             lambda: sample_dice(torch.zeros(2, 5), t, 8, 5), lambda: sample_dice(t, t, 8, 0)]
    for case in cases:
        with pytest.raises(scg.ScgError):
            case()


# ---- the benchmark script --------------------------------------------------------------------
def test_dice_benchmark_runs_its_hand_written_row(capsys):
    sys.path.insert(0, str(ROOT))
    from benchmarks import dice

    assert dice.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "hand-written torch" in out and "ms" in out
