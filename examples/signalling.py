"""A signalling game, trained end to end with scg (a single, readable CleanRL-style script).

A sender sees a state in {0..3} and emits one of 8 messages; a receiver sees only the message
and picks an action in {0..3}. Both get reward 1 when the action equals the state. Neither
coagent backpropagates into the other: each learns from its own score term, with the shared
reward as credit (design.md §1).

    python examples/signalling.py            # full run (a few seconds on CPU)
    python examples/signalling.py --smoke    # tiny run, for tests
"""

import time
from dataclasses import dataclass

import pyro
import torch
from common import parse
from torch.nn.functional import one_hot

import scg
from scg.models.signalling import N_MESSAGES, N_STATES, make_network, sample_states


# ============================================================================================
# Arguments
# ============================================================================================
@dataclass
class Args:
    seed: int = 1
    """seed of torch and pyro"""
    updates: int = 400
    """number of gradient updates"""
    batch: int = 64
    """episodes per update (one scg.episodes plate)"""
    lr: float = 0.02
    """Adam learning rate"""
    baseline: str = "loo"
    """scg baseline: none, avg, loo or critic"""
    log_every: int = 50
    """print progress every this many updates"""
    eval_batch: int = 4096
    """episodes used for the final mean reward"""
    threads: int = 2
    """torch CPU threads"""
    smoke: bool = False
    """tiny run (20 updates, batch 16) for tests"""


def parse_args():
    args = parse(Args, __doc__)
    if args.smoke:
        args.updates, args.batch, args.log_every, args.eval_batch = 20, 16, 5, 256
    return args


# ============================================================================================
# Main
# ============================================================================================
def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    print(f"args: {args}")

    signalling, sender, receiver = make_network()
    est = scg.compile(signalling, gamma=1.0, baseline=args.baseline)

    print("\n=== learning rules (scg.derive) ===")
    print(scg.derive(signalling, sample_states(args.batch), est=est))

    # est.parameters() is only known after the first call: run once, then build the optimiser
    state = sample_states(args.batch)
    out = est(state)
    print(f"\nparameters per coagent: "
          f"{ {c: sum(p.numel() for p in est.parameters(c)) for c in out.local} }")
    optimizer = torch.optim.Adam(est.parameters(), lr=args.lr)

    # ----------------------------------------------------------------------------------------
    # Training loop
    # ----------------------------------------------------------------------------------------
    print("\n=== training ===")
    start, recent = time.time(), []
    for update in range(1, args.updates + 1):
        if update > 1:
            out = est(sample_states(args.batch))
        optimizer.zero_grad()
        out.loss.backward()            # = -(estimate of grad J)
        optimizer.step()
        recent.append(out.stats["return"])   # estimate of J: the batch's mean reward
        if update % args.log_every == 0 or update == args.updates:
            mean = sum(recent) / len(recent)
            local = ", ".join(f"{c} {v.item():+.3f}" for c, v in out.local.items())
            print(f"update {update:4d}  mean reward {mean:.3f}  local losses: {local}  "
                  f"({time.time() - start:.1f}s)")
            recent = []

    # ----------------------------------------------------------------------------------------
    # What it learned
    # ----------------------------------------------------------------------------------------
    print("\n=== learned table ===")
    with torch.no_grad():
        states = torch.arange(N_STATES)
        p_m = torch.softmax(sender(one_hot(states, N_STATES).float()), -1)
        msg = p_m.argmax(-1)
        p_a = torch.softmax(receiver(one_hot(msg, N_MESSAGES).float()), -1)
        act = p_a.argmax(-1)
    print("state  message (p)    action (p)")
    for s in range(N_STATES):
        print(f"{s:5d}  {msg[s].item():7d} ({p_m[s, msg[s]].item():.2f})  "
              f"{act[s].item():6d} ({p_a[s, act[s]].item():.2f})")
    with torch.no_grad():
        final = est(sample_states(args.eval_batch)).stats["return"]
    print(f"final mean reward {final:.3f} over {args.eval_batch} sampled episodes "
          f"({time.time() - start:.1f}s)")


if __name__ == "__main__":
    main()
