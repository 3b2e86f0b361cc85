"""The option-critic on Four Rooms: the world's dynamics as Bacon et al. describe them (a failed
move goes to a random empty neighbour of the *current* cell, not an extra hop from the new one),
value iteration on a case solved by hand, the estimator against exact enumeration on a tiny
version of the same network, the learning rules read by ``scg.derive``, bad input, and the
example's ``--smoke`` run."""

import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

import scg
from scg.models.four_rooms import (
    FAIL,
    GAMMA,
    FourRooms,
    expected_steps,
    hop_after_move,
    neighbours,
    parse,
    transition,
)
from scg.models.option_critic import OptionCritic, inputs_for, tiny

ROOT = Path(__file__).resolve().parents[1]
UP, DOWN, LEFT, RIGHT = range(4)


def cell(world, r, c):
    return world.state((r, c))


# ---- the world ---------------------------------------------------------------------------------
def test_layout_has_104_cells_and_walls_are_never_reached():
    world = FourRooms()
    assert world.S == 104 and world.grid.shape == (13, 13)
    assert not world.grid[0].any() and not world.grid[:, 0].any()      # outer walls
    assert world.grid[3, 6] and world.grid[10, 6] and world.grid[6, 2] and world.grid[7, 9]
    assert tuple(world.cells[world.goal].tolist()) == (7, 9) and world.goal == 62
    assert torch.allclose(world.P.sum(-1), torch.ones(104, 4, dtype=torch.double))
    assert (world.P >= 0).all()
    # every transition goes to the cell itself or a 4-neighbour: never two cells away
    d = (world.cells[:, None, None, :] - world.cells[None, None, :, :]).abs().sum(-1)
    assert (world.P[d.expand_as(world.P) > 1] == 0).all()
    assert len(world.lower_right()) == 20


def test_a_failed_move_goes_to_a_random_neighbour_of_the_current_cell():
    world = FourRooms()
    s = cell(world, 2, 2)                                   # open floor: 4 empty neighbours
    row = world.P[s, RIGHT]
    assert row[cell(world, 2, 3)] == pytest.approx(2 / 3 + 1 / 12)
    for r, c in ((1, 2), (3, 2), (2, 1)):
        assert row[cell(world, r, c)] == pytest.approx(1 / 12)
    assert row.sum() == pytest.approx(1.0) and (row > 0).sum() == 4
    door = cell(world, 3, 6)                                # the west doorway: 2 neighbours
    row = world.P[door, UP]                                 # into a wall: stays w.p. 2/3
    assert row[door] == pytest.approx(2 / 3)
    assert row[cell(world, 3, 5)] == pytest.approx(1 / 6) == row[cell(world, 3, 7)]
    corner = cell(world, 1, 1)
    assert world.P[corner, LEFT, corner] == pytest.approx(2 / 3)


def test_sampled_steps_follow_P_and_differ_from_the_hop_after_move_variant():
    """10,000 sampled moves right from (2, 2): frequencies within 5 standard errors of P, and
    never (2, 4), which the copied implementation reaches with probability 1/12."""
    world = FourRooms()
    s = cell(world, 2, 2)
    gen = torch.Generator().manual_seed(0)
    n = 10_000
    nxt = world.step(torch.full((n,), s), torch.full((n,), RIGHT), gen)
    freq = torch.bincount(nxt, minlength=world.S).double() / n
    p = world.P[s, RIGHT]
    se = (p * (1 - p) / n).sqrt().clamp(min=1e-12)
    assert ((freq - p).abs() <= 5 * se + 1e-12).all()
    hop = hop_after_move(world.next)
    assert hop[s, RIGHT, cell(world, 2, 4)] == pytest.approx(1 / 12)
    assert freq[cell(world, 2, 4)] == 0
    # the copied variant makes the task about 30% shorter
    ours, theirs = world.optimum(), float(expected_steps(hop, world.goal).sum() / 103)
    assert 0.25 < 1 - theirs / ours < 0.35


def test_value_iteration_on_a_three_cell_corridor_by_hand():
    """Corridor 0-1-2, goal 2. From 0, right always reaches 1 (a failed move goes to the only
    neighbour, 1); from 1, right reaches 2 w.p. 2/3 + 1/6 and 0 w.p. 1/6. So V1 = 1 + V0 / 6,
    V0 = 1 + V1: V1 = 7/5, V0 = 12/5, and the mean over starts {0, 1} is 19/10."""
    world = FourRooms("wwwww\nw   w\nwwwww", goal=2)
    V = expected_steps(world.P, 2)
    assert V.tolist() == pytest.approx([12 / 5, 7 / 5, 0.0], abs=1e-9)
    assert world.optimum() == pytest.approx(1.9, abs=1e-9)
    grid, cells = parse("wwwww\nw   w\nwwwww")
    P = transition(neighbours(grid, cells), FAIL)
    assert P[1, RIGHT].tolist() == pytest.approx([1 / 6, 0.0, 5 / 6])


