"""The options of ``scg.compile``: their defaults and their validation, in one place."""

import os

from ..errors import ScgError
from .baselines import KINDS

OPTIONS = {
    "gamma": 1.0,            # discount, in [0, 1]
    "baseline": "auto",      # auto (loo with >= 2 episodes, else avg) | none | avg | loo | critic
    "objective": "sum",      # sum | mean (finite-horizon average reward: (1/T) sum_t)
    "discount_score": True,  # False: the common rule without gamma^t_s (biased)
    "decay": 0.9,            # the avg baseline's decay
    "critic_hidden": 32,     # hidden units of each coagent's critic
    "estimator": "mc",       # mc (exact score-function surrogate) | td (online TD)
    "lam": 1.0,              # td: trace decay lambda in [0, 1]
    "avg_rate": 0.01,        # td with objective="average": step size of the reward average
    "order": 1,              # 1 (first-order surrogate) | "any" (DiCE: derivatives of any order)
    "verify": None,          # analyse every run, raise where the cached plan would differ
}                            # (default: the SCG_VERIFY environment variable, else False)


def validate(options):
    """The full option dict (defaults filled in), or an :class:`ScgError` naming the option at
    fault and its valid values."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ScgError(f"unknown compile option(s) {unknown}; valid: {sorted(OPTIONS)}")
    opts = {**OPTIONS, **options}
    if opts["verify"] is None:
        opts["verify"] = os.environ.get("SCG_VERIFY", "") not in ("", "0")
    if not 0.0 <= float(opts["gamma"]) <= 1.0:
        raise ScgError(f"gamma must be in [0, 1], got {opts['gamma']}")
    if opts["baseline"] not in KINDS:
        raise ScgError(f"unknown baseline {opts['baseline']!r}; valid: {list(KINDS)}")
    if opts["estimator"] not in ("mc", "td"):
        raise ScgError(f"unknown estimator {opts['estimator']!r}; valid: ['mc', 'td']")
    objectives = ["sum", "mean"] if opts["estimator"] == "mc" else ["sum", "average"]
    if opts["objective"] not in objectives:
        raise ScgError(f"unknown objective {opts['objective']!r} for estimator="
                       f"{opts['estimator']!r}; valid: {objectives}")
    if not 0.0 <= float(opts["lam"]) <= 1.0:
        raise ScgError(f"lam must be in [0, 1], got {opts['lam']}")
    if opts["objective"] == "average" and float(opts["gamma"]) != 1.0:
        raise ScgError("objective='average' needs gamma=1.0 (the differential TD error "
                       "has no discount)")
    if opts["order"] not in (1, "any"):
        raise ScgError(f"unknown order {opts['order']!r}; valid: [1, 'any']")
    if opts["order"] == "any" and opts["estimator"] != "mc":
        raise ScgError("order='any' needs estimator='mc': the online estimator's traces are "
                       "first-order")
    if opts["order"] == "any" and not opts["discount_score"]:
        raise ScgError("order='any' differentiates J itself: discount_score=False (the common "
                       "first-order rule without gamma^t, biased) has no any-order form")
    if not 0.0 <= float(opts["decay"]) < 1.0:
        raise ScgError(f"decay must be in [0, 1), got {opts['decay']}")
    return opts
