"""The examples run end to end (in a subprocess: no float64 default, no warnings-as-errors)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}  # this checkout's scg, installed or not
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "signalling.py"), *args],
                          check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def final_reward(out):
    return float(re.search(r"final mean reward ([0-9.]+)", out).group(1))


def test_signalling_smoke():
    out = run_example("--smoke")
    assert "=== learning rules (scg.derive) ===" in out
    assert "coagent sender\n" in out and "coagent receiver\n" in out
    assert "=== learned table ===" in out
    rows = re.findall(r"^\s+(\d)\s+(\d) \(\d\.\d\d\)\s+(\d) \(\d\.\d\d\)$", out,
                      re.MULTILINE)
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    assert 0.0 <= final_reward(out) <= 1.0


@pytest.mark.slow
def test_signalling_learns():
    """The full-size run (400 updates of 64 episodes; a few seconds on 2 CPU cores)."""
    out = run_example("--seed", "1")
    assert final_reward(out) >= 0.9, out
