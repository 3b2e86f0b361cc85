"""The learning-curve plot (scg.train.logs.plot): it draws what differs from update to update,
the estimate of J and its moving average, and not the local losses (shares of −J whose
curves lie on one another)."""

import pytest

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

from scg.train.logs import plot  # noqa: E402


def history(n=12):
    """Two coagents sharing a reward: each local loss is half of −J, as the trainer logs it."""
    rows = []
    for k in range(n):
        j = -1.0 + 0.05 * k
        rows.append({"step": k + 1, "objective": j, "loss": -j, "loss/sender": -j / 2,
                     "loss/receiver": -j / 2, "lr/all": 0.1})
    return rows


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot() saves."""
    figures, save = [], Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def test_plot_draws_the_return_not_the_local_losses(tmp_path, drawn):
    path = plot(history(), str(tmp_path / "curve.png"), smooth=4)
    assert path.endswith("curve.png") and (tmp_path / "curve.png").stat().st_size > 1000
    fig, = drawn
    assert len(fig.axes) == 1
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["estimate of J per update", "moving average (4)"]
    assert fig.axes[0].get_ylabel() == "return"
