"""scg.Trainer: joint and per-coagent optimisers (equal under SGD: the coagent policy gradient
theorem), schedules, metrics, plots, errors, and checkpoints that resume exactly after the
process is killed."""

import os
import signal
import subprocess
import sys
import textwrap

import pyro
import pytest
import torch

import scg
from networks import REGISTRY
from scg.errors import ScgError
from scg.train import checkpoint as C
from scg.train.logs import plot, read_csv
from scg.train.optimizers import robbins_monro, schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh(name, seed=0):
    torch.manual_seed(seed)
    return REGISTRY[name]()


def params_after(name, updates, **kw):
    model, args, opts = fresh(name)
    trainer = scg.Trainer(model, args, seed=1, progress=False, **{**opts, **kw})
    trainer.fit(updates)
    return [p.detach().clone() for p in trainer.est.parameters()], trainer


@pytest.mark.parametrize("name", ["shared_parameters", "predictor_shared", "chain"])
def test_per_coagent_sgd_on_local_losses_equals_joint_sgd(name):
    joint, _ = params_after(name, 5, optimizer="sgd", lr=0.3, baseline="loo")
    local, t = params_after(name, 5, optimizer="sgd", lr=0.3, baseline="loo", per_coagent=True)
    assert len(joint) == len(local)
    for a, b in zip(joint, local):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    if name == "shared_parameters":  # the shared body is stepped by its own group
        assert "shared" in t.groups and len(t.groups["shared"][0]) == 2


def test_per_coagent_step_sizes():
    model, args, opts = fresh("chain")
    t = scg.Trainer(model, args, optimizer="sgd", lr={"f": 0.0, "default": 0.5}, baseline="none",
                    per_coagent=True, progress=False)
    t._setup(3)
    before = {c: [p.detach().clone() for p in t.est.parameters(c)] for c in ("f", "g")}
    t.fit(3)
    assert all(torch.equal(a, b) for a, b in zip(before["f"], t.est.parameters("f")))
    assert any(not torch.equal(a, b) for a, b in zip(before["g"], t.est.parameters("g")))
    assert t.history[-1]["lr/f"] == 0.0 and t.history[-1]["lr/g"] == 0.5
    with pytest.raises(ScgError, match=r"unknown coagent\(s\) \['h'\].*coagents: \['f', 'g'\]"):
        scg.Trainer(model, args, lr={"h": 0.1}, per_coagent=True, progress=False).fit(1)


def test_schedules():
    rm = robbins_monro(tau=10, kappa=0.75)
    assert rm(0) == 1.0 and abs(rm(10) - 2 ** -0.75) < 1e-15
    with pytest.raises(ScgError, match="kappa must be in"):
        robbins_monro(kappa=0.5)
    assert schedule("cosine", 10)(10) == 0.0 and schedule(None, 10)(7) == 1.0
    with pytest.raises(ScgError, match="unknown schedule 'linear'; valid"):
        schedule("linear", 10)
    _, t = params_after("chain", 4, optimizer="sgd", lr=0.2, schedule="robbins-monro")
    lrs = [r["lr/all"] for r in t.history]
    assert lrs == pytest.approx([0.2 * (1 + k / 100) ** -1 for k in range(4)])  # lr used


def test_metrics_csv_tensorboard_and_plot(tmp_path):
    pytest.importorskip("tensorboard")
    model, args, opts = fresh("chain")
    t = scg.Trainer(model, args, out=str(tmp_path), tensorboard=True, progress=False)
    history = t.fit(6)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["objective"] == pytest.approx(history[-1]["objective"])
    assert {"loss/f", "loss/g", "lr/all"} <= set(rows[0])
    for r in history:  # the local losses add up to the loss
        assert r["loss/f"] + r["loss/g"] == pytest.approx(r["loss"])
    assert any(f.startswith("events.") for f in os.listdir(tmp_path / "tensorboard"))
    png = t.plot()
    assert os.path.getsize(png) > 1000
    assert os.path.getsize(plot(str(tmp_path / "metrics.csv"), str(tmp_path / "b.png"))) > 1000


def test_bad_configurations():
    model, args, opts = fresh("chain")
    with pytest.raises(ScgError, match="checkpoint_every needs out="):
        scg.Trainer(model, args, checkpoint_every=5)
    with pytest.raises(ScgError, match="unknown optimizer 'adamax'; valid"):
        scg.Trainer(model, args, optimizer="adamax", progress=False).fit(1)
    est = scg.compile(model)
    with pytest.raises(ScgError, match=r"compile options \['gamma'\]"):
        scg.Trainer(est, args, gamma=0.9)


def test_non_finite_loss_keeps_the_state():
    f = torch.nn.Linear(1, 1).double()

    @scg.network
    def model(x):
        with scg.episodes(x.shape[0]):
            m = scg.message("m", pyro.distributions.Bernoulli(logits=f(x).squeeze(-1)),
                            coagent="f")
            scg.cost("c", -(f.weight.sum() * 0 + x.squeeze(-1)).log() * m)
    good, bad = torch.ones(4, 1, dtype=torch.double), -torch.ones(4, 1, dtype=torch.double)
    t = scg.Trainer(model, lambda step: good if step < 2 else bad, progress=False)
    t.fit(2)
    before = [p.detach().clone() for p in f.parameters()]
    with pytest.raises(ScgError, match=r"cost .c. \(step 0\) is NaN or infinite"):
        t.fit(4)
    assert t.step == 2 and all(torch.equal(a, b) for a, b in zip(before, f.parameters()))


