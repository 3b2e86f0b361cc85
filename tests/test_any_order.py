"""Per-coagent objectives (to=) and any-order surrogates (order="any"), design.md §8, against
exact enumeration: gradients per objective, Hessians, and the first-order equality."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import scg
from networks import REGISTRY

P = torch.tensor([[-1.0, -3.0], [0.0, -2.0]], dtype=torch.float64)


def repeated_pd(split):
    """Two agents over two steps, each reading the other's last action; rewards per agent
    (``split``) or shared."""
    th1 = torch.tensor([0.3, -0.1], dtype=torch.float64, requires_grad=True)
    th2 = torch.tensor([-0.2, 0.4], dtype=torch.float64, requires_grad=True)

    @scg.network
    def pd(n, T=2):
        with scg.episodes(n):
            a1 = a2 = None
            for _ in scg.steps(T):
                l1 = th1[0] if a2 is None else th1[0] + th1[1] * a2
                l2 = th2[0] if a1 is None else th2[0] + th2[1] * a1
                a1 = scg.message("a1", dist.Bernoulli(logits=l1.expand(n)), coagent="A")
                a2 = scg.message("a2", dist.Bernoulli(logits=l2.expand(n)), coagent="B")
                scg.reward("r1", P[a1.long(), a2.long()], to="A" if split else None)
                scg.reward("r2", P[a2.long(), a1.long()], to="B" if split else None)
    return pd, (th1, th2)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("baseline", ["none", "loo"])
def test_any_order_has_the_first_order_gradient(split, baseline):
    pd, params = repeated_pd(split)
    e1 = scg.compile(pd, baseline=baseline, gamma=0.9)
    e2 = scg.compile(pd, baseline=baseline, gamma=0.9, order="any")
    e1(8), e2(8)
    pyro.set_rng_seed(3)
    o1 = e1(8)
    pyro.set_rng_seed(3)
    o2 = e2(8)
    g1 = torch.autograd.grad(o1.loss, params)
    if split:
        g2 = [torch.autograd.grad(o2.local[c], p, retain_graph=True)[0]
              for c, p in zip("AB", params)]
    else:
        g2 = torch.autograd.grad(o2.loss, params)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.allclose(o2.loss, o1.loss)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("baseline", ["none", "loo"])
def test_expected_hessian_equals_exact(split, baseline):
    pd, _ = repeated_pd(split)
    report = scg.check(pd, 2, order=2, baseline=baseline, gamma=0.9)
    assert report.ok, str(report)
    assert report.row("hessian").norm_exact > 1e-3
    if split:
        assert report.row("hessian A").norm_exact != pytest.approx(
            report.row("hessian B").norm_exact)


def test_per_agent_gradient_is_not_the_shared_one():
    """Without to=, each agent climbs V1 + V2; with it, its own V_i (opposite directions here)."""
    pd, (th1, th2) = repeated_pd(True)
    report = scg.check(pd, 2)
    assert report.ok, str(report)
    shared = scg.check(repeated_pd(False)[0], 2)
    assert shared.ok
    assert report.row("A").norm_exact != pytest.approx(shared.row("A").norm_exact)


def test_a_first_order_box_fails_order_2(monkeypatch):
    """check(order=2) has power: a box right to first order only (1 + x - x.detach(), the
    plain score-function surrogate) is a Hessian MISMATCH."""
    from scg.estimators import dice
    monkeypatch.setattr(dice, "box", lambda x: 1 + x - x.detach())
    pd, _ = repeated_pd(True)
    report = scg.check(pd, 2, order=2, gamma=0.9, baseline="none")
    assert not report.ok


def test_order_options_are_checked():
    pd, _ = repeated_pd(True)
    with pytest.raises(scg.ScgError, match="order"):
        scg.compile(pd, order=2)
    with pytest.raises(scg.ScgError, match="estimator='mc'"):
        scg.compile(pd, order="any", estimator="td")
    with pytest.raises(scg.ScgError, match="order='any'"):
        scg.check(pd, 2, order=2, est=scg.compile(pd))


def test_bad_to_is_refused():
    th = torch.zeros((), requires_grad=True)

    @scg.network
    def absent():
        a = scg.message("a", dist.Bernoulli(logits=th), coagent="A")
        scg.reward("r", a, to="B")
    with pytest.raises(scg.ScgError, match="'B', which has no site"):
        scg.compile(absent)()

    @scg.network
    def shared():
        a = scg.message("a", dist.Bernoulli(logits=th), coagent="A")
        b = scg.message("b", dist.Bernoulli(logits=th), coagent="B")
        scg.reward("r", a, to="A")
        scg.reward("s", b, to="B")
    with pytest.raises(scg.ScgError, match="different objectives"):
        scg.compile(shared)()

    @scg.network
    def predictor():
        a = scg.message("a", dist.Bernoulli(logits=th), coagent="A")
        scg.predict("p", dist.Bernoulli(logits=th), obs=a, coagent="A", to="B")
    with pytest.raises(scg.ScgError, match="must be among to="):
        predictor()


class Address(pyro.poutine.messenger.Messenger):
    """Address each cost of a registry network to one coagent (k-th cost name -> coagent k mod
    n; a predictor or labelled cost to its own coagent), as a user's to= would."""

    def __init__(self, coagents):
        super().__init__()
        self.coagents, self.names = coagents, {}

    def _process_message(self, msg):
        infer = msg["infer"]
        if infer.get("scg_role") in ("reward", "cost", "predict"):
            base = infer.get("scg_base", msg["name"])
            own = infer.get("scg_coagent")
            k = self.names.setdefault(base, len(self.names))
            infer["scg_to"] = (own,) if own else (self.coagents[k % len(self.coagents)],)


SPLIT = ["chain", "fork", "collider", "recurrent_steps", "terminating", "async_fixed",
         "async_bit", "environment", "escaping", "replicas"]


def split_objectives(model, args, opts):
    """``model`` with its costs addressed to its coagents in turn (:class:`Address`); skips
    a network with one climbing coagent."""
    est = scg.compile(model, **opts)
    est(*args)
    climbers = sorted({c for c in est.coagents if not c.endswith(".exec")})
    if len(climbers) < 2:
        pytest.skip("one coagent")

    @scg.network
    def split(*a):
        with Address(climbers):
            return model(*a)
    return split


@pytest.mark.parametrize("name", SPLIT)
def test_split_objectives_on_registry_networks(name):
    model, args, opts = REGISTRY[name]()
    report = scg.check(split_objectives(model, args, opts), *args, **opts)
    assert report.ok, str(report)


@pytest.mark.parametrize("per_coagent", [False, True])
def test_trainer_steps_each_objective_on_its_own_surrogate(per_coagent):
    """With to= and order="any" a local loss is J_i's surrogate in every parameter; the Trainer
    steps each agent on its own, so its updates equal the first-order Trainer's."""
    final = []
    for order in (1, "any"):
        pd, params = repeated_pd(True)
        t = scg.Trainer(pd, (8,), optimizer="sgd", lr=0.3, seed=5, baseline="loo", gamma=0.9,
                        per_coagent=per_coagent, progress=False, order=order)
        t.fit(3)
        final.append([p.detach().clone() for p in params])
    assert not torch.equal(final[0][0], torch.tensor([0.3, -0.1], dtype=torch.float64))
    for a, b in zip(*final):
        assert torch.allclose(a, b, atol=1e-12)
