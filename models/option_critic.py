"""The option-critic (Bacon, Harb & Precup 2017) as a three-coagent asynchronous network
(Kostas, Nota & Thomas 2020, section 7), on Four Rooms (:mod:`scg.models.four_rooms`).

At every step t:

- the **termination** unit beta(s_t, w_{t-1}) emits a bit (at t = 0 it does not run: the first
  option is always drawn);
- the **policy over options** mu(w | s_t) runs with ``execute=`` that bit: it draws a fresh option
  where the bit is 1 and holds w_{t-1} where it is 0;
- the **intra-option** policy pi(a | s_t, w_t) picks one of the four moves;
- the environment moves (an ``scg.env`` site drawn from ``P[s_t, a_t]``), the reward is +1 on
  arrival at the goal, and ``scg.done`` stops the episode there.

All three units are tables of logits, one table per independent *run*: a batch of episodes from
several runs is one ``scg.episodes`` plate, and episode i reads run ``run[i]``'s tables, so many
seeds train in one tensor program (each run's parameters get only their own episodes' gradient).
Nothing is hand-derived: the estimator is ``scg.compile``'s, and ``scg.derive`` reads the three
rules as Bacon et al.'s termination gradient, intra-option policy gradient and a policy gradient
for the policy over options.

The episode loop stops early once every episode of the batch has finished, but only at a few
fixed step counts (:data:`STOPS`), so that a handful of structures is analysed once each
and then cached.

:meth:`OptionCritic.online` is the same network one step at a time, with a critic V(s_t, w_{t-1})
as the step's ``scg.value`` site, for Bacon et al.'s online setting (``estimator="td"``, one
update per step; each run's episode restarts on its own via ``est.finish(done=...)``).
:meth:`OptionCritic.expected_steps` evaluates a learned option policy exactly.
"""

import pyro.distributions as dist
import torch
from torch.nn.functional import one_hot

import scg

from .four_rooms import GAMMA, FourRooms

STOPS = (16, 32, 64, 128, 256)


