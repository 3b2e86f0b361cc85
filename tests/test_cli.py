"""The scg command, run in-process: models, train (with resume), render, derive, check, and the
errors that say what is valid."""

import os
import shutil
import subprocess
import sys

import pytest

from scg.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_the_zoo(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "signalling" in out and "async_gridworld" in out


def test_train_writes_metrics_checkpoint_plot_and_resumes(capsys, tmp_path):
    out = str(tmp_path / "run")
    code, text, _ = run(capsys, "train", "signalling", "--updates", "4", "--seed", "2",
                        "--out", out, "--no-progress", "--checkpoint-every", "2")
    assert code == 0 and "4 updates" in text
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "learning_curve.png", "metrics.csv"]
    code, text, _ = run(capsys, "train", "signalling", "--episodes", "384", "--out", out,
                        "--no-progress")  # 384 episodes = 6 updates of 64: resumes at 4
    assert code == 0 and "resumed from" in text and "at update 4" in text and "6 updates" in text


def test_render_formats(capsys, tmp_path):
    dot = tmp_path / "g.dot"
    code, _, _ = run(capsys, "render", "async_gridworld", "-o", str(dot), "--rolled", "--credit")
    assert code == 0 and "b1.exec" in dot.read_text() and "style=dashed" in dot.read_text()
    code, _, err = run(capsys, "render", "signalling", "-o", str(tmp_path / "g.jpeg2"))
    assert code == 2 and "cannot tell the format" in err and ".svg" in err
    if shutil.which("dot"):
        svg = tmp_path / "g.svg"
        assert run(capsys, "render", "signalling", "-o", str(svg), "--unrolled", "2")[0] == 0
        assert "<svg" in svg.read_text()


def test_derive_and_check(capsys):
    code, out, _ = run(capsys, "derive", "signalling")
    assert code == 0 and "Δθ_sender ∝ ∇ log π_sender(m | model inputs)" in out
    code, out, _ = run(capsys, "derive", "async_gridworld", "--latex")
    assert code == 0 and out.startswith("\\begin{align*}")
    code, out, _ = run(capsys, "check", "signalling")
    assert code == 0 and "enumerate" in out and "OK" in out and "hessian" not in out


def test_check_order_2(capsys, monkeypatch):
    """--order 2 adds the Hessian rows of the any-order surrogates; they can fail (a box right
    to first order only), and finite differences are refused for them."""
    code, out, _ = run(capsys, "check", "matching_pennies", "--order", "2")
    assert code == 0 and "hessian A" in out and "hessian B" in out
    code, _, err = run(capsys, "check", "matching_pennies", "--order", "2", "--method", "fd")
    assert code == 2 and "first derivatives only" in err
    from scg.estimators import dice
    monkeypatch.setattr(dice, "box", lambda x: 1 + x - x.detach())
    code, out, _ = run(capsys, "check", "matching_pennies", "--order", "2")
    assert code == 1 and "MISMATCH" in out


