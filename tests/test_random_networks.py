"""Property test: randomly generated coagent networks (random parents, coagents, shared
modules, steps, gamma, env sites, predictors, rewards) agree with exact enumeration."""

import math
import random

import pyro.distributions as dist
import pytest
import torch
from torch.nn.functional import one_hot

import scg
from scg.estimators.baselines import KINDS


def random_network(seed):
    rng = random.Random(seed)
    steps = rng.choice([1, 2])
    per_step = rng.randint(2, 3) if steps == 1 else 2
    K = [rng.choice([2, 2, 3]) for _ in range(per_step)]
    owner = [rng.choice("ABC") for _ in range(per_step)]
    has_env = rng.random() < 0.3
    # keep the joint space (two episodes enumerated together) at most 32^2 values
    if math.prod(K) ** steps * (2 ** steps if has_env else 1) > 32:
        K = [2] * per_step
    if math.prod(K) ** steps * (2 ** steps if has_env else 1) > 32:
        has_env = False
    # parents: earlier sites this step ("now", j) and sites of the previous step ("prev", j)
    parents = [[("now", j) for j in range(i) if rng.random() < 0.6] +
               [("prev", j) for j in range(per_step) if steps > 1 and rng.random() < 0.4]
               for i in range(per_step)]
    dims = [2 + sum(K[j] for _, j in ps) for ps in parents]
    shared = torch.nn.Linear(2, 2).double()
    use_shared = [rng.random() < 0.3 for _ in range(per_step)]
    mods = [torch.nn.Linear(d + 2 * u, k).double() for d, k, u in zip(dims, K, use_shared)]
    for m in mods:
        with torch.no_grad():
            m.weight.mul_(2.0)
    tables = [[torch.randn(K[j], generator=torch.Generator().manual_seed(seed * 31 + j))
               for j in range(per_step)] for _ in range(2)]
    reward_sites = [[j for j in range(per_step) if rng.random() < 0.6] or [per_step - 1]
                    for _ in range(2)]
    pred = (rng.randrange(per_step), rng.choice("ABC")) if rng.random() < 0.4 else None
    qmod = torch.nn.Linear(K[pred[0]] if pred else 1, 1).double()
    gamma = rng.choice([1.0, 0.7])

    @scg.network
    def model(s):
        N = s.shape[0]
        x = one_hot(s, 2).double()
        with scg.episodes(N):
            prev = [torch.zeros(N, dtype=torch.long) for _ in range(per_step)]
            for _t in scg.steps(steps):
                now = []
                for i in range(per_step):
                    feats = [x] + [one_hot((now if w == "now" else prev)[j], K[j]).double()
                                   for w, j in parents[i]]
                    if use_shared[i]:
                        feats.append(torch.tanh(shared(x)))
                    logits = mods[i](torch.cat(feats, -1))
                    now.append(scg.message(f"s{i}", dist.Categorical(logits=logits),
                                           coagent=owner[i]))
                    if has_env and i == 0:
                        flip = scg.env("flip", dist.Bernoulli(torch.full((N,), 0.25)))
                        now[0] = (now[0] + flip.long()) % K[0]
                for r, js in enumerate(reward_sites):
                    scg.reward(f"r{r}", sum(tables[r][j][now[j]] for j in js))
                if pred is not None:
                    j, who = pred
                    loc = qmod(one_hot(now[j], K[j]).double()).squeeze(-1)
                    scg.predict("q", dist.Normal(loc, 1.0), obs=s.double(), coagent=who)
                prev = now
    return model, gamma


@pytest.mark.parametrize("seed", range(24))
@pytest.mark.slow
def test_random_network_matches_enumeration(seed):
    model, gamma = random_network(seed)
    baseline = KINDS[seed % len(KINDS)]
    est = scg.compile(model, gamma=gamma, baseline=baseline)
    args = (torch.tensor([0, 1]),)
    for _ in range(3):
        est(*args)
    report = scg.check(model, *args, est=est, method="enumerate", max_size=1024)
    assert report.ok, f"seed {seed}, baseline {baseline}\n{report}"
