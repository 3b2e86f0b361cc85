"""What a training run shows and leaves behind: metrics as CSV and TensorBoard, the progress
bar, and the learning-curve plot.

A metrics history is a list of dicts, one row per update (``step``, ``objective``, ``loss``,
``loss/COAGENT``, ``lr/GROUP``, ...); the plot draws the objective. TensorBoard and matplotlib
are imported only when used: the first is optional, the second heavy.
"""

import csv
import os

from tqdm.auto import tqdm

from ..errors import ScgError


# ---- CSV -------------------------------------------------------------------------------------
def write_csv(path, history):
    """Write a metrics history to ``path`` (all keys of all rows as columns), atomically."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, path)


def append_csv(path, history):
    """Add the last row of ``history`` to the CSV at ``path``, or write it all (creating the
    folder) when the file is new or that row has columns the first one has not."""
    row = history[-1]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if len(history) == 1 or not os.path.exists(path) or set(row) - set(history[0]):
        write_csv(path, history)
    else:
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=list(history[0]), extrasaction="ignore").writerow(row)


def read_csv(path):
    """A metrics history from a CSV file written by the trainer (numbers as floats)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


# ---- TensorBoard and the progress bar --------------------------------------------------------
def tensorboard_writer(folder, purge_step=None):
    """A TensorBoard ``SummaryWriter`` on ``folder``; ``purge_step``: drop events from that step
    on (a resumed run writes them again)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ScgError("tensorboard=True needs the tensorboard package: pip install "
                       "tensorboard (or scg[dev])") from e
    return SummaryWriter(folder, purge_step=purge_step)


def add_scalars(writer, row):
    """Log every number of a metrics row but ``step`` at that step."""
    for k, v in row.items():
        if k != "step":
            writer.add_scalar(k, v, row["step"])


def progress_bar(enabled, total, initial):
    """A tqdm bar over ``total`` updates starting at ``initial`` (hidden if not ``enabled``)."""
    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True,
                desc="scg train")


# ---- plot ------------------------------------------------------------------------------------
def plot(history, path, smooth=20):
    """Plot a metrics history (a list of dicts, or a CSV path) to ``path``: the estimated
    return per update with its moving average.

    The local losses are not drawn: the value of one is minus the costs its coagent owns and an
    even share of those nobody owns (rewards), a share of −J that does not tell how the
    coagent learns (only its gradient does), and with rewards alone the curves lie on one
    another. They stay in the history and the CSV (``loss/COAGENT``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(history, (str, os.PathLike)):
        history = read_csv(history)
    if not history:
        raise ScgError("plot: the metrics history is empty")
    steps = [r["step"] for r in history]
    fig, a = plt.subplots(figsize=(6, 3.8))
    ys = [r["objective"] for r in history]
    a.plot(steps, ys, alpha=0.35, label="estimate of J per update")
    k = max(1, min(smooth, len(ys)))
    a.plot(steps, _moving_average(ys, k), label=f"moving average ({k})")
    a.set_xlabel("update")
    a.set_ylabel("return")
    a.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _moving_average(ys, k):
    """The mean of each value and up to ``k - 1`` before it."""
    return [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1])
            for i in range(len(ys))]
