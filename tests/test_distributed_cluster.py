"""Training on a cluster scg joins (design.md §7, ``address=``): a two-node local Ray cluster
(``ray.cluster_utils.Cluster``, both nodes on 127.0.0.1, one CPU each) started by the test.
Two workers on it give the same parameters after K synchronous updates as a plain in-process
loop over the same chunks; the workers are processes of that cluster (scg did not start a Ray
of its own), scg leaves the cluster running when the trainer closes, and every socket the
cluster's processes listen on is on 127.0.0.1.

A module of its own: Ray's driver state is global to the process, and this module connects the
driver to a cluster it started rather than to the local Ray of tests/test_distributed.py."""

import os
import shutil
import subprocess
import tempfile

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.nn.functional import one_hot

import scg  # before ray: scg sets the variable that keeps Ray's listeners on loopback
from scg.train import distributed

ray = pytest.importorskip("ray")
from ray._private import ray_constants  # noqa: E402  (after importorskip: ray is optional)
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow

LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def two_nodes():
    """A head node and a second node on 127.0.0.1, 1 CPU each, no dashboard, in a temporary
    directory of their own. ``RAY_TMPDIR`` points there too: ``Cluster`` writes the address
    file ``ray_current_cluster`` into Ray's *default* temporary directory, not the head's."""
    # Read by ray when it is imported: unless scg's variable was "0" then, ray.init(address=
    # "127.0.0.1:...") dials the machine's own IP instead and waits for a GCS it never reaches.
    assert not ray_constants.ENABLE_RAY_CLUSTER, \
        f"{distributed.LOOPBACK_VAR} was not 0 when ray was imported: import scg first"
    if ray.is_initialized():
        # Left over from an earlier module (their fixtures are torn down before this one is
        # set up): a driver connected elsewhere would make scg join that Ray, not this one.
        ray.shutdown()
    tmp = tempfile.mkdtemp(prefix="scg-2n-")   # short: Ray's socket paths live under it
    os.makedirs(os.path.join(tmp, "ray"))
    node = {"node_ip_address": LOOPBACK, "num_cpus": 1, "temp_dir": os.path.join(tmp, "ray")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", tmp)
        cluster = Cluster(initialize_head=True,
                          head_node_args={**node, "include_dashboard": False})
        try:
            cluster.add_node(**node)
            yield cluster
        finally:
            ray.shutdown()   # the driver's connection (scg joined, so it leaves it open)
            cluster.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


def signalling(seed=0):
    """tests/test_distributed.py's signalling game in float64."""
    torch.manual_seed(seed)
    S = torch.nn.Linear(4, 4, dtype=torch.float64)
    R = torch.nn.Linear(4, 4, dtype=torch.float64)

    @scg.network
    def game(s):
        with scg.episodes(s.shape[0]):
            m = scg.message("m", dist.Categorical(logits=S(one_hot(s, 4).to(S.weight.dtype))),
                            coagent="sender")
            a = scg.message("a", dist.Categorical(logits=R(one_hot(m, 4).to(S.weight.dtype))),
                            coagent="receiver")
            scg.reward("r", (a == s).to(S.weight.dtype))
    return game, torch.nn.ModuleDict({"S": S, "R": R})


def states(step):
    return torch.arange(16) % 4


def plain_loop(updates):
    """The oracle (as in tests/test_distributed.py): each update, 4 calls of the network with
    the chunk seeds, gradients averaged, one SGD step; no Ray."""
    game, modules = signalling()
    est = scg.compile(game, baseline="loo", verify=False)
    est(states(0))
    opt = torch.optim.SGD(modules.parameters(), lr=0.5)
    for k in range(updates):
        opt.zero_grad()
        for c in range(4):
            pyro.set_rng_seed(distributed.chunk_seed(3, k, c))
            (est(states(k)).loss / 4).backward()
        opt.step()
    return {n: p.detach().clone() for n, p in modules.named_parameters()}


def processes(cluster):
    """Node -> pids of the processes the cluster started there (Ray's services from
    ``all_processes``, and the raylet's descendants: the worker processes)."""
    children = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out = {}
    for node in [cluster.head_node, *cluster.worker_nodes]:
        pids = {p.process.pid for ps in node.all_processes.values() for p in ps}
        todo = list(pids)
        while todo:
            new = set(children.get(todo.pop(), ())) - pids
            pids |= new
            todo += new
        out[node.node_id] = pids
    return out


def listeners():
    """(local address, pid) of every listening TCP socket whose process ``ss`` names."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        local = line.split()[3]
        found += [(local, int(p.split(",")[0])) for p in line.split("pid=")[1:]]
    return found


def test_two_workers_on_a_two_node_loopback_cluster_equal_a_plain_loop(two_nodes):
    assert two_nodes.address.startswith(f"{LOOPBACK}:"), two_nodes.address
    updates = 3
    game, modules = signalling()
    t = scg.Trainer(game, states, optimizer="sgd", lr=0.5, seed=3, progress=False,
                    baseline="loo", modules=modules, workers=2, backend="ray", chunks=4,
                    verify=False, address=two_nodes.address)
    try:
        t.fit(updates)
        assert not t.pool.cluster.owned   # joined, not started: close() must leave it be
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2 and {n["NodeManagerAddress"] for n in nodes} == {LOOPBACK}
        procs = processes(two_nodes)
        placed = {pid: [node for node, pids in procs.items() if pid in pids]
                  for pid in t.pool.pids()}
        # Each worker is a process of one of the cluster's two nodes. Which one is Ray's
        # choice (the actors reserve no CPU, so the GCS places each on a random node): the
        # test does not require both nodes to be used.
        assert all(len(v) == 1 for v in placed.values()), (placed, procs)
        ours = set().union(*procs.values(), {os.getpid()})
        socks = [(local, pid) for local, pid in listeners() if pid in ours]
        heard = {pid for _, pid in socks}
        raylets = {n.all_processes["raylet"][0].process.pid
                   for n in [two_nodes.head_node, *two_nodes.worker_nodes]}
        gcs = two_nodes.head_node.all_processes["gcs_server"][0].process.pid
        assert raylets | {gcs} | set(placed) <= heard, (socks, raylets, gcs, placed)
        for local, pid in socks:
            assert local.startswith((f"{LOOPBACK}:", f"[::ffff:{LOOPBACK}]:")), (local, pid)
    finally:
        t.close()
    assert ray.is_initialized()   # scg's close() kept the driver connected and the cluster up
    assert sum(n["Alive"] for n in ray.nodes()) == 2
    got = {n: p.detach().clone() for n, p in modules.named_parameters()}
    want, start = plain_loop(updates), signalling()[1].state_dict()
    assert got.keys() == want.keys()
    for n in want:
        assert got[n].dtype == torch.float64
        assert torch.allclose(got[n], want[n], rtol=0, atol=1e-12), n
        assert not torch.equal(want[n], start[n]), n   # the updates moved it
