"""Credit by reverse cumulative sums equals the dense sum over downstream costs, on long
sequences (many scan levels), irregular times and arbitrary runs; the bitset causal pass equals
networkx descendants."""

import random

import networkx as nx
import pytest
import torch

from scg.compiler import graph as G
from scg.compiler import plan as P


@pytest.mark.parametrize("n, gamma", [(1, 0.9), (7, 1.0), (300, 0.97), (1025, 0.5), (1025, 1.0)])
def test_suffix_sums_equal_dense(n, gamma):
    rng = random.Random(n)
    times = sorted(rng.randrange(3 * n) for _ in range(n))
    c = torch.randn(n, 3)
    S = P.suffix_sums(c, P.scan_levels([gamma ** (b - a) for a, b in zip(times, times[1:])]
                                       + [0.0]))
    t = torch.tensor(times, dtype=torch.float64)
    dense = torch.triu(gamma ** (t[None, :] - t[:, None]))  # [k, j]: discount k -> j >= k
    assert torch.allclose(S[:n], dense @ c, atol=1e-10)
    assert torch.all(S[n] == 0)


@pytest.mark.parametrize("shape", ["runs", "suffixes", "undiscounted suffixes"])
def test_runs_of_credit_equal_dense_weights(shape):
    """Random runs (the general index_add), and one suffix per site (the fast forms: no S_b
    term, no index_add, and with gamma = 1 no weights), against dense weights."""
    rng = random.Random(0)
    n, gamma = 200, (1.0 if shape == "undiscounted suffixes" else 0.95)
    times = sorted(rng.randrange(400) for _ in range(n))
    c = torch.randn(n, 2)
    levels = P.scan_levels([gamma ** (b - a) for a, b in zip(times, times[1:])] + [0.0])
    S = P.suffix_sums(c, levels)
    site_times = [rng.randrange(400) for _ in range(30)]
    if shape != "runs":   # every site has costs after it: one run (a suffix) each
        site_times = [min(ts, times[-1]) for ts in site_times]
    rows, dense = [], torch.zeros(30, n)
    for k, ts in enumerate(site_times):
        members = [j for j in range(n) if times[j] >= ts and (shape != "runs" or
                                                              rng.random() < 0.7)]
        for j in members:
            dense[k, j] = gamma ** (times[j] - ts)
        bits = sum(1 << j for j in members)
        for a, b in G.bitset_ranges(bits):
            wa = gamma ** (times[a] - ts)
            wb = wa * gamma ** (times[b] - times[a]) if b < n else 0.0
            rows.append((k, a, b, wa, wb))
    cols = list(zip(*rows))
    credit = P.Credit(torch.tensor(cols[0]), torch.tensor(cols[1]), torch.tensor(cols[2]),
                      torch.tensor(cols[3]), torch.tensor(cols[4]), (), (2,))
    fast = shape != "runs"
    assert (credit.to_end, credit.one_each, credit.unit) == \
        (shape != "runs", fast, shape == "undiscounted suffixes")
    for R0 in (None, torch.zeros(30, 2)):
        R = P.apply_credit(R0, credit, S, torch.zeros(30, 2))
        assert torch.allclose(R, dense @ c, atol=1e-9)


def test_bitset_causal_pass_equals_descendants():
    rng = random.Random(1)
    g = nx.DiGraph()
    for i in range(120):
        g.add_node(i, order=i)
    for v in range(120):
        for u in rng.sample(range(v), min(v, 3)) if v else []:
            g.add_edge(u, v)
    targets = [n for n in g if n % 3 == 0]
    bits = G.downstream_bitsets(g, targets)
    for n in g:
        assert [targets[k] for k in G.bitset_members(bits[n])] == sorted(
            set(nx.descendants(g, n)) & set(targets))
