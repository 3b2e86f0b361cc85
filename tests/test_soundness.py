"""Soundness by construction (issue 14; design.md section 3.4): for every model, the estimator's
expected gradient equals the exact gradient of J, or scg raises an ``ScgError`` naming the
site before a gradient is used.

The oracles here are written without scg. Each model has a twin in plain torch (a *world*
function) that draws every latent value through :class:`World`; :func:`enumerate_world` runs it
once per joint value, giving p(tau) and the return by hand from the same parameters, so
``J = sum_tau p(tau) R(tau)`` and autograd gives the exact grad J. The estimator's expectation
``E[grad(-loss)] = sum_tau p(tau) grad(-loss(tau))`` is computed independently too: each
joint value is forced into the estimator's run by :class:`Force` (a plain Pyro handler that sets
latent sample sites without making them observed) and the *same* estimator object is called
for every tau, the first call being the run most likely to mislead a plan cached from it (an
episode that ends at step 0, the branch not taken, the other task). A second pass, with a fresh
estimator, goes through the values in reverse order.
"""

import functools
import pickle
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

import scg

RTOL = 1e-8  # float64


# ---- forcing values into scg's run ---------------------------------------------------------

class Unforced(AssertionError):
    """The model drew a latent value the oracle did not: the oracle is not the model's twin."""


class Force(Messenger):
    """Set every latent Pyro sample site to ``values[name]`` (not observed: scores remain).

    Entered *outside* the network's own run context, so it sees the final site names
    (``name@t`` inside ``scg.steps``). Values are index tensors; each is cast to the dtype of
    the site's support and reshaped to its batch shape, as a fresh tensor every call.
    """

    def __init__(self, values):
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg):
        name, fn = msg["name"], msg["fn"]
        if msg["is_observed"] or isinstance(fn, _Subsample):  # a plate's own index site
            return
        if name not in self.values:
            raise Unforced(f"the oracle drew no value for latent site {name!r}")
        ref = fn.enumerate_support(expand=False)
        v = torch.as_tensor(self.values[name]).to(device=ref.device, dtype=ref.dtype)
        msg["value"] = v.reshape(fn.batch_shape).clone()
        msg["done"] = True


def forced(model):
    """``model`` (an ``@scg.network`` function) run under ``Force(wrapper.values)``; it keeps
    whatever marks ``scg.network`` puts on a function, so ``scg.compile`` accepts it."""
    values = {}

    def wrapper(*args, **kwargs):
        with Force(values):
            return model(*args, **kwargs)

    functools.update_wrapper(wrapper, model)
    wrapper.values = values
    return wrapper


# ---- the plain-torch oracle -----------------------------------------------------------------

class _Branch(Exception):
    def __init__(self, k):
        super().__init__(k)
        self.k = k


class World:
    """One trajectory of a plain-torch twin: ``draw`` follows a prefix of choices and records
    the probability of each (with its gradient) and the value drawn, by site name and index."""

    def __init__(self, prefix):
        self.prefix, self.i, self.p, self.draws = prefix, 0, 1.0, {}

    def draw(self, name, probs, index=()):
        """An index drawn from ``probs`` (a 1-d tensor) for element ``index`` of site ``name``."""
        if self.i == len(self.prefix):
            raise _Branch(len(probs))
        k = self.prefix[self.i]
        self.i += 1
        self.p = self.p * probs[k]
        self.draws.setdefault(name, {})[tuple(index)] = k
        return k

    def bern(self, name, logit, index=()):
        p = torch.sigmoid(logit)
        return self.draw(name, torch.stack([1 - p, p]), index)


@dataclass
class Tau:
    values: dict       # site name -> index tensor of the site's batch shape
    p: torch.Tensor    # p(tau), differentiable in the parameters
    ret: object        # R(tau), the discounted, masked, episode-averaged return


def _assemble(draws):
    out = {}
    for name, d in draws.items():
        if list(d) == [()]:
            out[name] = torch.tensor(d[()])
            continue
        shape = [max(i[j] for i in d) + 1 for j in range(len(next(iter(d))))]
        t = torch.zeros(shape, dtype=torch.long)
        for i, k in d.items():
            t[i] = k
        out[name] = t
    return out


def enumerate_world(world):
    """Every joint value of ``world(w)``'s draws, depth first (choice 0 first)."""
    out, stack = [], [[]]
    while stack:
        prefix = stack.pop()
        w = World(prefix)
        try:
            ret = world(w)
        except _Branch as b:
            stack.extend(prefix + [k] for k in reversed(range(b.k)))
            continue
        out.append(Tau(_assemble(w.draws), w.p, ret))
    return out


