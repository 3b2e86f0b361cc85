"""scg: coagent networks as Pyro programs, compiled to exact local policy-gradient surrogates.

References: Williams 1992; Thomas & Barto 2011; Schulman et al. 2015; Kostas, Nota & Thomas 2020.
"""

from . import zoo  # noqa: E402  (after the names zoo models use)
from .compiler.provenance import validation
from .errors import ScgError
from .estimators.estimator import Estimator, Output, compile
from .primitives import (
    agents,
    coagent,
    cost,
    done,
    env,
    episodes,
    message,
    network,
    predict,
    reward,
    steps,
    value,
)
from .tools.check import check
from .tools.derive import derive
from .tools.render import render
from .train.trainer import Trainer, train

__all__ = ["agents", "check", "coagent", "compile", "cost", "derive", "done", "env", "episodes",
           "Estimator", "message", "network", "Output", "predict", "render", "reward",
           "ScgError", "steps", "Trainer", "train", "validation", "value", "zoo"]