class OptionCritic:
    """``options`` options on ``world`` (a :class:`FourRooms`), ``runs`` independent tables."""

    def __init__(self, world=None, options=4, runs=1, dtype=torch.float32):
        if isinstance(options, bool) or not isinstance(options, int) or options < 1:
            raise scg.ScgError(f"options must be an int >= 1, got {options!r}")
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
            raise scg.ScgError(f"runs must be an int >= 1, got {runs!r}")
        self.world = world if world is not None else FourRooms()
        self.options, self.runs = options, runs
        S = self.world.S
        self.units = torch.nn.ParameterDict({
            "beta": torch.nn.Parameter(torch.zeros(runs, S, options, dtype=dtype)),
            "over": torch.nn.Parameter(torch.zeros(runs, S, options, dtype=dtype)),
            "intra": torch.nn.Parameter(torch.zeros(runs, S, options, 4, dtype=dtype)),
        })
        # V(s, w_prev) of the online network (column ``options``: no option yet)
        self.critic = torch.nn.Parameter(torch.zeros(runs, S, options + 1, dtype=dtype))

    def check_inputs(self, s0, goal, run):
        """``s0``, ``goal``, ``run``: LongTensors [N] of start states, goals and run indices."""
        with scg.validation():   # checks only: values read here decide nothing else
            self.world._check_states(s0)
            for name, x, hi in (("goal", goal, self.world.S), ("run", run, self.runs)):
                if not isinstance(x, torch.Tensor) or x.dtype != torch.long or x.shape != s0.shape:
                    raise scg.ScgError(f"{name} must be a LongTensor of shape {tuple(s0.shape)} "
                                       f"(one per episode), got "
                                       f"{getattr(x, 'dtype', type(x).__name__)} "
                                       f"{tuple(getattr(x, 'shape', ()))}")
                if len(x) and (x.min() < 0 or x.max() >= hi):
                    raise scg.ScgError(f"{name} values must lie in [0, {hi})")

    def episodes(self):
        """The episodic network ``model(s0, goal, run, horizon=None)``: one episode per element
        (at most ``horizon`` steps, the world's by default), returning the number of steps each
        took (the horizon where it did not reach its goal)."""
        th, world = self.units, self.world
        dtype = th["beta"].dtype
        P = world.P.to(dtype)

        def cell(s):   # the local state a critic baseline reads: the cell, one-hot
            return one_hot(s, world.S).to(dtype)

        def held(w):
            return one_hot(w, self.options).to(dtype)

        @scg.network
        def option_critic(s0, goal, run, horizon=None):
            self.check_inputs(s0, goal, run)
            T = world.horizon if horizon is None else horizon
            N = s0.shape[0]
            with scg.episodes(N):
                s, steps = s0, torch.zeros(N, dtype=torch.long)
                finished = torch.zeros(N, dtype=torch.bool)
                w = a = None                   # drawn at t = 0, read from t = 1 on
                for t in scg.steps(T + 1):   # step T only settles the last move
                    if t > 0:
                        s = scg.env("s", dist.Categorical(probs=P[s, a]))   # the world moves
                        arrived = (s == goal) & finished.logical_not()   # not ~ (see report)
                        scg.reward("r", arrived.to(dtype))                # +1 on arrival
                        finished = finished | arrived
                        scg.done(finished)
                        if t == T or (t in STOPS and bool(finished.all())):
                            break
                        term = scg.message("term", dist.Bernoulli(logits=th["beta"][run, s, w]),
                                           coagent="termination", state=(cell(s), held(w)))
                        term = term.bool()
                    else:
                        term = torch.ones(N, dtype=torch.bool)   # the first option is drawn
                    w = scg.message("option", dist.Categorical(logits=th["over"][run, s]),
                                    coagent="policy_over_options", execute=term, state=cell(s))
                    a = scg.message("action", dist.Categorical(logits=th["intra"][run, s, w]),
                                    coagent="intra_option", state=(cell(s), held(w)))
                    steps = steps + finished.logical_not().long()
            return steps
        return option_critic

    def online(self, by_option=True):
        """The one-step network ``step(s, w, first, goal, run)`` for online learning
        (``estimator="td"``, Bacon et al.'s setting): one step of every run's current episode,
        returning ``(s', w, arrived)``.

        ``s`` [N] current cells, ``w`` [N] the option held from the previous step, ``first`` [N]
        bool: the episode starts here (the termination unit does not run; its output is 1, so
        the policy over options draws). The critic V(s_t, w_{t-1}) (:attr:`critic`, one table
        per run, column ``options`` for "no option yet") is the step's ``scg.value`` site: the
        state of the network is the cell *and* the option it holds; ``by_option=False`` reads
        V(s_t) only (column 0: one value per cell, learned from every option's visits). The
        driver calls
        ``est.finish(done=arrived)`` and restarts those runs' episodes."""
        th, world, n = self.units, self.world, self.options
        dtype = th["beta"].dtype
        P = world.P.to(dtype)
        V = self.critic

        @scg.network
        def option_critic_step(s, w, first, goal, run):
            self.check_inputs(s, goal, run)
            with scg.episodes(s.shape[0]):
                for _ in scg.steps(1):
                    col = torch.where(first, n, w) if by_option else torch.zeros_like(w)
                    scg.value("v", V[run, s, col])
                    term = scg.message("term", dist.Bernoulli(logits=th["beta"][run, s, w]),
                                       coagent="termination", execute=first.logical_not(),
                                       init=1.0).bool()
                    w = scg.message("option", dist.Categorical(logits=th["over"][run, s]),
                                    coagent="policy_over_options", execute=term, init=w)
                    a = scg.message("action", dist.Categorical(logits=th["intra"][run, s, w]),
                                    coagent="intra_option")
                    s = scg.env("s", dist.Categorical(probs=P[s, a]))
                    arrived = s == goal
                    scg.reward("r", arrived.to(dtype))
            return s, w, arrived
        return option_critic_step

    def expected_steps(self, goal, run=0, greedy=False):
        """Exact expected steps of run ``run``'s option policy to ``goal``, start uniform over
        the other cells (no cap): a linear solve over (cell, held option), no sampling.

        E[s, w] = 1 + sum_w' p(w' | s, w) sum_a pi(a | s, w') sum_s' P[s, a, s'] E[s', w'],
        p(w' | s, w) = (1 - beta(s, w)) [w' = w] + beta(s, w) mu(w' | s), E[goal, .] = 0; the
        episode starts by drawing w' ~ mu(. | s). ``greedy``: each unit's most likely output
        instead of its distribution (the policy's mode). ``inf`` where the goal is not reached
        with probability 1."""
        goal = self.world.state(goal)
        th = {k: v[run].detach().double() for k, v in self.units.items()}
        if greedy:
            beta = (th["beta"] > 0).double()
            mu = torch.nn.functional.one_hot(th["over"].argmax(-1), self.options).double()
            pi = torch.nn.functional.one_hot(th["intra"].argmax(-1), 4).double()
        else:
            beta, mu = torch.sigmoid(th["beta"]), th["over"].softmax(-1)
            pi = th["intra"].softmax(-1)
        S, O = self.world.S, self.options  # noqa: E741 (the paper's letters)
        P = self.world.P.double()
        step = torch.einsum("swa,sat->swt", pi, P)                 # [S, O', S']
        keep = 1.0 - beta                                          # [S, O]
        switch = torch.einsum("sw,sv->swv", beta, mu) + torch.diag_embed(keep)   # [S, O, O']
        M = torch.einsum("swv,svt->swtv", switch, step)            # (s, w) -> (s', w')
        M[:, :, goal, :] = 0.0
        A = torch.eye(S * O, dtype=torch.double) - M.reshape(S * O, S * O)
        try:
            E = torch.linalg.solve(A, torch.ones(S * O, dtype=torch.double)).reshape(S, O)
        except RuntimeError:
            return float("inf")
        E[goal] = 0.0
        first = 1.0 + torch.einsum("sv,svt,tv->s", mu, step, E)
        first[goal] = 0.0
        value = float(first.sum() / (S - 1))
        return value if value >= 0 and torch.isfinite(E).all() else float("inf")

    def termination_map(self, run=0):
        """beta(s, w) of run ``run`` as ``[options, H, W]`` grids (NaN on walls)."""
        beta = torch.sigmoid(self.units["beta"][run].detach().double())   # [S, O]
        H, W = self.world.grid.shape
        out = torch.full((self.options, H, W), float("nan"), dtype=torch.double)
        r, c = self.world.cells[:, 0], self.world.cells[:, 1]
        out[:, r, c] = beta.T
        return out