def test_atomic_checkpoint_survives_a_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    C.save(path, {"step": 1})

    def torn(obj, f):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(C.torch, "save", torn)
    with pytest.raises(OSError):
        C.save(path, {"step": 2})
    monkeypatch.undo()
    assert C.load(path) == {"step": 1}
    assert [f for f in os.listdir(tmp_path)] == ["ck.pt"]  # no temporary left behind
    with pytest.raises(ScgError, match="cannot read checkpoint"):
        (tmp_path / "bad.pt").write_bytes(b"junk")
        C.load(tmp_path / "bad.pt")


SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from networks import REGISTRY
    import scg
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    model, args, opts = REGISTRY["recurrent_steps"]()
    kill_at = int(sys.argv[2])

    def inputs(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)   # no cleanup, no flush: a real kill
        return (torch.randint(0, 2, (8,)).double(),)

    t = scg.Trainer(model, inputs, seed=3, out=sys.argv[1], checkpoint_every=5,
                    baseline="critic", schedule="robbins-monro", progress=False, **opts)
    t.resume(total=30)
    t.fit(30)
    torch.save({{"params": [p.detach() for p in t.est.parameters()],
                 "history": t.history}}, os.path.join(sys.argv[1], "final.pt"))
""")


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=os.path.join(ROOT, "tests")))

    def run(out, kill_at):
        return subprocess.run([sys.executable, str(script), str(out), str(kill_at)],
                              cwd=ROOT, capture_output=True, text=True)

    whole = run(tmp_path / "a", -1)
    assert whole.returncode == 0, whole.stderr
    killed = run(tmp_path / "b", 17)
    assert killed.returncode == -signal.SIGKILL
    assert C.load(tmp_path / "b" / "checkpoint.pt")["step"] == 15
    resumed = run(tmp_path / "b", -1)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "a" / "final.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "final.pt", weights_only=False)
    assert len(a["params"]) == len(b["params"]) > 3  # model and critic parameters
    assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))
    assert a["history"][-1]["objective"] == b["history"][-1]["objective"]
    assert [r["step"] for r in read_csv(tmp_path / "b" / "metrics.csv")] == list(range(1, 31))


def test_callback_sees_the_run_and_adds_metrics(tmp_path):
    model, args, opts = fresh("chain")
    seen = []

    def callback(trainer, out, row):
        seen.append((trainer.step, out.value))
        row["reward_a"] = float(next(s for s in out.sites if s.name == "r").value.mean())
    t = scg.Trainer(model, args, out=str(tmp_path), progress=False, callback=callback)
    t.fit(3)
    assert [k for k, _ in seen] == [1, 2, 3]
    assert all("reward_a" in r for r in t.history)
    assert [r["reward_a"] for r in read_csv(tmp_path / "metrics.csv")] == \
        pytest.approx([r["reward_a"] for r in t.history])


@pytest.mark.parametrize("baseline", ["loo", "critic"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_per_coagent_one_backward_pass_equals_one_per_local_loss(name, baseline):
    """per_coagent=True takes one backward pass of the total loss: the gradients equal those of
    one pass per local loss on its own coagent's parameters (shared ones included)."""
    model, args, opts = fresh(name)
    t = scg.Trainer(model, args, progress=False, per_coagent=True,
                    **{**opts, "baseline": baseline})
    t._setup(1)
    torch.manual_seed(4)
    out = t.est(*t._args(0))
    params = [p for ps, _, _ in t.groups.values() for p in ps]
    coagents = set(t.est.coagents)   # one pass per local loss, on its coagent's parameters
    for c, loss in out.local.items():
        ps = list(t.est.parameters(c)) if c in coagents else \
            t.groups.get(c, ([],))[0] if c == "critic" else []
        ps = [p for p in ps if p.requires_grad]
        if ps and loss.requires_grad:
            torch.autograd.backward(loss, inputs=ps, retain_graph=True)
    each = [None if p.grad is None else p.grad.clone() for p in params]
    t._backward(out)         # zeroes the gradients first
    one = [None if p.grad is None else p.grad.clone() for p in params]
    assert any(g is not None for g in one)
    for a, b in zip(one, each):
        assert (a is None and b is None) or torch.allclose(
            torch.zeros(()) if a is None else a, torch.zeros(()) if b is None else b,
            rtol=1e-12, atol=1e-15)


def test_per_coagent_one_backward_pass_with_a_reparameterised_message_between_coagents():
    """A's reparameterised message feeds B's policy and a cost labelled B: B's local loss has a
    gradient on A's parameters, so they are in both coagents' theta (shared) and get the sum."""
    wa = torch.nn.Parameter(torch.tensor([0.3, -0.2]))
    wb = torch.nn.Parameter(torch.tensor([0.5]))

    @scg.network
    def net(n):
        with scg.episodes(n):
            m = scg.message("m", pyro.distributions.Normal(wa[0].expand(n), wa[1].exp()),
                            coagent="a", reparam=True)
            b = scg.message("b", pyro.distributions.Bernoulli(logits=wb * m), coagent="b")
            scg.cost("c", -(m - b) ** 2, coagent="b")
            scg.reward("r", b)

    t = scg.Trainer(net, (6,), progress=False, per_coagent=True, baseline="loo")
    t._setup(1)
    out = t.est(6)
    assert id(wa) in t.est.coagent_parameters.shared
    for c in ("a", "b"):
        torch.autograd.backward(out.local[c], inputs=list(t.est.parameters(c)),
                                retain_graph=True)
    each = [wa.grad.clone(), wb.grad.clone()]
    t._backward(out)
    assert torch.allclose(wa.grad, each[0], atol=1e-15) and torch.allclose(wb.grad, each[1])
