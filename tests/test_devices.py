"""Every tensor scg makes follows the model's device and dtype (issue 16 §5).

Without a GPU the device half is checked with a trap: the model's tensors are on the CPU and
the *default* device is ``meta`` (tensors without data). A tensor scg makes on the default
device instead of the model's then either fails (``meta`` tensors cannot be read) or ends up on
``meta``; and the gradient must equal the one computed without the trap. On a machine with CUDA
the same models run on the GPU, a steady call under ``torch.cuda.set_sync_debug_mode("error")``
(no host synchronisation on the hot path), and are skipped elsewhere. On the CPU the same
promise is checked by a probe (:class:`_HostReads`) that records every value read scg or Pyro
makes in a steady call, with ``scg.core.devices.reads_are_free`` answering as on a GPU.
"""

import contextlib
import os
import sys
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.overrides import TorchFunctionMode

import scg
from scg.core import devices


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


def compiled(case, device, dtype, batch=64, verify=False):
    """A case's estimator on ``device``, its call's arguments and the parameters."""
    baseline, estimator = case
    if estimator == "td":
        model, params = online(device, dtype)
        est = scg.compile(model, estimator="td", lam=0.9, verify=verify)
        return est, (torch.zeros(batch, dtype=torch.long, device=device),), params
    model, params = asynchronous(device, dtype)
    return scg.compile(model, baseline=baseline, verify=verify), (batch,), params


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
    pyro.enable_validation(False)
    try:
        est, args, _ = compiled(case, "cuda", torch.float32)
        est(*args).loss.backward()
        with _no_host_sync():
            est(*args).loss.backward()
    finally:
        pyro.enable_validation(True)


@contextlib.contextmanager
def _no_host_sync():
    """Any host synchronisation inside raises (torch.cuda.set_sync_debug_mode("error"); its
    'prototype feature' warning is expected). The mode is reset whatever happens, so that one
    failure does not fail every later CUDA test."""
    torch.cuda.synchronize()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Synchronization debug mode", UserWarning)
            torch.cuda.set_sync_debug_mode("error")
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


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


@cuda
def test_cuda_the_zoos_gridworld_steady_call_never_waits_for_the_device():
    """The batched asynchronous gridworld (the benchmark's CUDA row) on the GPU: its gradient
    lives on the GPU, is finite, and a steady call with its backward pass makes no host
    synchronisation."""
    from scg.models.async_gridworld import Gridworld
    torch.manual_seed(2)
    world = Gridworld(3, 3, 6)
    th = world.units(dtype=torch.float32, device="cuda")
    pyro.enable_validation(False)
    try:
        est = scg.compile(world.episodes(th), baseline="loo", verify=False)
        est(64).loss.backward()
        with _no_host_sync():
            out = est(64)
            out.loss.backward()
    finally:
        pyro.enable_validation(True)
    grads = [p.grad for p in th.parameters() if p.grad is not None]
    assert out.loss.device.type == "cuda" and grads
    assert all(g.device.type == "cuda" and torch.isfinite(g).all() for g in grads)


@cuda
@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_cuda_verify_mode_agrees_with_the_cached_plan(case):
    """Verify mode (every run analysed afresh) on the GPU gives the cached plan's gradient."""
    plain, _ = gradient(case, "cuda", torch.float64, verify=False)
    checked, seen = gradient(case, "cuda", torch.float64, verify=True)
    assert seen == {("cuda", torch.float64)}
    for a, b in zip(plain, checked):
        assert torch.allclose(a, b)


# Without a GPU: the operations that would make the host wait for a device (they read a
# tensor's values, or size their output by them), seen through torch's function hook, and the
# frame that asked for them. It stands in for set_sync_debug_mode("error") on the CPU, where
# scg's value checks are on by design: ``devices.reads_are_free`` is made to answer as on a GPU.
_READS = {torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__int__,
          torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.__repr__,
          torch.Tensor.__format__, torch.Tensor.numpy, torch.equal, torch.nonzero,
          torch.Tensor.nonzero, torch.argwhere, torch.unique, torch.Tensor.unique,
          torch.masked_select, torch.Tensor.masked_select, torch.bincount,
          torch.Tensor.bincount, torch.repeat_interleave, torch.Tensor.repeat_interleave}
_TORCH = os.path.dirname(torch.__file__)
_WATCHED = (os.path.dirname(scg.__file__), os.path.dirname(pyro.__file__))