def flat_grad(y, params):
    if not isinstance(y, torch.Tensor) or not y.requires_grad:
        return torch.cat([torch.zeros_like(p).flatten() for p in params]).double()
    gs = torch.autograd.grad(y, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for g, p in zip(gs, params)]).double()


def exact_gradient(taus, params):
    total = sum(float(t.p.detach()) for t in taus)
    assert abs(total - 1.0) < 1e-9, f"oracle probabilities sum to {total}, not 1"
    J = sum(t.p * t.ret for t in taus)
    return flat_grad(J, params)


def expected_gradient(est, model, params, taus, args=(), kwargs=None, first=None):
    """``sum_tau p(tau) grad(-loss(tau))``, one call of ``est`` per tau (``model`` is the
    ``forced`` model ``est`` was compiled from). ``first``: ``(tau, args)`` of a call made
    before the others, whose gradient is not counted (the run the plan is derived from)."""
    kwargs = kwargs or {}
    if first is not None:
        model.values.clear()
        model.values.update(first[0].values)
        est(*first[1], **kwargs)
    total = 0.0
    for tau in taus:
        model.values.clear()
        model.values.update(tau.values)
        out = est(*args, **kwargs)
        total = total + float(tau.p.detach()) * flat_grad(-out.loss, params)
    return total


def assert_close(estimate, exact, rtol, what=""):
    err = (estimate - exact).norm().item() / exact.norm().item()
    assert err <= rtol, (f"{what}: estimator's expected gradient {estimate.tolist()} != exact "
                         f"{exact.tolist()} (relative error {err:.3g})")


def assert_exact(model, params, world, args=(), kwargs=None, first=None, rtol=RTOL, **options):
    """The estimator of ``model`` is exact in expectation: two passes over every tau of
    ``world`` (the model's plain-torch twin), one estimator each. Pass 1 starts with ``first``
    (default: the first tau, all choices 0); pass 2 goes in reverse order. Returns grad J."""
    taus = enumerate_world(world)
    G = exact_gradient(taus, params)
    assert G.norm() > 1e-6, "degenerate test: the exact gradient is zero"
    opts = {"baseline": "none", **options}
    first = first if first is not None else (taus[0], args)
    for order, start in (("forward", first), ("reverse", None)):
        m = forced(model)
        est = scg.compile(m, **opts)
        seq = taus if order == "forward" else taus[::-1]
        E = expected_gradient(est, m, params, seq, args, kwargs, first=start)
        assert_close(E, G, rtol, f"{order} pass")
    return G


def exact_or_named_error(fn, site_name):
    """Run ``fn`` (a comparison with the exact gradient); an ``ScgError`` instead is a pass only
    if its message names ``site_name`` (a string, or a tuple of which one must appear).
    Returns the error, or None when the comparison ran and passed."""
    names = (site_name,) if isinstance(site_name, str) else tuple(site_name)
    try:
        fn()
    except scg.ScgError as e:
        assert any(n in str(e) for n in names), f"ScgError does not name {names}: {e}"
        return e
    return None


def monte_carlo_gradient(est, params, args=(), batches=20, first_args=None):
    """The statistical form: the mean of grad(-loss) over ``batches`` sampled calls (each the
    mean over its ``scg.episodes`` plate) and its standard error from the per-call gradients.
    Unforced, so the runs take scg's own (fast) path."""
    if first_args is not None:
        est(*first_args)
    gs = torch.stack([flat_grad(-est(*args).loss, params) for _ in range(batches)])
    return gs.mean(0), gs.std(0) / batches ** 0.5


def assert_statistically_close(mean, se, exact, z=4.0):
    zs = (mean - exact).abs() / se.clamp_min(1e-12)
    assert (zs < z).all(), (f"Monte Carlo gradient {mean.tolist()} +- {se.tolist()} != exact "
                            f"{exact.tolist()} (z = {zs.tolist()})")


def p_(*x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype, requires_grad=True)


# ---- Hole 1: a cached plan outlives the structure it was derived from ---------------------

TH_A = (0.4, 0.2, -0.1)  # exact gradient about [0.448, 0.233, 0.099] at gamma = 1


