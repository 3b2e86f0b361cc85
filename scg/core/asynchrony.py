"""Asynchronous coagents (design.md section 4; the Asynchronous Coagent Policy Gradient Theorem).

A unit with ``execute=`` runs only where its execution bit e_t is 1 and repeats its previous
output elsewhere:

    p(m_t | e_t, m_{t-1}) = e_t pi(m_t | x_t) + (1 - e_t) delta(m_t = m_{t-1})

so its score term is ``e_t grad log pi`` (Theorem 2). A probability ``execute=p`` inserts an
*execution coagent*: the Bernoulli message ``name.exec`` (owned by coagent ``name.exec``, with its
own local loss; learnable when p depends on parameters). A bool ``execute=bit`` is a bit some
other coagent already drew (the option-critic's termination drives the policy over options).

First step: the previous output is ``init`` (default zeros in the draw's shape and dtype); the
bit is drawn at every step including the first, so a unit that does not execute at t = 0
outputs ``init``.
"""

import pyro.distributions as dist
import torch

from ..errors import ScgError
from . import devices
from .context import expands_to, require_run, sample_site
from .terms import canonical_params


def asynchronous_message(name, fn, coagent, execute, init, reparam, state=None):
    """An asynchronous unit: ``m_t = m_{t-1}`` where its execution bit ``e_t`` is 0.

    p(m_t | e_t, m_{t-1}) = e_t pi(m_t | x_t) + (1 - e_t) delta(m_t = m_{t-1}). The site records
    pi's draw under Pyro's mask ``e_t`` (as ``poutine.mask``), so its score term is
    ``e_t log pi`` and enumeration counts a held element once; the unit's output is the draw
    where it executes and its previous output (``init`` before the first step) elsewhere.
    """
    run = require_run(f"scg.message({name!r})")
    if not run.in_steps:
        raise ScgError(f"message {name!r}: execute=/init= need the site inside scg.steps(T) "
                       "(an asynchronous unit repeats its previous output between steps)")
    where = f"message {name!r} (step {run.t})"
    batch = fn.batch_shape
    last = previous_step(run, name, init, where)
    bit, source = execution_bit(name, execute, batch, where, device_of(fn), float_dtype_of(fn),
                                coagent)
    draw = sample_site(name, fn, "message", coagent, mask=bit, scg_reparam=bool(reparam),
                       scg_execute=source, scg_bit=bit, scg_state=state)
    draw = draw if reparam else draw.detach()
    prev = initial_output(init, draw, where) if last is None else last
    if prev.shape != draw.shape:
        raise ScgError(f"{where}: its previous output has shape {tuple(prev.shape)}, this "
                       f"step's has {tuple(draw.shape)}")
    e = bit.reshape(bit.shape + (1,) * len(fn.event_shape))
    out = torch.where(e, draw, prev)
    run.previous[name] = (run.t, out)
    return out


def previous_step(run, name, init, where):
    """The unit's output of step t - 1, or None before its first step (then ``init``)."""
    last = run.previous.get(name)
    if last is None:
        if run.t > 0 and init is None:
            raise ScgError(f"{where}: no previous output to repeat: the unit did not run at step "
                           f"{run.t - 1}; pass init= for a unit that starts late")
        return None
    t, out = last
    if t != run.t - 1:
        raise ScgError(f"{where}: no output at step {run.t - 1} to repeat (its last output is "
                       f"from step {t}): an asynchronous unit must run at every step")
    return out


def device_of(fn):
    """The device of distribution ``fn``: that of its parameters (the first tensor among its
    canonical parameters, then among its attributes); the default device if it has none."""
    for p in canonical_params(fn).values():
        return p.device
    for v in vars(fn).values():
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.get_default_device()


def float_dtype_of(fn):
    """The floating dtype of ``fn``'s parameters (the default dtype if none is floating)."""
    for p in list(canonical_params(fn).values()) + list(vars(fn).values()):
        if isinstance(p, torch.Tensor) and p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def execution_bit(name, execute, batch, where, device=None, dtype=None, unit=None):
    """The bool execution bit of site ``name`` and where it came from.

    A floating ``execute`` is a probability: the execution coagent ``name.exec`` (a Bernoulli
    message owned by coagent ``name.exec``) is sampled now. A bool ``execute`` is a bit already
    drawn (another coagent's output). ``None`` (only ``init`` given) executes always.
    Tensors made here (the bit of ``None``, a Python bool or number) are on ``device`` (the
    unit's distribution's, :func:`device_of`); a Python number is a probability in ``dtype``.
    ``unit``: the unit's coagent, whose objective the execution coagent climbs (design.md §8).
    """
    device = torch.get_default_device() if device is None else device
    if execute is None:
        return torch.ones(batch, dtype=torch.bool, device=device), "always"
    if not isinstance(execute, torch.Tensor):
        if isinstance(execute, bool):
            execute = torch.tensor(execute, device=device)
        elif isinstance(execute, (int, float)):
            execute = torch.tensor(float(execute), device=device,
                                   dtype=torch.get_default_dtype() if dtype is None else dtype)
        else:
            raise ScgError(f"{where}: execute= must be a probability (float tensor) or an "
                           f"execution bit (bool tensor), got {type(execute).__name__}")
    elif execute.device != device:   # a bit or probability computed elsewhere (a CPU tensor)
        execute = execute.to(device)
    if not expands_to(execute.shape, batch):
        raise ScgError(f"{where}: execute= has shape {tuple(execute.shape)}, not broadcastable "
                       f"to the site's batch shape {tuple(batch)}")
    if execute.dtype == torch.bool:
        return execute.expand(batch), "bit"
    if not execute.is_floating_point():
        raise ScgError(f"{where}: execute= has dtype {execute.dtype}; pass a probability "
                       "(float tensor) or an execution bit (bool tensor, e.g. term == 1)")
    if devices.reads_are_free(execute):   # elsewhere the check would wait for the device:
        _check_probability(execute, where)  # Bernoulli's own validation (if on) does it
    exec_name = f"{name}.exec"
    e = sample_site(exec_name, dist.Bernoulli(probs=execute.expand(batch)), "message", exec_name,
                    scg_execution_of=name, scg_unit_coagent=unit)
    return e.detach().bool(), exec_name


def _check_probability(execute, where):
    with torch.no_grad():
        bad = ~torch.isfinite(execute) | (execute < 0) | (execute > 1)
    if bad.any():
        raise ScgError(f"{where}: execution probability must be finite and in [0, 1], got "
                       f"{execute[bad].flatten()[0].item()}")


def initial_output(init, draw, where):
    """The output before the first step: ``init`` (default zeros) in the draw's shape."""
    if init is None:
        return torch.zeros_like(draw)
    init = torch.as_tensor(init, device=draw.device).to(draw.dtype)
    try:
        return init.expand(draw.shape)
    except RuntimeError:
        raise ScgError(f"{where}: init= has shape {tuple(init.shape)}, the unit's output has "
                       f"shape {tuple(draw.shape)}") from None