def test_start_states_are_uniform_over_the_other_cells():
    world = FourRooms()
    s = world.starts(52_000, world.goal, torch.Generator().manual_seed(1))
    counts = torch.bincount(s, minlength=world.S)
    assert counts[world.goal] == 0
    assert (counts[torch.arange(world.S) != world.goal] > 300).all()


def test_shared_start_gives_one_uniform_start_per_run_and_update():
    """``shared_start``: a run's episodes share one start, never the run's goal, and over many
    updates every other cell is drawn (the objective's start distribution is unchanged)."""
    world = FourRooms()
    goals = torch.tensor([world.goal, 0])
    gen = torch.Generator().manual_seed(2)
    firsts = []
    for _ in range(2000):
        s0, goal, run = inputs_for(world, 3, 2, goals, gen, shared_start=True)
        assert run.tolist() == [0, 0, 0, 1, 1, 1] and (goal == goals[run]).all()
        assert (s0.view(2, 3) == s0.view(2, 3)[:, :1]).all() and (s0 != goal).all()
        firsts.append(s0[0])
    counts = torch.bincount(torch.stack(firsts), minlength=world.S)
    assert counts[world.goal] == 0 and (counts[torch.arange(world.S) != world.goal] > 0).all()


# ---- the network -------------------------------------------------------------------------------
def test_estimator_matches_exact_enumeration_on_a_tiny_world():
    """The same network on the 2-cell corridor, 2 options, 2 steps, one episode."""
    oc = tiny()
    one = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))
    report = scg.check(oc.episodes(), *one, gamma=0.99)
    assert report.ok, str(report)


@pytest.mark.slow
def test_zoo_entry_trains_online_like_the_example():
    """``scg.Trainer`` on the zoo entry (online, two runs) makes the updates of the example's
    loop written out by hand: Adam (beta2 0.99) on the units, SGD on the critic, each run's
    ended episodes settled by ``finish(done)`` and restarted."""
    setup = scg.zoo.load("option_critic", runs=2, options=2)
    train = {k: v for k, v in setup.train.items() if k != "updates"}
    t = scg.Trainer(setup.network, setup.inputs, seed=3, progress=False, **train,
                    **setup.options)
    history = t.fit(60)
    ref = scg.zoo.load("option_critic", runs=2, options=2)
    est = scg.compile(ref.network, **ref.options)
    pyro.set_rng_seed(3)
    est.trace(ref.inputs(0), {})           # the Trainer's set-up run
    units, critic = ref.modules["units"], ref.modules["critic"]["V"]
    adam = torch.optim.Adam(units.values(), lr=0.03, betas=(0.9, 0.99))
    sgd = torch.optim.SGD([critic], lr=0.3 * 2)
    for _ in range(60):
        out = est(*ref.inputs(0))
        loss = out.loss + est.finish(done=ref.inputs.advance(out)).loss
        adam.zero_grad()
        sgd.zero_grad()
        loss.backward()
        adam.step()
        sgd.step()
    trained = setup.modules
    for k in units:
        assert torch.allclose(trained["units"][k], units[k], atol=1e-6), k
    assert torch.allclose(trained["critic"]["V"], critic, atol=1e-6)
    assert (critic != 1.0).any()           # the critic learned (it starts at 1)
    assert sum(r["episodes_ended"] for r in history) == sum(map(len, ref.inputs.lengths))