def alive_model(th, short_circuit=True):
    """(a) one environment stepped while its episode is alive: a 0 ends the episode.

    ``short_circuit``: ``alive = alive and int(a) == 1``, so after the episode ends no value
    escapes (int(a) is not evaluated): which sites escape depends on the run. Otherwise
    ``alive = int(a) == 1`` escapes a at every step (the masks keep the episode finished)."""

    @scg.network
    def model():
        with scg.episodes(1):
            alive = True
            for t in scg.steps(3):
                a = scg.message("a", dist.Bernoulli(logits=th[t:t + 1]), coagent="pi")
                r = 0.0
                if alive:
                    r = 1.0 if int(a) == 1 else -0.2
                alive = (alive and int(a) == 1) if short_circuit else int(a) == 1
                scg.reward("r", torch.tensor([r]))
                scg.done(torch.tensor([not alive]))
    return model


def alive_world(th, gamma=1.0):
    def world(w):
        ret, finished = 0.0, False
        for t in range(3):
            k = w.bern(f"a@{t}", th[t], (0,))
            if not finished:  # costs after scg.done are masked
                ret = ret + gamma ** t * (1.0 if k == 1 else -0.2)
            finished = finished or k == 0
        return ret
    return world


def alive_dp(th, gamma=1.0):
    """The same J by a dynamic programme: J = sum_t gamma^t P(alive at t) E[r_t | alive]."""
    p = torch.sigmoid(th)
    J, alive = 0.0, 1.0
    for t in range(3):
        J = J + gamma ** t * alive * (1.2 * p[t] - 0.2)
        alive = alive * p[t]
    return flat_grad(J, [th])


def test_alive_oracle_matches_dynamic_programme():
    th = p_(*TH_A)
    G = exact_gradient(enumerate_world(alive_world(th)), [th])
    assert torch.allclose(G, alive_dp(th), rtol=1e-12)
    assert torch.allclose(G, torch.tensor([0.448, 0.233, 0.099]), atol=1e-3)


