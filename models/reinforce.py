"""REINFORCE (Williams 1992): one coagent, a policy network, on gymnasium's
CartPole-v1.

The network runs a batch of episodes in one ``scg.episodes`` plate, through gymnasium's
standard API: a ``gymnasium.vector.SyncVectorEnv`` of N copies of the environment,
``reset(seed=...)`` and ``step(actions)`` with ``terminated``/``truncated``. At each step the
policy (a small MLP from the observation to action logits) emits the action as
``scg.message(..., coagent="policy")``; the environment's reward is an ``scg.reward`` and
``scg.done`` masks finished episodes. Actions leave torch (``.numpy()``) into the
environment, which scg's provenance analysis treats as an escape: every later site and reward
counts as downstream of the action. That is exactly right here, the environment's state
carries the action's effect to every later step (the docs' Concepts page: provenance tracking
and the escape fallback). With one coagent, scg's estimator is REINFORCE: the score term of
each action weighted by the (discounted) return after it, minus a baseline.

The network's argument is a LongTensor of per-episode seeds: episode i starts from
``reset(seed=seeds[i])``. CartPole is deterministic given its initial state, so a run is a
function of the seeds and the sampled actions. That makes runs reproducible, and it is what
scg's analysis needs: it replays a run with the same arguments and sampled values, and the
environment must then retrace the same episodes.
"""

import gymnasium as gym
import numpy as np
import pyro.distributions as dist
import torch

import scg

ENV_ID = "CartPole-v1"


def mlp(n_obs, n_actions, hidden=32, dtype=None):
    """The policy: observation -> action logits (two tanh layers)."""
    return torch.nn.Sequential(
        torch.nn.Linear(n_obs, hidden), torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
        torch.nn.Linear(hidden, n_actions)).to(dtype or torch.get_default_dtype())


def _space_sizes(env):
    """(observation size, number of actions) of a gymnasium env, or ScgError if it is not a
    flat Box observation with Discrete actions."""
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
        raise scg.ScgError(f"the policy needs a flat Box observation space, got {obs}")
    if not isinstance(act, gym.spaces.Discrete):
        raise scg.ScgError(f"the policy needs a Discrete action space, got {act}")
    return obs.shape[0], int(act.n)


class Episodes:
    """A batch of episodes of ``make_env()`` under ``policy``; ``network(seeds)`` is the
    ``@scg.network``.

    Args:
        policy: ``nn.Module`` from observations ``[N, n_obs]`` to action logits
            ``[N, n_actions]``.
        make_env: a function returning a fresh gymnasium env (default: CartPole-v1).
        horizon: the loop's length, ``scg.steps(horizon)`` (default: the env's time limit).
        chunk: after every episode has finished, the loop still runs to the next multiple of
            ``chunk`` steps (masked, no environment steps). The structure signature then takes
            at most ``horizon / chunk`` values, so scg analyses few structures (a new loop
            length is a new structure: the Concepts page, the structure-signature cache).
    """

    def __init__(self, policy, make_env=None, horizon=None, chunk=25):
        self.make_env = make_env or (lambda: gym.make(ENV_ID))
        probe = self.make_env()
        self.n_obs, self.n_actions = _space_sizes(probe)
        spec_horizon = probe.spec.max_episode_steps if probe.spec is not None else None
        probe.close()
        horizon = horizon if horizon is not None else spec_horizon
        if not isinstance(horizon, int) or horizon < 1:
            raise scg.ScgError(f"horizon must be a positive int (the env has no time limit to "
                               f"default to), got {horizon!r}")
        if not isinstance(chunk, int) or chunk < 1:
            raise scg.ScgError(f"chunk must be a positive int, got {chunk!r}")
        self.policy, self.horizon, self.chunk = policy, horizon, chunk
        self._check_policy()
        self.envs = {}            # batch size -> SyncVectorEnv
        self.returns = None       # per-episode undiscounted returns of the last run
        self.lengths = None       # per-episode lengths of the last run
        self.network = self._network()

    def _check_policy(self):
        """The policy must map a batch of observations to one logit per action."""
        params = list(self.policy.parameters())
        if not params:
            raise scg.ScgError("the policy has no parameters: nothing to learn")
        x = torch.zeros(3, self.n_obs, dtype=params[0].dtype)
        try:
            with torch.no_grad():
                shape = tuple(self.policy(x).shape)
        except RuntimeError as e:
            raise scg.ScgError(f"the policy cannot read observations of size {self.n_obs} "
                               f"(the environment's): {e}") from None
        if shape != (3, self.n_actions):
            raise scg.ScgError(f"the policy maps observations of shape (3, {self.n_obs}) to "
                               f"{shape}; expected (3, {self.n_actions}): one logit per action")

    def vector_env(self, n):
        """A SyncVectorEnv of ``n`` copies, created once per batch size."""
        if n not in self.envs:
            self.envs[n] = gym.vector.SyncVectorEnv([self.make_env] * n)
        return self.envs[n]

    def _env(self, call, *args, **kwargs):
        """``envs.reset``/``envs.step``; an observation that does not fit the declared space
        (the vector env cannot batch it) is an ScgError naming the space."""
        try:
            return call(*args, **kwargs)
        except ValueError as e:
            space = self.make_env().observation_space
            raise scg.ScgError(f"the environment's observations do not match its observation "
                               f"space {space} ({e})") from None

    def _observations(self, obs):
        """Environment observations as the policy's input tensor, shape-checked."""
        x = torch.as_tensor(np.asarray(obs))
        if x.dim() != 2 or x.shape[1] != self.n_obs:
            raise scg.ScgError(f"observations have shape {tuple(x.shape)}, expected "
                               f"(N, {self.n_obs})")
        return x.to(next(self.policy.parameters()).dtype)

    def _seeds(self, seeds):
        """The seeds argument as a list of ints (one per episode), or ScgError."""
        if not isinstance(seeds, torch.Tensor) or seeds.dim() != 1 or \
                seeds.is_floating_point() or seeds.numel() < 1:
            raise scg.ScgError("the network takes a 1-D integer tensor of per-episode seeds "
                               f"(e.g. torch.arange(N)), got {seeds!r}")
        return [int(s) for s in seeds.tolist()]

    def _network(self):
        @scg.network
        def cartpole(seeds):
            """A batch of episodes, one per seed: the policy acts until every episode ends."""
            seeds = self._seeds(seeds)
            n = len(seeds)
            envs = self.vector_env(n)
            obs, _ = self._env(envs.reset, seed=seeds)
            alive = np.ones(n, dtype=bool)
            returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
            with scg.episodes(n):
                for t in scg.steps(self.horizon):
                    logits = self.policy(self._observations(obs))
                    a = scg.message("a", dist.Categorical(logits=logits), coagent="policy")
                    r = np.zeros(n)
                    if alive.any():
                        nxt, rew, term, trunc, _ = self._env(envs.step, a.numpy())
                        r = np.where(alive, rew, 0.0)
                        returns += r
                        lengths += alive
                        obs = np.where(alive[:, None], nxt, obs)
                        alive = alive & ~(term | trunc)
                    scg.reward("r", torch.as_tensor(r, dtype=logits.dtype))
                    scg.done(torch.as_tensor(~alive))
                    if not alive.any() and (t + 1) % self.chunk == 0:
                        break
            self.returns, self.lengths = returns, lengths
            return returns
        return cartpole