class Episodes:
    """The environment driver of the online network: every run's current episode (cell, held
    option, length), its goal, and the lengths of its finished episodes. ``__call__`` gives
    the next step's arguments of :meth:`OptionCritic.online`; :meth:`advance` (the
    ``done`` of ``scg.Trainer``) records the episodes that ended (arrived, or capped at the
    world's horizon), moves the goal of a run that has just finished ``moved_after``
    episodes to ``moved[run]``, and restarts the ended episodes in uniformly random cells
    (drawn with ``generator``). An episode cut at the horizon is settled like one that
    arrived (V = 0 after its last step): the usual convention, slightly pessimistic for the
    critic of a policy that still wanders."""

    def __init__(self, world, runs, moved_after, moved, generator=None):
        self.world, self.moved_after, self.moved = world, moved_after, moved
        self.gen = generator if generator is not None else torch.Generator()
        self.goal = torch.full((runs,), world.goal)
        self.run = torch.arange(runs)
        self.s = world.starts(runs, self.goal, self.gen)
        self.w = torch.zeros(runs, dtype=torch.long)
        self.first = torch.ones(runs, dtype=torch.bool)
        self.length = torch.zeros(runs, dtype=torch.long)
        self.lengths = [[] for _ in range(runs)]

    def __call__(self, step=None):
        return self.s, self.w, self.first, self.goal, self.run

    def advance(self, out):
        """After a step (``out.value`` = (s', w, arrived)): the bool [runs] of ended episodes."""
        s, w, arrived = out.value
        self.length = self.length + 1
        ended = arrived | (self.length >= self.world.horizon)
        for r in ended.nonzero().flatten().tolist():
            self.lengths[r].append(int(self.length[r]))
            if len(self.lengths[r]) == self.moved_after:
                self.goal[r] = self.moved[r]
        self.s = torch.where(ended, self.world.starts(len(ended), self.goal, self.gen), s)
        self.w, self.first = w, ended
        self.length = torch.where(ended, torch.zeros_like(self.length), self.length)
        return ended

    TENSORS = ("s", "w", "first", "goal", "length")

    def state_dict(self):
        """Copies (the driver changes ``goal`` in place)."""
        return {**{k: getattr(self, k).clone() for k in self.TENSORS},
                "lengths": [list(x) for x in self.lengths], "gen": self.gen.get_state()}

    def load_state_dict(self, state):
        for k in self.TENSORS:
            setattr(self, k, state[k].clone())
        self.lengths = [list(x) for x in state["lengths"]]
        self.gen.set_state(state["gen"])


TINY = "wwww\nw  w\nwwww"   # a corridor of 2 cells, for exact enumeration


