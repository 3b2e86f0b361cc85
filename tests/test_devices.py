"""Every tensor scg makes follows the model's device and dtype (issue 16 §5).

Without a GPU the device half is checked with a trap: the model's tensors are on the CPU and
the *default* device is ``meta`` (tensors without data). A tensor scg makes on the default
device instead of the model's then either fails (``meta`` tensors cannot be read) or ends up on
``meta``; and the gradient must equal the one computed without the trap. On a machine with CUDA
the same models run on the GPU, a steady call under ``torch.cuda.set_sync_debug_mode("error")``
(no host synchronisation on the hot path), and are skipped elsewhere.
"""

import contextlib

import pyro
import pyro.distributions as dist
import pytest
import torch

import scg


def asynchronous(device, dtype):
    """Two units, one asynchronous (an execution probability, held outputs), rewards at every
    step and a predictor: every kind of tensor scg builds per site."""
    th = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1], device=device, dtype=dtype))
    w = torch.nn.Parameter(torch.tensor(0.5, device=device, dtype=dtype))

    @scg.network
    def model(B):
        with scg.episodes(B):
            x = torch.zeros(B, device=device, dtype=dtype)
            for t in scg.steps(3):
                x = scg.message("x", dist.Bernoulli(logits=th[t] + x), coagent="u",
                                execute=torch.sigmoid(th[t]).expand(B), init=0.0)
                y = scg.message("y", dist.Bernoulli(logits=w * x), coagent="v")
                scg.reward("r", x + y)
                scg.predict("p", dist.Normal(w * x, 1.0), obs=y, coagent="v")
    return model, [th, w]


def online(device, dtype):
    theta = torch.nn.Parameter(torch.zeros(4, 2, device=device, dtype=dtype))
    V = torch.nn.Parameter(torch.zeros(4, device=device, dtype=dtype))

    @scg.network
    def walk(s):
        with scg.episodes(s.shape[0]):
            for _ in scg.steps(2):
                scg.value("v", V[s])
                a = scg.message("a", dist.Categorical(logits=theta[s]), coagent="policy")
                s = (s + 2 * a - 1).clamp(0, 3)
                scg.reward("r", (s == 3).to(dtype))
        return s
    return walk, [theta, V]


CASES = [("auto", "mc"), ("avg", "mc"), ("loo", "mc"), ("critic", "mc"), ("none", "td")]


def gradient(case, device, dtype, verify, trap=False, calls=3):
    """The summed gradient of a few calls (same seed), and the outputs' devices and dtypes."""
    baseline, estimator = case
    torch.manual_seed(1)
    if estimator == "td":
        model, params = online(device, dtype)
        est = scg.compile(model, estimator="td", lam=0.9, gamma=0.9, verify=verify)
        args = (torch.zeros(5, dtype=torch.long, device=device),)
    else:
        model, params = asynchronous(device, dtype)
        est = scg.compile(model, baseline=baseline, verify=verify)
        args = (5,)
    est(*args)   # the first call analyses the structure; the trap is on the later ones
    seen = set()
    with _default_device("meta") if trap else contextlib.nullcontext():
        for _ in range(calls):
            out = est(*args)
            if estimator == "td":
                out.loss = out.loss + est.finish().loss
            out.loss.backward()
            seen |= {(x.device.type, x.dtype) for x in [out.loss, out.objective,
                                                         *out.local.values()]}
    return [p.grad.clone() for p in params], seen


@contextlib.contextmanager
def _default_device(device):
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_tensors_follow_the_models_device_not_the_default_one(case, verify):
    plain, _ = gradient(case, "cpu", torch.float64, verify)
    trapped, seen = gradient(case, "cpu", torch.float64, verify, trap=True)
    assert seen == {("cpu", torch.float64)}
    for a, b in zip(plain, trapped):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_tensors_follow_the_models_dtype_not_the_default_one(case):
    """A float32 model under a float64 default dtype (the suite's): the estimate is float32."""
    grads, seen = gradient(case, "cpu", torch.float32, verify=False)
    assert seen == {("cpu", torch.float32)}
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_cuda_gradient_equals_cpu_in_distribution(case):
    """On CUDA the estimate has the same expectation as on the CPU: over many calls the mean
    gradients agree within their standard errors (random streams differ between devices)."""
    a, _ = gradient(case, "cpu", torch.float64, verify=False, calls=400)
    b, seen = gradient(case, "cuda", torch.float64, verify=False, calls=400)
    assert seen == {("cuda", torch.float64)}
    for x, y in zip(a, b):
        assert torch.allclose(x / 400, y.cpu() / 400, atol=0.15)


@cuda
@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_cuda_steady_call_never_waits_for_the_device(case):
    """A steady call and its backward pass make no host synchronisation (validation off:
    torch.distributions' argument checks read the device by design)."""
    baseline, estimator = case
    pyro.enable_validation(False)
    try:
        if estimator == "td":
            model, _ = online("cuda", torch.float32)
            est = scg.compile(model, estimator="td", lam=0.9, verify=False)
            args = (torch.zeros(64, dtype=torch.long, device="cuda"),)
        else:
            model, _ = asynchronous("cuda", torch.float32)
            est = scg.compile(model, baseline=baseline, verify=False)
            args = (64,)
        est(*args).loss.backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            est(*args).loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        pyro.enable_validation(True)


def gridworld_gradient(device, trap=False):
    from scg.models.async_gridworld import Gridworld
    torch.manual_seed(2)
    world = Gridworld(3, 3, 6)
    th = world.units(dtype=torch.float64, device=device)
    est = scg.compile(world.episodes(th), verify=False)
    est(8)
    with _default_device("meta") if trap else contextlib.nullcontext():
        for _ in range(3):
            out = est(8)
            out.loss.backward()
    return [p.grad.clone() for p in th.values() if p.grad is not None], out.loss.device.type


@pytest.mark.slow
def test_the_zoos_gridworld_follows_its_parameters_device():
    plain, _ = gridworld_gradient("cpu")
    trapped, device = gridworld_gradient("cpu", trap=True)
    assert device == "cpu" and len(plain) == 3
    for a, b in zip(plain, trapped):
        assert torch.equal(a, b)