class Tilted(gym.Wrapper):
    """CartPole started close to failure, for checks: the reset state (seeded, within ±0.05)
    shrunk tenfold and shifted to pole angle ``angle`` (rad) falling at ``velocity`` (rad/s).
    From the default state the first action decides whether the pole falls after two steps,
    and the second whether after three: over a horizon of four steps the return depends on
    the actions, so the gradient is not zero and exact enumeration has something to check."""

    def __init__(self, env, angle=0.19, velocity=0.45):
        super().__init__(env)
        self.offset = np.array([0.0, 0.0, angle, velocity])

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        state = 0.1 * np.asarray(self.env.unwrapped.state) + self.offset
        self.env.unwrapped.state = state
        return state.astype(np.float32), info


def tilted_cartpole():
    """CartPole-v1 started close to failure (:class:`Tilted`)."""
    return Tilted(gym.make(ENV_ID))


def episode_seeds(seed, update, n):
    """Seeds of update ``update``'s ``n`` episodes in training run ``seed``: disjoint across
    updates and runs, so every episode starts from its own initial state."""
    start = (seed * 1_000_003 + update) * n
    return torch.arange(start, start + n)


@scg.zoo.register("reinforce_cartpole", "REINFORCE: one policy coagent (MLP) on gymnasium's "
                  "CartPole-v1, a batch of episodes per update")
def build(batch=10, hidden=32, seed=0):
    """The zoo entry: ``batch`` CartPole-v1 episodes per update, γ = 1 (J is the expected
    episode length, at most 500), leave-one-out baseline. For ``scg check``: two episodes of
    :func:`tilted_cartpole` over four steps, in float64 (at most 256 joint values)."""
    if not isinstance(batch, int) or batch < 2:
        raise scg.ScgError(f"batch must be an int >= 2 (the leave-one-out baseline needs two "
                           f"episodes), got {batch!r}")
    policy = mlp(4, 2, hidden)
    episodes = Episodes(policy)
    tiny = Episodes(mlp(4, 2, 8, torch.float64), tilted_cartpole, horizon=4)
    return scg.zoo.Setup(network=episodes.network,
                         inputs=lambda step: (episode_seeds(seed, step, batch),),
                         example=(torch.arange(2),),
                         options={"baseline": "loo", "gamma": 1.0},
                         train={"lr": 0.01, "updates": 100}, modules={"policy": policy},
                         check=(tiny.network, (torch.arange(2),), {"baseline": "loo"}),
                         episodes_per_update=batch)
