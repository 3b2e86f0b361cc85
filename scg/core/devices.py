"""Where reading a tensor's value is free.

On the CPU a check such as ``if not torch.isfinite(x): raise ...`` costs nothing but the
arithmetic. On an accelerator the same ``if`` makes the host wait until the device has run
everything queued before it (a synchronisation), which on a small model costs more than the
model. scg's steady-state checks that read values (a floating ``execute=`` in [0, 1], finite
costs) therefore run only where reading is free, or in verify mode. On a GPU without
``verify=True`` an out-of-range ``execute=`` is still refused by the Bernoulli's own argument
validation (when Pyro's validation is on), but a NaN or infinite cost is not named: it shows as
a NaN loss.
"""

import torch


def reads_are_free(tensor):
    """Whether ``tensor``'s values can be read on the host without waiting for a device."""
    return tensor.device.type == "cpu"


def same_values(a, b):
    """``torch.equal``, except on ``meta`` tensors (shapes without values: a run traced for its
    shapes alone, as the device tests do), which compare by shape."""
    if a.device.type == "meta" or b.device.type == "meta":
        return a.shape == b.shape
    return torch.equal(a, b)