class _HostReads(TorchFunctionMode):
    """Records every value read whose innermost caller outside torch is scg or Pyro."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        read = func in _READS or (
            func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__)
            and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                    for i in (args[1] if isinstance(args[1], tuple) else (args[1],))))
        if read:
            f = sys._getframe(1)
            while f is not None and f.f_code.co_filename.startswith(_TORCH):
                f = f.f_back
            if f is not None and f.f_code.co_filename.startswith(_WATCHED):
                self.seen.append(f"{getattr(func, '__name__', func)} at "
                                 f"{f.f_code.co_filename}:{f.f_lineno} ({f.f_code.co_name})")
        return func(*args, **(kwargs or {}))


def _steady_reads(call, monkeypatch):
    """The host reads scg and Pyro make in a steady call (after two warm-up calls), validation
    off, with value reads answered as on a GPU."""
    monkeypatch.setattr(devices, "reads_are_free", lambda tensor: False)
    pyro.enable_validation(False)
    try:
        call()
        call()
        with _HostReads() as reads:
            call()
    finally:
        pyro.enable_validation(True)
    return reads.seen


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_steady_call_reads_no_value_on_the_host(case, monkeypatch):
    est, args, _ = compiled(case, "cpu", torch.float32)
    assert _steady_reads(lambda: est(*args).loss.backward(), monkeypatch) == []


def test_the_zoos_gridworld_and_the_talking_agents_read_no_value_on_the_host(monkeypatch):
    from benchmarks.workloads import TalkingAgents
    from scg.models.async_gridworld import Gridworld
    world = Gridworld(3, 3, 6)
    est = scg.compile(world.episodes(world.units(dtype=torch.float32)), baseline="loo",
                      verify=False)
    assert _steady_reads(lambda: est(64).loss.backward(), monkeypatch) == []
    torch.set_default_dtype(torch.float32)   # the workload's one-hot inputs are float32
    monkeypatch.setenv("SCG_VERIFY", "0")     # as in the benchmark (the suite's default is on)
    work = TalkingAgents(B=16, T=4)
    work.step = lambda loss: loss.backward()
    assert _steady_reads(work.scg_iteration, monkeypatch) == []


def test_the_host_read_probe_sees_scgs_checks(monkeypatch):
    """The probe is not blind: with value reads free (the CPU's answer), scg's execution-
    probability check and its finite-cost check are seen."""
    model, _ = asynchronous("cpu", torch.float32)
    est = scg.compile(model, verify=False)
    monkeypatch.setattr(devices, "reads_are_free", lambda tensor: True)
    est(8)
    with _HostReads() as reads:
        est(8).loss.backward()
    where = " ".join(reads.seen)
    assert "_check_probability" in where and "costs" in where


@pytest.mark.parametrize("baseline", ["none", "loo"])
def test_a_plan_moves_to_a_device_without_reading_it(baseline):
    """A plan's tensors move to another device once, their shortcut flags with them: a plan
    moved to ``meta`` (tensors without values) keeps the CPU plan's flags. (Found on an H200:
    the flags were read again from the GPU tensors, against a CPU ``arange``.)"""
    model, _ = asynchronous("cpu", torch.float64)
    est = scg.compile(model, baseline=baseline, verify=False)
    est(4)
    for plan in est.plans.values():
        moved = plan.on(torch.device("meta"), torch.float32)
        for key, credit in plan.credit.items():
            there = moved["credit"][key]
            assert there.site.device.type == "meta" and there.wa.dtype == torch.float32
            assert (there.to_end, there.one_each, there.unit) == (
                credit.to_end, credit.one_each, credit.unit)


# ``meta`` tensors have shapes and devices but no values: an estimator run whose parameters
# live there stands in, on the CPU, for a device that scg must neither read (that raises) nor
# mix with CPU tensors (that raises too, as it does on CUDA).
@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_steady_calls_run_on_a_device_whose_values_cannot_be_read(case):
    est, args, params = compiled(case, "meta", torch.float32, batch=16)
    pyro.enable_validation(False)   # torch.distributions' argument checks read values
    try:
        for _ in range(3):   # the analysing first call, then the cached plan
            out = est(*args)
            out.loss.backward()
    finally:
        pyro.enable_validation(True)
    assert out.loss.device.type == "meta"
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in params)


def test_the_zoo_runs_on_a_device_whose_values_cannot_be_read():
    """The asynchronous gridworld, and a LOLA-DiCE update on the IPD (order="any": gradients of
    gradients), on meta parameters."""
    from scg.models import ipd, lola
    from scg.models.async_gridworld import Gridworld
    world = Gridworld(3, 3, 6)
    th = world.units(dtype=torch.float32, device="meta")
    est = scg.compile(world.episodes(th), baseline="loo", verify=False)
    t1 = torch.zeros(2, 5, device="meta", requires_grad=True)
    t2 = torch.zeros(2, 5, device="meta", requires_grad=True)
    pyro.enable_validation(False)
    try:
        for _ in range(2):
            est(8).loss.backward()
        lola_est = ipd.compile_ipd(verify=False)
        for _ in range(2):
            n1, n2 = lola.lola_step(lola_est, t1, t2, (8, 3), lr=1.0, eta=1.0)
    finally:
        pyro.enable_validation(True)
    assert all(p.grad.device.type == "meta" for p in th.values() if p.grad is not None)
    assert n1.device.type == n2.device.type == "meta" and n1.shape == (2, 5)
