"""The variance benchmark's quick path runs and reports finite numbers under the right keys, and
its random networks' exact gradient (plain torch enumeration) is scg's enumerated J's gradient.
No timing or variance targets are asserted here: those are measurements (benchmarks/variance.py).
"""

import math

import pytest
import torch

import scg
from benchmarks.networks import RandomNetwork, flat
from benchmarks.variance import BASELINES, run
from scg.tools.check import log_prob, objective, trajectories


def finite(x):
    return isinstance(x, float) and math.isfinite(x)


@pytest.mark.slow
def test_quick_run_reports_finite_numbers():
    res = run(quick=True)
    assert [t["rewards"] for t in res["random_networks"]] == ["normal", "uniform"]
    for table in res["random_networks"]:
        names = [r["estimator"] for r in table["rows"]]
        assert names[0] == "plain REINFORCE (whole return)"
        for b in BASELINES:
            assert f"scg, baseline={b}" in names
        assert "oracle: b = E[G_s | parents] exact" in names
        assert "scg, baseline=critic, state=parents" in names
        for r in table["rows"]:
            assert all(finite(r[k]) and r[k] > 0 for k in
                       ("ratio", "ratio_lo", "ratio_hi", "ratio_min", "ratio_max")), r
        assert len(table["networks"]) == 2
        assert all(finite(m) for n in table["networks"] for m in n["mse"].values())
    cases = res["gridworlds"]["cases"]
    assert len(cases) == 2
    for case in cases:
        assert finite(case["critic_over_loo"]) and finite(case["reference"]["se2"])
        assert all(finite(v) for v in case["critic_fit"].values())
        names = {r["estimator"] for r in case["rows"]}
        assert names == {"plain REINFORCE (whole return)"} | {f"scg, baseline={b}"
                                                              for b in BASELINES}
        for r in case["rows"]:
            assert all(finite(r[k]) for k in ("mse", "se_log", "vs_reinforce", "vs_loo")), r
    assert finite(cases[0]["reference"]["err2_vs_exact"])


def test_random_network_exact_gradient_matches_scg_enumeration():
    """The generator's own enumeration (plain torch) gives the J and grad J that scg's check
    machinery derives from the recorded sites of every joint value of one episode."""
    net = RandomNetwork(3, max_space=64)
    J, g = net.exact()
    est = scg.compile(net.model(state=True))
    total = sum(log_prob(out.sites).exp() * objective(out.sites)
                for out in trajectories(est, (1,)))
    assert torch.allclose(total.detach(), J, atol=1e-12)
    assert torch.allclose(flat(torch.autograd.grad(total, net.params)), g, atol=1e-12)


def test_hand_estimators_are_unbiased():
    """Plain REINFORCE and the exact-value-baseline oracle average to the exact gradient."""
    net = RandomNetwork(5, max_space=64)
    _, g = net.exact()
    torch.manual_seed(0)
    for draw in (lambda: net.reinforce(20000),
                 lambda: net.causal(20000, net.value_tables("parents"))):
        e = torch.stack([draw() for _ in range(4)])
        se = e.std(0) / 2
        assert ((e.mean(0) - g).abs() <= 5 * se + 1e-9).all()
