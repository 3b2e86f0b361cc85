"""Talking agents (seed 000): exact gradient by enumeration, the information-theoretic bounds,
the rule derive prints, the online view, bad input, and the example's smoke run."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scg
from scg.errors import ScgError
from scg.models.talking_agents import Talk, bounds, entropy, entropy_rate, stationary

ROOT = Path(__file__).resolve().parents[1]
TINY = [[0.9, 0.1], [0.2, 0.8]]


def binary_entropy(p):
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_entropies_and_bounds_by_hand():
    P = torch.tensor(TINY)
    pi = stationary(P)
    assert torch.allclose(pi, torch.tensor([2 / 3, 1 / 3], dtype=pi.dtype))
    rate = 2 / 3 * binary_entropy(0.1) + 1 / 3 * binary_entropy(0.2)
    assert entropy_rate(P) == pytest.approx(rate)
    assert entropy(pi) == pytest.approx(binary_entropy(1 / 3))
    assert bounds("split", P) == pytest.approx((-2 * rate, -2 * binary_entropy(1 / 3)))
    assert bounds("markov", P) == pytest.approx((-2 * rate, -rate - binary_entropy(1 / 3)))


@pytest.mark.parametrize("stream, T", [("split", 1), ("markov", 2)])
def test_estimator_equals_exact_gradient(stream, T):
    """One episode (split over two steps has 1,024 joint values: a minute to enumerate)."""
    talk = Talk(stream, 2, chain=TINY)
    for p in list(talk.A.parameters()) + list(talk.B.parameters()):
        torch.nn.init.normal_(p, std=1.5)
    report = scg.check(talk.episodes(), 1, T, gamma=0.9)
    assert report.ok and report.rows[0].norm_exact > 1e-3, str(report)


def test_derive_reads_like_seed_000():
    """Each agent: a score term for its message, credited with the partner's predictions
    (this step on) and its own next prediction; a supervised term for its predictor; one
    parameter set for both (A's message reads its last observation and B's last message)."""
    text = str(scg.derive(Talk("split", 4).episodes(), 2, 3))
    assert "Δθ_A ∝ Σ_t ∇ log π_A(mA_t | X0, mB_{t−1}, X_{t−1}) (G^mA_t − b^mA_t) + " \
           "Σ_t ∇ log q_A(predA_t | X0, mB_t, X_{t−1})" in text
    assert "G_t = log q_A(predA_t+1) + Σ_{t' ≥ t} log q_B(predB_t')" in text


def test_online_view_carries_the_stream():
    talk = Talk("split", 4)
    est = scg.compile(talk.step(), gamma=0.0, baseline="avg")
    state = talk.start(8, inside=False)
    out = est(state)
    assert set(out.value) == {"x", "y", "ma", "mb"} and out.value["x"].shape == (8,)
    assert not out.value["ma"].requires_grad
    assert set(out.local) == {"A", "B"}


def test_mute_agents_carry_nothing():
    talk = Talk("split", 1)
    assert talk.A.say.out_features == 1
    assert talk.bounds()[1] == pytest.approx(-2 * entropy(stationary(talk.P)))


def test_bad_input():
    with pytest.raises(ScgError, match=r"unknown stream 'stereo'; valid: \['markov', 'split'\]"):
        Talk("stereo")
    with pytest.raises(ScgError, match="messages must be an int >= 1"):
        Talk("split", 0)
    with pytest.raises(ScgError, match="square row-stochastic"):
        Talk("split", 2, chain=[[0.5, 0.6], [0.5, 0.5]])


@pytest.mark.slow
def test_example_smoke(tmp_path):
    out = subprocess.run([sys.executable, "examples/talking_agents.py", "--smoke", "--out",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "talking_agents.md").exists()


def test_entropy_bonus_is_each_agents_own_cost():
    talk = Talk("split", 3, bonus=0.1)
    est = scg.compile(talk.episodes())
    g = est.graph(4, 2)
    bonus = {n: a["coagent"] for n, a in g.nodes(data=True) if n.startswith("bonus")}
    assert bonus == {"bonusA@0": "A", "bonusB@0": "B", "bonusA@1": "A", "bonusB@1": "B"}
    talk.bonus = 0.0
    assert not any(n.startswith("bonus") for n in est.graph(4, 2))