def test_zoo_entry_trains_and_resumes_from_the_command_line(capsys, tmp_path):
    from scg.cli import main
    out = str(tmp_path / "oc")
    argv = ["train", "option_critic", "--out", out, "--no-progress"]
    assert main(argv + ["--updates", "6", "--checkpoint-every", "3"]) == 0
    assert main(argv + ["--updates", "9"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(argv + ["--episodes", "10"]) == 2
    assert "learns online" in capsys.readouterr().err
    assert main(argv + ["--updates", "12", "--per-coagent"]) == 0   # the model's default too

def test_derive_reads_like_bacon_et_al():
    """The episodic network's rules (the zoo entry's one-step network reads the same way)."""
    oc = OptionCritic()
    net = oc.episodes()
    example = (torch.tensor([0, 5]), torch.full((2,), oc.world.goal), torch.zeros(2).long(), 3)
    d = scg.derive(net, *example, est=scg.compile(net, gamma=GAMMA, baseline="loo"))
    setup = scg.zoo.load("option_critic")
    online = scg.derive(setup.network, *setup.example,
                        est=scg.compile(setup.network, **setup.options))
    assert "Bacon et al.'s termination gradient" in online["termination"].units[0].reading
    assert "intra-option policy gradient" in online["intra_option"].units[0].reading
    term, = d["termination"].units
    option, = d["policy_over_options"].units
    action, = d["intra_option"].units
    assert option.bit == ["term"] and term.bit is None and action.bit is None
    assert "Bacon et al.'s termination gradient" in term.reading
    assert "−∇β(x_t) · A(s_t, option_{t−1})" in term.reading
    assert "Bacon et al.'s intra-option policy gradient" in action.reading
    assert "policy over options" in option.reading
    assert sorted(term.inputs) == [("option", 1), ("s", 0)]
    assert sorted(action.inputs) == [("option", 0), ("s", 0)]
    text = str(d)
    assert "holds option_{t−1}, no term" in text
    assert "Δθ_termination ∝ Σ_t γ^t ∇ log π_termination(term_t | option_{t−1}, s_t)" in text


def test_per_run_tables_get_only_their_own_gradient():
    """Episodes of run 1 only: run 0's tables get exactly zero gradient."""
    oc = OptionCritic(options=2, runs=2, dtype=torch.float64)
    est = scg.compile(oc.episodes(), gamma=0.99, baseline="loo")
    s0, goal, run = inputs_for(oc.world, 4, 2, torch.tensor([62, 62]))
    keep = run == 1
    out = est(s0[keep], goal[keep], run[keep], 20)
    out.loss.backward()
    for p in oc.units.values():
        assert (p.grad[0] == 0).all()
    assert out.value.shape == (4,) and (out.value <= 20).all()


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [0, -1, 1.5, True])
def test_options_out_of_range(options):
    with pytest.raises(scg.ScgError, match="options must be an int >= 1"):
        OptionCritic(options=options)


@pytest.mark.parametrize("goal, match", [("west", "unknown goal 'west'"),
                                         (104, r"state index in \[0, 104\)"),
                                         ((0, 0), "not an empty cell")])
def test_unknown_goal(goal, match):
    with pytest.raises(scg.ScgError, match=match):
        FourRooms(goal=goal)


def test_wrong_state_shapes():
    oc = OptionCritic(options=2)
    net = oc.episodes()
    good = torch.tensor([0, 1]), torch.tensor([62, 62]), torch.tensor([0, 0])
    with pytest.raises(scg.ScgError, match="1-d LongTensor"):
        net(good[0][:, None], *good[1:])
    with pytest.raises(scg.ScgError, match="1-d LongTensor"):
        net(good[0].double(), *good[1:])
    with pytest.raises(scg.ScgError, match=r"states must lie in \[0, 104\)"):
        net(torch.tensor([0, 104]), *good[1:])
    with pytest.raises(scg.ScgError, match="goal must be a LongTensor of shape"):
        net(good[0], torch.tensor([62]), good[2])
    with pytest.raises(scg.ScgError, match=r"run values must lie in \[0, 1\)"):
        net(good[0], good[1], torch.tensor([0, 1]))
    with pytest.raises(scg.ScgError, match="1-d LongTensor"):
        oc.world.step(torch.tensor([[0]]), torch.tensor([0]))


# ---- the example -------------------------------------------------------------------------------
@pytest.mark.slow
def test_example_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "option_critic.py"),
                           "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (tmp_path / "option_critic.md").read_text()
    assert "| optimum (value iteration)" in page
    for name in ("option_critic_learning.png", "option_critic_termination.png"):
        assert (tmp_path / "img" / name).exists()
    assert (tmp_path / "option_critic.json").exists()