@pytest.mark.parametrize("short_circuit", [True, False], ids=["short_circuit", "always_escapes"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_alive_episode_first_run_ends_at_step_0(gamma, short_circuit):
    """(a) The first analysed run is the episode that ends at step 0 (a@0 = 0)."""
    th = p_(*TH_A)
    world = alive_world(th, gamma)
    taus = enumerate_world(world)
    assert taus[0].values["a@0"].tolist() == [0]
    G = assert_exact(alive_model(th, short_circuit), [th], world, gamma=gamma)
    assert torch.allclose(G, alive_dp(th, gamma), rtol=1e-12)


@pytest.mark.parametrize("first_task,task", [(0, 1), (1, 0)])
def test_wiring_chosen_by_python_argument(first_task, task):
    """(b) The reward reads a or b by a Python argument: after est(N, 0), est(N, 1) credits b."""
    tha, thb = p_(0.3), p_(-0.5)

    @scg.network
    def model(N, task):
        with scg.episodes(N):
            a = scg.message("a", dist.Bernoulli(logits=tha.expand(N)), coagent="A")
            b = scg.message("b", dist.Bernoulli(logits=thb.expand(N)), coagent="B")
            scg.reward("r", a if task == 0 else b)

    def world_for(task):
        def world(w):
            ret = 0.0
            for i in range(2):
                ka = w.bern("a", tha[0], (i,))
                kb = w.bern("b", thb[0], (i,))
                ret = ret + (ka if task == 0 else kb) / 2
            return ret
        return world

    first = (enumerate_world(world_for(first_task))[0], (2, first_task))
    G = assert_exact(model, [tha, thb], world_for(task), args=(2, task), first=first)
    assert abs(G[task]) > 0.1 and abs(G[1 - task]) < 1e-12  # only the coagent the task reads


def test_wiring_chosen_by_python_argument_monte_carlo():
    """(b) in the statistical form, on scg's own path: 20 calls of 1000 episodes after one call
    with the other task; |error| / standard error < 4 for each parameter."""
    tha, thb = p_(0.3), p_(-0.5)

    @scg.network
    def model(N, task):
        with scg.episodes(N):
            a = scg.message("a", dist.Bernoulli(logits=tha.expand(N)), coagent="A")
            b = scg.message("b", dist.Bernoulli(logits=thb.expand(N)), coagent="B")
            scg.reward("r", a if task == 0 else b)

    exact = flat_grad(torch.sigmoid(thb).sum(), [tha, thb])  # J = P(b = 1) for task 1
    est = scg.compile(model, baseline="none")
    mean, se = monte_carlo_gradient(est, [tha, thb], (1000, 1), first_args=(1000, 0))
    assert_statistically_close(mean, se, exact)


def test_branch_on_escaped_value():
    """(c) x = c if a.item() == 1 else 0: the reward reads c only where a == 1; the first
    analysed run has a == 0."""
    th = p_(0.2, -0.3)

    @scg.network
    def model():
        with scg.episodes(1):
            c = scg.message("c", dist.Bernoulli(logits=th[0:1]), coagent="C")
            a = scg.message("a", dist.Bernoulli(logits=th[1:2]), coagent="A")
            x = c if a.item() == 1 else torch.zeros(1)
            scg.reward("r", 2.0 * x - 0.5 * a)

    def world(w):
        kc = w.bern("c", th[0], (0,))
        ka = w.bern("a", th[1], (0,))
        return 2.0 * (kc if ka == 1 else 0) - 0.5 * ka

    assert enumerate_world(world)[0].values["a"].tolist() == [0]
    G = assert_exact(model, [th], world)
    assert G[0] != 0


@pytest.mark.parametrize("short_circuit", [True, False], ids=["short_circuit", "always_escapes"])
def test_check_is_a_sound_oracle(short_circuit):
    """(d) scg.check on (a) reports OK, with the exact gradient, whatever run it sees first; and
    it does not report OK for an estimator biased by design (no gamma^t on the score term)."""
    th = p_(*TH_A)
    model = alive_model(th, short_circuit)
    for seed in range(6):
        torch.manual_seed(seed)
        pyro.set_rng_seed(seed)
        report = scg.check(model)
        assert report.ok, f"seed {seed}:\n{report}"
        assert torch.allclose(report.exact.double(), alive_dp(th), rtol=1e-10), f"seed {seed}"
    for seed in range(6):
        torch.manual_seed(seed)
        pyro.set_rng_seed(seed)
        report = scg.check(model, gamma=0.9, discount_score=False)
        assert not report.ok, f"seed {seed}: a biased estimator passed:\n{report}"
        assert torch.allclose(report.exact.double(), alive_dp(th, 0.9), rtol=1e-10)


# ---- Hole 2: escapes that leak ---------------------------------------------------------------

ONE = torch.ones(1, dtype=torch.float64)


def _quiet(f):
    """Run ``f`` with warnings off (torch warns when a tensor is copy-constructed)."""
    @functools.wraps(f)
    def g(m):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return f(m)
    return g


def _number(s):
    return float(re.search(r"\[\s*([-+0-9.e]+)", s).group(1))


def _from_storage(m):
    t = torch.empty(0, dtype=m.dtype)
    t.set_(m.untyped_storage(), m.storage_offset(), m.shape, m.stride())
    return t.clone()


# each rebuilds m (a sampled Bernoulli value of shape (1,)) as a float tensor of shape (1,)
ESCAPES = {
    "torch.tensor": _quiet(lambda m: torch.tensor(m)),
    "torch.as_tensor": lambda m: torch.as_tensor(m, dtype=torch.float64),
    "in": lambda m: torch.tensor([1.0 if 1 in m else 0.0]),
    "torch.equal": lambda m: torch.tensor([1.0 if torch.equal(m, ONE) else 0.0]),
    "nonzero.shape": lambda m: torch.tensor([float(m.nonzero().shape[0])]),
    "new_tensor": _quiet(lambda m: torch.zeros(1).new_tensor(m)),
    "torch.asarray": lambda m: torch.asarray(m),
    "torch.allclose": lambda m: torch.tensor([1.0 if torch.allclose(m.double(), ONE) else 0.0]),
    "is_nonzero": lambda m: torch.tensor([1.0 if m.is_nonzero() else 0.0]),
    "len(unique)": lambda m: torch.tensor([len(torch.unique(torch.cat([m, torch.zeros(1)])))
                                           - 1.0]),
    "format": lambda m: torch.tensor([_number(f"{m}")]),
    "str": lambda m: torch.tensor([_number(str(m))]),
    "repr": lambda m: torch.tensor([_number(repr(m))]),
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "dlpack": lambda m: torch.from_dlpack(m),
    "storage": _from_storage,
}


@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_escape(escape):
    """Hole 2: the reward is computed from a sampled message only through the escape."""
    th = p_(0.3)
    f = ESCAPES[escape]

    @scg.network
    def model():
        with scg.episodes(1):
            m = scg.message("sig", dist.Bernoulli(logits=th), coagent="f")
            x = f(m)
            scg.reward("r", 2.0 * x.double().reshape(1) - 0.5)

    def world(w):
        return 2.0 * w.bern("sig", th[0], (0,)) - 0.5

    exact_or_named_error(lambda: assert_exact(model, [th], world), "sig")


def test_in_place_edit_of_a_sampled_value():
    """Hole 2: m.clamp_(max=0) after the reward read m: the site's log-probability must still
    be that of the value drawn (or an ScgError naming the site)."""
    th = p_(0.3, -0.4)

    @scg.network
    def model():
        with scg.episodes(1):
            m = scg.message("edited", dist.Bernoulli(logits=th[0:1]), coagent="f")
            r = 2.0 * m - 0.5
            m.clamp_(max=0)
            a = scg.message("after", dist.Bernoulli(logits=th[1:2] + m), coagent="g")
            scg.reward("r", r + a)

    def world(w):
        km = w.bern("edited", th[0], (0,))
        ka = w.bern("after", th[1], (0,))  # reads the edited value, 0
        return 2.0 * km - 0.5 + ka

    exact_or_named_error(lambda: assert_exact(model, [th], world), "edited")


# ---- Hole 3 -----------------------------------------------------------------------------------

def test_scalar_reward_inside_episodes():
    """(e) A scalar reward in scg.episodes(2) couples the episodes: an ScgError, or exact with
    the reward broadcast to every episode (J = E[mean_i a_i])."""
    th = p_(0.3, -0.6)

    @scg.network
    def model():
        with scg.episodes(2):
            a = scg.message("a", dist.Bernoulli(logits=th), coagent="f")
            scg.reward("scalar", a.double().mean())

    def world(w):
        ks = [w.bern("a", th[i], (i,)) for i in range(2)]
        return sum(ks) / 2

    exact_or_named_error(lambda: assert_exact(model, [th], world), "scalar")


@pytest.mark.parametrize("site", ["noise", "raw"])
def test_parameter_inside_a_site_without_score(site):
    """(f) An scg.env site (``noise``) or a raw pyro.sample site (``raw``, not an scg site)
    whose distribution has a parameter J depends on: its gradient is exact (it has no score
    term) or an ScgError names the site."""
    th, w_ = p_(0.2), p_(-0.7)
    draw = scg.env if site == "noise" else pyro.sample

    @scg.network
    def model():
        with scg.episodes(1):
            z = draw(site, dist.Bernoulli(logits=w_))
            a = scg.message("a", dist.Bernoulli(logits=th + z), coagent="f")
            scg.reward("r", a + z)

    def world(w):
        kz = w.bern(site, w_[0], (0,))
        ka = w.bern("a", th[0] + kz, (0,))
        return ka + kz

    exact_or_named_error(lambda: assert_exact(model, [th, w_], world), site)


@pytest.mark.parametrize("where", ["outside_plates", "extra_dim"])
def test_batch_dimension_without_plate(where):
    """(g) A site batch dimension that belongs to no plate is an ScgError naming the site."""
    th = p_(0.1, 0.2, 0.3)

    @scg.network
    def model():
        if where == "outside_plates":
            m = scg.message("wide", dist.Bernoulli(logits=th), coagent="f")
            scg.reward("r", m.sum())
        else:
            with scg.episodes(3):
                m = scg.message("wide", dist.Bernoulli(logits=th.expand(2, 3)), coagent="f")
                scg.reward("r", m.sum(0))

    with pytest.raises(scg.ScgError, match="wide"):
        scg.compile(model)()


def test_coagent_named_like_an_execution_coagent():
    """(h) A user coagent named 'a.exec' beside an asynchronous message 'a' with execute=0.5."""
    th = p_(0.1, 0.2)

    @scg.network
    def model():
        with scg.episodes(1):
            for _t in scg.steps(2):
                a = scg.message("a", dist.Bernoulli(logits=th[0:1]), coagent="f",
                                execute=torch.tensor([0.5]))
                b = scg.message("b", dist.Bernoulli(logits=th[1:2]), coagent="a.exec")
                scg.reward("r", a + b)

    with pytest.raises(scg.ScgError, match=r"a\.exec"):
        scg.compile(model)()


def test_no_plate_and_a_cost_outside_every_plate():
    """(i) No plate at all, a weight-decay cost: works, and the gradient is exact."""
    w_ = p_(0.4, -0.3)

    @scg.network
    def model():
        m = scg.message("m", dist.Bernoulli(logits=w_[0]), coagent="f")
        a = scg.message("a", dist.Bernoulli(logits=w_[1] * (2 * m - 1)), coagent="f")
        scg.reward("r", a * m + 0.5 * a)
        scg.cost("wd", -0.1 * (w_ ** 2).sum())

    def world(w):
        km = w.bern("m", w_[0])
        ka = w.bern("a", w_[1] * (2 * km - 1))
        return ka * km + 0.5 * ka - 0.1 * (w_ ** 2).sum()

    assert_exact(model, [w_], world)


@pytest.mark.parametrize("model_dtype,np_dtype", [(torch.float32, np.float64),
                                                  (torch.float64, np.float32)])
def test_mixed_float_widths(model_dtype, np_dtype):
    """(j) A float32 model with a float64 numpy reward, and the reverse: exact (to the model's
    precision) or an ScgError naming the site."""
    th = p_(0.3, -0.4, dtype=model_dtype)

    @scg.network
    def model():
        with scg.episodes(1):
            m = scg.message("m", dist.Bernoulli(logits=th[0:1]), coagent="f")
            a = scg.message("a", dist.Bernoulli(logits=th[1:2] + m), coagent="g")
            scg.reward("np_reward", np.array([1.0 if int(a) == 1 else -0.5], dtype=np_dtype))
            scg.reward("t_reward", 0.5 * m)

    def world(w):
        t = th.double()
        km = w.bern("m", t[0], (0,))
        ka = w.bern("a", t[1] + km, (0,))
        return (1.0 if ka == 1 else -0.5) + 0.5 * km

    rtol = 1e-5 if model_dtype == torch.float32 else RTOL
    exact_or_named_error(lambda: assert_exact(model, [th], world, rtol=rtol),
                         ("np_reward", "t_reward"))


def test_environment_keeps_last_action_between_calls():
    """(k) An environment that stores its last action (env.last = a) and reads it in the next
    call: the next call does not raise, and its gradient, given the stored action, is exact."""
    th = p_(0.3, -0.2)

    class Env:
        last = None

        def step(self, a):
            prev = self.last if self.last is not None else torch.zeros(1)
            r = a - 0.3 * (a != prev).double()  # a cost for switching
            self.last = a
            return r

    env = Env()

    @scg.network
    def model():
        with scg.episodes(1):
            for t in scg.steps(2):
                a = scg.message("a", dist.Bernoulli(logits=th[t:t + 1]), coagent="pi")
                scg.reward("r", env.step(a))

    def world_given(prev):
        def world(w):
            ret, last = 0.0, prev
            for t in range(2):
                k = w.bern(f"a@{t}", th[t], (0,))
                ret = ret + k - 0.3 * (k != last)
                last = k
            return ret
        return world

    m = forced(model)
    est = scg.compile(m, baseline="none")
    stored = {}
    for v in (1, 0):  # the first call (analysed) stores the object for v = 1
        tau = next(t for t in enumerate_world(world_given(0)) if t.values["a@1"].item() == v)
        m.values.clear()
        m.values.update(tau.values)
        est()
        stored[v] = env.last
    for v in (1, 0):
        taus = enumerate_world(world_given(v))
        E = 0.0
        for tau in taus:
            env.last = stored[v]
            m.values.clear()
            m.values.update(tau.values)
            E = E + float(tau.p.detach()) * flat_grad(-est().loss, [th])
        assert_close(E, exact_gradient(taus, [th]), RTOL, f"previous action {v}")


def test_done_before_the_last_reward_of_its_step():
    """(l) scg.done(mask) emitted before the step's reward: that step's reward still counts
    (a terminal reward); later steps' costs do not."""
    th = p_(0.5, -0.2, 0.3)

    @scg.network
    def model():
        with scg.episodes(1):
            for t in scg.steps(3):
                a = scg.message("a", dist.Bernoulli(logits=th[t:t + 1]), coagent="pi")
                scg.done(a == 0)
                scg.reward("r", a - 0.5 * (1 - a))

    def world(w):
        ret, finished = 0.0, False
        for t in range(3):
            k = w.bern(f"a@{t}", th[t], (0,))
            if not finished:
                ret = ret + (1.0 if k == 1 else -0.5)
            finished = finished or k == 0
        return ret

    assert_exact(model, [th], world)