def test_user_files_and_errors(capsys, tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(
        "import pyro.distributions as dist, torch\nimport scg\n"
        "w = torch.nn.Parameter(torch.zeros(()))\n"
        "@scg.network\n"
        "def net():\n"
        "    with scg.episodes(2):\n"
        "        a = scg.message('a', dist.Bernoulli(logits=w.expand(2)), coagent='me')\n"
        "        scg.reward('r', a)\n"
        "def setup():\n"
        "    return scg.zoo.Setup(network=net, inputs=lambda step: (), example=())\n")
    assert run(capsys, "check", f"{f}:net")[0] == 0
    code, out, _ = run(capsys, "derive", f"{f}:setup")
    assert code == 0 and "Δθ_me" in out
    code, _, err = run(capsys, "derive", f"{f}:nope")
    assert code == 2 and "has no function 'nope'" in err and "net" in err
    code, _, err = run(capsys, "derive", "no_such_model")
    assert code == 2 and "unknown model 'no_such_model'; zoo models: async_gridworld" in err
    with pytest.raises(SystemExit):
        main(["train"])  # argparse: the model is required


def test_python_dash_m_scg():
    out = subprocess.run([sys.executable, "-m", "scg", "models"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "signalling" in out.stdout


def test_build_arguments(capsys):
    code, out, _ = run(capsys, "derive", "shared_agents", "--arg", "agents=3")
    assert code == 0 and "coagent agent" in out
    code, _, err = run(capsys, "derive", "shared_agents", "--arg", "agentz=3")
    assert code == 2 and "takes no argument(s) ['agentz']; valid: ['agents', 'batch']" in err
    code, _, err = run(capsys, "derive", "shared_agents", "--arg", "3")
    assert code == 2 and "expected KEY=VALUE" in err


def test_model_file_network_taking_arguments(capsys, tmp_path):
    """``file.py:net`` where net is an @scg.network taking arguments: the command line has none
    to give it, so exit 2 with what a model file must provide (before: a raw TypeError)."""
    f = tmp_path / "args.py"
    f.write_text(
        "import pyro.distributions as dist, torch\nimport scg\n"
        "w = torch.nn.Parameter(torch.zeros(()))\n"
        "@scg.network\n"
        "def net(n):\n"
        "    with scg.episodes(n):\n"
        "        scg.reward('r', scg.message('a', dist.Bernoulli(logits=w.expand(n)), "
        "coagent='me'))\n")
    for command in (["train", f"{f}:net", "--updates", "1", "--out", str(tmp_path / "run"),
                     "--no-progress"], ["check", f"{f}:net"], ["derive", f"{f}:net"]):
        code, _, err = run(capsys, *command)
        assert code == 2, command
        assert f"{f}:net is an @scg.network that takes arguments (n), and the command line has " \
            "none to give it" in err
        assert "an @scg.network taking no arguments, or a function returning an scg.zoo.Setup" \
            in err and "Setup(network=net, inputs=lambda step:" in err


def test_model_factory_missing_an_argument(capsys, tmp_path):
    """A factory with a required argument the command line does not give: exit 2 naming it
    and --arg (before: a raw TypeError)."""
    f = tmp_path / "factory.py"
    f.write_text("def setup(batch):\n    raise RuntimeError('not called')\n")
    code, _, err = run(capsys, "check", f"{f}:setup")
    assert code == 2
    assert "missing a required argument: 'batch'; give it with --arg KEY=VALUE" in err


def test_check_without_a_check_instance_refuses_finite_differences(capsys, tmp_path):
    """``scg check`` (method auto) on a model with no Setup.check whose example cannot be
    enumerated: exit 2 with the reason (before: minutes of finite differences)."""
    f = tmp_path / "cont.py"
    f.write_text(
        "import pyro.distributions as dist, torch\nimport scg\n"
        "w = torch.nn.Parameter(torch.zeros(()))\n"
        "@scg.network\n"
        "def net(n):\n"
        "    with scg.episodes(n):\n"
        "        a = scg.message('a', dist.Normal(w.expand(n), 1.0), coagent='me')\n"
        "        scg.reward('r', -a ** 2)\n"
        "@scg.network\n"
        "def wide(n):\n"
        "    with scg.episodes(n):\n"
        "        scg.reward('r', scg.message('a', dist.Bernoulli(logits=w.expand(n)), "
        "coagent='me'))\n"
        "def setup():\n"
        "    return scg.zoo.Setup(network=net, inputs=lambda step: (4,), example=(2,))\n"
        "def big():\n"
        "    return scg.zoo.Setup(network=wide, inputs=lambda step: (4,), example=(13,))\n")
    code, _, err = run(capsys, "check", f"{f}:setup")
    assert code == 2 and f"{f}:setup has no check instance (Setup.check" in err
    assert "cannot be enumerated: site 'a' (Normal) is continuous" in err
    assert "give its Setup check=(network, args, options)" in err and "--method fd" in err
    code, _, err = run(capsys, "check", f"{f}:big")
    assert code == 2 and "its joint space has 8192 values (> max_size=4096)" in err