# ---- online learning ---------------------------------------------------------------------------
def test_online_step_network_is_the_episodic_network_one_step_at_a_time():
    """The same trajectory through ``episodes()`` (one window) and through ``online()`` (one
    window per step, ``finish`` at the end): with lambda = 1 and V = 0 the TD updates of the
    three units are equal (up to the factor gamma of the reward's step), so the online network
    is the episodic one (whose estimator ``scg.check`` matches exact enumeration) cut into
    steps."""
    oc = OptionCritic(FourRooms("wwwww\nw   w\nwwwww", goal=2, horizon=4), 2, 1,
                      torch.float64)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in oc.units.values():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    units = list(oc.units.values())
    s0, goal, run = torch.tensor([0]), torch.tensor([2]), torch.tensor([0])
    whole = scg.compile(oc.episodes(), estimator="td", gamma=0.9, lam=1.0)
    torch.manual_seed(3)
    out = whole(s0, goal, run, 4)
    values = {s.name: s.value for s in out.sites}
    assert "s@1" in values
    u1 = torch.autograd.grad(out.loss + whole.finish().loss, units)

    step = oc.online()
    with torch.no_grad():
        oc.critic.zero_()
    est = scg.compile(step, estimator="td", gamma=0.9, lam=1.0)
    s, w, first, total = s0, torch.tensor([0]), torch.tensor([True]), 0.0
    for t in range(4):
        if f"s@{t + 1}" not in values:
            break
        fix = {"option@0": values[f"option@{t}"], "action@0": values[f"action@{t}"],
               "s@0": values[f"s@{t + 1}"],
               "term@0": values.get(f"term@{t}", torch.tensor([1.0], dtype=torch.float64))}
        o = est.run((s, w, first, goal, run), {}, scg.core.record.Fix(fix))
        total = total + o.loss
        s, w, arrived = o.value
        first = torch.tensor([False])
        if arrived.all():
            break
    u2 = torch.autograd.grad(total + est.finish().loss, units, allow_unused=True)
    # the episodic network emits a move's reward at the next step (its env site opens the
    # step), the online one in the step of the move: one factor gamma between the objectives
    assert any(a.abs().max() > 1e-3 for a in u1)
    for a, b in zip(u1, u2):
        assert torch.allclose(a, 0.9 * b, atol=1e-12)


def test_expected_steps_solves_the_option_policys_bellman_equation():
    """The linear solve against plain policy evaluation by iteration on a 3x3 room, random
    tables; and the optimal flat policy reaches the value-iteration optimum."""
    world = FourRooms("wwwww\nw   w\nw   w\nw   w\nwwwww", goal=8)
    oc = OptionCritic(world, 3, 1, torch.float64)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in oc.units.values():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    beta = torch.sigmoid(oc.units["beta"][0]).detach()
    mu = oc.units["over"][0].softmax(-1).detach()
    pi = oc.units["intra"][0].softmax(-1).detach()
    P = world.P.double()
    E = torch.zeros(world.S, 3, dtype=torch.double)
    for _ in range(100000):                  # E <- 1 + expected E after one step, per (s, w)
        new = torch.ones_like(E)
        for w in range(3):
            for v in range(3):
                pv = (1 - beta[:, w]) * float(v == w) + beta[:, w] * mu[:, v]
                new[:, w] += pv * ((pi[:, v, :, None] * P).sum((1,)) @ E[:, v])
        new[world.goal] = 0.0
        if (new - E).abs().max() < 1e-13:
            break
        E = new
    start = [1 + sum(mu[s, v] * (pi[s, v] @ (P[s] @ E[:, v])) for v in range(3))
             for s in range(world.S) if s != world.goal]
    assert oc.expected_steps(world.goal) == pytest.approx(float(sum(start) / len(start)),
                                                          rel=1e-8)
    V = expected_steps(world.P, world.goal)
    best = (world.P.double() @ V).argmin(-1)
    flat = OptionCritic(world, 1, 1, torch.float64)
    with torch.no_grad():
        flat.units["intra"][0, :, 0] = 40.0 * torch.nn.functional.one_hot(best, 4)
    assert flat.expected_steps(world.goal, greedy=True) == pytest.approx(world.optimum(),
                                                                          rel=1e-9)
    assert flat.expected_steps(world.goal) == pytest.approx(world.optimum(), rel=1e-6)


def test_diverged_parameters_name_the_coagent():
    """NaN logits (a diverged update) give an error naming the coagent, not torch's."""
    oc = OptionCritic(options=2)
    est = scg.compile(oc.online(), estimator="td", gamma=0.99)
    args = (torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([True, True]),
            torch.tensor([62, 62]), torch.tensor([0, 0]))
    est(*args)
    with torch.no_grad():
        oc.units["over"][0, 3] = float("nan")
    with pytest.raises(scg.ScgError, match=r"non-finite parameters: \['policy_over_options'\]"):
        est(torch.tensor([3, 1]), *args[1:])
