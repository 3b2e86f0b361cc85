"""Checkpoints that survive a killed process: atomic writes and the full random state.

A checkpoint is one ``torch.save`` file. It is written to a temporary file in the same folder,
flushed to disk, then renamed over the old one (``os.replace`` is atomic on POSIX and Windows),
so a process killed mid-write leaves the previous checkpoint intact, never a torn file.
"""

import os
import random
import tempfile

import numpy as np
import torch

from ..errors import ScgError


def save(path, state):
    """Write ``state`` (anything ``torch.save`` takes) to ``path`` atomically."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path):
    """Read a checkpoint written by :func:`save`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ScgError(f"no checkpoint at {path!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a foreign or damaged file: say which
        raise ScgError(f"cannot read checkpoint {path!r}: {e}") from e


def rng_state():
    """The random state of torch (CPU, and CUDA when available), Python's ``random`` and
    numpy. A state saved without CUDA restores the CPU generators only."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