def tiny(options=2, horizon=2):
    """A network small enough for ``scg.check``: the 2-cell corridor, goal at its east end,
    ``horizon`` steps, float64, random logits (seeded)."""
    oc = OptionCritic(FourRooms(TINY, goal=1, horizon=horizon), options, 1, torch.float64)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in oc.units.values():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return oc


def inputs_for(world, batch, runs, goals, generator=None, shared_start=False):
    """One update's inputs: ``batch`` episodes per run, run-major; ``goals`` [runs].

    ``shared_start``: the ``batch`` episodes of a run all start in one cell (drawn uniformly
    from the other cells, afresh each update). The gradient is still that of the uniform-start
    objective (the start is drawn, then episodes from it), but the leave-one-out baseline then
    compares episodes from the same start, which removes the start cell's share of the variance
    (far cells take many more steps than near ones)."""
    run = torch.arange(runs).repeat_interleave(batch)
    goal = goals[run]
    if not shared_start:
        return world.starts(len(run), goal, generator), goal, run
    return world.starts(runs, goals, generator).repeat_interleave(batch), goal, run


LAM, LR, BETA2, CRITIC_LR, CRITIC_INIT = 0.3, 0.03, 0.99, 0.3, 1.0
"""The online settings of ``examples/option_critic.py`` (and of its results page)."""


@scg.zoo.register("option_critic", "Bacon et al.'s option-critic on Four Rooms as three "
                  "coagents (termination bit drives the policy over options), learned online "
                  "as in Bacon et al.; the goal moves after 1000 episodes")
def build(runs=1, options=4, moved_after=1000, seed=0, lam=LAM):
    """The zoo entry: Bacon et al.'s online setting, as in ``examples/option_critic.py``. One
    update per step of every run's episode (:meth:`OptionCritic.online`, ``estimator="td"``
    with trace decay ``lam``, no gamma^t on the score); Adam (lr 0.03, beta2 0.99) on the
    units and SGD (0.3 per run) on the critic, initialised optimistically to 1; each run's
    goal moves to a random cell of the lower-right room after ``moved_after`` episodes. ``seed``
    draws the moved goals and the start cells (``scg train --seed`` seeds the units' draws;
    ``--arg seed=N`` changes these). ``scg train option_critic --updates N`` runs N steps
    (``--episodes`` does not apply: episodes take varying numbers of steps). Measured with one
    run: its first 1,000 episodes took 30,249 steps (the early ones are long) and 50,000 steps
    made 1,710 episodes; the default 60,000 steps go on to about 2,000. The metrics log
    ``steps_per_episode``, the mean length of the runs' last 100 episodes. ``scg check`` uses
    the 2-cell corridor, 2 steps."""
    oc = OptionCritic(FourRooms(), options, runs)
    with torch.no_grad():
        oc.critic.fill_(CRITIC_INIT)
    gen = torch.Generator().manual_seed(seed)
    room = oc.world.lower_right()
    moved = room[torch.randint(len(room), (runs,), generator=gen)]
    episodes = Episodes(oc.world, runs, moved_after, moved, gen)
    small = tiny()
    one = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))
    example = (torch.tensor([0, 5]), torch.tensor([0, 1]), torch.tensor([True, False]),
               torch.full((2,), oc.world.goal), torch.zeros(2, dtype=torch.long))

    def log(trainer, out, row):
        """Steps per episode (mean of every run's last 100 episodes) into the metrics."""
        last = [n for x in episodes.lengths for n in x[-100:]]
        row["steps_per_episode"] = sum(last) / len(last) if last else float("nan")

    return scg.zoo.Setup(
        network=oc.online(), inputs=episodes, example=example,
        options={"estimator": "td", "gamma": GAMMA, "lam": lam, "discount_score": False},
        train={"done": episodes.advance, "per_coagent": True, "updates": 60 * moved_after,
               "optimizer": {"critic": "sgd", "default": adam_beta2(BETA2)},
               "lr": {"critic": CRITIC_LR * runs, "default": LR}, "callback": log},
        modules={"units": oc.units, "critic": torch.nn.ParameterDict({"V": oc.critic})},
        check=(small.episodes(), one, {"gamma": GAMMA}), episodes_per_update=None)


def adam_beta2(beta2):
    """``(params, lr) -> Adam`` with second-moment decay ``beta2`` (for ``scg.Trainer``)."""
    return lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(0.9, beta2))
